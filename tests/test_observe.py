"""Request ids and the access log (issue 20), through real servers on loopback.

A client talks to WSGIProxyApp under waitress, which forwards to
WSGIProxyMiddleware under waitress; both write ``wsgiproxy.access`` lines,
parsed here with the default format.
"""

import http.client
import json
import logging
import re

import pytest

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.exactproxy import ExactProxy
from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.observe import Observer, check_format
from wsgiproxy.protocol import SecretKeys, sign_request
from wsgiproxy.wsgiapp import make_app

from .middleware_helpers import Recorder
from .servers import (
    TEST_SECRET,
    WaitressServer,
    free_port,
    wait_until,
    with_environ,
    write_secret,
)

LINE = re.compile(
    r'(?P<side>\S+) (?P<client>\S+) "(?P<method>\S+) (?P<target>\S+)" (?P<status>\S+) '
    r"(?P<bytes>\S+) backend=(?P<backend>\S+) attempts=(?P<attempts>\S+) "
    r"connect_ms=(?P<connect_ms>\S+) first_byte_ms=(?P<first_byte_ms>\S+) "
    r"total_ms=(?P<total_ms>\S+) request_id=(?P<request_id>\S+)\Z")
HEX_ID = re.compile(r"[0-9a-f]{32}\Z")


class Lines(logging.Handler):
    """The access log lines, parsed."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        match = LINE.match(record.getMessage())
        assert match, record.getMessage()
        self.lines.append(match.groupdict())

    def side(self, side, count=1):
        return wait_until(lambda: (found := [x for x in self.lines if x["side"] == side])
                          and len(found) >= count and found, what="%d %s line(s)" % (count, side))


@pytest.fixture
def access_log():
    logger = logging.getLogger("wsgiproxy.access")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def get(port, target="/", headers=()):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", target, headers=dict(headers))
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


@pytest.fixture
def chain(tmp_path, request):
    """client -> WSGIProxyApp (waitress) -> WSGIProxyMiddleware (waitress) -> Recorder."""
    secret = write_secret(tmp_path)
    options = getattr(request, "param", {})
    backend_app = Recorder()
    middleware = WSGIProxyMiddleware(backend_app, secret_file=secret,
                                     **options.get("middleware", {}))
    with WaitressServer(middleware) as backend:
        proxy = WSGIProxyApp(backend.url, secret_file=secret, **options.get("app", {}))
        with WaitressServer(proxy) as front:
            yield front.port, backend_app, backend.port
        proxy.close()


@pytest.mark.parametrize("chain", [{"app": {"signature_format": "v1"}},
                                   {"app": {"signature_format": "rfc9421"}}], indirect=True)
def test_one_request_id_on_the_backend_and_in_both_logs(chain, access_log):
    port, backend_app, backend_port = chain
    resp, body = get(port, "/shop/item?x=1")
    assert resp.status == 200
    env = backend_app.environ
    request_id = env["wsgiproxy.request_id"]
    assert HEX_ID.match(request_id)
    assert env["HTTP_X_REQUEST_ID"] == request_id
    proxy_line, = access_log.side("proxy")
    backend_line, = access_log.side("backend")
    assert proxy_line["request_id"] == backend_line["request_id"] == request_id
    assert proxy_line["status"] == backend_line["status"] == "200"
    assert proxy_line["bytes"] == str(len(body))
    assert proxy_line["method"] == "GET" and proxy_line["target"] == "/shop/item?x=1"
    assert proxy_line["backend"] == "127.0.0.1:%d" % backend_port
    assert proxy_line["attempts"] == "1"
    assert float(proxy_line["connect_ms"]) >= 0  # a new connection
    assert float(proxy_line["first_byte_ms"]) <= float(proxy_line["total_ms"])
    assert proxy_line["client"] == backend_line["client"] == "127.0.0.1"
    assert backend_line["backend"] == "-"
    # The second request reuses the pooled connection: no connect time.
    get(port, "/again")
    assert access_log.side("proxy", 2)[1]["connect_ms"] == "-"


@pytest.mark.parametrize("chain", [{"app": {"trusted_proxies": ["127.0.0.1"],
                                            "request_id_header": True}}], indirect=True)
def test_a_trusted_peers_id_is_kept_and_returned(chain, access_log):
    port, backend_app, _ = chain
    resp, _ = get(port, headers=[("X-Request-ID", "lb-1234:abc")])
    assert backend_app.environ["wsgiproxy.request_id"] == "lb-1234:abc"
    assert resp.getheader("X-Request-ID") == "lb-1234:abc"
    assert access_log.side("backend")[0]["request_id"] == "lb-1234:abc"
    # Malformed: replaced, whoever sent it.
    resp, _ = get(port, headers=[("X-Request-ID", "two words")])
    assert HEX_ID.match(backend_app.environ["wsgiproxy.request_id"])
    assert resp.getheader("X-Request-ID") == backend_app.environ["wsgiproxy.request_id"]


@pytest.mark.parametrize("chain", [{"app": {"signature_format": "rfc9421"}},
                                   {"app": {"signature_format": "v1"}}], indirect=True)
def test_an_untrusted_clients_id_is_replaced(chain):
    port, backend_app, _ = chain
    resp, _ = get(port, headers=[("X-Request-ID", "chosen-by-the-client")])
    assert resp.status == 200
    env = backend_app.environ
    assert HEX_ID.match(env["wsgiproxy.request_id"])
    assert env["HTTP_X_REQUEST_ID"] == env["wsgiproxy.request_id"]  # the client's replaced
    assert resp.getheader("X-Request-ID") is None  # request_id_header is off


def test_an_error_answer_is_logged_with_its_id(access_log):
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % free_port(), request_id_header=True)
    with WaitressServer(proxy) as front:
        resp, _ = get(front.port, "/down")
    assert resp.status == 502
    line, = access_log.side("proxy")
    assert line["status"] == "502" and line["attempts"] == "1"
    assert line["request_id"] == resp.getheader("X-Request-ID")


def test_attempts_and_backend_with_failover(access_log):
    dead = free_port()
    backend_app = Recorder()
    with WaitressServer(backend_app) as live:
        proxy = WSGIProxyApp(["http://127.0.0.1:%d" % dead, live.url])
        with WaitressServer(proxy) as front:
            assert get(front.port)[0].status == 200
            assert get(front.port)[0].status == 200
        proxy.close()
    lines = access_log.side("proxy", 2)
    assert sorted(line["attempts"] for line in lines) == ["1", "2"]
    assert {line["backend"] for line in lines} == {"127.0.0.1:%d" % live.port}


def test_a_signature_from_an_older_proxy_is_accepted_and_its_id_not_believed():
    """A v1 proxy before request ids signed without X-Request-ID and forwarded the
    client's: the middleware neither refuses the request nor believes that id."""
    backend_app = Recorder()
    middleware = WSGIProxyMiddleware(backend_app, secret_file=SecretKeys.from_secrets(
        [TEST_SECRET]))
    with WaitressServer(middleware) as backend:
        host = "127.0.0.1:%d" % backend.port
        identity = [("X-Forwarded-For", "203.0.113.9"), ("X-WSGIProxy-Version", "1")]
        signature = sign_request(SecretKeys.from_secrets([TEST_SECRET]), "GET", host, "/", "",
                                 identity)
        resp, body = get(backend.port, headers=identity + [
            ("X-WSGIProxy-Signature", signature), ("X-Request-ID", "forged")])
    assert resp.status == 200, body
    assert backend_app.environ["REMOTE_ADDR"] == "203.0.113.9"  # the signature held
    assert HEX_ID.match(backend_app.environ["wsgiproxy.request_id"])


def test_a_changed_signed_request_id_is_refused():
    backend_app = Recorder()
    keys = SecretKeys.from_secrets([TEST_SECRET])
    with WaitressServer(WSGIProxyMiddleware(backend_app, secret_file=keys)) as backend:
        host = "127.0.0.1:%d" % backend.port
        signed = [("X-WSGIProxy-Request-ID", "original"), ("X-WSGIProxy-Version", "1")]
        signature = sign_request(keys, "GET", host, "/", "", signed)
        resp, _ = get(backend.port, headers=[("X-WSGIProxy-Request-ID", "changed"),
                                             ("X-WSGIProxy-Version", "1"),
                                             ("X-WSGIProxy-Signature", signature)])
    assert resp.status == 403
    assert backend_app.calls == 0


@pytest.mark.parametrize("chain", [{"middleware": {"request_ids": False}}], indirect=True)
def test_a_middleware_without_request_ids_accepts_them(chain):
    """As a middleware older than request ids does: the id is one more signed
    X-WSGIProxy-* header, checked and removed."""
    port, backend_app, _ = chain
    resp, _ = get(port)
    assert resp.status == 200
    env = backend_app.environ
    assert "wsgiproxy.request_id" not in env
    assert not [k for k in env if k.startswith("HTTP_X_WSGIPROXY_")]


def test_a_front_proxys_request_id_is_believed_a_strangers_is_not():
    backend_app = Recorder()
    middleware = WSGIProxyMiddleware(backend_app, front_proxy_ips=["127.0.0.1"],
                                     require_signature=False)
    with WaitressServer(middleware) as backend:
        get(backend.port, headers=[("X-Request-ID", "nginx-7f3a")])
        assert backend_app.environ["wsgiproxy.request_id"] == "nginx-7f3a"
        assert backend_app.environ["HTTP_X_REQUEST_ID"] == "nginx-7f3a"
        # Only WSGIProxyApp's own header is believed from a WSGIProxy sender (loopback),
        # and a front proxy cannot set that one.
        get(backend.port, headers=[("X-WSGIProxy-Request-ID", "forged")])
        assert HEX_ID.match(backend_app.environ["wsgiproxy.request_id"])
    other = Recorder()
    with WaitressServer(WSGIProxyMiddleware(other, trust_ips=["192.0.2.1"],
                                            require_signature=False)) as backend:
        get(backend.port, headers=[("X-Request-ID", "chosen")])  # loopback: a WSGIProxy host
        assert HEX_ID.match(other.environ["wsgiproxy.request_id"])


def test_nothing_is_recorded_unless_the_logger_wants_info(no_metrics):
    observer = Observer()
    logger = logging.getLogger("wsgiproxy.access")
    level = logger.level
    try:
        logger.setLevel(logging.WARNING)
        assert observer.start({}) is None
        logger.setLevel(logging.INFO)
        assert observer.start({}) is not None
        assert Observer(access_log=False).start({}) is None
    finally:
        logger.setLevel(level)


def test_the_format_is_checked_and_used(chain, access_log, tmp_path):
    with pytest.raises(ValueError, match="unknown field 'nope'"):
        check_format("{client} {nope}")
    with pytest.raises(ValueError, match="access_log_format"):
        WSGIProxyApp("http://127.0.0.1:1", access_log_format="{client")
    app = make_app({}, href="http://127.0.0.1:1", access_log="false", request_ids="false")
    assert app.observer.log is None and app.request_ids is None
    app = make_app({}, href="http://127.0.0.1:1", access_log_format="{status} {request_id}")
    assert app.observer.format == "{status} {request_id}"


def test_access_log_extra_carries_the_fields(access_log):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)
    keep = Keep()
    logging.getLogger("wsgiproxy.access").addHandler(keep)
    try:
        with WaitressServer(Recorder()) as backend:
            proxy = WSGIProxyApp(backend.url)
            with WaitressServer(proxy) as front:
                get(front.port, "/j")
            proxy.close()
        wait_until(lambda: records, what="a record")
    finally:
        logging.getLogger("wsgiproxy.access").removeHandler(keep)
    fields = records[0].access
    assert fields["status"] == "200" and fields["target"] == "/j"
    json.dumps(fields)  # plain values, for structured log handlers


def test_the_log_follows_level_changes_at_run_time():
    """The quick "nothing wants it" check must see logging configured after the app."""
    logger = logging.getLogger("wsgiproxy.access")
    lines = Lines()
    logger.addHandler(lines)
    level = logger.level
    try:
        with WaitressServer(Recorder()) as backend:
            proxy = WSGIProxyApp(backend.url)
            with WaitressServer(proxy) as front:
                logger.setLevel(logging.WARNING)
                get(front.port, "/quiet")
                logger.setLevel(logging.INFO)
                get(front.port, "/heard")
                lines.side("proxy")
                logger.setLevel(logging.WARNING)
                get(front.port, "/quiet-again")
                logger.disabled = True  # as logging.config does to loggers it does not name
                logger.setLevel(logging.INFO)
                get(front.port, "/disabled")
            proxy.close()
    finally:
        logger.disabled = False
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert [line["target"] for line in lines.lines] == ["/heard"]


def test_the_exact_proxy_logs_its_requests(access_log):
    with WaitressServer(Recorder()) as backend:
        proxy = ExactProxy()
        # The exact proxy goes where SERVER_NAME/PORT say: the backend, here.
        front_app = with_environ(proxy, SERVER_NAME="127.0.0.1", SERVER_PORT=str(backend.port))
        with WaitressServer(front_app) as front:
            resp, body = get(front.port, "/exact?q=1")
        proxy.close()
    assert resp.status == 200
    line, = access_log.side("exact")
    assert line["backend"] == "127.0.0.1:%d" % backend.port
    assert (line["target"], line["status"], line["bytes"]) == ("/exact?q=1", "200",
                                                               str(len(body)))
    assert line["request_id"] == "-"  # the exact proxy adds no header, so no id
