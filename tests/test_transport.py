"""HTTPTransport itself: framing, pooling, reuse and timeouts, against raw servers.

The cases every transport shares (through ExactProxy) are in
test_end_to_end_transports.py; the idle-connection probe, which both
transports take from wsgiproxy.connection, is tested here for both.

Invariant 1 of the design notes runs through this file: a connection returns
to the pool only after a complete, unambiguous response.
"""

import threading

import pytest

from wsgiproxy.exactproxy import ExactProxy
from wsgiproxy.httplib2transport import Httplib2Transport
from wsgiproxy.transport import BackendTimeout, BadBackendResponse, HTTPTransport, make_transport

from .client import through
from .servers import OK, RawServer, scripted


def transport_get(transport, port, method="GET", path="/"):
    return transport.request("http", "127.0.0.1", port, method, path, [("Host", "x")])


@pytest.fixture
def proxy():
    p = ExactProxy(read_timeout=5, connect_timeout=5)
    yield p
    p.close()


def test_304_keeps_its_content_length_and_204_drops_it(proxy):
    with RawServer(scripted(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
                            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")) as server:
        assert through(proxy, server.port).headers["Content-Length"] == "99"
        assert "Content-Length" not in through(proxy, server.port).headers


def test_close_delimited_body_is_read_to_eof_and_not_reused(proxy):
    with RawServer(scripted(b"HTTP/1.1 200 OK\r\n\r\nuntil the end<close>", OK)) as server:
        assert through(proxy, server.port).body == b"until the end<close>"
        assert through(proxy, server.port).body == b"ok"
        assert server.connections == 2


def test_connection_close_and_http10_are_not_reused(proxy):
    with RawServer(scripted(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na",
                            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb", OK)) as server:
        assert through(proxy, server.port).body == b"a"
        assert through(proxy, server.port).body == b"b"
        assert through(proxy, server.port).body == b"ok"
        assert server.connections == 3


def test_response_closed_early_discards_the_connection():
    transport = HTTPTransport()
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"x" * 300000
    with RawServer(scripted(big, OK)) as server:
        response = transport_get(transport, server.port)
        chunks = iter(response)
        next(chunks)
        response.close()  # the client went away
        assert transport.idle_connections() == 0
        assert transport_get(transport, server.port).body == b"ok"
        assert server.connections == 2


def test_response_never_iterated_but_closed_discards_the_connection():
    transport = HTTPTransport()
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    with RawServer(scripted(chunked, OK)) as server:
        transport_get(transport, server.port).close()
        assert transport.idle_connections() == 0


def test_exception_in_the_middle_of_a_body_discards_the_connection():
    transport = HTTPTransport(read_timeout=5)
    with RawServer(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nabc<close>")) as server:
        response = transport_get(transport, server.port)
        with pytest.raises(BadBackendResponse, match="short of its Content-Length"):
            b"".join(response)
        assert transport.idle_connections() == 0


def test_conflicting_content_length_identical_values_are_accepted(proxy):
    with RawServer(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok")) as server:
        assert through(proxy, server.port).body == b"ok"


def test_bad_chunk_size_is_an_error_mid_body():
    transport = HTTPTransport(read_timeout=5)
    with RawServer(scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"zz\r\nhello\r\n0\r\n\r\n")) as server:
        with pytest.raises(BadBackendResponse, match="invalid chunk-size"):
            b"".join(transport_get(transport, server.port))
        assert transport.idle_connections() == 0


def test_stall_between_chunks_raises_timeout_mid_body():
    transport = HTTPTransport(read_timeout=0.3)
    release = threading.Event()

    def stall(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        release.wait(10)
    with RawServer(stall) as server:
        response = transport_get(transport, server.port)
        with pytest.raises(BackendTimeout):
            b"".join(response)
        release.set()


def test_stale_keepalive_connection_is_retried_for_idempotent_requests():
    transport = HTTPTransport()
    # The server takes the second request on the kept-alive connection and
    # closes without answering, as a server timing out idle connections does.
    with RawServer(scripted(OK, None, OK)) as server:
        assert transport_get(transport, server.port).body == b"ok"
        transport._acquire = _skip_liveness_check(transport)
        assert transport_get(transport, server.port).body == b"ok"
        assert server.connections == 2


def test_stale_connection_is_not_retried_for_post():
    transport = HTTPTransport()
    with RawServer(scripted(OK, None, OK)) as server:
        assert transport_get(transport, server.port).body == b"ok"
        transport._acquire = _skip_liveness_check(transport)
        with pytest.raises(Exception, match="not retried"):
            transport_get(transport, server.port, method="POST")
        posts = [h for h, _ in server.requests if h.startswith(b"POST")]
        assert len(posts) == 1


def _skip_liveness_check(transport):
    """Hand out pooled connections without the select() check, to reach the retry path."""
    def acquire(key):
        with transport._lock:
            idle = transport._idle.get(key)
            return idle.pop() if idle else None
    return acquire


@pytest.mark.parametrize("transport_class", [HTTPTransport, Httplib2Transport])
def test_closed_idle_connection_is_detected_before_use(transport_class):
    transport = transport_class()
    closed = threading.Event()

    def once_then_close(conn):
        conn.read_request()
        conn.send(OK)
        conn.close()
        closed.set()
    with RawServer(once_then_close) as server:
        assert transport_get(transport, server.port).body == b"ok"
        assert closed.wait(5)
        assert transport_get(transport, server.port, method="POST").body == b"ok"
        assert server.connections == 2


def test_pool_keeps_at_most_pool_size_idle_connections():
    transport = HTTPTransport(pool_size=2)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    with RawServer(scripted(*[chunked] * 5)) as server:
        # Five responses open at once (chunked bodies are read lazily): five connections.
        responses = [transport_get(transport, server.port) for _ in range(5)]
        assert server.connections == 5
        for r in responses:
            b"".join(r)
            r.close()
        assert transport.idle_connections() == 2


def test_make_transport_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown transport 'carrier-pigeon'"):
        make_transport("carrier-pigeon")


@pytest.mark.parametrize("transport_class", [HTTPTransport, Httplib2Transport])
def test_stray_bytes_arriving_after_a_response_are_never_read_as_the_next_one(transport_class):
    """Invariant 1: late bytes (after the response was read and pooled) make it stale."""
    pooled, sent = threading.Event(), threading.Event()

    def late_garbage(conn):
        conn.read_request()
        conn.send(OK)
        assert pooled.wait(5)  # the proxy has read the response and pooled the connection
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled")  # unasked for
        sent.set()
        while conn.read_request()[0] is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwrong")
    transport = transport_class()
    with RawServer(late_garbage) as bad:
        assert b"".join(transport_get(transport, bad.port)) == b"ok"
        assert transport.idle_connections() == 1
        pooled.set()
        assert sent.wait(5)
        # The pooled connection now has unasked-for bytes waiting: never reuse it.
        assert b"".join(transport_get(transport, bad.port)) == b"ok"
        assert bad.connections == 2


def test_a_wrong_ca_or_certificate_path_fails_when_the_transport_is_made(tmp_path):
    with pytest.raises(FileNotFoundError):
        HTTPTransport(ca_certs=str(tmp_path / "missing-ca.pem"))
    with pytest.raises(FileNotFoundError):
        HTTPTransport(cert_file=str(tmp_path / "missing-cert.pem"))
