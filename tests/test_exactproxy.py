"""proxy_exact_request against real servers on loopback."""

import http.client
import io
import threading

import pytest
from webob import Request

from wsgiproxy import exactproxy
from wsgiproxy.exactproxy import (ExactProxy, filter_paste_httpserver_proxy,
                                  proxy_exact_request)

from .servers import RawServer, WaitressServer, blank, echo_app


@pytest.fixture(scope="module")
def echo():
    with WaitressServer(echo_app) as server:
        yield server


def test_forwards_method_path_query_headers_and_host(echo):
    req = blank("/a/b?x=1&y=%20", echo.port, method="PUT",
                headers={"Host": "front.example:8080", "X-Custom": "v1",
                         "Content-Type": "text/plain"}, body=b"hello")
    res = req.get_response(proxy_exact_request)
    assert res.status_int == 200
    seen = res.json
    assert seen["REQUEST_METHOD"] == "PUT"
    assert seen["PATH_INFO"] == "/a/b"
    assert seen["QUERY_STRING"] == "x=1&y=%20"
    assert seen["HTTP_HOST"] == "front.example:8080"
    assert seen["HTTP_X_CUSTOM"] == "v1"
    assert seen["CONTENT_TYPE"] == "text/plain"
    assert seen["body"] == "hello"


def test_script_name_is_part_of_the_path(echo):
    req = blank("/rest", echo.port)
    req.environ["SCRIPT_NAME"] = "/mount"
    assert req.get_response(proxy_exact_request).json["PATH_INFO"] == "/mount/rest"


def test_non_ascii_path_is_not_mojibake(echo):
    req = blank("/caf%C3%A9/%E2%82%AC", echo.port)
    seen = req.get_response(proxy_exact_request).json
    assert seen["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/€"
    assert seen["REQUEST_URI"] == "/caf%C3%A9/%E2%82%AC"


def test_raw_uri_keeps_encoded_slash(echo):
    req = blank("/a%2Fb/c", echo.port)
    assert req.environ["PATH_INFO"] == "/a/b/c"
    req.environ["RAW_URI"] = "/a%2Fb/c"
    assert req.get_response(proxy_exact_request).json["REQUEST_URI"] == "/a%2Fb/c"


def test_inconsistent_raw_uri_is_ignored(echo):
    req = blank("/real", echo.port)
    req.environ["REQUEST_URI"] = "/other"
    assert req.get_response(proxy_exact_request).json["PATH_INFO"] == "/real"


def test_status_reason_and_repeated_headers_pass_through():
    def handler(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 799 Silly Response\r\nSet-Cookie: a=1\r\nX-B: 2\r\n"
                  b"Set-Cookie: b=2\r\nContent-Length: 2\r\n\r\nok")
    with RawServer(handler) as server:
        res = blank("/", server.port).get_response(proxy_exact_request)
    assert res.status == "799 Silly Response"
    assert res.headerlist == [("Set-Cookie", "a=1"), ("X-B", "2"), ("Set-Cookie", "b=2"),
                              ("Content-Length", "2")]
    assert res.body == b"ok"


def test_hop_by_hop_headers_are_dropped_both_ways():
    def handler(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret-Hop\r\n"
                  b"Keep-Alive: timeout=5\r\nX-Secret-Hop: 1\r\nUpgrade: h2c\r\n"
                  b"Proxy-Connection: keep-alive\r\nX-End: kept\r\nContent-Length: 0\r\n\r\n")
    with RawServer(handler) as server:
        req = blank("/", server.port, headers={
            "Connection": "X-Client-Hop", "X-Client-Hop": "1", "Keep-Alive": "300",
            "TE": "trailers", "Upgrade": "websocket", "Proxy-Connection": "x",
            "Trailer": "X-T", "X-End": "kept"})
        res = req.get_response(proxy_exact_request)
        head = server.requests[0][0].lower()
    assert [name for name, _ in res.headerlist] == ["X-End", "Content-Length"]
    for name in (b"x-client-hop", b"keep-alive", b"te:", b"upgrade", b"proxy-connection",
                 b"trailer", b"connection"):
        assert name not in head
    assert b"x-end: kept" in head


def test_paste_httpserver_proxy_keys(echo):
    app = filter_paste_httpserver_proxy(proxy_exact_request)
    req = Request.blank("/x", headers={"Host": "wanted.example"})
    req.environ["paste.httpserver.proxy.scheme"] = "http"
    req.environ["paste.httpserver.proxy.host"] = "127.0.0.1:%d" % echo.port
    seen = req.get_response(app).json
    assert seen["HTTP_HOST"] == "wanted.example"
    env = {"wsgi.url_scheme": "https", "paste.httpserver.proxy.host": "[::1]"}
    exactproxy.filter_paste_httpserver_proxy_environ(env)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("::1", "443")


def test_large_upload_streams_with_content_length():
    size = 5 * 1024 * 1024 + 3

    class CountingInput(io.RawIOBase):
        """Produces ``size`` bytes without holding them; records the largest read."""
        def __init__(self):
            self.left = size
            self.biggest = 0

        def read(self, n=-1):
            n = self.left if n < 0 else min(n, self.left)
            self.biggest = max(self.biggest, n)
            self.left -= n
            return b"u" * n

    def handler(conn):
        head = conn.read_head()
        length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0]
                     .split(b":")[1])
        got = 0
        while got < length:
            got += len(conn.read_exact(min(65536, length - got)))
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(got)), got))

    stream = CountingInput()
    with RawServer(handler) as server:
        req = blank("/up", server.port, method="POST")
        req.environ["wsgi.input"] = stream
        req.environ["CONTENT_LENGTH"] = str(size)
        res = req.get_response(proxy_exact_request)
    assert res.body == str(size).encode()
    assert stream.biggest <= 65536


def test_chunked_upload_without_length_is_sent_chunked():
    with RawServer(lambda c: (c.read_request(),
                              c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))) as server:
        req = blank("/up", server.port, method="POST")
        req.environ.pop("CONTENT_LENGTH", None)
        req.environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        req.environ["wsgi.input"] = io.BytesIO(b"x" * 200000)
        req.environ["wsgi.input_terminated"] = True
        assert req.get_response(proxy_exact_request).status_int == 200
        head, body = server.requests[0]
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"x" * 200000


def test_short_request_body_is_400_and_backend_connection_discarded():
    proxy = ExactProxy()
    with RawServer(lambda c: c.read_request()) as server:
        req = blank("/up", server.port, method="POST")
        req.environ["wsgi.input"] = io.BytesIO(b"abc")
        req.environ["CONTENT_LENGTH"] = "100000"
        res = req.get_response(proxy)
    assert res.status_int == 400
    assert "ended after 3 of 100000 bytes" in res.text
    assert proxy.transport.idle_connections() == 0


class SlowBody:
    """A backend that sends one piece at a time, each released by the test."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.go = [threading.Event() for _ in pieces]

    def __call__(self, conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for event, piece in zip(self.go, self.pieces):
            assert event.wait(10)
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")


def test_response_streams_as_it_arrives_through_a_real_front_server():
    """Each byte reaches the client before the backend sends the next one."""
    slow = SlowBody([b"a", b"b", b"c"])
    with RawServer(slow) as backend:
        def front(environ, start_response):
            environ["SERVER_NAME"], environ["SERVER_PORT"] = "127.0.0.1", str(backend.port)
            return proxy_exact_request(environ, start_response)
        with WaitressServer(front, send_bytes=1) as server:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            slow.go[0].set()
            conn.request("GET", "/slow")
            res = conn.getresponse()
            received = b""
            for i, expected in enumerate([b"a", b"b", b"c"]):
                received += res.read1(1)  # blocks (10 s at most) until the piece arrives
                assert received.endswith(expected)
                if i + 1 < len(slow.go):
                    slow.go[i + 1].set()
            assert res.read() == b""
            conn.close()


def test_exact_proxy_rejects_unknown_scheme():
    req = blank("/", 1)
    req.environ["wsgi.url_scheme"] = "gopher"
    res = req.get_response(proxy_exact_request)
    assert res.status_int == 400
    assert "gopher" in res.text


def test_concurrent_requests_get_their_own_answers(echo):
    proxy = ExactProxy(pool_size=4)
    errors = []

    def worker(n):
        for i in range(25):
            ident = "%d-%d" % (n, i)
            res = blank("/id/" + ident, echo.port).get_response(proxy)
            if res.json["PATH_INFO"] != "/id/" + ident:
                errors.append((ident, res.json["PATH_INFO"]))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert proxy.transport.idle_connections() <= 4


def test_ipv6_backend():
    try:
        with WaitressServer(echo_app, host="::1") as server:
            req = blank("/v6", server.port, host="::1")
            seen = req.get_response(proxy_exact_request).json
    except OSError as exc:  # pragma: no cover - a machine without IPv6 loopback
        pytest.skip("no IPv6 loopback: %s" % exc)
    assert seen["PATH_INFO"] == "/v6"
