"""A backend connection and what moves bytes over it, for the transports.

The socket with its read buffer (:class:`Connection`), the probe run before
an idle connection is reused (:func:`looks_alive`), the response-body reader
(:class:`BodyReader`, one loop per framing of :func:`wsgiproxy.http11.body_framing`)
and the request-body pump (:func:`read_pieces`, :func:`send_stream`).  The
framing rules themselves are in :mod:`wsgiproxy.http11`; pooling and
connecting are the transports' own.

This is the hot path: the loops below were measured, and take no extra
function layer per chunk.
"""

from __future__ import annotations

import _socket
import logging
import select
import socket
import ssl
import struct
import sys
import types
from collections.abc import Iterator
from typing import Any, BinaryIO, Protocol

from .errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadBackendResponse,
    RequestBodyError,
)
from .http11 import (
    CHUNKED,
    CONTENT_LENGTH,
    MAX_CHUNK_LINE,
    MAX_HEAD,
    is_chunk_size,
    trailer_line_ok,
)

__all__ = [
    "BODY_RECV",
    "BUFSIZE",
    "TIMEOUT_ERRORS",
    "UPLOAD_CHUNK",
    "BodyReader",
    "Connection",
    "Stale",
    "looks_alive",
    "read_pieces",
    "send_stream",
    "set_read_timeout",
]

log = logging.getLogger("wsgiproxy.transport")

BUFSIZE = 65536            # one recv() for a header block or a chunk
BODY_RECV = 262144         # one recv() while streaming a body: fewer, larger pieces
UPLOAD_CHUNK = 4194304     # one read() of a streamed request body: WSGI servers'
                           # inputs (gunicorn's) cost per call, so read big pieces


def _stdlib_poll() -> Any:
    """``select.poll`` as the standard library made it; None where there is none (Windows).

    gevent's monkey-patching replaces it with a cooperative poll (a greenlet
    switch and a watcher per call: twenty times slower for the zero timeout
    of :func:`looks_alive`), and eventlet's removes it.  A zero-timeout poll
    never blocks, so the real one is right under both; each library keeps
    the original when it patched ``select`` before we were imported.
    """
    poll = getattr(select, "poll", None)
    if isinstance(poll, types.BuiltinFunctionType):  # not patched
        return poll
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("select"):
        return gevent_monkey.get_original("select", "poll")
    eventlet_patcher = sys.modules.get("eventlet.patcher")
    if eventlet_patcher is not None:
        return getattr(eventlet_patcher.original("select"), "poll", None)
    return poll


_POLL = _stdlib_poll()

# Plain-HTTP sockets are blocking, with the read timeout set in the kernel
# (SO_RCVTIMEO/SO_SNDTIMEO): Python's own socket timeouts poll() before every
# recv() and send(), one system call more each time.  A kernel timeout shows
# as EAGAIN (BlockingIOError).  Elsewhere, and for TLS, Python's timeouts.
# Only a socket of the standard library's own type blocks in the kernel:
# gevent's and eventlet's sockets (what monkey-patching makes of
# socket.socket) keep their descriptor non-blocking and wait in their hub,
# where a kernel timeout never fires; they get Python-level timeouts, which
# they implement in the hub (and raise as TimeoutError).
_KERNEL_TIMEOUTS = sys.platform.startswith("linux")
TIMEOUT_ERRORS = (socket.timeout, BlockingIOError)


def set_read_timeout(sock: socket.socket, seconds: float) -> None:
    """Make every later ``recv()``/``send()`` on a plain socket wait at most ``seconds``.

    Called once per connection.  A kernel timeout on the standard library's
    blocking sockets (Linux); ``sock.settimeout(seconds)`` anywhere else,
    gevent's and eventlet's cooperative sockets included.
    """
    if not (_KERNEL_TIMEOUTS and isinstance(sock, _socket.socket)):
        sock.settimeout(seconds)
        return
    sock.settimeout(None)
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class Connection:
    """One backend socket, the bytes received past the current response, and its idle state."""

    __slots__ = ("buf", "idle_since", "key", "on_close", "poller", "sock")

    def __init__(self, sock: Any, key: tuple[str, str, int],
                 on_close: Any = None) -> None:
        self.sock = sock
        self.key = key
        self.buf = b""
        self.idle_since = 0.0
        self.poller: Any = None
        #: Called with ``key`` when the connection is closed (a transport's count of open ones).
        self.on_close = on_close

    def close(self) -> None:
        self.poller = None
        on_close, self.on_close = self.on_close, None
        try:
            self.sock.close()
        except OSError:
            pass
        if on_close is not None:
            on_close(self.key)


class Probed(Protocol):
    """What :func:`looks_alive` needs: the socket, and a place to keep a poll object."""

    sock: Any
    poller: Any


def looks_alive(conn: Probed) -> bool:
    """An idle keep-alive socket must have nothing to read: data or EOF means stale.

    Checked before every reuse, however short the idle time: stray bytes a
    backend sent after a complete response (a late packet) would otherwise
    be read as the next request's response.  One poll() per request, on a
    poll object kept in ``conn.poller`` (cheaper than select(), and no limit
    on descriptor numbers); whoever replaces ``conn.sock`` resets it to ``None``.
    The standard library's poll, also under gevent and eventlet (see
    :func:`_stdlib_poll`).
    """
    sock = conn.sock
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    try:
        if _POLL is None:  # Windows
            return not select.select((sock,), (), (), 0)[0]
        poller = conn.poller
        if poller is None:
            poller = conn.poller = _POLL()
            poller.register(sock, select.POLLIN | select.POLLPRI)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


class Stale(Exception):
    """A reused connection failed before any byte of the response: safe to retry."""


class BodyReader:
    """Reads one response body from a connection and decides its fate.

    ``mode`` and ``remaining`` come from :func:`wsgiproxy.http11.body_framing`;
    at the end of the body the connection goes back through
    ``transport._release(conn)`` when ``keep_alive`` and no stray byte followed.
    """

    __slots__ = ("backend", "conn", "keep_alive", "mode", "remaining", "transport")

    def __init__(self, transport: Any, conn: Connection, mode: int, remaining: int | None,
                 keep_alive: bool, backend: str) -> None:
        self.transport = transport
        self.conn: Connection | None = conn
        self.mode = mode
        self.remaining = remaining
        self.keep_alive = keep_alive
        self.backend = backend

    def chunks(self) -> Iterator[bytes]:
        """The body, as pieces of bytes as they arrive."""
        try:
            if self.mode == CONTENT_LENGTH:
                yield from self._length_chunks()
            elif self.mode == CHUNKED:
                yield from self._chunked_chunks()
            else:
                yield from self._close_chunks()
        except BackendError:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard the connection unless the response was read completely."""
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.close()

    def _finish(self) -> None:
        """The body was read to its end: pool the connection if that is safe."""
        conn = self.conn
        self.conn = None
        if conn is None:
            return
        if self.keep_alive and not conn.buf:
            self.transport._release(conn)
        else:
            if conn.buf:
                log.warning("%s sent %d bytes after the end of a response; "
                            "connection discarded", self.backend, len(conn.buf))
            conn.close()

    def _recv(self, size: int) -> bytes:
        conn = self.conn
        if conn is None:
            raise BackendUnavailable("response was closed", self.backend)
        try:
            return conn.sock.recv(size)
        except TIMEOUT_ERRORS:
            raise BackendTimeout("timed out reading the response body", self.backend) from None
        except OSError as exc:
            raise BackendUnavailable("connection lost reading the response body: %s"
                                     % (exc.strerror or exc), self.backend) from None

    # The three loops below use ``conn`` unchecked: only abort() clears it,
    # and the next _recv() then raises.

    def _length_chunks(self) -> Iterator[bytes]:
        remaining: int = self.remaining  # type: ignore[assignment]
        conn: Any = self.conn
        buf, conn.buf = conn.buf, b""
        if buf:
            if len(buf) > remaining:
                conn.buf = buf[remaining:]  # excess: never reaches another request
                buf = buf[:remaining]
            remaining -= len(buf)
            if not remaining:
                self._finish()
            yield buf
        while remaining:
            # A conditional expression is cheaper than min() here.
            data = self._recv(BODY_RECV if remaining > BODY_RECV else remaining)  # noqa: FURB136
            if not data:
                raise BadBackendResponse(
                    "backend closed the connection %d bytes short of its Content-Length"
                    % remaining, self.backend)
            remaining -= len(data)
            if not remaining:
                self._finish()
            yield data

    def _close_chunks(self) -> Iterator[bytes]:
        conn: Any = self.conn
        buf, conn.buf = conn.buf, b""
        if buf:
            yield buf
        while True:
            data = self._recv(BODY_RECV)
            if not data:
                break
            yield data
        self._finish()

    def _fill(self, what: str) -> None:
        data = self._recv(BUFSIZE)
        if not data:
            raise BadBackendResponse("backend closed the connection in the middle of "
                                     + what, self.backend)
        self.conn.buf += data  # type: ignore[union-attr]

    def _line(self, what: str, limit: int) -> bytes:
        conn: Any = self.conn
        while True:
            end = conn.buf.find(b"\r\n")
            if end >= 0:
                line = conn.buf[:end]
                conn.buf = conn.buf[end + 2:]
                return line
            if len(conn.buf) > limit:
                raise BadBackendResponse("%s longer than %d bytes" % (what, limit), self.backend)
            self._fill(what)

    def _chunked_chunks(self) -> Iterator[bytes]:
        conn: Any = self.conn
        while True:
            line = self._line("a chunk-size line", MAX_CHUNK_LINE)
            size_text = line.split(b";", 1)[0].strip(b" \t")
            if not is_chunk_size(size_text) or b"\n" in line or b"\r" in line:
                raise BadBackendResponse("invalid chunk-size line %r" % line[:80], self.backend)
            size = int(size_text, 16)
            if size == 0:
                break
            while size:
                if not conn.buf:
                    self._fill("a chunk")
                buf = conn.buf
                if len(buf) > size:
                    piece, conn.buf = buf[:size], buf[size:]
                else:
                    piece, conn.buf = buf, b""
                size -= len(piece)
                yield piece
            while len(conn.buf) < 2:
                self._fill("a chunk")
            if conn.buf[:2] != b"\r\n":
                raise BadBackendResponse("chunk data not followed by CRLF", self.backend)
            conn.buf = conn.buf[2:]
        # Trailer section: read and drop (WSGI cannot send trailers).
        total = 0
        while True:
            line = self._line("the trailer section", MAX_HEAD)
            if not line:
                break
            total += len(line) + 2
            if total > MAX_HEAD or not trailer_line_ok(line):
                raise BadBackendResponse("invalid trailer section", self.backend)
        self._finish()


def read_pieces(body: BinaryIO, length: int | None, size: int) -> Iterator[bytes]:
    """A file-like request body in pieces of at most ``size`` bytes.

    ``length`` bytes, or everything up to the end when it is ``None``.

    :raises RequestBodyError: when reading fails, the body ends early, or a
        ``read()`` returns more than the ``length`` bytes still due (they
        would be written past the ``Content-Length``).
    """
    read = body.read
    if length is None:
        while True:
            try:
                data = read(size)
            except RequestBodyError:
                raise
            except Exception as exc:
                raise RequestBodyError("reading the request body failed: %s" % exc) from exc
            if not data:
                return
            yield data
    remaining = length
    while remaining:
        try:
            data = read(size if remaining > size else remaining)  # noqa: FURB136
        except RequestBodyError:
            raise
        except Exception as exc:
            raise RequestBodyError("reading the request body failed: %s" % exc) from exc
        if not data:
            raise RequestBodyError("request body ended after %d of %d bytes"
                                   % (length - remaining, length))
        remaining -= len(data)
        if remaining < 0:  # read() gave more than asked: never past the Content-Length
            raise RequestBodyError("the request body's read() returned %d bytes more than "
                                   "its %d bytes of Content-Length" % (-remaining, length))
        yield data


def send_stream(sock: socket.socket, body: BinaryIO, length: int | None) -> None:
    """Copy a file-like request body to the socket in bounded memory; chunked without ``length``."""
    if length is None:
        for data in read_pieces(body, None, UPLOAD_CHUNK):
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
        sock.sendall(b"0\r\n\r\n")
        return
    for data in read_pieces(body, length, UPLOAD_CHUNK):
        sock.sendall(data)
