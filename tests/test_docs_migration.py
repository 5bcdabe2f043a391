"""docs/migration/: our snippets run for real, next to the peers' where the page says the
two behave the same.

Ours run against this project.  The peers' snippets run against the real peer
packages -- Paste, Werkzeug and django-revproxy from the test environment
(setup.py's test extra); WSGIProxy2 (it installs a package named ``wsgiproxy``,
like this project) and django-proxy-server (it installs a top-level package
named ``tests``, like this suite) from virtual environments of their own in
``.venv-peers/``, made once and kept, and run there as subprocesses -- but only
to show parity: where a page says the two do the same, both talk to the same
loopback backend and the test compares the answers and the request the backend
received.  What a page says about a peer alone (how it differs, what it gets
wrong, that it no longer runs) is not asserted: a peer's next release may
change it, and this suite checks this project.  Those pages' tests check our
side of each difference instead.

The snippets name the backend ``http://127.0.0.1:8081`` (and the front
``8080``); the tests put the real, free ports in their place.  WSGIProxy 0.2
itself is Python 2 only and cannot run here: its ``.ini`` files are served by
this project, and the request it sends (recorded from 0.2.2 under Python
2.7.18) is the ``http`` snippet of the page.
"""

import ast
import fcntl
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import types

import pytest
from paste.deploy import loadapp, loadfilter  # type: ignore[import-untyped]

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.middleware import WSGIProxyMiddleware

from .client import JSON, get_json, json_error, request, send_raw
from .docsnippets import snippet
from .servers import ROOT, WSGIPROXY, Process, Served, WaitressServer, free_port, wait_until

#: Virtual environments of the peers that cannot share the test environment.
PEERS = os.path.join(ROOT, ".venv-peers")
WSGIPROXY2_REQUIREMENTS = ["WSGIProxy2==0.5.1", "WebOb>=1.8", "urllib3>=2"]
DPS_REQUIREMENTS = ["django-proxy-server==0.6", "Django>=5,<6"]
#: What the snippets call the backend and the secret file.
DOC_BACKEND = "http://127.0.0.1:8081"
DOC_SECRET = "/etc/myproject/wsgiproxy-secret"

urlpatterns: list = []  # ROOT_URLCONF when this module configures Django; views use their own


# -- helpers ------------------------------------------------------------------

def run(s, replacements=None, namespace=None):
    """Run the python snippet ``s`` (Snippet.run, after ``{old: new}`` replacements);
    returns its namespace."""
    return s.run(dict(namespace or {}, __name__="docs_migration_snippet"), replacements)


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
_runner: dict = {}
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


def error_of(answer, status):
    """The fields of a JSON error answer of ours, from a call() answer."""
    assert answer["status"] == status, answer
    assert header(answer, "Content-Type") == "application/json", answer
    error = json.loads(answer["body"])["error"]
    assert sorted(error) == ["code", "message", "type"] and error["code"] == status, error
    return error


def same(a, b, keys):
    for key in keys:
        assert a[key] == b[key], (key, a[key], b[key])


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
        {"code": code, "app": app, "requests": requests}).encode(), capture_output=True,
        timeout=120)
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


def local_app(environ, start_response):
    """The application that ProxyMiddleware-style dispatchers wrap."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"local"]


# -- WSGIProxy 0.2 --------------------------------------------------------------

def write_configs(tmp_path, snippets, front, back):
    """The ``.ini`` snippets ``{file name: snippet}`` with ports 8080/8081 changed to
    ``front``/``back``, written to ``tmp_path``; their paths."""
    paths = []
    for name, s in snippets.items():
        text = s.replaced({"8081": str(back)})
        path = tmp_path / name
        path.write_text(text.replace("8080", str(front)))
        paths.append(path)
    return paths


def served(config, port, tmp_path):
    """``wsgiproxy serve CONFIG`` on ``port`` (servers.Served), its output in tmp_path."""
    return Served([WSGIPROXY, "serve", config], port, tmp_path / (config.stem + ".log"))


def test_wsgiproxy02_ini_files_run_unchanged(tmp_path):
    front, back = free_port(), free_port()
    proxy_ini, backend_ini = write_configs(tmp_path, {
        "proxy.ini": snippet("migration-wsgiproxy02-proxy-ini"),
        "backend.ini": snippet("migration-wsgiproxy02-backend-ini")}, front, back)
    assert "egg:Paste#http" in proxy_ini.read_text()
    with served(backend_ini, back, tmp_path) as backend_server, \
            served(proxy_ini, front, tmp_path):
        environ = get_json(front, "/some/path?x=1", {"Host": "www.example.com"})
        assert environ["HTTP_HOST"] == "www.example.com"
        assert environ["SERVER_NAME"] == "www.example.com"
        assert environ["REMOTE_ADDR"] == "127.0.0.1"
        assert environ["PATH_INFO"] == "/some/path"
        assert environ["QUERY_STRING"] == "x=1"
        assert environ["wsgiproxy.orig"]  # the middleware did rebuild it
        wait_until(lambda: "neither secret_file nor trust_ips" in backend_server.output(),
                   what="the backend's warning about trusting loopback only")


def test_wsgiproxy02_signed(tmp_path):
    [command] = snippet("migration-wsgiproxy02-make-secret").commands()
    done = subprocess.run(command, shell=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0
    assert len((tmp_path / "secret.txt").read_text().strip()) >= 40
    front, back = free_port(), free_port()
    proxy_ini, backend_ini = write_configs(tmp_path, {
        "proxy.ini": snippet("migration-wsgiproxy02-signed-proxy-ini"),
        "backend.ini": snippet("migration-wsgiproxy02-signed-backend-ini")}, front, back)
    with served(backend_ini, back, tmp_path), served(proxy_ini, front, tmp_path):
        environ = get_json(front, "/page?user=alice", {"Host": "www.example.com"})
        assert environ["REMOTE_USER"] == "alice"
        assert environ["HTTP_HOST"] == "www.example.com"
        assert environ["wsgiproxy.key_id"]
        # Directly to the backend, with or without forged headers: 403.
        for forged in ({}, {"X-WSGIProxy-Str-0": "REMOTE_USER admin",
                            "X-Forwarded-Server": "evil.example"}):
            answer = request(back, "/page", headers=dict(forged, **JSON))
            assert json_error(answer, 403)["message"].startswith(
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
    namespace = run(snippet("migration-wsgiproxy02-python"), namespace={"myapp": backend.app})
    with WaitressServer(namespace["backend"]) as server:
        proxy = run(snippet("migration-wsgiproxy02-python"),
                    {"http://127.0.0.1:8081/": server.url + "/"}, {"myapp": backend.app})["proxy"]
        seen_ = seen(call(proxy, "/page", environ={"REMOTE_USER": "bob"}))
    assert seen_["remote_user"] == "bob"
    assert (seen_["script_name"], seen_["scheme"]) == ("/site", "https")


def test_wsgiproxy02_wire_request_is_refused():
    """The request 0.2.2 sent (recorded under Python 2.7.18) gets a 400 from a trusting backend."""
    with WaitressServer(WSGIProxyMiddleware(Echo())) as server:
        raw = snippet("migration-wsgiproxy02-wire").replaced({
            "127.0.0.1:8081": "127.0.0.1:%d" % server.port})
        raw = raw.rstrip("\n").replace("\n", "\r\n") + "\r\nConnection: close\r\n" \
            "Accept: application/json\r\n\r\n"
        error = json_error(send_raw(server.port, raw.encode("latin-1")), 400)
    assert "X-WSGIProxy-Version" in error["message"] and "0.1" in error["message"]
    # From an address it does not trust, the headers are ignored and it is served.
    answer = call(WSGIProxyMiddleware(Echo()), "/some/path",
                  headers={"X-WSGIProxy-Version": "0.1",
                           "X-Forwarded-Server": "www.example.com"},
                  environ={"REMOTE_ADDR": "192.0.2.99"})
    assert seen(answer)["host"] == "localhost:80"


# -- paste.proxy ------------------------------------------------------------------

def load_ini(tmp_path, s, replacements):
    """Load ``[app:main]`` of the .ini snippet ``s``, with ``{old: new}`` replaced."""
    path = tmp_path / ("app%d.ini" % next(_counter))
    path.write_text(s.replaced(replacements))
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
    theirs = load_ini(tmp_path, snippet("migration-paste-proxy-ini"), to_backend)
    ours = load_ini(tmp_path, snippet("migration-paste-ours-ini"), to_backend)
    for request_ in requests_for():
        a, b = seen(call(theirs, **request_)), seen(call(ours, **request_))
        same(a, b, WIRE)
        assert b["path_info"].startswith("/app/")
        assert a["headers"]["Host"] == b["headers"]["Host"] == "127.0.0.1:%d" % backend.port
        assert a["headers"]["X-Forwarded-For"] == b["headers"]["X-Forwarded-For"] == "192.0.2.7"
    # Other methods: ours answers 405 with Allow.
    b = call(ours, "/page", method="DELETE", headers=JSON)
    assert error_of(b, 405)["type"] == "MethodNotAllowed"
    assert header(b, "Allow") == "GET, POST"


def test_paste_proxy_python_equivalent(backend):
    theirs = run(snippet("migration-paste-proxy-python"), {DOC_BACKEND: backend.url})["app"]
    ours = run(snippet("migration-paste-ours-python"), {DOC_BACKEND: backend.url})["app"]
    for request_ in requests_for():
        a, b = seen(call(theirs, **request_)), seen(call(ours, **request_))
        same(a, b, WIRE)
        assert "Cookie" not in a["headers"] and "Cookie" not in b["headers"]
    assert call(ours, "/page", method="PUT")["status"] == 405


def test_paste_proxy_differences_our_side(backend):
    """What the page's "What differs" says of WSGIProxyApp (Paste's side is not asserted)."""
    # The trailing slash makes no difference.
    for href in (backend.url + "/app", backend.url + "/app/"):
        assert seen(call(WSGIProxyApp(href), "/page"))["path_info"] == "/app/page"
    # Headers: ours tells the backend more, and drops what the client claimed.
    claims = {"Host": "www.example.com", "X-Forwarded-Server": "evil.example",
              "X-WSGIProxy-Str-0": "REMOTE_USER admin"}
    b = seen(call(WSGIProxyApp(backend.url + "/app"), "/page", headers=claims, **CLIENT))
    assert b["headers"]["X-Forwarded-For"] == "192.0.2.7"
    assert b["headers"]["X-Forwarded-Server"] == "www.example.com"
    assert b["headers"]["X-Forwarded-Scheme"] == "http"
    assert "X-Wsgiproxy-Str-0" not in b["headers"]
    # Redirects into href point at the client's URL.
    b = call(WSGIProxyApp(backend.url + "/app"), "/redirect", headers={"Host": "www.example.com"})
    assert header(b, "Location") == "http://www.example.com/login"
    # A backend that is down: 502 with the reason, as JSON when asked.
    down = "http://127.0.0.1:%d/" % free_port()
    error = error_of(call(WSGIProxyApp(down), "/page", headers=JSON), 502)
    assert error["type"] == "BadGateway" and "connection refused" in error["message"]


def test_paste_transparent_equivalent(tmp_path, backend):
    to_backend = {"127.0.0.1:8081": "127.0.0.1:%d" % backend.port}
    theirs_ini = load_ini(tmp_path, snippet("migration-paste-transparent-ini"), to_backend)
    ours_ini = load_ini(tmp_path, snippet("migration-paste-transparent-ours-ini"), to_backend)
    theirs_py = run(snippet("migration-paste-transparent-python"), to_backend)["app"]
    ours_py = run(snippet("migration-paste-transparent-ours-python"),
                  {'"8081"': '"%d"' % backend.port})["app"]
    request_ = dict(url="/page?q=1", headers={"Host": "www.example.com"}, **CLIENT)
    answers = [seen(call(app, **request_)) for app in (theirs_ini, ours_ini, theirs_py, ours_py)]
    for a in answers:
        same(a, answers[0], WIRE)
        assert a["host"] == "www.example.com"
    # Mounted below the root: SCRIPT_NAME + PATH_INFO from both (the exact proxy), or
    # PATH_INFO after href (WSGIProxyApp).
    mounted = dict(request_, environ={"REMOTE_ADDR": "192.0.2.7", "SCRIPT_NAME": "/mount"})
    a, b, c, d = (seen(call(app, **mounted))
                  for app in (theirs_ini, ours_ini, theirs_py, ours_py))
    assert a["path_info"] == c["path_info"] == d["path_info"] == "/mount/page"
    assert b["path_info"] == "/page"
    assert b["headers"]["X-Forwarded-Script-Name"] == "/mount"
    # ExactProxy adds no header at all.
    assert not any(name.startswith("X-Forwarded") for name in d["headers"])


# -- WSGIProxy2 -------------------------------------------------------------------

@pytest.fixture(scope="module")
def wsgiproxy2_python():
    return peer_python("wsgiproxy2", WSGIPROXY2_REQUIREMENTS)


#: The requests the page says both proxies forward alike.
WSGIPROXY2_ALIKE = [
    dict(url="/page?q=1&r=%C3%BC", headers={"Host": "www.example.com"},
         environ={"REMOTE_ADDR": "192.0.2.7", "SCRIPT_NAME": "/mount"}),
    dict(url="/form", method="POST", body="a=1&b=2",
         headers={"Host": "www.example.com", "Content-Type": "application/x-www-form-urlencoded"},
         environ={"REMOTE_ADDR": "192.0.2.7", "SCRIPT_NAME": "/mount"}),
]


@pytest.mark.timeout(900)
def test_wsgiproxy2_hostproxy(wsgiproxy2_python, backend):
    to_backend = {DOC_BACKEND: backend.url}
    theirs = run_peer(wsgiproxy2_python,
                      snippet("migration-wsgiproxy2-hostproxy").replaced(to_backend), "proxy",
                      WSGIPROXY2_ALIKE)
    ours_app = run(snippet("migration-wsgiproxy2-ours"), to_backend)["proxy"]
    ours = [call(ours_app, **r) for r in WSGIPROXY2_ALIKE]
    # GET and POST: the same request at the backend, the same answer.
    assert len(theirs) == len(ours) == 2
    for a, b in zip(theirs, ours, strict=True):
        x, y = seen(a), seen(b)
        same(x, y, WIRE + ["host"])
        assert x["host"] == "127.0.0.1:%d" % backend.port
        for name in ("X-Forwarded-For", "X-Forwarded-Server", "X-Forwarded-Scheme",
                     "X-Forwarded-Script-Name"):
            assert x["headers"][name] == y["headers"][name], name
        assert y["headers"]["X-Forwarded-Server"] == "www.example.com"
        assert y["headers"]["X-Forwarded-Script-Name"] == "/mount"
        assert a["status"] == b["status"] == 200


def test_wsgiproxy2_differences_our_side(backend):
    """What the page's "What differs" says of WSGIProxyApp (WSGIProxy2's side is not
    asserted)."""
    ours = run(snippet("migration-wsgiproxy2-ours"), {DOC_BACKEND: backend.url})["proxy"]
    mounted = {"SCRIPT_NAME": "/mount"}
    host = {"Host": "www.example.com"}
    # Redirects: the client's Host and the mount point; relative locations left alone.
    answer = call(ours, "/redirect", headers=host, environ=mounted)
    assert header(answer, "Location") == "http://www.example.com/mount/login"
    answer = call(ours, "/redirect-relative", headers=host, environ=mounted)
    assert header(answer, "Location") == "/login"
    # Trust: the client's protocol headers are dropped.
    received = seen(call(ours, "/page", headers={"X-WSGIProxy-Str-0": "REMOTE_USER admin",
                                                 "X-Forwarded-Proto": "https"}))
    assert "X-Wsgiproxy-Str-0" not in received["headers"]
    assert "X-Forwarded-Proto" not in received["headers"]
    # Methods: every method is forwarded unless allowed_methods is set.
    assert seen(call(ours, "/page", method="PROPFIND"))["method"] == "PROPFIND"
    # Errors: a backend that cannot be reached is a 502 that says why.
    down = run(snippet("migration-wsgiproxy2-ours"),
               {DOC_BACKEND: "http://127.0.0.1:%d" % free_port()})
    error = error_of(call(down["proxy"], "/", headers=JSON), 502)
    assert error["type"] == "BadGateway" and "connection refused" in error["message"]


# -- Werkzeug -----------------------------------------------------------------------

def test_werkzeug_proxymiddleware(backend):
    to_backend, app = {DOC_BACKEND: backend.url}, {"app": local_app}
    theirs = run(snippet("migration-werkzeug-proxymiddleware"), to_backend, app)["app"]
    ours = run(snippet("migration-werkzeug-proxymiddleware-ours"), to_backend, app)["app"]
    for request_ in requests_for("/api"):
        a, b = seen(call(theirs, **request_)), seen(call(ours, **request_))
        same(a, b, WIRE)
        assert b["path_info"] in ("/page", "/form")
        # Ours: the backend's host:port, and the client's address and mount point.
        assert b["host"] == "127.0.0.1:%d" % backend.port
        assert b["headers"]["X-Forwarded-For"] == "192.0.2.7"
        assert b["headers"]["X-Forwarded-Script-Name"] == "/api"
    for app in (theirs, ours):
        assert call(app, "/other")["body"] == "local"
    b = call(ours, "/api/redirect", headers={"Host": "www.example.com"})
    assert header(b, "Location") == "http://www.example.com/api/login"
    # remove_prefix false: the prefix in href.
    kept = WSGIProxyApp(backend.url + "/api")
    assert seen(call(kept, "/page"))["path_info"] == "/api/page"


ENVIRON_KEYS = ["remote_addr", "scheme", "host", "server_name", "server_port", "script_name",
                "path_info"]
NGINX_HEADERS = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "www.example.com:8443", "X-Forwarded-Prefix": "/shop"}


def test_werkzeug_proxyfix(backend):
    theirs = run(snippet("migration-werkzeug-proxyfix"), namespace={"app": backend.app})["app"]
    ours = run(snippet("migration-werkzeug-proxyfix-ours"), namespace={"app": backend.app})["app"]
    with WaitressServer(theirs) as t, WaitressServer(ours) as o:
        def get(server, headers, source=None):
            answer = request(server.port, "/page", headers=headers, accept="application/json",
                             source=source)
            return answer.status, answer.json()

        (s1, a), (s2, b) = get(t, NGINX_HEADERS), get(o, NGINX_HEADERS)
        assert s1 == s2 == 200
        same(a, b, ENVIRON_KEYS)
        assert (b["remote_addr"], b["scheme"], b["host"], b["script_name"]) == \
            ("203.0.113.9", "https", "www.example.com:8443", "/shop")
        # From another address, ours does not believe the headers.
        _, b = get(o, NGINX_HEADERS, "127.0.0.2")
        assert b["remote_addr"] == "127.0.0.2" and b["scheme"] == "http"
        # Checking: a bad scheme, host or address is a 400 here.
        for name, value in (("X-Forwarded-Proto", "javascript"),
                            ("X-Forwarded-For", "not-an-address"),
                            ("X-Forwarded-Host", "bad host"),
                            ("X-Forwarded-Host", "www.example.com:port")):
            answer = request(o.port, "/page", headers=dict(NGINX_HEADERS, **{name: value}),
                             accept="application/json")
            assert json_error(answer, 400)["type"] == "BadRequest", (name, value)
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

def routes(tree):
    """The paths of the ``@app.route(PATH)`` decorators in a parsed snippet."""
    return [decorator.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) for decorator in node.decorator_list
            if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "route"]


def test_flask_reverse_proxy_fix_ours():
    """Ours serves what the page's ReverseProxyPrefixFix setup served: the same prefix and
    route, read from that snippet.  (It is parsed, not run: the page says that the peer
    no longer imports; that is not asserted here.)"""
    theirs = ast.parse(snippet("migration-frpf-theirs").text)
    [prefix] = [node.value.value for node in ast.walk(theirs) if isinstance(node, ast.Assign)
                and isinstance(node.targets[0], ast.Subscript)
                and node.targets[0].slice.value == "REVERSE_PROXY_PATH"]
    [route] = routes(theirs)
    ours = ast.parse(snippet("migration-frpf-ours").text)
    assert routes(ours) == [route]
    assert [keyword.value.value for keyword in ast.walk(ours)
            if isinstance(keyword, ast.keyword) and keyword.arg == "pop_prefix"] == [prefix]
    flask_app = run(snippet("migration-frpf-ours"))["app"]
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "www.example.com",
               "X-Forwarded-For": "203.0.113.9"}
    url = ("https://www.example.com" + prefix + route).encode()
    with WaitressServer(flask_app) as server:
        answer = request(server.port, prefix + route, headers=headers)
        assert (answer.status, answer.body) == (200, url)
        # Whole path segments: /some-service/v10 is not under /some-service/v1.
        answer = request(server.port, prefix + "0" + route, headers=headers,
                         accept="application/json")
        assert json_error(answer, 400)["type"] == "BadRequest"
    # A proxy that removes the prefix: prefix= instead.
    stripped = run(snippet("migration-frpf-ours"))["app"]
    stripped.wsgi_app = WSGIProxyMiddleware(stripped.wsgi_app.app, front_proxy_ips="127.0.0.1",
                                            x_host=1, prefix=prefix)
    with WaitressServer(stripped) as server:
        answer = request(server.port, route, headers=headers)
    assert (answer.status, answer.body) == (200, url)


# -- Django: django-revproxy and django-proxy-server ----------------------------------------

@pytest.fixture(scope="module")
def django_ready(django_settings):
    """Django configured for this module (conftest.py), with what revproxy's
    AppConfig.ready() would set."""
    if not hasattr(django_settings, "REVPROXY"):
        django_settings.REVPROXY = {"QUOTE_SPACES_AS_PLUS": True}


class LoggedIn:
    """request.user for a logged-in user (as django.contrib.auth would set it)."""

    is_active = is_authenticated = True

    def __init__(self, name):
        self.name = name

    def get_username(self):
        return self.name


def django_app(patterns, user=None):
    """A Django WSGI application for ``patterns`` (its own urlconf), with ``user`` logged in."""
    from django.core.handlers.wsgi import WSGIHandler  # type: ignore[import-untyped]
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


def django_backend(monkeypatch, s, patterns, replacements):
    """Run the ``wsgi.py`` snippet ``s`` with get_wsgi_application() serving ``patterns``."""
    import django.core.wsgi  # type: ignore[import-untyped]
    monkeypatch.setattr(django.core.wsgi, "get_wsgi_application",
                        lambda: django_app(patterns))
    return run(s, replacements)["application"]


def django_echo(request):
    """A backend view: what Django sees of the request."""
    from django.http import JsonResponse  # type: ignore[import-untyped]
    return JsonResponse({"remote_user": request.META.get("REMOTE_USER"),
                         "remote_addr": request.META.get("REMOTE_ADDR"),
                         "script_name": request.META.get("SCRIPT_NAME"),
                         "path_info": request.path_info,
                         "url": request.build_absolute_uri()})


@pytest.mark.usefixtures("django_ready")
def test_django_revproxy_and_our_view(backend, secret_file):
    revproxy_ns = run(snippet("migration-revproxy-theirs"), {DOC_BACKEND + "/": backend.url + "/"})
    ours_ns = run(snippet("migration-revproxy-ours"),
                  {DOC_BACKEND: backend.url, DOC_SECRET: secret_file})
    theirs = django_app(revproxy_ns["urlpatterns"], user="alice")
    ours = django_app(ours_ns["urlpatterns"], user="alice")
    host = {"Host": "www.example.com"}
    with WaitressServer(theirs) as t, WaitressServer(ours) as o:
        for path, method, body in (("/app/page?q=1&r=%C3%BC", "GET", None),
                                   ("/app/form", "POST", "a=1&b=2")):
            headers = dict(host, **({"Content-Type": "text/plain"} if body else {}))
            answers = [request(server.port, path, method, headers, body) for server in (t, o)]
            assert [answer.status for answer in answers] == [200, 200], answers
            a, b = (answer.json() for answer in answers)
            same(a, b, WIRE)
            assert b["path_info"] in ("/page", "/form")
            # add_x_forwarded: ours sends -For, -Server, -Scheme, -Script-Name.
            assert a["headers"]["X-Forwarded-For"] == b["headers"]["X-Forwarded-For"] \
                == "127.0.0.1"
            assert b["headers"]["X-Forwarded-Server"] == "www.example.com"
            assert b["headers"]["X-Forwarded-Script-Name"] == "/app"
            # add_remote_user: ours sends the user in a signed key header.
            assert b["headers"]["X-Wsgiproxy-Str-0"] == "REMOTE_USER alice"
            assert "X-Wsgiproxy-Signature" in b["headers"]
        # Cookies.
        for server in (t, o):
            answer = request(server.port, "/app/cookies", headers=host)
            cookies = answer.headers.get_all("Set-Cookie") or []
            assert answer.status == 200
            assert sorted(c.split("=")[0] for c in cookies) == ["first", "second"], cookies
            assert any("HttpOnly" in c for c in cookies)
        # Location rewriting: ours keeps the mount point.
        theirs_answer, ours_answer = (request(server.port, "/app/redirect", headers=host)
                                      for server in (t, o))
        assert theirs_answer.status == ours_answer.status == 302
        assert ours_answer.headers.get_all("Location") == ["http://www.example.com/app/login"]


@pytest.mark.usefixtures("django_ready")
def test_django_revproxy_ours_with_backend(monkeypatch, secret_file):
    from django.urls import re_path  # type: ignore[import-untyped]
    application = django_backend(monkeypatch, snippet("migration-revproxy-backend"),
                                 [re_path(r"^.*$", django_echo)], {DOC_SECRET: secret_file})
    with WaitressServer(application) as back:
        ours_ns = run(snippet("migration-revproxy-ours"),
                      {DOC_BACKEND: back.url, DOC_SECRET: secret_file})
        with WaitressServer(django_app(ours_ns["urlpatterns"], user="alice")) as front:
            answer = request(front.port, "/app/page?q=1", headers={"Host": "www.example.com"})
            assert answer.status == 200, answer
            assert answer.json() == {"remote_user": "alice", "remote_addr": "127.0.0.1",
                                     "script_name": "/app", "path_info": "/page",
                                     "url": "http://www.example.com/app/page?q=1"}
        answer = request(back.port, "/page", headers=JSON)
        assert json_error(answer, 403)["type"] == "Forbidden"
    # The backend is gone: ours answers 502, with the reason.
    with WaitressServer(django_app(ours_ns["urlpatterns"])) as front:
        answer = request(front.port, "/app/page", headers=JSON)
    assert json_error(answer, 502)["type"] == "BadGateway"


@pytest.fixture(scope="module")
def dps_python():
    return peer_python("django-proxy-server", DPS_REQUIREMENTS)


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
def test_django_proxy_server_backend(dps_python, tmp_path):
    """The page's django-proxy-server backend, served: it answers a call with the right
    api-key, and refuses others with an error of the same shape as ours, which is what
    the page says a client can rely on."""
    settings_text = snippet("migration-dps-theirs-settings").text
    key = run(snippet("migration-dps-theirs-settings"))["PROXY_API_KEYS"][0]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"settings": settings_text,
                                "view": snippet("migration-dps-theirs-view").text}))
    ours = json.loads(snippet("migration-dps-ours-error").text)["error"]
    shown = json.loads(snippet("migration-dps-theirs-error").text)["error"]
    assert sorted(shown) == sorted(ours) and shown["code"] == ours["code"]
    with Process([dps_python, "-I", "-c", DPS_SERVER, str(spec)], stderr=subprocess.PIPE) as server:
        line = server.proc.stdout.readline()
        assert line.strip().isdigit(), server.proc.stderr.read()
        port = int(line)
        answer = request(port, "/orders", headers={"api-key": key})
        assert (answer.status, answer.json()) == (200, {"response": {"orders": []}})
        for headers in ({"api-key": "wrong"}, {}):
            answer = request(port, "/orders", headers=headers)
            assert answer.status == 403
            error = answer.json()["error"]
            assert sorted(error) == sorted(ours) and error["code"] == ours["code"]


def invoked(s):
    """``(method, path)`` of the ``invoke_backend_service`` call in the snippet ``s``
    (parsed, not run: the page says that django-proxy-server's calling half no longer
    imports on Python 3; that is not asserted here)."""
    return [(node.args[0].value, node.args[1].value) for node in ast.walk(
        ast.parse(s.text)) if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "invoke_backend_service"]


@pytest.mark.usefixtures("django_ready")
def test_django_proxy_server_ours(monkeypatch, secret_file):
    from django.urls import path
    views = run(snippet("migration-dps-ours-view"))
    application = django_backend(monkeypatch, snippet("migration-dps-ours-wsgi"),
                                 [path("orders", views["orders"])], {DOC_SECRET: secret_file})
    # The call ours replaces.
    [(method, orders)] = invoked(snippet("migration-dps-theirs-call"))
    calling, to_backend = snippet("migration-dps-ours-call"), {DOC_SECRET: secret_file}
    with WaitressServer(application) as back:
        to_backend[DOC_BACKEND] = back.url
        ns = run(calling, to_backend)
        assert ns["call_backend"](method, orders, user="alice") == \
            (200, {"orders": [], "user": "alice"})
        assert ns["call_backend"]("POST", orders, data={"item": 1}) == \
            (200, {"orders": [], "user": None})
        # Unsigned: the error JSON of the page, or HTML for other clients.
        answer = request(back.port, orders, headers=JSON)
        assert json_error(answer, 403) == json.loads(
            snippet("migration-dps-ours-error").text)["error"]
        for accept, kind in (("text/html", "text/html"), (None, "text/plain")):
            answer = request(back.port, orders, headers={"Accept": accept} if accept else {})
            assert answer.status == 403 and answer.headers["Content-Type"].startswith(kind)
        # A forged user name is no better.
        answer = request(back.port, orders, headers=dict(JSON, **{
            "X-WSGIProxy-Str-0": "REMOTE_USER admin"}))
        assert json_error(answer, 403)["type"] == "Forbidden"
    # The backend is gone: 502, same shape.
    gone = run(calling, to_backend)
    status, data = gone["call_backend"](method, orders, user="alice")
    assert status == 502
    assert (data["error"]["code"], data["error"]["type"]) == (502, "BadGateway")
    assert sorted(data["error"]) == ["code", "message", "type"]
