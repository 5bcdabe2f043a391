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
"""

import logging
import os
import re
import select
import socket
import ssl
import struct
import sys
import threading
import time
import weakref

from .errors import (BackendError, BackendTimeout, BackendUnavailable, BadBackendResponse,
                     InvalidRequest, RequestBodyError)

__all__ = [
    "HOP_BY_HOP", "UNFORWARDED_REQUEST_HEADERS", "NON_NOMINATING_TOKENS", "connection_tokens",
    "Transport", "HTTPTransport", "Response", "make_transport",
    "BackendError", "BackendUnavailable", "BackendTimeout", "BadBackendResponse",
    "InvalidRequest", "RequestBodyError", "request_head", "parse_response_head",
    "make_ssl_context", "forget_connections_after_fork", "IDEMPOTENT_METHODS", "BODY_METHODS",
]

log = logging.getLogger("wsgiproxy.transport")

#: Hop-by-hop headers (RFC 9110 section 7.6.1, plus the legacy ones); never forwarded.
HOP_BY_HOP = frozenset([
    "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization",
])
#: Request headers a transport never passes on: hop-by-hop ones, the framing
#: it writes itself, and ``Expect`` (the client's ``100-continue`` was already
#: answered by its WSGI server).
UNFORWARDED_REQUEST_HEADERS = HOP_BY_HOP | {"content-length", "expect"}
#: ``Connection`` tokens that name no header to drop.
NON_NOMINATING_TOKENS = frozenset(["close", "keep-alive"])
#: Methods a transport may send again after a connection failed unanswered.
IDEMPOTENT_METHODS = frozenset(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"])
#: Methods that get ``Content-Length: 0`` when they have no body.
BODY_METHODS = frozenset(["POST", "PUT", "PATCH"])

BUFSIZE = 65536            # one recv() for a header block or a chunk
BODY_RECV = 262144         # one recv() while streaming a body: fewer, larger pieces
UPLOAD_CHUNK = 4194304     # one read() of a streamed request body: WSGI servers'
                           # inputs (gunicorn's) cost per call, so read big pieces
MAX_HEAD = 65536           # bytes in a response header block
MAX_INTERIM = 16           # 1xx responses skipped before the final one
MAX_CHUNK_LINE = 4096      # a chunk-size line with its extensions

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z").match
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]").search
# Bytes allowed in a header block: all but the controls other than HT, LF, CR.
# ``block.translate(None, _HEAD_BYTES)`` is empty exactly when a block is clean
# (one table lookup a byte, much cheaper than a regex scan).
_HEAD_BYTES = bytes(b for b in range(256) if b in (9, 10, 13) or 32 <= b < 127 or b > 127)
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}\Z").match


class Transport:
    """What every transport provides; see :class:`HTTPTransport` for the default.

    ``request()`` takes the end-to-end request headers (it drops hop-by-hop
    ones and writes its own framing) and returns a :class:`Response`.  The
    body is ``None``, ``bytes``, or a file-like object with ``read(n)``; with
    ``body_length=None`` a file-like body is sent chunked.
    """

    #: False for transports that buffer whole bodies (e.g. httplib2).
    streaming = True

    def request(self, scheme, host, port, method, target, headers,
                body=None, body_length=None):
        raise NotImplementedError

    def close(self):
        """Close idle connections; the transport stays usable."""

    def forget_connections(self):
        """In a forked child: drop (without closing) the connections of the parent."""


class Response:
    """A backend response: ``status``, ``reason``, end-to-end ``headers``, and the body.

    Iterating yields the body in chunks as they arrive.  ``body`` is set when
    the whole body was already received with the headers (the connection is
    then back in the pool and iterating just yields it).  ``close()`` must be
    called (WSGI servers do) and discards a connection that was not read to
    the end.
    """

    __slots__ = ("status", "reason", "headers", "body", "_reader")

    def __init__(self, status, reason, headers, body=None, reader=None):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self._reader = reader

    @property
    def status_line(self):
        return "%d %s" % (self.status, self.reason)

    def __iter__(self):
        if self._reader is not None:
            return self._reader.chunks()
        return iter((self.body,) if self.body else ())

    def close(self):
        if self._reader is not None:
            self._reader.abort()


_HAVE_POLL = hasattr(select, "poll")

# Plain-HTTP sockets are blocking, with the read timeout set in the kernel
# (SO_RCVTIMEO/SO_SNDTIMEO): Python's own socket timeouts poll() before every
# recv() and send(), one system call more each time.  A kernel timeout shows
# as EAGAIN (BlockingIOError).  Elsewhere, and for TLS, Python's timeouts.
_KERNEL_TIMEOUTS = sys.platform.startswith("linux")
TIMEOUT_ERRORS = (socket.timeout, BlockingIOError)


def _set_read_timeout(sock, seconds):
    if not _KERNEL_TIMEOUTS:
        sock.settimeout(seconds)
        return
    sock.settimeout(None)
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class _Connection:
    __slots__ = ("sock", "key", "buf", "idle_since", "poller")

    def __init__(self, sock, key):
        self.sock = sock
        self.key = key
        self.buf = b""
        self.idle_since = 0.0
        self.poller = None

    def close(self):
        self.poller = None
        try:
            self.sock.close()
        except OSError:
            pass

    def looks_alive(self):
        """An idle keep-alive socket must have nothing to read: data or EOF means stale.

        Checked before every reuse, however short the idle time: stray bytes a
        backend sent after a complete response (a late packet) would otherwise
        be read as the next request's response.  One poll() per request, on a
        poll object kept with the connection (cheaper than select()).
        """
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        try:
            if not _HAVE_POLL:  # Windows
                return not select.select((sock,), (), (), 0)[0]
            poller = self.poller
            if poller is None:
                poller = self.poller = select.poll()
                poller.register(sock, select.POLLIN | select.POLLPRI)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False


class _Stale(Exception):
    """A reused connection failed before any byte of the response: safe to retry."""


# Modes of reading a response body.
_NONE, _LENGTH, _CHUNKED, _CLOSE = range(4)


class _BodyReader:
    """Reads one response body from a connection and decides its fate."""

    __slots__ = ("transport", "conn", "mode", "remaining", "keep_alive", "backend")

    def __init__(self, transport, conn, mode, remaining, keep_alive, backend):
        self.transport = transport
        self.conn = conn
        self.mode = mode
        self.remaining = remaining
        self.keep_alive = keep_alive
        self.backend = backend

    def chunks(self):
        try:
            if self.mode == _LENGTH:
                yield from self._length_chunks()
            elif self.mode == _CHUNKED:
                yield from self._chunked_chunks()
            else:
                yield from self._close_chunks()
        except BackendError:
            self.abort()
            raise

    def abort(self):
        """Discard the connection unless the response was read completely."""
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.close()

    def _finish(self):
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

    def _recv(self, size):
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

    def _length_chunks(self):
        remaining = self.remaining
        conn = self.conn
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
            data = self._recv(BODY_RECV if remaining > BODY_RECV else remaining)
            if not data:
                raise BadBackendResponse(
                    "backend closed the connection %d bytes short of its Content-Length"
                    % remaining, self.backend)
            remaining -= len(data)
            if not remaining:
                self._finish()
            yield data

    def _close_chunks(self):
        conn = self.conn
        buf, conn.buf = conn.buf, b""
        if buf:
            yield buf
        while True:
            data = self._recv(BODY_RECV)
            if not data:
                break
            yield data
        self._finish()

    def _fill(self, what):
        data = self._recv(BUFSIZE)
        if not data:
            raise BadBackendResponse("backend closed the connection in the middle of "
                                     + what, self.backend)
        self.conn.buf += data

    def _line(self, what, limit):
        conn = self.conn
        while True:
            end = conn.buf.find(b"\r\n")
            if end >= 0:
                line = conn.buf[:end]
                conn.buf = conn.buf[end + 2:]
                return line
            if len(conn.buf) > limit:
                raise BadBackendResponse("%s longer than %d bytes" % (what, limit), self.backend)
            self._fill(what)

    def _chunked_chunks(self):
        conn = self.conn
        while True:
            line = self._line("a chunk-size line", MAX_CHUNK_LINE)
            size = line.split(b";", 1)[0].strip(b" \t")
            if not _HEX(size) or b"\n" in line or b"\r" in line:
                raise BadBackendResponse("invalid chunk-size line %r" % line[:80], self.backend)
            size = int(size, 16)
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
            if total > MAX_HEAD or line.translate(None, _HEAD_BYTES) or line[:1] in (b" ", b"\t"):
                raise BadBackendResponse("invalid trailer section", self.backend)
        self._finish()


def make_ssl_context(ca_certs=None, verify=True, cert_file=None, key_file=None):
    """A client TLS context: the system CAs or ``ca_certs``, optional client certificate."""
    ctx = ssl.create_default_context(cafile=ca_certs)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


_live_transports = weakref.WeakSet()


def forget_connections_after_fork(transport):
    """Register ``transport`` so that a forked child calls its ``forget_connections()``.

    A pool created before fork (gunicorn --preload) must not share sockets
    between workers: each child starts with empty pools.
    """
    _live_transports.add(transport)


def _forget_pools_after_fork():
    for transport in list(_live_transports):
        transport.forget_connections()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


class HTTPTransport(Transport):
    """The default transport: HTTP/1.1 over pooled keep-alive sockets, streaming.

    :param connect_timeout: seconds to wait for a TCP (and TLS) connection.
    :param read_timeout: seconds any single read or write may wait; a stalled
        backend gets a 504.
    :param pool_size: idle keep-alive connections kept per backend
        (scheme, host, port); connections beyond it are closed when released.
    :param idle_timeout: idle connections older than this are not reused
        (stay below the backend's keep-alive timeout where you know it).
    :param ca_certs: a CA bundle (PEM file) for verifying HTTPS backends;
        the system store is used when it is not given.
    :param verify: ``False`` turns certificate verification off.  Only for
        backends you reach over a network you trust.
    :param cert_file, key_file: a client certificate for backends that ask
        for one.
    :param ssl_context: a ready :class:`ssl.SSLContext`, instead of the above.
    """

    def __init__(self, connect_timeout=10.0, read_timeout=60.0, pool_size=10,
                 idle_timeout=50.0, ca_certs=None, verify=True, cert_file=None,
                 key_file=None, ssl_context=None):
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.pool_size = int(pool_size)
        self.idle_timeout = float(idle_timeout)
        if self.pool_size < 0 or self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive and pool_size not negative")
        if not isinstance(verify, bool):  # "false" from an .ini would silently mean True
            raise TypeError("verify must be True or False, not %r" % (verify,))
        self._ssl_args = (ca_certs, verify, cert_file, key_file)
        self._ssl_context = ssl_context
        if ssl_context is None and (ca_certs or cert_file):
            self.ssl_context()  # a wrong path fails now, not as a 502 on every request
        self._idle = {}
        self._lock = threading.Lock()
        forget_connections_after_fork(self)

    # -- pool -------------------------------------------------------------

    def _acquire(self, key):
        while True:
            with self._lock:
                idle = self._idle.get(key)
                if not idle:
                    return None
                conn = idle.pop()
            if (time.monotonic() - conn.idle_since < self.idle_timeout
                    and conn.looks_alive()):
                return conn
            conn.close()

    def _release(self, conn):
        conn.idle_since = time.monotonic()
        with self._lock:
            idle = self._idle.setdefault(conn.key, [])
            if len(idle) < self.pool_size:
                idle.append(conn)
                return
        conn.close()

    def idle_connections(self, key=None):
        """How many idle connections the pool holds (for one backend key, or all)."""
        with self._lock:
            if key is not None:
                return len(self._idle.get(key, ()))
            return sum(len(v) for v in self._idle.values())

    def forget_connections(self):
        self._idle = {}
        self._lock = threading.Lock()

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # -- connecting -------------------------------------------------------

    def ssl_context(self):
        """The TLS context for HTTPS backends, made on first use."""
        if self._ssl_context is None:
            self._ssl_context = make_ssl_context(*self._ssl_args)
        return self._ssl_context

    def _connect(self, key, backend):
        scheme, host, port = key
        try:
            sock = socket.create_connection((host, port), timeout=self.connect_timeout)
        except socket.gaierror as exc:
            raise BackendUnavailable("unknown host %r (%s)" % (host, exc.strerror), backend) from None
        except socket.timeout:
            raise BackendTimeout("timed out connecting after %gs" % self.connect_timeout,
                                 backend) from None
        except ConnectionRefusedError:
            raise BackendUnavailable("connection refused", backend) from None
        except OSError as exc:
            raise BackendUnavailable("cannot connect: %s" % (exc.strerror or exc), backend) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self.ssl_context().wrap_socket(sock, server_hostname=host)
                sock.settimeout(self.read_timeout)
            else:
                _set_read_timeout(sock, self.read_timeout)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise BackendUnavailable("TLS certificate verification failed: %s"
                                     % exc.verify_message, backend) from None
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            if isinstance(exc, socket.timeout):
                raise BackendTimeout("timed out in the TLS handshake", backend) from None
            raise BackendUnavailable("TLS handshake failed: %s" % exc, backend) from None
        return _Connection(sock, key)

    # -- one exchange ---------------------------------------------------------

    def request(self, scheme, host, port, method, target, headers,
                body=None, body_length=None):
        if scheme not in ("http", "https"):
            raise InvalidRequest("unsupported scheme %r" % scheme)
        host = host.strip("[]")
        port = int(port)
        backend = "%s://%s:%d" % (scheme, "[%s]" % host if ":" in host else host, port)
        if isinstance(body, (bytes, bytearray)):
            body_length = len(body)
        elif body is None:
            body_length = 0
        head = request_head(method, target, headers, body_length,
                             body is not None and body_length is None)
        key = (scheme, host, port)
        conn = self._acquire(key)
        if conn is not None:
            try:
                return self._exchange(conn, method, head, body, body_length, backend)
            except _Stale as exc:
                conn.close()
                replayable = body is None or isinstance(body, (bytes, bytearray))
                if not (replayable and method in IDEMPOTENT_METHODS):
                    raise BackendUnavailable(
                        "a kept-alive connection was closed by the backend (%s); "
                        "%s requests are not retried" % (exc, method), backend) from None
                log.debug("%s: stale keep-alive connection (%s); retrying once", backend, exc)
        conn = self._connect(key, backend)
        try:
            return self._exchange(conn, method, head, body, body_length, backend)
        except _Stale as exc:
            conn.close()
            raise BackendUnavailable("connection closed without a response (%s)" % exc,
                                     backend) from None

    def _exchange(self, conn, method, head, body, body_length, backend):
        sock = conn.sock
        try:
            try:
                if body is None or isinstance(body, (bytes, bytearray)):
                    sock.sendall(head + body if body else head)
                else:
                    sock.sendall(head)
                    _send_stream(sock, body, body_length)
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
                if body is None or isinstance(body, (bytes, bytearray)):
                    raise _Stale(exc.strerror or exc) from None
                # The backend may have answered early (413, 401) and stopped
                # reading; read what it said, never reuse the connection.
                try:
                    return self._read_response(conn, method, backend, reusable=False)
                except BackendError:
                    raise BackendUnavailable("connection lost sending the request body: %s"
                                             % (exc.strerror or exc), backend) from None
            return self._read_response(conn, method, backend, reusable=True)
        except TIMEOUT_ERRORS:
            conn.close()
            raise BackendTimeout("timed out after %gs waiting for the backend"
                                 % self.read_timeout, backend) from None
        except _Stale:
            raise
        except BaseException:
            conn.close()
            raise

    def _read_head(self, conn, backend):
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
                    raise _Stale(exc.strerror) from None
                raise BadBackendResponse("connection reset in the middle of the headers",
                                         backend) from None
            except TIMEOUT_ERRORS:
                raise
            except OSError as exc:
                raise BackendUnavailable("connection lost: %s" % (exc.strerror or exc),
                                         backend) from None
            if not data:
                if not buf:
                    raise _Stale("closed before answering")
                raise BadBackendResponse("backend closed the connection in the middle of "
                                         "the response headers", backend)
            buf += data

    def _read_response(self, conn, method, backend, reusable):
        for _ in range(MAX_INTERIM):
            head = self._read_head(conn, backend)
            version, status, reason, headers, framing = parse_response_head(head, backend)
            if status >= 200:
                break
            if status == 101:
                raise BadBackendResponse("backend switched protocols (101), which a WSGI "
                                         "proxy cannot carry", backend)
            # 100 Continue, 103 Early Hints...: WSGI cannot pass interim responses on.
        else:
            raise BadBackendResponse("too many interim (1xx) responses", backend)

        length, chunked, conn_tokens = framing
        keep_alive = reusable and version == "1.1" and "close" not in conn_tokens
        if method == "HEAD" or status in (204, 304):
            if keep_alive and not conn.buf:
                self._release(conn)
            else:
                conn.close()
            return Response(status, reason, headers, b"")
        if chunked:
            mode, remaining = _CHUNKED, None
        elif length is not None:
            mode, remaining = _LENGTH, length
            buf = conn.buf
            if len(buf) == length:  # the usual small response: all here already
                conn.buf = b""
                if keep_alive:
                    self._release(conn)
                else:
                    conn.close()
                return Response(status, reason, headers, buf)
        else:
            mode, remaining, keep_alive = _CLOSE, None, False
        reader = _BodyReader(self, conn, mode, remaining, keep_alive, backend)
        return Response(status, reason, headers, None, reader)


# Request header names seen before -> what to write for them: ``"Name: "``
# (kept), or _SKIP / _CONNECTION.  Bounded so hostile clients cannot grow it;
# a name is only remembered after it was checked to be a token.
_NAME_CACHE_MAX = 4096
_NAME_LENGTH_MAX = 100  # longer names are checked each time, never remembered
_SKIP, _CONNECTION = 1, 2
_request_names = {}


def _request_name_kind(name):
    if not _TOKEN(name):
        raise InvalidRequest("invalid header name %r" % name[:100])
    lname = name.lower()
    kind = (_CONNECTION if lname == "connection"
            else _SKIP if lname in UNFORWARDED_REQUEST_HEADERS else name + ": ")
    if len(_request_names) < _NAME_CACHE_MAX and len(name) <= _NAME_LENGTH_MAX:
        _request_names[name] = kind
    return kind


def request_head(method, target, headers, body_length, chunked):
    """Serialise the request line and headers (bytes); hop-by-hop and framing headers are ours.

    Raises :class:`InvalidRequest` for anything that could split or smuggle a
    request.  Shared by every transport so they cannot drift apart.
    """
    if not _TOKEN(method):
        raise InvalidRequest("invalid method %r" % method)
    if not target or _BAD_TARGET(target):
        raise InvalidRequest("invalid request target %r" % target[:200])
    kinds = _request_names
    try:
        lines = [kind + value for name, value in headers
                 if (kind := kinds[name]).__class__ is str]
    except KeyError:  # a name not seen before
        lines = [kind + value for name, value in headers
                 if (kind := kinds.get(name) or _request_name_kind(name)).__class__ is str]
    except TypeError:
        raise InvalidRequest("header names and values must be str") from None
    if len(lines) != len(headers):  # some were dropped: did a Connection header name others?
        nominated = set()
        for value in [value for name, value in headers if (kind := kinds.get(name)) == _CONNECTION
                      or (kind is None and name.lower() == "connection")]:
            nominated |= connection_tokens(value)
        nominated -= NON_NOMINATING_TOKENS
        if nominated:  # rare: drop the headers the client's Connection named
            lines = [line for line in lines if line.partition(":")[0].lower() not in nominated]
    lines.insert(0, "%s %s HTTP/1.1" % (method, target))
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif body_length or method in BODY_METHODS:
        lines.append("Content-Length: %d" % body_length)
    lines.append("\r\n")
    text = "\r\n".join(lines)
    n = len(lines)
    if text.count("\n") != n or text.count("\r") != n or "\0" in text:
        raise InvalidRequest("a header value contains CR, LF or NUL")
    if "\nHost:" not in text and "\nhost:" not in text.lower():
        raise InvalidRequest("no Host header")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidRequest("a header value is not latin-1 text") from None


def connection_tokens(value):
    """The lowercased tokens of a ``Connection`` header value, as a set."""
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def _send_stream(sock, body, length):
    """Copy a file-like request body to the socket, in bounded memory."""
    read = body.read
    if length is None:
        while True:
            try:
                data = read(UPLOAD_CHUNK)
            except RequestBodyError:
                raise
            except Exception as exc:
                raise RequestBodyError("reading the request body failed: %s" % exc) from exc
            if not data:
                sock.sendall(b"0\r\n\r\n")
                return
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))
    remaining = length
    while remaining:
        try:
            data = read(UPLOAD_CHUNK if remaining > UPLOAD_CHUNK else remaining)
        except RequestBodyError:
            raise
        except Exception as exc:
            raise RequestBodyError("reading the request body failed: %s" % exc) from exc
        if not data:
            raise RequestBodyError("request body ended after %d of %d bytes"
                                   % (length - remaining, length))
        remaining -= len(data)
        sock.sendall(data)


_RESP_KEEP, _RESP_HOP, _RESP_TE, _RESP_CONNECTION, _RESP_LENGTH = range(5)
_response_names = {}


def _response_name_kind(name, line, backend):
    if not _TOKEN(name):
        if line[:1] in (" ", "\t"):
            raise BadBackendResponse("obsolete line folding in the response headers", backend)
        raise BadBackendResponse("invalid header name %r" % name[:80], backend)
    lname = name.lower()
    kind = (_RESP_TE if lname == "transfer-encoding"
            else _RESP_CONNECTION if lname == "connection"
            else _RESP_HOP if lname in HOP_BY_HOP
            else _RESP_LENGTH if lname == "content-length" else _RESP_KEEP)
    if len(_response_names) < _NAME_CACHE_MAX and len(name) <= _NAME_LENGTH_MAX:
        _response_names[name] = kind
    return kind


def parse_response_head(head, backend):
    """Parse a response header block into its parts, rejecting anything ambiguous (every transport's parser).

    Returns ``(version, status, reason, headers, (content_length, chunked,
    connection_tokens))`` with hop-by-hop headers already removed.
    """
    if head.translate(None, _HEAD_BYTES):
        raise BadBackendResponse("control characters in the response headers", backend)
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    if not text.count("\r") == text.count("\n") == len(lines) - 1:
        raise BadBackendResponse("bare CR or LF in the response headers", backend)
    # "HTTP/1.x NNN[ reason]"; the reason phrase may be empty or missing.
    status_line = lines[0]
    status = status_line[9:12]
    if (status_line[:7] != "HTTP/1." or status_line[7:9] not in ("1 ", "0 ")
            or not (status.isdigit() and status.isascii() and len(status) == 3)
            or status_line[12:13] not in ("", " ")):
        raise BadBackendResponse("invalid status line %r" % status_line[:80], backend)
    version = status_line[7]
    reason = status_line[13:]
    status = int(status)
    if status < 100:
        raise BadBackendResponse("invalid status code %d" % status, backend)
    headers = []
    append = headers.append
    kinds = _response_names
    lengths = te = None
    conn_tokens = ()
    nominated = False
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        kind = kinds.get(name)
        if kind is None or not sep:
            if not sep:
                if line[:1] in (" ", "\t"):
                    raise BadBackendResponse("obsolete line folding in the response headers",
                                             backend)
                raise BadBackendResponse("invalid header line %r" % line[:80], backend)
            kind = _response_name_kind(name, line, backend)
        if kind:
            value = value.strip(" \t")
            if kind == _RESP_LENGTH:
                if lengths is None:
                    lengths = []
                    length_at = len(headers)  # keep its place; normalised below
                lengths += value.split(",")
            elif kind == _RESP_TE:
                te = value if te is None else te + ", " + value
            elif kind == _RESP_CONNECTION:
                conn_tokens = connection_tokens(value) | set(conn_tokens)
                nominated = nominated or bool(conn_tokens - NON_NOMINATING_TOKENS)
            continue
        append((name, value.strip(" \t")))
    length = None
    if lengths is not None:
        if len(lengths) == 1:
            length_value = lengths[0].strip(" \t")
        else:
            values = {v.strip(" \t") for v in lengths}
            if len(values) != 1:
                raise BadBackendResponse("conflicting Content-Length values", backend)
            length_value = values.pop()
        if not (length_value.isdigit() and length_value.isascii()) or len(length_value) > 18:
            raise BadBackendResponse("invalid Content-Length %r" % length_value[:40], backend)
        length = int(length_value)
    chunked = False
    if te is not None:
        if lengths is not None:
            raise BadBackendResponse("both Transfer-Encoding and Content-Length", backend)
        if te.lower() != "chunked":
            raise BadBackendResponse("unsupported Transfer-Encoding %r" % te[:40], backend)
        chunked = True
    if length is not None and status != 204:  # a 204 has no Content-Length
        headers.insert(length_at, ("Content-Length", length_value))
    if nominated:
        headers = [h for h in headers if h[0].lower() not in conn_tokens]
    return "1." + version, status, reason or "", headers, (length, chunked, conn_tokens)


_TRANSPORTS = {
    "http": "wsgiproxy.transport:HTTPTransport",
    "httplib2": "wsgiproxy.httplib2transport:Httplib2Transport",
}


def make_transport(name="http", **options):
    """Build a transport by name (``http``, the default, or ``httplib2``), or a ``module:Class`` path."""
    path = _TRANSPORTS.get(name, name)
    if ":" not in path:
        raise ValueError("unknown transport %r (choose from %s)"
                         % (name, ", ".join(sorted(_TRANSPORTS))))
    module, _, attr = path.partition(":")
    cls = getattr(__import__(module, fromlist=[attr]), attr)
    return cls(**options)
