"""docs/deployment.rst, run for real: gunicorn --paste, nginx, HAProxy and Redis on loopback.

Every named snippet of the page is fetched here and started as a reader would:

* ``console`` snippets: each ``$ `` line (joined with the lines that follow a
  trailing ``\\``) is split with :mod:`shlex` and run as written, in a copy of
  docs/examples/, with the virtualenv's bin directory first on ``PATH``;
* ``ini`` snippets (literalincludes of docs/examples/deploy-*.ini): written
  into that copy under the file name of their caption, so that the gunicorn
  commands serve the text the page shows;
* ``nginx`` snippets: put in the ``http {}`` block of ``servers.nginx_conf()`` and
  run with the Debian nginx; ``haproxy`` snippets: put after the ``global``
  section of :data:`HAPROXY_GLOBAL` and run with the Debian HAProxy, which
  must accept them without a single warning (``-dW``).

Ports.  The page shows fixed, readable addresses (its table):
``127.0.0.1:8443`` nginx with TLS, ``:8080`` nginx without, ``:8000`` the
gunicorn behind nginx, ``:9000`` the load balancer, ``:9001`` and ``:9002``
the backends, ``:6379`` Redis.  Each test maps every one of them to a free
port by plain text substitution of ``127.0.0.1:<port>`` in the snippets (see
:meth:`Site.subst`); the TLS certificate paths ``/etc/nginx/tls/`` become a
temporary directory.  Nothing else in the text is changed.

The requests then go through the whole chain and the sample application at
the far end (``egg:WSGIProxy#sample``, which answers with its environ) shows
what it received.  Clients use source addresses 127.0.0.2 and 127.0.0.3 (all
of 127.0.0.0/8 is loopback) so that "the client's address" differs from
nginx's 127.0.0.1.  Processes run in their own process groups and are
stopped when each test ends; waits poll with deadlines.
"""

import concurrent.futures
import contextlib
import csv
import io
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import threading

import pytest

from .client import json_error, parse_answer, request, send_raw
from .docsnippets import snippet
from .servers import (
    BIN,
    EXAMPLES,
    OK,
    Gunicorn,
    Process,
    RawServer,
    RedisServer,
    alive,
    capture_signed_request,
    children_of,
    free_port,
    need,
    nginx_conf,
    nginx_process,
    parent_of,
    wait_for_port,
    wait_until,
)

#: The ports the page shows, each replaced by a free one in every test.
PAGE_PORTS = (8443, 8080, 8000, 9000, 9001, 9002, 6379)
#: Where the page's nginx configuration has its certificate and key.
PAGE_TLS_DIR = "/etc/nginx/tls/"
#: The Redis key prefix of RedisNonceStore (deploy-backend.ini does not change it).
NONCE_PREFIX = "wsgiproxy:nonce:"

#: nginx's access.log: which upstream answered, on which client connection.
NGINX_LOG_FORMAT = "$request $status $upstream_addr $connection"

HAPROXY_GLOBAL = """
global
    pidfile {prefix}/haproxy.pid
    stats socket {prefix}/haproxy.sock mode 600 level admin

"""


class Site:
    """One test's deployment: the port mapping, a copy of docs/examples, the processes."""

    def __init__(self, tmp_path, stack):
        self.tmp = tmp_path
        self.stack = stack
        self.ports = {port: free_port() for port in PAGE_PORTS}
        self.tls_dir = tmp_path / "tls"
        self.examples = tmp_path / "examples"
        shutil.copytree(EXAMPLES, str(self.examples))
        # The literalincluded .ini files; each one's caption is its file name.
        for s in (snippet("deployment-backend-ini"), snippet("deployment-proxy-ini"),
                  snippet("deployment-app-ini"), snippet("deployment-spawn-ini")):
            filename = s.options.get("caption")
            with open(os.path.join(EXAMPLES, filename)) as f:
                assert s.language == "ini" and s.text == f.read(), s
            (self.examples / filename).write_text(self.subst(s.text))
        self.env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
        self.redis = None

    def port(self, page_port):
        return self.ports[page_port]

    def subst(self, text):
        """The page's text with this test's addresses: ``127.0.0.1:<page port>`` becomes
        ``127.0.0.1:<free port>``, and the certificate directory a temporary one."""
        for page_port, port in self.ports.items():
            text = text.replace("127.0.0.1:%d" % page_port, "127.0.0.1:%d" % port)
        # A port the page's table does not list would stay fixed: refuse it.
        for port in re.findall(r"127\.0\.0\.1:(\d+)", text):
            assert int(port) in self.ports.values(), "127.0.0.1:%s is not in PAGE_PORTS" % port
        return text.replace(PAGE_TLS_DIR, str(self.tls_dir) + "/")

    def log(self, name):
        return open(str(self.tmp / name), "ab")

    # -- servers --------------------------------------------------------------

    def start_redis(self):
        directory = self.tmp / "redis"
        directory.mkdir()
        # On the port the backends' nonce_store URL names.
        self.redis = RedisServer(directory, port=self.ports[6379]).start()
        self.stack.callback(self.redis.stop)
        return self.redis

    def console(self, s):
        """Run the ``$`` commands of a console snippet, as written; each is gunicorn
        (servers.Gunicorn: it returns once the server listens with all its workers)."""
        assert s.language == "console", s
        assert not s.output(), "%s: output lines in a console snippet of this page" % s.where
        started = []
        for i, command in enumerate(s.commands()):
            args = shlex.split(self.subst(command))
            assert args[0] == "gunicorn", args  # the only program this page runs
            server = Gunicorn(args, self.tmp, "%s-%d" % (s.name, i), env=self.env,
                              cwd=str(self.examples))
            started.append(self.stack.enter_context(server))
        return started

    @contextlib.contextmanager
    def showing_log(self, name):
        """A failure to start says what the program logged."""
        try:
            yield
        except (AssertionError, RuntimeError, TimeoutError) as exc:
            raise AssertionError("%s\n--- %s:\n%s" % (exc, name, (self.tmp / name).read_text(
                errors="replace")[-3000:])) from exc

    def nginx(self, s, label):
        assert s.language == "nginx", s
        prefix = self.tmp / label
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, self.subst(s.text), log_format=NGINX_LOG_FORMAT))
        check = subprocess.run([need("nginx"), "-t", "-q", "-p", str(prefix), "-c", str(conf),
                                "-e", str(prefix / "error.log")],
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr + (prefix / "error.log").read_text()
        proc = self.stack.enter_context(nginx_process(prefix, conf))
        with self.showing_log(label + "/error.log"):
            for port in listen_ports(self.subst(s.text)):
                wait_for_port(port, process=proc.proc)
        return prefix

    def haproxy(self, s, label):
        assert s.language == "haproxy", s
        prefix = self.tmp / label
        prefix.mkdir()
        conf = prefix / "haproxy.cfg"
        conf.write_text(HAPROXY_GLOBAL.format(prefix=prefix) + self.subst(s.text))
        # -dW: any warning is an error, so the page's configuration is clean.
        check = subprocess.run([need("haproxy"), "-c", "-dW", "-f", str(conf)],
                               capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        log = self.log(label + ".log")
        proc = Process([need("haproxy"), "-db", "-dW", "-f", str(conf)], stdout=log,
                       stderr=subprocess.STDOUT)
        log.close()
        self.stack.enter_context(proc)
        with self.showing_log(label + ".log"):
            for port in listen_ports(self.subst(s.text)):
                wait_for_port(port, process=proc.proc)
        return HAProxyStats(str(prefix / "haproxy.sock"))


class HAProxyStats:
    """``show stat`` on HAProxy's admin socket: ``{server name: row}`` of a backend."""

    def __init__(self, path):
        self.path = path

    def servers(self, backend):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(self.path)
            sock.sendall(b"show stat\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        text = data.decode().lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {row["svname"]: row for row in rows
                if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")}


def listen_ports(config):
    """The ports of the ``listen``/``bind`` lines of an nginx or HAProxy configuration."""
    ports = []
    for line in config.splitlines():
        words = line.split()
        if words and words[0] in ("listen", "bind"):
            ports.append(int(words[1].rstrip(";").rpartition(":")[2]))
    return ports


def get(port, path, host=None, source="127.0.0.1", headers=None, tls=None):
    """GET ``path`` from 127.0.0.1:``port`` out of ``source``, asking for JSON:
    ``(status, the decoded JSON)`` for a JSON 200, else ``(status, the client.Answer)``."""
    headers = dict(headers or {})
    if host is not None:
        headers["Host"] = host
    answer = request(port, path, headers=headers, accept="application/json", source=source,
                     tls=tls)
    if answer.status == 200 and answer.headers.get("Content-Type", "").startswith(
            "application/json"):
        return answer.status, answer.json()
    return answer.status, answer


def served_by(seen, backends):
    """Which backend gunicorn (index into ``backends``) answered: the sample app's pid's parent."""
    master = parent_of(seen["wsgiproxy.sample.pid"])
    for i, backend in enumerate(backends):
        if backend.pid == master:
            return i
    raise AssertionError("pid %s is not a worker of a backend" % seen["wsgiproxy.sample.pid"])


def nonce_keys(site):
    return len(site.redis.keys(NONCE_PREFIX + "*"))


def replay_through(site, port, times):
    """A request the proxy signed, sent ``times`` to ``port``: the answers (client.Answer)."""
    secret = str(site.examples / "demo-secret.txt")
    data = capture_signed_request(secret, "/replay?format=json")
    return [parse_answer(send_raw(port, data)) for _ in range(times)]


def refused_as_replayed(answer):
    return "replayed" in json_error(answer, 403)["message"]


@pytest.fixture
def site(tmp_path):
    with contextlib.ExitStack() as stack:
        yield Site(tmp_path, stack)


@pytest.fixture
def client_tls(ca, site):
    """nginx's certificate, written where the page's configuration expects it (substituted),
    and a client context that trusts it."""
    directory = site.tls_dir
    directory.mkdir()
    cert = ca.issue_cert("shop.example", "127.0.0.1")
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(directory / "shop.example.crt"), append=True)
    cert.private_key_pem.write_to_path(str(directory / "shop.example.key"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


FORGED = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "http",
          "X-Forwarded-Host": "evil.example", "X-Forwarded-Port": "1",
          "X-Forwarded-Prefix": "/evil"}
#: WSGIProxy's own headers, which nginx passes on from its clients unchanged:
#: never believed from nginx (front_proxy_ips), only from a WSGIProxyApp.
FORGED_WSGIPROXY = {"X-WSGIProxy-Str-0": "REMOTE_USER admin", "X-WSGIProxy-Version": "1",
                    "X-Forwarded-Server": "evil.example", "X-Forwarded-Scheme": "http",
                    "X-Forwarded-Script-Name": "/evil", "X-Script-Name": "/evil"}


# -- the whole setup: nginx with TLS, the proxy, an nginx load balancer, two backends --

def test_nginx_front_proxy_and_nginx_load_balancer(site, client_tls):
    site.start_redis()
    backends = site.console(snippet("deployment-gunicorn-backends"))
    assert [b.workers for b in backends] == [4, 4]
    balancer = site.nginx(snippet("deployment-nginx-upstream"), "balancer")
    [proxy] = site.console(snippet("deployment-gunicorn-proxy"))
    site.nginx(snippet("deployment-nginx-front"), "front")
    public = site.port(8443)
    host = "shop.example:%d" % public

    # From the client (127.0.0.2) over TLS to /shop/..., with forged headers
    # that nginx must replace or that the counts must skip, and WSGIProxy
    # headers that nginx passes on and the from-nginx filter must ignore.
    hosts = []
    for i in range(12):
        status, seen = get(public, "/shop/cart/%d?x=%d" % (i, i), host, source="127.0.0.2",
                           headers=dict(FORGED, **FORGED_WSGIPROXY), tls=client_tls)
        assert status == 200, seen
        assert "REMOTE_USER" not in seen
        assert seen["REMOTE_ADDR"] == "127.0.0.2"
        assert seen["wsgi.url_scheme"] == "https"
        assert seen["HTTP_HOST"] == host
        assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == ("shop.example", str(public))
        assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("/shop", "/cart/%d" % i)
        assert seen["QUERY_STRING"] == "x=%d" % i
        assert seen["wsgiproxy.key_id"]  # verified with the shared secret
        hosts.append(served_by(seen, backends))
    assert sorted(set(hosts)) == [0, 1], hosts  # round robin over both backend hosts
    # One Redis for every worker of both hosts: every accepted nonce is there.
    assert nonce_keys(site) == 12
    # Each proxy worker keeps its own pool: few connections to the load
    # balancer, each used for several requests, never more than one per worker.
    lines = [line.split() for line in (balancer / "access.log").read_text().splitlines()]
    connections = {fields[-1] for fields in lines if fields[1].startswith("/cart/")}
    assert 1 <= len(connections) <= proxy.workers and len(connections) < 12, lines

    # A signed request captured on the way, sent again to the load balancer:
    # accepted once, then refused as replayed by both hosts.
    answers = replay_through(site, site.port(9000), 4)
    assert [answer.status for answer in answers] == [200, 403, 403, 403], answers
    assert all(refused_as_replayed(answer) for answer in answers[1:])
    lines = (balancer / "access.log").read_text().splitlines()
    refused_by = {line.split()[-2] for line in lines if "/replay" in line and " 403 " in line}
    assert len(refused_by) == 2, lines

    # Straight to the proxy from another address: nginx's headers are not
    # believed from anyone but nginx.
    status, seen = get(site.port(8000), "/direct", "direct.example", source="127.0.0.3",
                       headers=dict(FORGED, **{"X-Forwarded-Proto": "https"}))
    assert status == 200, seen
    assert (seen["REMOTE_ADDR"], seen["wsgi.url_scheme"]) == ("127.0.0.3", "http")
    assert (seen["HTTP_HOST"], seen["SCRIPT_NAME"]) == ("direct.example", "")

    # Unsigned, straight to a backend (as a health check would be): served
    # (require_signature = false) with nothing forwarded believed, and
    # gunicorn's own X-Forwarded-Proto / SCRIPT_NAME handling is off.
    status, seen = get(site.port(9001), "/x/healthz", "backend.internal",
                       headers=dict(FORGED, **{"X-Forwarded-Proto": "https",
                                               "SCRIPT_NAME": "/x",
                                               "X-WSGIProxy-Str-0": "REMOTE_USER admin"}))
    assert status == 200, seen
    assert (seen["REMOTE_ADDR"], seen["wsgi.url_scheme"]) == ("127.0.0.1", "http")
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("", "/x/healthz")
    assert "REMOTE_USER" not in seen and seen["wsgiproxy.key_id"] is None

    # One backend host dies: nginx sends its requests to the other one.
    backends[1].kill()
    for i in range(6):
        status, seen = get(public, "/shop/after/%d" % i, host, source="127.0.0.2",
                           tls=client_tls)
        assert status == 200, seen
        assert served_by(seen, backends) == 0


# -- HAProxy instead of nginx, with health checks ------------------------------------

def test_haproxy_spreads_over_backends_and_checks_their_health(site):
    site.start_redis()
    backends = site.console(snippet("deployment-gunicorn-backends"))
    stats = site.haproxy(snippet("deployment-haproxy"), "haproxy")
    [proxy] = site.console(snippet("deployment-gunicorn-proxy"))

    # Both servers pass the page's health check (GET /healthz, 200).
    wait_until(lambda: all(row["status"] == "UP" and row["check_status"] == "L7OK"
                           for row in stats.servers("wsgiproxy_backends").values()),
               what="both backends to pass their health checks")
    assert sorted(stats.servers("wsgiproxy_backends")) == ["b1", "b2"]
    for backend in backends:
        checks = [e for e in backend.access_log() if "/healthz" in e[2]]
        assert checks and all(status == 200 for _, status, _ in checks), checks

    hosts = []
    for i in range(8):
        status, seen = get(proxy.port, "/item/%d" % i, "shop.example", source="127.0.0.2")
        assert status == 200, seen
        assert (seen["HTTP_HOST"], seen["PATH_INFO"]) == ("shop.example", "/item/%d" % i)
        assert seen["REMOTE_ADDR"] == "127.0.0.2" and seen["wsgiproxy.key_id"]
        hosts.append(served_by(seen, backends))
    assert sorted(set(hosts)) == [0, 1], hosts
    assert nonce_keys(site) == 8

    answers = replay_through(site, site.port(9000), 3)
    assert [answer.status for answer in answers] == [200, 403, 403], answers
    assert all(refused_as_replayed(answer) for answer in answers[1:])

    # b2 dies: requests that meet it are retried on b1, and the health checks
    # take it out.
    backends[1].kill()
    for i in range(4):
        status, seen = get(proxy.port, "/after/%d" % i, "shop.example")
        assert status == 200, seen
        assert served_by(seen, backends) == 0
    wait_until(lambda: stats.servers("wsgiproxy_backends")["b2"]["status"] == "DOWN",
               timeout=20, what="HAProxy to mark b2 DOWN")
    assert stats.servers("wsgiproxy_backends")["b1"]["status"] == "UP"


# -- nginx in front of an application, without WSGIProxyApp ---------------------------

def test_nginx_in_front_of_an_application(site):
    [app] = site.console(snippet("deployment-gunicorn-app"))
    assert app.workers == 4
    site.nginx(snippet("deployment-nginx-app"), "nginx")
    public = site.port(8080)
    host = "app.example:%d" % public

    status, seen = get(public, "/some/path?q=1", host, source="127.0.0.2",
                       headers=dict({"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
                                     "X-Forwarded-Host": "evil.example",
                                     "X-Forwarded-Prefix": "/evil"}, **FORGED_WSGIPROXY))
    assert status == 200, seen
    # nginx passed the WSGIProxy headers on; from front_proxy_ips they are not believed.
    assert "REMOTE_USER" not in seen and seen["wsgiproxy.key_id"] is None
    assert not [k for k in seen if k.startswith("HTTP_X_WSGIPROXY")]
    assert seen["REMOTE_ADDR"] == "127.0.0.2"  # nginx's value, not the client's 6.6.6.6
    assert seen["wsgi.url_scheme"] == "http"  # nginx's $scheme replaced the forged https
    assert seen["HTTP_HOST"] == host
    # SERVER_NAME and SERVER_PORT stay gunicorn's own address (the page says so).
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == ("127.0.0.1", str(app.port))
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("", "/some/path")

    # Straight to gunicorn from elsewhere: nothing forwarded is believed.
    status, seen = get(app.port, "/p", "app.example", source="127.0.0.3",
                       headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"})
    assert status == 200, seen
    assert (seen["REMOTE_ADDR"], seen["wsgi.url_scheme"]) == ("127.0.0.3", "http")


# -- spawn under gunicorn ---------------------------------------------------------

def test_spawn_under_one_gunicorn_worker(site):
    [server] = site.console(snippet("deployment-gunicorn-spawn"))
    [worker] = children_of(server.pid)
    children = set()
    try:
        status, seen = get(server.port, "/hello?format=json", "spawn.example")
        assert status == 200, seen
        first = seen["wsgiproxy.sample.pid"]
        children.add(first)
        assert parent_of(first) == worker  # a child of the one worker
        assert (seen["HTTP_HOST"], seen["PATH_INFO"]) == ("spawn.example", "/hello")
        assert seen["wsgiproxy.key_id"]  # the child verified the signature
        # Concurrent requests: at most workers = 2 children, all the worker's.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: get(server.port, "/c/%d" % i, "spawn.example"),
                                    range(24)))
        for status, seen in answers:
            assert status == 200, seen
            children.add(seen["wsgiproxy.sample.pid"])
        assert 1 <= len(children) <= 2, children
        assert all(parent_of(pid) == worker for pid in children)
        # Stopping gunicorn stops the children.
        server.stop()
        wait_until(lambda: not any(alive(pid) for pid in children), 15,
                   "the spawned children to exit")
    finally:
        for pid in children:  # each child leads its own process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


# -- gevent ------------------------------------------------------------------------------

def test_gevent_workers_hold_more_requests_at_once_than_threads(site):
    # In place of the load balancer: a backend that answers only once all the requests
    # have arrived, which -w 4 -k gthread --threads 8 (32 at once) could never do.
    count = 100
    everyone = threading.Barrier(count, timeout=60)

    def answer_when_all_arrived(conn):
        if conn.read_request()[0] is not None:
            everyone.wait()
            conn.send(OK)

    with RawServer(answer_when_all_arrived) as backend:
        site.ports[9000] = backend.port
        s = snippet("deployment-proxy-ini")
        (site.examples / s.options["caption"]).write_text(site.subst(s.text))
        [proxy] = site.console(snippet("deployment-gunicorn-gevent"))
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            answers = list(pool.map(lambda i: request(proxy.port, "/slow/%d" % i, timeout=90),
                                    range(count)))
        assert [(a.status, a.body) for a in answers] == [(200, b"ok")] * count
        # Each went through the proxy, signed.
        assert len(backend.requests) == count
        assert all(b"\r\nx-wsgiproxy-signature: " in head.lower() for head, _ in backend.requests)
