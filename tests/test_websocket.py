"""WebSocket (Upgrade) pass-through, end to end: real clients, proxies and backends.

The client is the `websockets` package's sync client, or a raw socket where
bytes are compared.  The fronts are gunicorn processes (``-k gthread`` and
``-k gevent``, parametrised) serving tests/wsbackend.py's ``front()``, which
picks a proxy by the first path segment (``/idle/...``, ``/raw/...``: its
FRONT_ROUTES); Werkzeug's development server and waitress run in threads here.
The backends are tests/wsbackend.py's websockets server (a subprocess), a
Flask-Sock app behind WSGIProxyMiddleware in gunicorn (the signed case), and
RawServer for exact bytes.  Every wait has a deadline (hang guards); nothing
sleeps in place of waiting for a condition.
"""

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from werkzeug.serving import make_server

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.protocol import PROTOCOL_VERSION

from .client import JSON, json_error, read_to_eof, request
from .servers import (
    BIN,
    ROOT,
    Gunicorn,
    RawServer,
    Served,
    WaitressServer,
    free_port,
    scripted,
    wait_until,
    write_secret,
)
from .wsbackend import SUBPROTOCOL

pytestmark = pytest.mark.timeout(60)

#: The environment of the programs started here: this checkout's wsgiproxy and tests.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))

WORKER_CLASSES = ["gthread", "gevent"]

#: RFC 6455's example key, and the accept value that goes with it.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# -- programs and fixtures -----------------------------------------------------------

def ws_backend(port, log):
    """tests/wsbackend.py's websockets server on 127.0.0.1:``port`` (a :class:`Served`)."""
    return Served([sys.executable, "-m", "tests.wsbackend", str(port)], port, log,
                  env=ENV, cwd=ROOT)


def gunicorn(app, directory, label, worker_class, *options, env=None):
    """gunicorn serving ``app`` (``module:callable()``), one worker of ``worker_class``."""
    directory.mkdir(exist_ok=True)
    args = [os.path.join(BIN, "gunicorn"), app, "-b", "127.0.0.1:%d" % free_port(),
            "-k", worker_class, "-w", "1", "--graceful-timeout", "2", *options]
    if worker_class == "gthread":
        args += ["--threads", "8"]
    return Gunicorn(args, directory, label, env=dict(ENV, **(env or {})), cwd=ROOT)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """The websockets backend, for the whole module."""
    port = free_port()
    with ws_backend(port, tmp_path_factory.mktemp("backend") / "backend.log") as server:
        yield server


@pytest.fixture(scope="module")
def shared_raw():
    with RawServer(lambda conn: None) as server:
        yield server


@pytest.fixture
def raw(shared_raw):
    """The module's RawServer (the fronts' ``/raw`` backend), counters reset; a test sets
    ``raw.handler``."""
    shared_raw.handler = scripted()
    shared_raw.connections = 0
    shared_raw.requests.clear()
    shared_raw.errors.clear()
    yield shared_raw


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """The Flask-Sock app behind WSGIProxyMiddleware(secret_file), in gunicorn -k gevent;
    ``.secret`` is the secret file, ``.marks`` the directory its handler marks."""
    directory = tmp_path_factory.mktemp("signed")
    secret = write_secret(directory)
    os.chmod(secret, 0o600)
    marks = directory / "marks"
    marks.mkdir()
    with gunicorn("tests.wsbackend:signed_backend()", directory, "signed", "gevent",
                  env={"WSBACKEND_SECRET": secret, "WSBACKEND_MARKS": str(marks)}) as server:
        server.secret, server.marks = secret, marks
        yield server


@pytest.fixture(scope="module", params=WORKER_CLASSES)
def front(request, tmp_path_factory, backend, shared_raw, signed):
    """gunicorn (``-k gthread`` or ``-k gevent``) serving tests/wsbackend.py's ``front()``:
    WSGIProxyApp for the websockets backend, and the other FRONT_ROUTES.  ``.victim_port``
    is the port of the ``/victim`` backend (a test starts and kills it)."""
    victim_port = free_port()
    directory = tmp_path_factory.mktemp("front-" + request.param)
    env = {"WSFRONT_BACKEND": str(backend.port), "WSFRONT_VICTIM": str(victim_port),
           "WSFRONT_RAW": str(shared_raw.port), "WSFRONT_SIGNED": str(signed.port),
           "WSFRONT_SECRET": signed.secret}
    with gunicorn("tests.wsbackend:front()", directory, "front", request.param,
                  env=env) as server:
        server.victim_port, server.worker_class = victim_port, request.param
        yield server


@contextlib.contextmanager
def werkzeug_front(app):
    """Werkzeug's development server (threaded) for ``app``, in a thread: its port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# -- clients -------------------------------------------------------------------------

def ws(port, path="/echo", **options):
    """A websockets client session to 127.0.0.1:``port``: no size limit, no keepalive
    pings, no HTTP proxy from the environment, deadlines on the handshake and the close."""
    for name, value in (("max_size", None), ("ping_interval", None), ("proxy", None),
                        ("open_timeout", 10), ("close_timeout", 5)):
        options.setdefault(name, value)
    return connect("ws://127.0.0.1:%d%s" % (port, path), **options)


def session():
    """A fresh session id (``?id=``), under which the backend records how the client closed."""
    return uuid.uuid4().hex[:12]


def closed_by_client(backend, sid):
    """How session ``sid``'s client closed, as the backend saw it: ``[code, reason]``, or
    ``None`` when no close frame came (the connection just ended).  Waits for the end."""
    def ask():
        answer = request(backend.port, "/closes?id=%s" % sid, timeout=5)
        return answer if answer.status == 200 else None
    return json.loads(wait_until(ask, 15, "the backend to see session %s end" % sid).body)


def upgrade_request(path, host="front.example:8080", headers=b""):
    """A WebSocket handshake request, its Sec-WebSocket-* headers spelt as RFC 6455 does."""
    return (b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: keep-alive, Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"%s\r\n" % (path.encode(), host.encode(), KEY.encode(), headers))


def read_until(sock, marker=b"\r\n\r\n", size=None):
    """Bytes from ``sock`` up to and including ``marker`` (or ``size`` bytes), and the rest
    received with them.  ``sock`` has a timeout: a hang fails the test."""
    data = b""
    while (marker not in data) if size is None else (len(data) < size):
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed after %r" % data[:300])
        data += chunk
    end = data.index(marker) + len(marker) if size is None else size
    return data[:end], data[end:]


def read_answer(sock):
    """One answer with a Content-Length from ``sock`` (its timeout as the hang guard)."""
    head, body = read_until(sock)
    length = int(head.lower().split(b"\r\ncontent-length:")[1].split(b"\r\n")[0])
    if len(body) < length:
        body += read_until(sock, size=length - len(body))[0]
    return head + body


def raw_client(port, timeout=10):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


# -- messages through gunicorn fronts --------------------------------------------------

def test_text_and_binary_messages_of_several_mib(front):
    text = "grüße, " * (3 * 2 ** 20 // 8)  # ~3 MiB, not ASCII
    binary = os.urandom(5 * 2 ** 20)  # incompressible
    with ws(front.port) as client:
        for message in ("hi", "", text, b"\x00\xff", binary, text):
            client.send(message)
            assert client.recv(timeout=20) == message


def test_ping_is_answered_with_pong(front):
    with ws(front.port) as client:
        for payload in (b"", b"are you there?"):
            assert client.ping(payload).wait(10), "no pong for %r" % payload
        client.send("after the pings")
        assert client.recv(timeout=10) == "after the pings"


def test_subprotocol_and_permessage_deflate_are_negotiated_end_to_end(front):
    with ws(front.port, "/headers", subprotocols=["chat.v1", SUBPROTOCOL]) as client:
        assert client.subprotocol == SUBPROTOCOL
        assert [ext.name for ext in client.protocol.extensions] == ["permessage-deflate"]
        received = {name.lower(): value for name, value in json.loads(
            client.recv(timeout=10))}
        for name in ("Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions",
                     "Sec-WebSocket-Version", "Sec-WebSocket-Key"):
            assert received[name.lower()] == client.request.headers[name], name
        compressible = "abc" * 2 ** 20  # compressed frames (RSV1 set) pass as they are
        client.send(compressible)
        assert client.recv(timeout=10) == compressible


def test_client_close_code_and_reason_reach_the_backend(front, backend):
    sid = session()
    with ws(front.port, "/echo?id=" + sid) as client:
        client.send("x")
        client.recv(timeout=10)
        client.close(4001, "the client says goodbye")
        assert (client.close_code, client.close_reason) == (4001, "the client says goodbye")
    assert closed_by_client(backend, sid) == [4001, "the client says goodbye"]


def test_backend_close_code_and_reason_reach_the_client(front):
    with ws(front.port, "/close/4002") as client, pytest.raises(ConnectionClosed) as closed:
        client.recv(timeout=10)
    assert closed.value.rcvd.code == 4002
    assert closed.value.rcvd.reason == "backend closes with 4002"


def test_backend_refusing_the_upgrade_is_answered_as_it_is(front):
    with pytest.raises(InvalidStatus) as refused:
        ws(front.port, "/refuse")
    assert refused.value.response.status_code == 403
    assert refused.value.response.body == b"refused by the backend\n"


def test_backend_killed_mid_session_closes_the_client_promptly(front, tmp_path):
    with ws_backend(front.victim_port, tmp_path / "victim.log") as victim, \
            ws(front.port, "/victim/echo") as client:
        client.send("before")
        assert client.recv(timeout=10) == "before"
        victim.process.proc.kill()
        victim.process.proc.wait(10)
        with pytest.raises(ConnectionClosed):  # not TimeoutError: the hang guard
            client.recv(timeout=10)
    with pytest.raises(InvalidStatus) as refused:  # a new session: the backend is down
        ws(front.port, "/victim/echo")
    assert refused.value.response.status_code == 502
    assert request(front.port, "/plain").body == b"plain\n"


def test_the_worker_serves_plain_requests_during_and_after_tunnels(front):
    workers = front.ready_workers()
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(ws(front.port)) for _ in range(3)]
        for i, client in enumerate(clients):
            client.send("session %d" % i)
        answer = request(front.port, "/plain")
        assert (answer.status, answer.body) == (200, b"plain\n")
        for i, client in enumerate(clients):
            assert client.recv(timeout=10) == "session %d" % i
    answer = request(front.port, "/plain")
    assert (answer.status, answer.body) == (200, b"plain\n")
    assert front.ready_workers() == workers  # the same worker: none was restarted


# -- the signed case: Flask-Sock behind the middleware -------------------------------------

def test_signed_upgrade_reaches_flask_sock_with_the_rebuilt_environ(front, signed):
    sid = session()
    sock = socket.create_connection(("127.0.0.1", front.port), timeout=10,
                                    source_address=("127.0.0.2", 0))
    with connect("ws://www.example.com/signed/ws?id=" + sid, sock=sock, max_size=None,
                 proxy=None, open_timeout=10, close_timeout=5, ping_interval=None) as client:
        environ = json.loads(client.recv(timeout=10))
        for message in ("one", b"two", "three" * 10000):
            client.send(message)
            assert client.recv(timeout=10) == message
    assert environ["REMOTE_ADDR"] == "127.0.0.2"  # the original client, not the front
    assert environ["HTTP_HOST"] == "www.example.com"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("www.example.com", "80")
    assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/signed/ws", "id=" + sid)
    assert environ["wsgiproxy.key_id"]  # the signature was checked
    assert (signed.marks / sid).exists()


def capture_signed_upgrade(secret_file, path):
    """The bytes a signing WSGIProxyApp sends for an upgrade request to ``path``, caught by a
    RawServer (which refuses it: no tunnel)."""
    def refuse(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    with RawServer(refuse) as catcher:
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % catcher.port, secret_file=secret_file)
        with werkzeug_front(proxy) as port, raw_client(port) as sock:
            sock.sendall(upgrade_request(path, host="www.example.com"))
            assert read_to_eof(sock).startswith(b"HTTP/1.1 400 ")
        proxy.close()
    head, body = catcher.requests[0]
    assert not body
    return head + b"\r\n\r\n"


def test_upgrade_with_a_bad_or_missing_signature_is_refused_before_the_handshake(signed):
    sid = session()
    genuine = capture_signed_upgrade(signed.secret, "/signed/ws?id=" + sid)
    assert b"\r\nX-WSGIProxy-Signature: " in genuine
    tampered = genuine.replace(b"\r\nX-Forwarded-For: 127.0.0.1\r\n",
                               b"\r\nX-Forwarded-For: 10.9.9.9\r\n")
    unsigned = b"".join(line + b"\r\n" for line in genuine.split(b"\r\n")[:-2]
                        if not line.startswith(b"X-WSGIProxy-Signature:")) + b"\r\n"
    assert tampered != genuine and unsigned != genuine
    for refused in (tampered, unsigned):
        with raw_client(signed.port) as sock:
            sock.sendall(refused.replace(b"\r\n\r\n", b"\r\nAccept: application/json\r\n\r\n"))
            answer = read_answer(sock)
        assert json_error(answer, 403)
        assert not (signed.marks / sid).exists()  # the Flask-Sock handler never ran
    with raw_client(signed.port) as sock:  # the same bytes, signed as sent: accepted
        sock.sendall(genuine)
        head, _ = read_until(sock)
    assert head.startswith(b"HTTP/1.1 101 ")
    wait_until((signed.marks / sid).exists, 10, "the Flask-Sock handler to run")


# -- exact bytes, with a raw backend -----------------------------------------------------

SWITCHED = (b"HTTP/1.1 101 Switching Protocols (as I like it)\r\nupgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n"
            b"Sec-WebSocket-Protocol: chat.v2\r\nX-Twice: 1\r\nX-Twice: 2\r\n"
            b"x-odd-Case:   spaced\tout  \r\nServer: raw\r\n\r\n")
EARLY = b"\x81\x05hello"  # a text frame the backend sends with its 101, in one packet


def switching(conn, then=None):
    """A RawServer handler: read the upgrade request, answer :data:`SWITCHED` and
    :data:`EARLY` in one send, then ``then(conn)`` (default: echo until the end)."""
    conn.read_request()
    conn.send(SWITCHED + EARLY)
    if then is not None:
        then(conn)
        return
    while True:
        data = conn.buf or conn.sock.recv(65536)
        conn.buf = b""
        if not data:
            return
        conn.send(data)


def test_handshake_passes_byte_for_byte_both_ways(front, raw):
    raw.handler = switching
    offered = (b"Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n"
               b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits,"
               b" x-webkit-deflate-frame\r\n")
    with raw_client(front.port) as sock:
        sock.sendall(upgrade_request("/raw/chat?room=1", headers=offered))
        head, early = read_until(sock, size=len(SWITCHED) + len(EARLY))
        assert head + early == SWITCHED + EARLY  # the 101 as sent, then its first bytes
        sock.sendall(b"\x82\x03abc")
        assert read_until(sock, size=5)[0] == b"\x82\x03abc"
    (head, body), = raw.requests
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET /raw/chat?room=1 HTTP/1.1"
    names = [line.split(b":")[0].lower() for line in lines[1:]]
    sent = upgrade_request("/", headers=offered).split(b"\r\n")
    for name in (b"Sec-WebSocket-Key", b"Sec-WebSocket-Version", b"Sec-WebSocket-Protocol",
                 b"Sec-WebSocket-Extensions"):
        assert names.count(name.lower()) == 1, name
        assert [line for line in sent if line.startswith(name + b":")] == \
            [line for line in lines if line.lower().startswith(name.lower() + b":")]
    assert names.count(b"connection") == names.count(b"upgrade") == 1
    assert b"Connection: Upgrade" in lines and b"Upgrade: websocket" in lines
    assert b"X-Forwarded-For: 127.0.0.1" in lines
    assert b"X-Forwarded-Server: front.example:8080" in lines
    assert b"X-Forwarded-Scheme: http" in lines
    assert b"X-WSGIProxy-Version: " + PROTOCOL_VERSION.encode() in lines
    assert body == b""


def test_http10_upgrade_is_an_ordinary_request(front, raw):
    with raw_client(front.port) as sock:
        sock.sendall(b"GET /raw/old HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\n")
        answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.0 200 ") and answer.endswith(b"\r\n\r\nok")
    (head, _), = raw.requests
    assert b"upgrade" not in head.lower()


@pytest.mark.parametrize("value", ["websocket/", "web socket", "[websocket]", "a/b/c"])
def test_malformed_upgrade_header_is_a_400_and_nothing_is_sent(front, raw, value):
    with raw_client(front.port) as sock:
        sock.sendall(b"GET /raw/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: %s\r\n"
                     b"Accept: application/json\r\n\r\n" % value.encode())
        head, _ = read_until(sock)
    assert head.startswith(b"HTTP/1.1 400 ")
    assert raw.connections == 0


# -- closing: either side's end reaches the other ----------------------------------------

def test_backend_closing_its_connection_closes_the_client(front, raw):
    raw.handler = lambda conn: switching(conn, then=lambda c: c.send(b"last words"))
    with raw_client(front.port, timeout=5) as sock:  # 5 s: the hang guard
        sock.sendall(upgrade_request("/raw/x"))
        head, rest = read_until(sock)
        assert head == SWITCHED
        assert rest + read_to_eof(sock) == EARLY + b"last words"


def test_client_closing_its_connection_closes_the_backend(front, raw):
    ended = threading.Event()

    def wait_for_the_end(conn):
        conn.sock.settimeout(5)  # the hang guard
        read_to_eof(conn.sock)
        ended.set()
    raw.handler = lambda conn: switching(conn, then=wait_for_the_end)
    with raw_client(front.port) as sock:
        sock.sendall(upgrade_request("/raw/x"))
        read_until(sock, size=len(SWITCHED) + len(EARLY))
    assert ended.wait(10), raw.errors
    assert not raw.errors


def test_client_half_close_lets_the_backend_finish(front, raw):
    def answer_at_the_end(conn):
        data = conn.buf + read_to_eof(conn.sock)
        conn.send(b"you said: " + data)
    raw.handler = lambda conn: switching(conn, then=answer_at_the_end)
    with raw_client(front.port) as sock:
        sock.sendall(upgrade_request("/raw/x"))
        read_until(sock, size=len(SWITCHED) + len(EARLY))
        sock.sendall(b"bye")
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b"you said: bye"


# -- timeouts ------------------------------------------------------------------------------

def test_idle_tunnel_is_closed_on_both_sides_and_a_busy_one_is_not(front, backend):
    sid = session()
    with ws(front.port, "/idle/echo?id=" + sid) as idle, ws(front.port, "/idle/echo") as busy:
        idle.send("once")
        assert idle.recv(timeout=10) == "once"
        started = time.monotonic()
        while time.monotonic() - started < 2.5:  # past websocket_idle_timeout = 1, with traffic
            busy.send("tick")
            assert busy.recv(timeout=10) == "tick"
            time.sleep(0.3)
        with pytest.raises(ConnectionClosed):
            idle.recv(timeout=10)
    assert closed_by_client(backend, sid) is None  # no close frame: the proxy cut both sides


def test_read_timeout_does_not_apply_to_a_tunnel(front):
    with ws(front.port, "/slow/echo") as client:  # read_timeout = 1
        client.send("first")
        assert client.recv(timeout=10) == "first"
        time.sleep(2.5)  # the scenario itself: a quiet tunnel, longer than read_timeout
        client.send("after a quiet while")
        assert client.recv(timeout=10) == "after a quiet while"


# -- other proxies and fronts ----------------------------------------------------------------

def test_proxy_exact_request_tunnels(front, backend):
    sock = raw_client(front.port)
    # proxy_exact_request sends the request where its Host says: the backend.
    with connect("ws://127.0.0.1:%d/exact/echo" % backend.port, sock=sock, proxy=None,
                 subprotocols=["chat.v1", SUBPROTOCOL], max_size=None, open_timeout=10,
                 close_timeout=5, ping_interval=None) as client:
        assert client.subprotocol == SUBPROTOCOL
        client.send(b"\x01" * 2 ** 20)
        assert client.recv(timeout=10) == b"\x01" * 2 ** 20


@pytest.mark.parametrize("worker_class", [
    "gthread",
    pytest.param("gevent", marks=pytest.mark.xfail(strict=True, reason=(
        "spawn under gunicorn -k gevent: the first request (a plain GET too) blocks the "
        "whole worker in wsgiproxy/spawn/lifeline.py _Tether.spawn, whose f.read() of the "
        "errors pipe is not cooperative while gevent's Popen needs the hub to finish "
        "starting the child: a deadlock until gunicorn's WORKER TIMEOUT"))),
])
def test_spawn_tunnels(tmp_path, worker_class):
    env = {"WSFRONT_ROOT": ROOT}
    # --timeout 5: a worker that blocks is killed soon, so the client's wait ends.
    with gunicorn("tests.wsbackend:spawn_front()", tmp_path, "spawn", worker_class,
                  "--timeout", "5", env=env) as spawn, \
            ws(spawn.port, "/echo", subprotocols=[SUBPROTOCOL]) as client:
        assert client.subprotocol == SUBPROTOCOL
        client.send("through a spawned backend")
        assert client.recv(timeout=10) == "through a spawned backend"


def test_werkzeug_development_server_as_front(backend):
    sid = session()
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % backend.port)
    with werkzeug_front(proxy) as port:
        with ws(port, "/echo?id=" + sid, subprotocols=[SUBPROTOCOL]) as client:
            assert client.subprotocol == SUBPROTOCOL
            client.send(b"\x00" * 2 ** 20)
            assert client.recv(timeout=10) == b"\x00" * 2 ** 20
            client.close(4003, "from werkzeug's side")
        assert closed_by_client(backend, sid) == [4003, "from werkzeug's side"]
        wait_until(lambda: proxy.tunnels.open_count == 0, 10, "the tunnel to end")
    proxy.close()


def test_werkzeug_logs_no_error_after_a_tunnel(backend, caplog):
    def handlers():  # Werkzeug's threads, one per request
        return {t for t in threading.enumerate() if "process_request_thread" in t.name}

    proxy = WSGIProxyApp("http://127.0.0.1:%d" % backend.port)
    with werkzeug_front(proxy) as port:
        before = handlers()
        with ws(port) as client:
            client.send("x")
            client.recv(timeout=10)
        wait_until(lambda: not handlers() - before, 10, "Werkzeug to finish the request")
    proxy.close()
    problems = [r.getMessage() for r in caplog.records
                if r.name == "werkzeug" and (r.levelname == "ERROR" or '" 500 ' in r.getMessage())]
    assert problems == []


def test_eventlet_wsgi_as_front(backend, tmp_path):
    port = free_port()
    with Served([sys.executable, "-m", "tests.wsbackend", "--eventlet-front", str(port),
                 str(backend.port)], port, tmp_path / "eventlet.log", env=ENV, cwd=ROOT):
        sid = session()
        with ws(port, "/echo?id=" + sid, subprotocols=[SUBPROTOCOL]) as client:
            assert client.subprotocol == SUBPROTOCOL
            client.send("through eventlet")
            assert client.recv(timeout=10) == "through eventlet"
            client.close(4004, "from eventlet's side")
        assert closed_by_client(backend, sid) == [4004, "from eventlet's side"]
        assert request(port, "/plain").body == b"plain\n"  # the server goes on serving


# -- refusals and limits (a proxy in this process: its pool and counters are visible) -----------

REFUSALS = {
    "400": b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\n"
           b"no such channel",
    "426 chunked": b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket/13\r\n"
                   b"Connection: Upgrade\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"7\r\nupgrade\r\n7\r\n first!\r\n0\r\n\r\n",
    "200, upgrade ignored": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain",
}


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_refused_upgrade_is_a_normal_response_and_its_connection_is_not_pooled(raw, refusal):
    ended = threading.Event()
    answers = scripted(REFUSALS[refusal])

    def handler(conn):  # keeps the connection open for more requests, until the proxy closes it
        answers(conn)
        ended.set()
    raw.handler = handler
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % raw.port)
    with werkzeug_front(proxy) as port:
        answer = request(port, "/chat", headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Key": KEY,
            "Sec-WebSocket-Version": "13"})
        expected = REFUSALS[refusal].split(b"\r\n")[0].split(b" ")[1]
        assert answer.status == int(expected)
        assert answer.body == {"400": b"no such channel", "426 chunked": b"upgrade first!",
                               "200, upgrade ignored": b"plain"}[refusal]
        assert proxy.transport.idle_connections() == 0
        assert ended.wait(10), "the refused connection was left open"
        assert proxy.tunnels.open_count == 0
        assert request(port, "/next").body == b"ok"  # on a new connection
    assert raw.connections == 2
    proxy.close()


def upgrade_through(port, path="/chat", accept=None):
    return request(port, path, headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13"}, accept=accept, timeout=10)


def test_waitress_answers_an_upgrade_with_501_naming_gunicorn_and_sends_nothing(raw):
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % raw.port)
    with WaitressServer(proxy) as front:
        answer = upgrade_through(front.port)
        assert answer.status == 501
        assert b"gunicorn" in answer.body
        error = json_error(upgrade_through(front.port, accept=JSON["Accept"]), 501)
        assert "gunicorn" in error["message"]
        with pytest.raises(InvalidStatus) as refused:
            ws(front.port)
        assert refused.value.response.status_code == 501
        assert raw.connections == 0
        # Upgrade: h2c is optional: it is dropped and the request goes on in HTTP/1.1.
        answer = request(front.port, "/h2", headers={
            "Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
            "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"}, timeout=10)
        assert (answer.status, answer.body) == (200, b"ok")
    (head, _), = raw.requests
    assert b"upgrade" not in head.lower() and b"http2-settings" not in head.lower()
    proxy.close()


def test_max_tunnels_zero_turns_tunnels_off(raw):
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % raw.port, max_tunnels=0)
    with werkzeug_front(proxy) as port:
        error = json_error(upgrade_through(port, accept=JSON["Accept"]), 501)
        assert "max_tunnels" in error["message"]
    assert raw.connections == 0


def test_max_tunnels_one_refuses_a_second_until_the_first_closes(backend):
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % backend.port, max_tunnels=1)
    with werkzeug_front(proxy) as port:
        with ws(port) as first:
            with pytest.raises(InvalidStatus) as refused:
                ws(port)
            assert refused.value.response.status_code == 503
            assert int(refused.value.response.headers["Retry-After"]) > 0
            first.send("still here")
            assert first.recv(timeout=10) == "still here"
        wait_until(lambda: proxy.tunnels.open_count == 0, 10, "the first tunnel to end")
        with ws(port) as third:
            third.send("my turn")
            assert third.recv(timeout=10) == "my turn"
    proxy.close()


def test_tunnel_connections_never_reach_the_pool(backend):
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % backend.port)
    with werkzeug_front(proxy) as port:
        with contextlib.ExitStack() as stack:
            for _ in range(3):
                stack.enter_context(ws(port))
            assert proxy.tunnels.open_count == 3
        wait_until(lambda: proxy.tunnels.open_count == 0, 10, "the tunnels to end")
    assert proxy.transport.idle_connections() == 0
    proxy.close()
