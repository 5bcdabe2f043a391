"""docs/migration/: every snippet, the peers' and ours, run for real.

Peer snippets run against the real peer packages: Paste, Werkzeug,
flask-reverse-proxy-fix and django-revproxy from the test environment
(setup.py's test extra); WSGIProxy2 (it installs a package named
``wsgiproxy``, like this project) and django-proxy-server (it installs a
top-level package named ``tests``, like this suite) from virtual
environments of their own in ``.venv-peers/``, made once and kept, and run
there as subprocesses.  Ours run against this project.  Both talk to the
same loopback backend, and where a page says the two do the same, the test
compares the answers and the request the backend received.

The snippets name the backend ``http://127.0.0.1:8081`` (and the front
``8080``); the tests put the real, free ports in their place.  WSGIProxy 0.2
itself is Python 2 only and cannot run here: its ``.ini`` files are served by
this project, and the request it sends (recorded from 0.2.2 under Python
2.7.18) is the ``http`` snippet of the page.
"""

import fcntl
import http.client
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import types

import pytest
from paste.deploy import loadapp, loadfilter

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.middleware import WSGIProxyMiddleware

from .docsnippets import snippet
from .client import send_raw
from .servers import Process, WaitressServer, free_port, wait_for_port, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WSGIPROXY = os.path.join(os.path.dirname(sys.executable), "wsgiproxy")
#: Virtual environments of the peers that cannot share the test environment.
PEERS = os.path.join(ROOT, ".venv-peers")
WSGIPROXY2_REQUIREMENTS = ["WSGIProxy2==0.5.1", "WebOb>=1.8", "urllib3>=2"]
DPS_REQUIREMENTS = ["django-proxy-server==0.6", "Django>=5,<6"]
#: What the snippets call the backend and the secret file.
DOC_BACKEND = "http://127.0.0.1:8081"
DOC_SECRET = "/etc/myproject/wsgiproxy-secret"
SECRET = "docs-migration-test-secret-0123456789"

urlpatterns = []  # ROOT_URLCONF when this module configures Django; views use their own


# -- helpers ------------------------------------------------------------------

def adapt(text, replacements):
    """``text`` with each ``{old: new}`` replaced; every ``old`` must occur (the page changed)."""
    for old, new in replacements.items():
        assert old in text, "the snippet no longer contains %r:\n%s" % (old, text)
        text = text.replace(old, new)
    return text


def run_snippet(text, namespace=None):
    """exec() a Python snippet (in ``namespace``, which may predefine names); returns it."""
    namespace = dict(namespace or {})
    namespace.setdefault("__name__", "docs_migration_snippet")
    exec(compile(text, "<snippet>", "exec"), namespace)
    return namespace


#: Calls a WSGI app with a webob request; the same text runs in the peers' venvs.
RUNNER = r'''
import json
from webob import Request


def call(app, url, method="GET", headers=None, body=None, environ=None):
    req = Request.blank(url, method=method, headers=headers or {}, environ=environ or {})
    if body is not None:
        req.body = body.encode("latin-1")
    res = req.get_response(app)
    return {"status": res.status_int, "headers": [list(h) for h in res.headerlist],
            "body": res.body.decode("latin-1")}
'''
_runner = {}
exec(RUNNER, _runner)
call = _runner["call"]

PEER_MAIN = RUNNER + r'''
import sys
spec = json.load(sys.stdin)
namespace = {"__name__": "snippet"}
exec(compile(spec["code"], "<snippet>", "exec"), namespace)
json.dump([call(namespace[spec["app"]], **r) for r in spec["requests"]], sys.stdout)
'''


def header(answer, name):
    """A header of a call() answer (None when absent)."""
    for key, value in answer["headers"]:
        if key.lower() == name.lower():
            return value
    return None


def seen(answer):
    """What the backend received, from its JSON answer."""
    assert answer["status"] == 200, answer
    return json.loads(answer["body"])


def same(a, b, keys):
    for key in keys:
        assert a[key] == b[key], (key, a[key], b[key])


def http_request(port, path, method="GET", headers=None, body=None, source=None):
    """A real HTTP request to 127.0.0.1:port; returns (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        res = conn.getresponse()
        return res.status, res.getheaders(), res.read()
    finally:
        conn.close()


def all_headers(headers, name):
    return [v for k, v in headers if k.lower() == name.lower()]


def peer_python(name, requirements):
    """The python of ``.venv-peers/NAME`` with ``requirements`` installed (made once, kept)."""
    path = os.path.join(PEERS, name)
    python = os.path.join(path, "bin", "python")
    stamp = os.path.join(path, ".requirements")
    want = "\n".join(requirements)
    os.makedirs(PEERS, exist_ok=True)
    with open(os.path.join(PEERS, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(stamp) as f:
                if f.read() == want:
                    return python
        except OSError:
            pass
        shutil.rmtree(path, ignore_errors=True)
        for args in ([sys.executable, "-m", "venv", path],
                     [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
                     + requirements):
            done = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=600)
            assert done.returncode == 0, done.stdout.decode(errors="replace")
        with open(stamp, "w") as f:
            f.write(want)
    return python


def run_peer(python, code, app, requests):
    """Run ``code`` in a peer's venv and call() its ``app`` with each request spec."""
    done = subprocess.run([python, "-I", "-c", PEER_MAIN], input=json.dumps(
        {"code": code, "app": app, "requests": requests}).encode(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout)


class Echo:
    """The backend application: answers with what it received, as JSON.

    ``.../redirect`` redirects to the absolute URL ``base + .../login``,
    ``.../redirect-relative`` to ``/login``, and ``.../cookies`` sets two
    cookies.
    """

    def __init__(self, base="http://127.0.0.1"):
        self.url = base

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.endswith("/redirect"):
            start_response("302 Found", [("Location", self.url + path[:-8] + "login"),
                                         ("Content-Length", "0")])
            return []
        if path.endswith("/redirect-relative"):
            start_response("302 Found", [("Location", "/login"), ("Content-Length", "0")])
            return []
        if path.endswith("/cookies"):
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2"),
                                      ("Set-Cookie", "first=1; Path=/"),
                                      ("Set-Cookie", "second=2; Path=/; HttpOnly")])
            return [b"ok"]
        length = environ.get("CONTENT_LENGTH")
        body = environ["wsgi.input"].read(int(length)) if length else b""
        data = {
            "method": environ["REQUEST_METHOD"],
            "script_name": environ.get("SCRIPT_NAME", ""),
            "path_info": path,
            "query": environ.get("QUERY_STRING", ""),
            "body": body.decode("latin-1"),
            "host": environ.get("HTTP_HOST"),
            "server_name": environ.get("SERVER_NAME"),
            "server_port": environ.get("SERVER_PORT"),
            "remote_addr": environ.get("REMOTE_ADDR"),
            "remote_user": environ.get("REMOTE_USER"),
            "scheme": environ.get("wsgi.url_scheme"),
            "signed": environ.get("wsgiproxy.key_id") is not None,
            "headers": {k[5:].replace("_", "-").title(): v for k, v in environ.items()
                        if k.startswith("HTTP_")},
        }
        out = json.dumps(data).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(out)))])
        return [out]


class Backend:
    """The :class:`Echo` backend on a loopback port (``wrap``: a middleware around it)."""

    def __init__(self, wrap=None):
        self.app = Echo()
        self.server = WaitressServer(self.app if wrap is None else wrap(self.app))
        self.port = self.server.port
        self.url = self.app.url = self.server.url

    def __enter__(self):
        self.server.__enter__()
        return self

    def __exit__(self, *exc):
        self.server.__exit__(*exc)


@pytest.fixture(scope="module")
def backend():
    with Backend() as server:
        yield server


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text(SECRET + "\n")
    return str(path)


def local_app(environ, start_response):
    """The application that ProxyMiddleware-style dispatchers wrap."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"local"]


# -- WSGIProxy 0.2 --------------------------------------------------------------

class Served:
    """``wsgiproxy serve CONFIG`` in its own process group, output to a file."""

    def __init__(self, config, port, log):
        self.port = port
        self.log = log
        self.out = open(log, "w")
        self.process = Process([WSGIPROXY, "serve", str(config)], stdout=self.out,
                               stderr=subprocess.STDOUT)

    def __enter__(self):
        wait_for_port(self.port, process=self.process.proc)
        return self

    def __exit__(self, *exc):
        self.process.__exit__(*exc)
        self.out.close()

    def output(self):
        with open(self.log) as f:
            return f.read()


def write_configs(tmp_path, texts, front, back):
    """The ``.ini`` texts with ports 8080/8081 changed to ``front``/``back``, in ``tmp_path``."""
    paths = []
    for name, text in texts.items():
        text = adapt(text, {"8081": str(back)})
        if "8080" in text:
            text = text.replace("8080", str(front))
        path = tmp_path / name
        path.write_text(text)
        paths.append(path)
    return paths


def test_wsgiproxy02_ini_files_run_unchanged(tmp_path):
    front, back = free_port(), free_port()
    proxy_ini, backend_ini = write_configs(tmp_path, {
        "proxy.ini": snippet("migration-wsgiproxy02-proxy-ini").text,
        "backend.ini": snippet("migration-wsgiproxy02-backend-ini").text}, front, back)
    assert "egg:Paste#http" in proxy_ini.read_text()
    with Served(backend_ini, back, tmp_path / "backend.log") as served, \
            Served(proxy_ini, front, tmp_path / "proxy.log"):
        status, _, body = http_request(front, "/some/path?x=1", headers={
            "Host": "www.example.com", "Accept": "application/json"})
        assert status == 200, body
        environ = json.loads(body)
        assert environ["HTTP_HOST"] == "www.example.com"
        assert environ["SERVER_NAME"] == "www.example.com"
        assert environ["REMOTE_ADDR"] == "127.0.0.1"
        assert environ["PATH_INFO"] == "/some/path"
        assert environ["QUERY_STRING"] == "x=1"
        assert environ["wsgiproxy.orig"]  # the middleware did rebuild it
        wait_until(lambda: "neither secret_file nor trust_ips" in served.output(),
                   what="the backend's warning about trusting loopback only")


def test_wsgiproxy02_signed(tmp_path):
    command = snippet("migration-wsgiproxy02-make-secret").text
    lines = [line[2:] for line in command.splitlines() if line.startswith("$ ")]
    assert len(lines) == 1
    done = subprocess.run(lines[0], shell=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0
    assert len((tmp_path / "secret.txt").read_text().strip()) >= 40
    front, back = free_port(), free_port()
    proxy_ini, backend_ini = write_configs(tmp_path, {
        "proxy.ini": snippet("migration-wsgiproxy02-signed-proxy-ini").text,
        "backend.ini": snippet("migration-wsgiproxy02-signed-backend-ini").text}, front, back)
    with Served(backend_ini, back, tmp_path / "backend.log"), \
            Served(proxy_ini, front, tmp_path / "proxy.log"):
        status, _, body = http_request(front, "/page?user=alice", headers={
            "Host": "www.example.com", "Accept": "application/json"})
        assert status == 200, body
        environ = json.loads(body)
        assert environ["REMOTE_USER"] == "alice"
        assert environ["HTTP_HOST"] == "www.example.com"
        assert environ["wsgiproxy.key_id"]
        # Directly to the backend, with or without forged headers: 403.
        for forged in ({}, {"X-WSGIProxy-Str-0": "REMOTE_USER admin",
                            "X-Forwarded-Server": "evil.example"}):
            status, _, body = http_request(back, "/page", headers=dict(
                forged, Accept="application/json"))
            assert status == 403, body
            assert json.loads(body)["error"]["message"].startswith(
                "X-WSGIProxy-Signature: missing")


def mw(app, ini_options, tmp_path, global_options=""):
    """The middleware loaded from a ``[filter:...]`` section with these option lines."""
    path = tmp_path / ("mw%d.ini" % next(_counter))
    path.write_text("[DEFAULT]\n%s\n[app:main]\nuse = egg:WSGIProxy#sample\n"
                    "[filter:fixup]\nuse = egg:WSGIProxy#main\n%s\n"
                    % (global_options, ini_options))
    return loadfilter("config:%s" % path, name="fixup")(app)


_counter = itertools.count()
FORWARDED = {"X-Forwarded-Server": "www.example.com", "X-Forwarded-Scheme": "https",
             "X-Forwarded-For": "192.0.2.7, 10.0.0.1", "X-Forwarded-Script-Name": "/mount"}


def test_wsgiproxy02_now_column(tmp_path, secret_file, backend, caplog):
    """The "now" column of the page's table, row by row."""
    echo = backend.app

    def environ(app, path="/page", peer="127.0.0.1", headers=FORWARDED):
        answer = call(app, path, headers=headers, environ={"REMOTE_ADDR": peer})
        return answer if answer["status"] != 200 else json.loads(answer["body"])

    # Neither secret_file nor trust_ips: loopback only, with a warning.
    with caplog.at_level(logging.WARNING, "wsgiproxy.middleware"):
        bare = mw(echo, "", tmp_path)
    assert "neither secret_file nor trust_ips" in caplog.text
    assert environ(bare)["host"] == "www.example.com"
    assert environ(bare, peer="192.0.2.99")["host"] == "localhost:80"
    assert environ(mw(echo, "trust_ips = *", tmp_path), peer="192.0.2.99")["host"] \
        == "www.example.com"
    # secret_file: unsigned requests are refused.
    refused = environ(mw(echo, "", tmp_path, "secret_file = %s" % secret_file))
    assert refused["status"] == 403
    # trust_ips: addresses and ranges, IPv4 and IPv6.
    trusting = mw(echo, "trust_ips = 10.0.0.0/8 2001:db8::/32", tmp_path)
    assert environ(trusting, peer="10.1.2.3")["host"] == "www.example.com"
    assert environ(trusting, peer="2001:db8::5")["host"] == "www.example.com"
    assert environ(trusting, peer="192.0.2.99")["host"] == "localhost:80"
    # prefix takes effect.
    assert environ(mw(echo, "prefix = /site", tmp_path))["script_name"] == "/site"
    # pop_prefix, scheme, host (without a port), domain, port are .ini options.
    popping = mw(echo, "pop_prefix = /inner", tmp_path)
    seen_ = environ(popping, "/inner/page", headers={})
    assert (seen_["script_name"], seen_["path_info"]) == ("/inner", "/page")
    assert environ(popping, "/elsewhere", headers={})["status"] == 400
    forced = environ(mw(echo, "scheme = https\nhost = shop.example", tmp_path), headers={})
    assert (forced["scheme"], forced["host"], forced["server_port"]) == \
        ("https", "shop.example", "443")
    forced = environ(mw(echo, "domain = shop.example\nport = 8443", tmp_path), headers={})
    assert (forced["server_name"], forced["server_port"]) == ("shop.example", "8443")
    # X-Forwarded-For: the rightmost address; X-Forwarded-Script-Name: SCRIPT_NAME
    # (X-Script-Name still read, and put in front).
    seen_ = environ(bare)
    assert seen_["remote_addr"] == "10.0.0.1"
    assert seen_["script_name"] == "/mount"
    assert environ(bare, headers=dict(FORWARDED, **{"X-Script-Name": "/outer"}))[
        "script_name"] == "/outer/mount"
    # Keys: .ini options; pickles need a secret on the proxy and a signature at the backend.
    app_ini = tmp_path / "app.ini"
    app_ini.write_text("[app:main]\nuse = egg:WSGIProxy#main\nhref = %s\n"
                       "pickle_keys = myapp.state\n" % backend.url)
    with pytest.raises(ValueError, match="pickle_keys needs secret_file"):
        loadapp("config:%s" % app_ini)
    pickled = environ(mw(echo, "trust_ips = 127.0.0.1", tmp_path),
                      headers={"X-WSGIProxy-Pickle-0": "myapp.state b64gARLAS4="})
    assert pickled["status"] == 403
    # href with a path.
    with Backend(wrap=WSGIProxyMiddleware) as fixed:
        app_ini.write_text("[app:main]\nuse = egg:WSGIProxy#main\nhref = %s/inner\n"
                           "string_keys = REMOTE_USER\n" % fixed.url)
        proxy = loadapp("config:%s" % app_ini)
        answer = call(proxy, "/page?q=1", environ={"REMOTE_USER": "bob"})
        seen_ = seen(answer)
        assert (seen_["script_name"], seen_["path_info"], seen_["query"]) == ("", "/page", "q=1")
        assert seen_["remote_user"] == "bob"
        # real_proxy: paste.httpserver's proxy keys choose the target; transport options.
        app_ini.write_text("[app:main]\nuse = egg:WSGIProxy#real_proxy\nread_timeout = 5\n")
        real = loadapp("config:%s" % app_ini)
        answer = call(real, "/direct", environ={
            "paste.httpserver.proxy.scheme": "http",
            "paste.httpserver.proxy.host": "127.0.0.1:%d" % fixed.port})
        assert seen(answer)["path_info"] == "/direct"


def test_wsgiproxy02_python(backend):
    text = snippet("migration-wsgiproxy02-python").text
    namespace = run_snippet(text, {"myapp": backend.app})
    with WaitressServer(namespace["backend"]) as served:
        proxy = run_snippet(adapt(text, {"http://127.0.0.1:8081/": served.url + "/"}),
                            {"myapp": backend.app})["proxy"]
        seen_ = seen(call(proxy, "/page", environ={"REMOTE_USER": "bob"}))
    assert seen_["remote_user"] == "bob"
    assert (seen_["script_name"], seen_["scheme"]) == ("/site", "https")


def test_wsgiproxy02_wire_request_is_refused():
    """The request 0.2.2 sent (recorded under Python 2.7.18) gets a 400 from a trusting backend."""
    text = snippet("migration-wsgiproxy02-wire").text
    with WaitressServer(WSGIProxyMiddleware(Echo())) as served:
        raw = adapt(text, {"127.0.0.1:8081": "127.0.0.1:%d" % served.port})
        raw = raw.rstrip("\n").replace("\n", "\r\n") + "\r\nConnection: close\r\n\r\n"
        answer = send_raw(served.port, raw.encode("latin-1"))
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"X-WSGIProxy-Version" in answer and b"0.1" in answer
    # From an address it does not trust, the headers are ignored and it is served.
    answer = call(WSGIProxyMiddleware(Echo()), "/some/path",
                  headers={"X-WSGIProxy-Version": "0.1",
                           "X-Forwarded-Server": "www.example.com"},
                  environ={"REMOTE_ADDR": "192.0.2.99"})
    assert seen(answer)["host"] == "localhost:80"


# -- paste.proxy ------------------------------------------------------------------

def load_ini(tmp_path, text, replacements):
    """Load ``[app:main]`` of an .ini snippet, with ``{old: new}`` replaced."""
    path = tmp_path / ("app%d.ini" % next(_counter))
    path.write_text(adapt(text, replacements))
    return loadapp("config:%s" % path)


CLIENT = {"environ": {"REMOTE_ADDR": "192.0.2.7"}}
WIRE = ["method", "path_info", "query", "body"]


def requests_for(prefix=""):
    return [
        dict(url=prefix + "/page?q=1&r=%C3%BC", headers={"Host": "www.example.com",
                                                          "Cookie": "session=abc"}, **CLIENT),
        dict(url=prefix + "/form", method="POST", body="a=1&b=%C3%BC",
             headers={"Host": "www.example.com",
                      "Content-Type": "application/x-www-form-urlencoded"}, **CLIENT),
    ]


def test_paste_proxy_ini_equivalent(tmp_path, backend):
    to_backend = {DOC_BACKEND: backend.url}
    theirs = load_ini(tmp_path, snippet("migration-paste-proxy-ini").text, to_backend)
    ours = load_ini(tmp_path, snippet("migration-paste-ours-ini").text, to_backend)
    for request in requests_for():
        a, b = seen(call(theirs, **request)), seen(call(ours, **request))
        same(a, b, WIRE)
        assert a["path_info"].startswith("/app/")
        assert a["headers"]["Host"] == b["headers"]["Host"] == "127.0.0.1:%d" % backend.port
        assert a["headers"]["X-Forwarded-For"] == b["headers"]["X-Forwarded-For"] == "192.0.2.7"
    # Other methods: Paste 400 "Disallowed", ours 405 with Allow.
    a, b = call(theirs, "/page", method="DELETE"), call(ours, "/page", method="DELETE")
    assert a["status"] == 400 and "Disallowed" in a["body"]
    assert b["status"] == 405 and header(b, "Allow") == "GET, POST"


def test_paste_proxy_python_equivalent(backend):
    theirs = run_snippet(adapt(snippet("migration-paste-proxy-python").text,
                               {DOC_BACKEND: backend.url}))["app"]
    ours = run_snippet(adapt(snippet("migration-paste-ours-python").text,
                             {DOC_BACKEND: backend.url}))["app"]
    for request in requests_for():
        a, b = seen(call(theirs, **request)), seen(call(ours, **request))
        same(a, b, WIRE)
        assert "Cookie" not in a["headers"] and "Cookie" not in b["headers"]
    assert call(ours, "/page", method="PUT")["status"] == 405


def test_paste_proxy_differences(backend):
    from paste.proxy import Proxy
    # The trailing slash.
    assert seen(call(Proxy(backend.url + "/app"), "/page"))["path_info"] == "/page"
    assert seen(call(Proxy(backend.url + "/app/"), "/page"))["path_info"] == "/app/page"
    for href in (backend.url + "/app", backend.url + "/app/"):
        assert seen(call(WSGIProxyApp(href), "/page"))["path_info"] == "/app/page"
    # Headers: ours tells the backend more, and drops what the client claimed.
    claims = {"Host": "www.example.com", "X-Forwarded-Server": "evil.example",
              "X-WSGIProxy-Str-0": "REMOTE_USER admin"}
    a = seen(call(Proxy(backend.url + "/app/"), "/page", headers=claims, **CLIENT))
    b = seen(call(WSGIProxyApp(backend.url + "/app"), "/page", headers=claims, **CLIENT))
    assert a["headers"]["X-Forwarded-Server"] == "evil.example"
    assert b["headers"]["X-Forwarded-Server"] == "www.example.com"
    assert "X-Wsgiproxy-Str-0" in a["headers"] and "X-Wsgiproxy-Str-0" not in b["headers"]
    assert b["headers"]["X-Forwarded-Scheme"] == "http"
    # Redirects into href.
    a = call(Proxy(backend.url + "/app/"), "/redirect", headers={"Host": "www.example.com"})
    b = call(WSGIProxyApp(backend.url + "/app"), "/redirect", headers={"Host": "www.example.com"})
    assert header(a, "Location") == backend.url + "/app/login"
    assert header(b, "Location") == "http://www.example.com/login"
    # A backend that is down.
    down = "http://127.0.0.1:%d/" % free_port()
    with WaitressServer(Proxy(down)) as served:
        status, _, _ = http_request(served.port, "/page")
    assert status == 500
    with pytest.raises(ConnectionRefusedError):
        call(Proxy(down), "/page")
    answer = call(WSGIProxyApp(down), "/page", headers={"Accept": "application/json"})
    assert answer["status"] == 502
    assert json.loads(answer["body"])["error"]["type"] == "BadGateway"


def test_paste_transparent_equivalent(tmp_path, backend):
    to_backend = {"127.0.0.1:8081": "127.0.0.1:%d" % backend.port}
    theirs_ini = load_ini(tmp_path, snippet("migration-paste-transparent-ini").text, to_backend)
    ours_ini = load_ini(tmp_path, snippet("migration-paste-transparent-ours-ini").text,
                        to_backend)
    theirs_py = run_snippet(adapt(snippet("migration-paste-transparent-python").text,
                                  to_backend))["app"]
    ours_py = run_snippet(adapt(snippet("migration-paste-transparent-ours-python").text,
                                {'"8081"': '"%d"' % backend.port}))["app"]
    request = dict(url="/page?q=1", headers={"Host": "www.example.com"}, **CLIENT)
    answers = [seen(call(app, **request)) for app in (theirs_ini, ours_ini, theirs_py, ours_py)]
    for a in answers:
        same(a, answers[0], WIRE)
        assert a["host"] == "www.example.com"
    # Mounted below the root: SCRIPT_NAME + PATH_INFO, or PATH_INFO after href.
    mounted = dict(request, environ={"REMOTE_ADDR": "192.0.2.7", "SCRIPT_NAME": "/mount"})
    a, b, c, d = (seen(call(app, **mounted))
                  for app in (theirs_ini, ours_ini, theirs_py, ours_py))
    assert a["path_info"] == c["path_info"] == d["path_info"] == "/mount/page"
    assert b["path_info"] == "/page"
    assert b["headers"]["X-Forwarded-Script-Name"] == "/mount"
    # X-Forwarded-For: TransparentProxy adds it when absent; ExactProxy adds nothing.
    assert c["headers"]["X-Forwarded-For"] == "192.0.2.7"
    assert not any(name.startswith("X-Forwarded") for name in d["headers"])
    kept = seen(call(theirs_py, "/page", headers={"X-Forwarded-For": "203.0.113.1"}))
    assert kept["headers"]["X-Forwarded-For"] == "203.0.113.1"


# -- WSGIProxy2 -------------------------------------------------------------------

@pytest.fixture(scope="module")
def wsgiproxy2_python():
    return peer_python("wsgiproxy2", WSGIPROXY2_REQUIREMENTS)


WSGIPROXY2_REQUESTS = [
    dict(url="/page?q=1&r=%C3%BC", headers={"Host": "www.example.com"},
         environ={"REMOTE_ADDR": "192.0.2.7", "SCRIPT_NAME": "/mount"}),
    dict(url="/form", method="POST", body="a=1&b=2",
         headers={"Host": "www.example.com", "Content-Type": "application/x-www-form-urlencoded"},
         environ={"REMOTE_ADDR": "192.0.2.7", "SCRIPT_NAME": "/mount"}),
    dict(url="/redirect", headers={"Host": "www.example.com"}, environ={"SCRIPT_NAME": "/mount"}),
    dict(url="/redirect-relative", headers={"Host": "www.example.com"},
         environ={"SCRIPT_NAME": "/mount"}),
    dict(url="/page", headers={"X-WSGIProxy-Str-0": "REMOTE_USER admin",
                               "X-Forwarded-Proto": "https"}),
    dict(url="/page", method="PROPFIND"),
]


@pytest.mark.timeout(900)
def test_wsgiproxy2_hostproxy(wsgiproxy2_python, backend):
    theirs = run_peer(wsgiproxy2_python, adapt(snippet("migration-wsgiproxy2-hostproxy").text,
                                               {DOC_BACKEND: backend.url}),
                      "proxy", WSGIPROXY2_REQUESTS)
    ours_app = run_snippet(adapt(snippet("migration-wsgiproxy2-ours").text,
                                 {DOC_BACKEND: backend.url}))["proxy"]
    ours = [call(ours_app, **r) for r in WSGIPROXY2_REQUESTS]
    # GET and POST: the same request at the backend, the same answer.
    for a, b in zip(theirs[:2], ours[:2]):
        x, y = seen(a), seen(b)
        same(x, y, WIRE + ["host"])
        assert x["host"] == "127.0.0.1:%d" % backend.port
        for name in ("X-Forwarded-For", "X-Forwarded-Server", "X-Forwarded-Scheme",
                     "X-Forwarded-Script-Name"):
            assert x["headers"][name] == y["headers"][name], name
        assert y["headers"]["X-Forwarded-Server"] == "www.example.com"
        assert y["headers"]["X-Forwarded-Script-Name"] == "/mount"
        assert a["status"] == b["status"] == 200
    # Redirects.
    assert header(theirs[2], "Location") == backend.url + "/mount/login"
    assert header(ours[2], "Location") == "http://www.example.com/mount/login"
    assert header(theirs[3], "Location") == backend.url + "/mount/login"
    assert header(ours[3], "Location") == "/login"
    # The client's protocol headers: passed on by WSGIProxy2, dropped by ours.
    x, y = seen(theirs[4]), seen(ours[4])
    assert x["headers"]["X-Wsgiproxy-Str-0"] == "REMOTE_USER admin"
    assert x["headers"]["X-Forwarded-Proto"] == "https"
    assert "X-Wsgiproxy-Str-0" not in y["headers"] and "X-Forwarded-Proto" not in y["headers"]
    # Methods.
    assert theirs[5]["status"] == 405
    assert seen(ours[5])["method"] == "PROPFIND"


@pytest.mark.timeout(900)
def test_wsgiproxy2_errors(wsgiproxy2_python):
    down = "http://127.0.0.1:%d" % free_port()
    urllib3_client = adapt(snippet("migration-wsgiproxy2-hostproxy").text, {DOC_BACKEND: down})
    httplib_client = "from wsgiproxy import HostProxy\nproxy = HostProxy(%r)\n" % down
    assert run_peer(wsgiproxy2_python, urllib3_client, "proxy", [dict(url="/")])[0]["status"] \
        == 500
    assert run_peer(wsgiproxy2_python, httplib_client, "proxy", [dict(url="/")])[0]["status"] \
        == 502
    ours = run_snippet(adapt(snippet("migration-wsgiproxy2-ours").text, {DOC_BACKEND: down}))
    assert call(ours["proxy"], "/")["status"] == 502


# -- Werkzeug -----------------------------------------------------------------------

def test_werkzeug_proxymiddleware(backend):
    theirs = run_snippet(adapt(snippet("migration-werkzeug-proxymiddleware").text,
                               {DOC_BACKEND: backend.url}), {"app": local_app})["app"]
    ours = run_snippet(adapt(snippet("migration-werkzeug-proxymiddleware-ours").text,
                             {DOC_BACKEND: backend.url}), {"app": local_app})["app"]
    for request in requests_for("/api"):
        a, b = seen(call(theirs, **request)), seen(call(ours, **request))
        same(a, b, WIRE)
        assert a["path_info"] in ("/page", "/form")
        # Werkzeug's "<auto>" Host has no port; ours does.
        assert a["host"] == "127.0.0.1"
        assert b["host"] == "127.0.0.1:%d" % backend.port
        assert a["headers"]["Connection"] == "close"
        assert not any(name.startswith("X-Forwarded") for name in a["headers"])
        assert b["headers"]["X-Forwarded-For"] == "192.0.2.7"
        assert b["headers"]["X-Forwarded-Script-Name"] == "/api"
    for app in (theirs, ours):
        assert call(app, "/other")["body"] == "local"
    a = call(theirs, "/api/redirect", headers={"Host": "www.example.com"})
    b = call(ours, "/api/redirect", headers={"Host": "www.example.com"})
    assert header(a, "Location") == backend.url + "/login"
    assert header(b, "Location") == "http://www.example.com/api/login"
    # remove_prefix false: the prefix in href.
    kept = WSGIProxyApp(backend.url + "/api")
    assert seen(call(kept, "/page"))["path_info"] == "/api/page"


ENVIRON_KEYS = ["remote_addr", "scheme", "host", "server_name", "server_port", "script_name",
                "path_info"]
NGINX_HEADERS = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "www.example.com:8443", "X-Forwarded-Prefix": "/shop"}


def test_werkzeug_proxyfix(backend):
    theirs = run_snippet(snippet("migration-werkzeug-proxyfix").text, {"app": backend.app})["app"]
    ours = run_snippet(snippet("migration-werkzeug-proxyfix-ours").text,
                       {"app": backend.app})["app"]
    with WaitressServer(theirs) as t, WaitressServer(ours) as o:
        def get(server, headers, source=None):
            status, _, body = http_request(server.port, "/page", headers=headers, source=source)
            return status, (json.loads(body) if status == 200 else body)

        (s1, a), (s2, b) = get(t, NGINX_HEADERS), get(o, NGINX_HEADERS)
        assert s1 == s2 == 200
        same(a, b, ENVIRON_KEYS)
        assert (b["remote_addr"], b["scheme"], b["host"], b["script_name"]) == \
            ("203.0.113.9", "https", "www.example.com:8443", "/shop")
        # From another address: ProxyFix believes it, ours does not.
        (_, a), (_, b) = get(t, NGINX_HEADERS, "127.0.0.2"), get(o, NGINX_HEADERS, "127.0.0.2")
        assert a["remote_addr"] == "203.0.113.9" and a["scheme"] == "https"
        assert b["remote_addr"] == "127.0.0.2" and b["scheme"] == "http"
        # Checking: a bad scheme or address is a 400 here.
        bad = dict(NGINX_HEADERS, **{"X-Forwarded-Proto": "javascript"})
        (s1, a), (s2, b) = get(t, bad), get(o, bad)
        assert (s1, a["scheme"]) == (200, "javascript")
        assert s2 == 400
        for name, value in (("X-Forwarded-For", "not-an-address"),
                            ("X-Forwarded-Host", "bad host"),
                            ("X-Forwarded-Host", "www.example.com:port")):
            status, _ = get(o, dict(NGINX_HEADERS, **{name: value}))
            assert status == 400, (name, value)
        # Only those headers: from front_proxy_ips, WSGIProxy's own headers (which
        # nginx passes on from its clients) are not believed, as ProxyFix ignores them.
        claims = dict(NGINX_HEADERS, **{"X-WSGIProxy-Str-0": "REMOTE_USER admin",
                                        "X-Forwarded-Server": "evil.example",
                                        "X-Forwarded-Scheme": "http",
                                        "X-Forwarded-Script-Name": "/evil"})
        (s1, a), (s2, b) = get(t, claims), get(o, claims)
        assert s1 == s2 == 200
        same(a, b, ENVIRON_KEYS + ["remote_user"])
        assert b["remote_user"] is None
        assert (b["host"], b["scheme"], b["script_name"]) == \
            ("www.example.com:8443", "https", "/shop")
    # They are believed from trust_ips, which is for WSGIProxyApp hosts (they remove
    # them from client requests), not for nginx.
    wsgiproxy_peer = WSGIProxyMiddleware(backend.app, trust_ips="127.0.0.1")
    answer = seen(call(wsgiproxy_peer, "/page", headers=claims,
                       environ={"REMOTE_ADDR": "127.0.0.1"}))
    assert answer["remote_user"] == "admin" and answer["host"] == "evil.example"
    # Forwarded, and the original values.
    fwd = WSGIProxyMiddleware(backend.app, front_proxy_ips="127.0.0.1", forwarded=1)
    answer = seen(call(fwd, "/page", headers={
        "Forwarded": "for=203.0.113.9;proto=https;host=www.example.com",
        "X-Forwarded-For": "6.6.6.6"}, environ={"REMOTE_ADDR": "127.0.0.1"}))
    assert (answer["remote_addr"], answer["scheme"]) == ("203.0.113.9", "https")
    captured = {}

    def keep(environ, start_response):
        captured.update(environ["wsgiproxy.orig"])
        return backend.app(environ, start_response)
    call(WSGIProxyMiddleware(keep, front_proxy_ips="127.0.0.1"), "/page",
         headers=NGINX_HEADERS, environ={"REMOTE_ADDR": "127.0.0.1"})
    assert captured["REMOTE_ADDR"] == "127.0.0.1"


# -- flask-reverse-proxy-fix ------------------------------------------------------------

def test_flask_reverse_proxy_fix_no_longer_imports():
    from importlib.metadata import version
    assert int(version("werkzeug").split(".")[0]) >= 1
    assert version("flask-reverse-proxy-fix") == "0.2.1"
    with pytest.raises(ModuleNotFoundError, match="werkzeug.contrib"):
        run_snippet(snippet("migration-frpf-theirs").text)


def test_flask_reverse_proxy_fix_ours():
    flask_app = run_snippet(snippet("migration-frpf-ours").text)["app"]
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "www.example.com",
               "X-Forwarded-For": "203.0.113.9"}
    with WaitressServer(flask_app) as served:
        status, _, body = http_request(served.port, "/some-service/v1/foo", headers=headers)
        assert (status, body) == (200, b"https://www.example.com/some-service/v1/foo")
        status, _, _ = http_request(served.port, "/some-service/v10/foo", headers=headers)
        assert status == 400
    # A proxy that removes the prefix: prefix= instead.
    stripped = run_snippet(snippet("migration-frpf-ours").text)["app"]
    stripped.wsgi_app = WSGIProxyMiddleware(stripped.wsgi_app.app, front_proxy_ips="127.0.0.1",
                                            x_host=1, prefix="/some-service/v1")
    with WaitressServer(stripped) as served:
        status, _, body = http_request(served.port, "/foo", headers=headers)
    assert (status, body) == (200, b"https://www.example.com/some-service/v1/foo")


# -- Django: django-revproxy and django-proxy-server ----------------------------------------

@pytest.fixture(scope="module")
def django_ready():
    """Django configured as tests/test_end_to_end.py does (undone after, if done here)."""
    import django
    from django.conf import settings
    from django.utils.functional import empty
    configured_here = not settings.configured
    if configured_here:
        settings.configure(DEBUG=False, SECRET_KEY="docs-migration-tests", ALLOWED_HOSTS=["*"],
                           ROOT_URLCONF=__name__, MIDDLEWARE=[], INSTALLED_APPS=[],
                           USE_TZ=True)
        django.setup()
    if not hasattr(settings, "REVPROXY"):  # what revproxy's AppConfig.ready() would set
        settings.REVPROXY = {"QUOTE_SPACES_AS_PLUS": True}
    yield
    if configured_here:
        settings._wrapped = empty


class LoggedIn:
    """request.user for a logged-in user (as django.contrib.auth would set it)."""

    is_active = is_authenticated = True

    def __init__(self, name):
        self.name = name

    def get_username(self):
        return self.name


def django_app(patterns, user=None):
    """A Django WSGI application for ``patterns`` (its own urlconf), with ``user`` logged in."""
    from django.core.handlers.wsgi import WSGIHandler
    name = "docs_migration_urls_%d" % next(_counter)
    module = types.ModuleType(name)
    module.urlpatterns = patterns
    sys.modules[name] = module

    class Handler(WSGIHandler):
        def get_response(self, request):
            request.urlconf = name
            if user is not None:
                request.user = LoggedIn(user)
            return super().get_response(request)
    return Handler()


def django_backend(monkeypatch, text, patterns, replacements):
    """Run a ``wsgi.py`` snippet with get_wsgi_application() serving ``patterns``."""
    import django.core.wsgi
    monkeypatch.setattr(django.core.wsgi, "get_wsgi_application",
                        lambda: django_app(patterns))
    return run_snippet(adapt(text, replacements))["application"]


def django_echo(request):
    """A backend view: what Django sees of the request."""
    from django.http import JsonResponse
    return JsonResponse({"remote_user": request.META.get("REMOTE_USER"),
                         "remote_addr": request.META.get("REMOTE_ADDR"),
                         "script_name": request.META.get("SCRIPT_NAME"),
                         "path_info": request.path_info,
                         "url": request.build_absolute_uri()})


@pytest.mark.usefixtures("django_ready")
def test_django_revproxy_and_our_view(backend, secret_file):
    revproxy_ns = run_snippet(adapt(snippet("migration-revproxy-theirs").text,
                                    {DOC_BACKEND + "/": backend.url + "/"}))
    ours_ns = run_snippet(adapt(snippet("migration-revproxy-ours").text,
                                {DOC_BACKEND: backend.url, DOC_SECRET: secret_file}))
    theirs = django_app(revproxy_ns["urlpatterns"], user="alice")
    ours = django_app(ours_ns["urlpatterns"], user="alice")
    host = {"Host": "www.example.com"}
    with WaitressServer(theirs) as t, WaitressServer(ours) as o:
        for path, method, body in (("/app/page?q=1&r=%C3%BC", "GET", None),
                                   ("/app/form", "POST", "a=1&b=2")):
            headers = dict(host, **({"Content-Type": "text/plain"} if body else {}))
            (s1, _, b1), (s2, _, b2) = (http_request(server.port, path, method, headers, body)
                                        for server in (t, o))
            assert s1 == s2 == 200
            a, b = json.loads(b1), json.loads(b2)
            same(a, b, WIRE)
            assert a["path_info"] in ("/page", "/form")
            # add_x_forwarded: revproxy sends -For and -Proto; ours -For, -Server, ...
            assert a["headers"]["X-Forwarded-For"] == b["headers"]["X-Forwarded-For"] \
                == "127.0.0.1"
            assert a["headers"]["X-Forwarded-Proto"] == "http"
            assert b["headers"]["X-Forwarded-Server"] == "www.example.com"
            assert b["headers"]["X-Forwarded-Script-Name"] == "/app"
            # add_remote_user: a REMOTE_USER header, which waitress drops; ours is signed.
            assert not any("Remote" in name for name in a["headers"])
            assert b["headers"]["X-Wsgiproxy-Str-0"] == "REMOTE_USER alice"
            assert "X-Wsgiproxy-Signature" in b["headers"]
        # Cookies.
        for server in (t, o):
            status, headers, _ = http_request(server.port, "/app/cookies", headers=host)
            cookies = all_headers(headers, "Set-Cookie")
            assert status == 200
            assert sorted(c.split("=")[0] for c in cookies) == ["first", "second"], cookies
            assert any("HttpOnly" in c for c in cookies)
        # Location rewriting: revproxy loses the mount point.
        (s1, h1, _), (s2, h2, _) = (http_request(server.port, "/app/redirect", headers=host)
                                    for server in (t, o))
        assert s1 == s2 == 302
        assert all_headers(h1, "Location") == ["http://www.example.com/login"]
        assert all_headers(h2, "Location") == ["http://www.example.com/app/login"]


@pytest.mark.usefixtures("django_ready")
def test_django_revproxy_ours_with_backend(monkeypatch, secret_file):
    from django.urls import re_path
    application = django_backend(monkeypatch, snippet("migration-revproxy-backend").text,
                                 [re_path(r"^.*$", django_echo)], {DOC_SECRET: secret_file})
    with WaitressServer(application) as back:
        ours_ns = run_snippet(adapt(snippet("migration-revproxy-ours").text,
                                    {DOC_BACKEND: back.url, DOC_SECRET: secret_file}))
        with WaitressServer(django_app(ours_ns["urlpatterns"], user="alice")) as front:
            status, _, body = http_request(front.port, "/app/page?q=1",
                                           headers={"Host": "www.example.com"})
            assert status == 200, body
            assert json.loads(body) == {"remote_user": "alice", "remote_addr": "127.0.0.1",
                                        "script_name": "/app", "path_info": "/page",
                                        "url": "http://www.example.com/app/page?q=1"}
        status, _, _ = http_request(back.port, "/page", headers={"Accept": "application/json"})
        assert status == 403
    # The backend is gone: revproxy raises (Django answers 500), ours answers 502.
    revproxy_ns = run_snippet(adapt(snippet("migration-revproxy-theirs").text,
                                    {DOC_BACKEND + "/": back.url + "/"}))
    with WaitressServer(django_app(revproxy_ns["urlpatterns"])) as t, \
            WaitressServer(django_app(ours_ns["urlpatterns"])) as o:
        assert http_request(t.port, "/app/page")[0] == 500
        assert http_request(o.port, "/app/page")[0] == 502


@pytest.fixture(scope="module")
def dps_python():
    return peer_python("django-proxy-server", DPS_REQUIREMENTS)


DPS_FAILS = r'''
import json, sys
out = {}
try:
    exec(sys.stdin.read(), {"__name__": "snippet"})
except Exception as exc:
    out["call"] = "%s: %s" % (type(exc).__name__, exc)
try:
    import proxy_server.middleware
except Exception as exc:
    out["middleware"] = "%s: %s" % (type(exc).__name__, exc)
json.dump(out, sys.stdout)
'''

DPS_SERVER = r'''
import json, sys
spec = json.load(open(sys.argv[1]))
import django
from django.conf import settings
keys = {}
exec(spec["settings"], keys)
settings.configure(DEBUG=False, SECRET_KEY="backend-site", ALLOWED_HOSTS=["*"],
                   ROOT_URLCONF="__main__", MIDDLEWARE=[], INSTALLED_APPS=[],
                   PROXY_API_KEYS=keys["PROXY_API_KEYS"])
django.setup()
views = {"__name__": "views"}
exec(spec["view"], views)
from django.urls import path
urlpatterns = [path("orders", views["orders"])]
from django.core.wsgi import get_wsgi_application
from wsgiref.simple_server import WSGIRequestHandler, make_server


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


server = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=Quiet)
print(server.server_port, flush=True)
server.serve_forever()
'''


@pytest.mark.timeout(900)
def test_django_proxy_server_client_fails_on_python3(dps_python):
    done = subprocess.run([dps_python, "-I", "-c", DPS_FAILS],
                          input=snippet("migration-dps-theirs-call").text.encode(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["call"] == "ModuleNotFoundError: No module named 'httplib'"
    assert out["middleware"] == "ModuleNotFoundError: No module named 'django.core.urlresolvers'"


@pytest.mark.timeout(900)
def test_django_proxy_server_backend(dps_python, tmp_path):
    settings_text = snippet("migration-dps-theirs-settings").text
    key = run_snippet(settings_text)["PROXY_API_KEYS"][0]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"settings": settings_text,
                                "view": snippet("migration-dps-theirs-view").text}))
    with Process([dps_python, "-I", "-c", DPS_SERVER, str(spec)], stderr=subprocess.PIPE) as server:
        line = server.proc.stdout.readline()
        assert line.strip().isdigit(), server.proc.stderr.read()
        port = int(line)
        status, _, body = http_request(port, "/orders", headers={"api-key": key})
        assert (status, json.loads(body)) == (200, {"response": {"orders": []}})
        expected = json.loads(snippet("migration-dps-theirs-error").text)
        for headers in ({"api-key": "wrong"}, {}):
            status, _, body = http_request(port, "/orders", headers=headers)
            assert (status, json.loads(body)) == (403, expected)


@pytest.mark.usefixtures("django_ready")
def test_django_proxy_server_ours(monkeypatch, secret_file):
    from django.urls import path
    views = run_snippet(snippet("migration-dps-ours-view").text)
    application = django_backend(monkeypatch, snippet("migration-dps-ours-wsgi").text,
                                 [path("orders", views["orders"])], {DOC_SECRET: secret_file})
    calling = snippet("migration-dps-ours-call").text
    with WaitressServer(application) as back:
        ns = run_snippet(adapt(calling, {DOC_BACKEND: back.url, DOC_SECRET: secret_file}))
        assert ns["call_backend"]("GET", "/orders", user="alice") == \
            (200, {"orders": [], "user": "alice"})
        assert ns["call_backend"]("POST", "/orders", data={"item": 1}) == \
            (200, {"orders": [], "user": None})
        # Unsigned: the error JSON of the page, or HTML for other clients.
        status, headers, body = http_request(back.port, "/orders",
                                             headers={"Accept": "application/json"})
        assert (status, json.loads(body)) == (403, json.loads(
            snippet("migration-dps-ours-error").text))
        for accept, kind in (("text/html", "text/html"), (None, "text/plain")):
            status, headers, body = http_request(back.port, "/orders",
                                                 headers={"Accept": accept} if accept else {})
            assert status == 403 and dict(headers)["Content-Type"].startswith(kind)
        # A forged user name is no better.
        status, _, _ = http_request(back.port, "/orders", headers={
            "X-WSGIProxy-Str-0": "REMOTE_USER admin"})
        assert status == 403
    # The backend is gone: 502, same shape.
    gone = run_snippet(adapt(calling, {DOC_BACKEND: back.url, DOC_SECRET: secret_file}))
    status, data = gone["call_backend"]("GET", "/orders", user="alice")
    assert status == 502
    assert (data["error"]["code"], data["error"]["type"]) == (502, "BadGateway")
    assert sorted(data["error"]) == ["code", "message", "type"]
