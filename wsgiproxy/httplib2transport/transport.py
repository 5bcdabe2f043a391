"""The httplib2 transport's class: options, the pool of ``Http`` objects, one exchange."""

from __future__ import annotations

import http.client
import logging
import re
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable, Sequence

import httplib2

from ..connection import BUFSIZE, read_pieces
from ..converters import aslist, credential_tuples, parse_size
from ..errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadBackendResponse,
    InvalidRequest,
    RequestTooLarge,
)
from ..http11 import HOP_BY_HOP, request_head
from ..transport import Body, Response, Transport
from .cache import _META, Entry, SharedCache, _AtomicFileCache
from .client import _canonical, _Client, _Exchange
from .connections import _BAD_VALUE, _CE_MARKER, _NotRetried
from .freshness import cache_directives, usable
from .upstream import _Proxy

log = logging.getLogger("wsgiproxy.httplib2transport")

#: The default ``max_buffered_body``: 10 MiB.
DEFAULT_MAX_BODY = 10 * 1024 * 1024

_DEFAULT_PORTS = {"http": 80, "https": 443}
_CONNECTING = frozenset(["connect", "proxy-connect", "tunnel", "tls"])

# Request headers that keep a request away from the shared cache (read and write).
_PRIVATE_REQUEST = frozenset(["authorization", "cookie"])
_CONDITIONAL_REQUEST = frozenset(["if-none-match", "if-modified-since", "if-match",
                                  "if-unmodified-since", "if-range", "range"])

_FOLD = re.compile(r"\r?\n[ \t]+")


class Httplib2Transport(Transport):
    """A transport on :class:`httplib2.Http`: whole bodies in memory, an optional shared cache.

    It takes the options of :class:`~wsgiproxy.transport.Transport` (with
    the same defaults), typed; ``.ini`` strings are converted by
    :mod:`wsgiproxy.wsgiapp` (:func:`parse_size`, :func:`parse_credentials`).
    Where they mean more here:

    :param connect_timeout: seconds for the TCP connection, the ``CONNECT``
        through an upstream proxy and the TLS handshake; past it: 504.
    :param read_timeout: seconds any single read or write may wait once
        connected (httplib2's one ``timeout``); past it: 504.
    :param pool_size: ``httplib2.Http`` objects kept idle, each with at most
        one keep-alive connection per backend.  An ``Http`` is not
        thread-safe, so each request takes one for itself; requests beyond
        ``pool_size`` at the same moment get a fresh one, closed afterwards.

    Its own:

    :param cache_dir: a directory for httplib2's ``FileCache``; no cache when
        not given.  The shared-cache rules below apply.
    :param credentials: ``(user, password[, domain])`` tuples, for backends
        that answer 401 with a basic or digest challenge.  Give a ``domain``
        (``host``, or ``host:port`` for non-default ports) unless every
        backend this proxy can reach may see the password.
    :param proxy_info: an upstream HTTP proxy, ``http://[user:password@]host:port``
        (or an :class:`httplib2.ProxyInfo` of HTTP type).  Plain-HTTP
        requests go to it in absolute form, HTTPS ones through ``CONNECT``.
    :param proxy_from_env: ``True`` to take the proxy from ``http_proxy``,
        ``https_proxy`` and ``no_proxy`` when no ``proxy_info`` is given.
        Off by default: those variables are ignored.
    :param no_proxy: hosts (and domain suffixes, ``.example.com``) reached
        directly, not through the upstream proxy.
    :param max_buffered_body: the largest response body, in bytes, held in
        memory; a larger one is a 502 that says so.  Default 10 MiB.
    :param max_request_body: the largest request body buffered before
        sending; a larger one is a 413.  Default: ``max_buffered_body``.

    Shared-cache rules (RFC 9111), decided here rather than by httplib2:
    only ``GET`` responses (200, 203) are stored; a request with
    ``Authorization`` or ``Cookie`` is never served from the cache and its
    response never stored, nor one the proxy's own ``credentials``
    authenticated; conditional and range requests go to the backend; a
    response with ``Cache-Control`` (or ``CDN-Cache-Control``)
    ``private`` or ``no-store``, ``Set-Cookie`` or ``Vary: *`` is not stored
    (and replaces nothing: the old entry is removed); entries are keyed by
    URL and ``Host`` header; a stored body in a ``Content-Encoding`` the
    client did not accept is not served to it; request directives only
    shorten freshness; ``Age`` counts and is kept; an unreadable date or age
    makes a response stale; a broken entry is dropped and the backend asked.
    """

    streaming = False

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 pool_size: int = 10, idle_timeout: float = 50.0, ca_certs: str | None = None,
                 verify: bool = True, cert_file: str | None = None, key_file: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, cache_dir: str | None = None,
                 credentials: Iterable[tuple[str, ...]] | None = None,
                 proxy_info: str | httplib2.ProxyInfo | None = None,
                 proxy_from_env: bool = False, no_proxy: Iterable[str] | None = None,
                 max_buffered_body: int = DEFAULT_MAX_BODY,
                 max_request_body: int | None = None) -> None:
        super().__init__(connect_timeout, read_timeout, pool_size, idle_timeout, ca_certs,
                         verify, cert_file, key_file, ssl_context)
        self.max_buffered_body = _size("max_buffered_body", max_buffered_body)
        self.max_request_body = (self.max_buffered_body if max_request_body is None
                                 else _size("max_request_body", max_request_body))
        self.credentials = credential_tuples(credentials)
        self.cache_dir = cache_dir or None
        self._cache = SharedCache(_AtomicFileCache(cache_dir)) if cache_dir else None
        self._proxy = _Proxy(proxy_info) if proxy_info else None
        if not isinstance(proxy_from_env, bool):
            raise TypeError("proxy_from_env must be True or False, not %r" % (proxy_from_env,))
        if isinstance(no_proxy, str):
            raise TypeError("no_proxy must be a list of hosts, not a string")
        self._env_proxies: dict[str, _Proxy] = {}
        self._no_proxy = list(no_proxy or ())
        if self._proxy is None and proxy_from_env:
            env = urllib.request.getproxies_environment()
            for scheme in ("http", "https"):
                if env.get(scheme):
                    self._env_proxies[scheme] = _Proxy(env[scheme])
            self._no_proxy += aslist(env.get("no", ""))

    # -- configuration helpers --------------------------------------------

    def proxy_for(self, scheme: str, host: str) -> _Proxy | None:
        """The upstream proxy for a backend, or ``None`` to connect directly."""
        proxy = self._proxy or self._env_proxies.get(scheme)
        if proxy is None:
            return None
        if self._no_proxy and urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
                host, {"no": ",".join(self._no_proxy)}):
            return None
        return proxy

    # -- pool of httplib2.Http objects --------------------------------------

    def _acquire(self):
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Client(self)

    def _release(self, client):
        client.ctx = None
        with self._lock:
            if len(self._idle) < self.pool_size:
                self._idle.append(client)
                return
        client.discard()

    def idle_connections(self) -> int:
        """How many open keep-alive connections the idle ``Http`` objects hold."""
        with self._lock:
            clients = list(self._idle)
        return sum(client.open_connections() for client in clients)

    def _reset_pool(self):
        self._idle = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for client in idle:
            client.discard()

    # -- one exchange ---------------------------------------------------------

    def request(self, scheme: str, host: str, port: int | str, method: str, target: str,
                headers: Sequence[tuple[str, str]], body: Body = None,
                body_length: int | None = None) -> Response:
        """Send one request and return the whole :class:`~wsgiproxy.transport.Response`.

        ``headers`` are the end-to-end request headers (hop-by-hop ones are
        dropped here); ``body`` is ``None``, bytes, or a file-like object read
        whole (``body_length`` bytes, or to its end when ``None``).  Raises a
        :class:`~wsgiproxy.transport.BackendError` (502/504, or
        :class:`RequestTooLarge`, 413), ``InvalidRequest`` or
        ``RequestBodyError`` (400).
        """
        if scheme not in _DEFAULT_PORTS:
            raise InvalidRequest("unsupported scheme %r" % scheme)
        host = host.strip("[]")
        port = int(port)
        hostport = "[%s]" % host if ":" in host else host
        backend = "%s://%s:%d" % (scheme, hostport, port)
        # The same validation and hop-by-hop filtering as the default
        # transport; Content-Length is written per attempt.
        head = request_head(method, target, headers, 0, False).decode("latin-1")
        wire = []
        for line in head.split("\r\n")[1:-2]:
            name, _, value = line.partition(": ")
            if name.lower() != "content-length":
                wire.append((name, value))
        body = self._read_body(body, body_length)

        ctx = _Exchange()
        ctx.method = method
        ctx.target = target
        ctx.authority = (hostport if port == _DEFAULT_PORTS[scheme]
                         else "%s:%d" % (hostport, port))
        ctx.wire = wire
        lower: dict[str, str] = {}
        for name, value in wire:
            lname = name.lower()
            lower[lname] = lower[lname] + ", " + value if lname in lower else value
        ctx.lower = lower
        ctx.host_header = lower.get("host", "")
        ctx.accept_encoding = lower.get("accept-encoding")
        ctx.cacheable = (self._cache is not None and method == "GET" and "#" not in target
                         and not any(name in lower for name in _PRIVATE_REQUEST)
                         and not any(name in lower for name in _CONDITIONAL_REQUEST))
        # httplib2 never decides from the request's Cache-Control or Pragma:
        # the cache rules below do (and the header goes to the backend as sent).
        h2headers = {k: v for k, v in lower.items() if k not in ("cache-control", "pragma")}
        ctx.uri = "%s://%s%s" % (scheme, ctx.authority, target)
        ctx.request_cc = cache_directives(lower.get("cache-control"))
        ctx.request_time = time.time()

        entry = None
        if ctx.cacheable:
            entry = self._cache.lookup(ctx)  # type: ignore[union-attr]
            answer = self._cached_answer(ctx, entry, backend)
            if answer is not None:
                return answer
            if entry is not None:
                entry = self._revalidate_with(ctx, entry, wire, h2headers)
        elif "only-if-cached" in ctx.request_cc and self._cache is not None:
            return self._gateway_timeout()

        response = self._exchange(ctx, scheme, method, body, h2headers, host, backend)
        raw = ctx.responses[-1] if ctx.responses else None
        if entry is not None and raw is not None and raw.status == 304:
            try:
                fresh = self._cache.refresh(  # type: ignore[union-attr]
                    ctx, entry, raw.header_list, time.time())
                return self._stored_response(ctx, fresh, backend, raw)
            except Exception as exc:  # noqa: BLE001 -- a broken entry: dropped, the backend asked again
                log.warning("dropping the cache entry of %s after its 304: %s: %s",
                            ctx.uri, type(exc).__name__, exc)
                self._cache.delete(self._cache.key(ctx))  # type: ignore[union-attr]
                ctx.wire = [(n, v) for n, v in ctx.wire
                            if n.lower() not in ("if-none-match", "if-modified-since")]
                for name in ("if-none-match", "if-modified-since"):
                    h2headers.pop(name, None)
                ctx.responses = []
                response = self._exchange(ctx, scheme, method, body, h2headers, host, backend)
        return response

    def _cached_answer(self, ctx, entry, backend):
        """The answer from the cache (or its 504), or ``None`` to ask the backend."""
        request_cc = ctx.request_cc
        no_cache = "no-cache" in request_cc or (
            "cache-control" not in ctx.lower and "no-cache" in ctx.lower.get("pragma", "").lower())
        if entry is not None and not no_cache:
            try:
                age = usable(entry.headers, request_cc, entry.request_time,
                             entry.response_time, time.time())
                if age is not None:
                    return self._stored_response(ctx, entry, backend, None, age)
            except Exception as exc:  # noqa: BLE001 -- a broken entry: the backend answers instead
                log.warning("dropping the cache entry of %s: %s: %s",
                            ctx.uri, type(exc).__name__, exc)
                self._cache.delete(self._cache.key(ctx))
                return None
        if "only-if-cached" in request_cc:
            return self._gateway_timeout()
        return None

    @staticmethod
    def _revalidate_with(ctx, entry, wire, h2headers):
        """Add the stored validators to the request; the entry, or ``None`` without validators."""
        validators = []
        etag = entry.headers.get("etag")
        if etag is not None:
            validators.append(("If-None-Match", etag))
        modified = entry.headers.get("last-modified")
        if modified is not None:
            validators.append(("If-Modified-Since", modified))
        if not validators or any(_BAD_VALUE(value) for _, value in validators):
            return None
        ctx.wire = wire + validators
        for name, value in validators:
            h2headers[name.lower()] = value
        return entry

    @staticmethod
    def _gateway_timeout():
        body = b"only-if-cached: no usable response is stored"
        return Response(504, "Gateway Timeout", [("Content-Type", "text/plain"),
                                                 ("Content-Length", str(len(body)))], body)

    def _stored_response(self, ctx, entry: Entry, backend, raw, age=None):
        if age is None:
            age = usable(entry.headers, {}, entry.request_time, entry.response_time,
                         time.time())
        h2response = httplib2.Response(entry.headers)
        h2response.fromcache = True
        return self._response(ctx, h2response, entry.content, backend, raw, age)

    def _exchange(self, ctx, scheme, method, body, h2headers, host, backend):
        client = self._acquire()
        client.ctx = ctx
        try:
            client.prepare()
            try:
                h2response, content = client.http.request(
                    ctx.uri, method, body=body, headers=h2headers, redirections=0,
                    connection_type=client.classes[scheme])
            except BaseException as exc:
                client.discard()  # whatever it was, no half-used connection is kept
                mapped = self._map_error(exc, ctx, host, backend)
                if mapped is None:
                    raise
                if ctx.phase in _CONNECTING and ctx.failed is None:
                    mapped.unsent = True  # no byte of the request was written
                raise mapped from None
            if any(r.leftover for r in ctx.responses):
                log.warning("%s sent bytes after the end of a response; connection discarded",
                            backend)
                client.discard()
            else:
                client.finish()
            raw = ctx.responses[-1] if ctx.responses else None
            return self._response(ctx, h2response, content, backend, raw, None)
        finally:
            self._release(client)

    def _read_body(self, body, length):
        """The request body as bytes (or ``None``), within ``max_request_body``."""
        limit = self.max_request_body
        if body is None:
            return None
        if isinstance(body, (bytes, bytearray)):
            if len(body) > limit:
                raise RequestTooLarge(self._too_large_request(len(body)))
            return bytes(body)
        if length is not None and length > limit:
            raise RequestTooLarge(self._too_large_request(length))
        parts = []
        total = 0
        for data in read_pieces(body, length, BUFSIZE):
            total += len(data)
            if total > limit:
                raise RequestTooLarge(self._too_large_request(None))
            parts.append(data)
        return b"".join(parts)

    def _too_large_request(self, size):
        return ("the request body%s is larger than the %d bytes the httplib2 transport "
                "buffers (max_request_body)" % (" of %d bytes" % size if size is not None else "",
                                               self.max_request_body))

    def _response(self, ctx, h2response, content, backend, raw, age):
        if raw is not None and not h2response.fromcache and raw.status == h2response.status:
            # From the wire: the headers as the backend sent them, in order.
            return Response(raw.status, raw.reason, list(raw.header_list),
                            b"" if ctx.method == "HEAD" else content)
        # From the cache (or httplib2's own 504 for "only-if-cached"): its
        # header names are lower-cased and repeated ones joined with ", ".
        headers = []
        for key, value in h2response.items():
            if (key == "status" or key.startswith("-") or key == _META or key in HOP_BY_HOP
                    or key in ("content-length", "set-cookie", "age")):
                continue
            if key == _CE_MARKER:
                key = "content-encoding"
            elif key == "content-location" and value == ctx.uri:
                continue  # added by httplib2, and it names the backend
            value = _FOLD.sub(" ", str(value)).strip(" \t")
            if _BAD_VALUE(value):
                raise BadBackendResponse("a cached response has an invalid %s header" % key,
                                         backend)
            headers.append((_canonical(key), value))
        if age is not None:
            headers.append(("Age", str(age)))
        headers.append(("Content-Length", str(len(content))))
        if raw is not None:  # a revalidation (304): its cookies, kept separate
            headers += [(n, v) for n, v in raw.header_list if n.lower() == "set-cookie"]
        status = h2response.status
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        return Response(status, reason, headers, content)

    def _map_error(self, exc, ctx, host, backend):
        """The :class:`BackendError` for what httplib2 or the socket raised, or ``None``."""
        phase = ctx.phase
        proxy = ctx.proxy
        if isinstance(exc, BackendError):
            if exc.backend is None:
                exc.backend = backend
            return exc
        if isinstance(exc, _NotRetried):
            return BackendUnavailable(
                "the connection was closed without a response (%s); %s requests are not "
                "retried" % (exc.args[0] if exc.args else "closed", ctx.method), backend)
        if isinstance(exc, (httplib2.ServerNotFoundError, socket.gaierror)):
            if phase == "proxy-connect":
                return BackendUnavailable("unknown upstream proxy host %r" % proxy.host, backend)
            return BackendUnavailable("unknown host %r" % host, backend)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return BackendUnavailable("TLS certificate verification failed: %s"
                                      % exc.verify_message, backend)
        if isinstance(exc, socket.timeout):
            if phase in _CONNECTING:
                return BackendTimeout("timed out connecting after %gs%s" % (
                    self.connect_timeout, " (upstream proxy %s)" % proxy.url if proxy else ""),
                    backend)
            return BackendTimeout("timed out after %gs waiting for the backend"
                                  % self.read_timeout, backend)
        if isinstance(exc, ssl.SSLError):
            return BackendUnavailable("TLS %s failed: %s" % (
                "handshake" if phase == "tls" else "connection", exc), backend)
        if isinstance(exc, http.client.RemoteDisconnected):
            return BackendUnavailable("connection closed without a response", backend)
        if isinstance(exc, ConnectionRefusedError):
            if phase == "proxy-connect":
                return BackendUnavailable("upstream proxy %s refused the connection"
                                          % proxy.url, backend)
            return BackendUnavailable("connection refused", backend)
        if isinstance(exc, http.client.HTTPException):
            return BadBackendResponse("invalid response (%s: %s)"
                                      % (type(exc).__name__, exc), backend)
        if isinstance(exc, OSError):
            what = exc.strerror or exc
            if phase == "proxy-connect":
                return BackendUnavailable("cannot connect to upstream proxy %s: %s"
                                          % (proxy.url, what), backend)
            if phase in _CONNECTING:
                return BackendUnavailable("cannot connect: %s" % what, backend)
            return BackendUnavailable("connection lost: %s" % what, backend)
        if isinstance(exc, httplib2.HttpLib2Error):  # e.g. a malformed WWW-Authenticate
            return BadBackendResponse("httplib2 could not use the response: %s: %s"
                                      % (type(exc).__name__, exc), backend)
        return None


def _size(name: str, value: int) -> int:
    """A typed byte count (``.ini`` strings such as ``"10M"`` go through :func:`parse_size` first)."""
    if not isinstance(value, int):
        raise TypeError("%s must be a number of bytes (int), not %r" % (name, value))
    return parse_size(value)

