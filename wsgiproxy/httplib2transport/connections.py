"""The connections and responses the httplib2 transport plugs into httplib2.

httplib2 keeps the cache logic and authentication; these classes replace its
connecting (timeouts, TLS, the upstream proxy), the request on the wire
(exactly the client's), and response parsing (the rules of
:mod:`wsgiproxy.http11`, repeated headers kept apart, bodies bounded).
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl

import httplib2

from ..connection import BUFSIZE
from ..errors import BadBackendResponse, ResponseTooLarge
from ..http11 import (
    BODY_METHODS,
    CHUNKED,
    IDEMPOTENT_METHODS,
    MAX_HEAD,
    MAX_INTERIM,
    body_framing,
    check_interim,
    parse_response_head,
)
from .upstream import _tunnel

# httplib2 decompresses any body whose Content-Encoding it knows; it is shown
# this name instead, which no backend can send (not a token), and stores it
# in the cache under it.
_CE_MARKER = "wsgiproxy(content-encoding)"

_BAD_VALUE = re.compile(r"[\r\n\0]").search


class _NotRetried(Exception):
    """httplib2 wanted to resend a non-idempotent request on a new connection."""


class _HTTPResponse(http.client.HTTPResponse):
    """http.client's response, parsed by the default transport's strict rules.

    Repeated headers stay separate (``header_list``), the body is bounded by
    ``limit``, and bytes found after the end of a kept-alive response set
    ``leftover`` so the connection is not reused.
    """

    limit = None
    leftover = 0
    header_list = ()
    _reading = False

    def __init__(self, sock, debuglevel=0, method=None, url=None):
        super().__init__(sock, debuglevel, method, url)
        self._socket = sock

    def begin(self) -> None:
        if self.headers is not None:
            return
        reusable = True
        for _ in range(MAX_INTERIM):
            version, status, reason, headers, framing = parse_response_head(self._read_head(), None)
            if status >= 200:
                break
            check_interim(status, None)  # 100 Continue, 103 Early Hints...: dropped
            if not body_framing(self._method, status, version, *framing)[2]:
                reusable = False  # e.g. a 1xx announcing a body: bytes may follow
        else:
            raise BadBackendResponse("too many interim (1xx) responses")
        if _BAD_VALUE(reason):
            raise BadBackendResponse("control characters in the status line")
        self.code = self.status = status
        self.reason = reason
        self.version = 11 if version == "1.1" else 10
        self.header_list = headers
        msg = http.client.HTTPMessage()
        for name, value in headers:
            msg[name] = value
        self.headers = self.msg = msg
        mode, length, keep_alive = body_framing(self._method, status, version, *framing)
        self.chunked = mode == CHUNKED
        self.chunk_left = None
        self.length = length  # 0 without a body; None when chunked or until close
        self.will_close = not (keep_alive and reusable)

    def _read_head(self):
        fp = self.fp
        lines = []
        total = 0
        while True:
            line = fp.readline(MAX_HEAD + 1)
            if line == b"\r\n":
                break
            if not line:
                if not lines:
                    raise http.client.RemoteDisconnected(
                        "Remote end closed connection without response")
                raise BadBackendResponse("backend closed the connection in the middle of "
                                         "the response headers")
            if not line.rstrip(b"\r\n"):
                raise BadBackendResponse("bare CR or LF in the response headers")
            total += len(line)
            if total > MAX_HEAD:
                raise BadBackendResponse("response header block larger than %d bytes"
                                         % MAX_HEAD)
            lines.append(line)
        head = b"".join(lines)
        if head and not head.endswith(b"\r\n"):
            raise BadBackendResponse("bare CR or LF in the response headers")
        return head[:-2]

    def getheaders(self):
        # What httplib2 sees: no Content-Encoding, so it never decompresses.
        return [(_CE_MARKER if name.lower() == "content-encoding" else name, value)
                for name, value in self.header_list]

    def read(self, amt=None):
        self._reading = True
        try:
            if amt is not None:
                return super().read(amt)
            return self._read_all()
        except http.client.IncompleteRead as exc:
            self.close()
            if self.chunked:  # http.client says the same of a bad chunk-size line
                raise BadBackendResponse("invalid or incomplete chunked body (bad chunk "
                                         "framing, or the connection closed)") from None
            raise BadBackendResponse("backend closed the connection %d bytes short of its "
                                     "Content-Length" % (exc.expected or 0)) from None
        except ValueError:  # http.client: an unparsable chunk-size line
            self.close()
            raise BadBackendResponse("invalid chunked encoding") from None
        finally:
            self._reading = False

    def _read_all(self):
        limit = self.limit
        if limit is None:
            return super().read()
        if self.length is not None:
            if self.length > limit:
                self.close()
                raise ResponseTooLarge(
                    "the response body of %d bytes (Content-Length) is larger than the %d "
                    "bytes the httplib2 transport buffers (max_buffered_body)"
                    % (self.length, limit))
            return super().read()
        parts = []
        total = 0
        while True:
            data = super().read(min(BUFSIZE, limit + 1 - total))
            if not data:
                return b"".join(parts)
            total += len(data)
            if total > limit:
                self.close()
                raise ResponseTooLarge(
                    "the response body is larger than the %d bytes the httplib2 transport "
                    "buffers (max_buffered_body)" % limit)
            parts.append(data)

    def _close_conn(self):
        # Called when the body was read to its end (and on close or error):
        # only the first case says something about the connection.
        fp = self.fp
        if fp is not None and self._reading and not self.will_close and self._socket is not None:
            self.leftover = _buffered_leftover(fp, self._socket)
        self._socket = None
        super()._close_conn()


def _buffered_leftover(fp, sock):
    """Bytes already there after a response ended (in the buffer or on the socket)."""
    try:
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            return len(fp.peek(1))
        finally:
            sock.settimeout(timeout)
    except (ssl.SSLWantReadError, BlockingIOError):
        return 0
    except (OSError, ValueError):
        return 1  # cannot tell: do not reuse


class _ConnectionMixin:
    """Connecting (timeouts, TLS, upstream proxy) and writing the request exactly."""

    client_ref = None      # weakref to the _Client, set on per-client subclasses
    idle_since = 0.0
    poller = None          # wsgiproxy.connection.looks_alive() keeps its poll object here
    via_proxy = None       # an upstream proxy taking absolute-form requests
    response_class: type[http.client.HTTPResponse] = _HTTPResponse
    tls = False

    @property
    def client(self):
        return self.client_ref()

    def connect(self):
        client = self.client
        transport = client.transport
        ctx = client.ctx
        if ctx.failed is not None and ctx.method not in IDEMPOTENT_METHODS:
            raise _NotRetried(str(ctx.failed) or type(ctx.failed).__name__)
        proxy = transport.proxy_for("https" if self.tls else "http", self.host)
        ctx.proxy = proxy
        ctx.phase = "proxy-connect" if proxy else "connect"
        address = (proxy.host, proxy.port) if proxy else (self.host, self.port)
        sock = socket.create_connection(address, transport.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                if proxy:
                    ctx.phase = "tunnel"
                    _tunnel(sock, proxy, self.host, self.port)
                ctx.phase = "tls"
                sock = transport.ssl_context().wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(transport.read_timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.poller = None
        self.via_proxy = proxy if proxy and not self.tls else None
        ctx.phase = "exchange"

    def close(self):
        self.poller = None
        super().close()

    def request(self, method, url, body=None, headers=None, *, encode_chunked=False):
        ctx = self.client.ctx
        wire = ctx.wire_headers(headers or {})
        target = ctx.target
        if self.via_proxy is not None:
            target = "http://%s%s" % (ctx.authority, target)
            if self.via_proxy.authorization:
                wire.append(("Proxy-Authorization", self.via_proxy.authorization))
        self.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in wire:
            self.putheader(name, value)
        if body:
            self.putheader("Content-Length", str(len(body)))
        elif method in BODY_METHODS:
            self.putheader("Content-Length", "0")
        try:
            self.endheaders(body or None)
        except OSError as exc:
            ctx.failed = exc
            raise

    def getresponse(self):
        ctx = self.client.ctx
        try:
            response = super().getresponse()
        except BaseException as exc:
            ctx.failed = exc
            raise
        response.limit = self.client.transport.max_buffered_body
        ctx.responses.append(response)
        return response


class _HTTPConnection(_ConnectionMixin, httplib2.HTTPConnectionWithTimeout):
    pass


class _HTTPSConnection(_ConnectionMixin, httplib2.HTTPSConnectionWithTimeout):
    tls = True

    def __init__(self, host, port=None, key_file=None, cert_file=None, timeout=None,
                 proxy_info=None, **ignored):
        # The TLS context is the transport's (built once), not httplib2's.
        http.client.HTTPSConnection.__init__(
            self, host, port, timeout=timeout, context=self.client.transport.ssl_context())
        self.proxy_info = None


