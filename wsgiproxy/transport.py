"""HTTP/1.1 transport: pooled keep-alive connections, streaming bodies, strict framing.

This layer knows sockets and HTTP.  It knows nothing about WSGI environs,
X-WSGIProxy headers or signing; the WSGI glue (:mod:`wsgiproxy.forwarding`)
hands it a method, a request target and a list of end-to-end headers, and gets
back a :class:`Response` whose body is an iterable of byte chunks.

Safety rules it enforces (see ``shared/design.md``, invariants 1-3 and 6):

* a connection goes back to the pool only after a complete response whose
  framing was unambiguous; anything else closes it;
* response bytes are handed on as they arrive (``recv`` returns whatever is
  there), so slow streams are not held back and memory stays bounded;
* hop-by-hop headers, and the headers named in ``Connection``, are dropped in
  both directions;
* no header containing CR, LF or NUL is ever written.

:class:`Transport` holds what every transport shares (options, TLS context,
reset after fork); the HTTP/1.1 rules are in :mod:`wsgiproxy.http11`, the
connection, its idle probe and the body loops in :mod:`wsgiproxy.connection`.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

from .connection import (
    BUFSIZE,
    TIMEOUT_ERRORS,
    UPLOAD_CHUNK,  # noqa: F401 (importable from here, as before)
    BodyReader,
    Connection,
    Stale,
    looks_alive,
    send_stream,
    set_read_timeout,
)
from .errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadBackendResponse,
    InvalidRequest,
    RequestBodyError,
    UpgradeNotSupported,
    check_number,
)
from .http11 import (
    BODY_METHODS,
    CONTENT_LENGTH,
    HOP_BY_HOP,
    IDEMPOTENT_METHODS,
    MAX_HEAD,
    MAX_INTERIM,
    NO_BODY,
    NON_NOMINATING_TOKENS,
    UNFORWARDED_REQUEST_HEADERS,
    body_framing,
    check_interim,
    connection_tokens,
    parse_response_head,
    request_head,
    with_upgrade,
)
from .tunnel import Tunnel

__all__ = [
    "BODY_METHODS",
    "HOP_BY_HOP",
    "IDEMPOTENT_METHODS",
    "NON_NOMINATING_TOKENS",
    "UNFORWARDED_REQUEST_HEADERS",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "BadBackendResponse",
    "HTTPTransport",
    "InvalidRequest",
    "RequestBodyError",
    "Response",
    "ResponseCheck",
    "SwitchedResponse",
    "Transport",
    "connection_tokens",
    "forget_connections_after_fork",
    "make_ssl_context",
    "make_transport",
    "parse_response_head",
    "request_head",
]

log = logging.getLogger("wsgiproxy.transport")

_BACKENDS_MAX = 1024  # backend spellings an HTTPTransport remembers (see _backend)

#: ``connect_timing.seconds``: how long this thread's (greenlet's, under gevent) latest
#: new connection took to open, TLS included.  Set only when one is opened (a pooled
#: connection costs nothing); the access log (:mod:`wsgiproxy.observe`) resets and reads it.
connect_timing = threading.local()

#: A request body as transports take it: none, bytes, or a file-like object with ``read(n)``.
Body = bytes | bytearray | BinaryIO | None
#: A check of a final response's status and headers, made before its connection can go
#: back to the pool: a reason to refuse it (a 502, the connection closed), or ``None``.
ResponseCheck = Callable[[int, list[tuple[str, str]]], "str | None"]


class Transport:
    """What every transport shares: its options, the TLS context, the reset after fork.

    ``request()`` takes the end-to-end request headers (it drops hop-by-hop
    ones and writes its own framing) and returns a :class:`Response`.  The
    body is ``None``, ``bytes``, or a file-like object with ``read(n)``; with
    ``body_length=None`` a file-like body is sent chunked.  See
    :class:`HTTPTransport` for the default.

    :param connect_timeout: seconds to wait for a TCP (and TLS) connection.
    :param read_timeout: seconds any single read or write may wait; a stalled
        backend gets a 504.
    :param pool_size: idle keep-alive connections kept (per backend for
        :class:`HTTPTransport`).
    :param idle_timeout: idle connections older than this are not reused
        (stay below the backend's keep-alive timeout where you know it).
    :param ca_certs: a CA bundle (PEM file) for verifying HTTPS backends;
        the system store is used when it is not given.
    :param verify: ``False`` turns certificate verification off.  Only for
        backends you reach over a network you trust.
    :param cert_file: a client certificate (PEM) for backends that ask for one.
    :param key_file: its private key, when it is not in ``cert_file``.
    :param ssl_context: a ready :class:`ssl.SSLContext`, instead of the four above.

    Options are typed (the deployment layer, :mod:`wsgiproxy.wsgiapp`,
    converts ``.ini`` strings).  A CA or certificate path is read here, so a
    wrong one fails now, not as a 502 on every request.
    """

    #: False for transports that buffer whole bodies (e.g. httplib2).
    streaming = True
    #: True for transports whose ``request()`` takes ``check`` (a :data:`ResponseCheck`).
    checks_responses = False

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 pool_size: int = 10, idle_timeout: float = 50.0, ca_certs: str | None = None,
                 verify: bool = True, cert_file: str | None = None, key_file: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.pool_size = int(pool_size)
        self.idle_timeout = float(idle_timeout)
        check_number("connect_timeout", self.connect_timeout, positive=True)
        check_number("read_timeout", self.read_timeout, positive=True)
        check_number("pool_size", self.pool_size)
        if not isinstance(verify, bool):  # "false" from an .ini would silently mean True
            raise TypeError("verify must be True or False, not %r" % (verify,))
        self._ssl_args = (ca_certs, verify, cert_file, key_file)
        self._ssl_context = ssl_context
        if ssl_context is None and (ca_certs or cert_file):
            self.ssl_context()  # a wrong path fails now, not as a 502 on every request
        self._reset_pool()
        forget_connections_after_fork(self)

    def request(self, scheme: str, host: str, port: int | str, method: str, target: str,
                headers: Sequence[tuple[str, str]], body: Body = None,
                body_length: int | None = None) -> Response:
        """Send one request to ``scheme://host:port`` and return its :class:`Response`."""
        raise NotImplementedError

    def open_tunnel(self, scheme: str, host: str, port: int | str, method: str, target: str,
                    headers: Sequence[tuple[str, str]], protocols: str, body: Body = None,
                    body_length: int | None = None) -> Response:
        """Send an ``Upgrade: protocols`` request on a connection of its own.

        A ``101`` answer is a :class:`SwitchedResponse` carrying the
        :class:`~wsgiproxy.tunnel.Tunnel`; any other answer is an ordinary
        response, and its connection is never pooled.

        :raises UpgradeNotSupported: (501) from transports that cannot tunnel.
        """
        raise UpgradeNotSupported("the %s transport cannot carry an Upgrade (WebSocket) "
                                  "request; use the default http transport"
                                  % type(self).__name__)

    def close(self) -> None:
        """Close idle connections; the transport stays usable."""

    def forget_connections(self) -> None:
        """In a forked child: drop (without closing) the connections of the parent."""
        self._reset_pool()

    def _reset_pool(self) -> None:
        """Start with empty pools: when made, and in a forked child (transports override this)."""

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for HTTPS backends, made on first use."""
        if self._ssl_context is None:
            self._ssl_context = make_ssl_context(*self._ssl_args)
        return self._ssl_context


class Response:
    """A backend response: ``status``, ``reason``, end-to-end ``headers``, and the body.

    Iterating yields the body in chunks as they arrive.  ``body`` is set when
    the whole body was already received with the headers (the connection is
    then back in the pool and iterating just yields it).  ``close()`` must be
    called (WSGI servers do) and discards a connection that was not read to
    the end.
    """

    __slots__ = ("_reader", "body", "headers", "reason", "status")

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]],
                 body: bytes | None = None, reader: BodyReader | None = None) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self._reader = reader

    @property
    def status_line(self) -> str:
        return "%d %s" % (self.status, self.reason)

    def __iter__(self) -> Iterator[bytes]:
        if self._reader is not None:
            return self._reader.chunks()
        return iter((self.body,) if self.body else ())

    def close(self) -> None:
        if self._reader is not None:
            self._reader.abort()


class SwitchedResponse(Response):
    """A ``101 Switching Protocols`` answer to an upgrade request, with its ``tunnel``."""

    __slots__ = ("tunnel",)

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]],
                 tunnel: Tunnel) -> None:
        super().__init__(status, reason, headers, b"")
        self.tunnel = tunnel

    def close(self) -> None:
        self.tunnel.close()


def make_ssl_context(ca_certs: str | None = None, verify: bool = True,
                     cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext:
    """A client TLS context: the system CAs or ``ca_certs``, optional client certificate."""
    ctx = ssl.create_default_context(cafile=ca_certs)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


_live_transports: weakref.WeakSet[Any] = weakref.WeakSet()


def forget_connections_after_fork(transport: Any) -> None:
    """Register ``transport`` so that a forked child calls its ``forget_connections()``.

    A pool created before fork (gunicorn --preload) must not share sockets
    between workers: each child starts with empty pools.  :class:`Transport`
    registers itself; other objects with a ``forget_connections()`` may too.
    """
    _live_transports.add(transport)


def _forget_pools_after_fork() -> None:
    for transport in list(_live_transports):
        transport.forget_connections()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


class HTTPTransport(Transport):
    """The default transport: HTTP/1.1 over pooled keep-alive sockets, streaming.

    It takes the options of :class:`Transport`; ``pool_size`` idle
    connections are kept per backend (scheme, host, port), more are closed
    when released.  Its ``request()`` takes ``check`` (a :data:`ResponseCheck`):
    a response it refuses is a :class:`BadBackendResponse` and its connection
    is closed, never pooled (``WSGIProxyApp(verify_responses=True)``).
    """

    checks_responses = True

    _idle: dict[tuple[str, str, int], list[Connection]]
    _backends: dict[tuple[str, str, int | str], tuple[tuple[str, str, int], str]]

    # -- pool -------------------------------------------------------------

    def _reset_pool(self) -> None:
        self._idle = {}
        self._open: dict[tuple[str, str, int], int] = {}  # see open_connections()
        self._lock = threading.Lock()
        self._backends = {}  # see _backend()

    def _acquire(self, key: tuple[str, str, int]) -> Connection | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                conn = idle.pop()
            if (time.monotonic() - conn.idle_since < self.idle_timeout
                    and looks_alive(conn)):
                return conn
            conn.close()

    def _release(self, conn: Connection) -> None:
        conn.idle_since = time.monotonic()
        with self._lock:
            idle = self._idle.setdefault(conn.key, [])
            if len(idle) < self.pool_size:
                idle.append(conn)
                return
        conn.close()

    def idle_connections(self, key: tuple[str, str, int] | None = None) -> int:
        """How many idle connections the pool holds (for one backend key, or all)."""
        with self._lock:
            if key is not None:
                return len(self._idle.get(key, ()))
            return sum(len(v) for v in self._idle.values())

    def open_connections(self, key: tuple[str, str, int] | None = None) -> int:
        """How many backend connections are open, idle or in use (for one backend key, or all)."""
        with self._lock:
            if key is not None:
                return self._open.get(key, 0)
            return sum(self._open.values())

    def _closed(self, key: tuple[str, str, int]) -> None:
        with self._lock:
            left = self._open.get(key, 0) - 1
            if left > 0:
                self._open[key] = left
            else:
                self._open.pop(key, None)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # -- connecting -------------------------------------------------------

    def _connect(self, key: tuple[str, str, int], backend: str) -> Connection:
        # Every failure here is before the request's first byte: ``unsent``.
        scheme, host, port = key
        started = time.monotonic()
        try:
            sock = _open(host, port, self.connect_timeout)
        except socket.gaierror as exc:
            raise BackendUnavailable("unknown host %r (%s)" % (host, exc.strerror), backend,
                                     unsent=True) from None
        except TimeoutError:  # socket.timeout
            raise BackendTimeout("timed out connecting after %gs" % self.connect_timeout,
                                 backend, unsent=True) from None
        except ConnectionRefusedError:
            raise BackendUnavailable("connection refused", backend, unsent=True) from None
        except OSError as exc:
            raise BackendUnavailable("cannot connect: %s" % (exc.strerror or exc), backend,
                                     unsent=True) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self.ssl_context().wrap_socket(sock, server_hostname=host)
                sock.settimeout(self.read_timeout)
            else:
                set_read_timeout(sock, self.read_timeout)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise BackendUnavailable("TLS certificate verification failed: %s"
                                     % exc.verify_message, backend, unsent=True) from None
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            if isinstance(exc, socket.timeout):
                raise BackendTimeout("timed out in the TLS handshake", backend,
                                     unsent=True) from None
            raise BackendUnavailable("TLS handshake failed: %s" % exc, backend,
                                     unsent=True) from None
        connect_timing.seconds = time.monotonic() - started
        with self._lock:
            self._open[key] = self._open.get(key, 0) + 1
        return Connection(sock, key, self._closed)

    # -- one exchange ---------------------------------------------------------

    def _backend(self, scheme: str, host: str, port: int | str) -> tuple[tuple[str, str, int], str]:
        """The pool key and the display name (``scheme://host:port``) of a backend.

        Remembered per spelling, up to :data:`_BACKENDS_MAX` of them (the exact
        proxy takes its backend from the environ, so there is no fixed set).
        """
        if scheme not in ("http", "https"):
            raise InvalidRequest("unsupported scheme %r" % scheme)
        name = host.strip("[]")
        try:
            number = int(port)
        except ValueError:
            raise InvalidRequest("invalid port %r" % (port,)) from None
        found = ((scheme, name, number),
                 "%s://%s:%d" % (scheme, "[%s]" % name if ":" in name else name, number))
        if len(self._backends) < _BACKENDS_MAX and len(host) <= 255:
            self._backends[scheme, host, port] = found
        return found

    def request(self, scheme: str, host: str, port: int | str, method: str, target: str,
                headers: Sequence[tuple[str, str]], body: Body = None,
                body_length: int | None = None, check: ResponseCheck | None = None, *,
                upgrade: str | None = None) -> Response:
        """Send one request; the :class:`Response` streams its body (iterate, then close).

        :param check: called with the final response's status and headers
            before anything else is done with it; a reason it returns makes
            a :class:`BadBackendResponse`, and the connection is closed.
        :param upgrade: protocols to switch to: :meth:`open_tunnel` (which see).
        :raises BackendError: (502/504) when the backend cannot be reached or
            answers badly; :class:`InvalidRequest` or :class:`RequestBodyError`
            (400) for a request that cannot be sent.
        """
        try:
            key, backend = self._backends[scheme, host, port]
        except KeyError:
            key, backend = self._backend(scheme, host, port)
        if isinstance(body, (bytes, bytearray)):
            body_length = len(body)
        elif body is None:
            body_length = 0
        head = request_head(method, target, headers, body_length,
                            body is not None and body_length is None)
        if upgrade is not None:
            return self._upgrade(key, backend, method, with_upgrade(head, upgrade), body,
                                 body_length)
        conn = self._acquire(key)
        if conn is not None:
            try:
                return self._exchange(conn, method, head, body, body_length, backend, False, check)
            except Stale as exc:
                conn.close()
                replayable = body is None or isinstance(body, (bytes, bytearray))
                if not (replayable and method in IDEMPOTENT_METHODS):
                    raise BackendUnavailable(
                        "a kept-alive connection was closed by the backend (%s); "
                        "%s requests are not retried" % (exc, method), backend) from None
                log.debug("%s: stale keep-alive connection (%s); retrying once", backend, exc)
        conn = self._connect(key, backend)
        try:
            return self._exchange(conn, method, head, body, body_length, backend, False, check)
        except Stale as exc:
            conn.close()
            raise BackendUnavailable("connection closed without a response (%s)" % exc,
                                     backend) from None

    def open_tunnel(self, scheme: str, host: str, port: int | str, method: str, target: str,
                    headers: Sequence[tuple[str, str]], protocols: str, body: Body = None,
                    body_length: int | None = None) -> Response:
        """Send an upgrade request on a new connection (see :meth:`Transport.open_tunnel`)."""
        return self.request(scheme, host, port, method, target, headers, body, body_length,
                            upgrade=protocols)

    def _upgrade(self, key: tuple[str, str, int], backend: str, method: str, head: bytes,
                 body: Body, body_length: int | None) -> Response:
        conn = self._connect(key, backend)  # its own: a tunnel never returns to the pool
        try:
            return self._exchange(conn, method, head, body, body_length, backend, True)
        except Stale as exc:
            conn.close()
            raise BackendUnavailable("connection closed without a response (%s)" % exc,
                                     backend) from None

    def _exchange(self, conn: Connection, method: str, head: bytes, body: Body,
                  body_length: int | None, backend: str, upgrade: bool = False,
                  check: ResponseCheck | None = None) -> Response:
        sock = conn.sock
        try:
            try:
                if body is None or isinstance(body, (bytes, bytearray)):
                    sock.sendall(head + body if body else head)
                else:
                    sock.sendall(head)
                    send_stream(sock, body, body_length)
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
                if body is None or isinstance(body, (bytes, bytearray)):
                    raise Stale(exc.strerror or exc) from None
                # The backend may have answered early (413, 401) and stopped
                # reading; read what it said, never reuse the connection.
                try:
                    return self._read_response(conn, method, backend, False, False, check)
                except BackendError:
                    raise BackendUnavailable("connection lost sending the request body: %s"
                                             % (exc.strerror or exc), backend) from None
            return self._read_response(conn, method, backend, not upgrade, upgrade, check)
        except TIMEOUT_ERRORS:
            conn.close()
            raise BackendTimeout("timed out after %gs waiting for the backend"
                                 % self.read_timeout, backend) from None
        except Stale:
            raise
        except BaseException:
            conn.close()
            raise

    def _read_head(self, conn: Connection, backend: str) -> bytes:
        """Receive bytes up to the end of a header block; returns the block."""
        buf = conn.buf
        start = 0
        while True:
            if buf:  # usually empty: the response has not been received yet
                end = buf.find(b"\r\n\r\n", start)
                if 0 <= end <= MAX_HEAD:
                    conn.buf = buf[end + 4:]
                    return buf[:end]
                if len(buf) > MAX_HEAD:
                    raise BadBackendResponse("response header block larger than %d bytes"
                                             % MAX_HEAD, backend)
                start = max(0, len(buf) - 3)
            try:
                data = conn.sock.recv(BUFSIZE)
            except (ConnectionResetError, ConnectionAbortedError) as exc:
                if not buf:
                    raise Stale(exc.strerror) from None
                raise BadBackendResponse("connection reset in the middle of the headers",
                                         backend) from None
            except TIMEOUT_ERRORS:
                raise
            except OSError as exc:
                raise BackendUnavailable("connection lost: %s" % (exc.strerror or exc),
                                         backend) from None
            if not data:
                if not buf:
                    raise Stale("closed before answering")
                raise BadBackendResponse("backend closed the connection in the middle of "
                                         "the response headers", backend)
            buf += data

    def _read_response(self, conn: Connection, method: str, backend: str,
                       reusable: bool, upgrade: bool = False,
                       check: ResponseCheck | None = None) -> Response:
        for _ in range(MAX_INTERIM):
            head = self._read_head(conn, backend)
            version, status, reason, headers, framing = parse_response_head(head, backend)
            if status >= 200:
                break
            if status == 101 and upgrade:  # switched: the head goes to the client as it is
                return SwitchedResponse(status, reason, headers,
                                        Tunnel(conn, head + b"\r\n\r\n", backend))
            check_interim(status, backend)  # 100 Continue, 103 Early Hints...: dropped
            if not body_framing(method, status, version, *framing)[2]:
                reusable = False  # e.g. a 1xx announcing a body: bytes may follow
        else:
            raise BadBackendResponse("too many interim (1xx) responses", backend)
        if check is not None and (problem := check(status, headers)):
            raise BadBackendResponse(problem, backend)  # _exchange closes the connection

        length, chunked, conn_tokens = framing
        mode, length, keep_alive = body_framing(method, status, version, length, chunked,
                                                conn_tokens)
        keep_alive = keep_alive and reusable
        if mode == NO_BODY:
            if keep_alive and not conn.buf:
                self._release(conn)
            else:
                conn.close()
            return Response(status, reason, headers, b"")
        if mode == CONTENT_LENGTH:
            buf = conn.buf
            if len(buf) == length:  # the usual small response: all here already
                conn.buf = b""
                if keep_alive:
                    self._release(conn)
                else:
                    conn.close()
                return Response(status, reason, headers, buf)
        reader = BodyReader(self, conn, mode, length, keep_alive, backend)
        return Response(status, reason, headers, None, reader)


def _ip_family(host: str) -> int | None:
    """``AF_INET``/``AF_INET6`` for an IP address literal, ``None`` for a name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family
    return None


def _open(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``host:port``: an IP literal without a name lookup.

    ``socket.create_connection`` resolves even ``127.0.0.1``; under gevent
    that is a trip through its resolver's thread pool for every new
    connection (a quarter of a gevent worker's time when thousands of
    streams start at once: bench/longlived.py).
    """
    family = _ip_family(host)
    if family is None:
        return socket.create_connection((host, port), timeout=timeout)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


_TRANSPORTS = {
    "http": "wsgiproxy.transport:HTTPTransport",
    "httplib2": "wsgiproxy.httplib2transport:Httplib2Transport",
}


def make_transport(name: str = "http", **options: Any) -> Transport:
    """Build a transport by name (``http``, the default, or ``httplib2``), or a ``module:Class`` path.

    ``options`` are the transport's typed keyword arguments.
    """
    path = _TRANSPORTS.get(name, name)
    if ":" not in path:
        raise ValueError("unknown transport %r (choose from %s)"
                         % (name, ", ".join(sorted(_TRANSPORTS))))
    module, _, attr = path.partition(":")
    cls = getattr(__import__(module, fromlist=[attr]), attr)
    return cls(**options)
