"""End to end through ExactProxy, for every transport, against real servers on loopback.

Each case runs with the default streaming transport and with httplib2, so
the two cannot drift apart; streaming-only cases are skipped for httplib2
with the reason.
"""

import io
import threading

import pytest

from wsgiproxy import connection, transport
from wsgiproxy.errors import RequestBodyError
from wsgiproxy.exactproxy import ExactProxy
from wsgiproxy.transport import make_transport

from .client import JSON, json_error, through
from .servers import OK, RawServer, WaitressServer, blank, echo_app, free_port, scripted

STREAMING_ONLY = "the httplib2 transport buffers whole bodies: %s"
TRANSPORTS = ["http", "httplib2"]


def streaming_only(what):
    """Parameters for a case that holds for the streaming transport only."""
    return ["http", pytest.param("httplib2", marks=pytest.mark.skip(reason=STREAMING_ONLY % what))]


@pytest.fixture(params=TRANSPORTS)
def proxy(request):
    p = ExactProxy(transport=request.param, read_timeout=5, connect_timeout=5)
    yield p
    p.close()


# == End to end, both transports ==============================================

def test_forwards_method_path_query_headers_body_and_host(proxy, echo):
    res = through(proxy, echo.port, "/a/b?x=1&y=%20", method="PUT",
              headers={"Host": "front.example:8080", "X-Custom": "v1",
                       "X-Backslash": "C:\\new\\d", "Content-Type": "text/plain"},
              body=b"hello")
    assert res.status_int == 200
    seen = res.json
    assert seen["REQUEST_METHOD"] == "PUT"
    assert seen["PATH_INFO"] == "/a/b"
    assert seen["QUERY_STRING"] == "x=1&y=%20"
    assert seen["HTTP_HOST"] == "front.example:8080"
    assert seen["HTTP_X_CUSTOM"] == "v1"
    assert seen["HTTP_X_BACKSLASH"] == "C:\\new\\d"  # httplib2 alone mangles backslashes
    assert seen["CONTENT_TYPE"] == "text/plain"
    assert seen["body"] == "hello"
    # Nothing the client did not send: no User-Agent, no Accept-Encoding, no If-Match.
    assert not {"HTTP_USER_AGENT", "HTTP_ACCEPT_ENCODING", "HTTP_IF_MATCH"} & set(seen)


def test_non_ascii_path_is_not_mojibake(proxy, echo):
    seen = through(proxy, echo.port, "/caf%C3%A9/%E2%82%AC").json
    assert seen["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/€"
    assert seen["REQUEST_URI"] == "/caf%C3%A9/%E2%82%AC"


def test_raw_uri_keeps_encoded_slash(proxy, echo):
    req = blank("/a%2Fb/c", echo.port)
    req.environ["RAW_URI"] = "/a%2Fb/c"
    assert req.get_response(proxy).json["REQUEST_URI"] == "/a%2Fb/c"


def test_status_reason_and_repeated_headers_pass_through(proxy):
    def handler(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 799 Silly Response\r\nSet-Cookie: a=1\r\nX-B: 2\r\n"
                  b"Set-Cookie: b=2, c=3\r\nContent-Length: 2\r\n\r\nok")
    with RawServer(handler) as server:
        res = through(proxy, server.port)
    assert res.status == "799 Silly Response"
    assert res.headerlist == [("Set-Cookie", "a=1"), ("X-B", "2"), ("Set-Cookie", "b=2, c=3"),
                              ("Content-Length", "2")]
    assert res.body == b"ok"


def test_hop_by_hop_headers_are_dropped_both_ways(proxy):
    def handler(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret-Hop\r\n"
                  b"Keep-Alive: timeout=5\r\nX-Secret-Hop: 1\r\nUpgrade: h2c\r\n"
                  b"Proxy-Connection: keep-alive\r\nX-End: kept\r\nContent-Length: 0\r\n\r\n")
    with RawServer(handler) as server:
        res = through(proxy, server.port, headers={
            "Connection": "X-Client-Hop", "X-Client-Hop": "1", "Keep-Alive": "300",
            "TE": "trailers", "Upgrade": "websocket", "Proxy-Connection": "x",
            "Proxy-Authorization": "Basic eDp5", "Trailer": "X-T", "Expect": "100-continue",
            "X-End": "kept"})
        head = server.requests[0][0].lower()
    assert [name for name, _ in res.headerlist] == ["X-End", "Content-Length"]
    for name in (b"x-client-hop", b"keep-alive", b"te:", b"upgrade", b"proxy-connection",
                 b"proxy-authorization", b"trailer", b"connection", b"expect"):
        assert name not in head
    assert b"x-end: kept" in head


@pytest.mark.parametrize("response, body", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
    ((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      b"3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nX-Trailer: t\r\n\r\n"), b"hello"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n", b""),
    (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
    (b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", b""),
    ((b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
      b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"), b"hi"),
])
def test_framed_responses_keep_the_connection(proxy, response, body):
    with RawServer(scripted(response, OK)) as server:
        assert through(proxy, server.port).body == body
        assert through(proxy, server.port).body == b"ok"
        assert server.connections == 1


@pytest.mark.parametrize("method, response, kept", [
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", True),
    ("GET", b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", True),
    ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n", True),
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", False),
    ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", False),
    ("HEAD", b"HTTP/1.1 200 OK\r\n\r\n", False),
    ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", False),
    ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", False),
    ("GET", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", False),
    ("GET", (b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n"
             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"), False),
])
def test_bodiless_answers_announcing_a_body_are_never_reused(proxy, method, response, kept):
    """Invariant 1 (issue 15): the body such a head announces may still arrive, later than
    any check could see it, and would be read as the next response."""
    if method == "HEAD" and proxy.transport.__class__.__name__ == "Httplib2Transport":
        kept = False  # httplib2 itself closes the connection after every HEAD
    with RawServer(scripted(response, OK)) as server:
        first = through(proxy, server.port, method=method)
        assert first.status_int < 300 or first.status_int == 304
        assert through(proxy, server.port).body == b"ok"
        assert server.connections == (1 if kept else 2)


def test_head_response_has_no_body_whatever_its_headers_say(proxy):
    with RawServer(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", OK)) as server:
        res = through(proxy, server.port, method="HEAD")
        assert res.headers["Content-Length"] == "1000"
        assert res.body == b""
        assert through(proxy, server.port).body == b"ok"


def test_close_delimited_body_is_read_to_eof(proxy):
    with RawServer(scripted(b"HTTP/1.1 200 OK\r\n\r\nuntil the end<close>", OK)) as server:
        assert through(proxy, server.port).body == b"until the end<close>"
        assert through(proxy, server.port).body == b"ok"
        assert server.connections == 2


def test_extra_bytes_after_content_length_never_reach_the_next_request(proxy):
    with RawServer(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"
                            b"Content-Length: 6\r\n\r\nsmuggl", OK, OK)) as server:
        assert through(proxy, server.port).body == b"ok"
        assert through(proxy, server.port).body == b"ok"
        assert server.connections == 2


@pytest.mark.parametrize("response, reason", [
    (b"garbage\r\n\r\n", "invalid status line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "invalid status line"),
    (b"HTTP/1.1 099 Too Low\r\n\r\n", "invalid status code 99"),
    (b"HTTP/1.1 2x0 OK\r\n\r\n", "invalid status line"),
    (b"HTTP/2 200 OK\r\n\r\n", "invalid status line"),
    (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", "invalid header name"),
    (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", "control characters"),
    (b"HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n", "bare CR or LF"),
    (b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n", "obsolete line folding"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
     "both Transfer-Encoding and Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
     "conflicting Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported Transfer-Encoding"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", "larger than"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "switched protocols"),
    (b"HTTP/1.1 200 OK\r\nContent-Len<close>", "in the middle of the response headers"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nabc<close>", "short of its Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
     "invalid or incomplete chunked body"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel<close>",
     "invalid or incomplete chunked body"),
])
def test_malformed_responses_are_502_and_never_reused(h2proxy, response, reason):
    with RawServer(scripted(response, OK)) as server:
        error = json_error(through(h2proxy, server.port, headers=JSON), 502)
        assert reason in error["message"]
        assert "127.0.0.1:%d" % server.port in error["message"]
        assert h2proxy.transport.idle_connections() == 0


def test_refused_is_502_with_json_when_asked(proxy):
    port = free_port()
    error = json_error(through(proxy, port, headers=JSON), 502)
    assert error["type"] == "BadGateway"
    assert "connection refused" in error["message"]
    assert "127.0.0.1:%d" % port in error["message"]


def test_unknown_host_is_502(proxy):
    res = through(proxy, 80, host="no-such-host.invalid", headers=JSON)
    assert "unknown host" in json_error(res, 502)["message"]


@pytest.mark.parametrize("name", TRANSPORTS)
def test_read_timeout_is_504(name):
    proxy = ExactProxy(transport=name, read_timeout=0.3)
    release = threading.Event()

    def silent(conn):
        conn.read_request()
        release.wait(10)
    with RawServer(silent) as server:
        res = through(proxy, server.port, headers=JSON)
        release.set()
    error = json_error(res, 504)
    assert error["type"] == "GatewayTimeout" and "timed out" in error["message"]


def test_short_request_body_is_400(proxy):
    with RawServer(lambda c: c.read_request()) as server:
        req = blank("/up", server.port, method="POST", headers=JSON)
        req.environ["wsgi.input"] = io.BytesIO(b"abc")
        req.environ["CONTENT_LENGTH"] = "100000"
        res = req.get_response(proxy)
    assert "ended after 3 of 100000 bytes" in json_error(res, 400)["message"]


class _Overgenerous:
    """A ``wsgi.input`` whose ``read(n)`` returns ``n + 7`` bytes."""

    def read(self, size=-1):
        return b"g" * (size + 7)


def test_request_body_reads_longer_than_asked_are_400_and_never_sent(proxy):
    """Bytes past the Content-Length would be read by the backend as the next request."""
    def answer_all(conn):
        while conn.read_request()[0] is not None:
            conn.send(OK)
    with RawServer(answer_all) as server:
        req = blank("/up", server.port, method="POST")
        req.environ["wsgi.input"] = _Overgenerous()
        req.environ["CONTENT_LENGTH"] = "100000"  # above INLINE_BODY_MAX: streamed
        res = req.get_response(proxy)
        assert res.status_int == 400
        assert "7 bytes more than its 100000 bytes of Content-Length" in res.text
        assert through(proxy, server.port).body == b"ok"
        assert [head.split(b" ")[0] for head, _ in server.requests] == [b"GET"]


def test_read_pieces_refuses_a_read_past_the_length():
    pieces = connection.read_pieces(_Overgenerous(), 20, 8)
    assert next(pieces) == b"g" * 15  # asked 8, got 15: still within the 20
    with pytest.raises(RequestBodyError, match="7 bytes more than its 20"):
        next(pieces)  # asked 5, got 12: 7 too many, never handed on


@pytest.mark.parametrize("name", TRANSPORTS)
def test_header_injection_is_refused(name):
    transport = make_transport(name)
    for headers in ([("Host", "x"), ("X-A", "a\r\nX-Injected: 1")], [("Host", "x\x00")],
                    [("Host", "x"), ("Bad Name", "v")], [("X-No-Host", "1")]):
        with pytest.raises(ValueError):
            transport.request("http", "127.0.0.1", 1, "GET", "/", headers)
    with pytest.raises(ValueError):
        transport.request("http", "127.0.0.1", 1, "GET", "/a b", [("Host", "x")])


def chunked_upload(port, body):
    """A POST whose body has no length: chunked, as a server hands it over
    (``wsgi.input_terminated``, no CONTENT_LENGTH)."""
    req = blank("/up", port, method="POST")
    req.environ.pop("CONTENT_LENGTH", None)
    req.environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    req.environ["wsgi.input"] = io.BytesIO(body)
    req.environ["wsgi.input_terminated"] = True
    return req


def test_chunked_upload_without_length_arrives_whole(proxy):
    with RawServer(scripted(OK)) as server:
        assert chunked_upload(server.port, b"x" * 200000).get_response(proxy).status_int == 200
        assert server.requests[0][1] == b"x" * 200000


@pytest.mark.parametrize("name", streaming_only("an upload without a length is buffered and "
                                                "sent with a Content-Length, not chunked"))
def test_chunked_upload_is_sent_chunked(name):
    with RawServer(scripted(OK)) as server:
        req = chunked_upload(server.port, b"x" * 1000)
        assert req.get_response(ExactProxy(transport=name)).status_int == 200
        assert b"transfer-encoding: chunked" in server.requests[0][0].lower()


@pytest.mark.parametrize("name", streaming_only("a response reaches the client when it is "
                                                "complete, not byte by byte"))
def test_response_streams_as_it_arrives(name):
    go = [threading.Event() for _ in range(3)]

    def slow(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for event, piece in zip(go, b"abc"):
            assert event.wait(10)
            conn.send(b"1\r\n%c\r\n" % piece)
        conn.send(b"0\r\n\r\n")
    with RawServer(slow) as backend:
        transport = make_transport(name)
        go[0].set()
        response = transport.request("http", "127.0.0.1", backend.port, "GET", "/",
                                     [("Host", "x")])
        chunks = iter(response)
        for i, expected in enumerate(b"abc"):
            assert next(chunks) == bytes([expected])
            if i + 1 < len(go):
                go[i + 1].set()
        response.close()


@pytest.mark.parametrize("name", streaming_only("an upload is read whole before it is sent"))
def test_large_upload_streams_in_bounded_reads(name):
    class CountingInput(io.RawIOBase):
        """Produces the body without holding it; records the largest read."""
        def __init__(self):
            self.left = 3 * 1024 * 1024
            self.biggest = 0

        def read(self, n=-1):
            n = self.left if n < 0 else min(n, self.left)
            self.biggest = max(self.biggest, n)
            self.left -= n
            return b"u" * n
    stream = CountingInput()
    with RawServer(scripted(OK)) as server:
        req = blank("/up", server.port, method="POST")
        req.environ["wsgi.input"] = stream
        req.environ["CONTENT_LENGTH"] = str(3 * 1024 * 1024)
        assert req.get_response(ExactProxy(transport=name)).status_int == 200
        assert len(server.requests[0][1]) == 3 * 1024 * 1024
    assert stream.biggest <= transport.UPLOAD_CHUNK  # bounded: never the whole body


@pytest.mark.parametrize("name", TRANSPORTS)
def test_concurrent_requests_get_their_own_answers(name, echo):
    proxy = ExactProxy(transport=name, pool_size=4)
    errors = []

    def worker(n):
        for i in range(20):
            ident = "%d-%d" % (n, i)
            seen = through(proxy, echo.port, "/id/" + ident, headers={"X-Ident": ident}).json
            if seen["PATH_INFO"] != "/id/" + ident or seen["HTTP_X_IDENT"] != ident:
                errors.append((ident, seen["PATH_INFO"]))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert 0 < proxy.transport.idle_connections() <= 4
    proxy.close()


def test_ipv6_backend(proxy):
    try:
        server = WaitressServer(echo_app, host="::1")
    except OSError as exc:  # pragma: no cover - a machine without IPv6 loopback
        pytest.skip("no IPv6 loopback: %s" % exc)
    with server:
        seen = through(proxy, server.port, "/v6", host="::1").json
    assert seen["PATH_INFO"] == "/v6"


# -- TLS ----------------------------------------------------------------------

@pytest.mark.parametrize("name", TRANSPORTS)
def test_https_backend_verified_with_ca_certs(name, ca_file, tls_server):
    proxy = ExactProxy(transport=name, ca_certs=ca_file)
    for _ in range(2):
        assert through(proxy, tls_server.port, scheme="https").body == b"ok"
    assert tls_server.connections == 1
    proxy.close()


def test_https_backend_with_unknown_ca_is_502(proxy, tls_server):
    res = through(proxy, tls_server.port, scheme="https", headers=JSON)
    assert "certificate verification failed" in json_error(res, 502)["message"]


@pytest.mark.parametrize("name", TRANSPORTS)
def test_https_verification_can_be_turned_off(name, tls_server):
    assert through(ExactProxy(transport=name, verify=False), tls_server.port,
               scheme="https").body == b"ok"


@pytest.mark.parametrize("name", TRANSPORTS)
def test_a_forked_child_starts_with_an_empty_pool(name, echo):
    """gunicorn --preload forks after the app (and its pool) exist: never share sockets."""
    import os
    proxy = ExactProxy(transport=name)
    assert through(proxy, echo.port).status_int == 200
    assert proxy.transport.idle_connections() == 1
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        os._exit(0 if proxy.transport.idle_connections() == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert proxy.transport.idle_connections() == 1  # the parent keeps its pool
    proxy.close()
