"""A byte tunnel: a backend connection switched to another protocol (``101``), and the relay.

After a backend answers an ``Upgrade`` request (a WebSocket handshake) with
``101 Switching Protocols``, the connection carries another protocol.  The
proxy does not parse it: :meth:`Tunnel.relay` copies bytes both ways
between the client's socket and the backend's until either side closes, so
text and binary frames, ping/pong and compression extensions all pass as
they are.

Under threads (gunicorn's gthread, Werkzeug) one relay is one loop in the
request's thread over both sockets (``poll``, or ``select`` where there is
no ``poll``): no thread per direction.  Under gevent or eventlet
(monkey-patched sockets) each direction is a greenlet of its own, blocked
in a cooperative ``recv``: gevent's cooperative ``poll`` starts a watcher
per socket on every call, which at thousands of tunnels per worker costs
three to four times the CPU (bench/longlived.py).

This layer knows sockets only; which WSGI server hands over the client's
socket, and how a request with a tunnel ends, is :mod:`wsgiproxy.upgrade`'s.
"""

from __future__ import annotations

import _socket
import logging
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from .connection import _POLL, BODY_RECV, Connection

__all__ = ["CLOSE_LINGER", "Tunnel", "relay_bytes"]

log = logging.getLogger("wsgiproxy.transport")

#: Seconds a tunnel waits, after one side closed, for the other to close too
#: (its last bytes still pass) before both are closed.
CLOSE_LINGER = 1.0

_NO_KERNEL_TIMEOUT = struct.pack("ll", 0, 0)


class Tunnel:
    """A backend connection that answered ``101``: the answer's head as received, and the socket.

    Iterating yields nothing (it stands as the WSGI body of a switched
    response until the relay runs); ``close()`` closes the backend side.

    :param conn: the backend connection, with any bytes received past the head in ``conn.buf``.
    :param head: the ``101`` response's head, as the backend sent it (ends with an empty line).
    :param backend: the backend's name, for the log.
    """

    __slots__ = ("backend", "conn", "head")

    def __init__(self, conn: Connection, head: bytes, backend: str) -> None:
        self.conn: Connection | None = conn
        self.head = head
        self.backend = backend

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def relay(self, client: Any, idle_timeout: float | None = None,
              linger: float = CLOSE_LINGER) -> tuple[int, int]:
        """Send the ``101`` head to ``client``, then copy bytes both ways until the tunnel ends.

        Returns the bytes relayed ``(client to backend, backend to client)``,
        the head not counted.  The backend side is closed at the end; the
        client's socket is shut down (its owner, the WSGI server, closes it).
        """
        conn = self.conn
        if conn is None:
            raise ValueError("the tunnel was closed")
        first, conn.buf = conn.buf, b""
        try:
            _prepare(client, idle_timeout)
            _prepare(conn.sock, idle_timeout)
            client.sendall(self.head + first)
            up, down = relay_bytes(client, conn.sock, idle_timeout, linger)
            return up, down + len(first)
        except OSError as exc:  # the client went away before the head was sent
            log.debug("tunnel to %s ended: %s", self.backend, exc)
            return 0, 0
        finally:
            self.close()
            _shutdown(client, socket.SHUT_RDWR)


def _prepare(sock: Any, idle_timeout: float | None) -> None:
    """Blocking I/O that waits at most ``idle_timeout`` (``None``: for ever), read timeouts off.

    A backend connection carries the transport's ``read_timeout`` (in the
    kernel, on Linux): a tunnel is not subject to it.
    """
    if isinstance(sock, _socket.socket):  # a kernel socket (not gevent's): may carry them
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _NO_KERNEL_TIMEOUT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _NO_KERNEL_TIMEOUT)
    sock.settimeout(idle_timeout)


def _shutdown(sock: Any, how: int) -> None:
    try:
        sock.shutdown(how)
    except (OSError, ValueError):  # already closed, or never connected
        pass


def _recv(sock: Any) -> bytes | None:
    """What ``sock`` has for us now (it was reported readable): ``b""`` at its end,
    ``None`` when a TLS record is still incomplete."""
    try:
        data = sock.recv(BODY_RECV)
    except ssl.SSLWantReadError:  # a TLS record still incomplete: nothing yet
        return None
    except OSError:  # reset, aborted, timed out: this side is gone
        return b""
    if data and isinstance(sock, ssl.SSLSocket):
        while sock.pending():  # decrypted bytes poll() cannot see
            data += sock.recv(BODY_RECV)
    return data


def relay_bytes(a: Any, b: Any, idle_timeout: float | None = None,
                linger: float = CLOSE_LINGER) -> tuple[int, int]:
    """Copy bytes between sockets ``a`` and ``b`` both ways until both ends are closed.

    When one side closes (end of stream or reset), the other gets a
    half-close (``SHUT_WR``) and ``linger`` seconds to close too, its last
    bytes still relayed; then the relay ends (at once when the other side is
    a TLS socket, which cannot be half-closed).  It also ends after
    ``idle_timeout`` seconds without a byte in either direction (``None``:
    no limit), and when a send fails or blocks that long.  Neither socket is
    closed here (under gevent and eventlet their timeout is set to
    ``idle_timeout``).  Returns the bytes moved ``(a to b, b to a)``.
    """
    if _cooperative():
        return _relay_in_greenlets(a, b, idle_timeout, linger)
    peer = {a.fileno(): (a, b), b.fileno(): (b, a)}
    moved = {a.fileno(): 0, b.fileno(): 0}
    wait = _Waiter(list(peer))
    timeout = idle_timeout
    while peer:
        ready = wait(timeout)
        if not ready:
            break  # idle too long, or the other side did not close within the linger
        for fd in ready:
            if fd not in peer:
                continue
            src, dst = peer[fd]
            data = _recv(src)
            if data is None:
                continue
            if data:
                try:
                    dst.sendall(data)
                except OSError:  # the other side is gone, or did not read for idle_timeout
                    peer.clear()
                    break
                moved[fd] += len(data)
                continue
            # src ended: pass the end on, and give the other side a moment to finish.
            del peer[fd]
            wait.forget(fd)
            if not peer or dst.fileno() not in peer or isinstance(dst, ssl.SSLSocket):
                # (A TLS socket cannot be half-closed: shutdown() drops its TLS
                # state, and what it received next would be read as plain bytes.)
                peer.clear()
                break
            _shutdown(dst, socket.SHUT_WR)
            timeout = linger if idle_timeout is None else min(linger, idle_timeout)
    return moved[a.fileno()], moved[b.fileno()]


def _cooperative() -> bool:
    """Whether gevent or eventlet made the sockets cooperative (monkey-patching)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("socket"):
        return True
    patcher = sys.modules.get("eventlet.patcher")
    return patcher is not None and bool(patcher.is_monkey_patched("socket"))


class _Direction:
    """One direction of a cooperative relay, in a greenlet of its own: ``src`` to ``dst``."""

    __slots__ = ("dst", "finished", "moved", "pair", "src")

    def __init__(self, pair: _Pair, src: Any, dst: Any) -> None:
        self.pair, self.src, self.dst, self.moved = pair, src, dst, 0
        self.finished = threading.Event()  # src has ended (or the relay was ended)

    def run(self) -> None:
        pair = self.pair
        try:
            self._copy()
        finally:
            self.finished.set()
        if not pair.ended:  # src ended: pass the end on, and let the other side finish
            if isinstance(self.dst, ssl.SSLSocket):  # cannot be half-closed (see relay_bytes)
                pair.end()
                return
            _shutdown(self.dst, socket.SHUT_WR)
            other = pair.down if self is pair.up else pair.up
            if not other.finished.wait(pair.linger):
                pair.end()

    def _copy(self) -> None:
        src, dst, pair = self.src, self.dst, self.pair
        while not pair.ended:
            try:
                data = src.recv(BODY_RECV)
            except TimeoutError:  # (idle_timeout on the socket) quiet this way...
                if pair.idle():  # ...and the other way too
                    pair.end()
                    return
                continue
            except OSError:
                return
            if not data:
                return
            try:
                dst.sendall(data)
            except OSError:  # the other side is gone, or did not read for idle_timeout
                pair.end()
                return
            self.moved += len(data)
            pair.last_active = time.monotonic()


class _Pair:
    """The two directions of a cooperative relay, the time of its last byte, and its end."""

    __slots__ = ("a", "b", "down", "ended", "idle_timeout", "last_active", "linger", "up")

    def __init__(self, a: Any, b: Any, idle_timeout: float | None, linger: float) -> None:
        self.a, self.b, self.idle_timeout = a, b, idle_timeout
        self.linger = linger if idle_timeout is None else min(linger, idle_timeout)
        self.ended = False
        self.last_active = time.monotonic()
        self.up, self.down = _Direction(self, a, b), _Direction(self, b, a)

    def idle(self) -> bool:
        return (self.idle_timeout is not None
                and time.monotonic() - self.last_active >= self.idle_timeout)

    def end(self) -> None:
        """Both directions stop: their blocked ``recv`` calls see the end of the stream."""
        self.ended = True
        _shutdown(self.a, socket.SHUT_RDWR)
        _shutdown(self.b, socket.SHUT_RDWR)


def _relay_in_greenlets(a: Any, b: Any, idle_timeout: float | None,
                        linger: float) -> tuple[int, int]:
    """:func:`relay_bytes` under gevent or eventlet: a greenlet per direction.

    ``threading.Thread`` is a greenlet once monkey-patched; the direction
    ``a`` to ``b`` runs in the caller's own greenlet.
    """
    a.settimeout(idle_timeout)  # how a quiet direction wakes up to check the other
    b.settimeout(idle_timeout)
    pair = _Pair(a, b, idle_timeout, linger)
    other = threading.Thread(target=pair.down.run, daemon=True, name="wsgiproxy tunnel")
    other.start()
    try:
        pair.up.run()
    finally:
        other.join(pair.linger)
        if other.is_alive():
            pair.end()
            other.join()
    return pair.up.moved, pair.down.moved


class _Waiter:
    """Waits until some of a few sockets are readable: the standard library's
    ``poll`` (the one the idle probe uses), ``select`` where there is none.

    Only the relay of threads waits here; under gevent and eventlet each
    direction has a greenlet (:func:`_relay_in_greenlets`).
    """

    __slots__ = ("fds", "poller")

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds
        self.poller = _POLL() if _POLL is not None else None
        if self.poller is not None:
            for fd in fds:
                self.poller.register(fd, select.POLLIN | select.POLLPRI)

    def forget(self, fd: int) -> None:
        self.fds.remove(fd)
        if self.poller is not None:
            self.poller.unregister(fd)

    def __call__(self, timeout: float | None) -> list[int]:
        if self.poller is not None:
            events = self.poller.poll(None if timeout is None else timeout * 1000)
            return [fd for fd, _ in events]
        return select.select(self.fds, (), (), timeout)[0]
