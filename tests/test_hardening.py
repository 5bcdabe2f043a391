"""Failure behaviour as a tested property: backend faults, client faults, hostile input,
resources and concurrency.  Every test is bounded in time."""

import http.client
import os
import socket
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webob import Request

from wsgiproxy import connection, http11
from wsgiproxy import transport as transport_module
from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.transport import BackendError, BadBackendResponse

from .client import JSON, json_error, parse_answer, request, send_raw
from .servers import BIN, Gunicorn, RawServer, Served, WaitressServer, free_port, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """The fault server (tests/faultserver.py) in its own process: its port."""
    port = free_port()
    log = tmp_path_factory.mktemp("faults") / "faultserver.log"
    with Served([sys.executable, os.path.join(HERE, "faultserver.py"), port], port, log):
        yield port


# -- backend faults, through a real front server --------------------------------

@pytest.mark.parametrize("path, status, reason", [
    ("/close-mid-headers", 502, "in the middle of the response headers"),
    ("/close-before-answer", 502, "without a response"),
    ("/garbage", 502, "control characters"),
    ("/bad-status", 502, "invalid status line"),
    ("/bad-header-bytes", 502, "control characters"),
    ("/obs-fold", 502, "obsolete line folding"),
    ("/huge-headers", 502, "larger than"),
    ("/cl-te", 502, "both Transfer-Encoding and Content-Length"),
    ("/two-cl", 502, "conflicting Content-Length"),
    ("/silent?seconds=3", 504, "timed out"),
])
def test_backend_faults_before_the_body_get_clean_answers(faults, path, status, reason):
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % faults, read_timeout=0.5)
    with WaitressServer(proxy) as front:
        assert reason in json_error(request(front.port, path, headers=JSON), status)["message"]
        # ... and the proxy still works, with no broken connection pooled.
        answer = request(front.port, "/ok?size=5", headers={"X-Request-Id": "after"})
        assert (answer.status, answer.body) == (200, b"after:xxxxx")


def test_refused_backend_is_502(faults):
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % free_port())
    res = Request.blank("/", headers=JSON).get_response(proxy)
    assert "connection refused" in json_error(res, 502)["message"]


@pytest.mark.parametrize("path", ["/close-mid-body?delay=0.3", "/close-mid-chunk?delay=0.3",
                                  "/stall?seconds=3"])
def test_failure_in_the_middle_of_a_body_closes_the_clients_connection(faults, path):
    """Never a silently short body: the client sees its connection cut."""
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % faults, read_timeout=0.5)
    with WaitressServer(proxy) as front:
        conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=20)
        conn.request("GET", path)
        res = conn.getresponse()
        assert res.status == 200
        with pytest.raises(http.client.IncompleteRead):
            res.read()
        conn.close()
        assert proxy.transport.idle_connections() == 0


def test_extra_bytes_never_reach_the_next_request(faults):
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % faults, pool_size=1)
    for i in range(20):
        path = "/extra-bytes" if i % 2 else "/ok?size=1"
        res = Request.blank(path, headers={"X-Request-Id": "r%d" % i}).get_response(proxy)
        assert res.headers["X-Request-Id"] == "r%d" % i
        assert b"smuggled" not in res.body


# -- client faults ---------------------------------------------------------------

def test_client_disconnecting_mid_download_discards_the_backend_connection():
    cut = threading.Event()

    def endless(conn):
        head, _ = conn.read_request()
        if b"/big" not in head:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.read_request()
            return
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1 << 40))
        try:
            while True:
                conn.send(b"z" * 65536)
        except OSError:
            cut.set()  # the proxy closed its side: the connection was discarded

    with RawServer(endless) as backend:
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % backend.port)
        with WaitressServer(proxy) as front:
            sock = socket.create_connection(("127.0.0.1", front.port), timeout=10)
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            got = 0
            while got < 300000:
                got += len(sock.recv(65536))
            sock.close()
            assert cut.wait(15), "the backend connection was not closed"
            assert request(front.port, "/small").body == b"ok"
        assert proxy.transport.idle_connections() <= 1


def _gunicorn_proxy(tmp_path, href, **options):
    """gunicorn (gthread, one worker) serving a WSGIProxyApp for ``href`` with ``options``."""
    ini = tmp_path / "proxy.ini"
    lines = ["[app:main]", "use = egg:WSGIProxy#main", "href = %s" % href]
    lines += ["%s = %s" % item for item in options.items()]
    ini.write_text("\n".join(lines) + "\n")
    return Gunicorn([os.path.join(BIN, "gunicorn"), "--paste", ini, "-b",
                     "127.0.0.1:%d" % free_port(), "-k", "gthread", "--threads", "16", "-w", "1",
                     "--graceful-timeout", "2"], tmp_path)


def test_client_disconnecting_mid_upload_discards_the_backend_connection(tmp_path):
    """gunicorn streams request bodies, so the proxy sees the upload break off."""
    outcomes = []

    def record(conn):
        while True:
            try:
                head, body = conn.read_request()
            except (EOFError, ValueError):
                outcomes.append("aborted")
                return
            if head is None:
                return
            outcomes.append(len(body))
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with RawServer(record) as backend, \
            _gunicorn_proxy(tmp_path, "http://127.0.0.1:%d" % backend.port) as gunicorn:
        port = gunicorn.port
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"10000\r\n" + b"u" * 0x10000 + b"\r\n" + b"10000\r\n" + b"u" * 5000)
        wait_until(lambda: backend.connections, 10, "the proxy to connect to the backend")
        sock.close()
        wait_until(lambda: "aborted" in outcomes, 10, "the backend to see the upload cut")
        assert request(port, "/again", "POST", body=b"fine").body == b"ok"
        assert outcomes[-1] == 4


@pytest.mark.parametrize("declared", [1000, 200000])
def test_body_shorter_than_its_content_length_is_400(tmp_path, faults, declared):
    with _gunicorn_proxy(tmp_path, "http://127.0.0.1:%d" % faults) as gunicorn:
        answer = send_raw(gunicorn.port, b"POST /upload HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: %d\r\n\r\nshort" % declared, shutdown=True)
    # gunicorn may notice the short body itself first; either way it is a 400, not a 5xx.
    assert parse_answer(answer).status == 400, answer[:200]


# -- hostile input -----------------------------------------------------------------

def test_cr_lf_nul_in_forwarded_values_never_reach_the_wire():
    with RawServer(lambda c: (c.read_request(),
                              c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))) as backend:
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % backend.port,
                             string_keys=["evil\r\nX-Injected-Key: 1", "REMOTE_USER"])
        for environ in ({"HTTP_HOST": "a\r\nX-Injected: 1"}, {"REMOTE_ADDR": "1.2.3.4\nX-Injected: 1"}):
            req = Request.blank("/")
            req.environ.update(environ)
            assert req.get_response(proxy).status_int == 400
        req = Request.blank("/")
        req.environ["SCRIPT_NAME"] = "/a\x00b\r\n"  # a path: percent-encoded, not refused
        assert req.get_response(proxy).status_int == 200
        assert b"X-Forwarded-Script-Name: /a%00b%0D%0A\r\n" in backend.requests[-1][0]
        req = Request.blank("/")
        req.environ["evil\r\nX-Injected-Key: 1"] = "v"
        req.environ["REMOTE_USER"] = "bob\r\nX-Injected-User: 1"
        assert req.get_response(proxy).status_int == 200
        heads = b"".join(head for head, _ in backend.requests).lower()
    assert b"x-injected" not in heads.replace(b"%0d%0ax-injected-key", b"")
    assert b"\r\nx-injected" not in heads


def test_control_characters_in_the_host_are_400_with_forwarded_on():
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % free_port(), forwarded=True)
    res = Request.blank("/", headers=dict(JSON, Host="a\x01b")).get_response(proxy)
    assert "control characters" in json_error(res, 400)["message"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_response_head_parser_raises_only_backend_errors(data):
    try:
        transport_module.parse_response_head(data, "fuzz")
    except BadBackendResponse:
        pass


class _Feed:
    """Stands in for a socket: hands out ``data`` in pieces, then EOF."""

    def __init__(self, data, step):
        self.data, self.step = data, step

    def recv(self, n):
        piece, self.data = self.data[:min(n, self.step)], self.data[min(n, self.step):]
        return piece

    def close(self):
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64),
       st.sampled_from([http11.CHUNKED, http11.CONTENT_LENGTH, http11.UNTIL_CLOSE]))
def test_fuzz_body_reader_raises_only_backend_errors(data, step, mode):
    conn = connection.Connection(_Feed(data, step), ("http", "fuzz", 1))
    reader = connection.BodyReader(transport_module.HTTPTransport(), conn, mode, 100, False,
                                   "fuzz")
    try:
        for _ in reader.chunks():
            pass
    except BackendError:
        pass


# -- resources ---------------------------------------------------------------------

def _fds():
    return len(os.listdir("/proc/self/fd"))


def test_no_leak_after_2000_requests_with_faults(faults):
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % faults, read_timeout=0.3, pool_size=4)
    refused = WSGIProxyApp("http://127.0.0.1:%d" % free_port())

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/refused":
            return refused(environ, start_response)
        return proxy(environ, start_response)

    cycle = ["/ok", "/chunked", "/ok", "/garbage", "/ok", "/close-mid-body", "/ok", "/two-cl",
             "/ok", "/extra-bytes", "/ok", "/refused", "/ok", "/close-mid-chunk", "/ok",
             "/cl-te", "/ok", "/close-before-answer", "/ok", "/bad-status"]
    with WaitressServer(app, threads=4) as front:
        def run(n):
            conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
            for i in range(n):
                path = "/stall?seconds=1" if i % 250 == 249 else cycle[i % len(cycle)]
                try:
                    conn.request("GET", path)
                    conn.getresponse().read()
                except (http.client.HTTPException, OSError):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
            conn.close()

        run(100)  # warm up: waitress threads, pools
        fds, threads = _fds(), threading.active_count()
        run(2000)
        # waitress closes a cut connection asynchronously: give it a moment, bounded.
        wait_until(lambda: _fds() <= fds + 2, 5, "waitress to close the cut connections")
        assert abs(_fds() - fds) <= 2
        assert abs(threading.active_count() - threads) <= 2
    idle = [conn for conns in proxy.transport._idle.values() for conn in conns]
    assert len(idle) <= 4
    assert all(connection.looks_alive(conn) and not conn.buf for conn in idle)


# -- concurrency -------------------------------------------------------------------

def test_200_concurrent_clients_get_their_own_responses(tmp_path, faults):
    wrong, failed = [], []
    with _gunicorn_proxy(tmp_path, "http://127.0.0.1:%d" % faults, pool_size="2") as gunicorn:
        port = gunicorn.port
        start = threading.Barrier(200, timeout=30)

        def client(n):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                start.wait()
                for i in range(5):
                    rid = "c%d-%d" % (n, i)
                    conn.request("GET", "/ok?size=%d" % (n % 7 * 300), headers={"X-Request-Id": rid})
                    res = conn.getresponse()
                    body = res.read()
                    if res.getheader("X-Request-Id") != rid or not body.startswith(rid.encode() + b":"):
                        wrong.append((rid, res.getheader("X-Request-Id"), body[:20]))
            except Exception as exc:  # collected, asserted below
                failed.append(repr(exc))
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "deadlock: clients still waiting"
    assert not wrong
    assert not failed, failed[:5]


SPLIT_PATHS = [("HEAD", "/head-split"), ("GET", "/204-split"), ("GET", "/304-split")]


@pytest.mark.parametrize("transport", ["http", "httplib2"])
def test_bodies_split_from_bodiless_heads_never_reach_another_client(tmp_path, faults,
                                                                     transport):
    """Invariant 1 (issue 15): 16 clients through one gthread worker, a third of the requests
    answered with a bodiless head that declares a body, the body following a moment later.

    A connection pooled after such a head would read that body (a whole response with the
    misbehaving request's id) as the answer to the next request on it.  Every answer must
    carry its own request's id.
    """
    clients, per_client = 16, 200
    wrong, failed, split_answers = [], [], []
    with _gunicorn_proxy(tmp_path, "http://127.0.0.1:%d" % faults, transport=transport,
                         read_timeout="5") as gunicorn:
        port = gunicorn.port
        start = threading.Barrier(clients, timeout=30)

        def client(n):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                start.wait()
                for i in range(per_client):
                    rid = "c%d-%d" % (n, i)
                    if i % 3 == 0:
                        method, path = SPLIT_PATHS[(n + i // 3) % 3]
                    else:
                        method, path = "GET", "/ok?size=%d" % (i % 5 * 40)
                    try:
                        conn.request(method, path, headers={"X-Request-Id": rid})
                        res = conn.getresponse()
                        body = res.read()
                    except (http.client.HTTPException, OSError) as exc:
                        failed.append((rid, repr(exc)))
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                        continue
                    got = res.getheader("X-Request-Id")
                    if path.startswith("/ok"):
                        mine = got == rid and body.startswith(rid.encode() + b":")
                    else:
                        mine = got == rid and body == b""
                        split_answers.append(res.status)
                    if not mine:
                        wrong.append((rid, path, got, res.status, body[:30]))
                    elif res.status >= 500:
                        failed.append((rid, res.status, body[:80]))
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "deadlock: clients still waiting"
    print("wrong deliveries: %d of %d (%d to ordinary requests); failed: %d"
          % (len(wrong), clients * per_client, sum(w[1].startswith("/ok") for w in wrong),
             len(failed)))
    assert not wrong, (len(wrong), wrong[:5])
    assert not failed, (len(failed), failed[:5])
    assert sorted(set(split_answers)) == [200, 204, 304]


def test_name_caches_never_keep_long_client_chosen_names():
    """Header-name caches are bounded in entries and never hold long names, so a
    client cannot fill memory with made-up header names."""
    from wsgiproxy import forwarding, protocol, transport
    selector = forwarding.EnvironHeaders()
    long_names = ["HTTP_X_%d_%s" % (i, "N" * 500) for i in range(20)]
    for key in long_names:
        environ = {key: "v", "HTTP_HOST": "h"}
        assert selector(environ) == [(key[5:].replace("_", "-").title(), "v")]
        head = transport.request_head("GET", "/", [("Host", "h"), (key[5:], "v")], 0, False)
        assert key[5:].encode() in head
        assert not protocol.is_signed_header(key)
    assert not set(long_names) & set(selector._names)
    assert not any(len(n) > 100 for n in http11._request_names)
    assert not any(len(n) > 100 for n in protocol.signature._signed_names)
