"""Units of the WebSocket pass-through: the byte relay (wsgiproxy/tunnel.py), the Upgrade
helpers of wsgiproxy/http11.py, the RFC 6455 header spellings, and wsgiproxy/upgrade.py.

Sockets are real (socketpairs, TCP on loopback); every relay runs in a thread
joined with a deadline, so a relay that does not end fails the test instead of
hanging it.  End-to-end tests are in tests/test_websocket.py.
"""

import socket
import struct
import threading

import pytest

from wsgiproxy.connection import Connection
from wsgiproxy.errors import InvalidRequest, TooManyTunnels, UpgradeNotSupported
from wsgiproxy.forwarding import EnvironHeaders, environ_headers
from wsgiproxy.http11 import request_head, upgrade_protocols, with_upgrade
from wsgiproxy.tunnel import Tunnel, relay_bytes
from wsgiproxy.upgrade import Tunnels, client_socket, requested_protocols

from .client import read_to_eof

pytestmark = pytest.mark.timeout(30)

HEAD = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


class Running:
    """``target(*args)`` in a thread; :meth:`result` joins it (with a deadline) and
    returns what it returned, or raises what it raised."""

    def __init__(self, target, *args, **kwargs):
        self.outcome = None
        self.thread = threading.Thread(target=self._run, args=(target, args, kwargs),
                                       daemon=True)
        self.thread.start()

    def _run(self, target, args, kwargs):
        try:
            self.outcome = (True, target(*args, **kwargs))
        except BaseException as exc:  # handed to the test
            self.outcome = (False, exc)

    def done(self, timeout):
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def result(self, timeout=10):
        assert self.done(timeout), "still running after %gs" % timeout
        ok, value = self.outcome
        if not ok:
            raise value
        return value


def tcp_pair():
    """Two connected TCP sockets on loopback (a reset needs TCP)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        one = socket.create_connection(listener.getsockname())
        two, _ = listener.accept()
    return one, two


@pytest.fixture(params=["socketpair", "tcp"])
def pairs(request):
    """Two pairs ``(client, relay's client side), (relay's backend side, backend)``."""
    made = [socket.socketpair() if request.param == "socketpair" else tcp_pair()
            for _ in range(2)]
    for sock in (s for pair in made for s in pair):
        sock.settimeout(10)  # the hang guard of every read in the test
    yield made
    for sock in (s for pair in made for s in pair):
        sock.close()


def read_exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("end after %r" % data)
        data += chunk
    return data


# -- relay_bytes -------------------------------------------------------------------

def test_relay_copies_bytes_both_ways_until_both_ends_close(pairs):
    (client, a), (b, backend) = pairs
    relay = Running(relay_bytes, a, b)
    big = bytes(range(256)) * 4096  # 1 MiB, more than a socket buffer
    sender = Running(client.sendall, big)
    assert read_exactly(backend, len(big)) == big
    sender.result()
    backend.sendall(b"answer")
    assert read_exactly(client, 6) == b"answer"
    client.close()
    assert read_to_eof(backend) == b""  # the end was passed on
    backend.close()
    assert relay.result() == (len(big), 6)
    assert a.fileno() != -1 and b.fileno() != -1  # closing them is the caller's


def test_half_close_is_passed_on_and_the_other_side_may_finish(pairs):
    (client, a), (b, backend) = pairs
    relay = Running(relay_bytes, a, b, None, 5.0)
    client.sendall(b"last request")
    client.shutdown(socket.SHUT_WR)
    assert read_to_eof(backend) == b"last request"  # EOF reached the backend...
    backend.sendall(b"last answer")  # ...which may still answer within the linger
    backend.close()
    assert read_exactly(client, 11) == b"last answer"
    assert relay.result() == (12, 11)


def test_the_other_side_not_closing_ends_the_relay_after_the_linger(pairs):
    (client, a), (b, backend) = pairs
    relay = Running(relay_bytes, a, b, None, 0.2)
    client.shutdown(socket.SHUT_WR)
    assert read_to_eof(backend) == b""
    backend.sendall(b"late")  # within the linger: relayed
    assert read_exactly(client, 4) == b"late"
    assert relay.result() == (0, 4)  # the backend never closed: the linger ended it


def test_idle_timeout_ends_a_quiet_relay(pairs):
    (client, a), (b, backend) = pairs
    relay = Running(relay_bytes, a, b, 0.2)
    assert relay.result() == (0, 0)


def test_no_idle_timeout_waits_for_ever(pairs):
    (client, a), (b, backend) = pairs
    relay = Running(relay_bytes, a, b)
    assert not relay.done(0.5)  # the relay is still waiting...
    backend.sendall(b"x")  # ...and still relays
    assert read_exactly(client, 1) == b"x"
    client.close()
    backend.close()
    assert relay.result() == (0, 1)


def test_a_reset_ends_the_relay_and_reaches_the_other_side():
    client, a = tcp_pair()
    b, backend = tcp_pair()
    for sock in (client, a, b, backend):
        sock.settimeout(10)
    try:
        relay = Running(relay_bytes, a, b)
        client.sendall(b"before")
        assert read_exactly(backend, 6) == b"before"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # an RST, not a FIN
        assert read_to_eof(backend) == b""
        backend.close()
        assert relay.result() == (6, 0)
    finally:
        for sock in (client, a, b, backend):
            sock.close()


# -- Tunnel --------------------------------------------------------------------------

def test_tunnel_sends_the_head_and_early_bytes_first_then_relays(pairs):
    (client, a), (b, backend) = pairs
    conn = Connection(b, ("http", "127.0.0.1", 80))
    conn.buf = b"early"  # received with the 101's head
    tunnel = Tunnel(conn, HEAD, "backend:80")
    assert list(tunnel) == []  # the WSGI body of a switched response is empty
    for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):  # read_timeout, as on Linux
        b.setsockopt(socket.SOL_SOCKET, option, struct.pack("ll", 0, 200000))
    relay = Running(tunnel.relay, a, None, 0.5)
    assert read_exactly(client, len(HEAD) + 5) == HEAD + b"early"
    for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):  # a tunnel is not subject to it
        assert b.getsockopt(socket.SOL_SOCKET, option, 16) == struct.pack("ll", 0, 0)
    client.sendall(b"up")
    assert read_exactly(backend, 2) == b"up"
    backend.sendall(b"down")
    assert read_exactly(client, 4) == b"down"
    backend.close()
    assert read_to_eof(client) == b""  # the client's side is shut down at the end
    assert relay.result() == (2, 4 + 5)
    assert tunnel.conn is None and b.fileno() == -1  # the backend side is closed
    with pytest.raises(ValueError):
        tunnel.relay(a)


def test_tunnel_to_a_client_already_gone_closes_the_backend(pairs):
    (client, a), (b, backend) = pairs
    if client.family != socket.AF_UNIX:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    tunnel = Tunnel(Connection(b, ("http", "127.0.0.1", 80)), HEAD * 20000, "backend:80")
    assert Running(tunnel.relay, a).result() == (0, 0)
    assert read_to_eof(backend) == b""
    tunnel.close()  # closing twice is harmless


# -- the Upgrade header ------------------------------------------------------------------

@pytest.mark.parametrize("upgrade, connection, version, expected", [
    ("websocket", "Upgrade", "HTTP/1.1", "websocket"),
    ("websocket", "keep-alive, upgrade", "HTTP/1.1", "websocket"),
    ("WebSocket", "UPGRADE", "HTTP/1.1", "WebSocket"),
    (" websocket\t", "Upgrade", "HTTP/1.1", "websocket"),
    ("h2c, websocket/13", "Upgrade, HTTP2-Settings", "HTTP/1.1", "h2c, websocket/13"),
    ("websocket", "keep-alive", "HTTP/1.1", None),  # Connection must name it
    ("websocket", None, "HTTP/1.1", None),
    ("websocket", "", "HTTP/1.1", None),
    ("websocket", "Upgrade", "HTTP/1.0", None),  # no upgrades in HTTP/1.0
    ("websocket", "Upgrade", "HTTP/2", None),
    (None, "Upgrade", "HTTP/1.1", None),
    ("", "Upgrade", "HTTP/1.1", None),
])
def test_upgrade_protocols(upgrade, connection, version, expected):
    assert upgrade_protocols(upgrade, connection, version) == expected


@pytest.mark.parametrize("upgrade", ["websocket/", "web socket", "a/b/c", "websocket;v=13",
                                     "websocket\r\nX-Injected: 1", "wébsocket", "/13"])
def test_malformed_upgrade_is_an_invalid_request(upgrade):
    with pytest.raises(InvalidRequest):
        upgrade_protocols(upgrade, "Upgrade", "HTTP/1.1")


def test_empty_list_elements_in_upgrade_are_ignored():
    protocols = upgrade_protocols("websocket, , h2c", "Upgrade", "HTTP/1.1")
    assert [p.strip() for p in protocols.split(",") if p.strip()] == ["websocket", "h2c"]


def test_with_upgrade_asks_for_the_switch_once():
    head = request_head("GET", "/chat", [("Host", "b:80"), ("Sec-WebSocket-Key", "k")],
                        0, False)
    upgraded = with_upgrade(head, "websocket")
    assert upgraded.startswith(b"GET /chat HTTP/1.1\r\n") and upgraded.endswith(b"\r\n\r\n")
    lines = upgraded.split(b"\r\n")
    assert lines.count(b"Connection: Upgrade") == 1 and lines.count(b"Upgrade: websocket") == 1
    assert b"Sec-WebSocket-Key: k" in lines
    assert upgraded.count(b"\r\n\r\n") == 1
    assert upgraded.lower().count(b"connection:") == 1


# -- header names ----------------------------------------------------------------------------

WEBSOCKET_ENVIRON = {
    "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
    "HTTP_SEC_WEBSOCKET_VERSION": "13",
    "HTTP_SEC_WEBSOCKET_PROTOCOL": "chat.v1, chat.v2",
    "HTTP_SEC_WEBSOCKET_EXTENSIONS": "permessage-deflate; client_max_window_bits",
    "HTTP_SEC_FETCH_MODE": "websocket",
    "HTTP_UPGRADE": "websocket",
    "HTTP_CONNECTION": "keep-alive, Upgrade",
    "HTTP_HOST": "front.example",
}


@pytest.mark.parametrize("headers", [EnvironHeaders(), environ_headers],
                         ids=["new", "shared"])
def test_sec_websocket_headers_get_rfc_6455_spellings(headers):
    for _ in range(2):  # the first call learns the keys, the second uses what it learnt
        got = dict(headers(dict(WEBSOCKET_ENVIRON)))
        assert {name: value for name, value in got.items() if name.startswith("Sec-")} == {
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Protocol": "chat.v1, chat.v2",
            "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
            "Sec-Fetch-Mode": "websocket",
        }
        assert "Upgrade" not in got and "Connection" not in got  # hop-by-hop: the proxy's own


# -- upgrade.py: the client's socket, the limits ------------------------------------------

class Answer:
    """What an opener returns: a response with a status (and a tunnel for a 101)."""

    def __init__(self, status, tunnel=None):
        self.status = status
        self.tunnel = tunnel


class Body(list):
    closed = False

    def close(self):
        self.closed = True


def environ(**extra):
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/chat", "SERVER_PROTOCOL": "HTTP/1.1",
           "HTTP_UPGRADE": "websocket", "HTTP_CONNECTION": "Upgrade",
           "SERVER_SOFTWARE": "waitress"}
    env.update(extra)
    return env


def test_client_socket_of_each_server():
    sock = object()

    class EventletInput:
        def get_socket(self):
            return sock

    gunicorn_sock, end = client_socket({"gunicorn.socket": sock})
    assert gunicorn_sock is sock
    with pytest.raises(StopIteration):  # gunicorn then closes, writing nothing
        end(None)
    assert client_socket({"werkzeug.socket": sock})[0] is sock
    assert client_socket({"eventlet.input": EventletInput()})[0] is sock
    assert client_socket({"wsgi.input": object()}) is None
    assert client_socket({"eventlet.input": object()}) is None  # no get_socket: not eventlet's


def test_h2c_alone_is_dropped_only_where_no_socket_is_handed_over():
    h2c = environ(HTTP_UPGRADE="h2c", HTTP_CONNECTION="Upgrade, HTTP2-Settings")
    assert requested_protocols(h2c) is None
    assert requested_protocols(dict(h2c, **{"gunicorn.socket": object()})) == "h2c"
    assert requested_protocols(environ()) == "websocket"  # 501 later, from Tunnels.open
    assert requested_protocols(environ(SERVER_PROTOCOL="HTTP/1.0")) is None
    with pytest.raises(InvalidRequest):
        requested_protocols(environ(HTTP_UPGRADE="web socket"))


def never_called():
    raise AssertionError("the request was sent")


def test_no_socket_or_no_tunnels_is_a_501_and_nothing_is_sent():
    with pytest.raises(UpgradeNotSupported) as refused:
        Tunnels().open(environ(), never_called)
    assert refused.value.status == 501
    assert "gunicorn" in refused.value.message and "waitress" in refused.value.message
    with pytest.raises(UpgradeNotSupported) as off:
        Tunnels(max_tunnels=0).open(environ(**{"gunicorn.socket": object()}), never_called)
    assert "max_tunnels" in off.value.message


def test_max_tunnels_counts_switched_answers_only():
    tunnels = Tunnels(max_tunnels=1)
    env = environ(**{"gunicorn.socket": object()})
    for status in (400, 426, 200):  # refused upgrades hold no place
        assert tunnels.open(env, lambda s=status: (Answer(s), []))[0].status == status
        assert tunnels.open_count == 0
    def fails():
        raise OSError("connection refused")
    with pytest.raises(OSError):  # nor does a failed send
        tunnels.open(env, fails)
    assert tunnels.open_count == 0
    tunnels.open(env, lambda: (Answer(101), []))
    assert tunnels.open_count == 1
    with pytest.raises(TooManyTunnels) as full:
        tunnels.open(env, never_called)
    assert full.value.status == 503
    assert ("Retry-After", str(full.value.retry_after)) in full.value.headers
    assert "1 of 1" in repr(tunnels)


def test_run_relays_ends_the_request_and_frees_the_place(pairs):
    (client, a), (b, backend) = pairs
    tunnels = Tunnels(max_tunnels=1, idle_timeout=5)
    env = environ(**{"gunicorn.socket": a})
    tunnel = Tunnel(Connection(b, ("http", "127.0.0.1", 80)), HEAD, "backend:80")
    body = Body()
    response, _ = tunnels.open(env, lambda: (Answer(101, tunnel), body))
    run = Running(tunnels.run, env, None, response, body)
    assert read_exactly(client, len(HEAD)) == HEAD
    client.sendall(b"hello")
    assert read_exactly(backend, 5) == b"hello"
    backend.close()
    assert read_to_eof(client) == b""
    client.close()
    with pytest.raises(StopIteration):  # gunicorn's way to close without writing
        run.result()
    assert tunnels.open_count == 0 and body.closed


@pytest.mark.parametrize("max_tunnels, idle", [(-1, None), (1, -1)])
def test_negative_limits_are_refused(max_tunnels, idle):
    with pytest.raises(ValueError):
        Tunnels(max_tunnels, idle)


def test_no_idle_timeout_by_default():
    assert Tunnels().idle_timeout is None and Tunnels(idle_timeout=0).idle_timeout is None
    assert Tunnels(idle_timeout="2.5").idle_timeout == 2.5
