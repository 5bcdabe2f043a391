"""A buffering transport built on :class:`httplib2.Http`: backend caching, credentials, upstream proxies.

Choose it with ``transport = httplib2`` (``.ini``) or
``ExactProxy(transport="httplib2", ...)``.  It buffers each body whole, so it
is for backends whose answers are worth caching or that need what httplib2
does well (a response cache directory, basic/digest credentials); the
default :class:`~wsgiproxy.transport.HTTPTransport` streams and is faster.

What httplib2 does and what this module keeps from it:

* **used**: the cache logic (freshness, validators, ``Vary``) over httplib2's
  ``FileCache`` directory format, and basic/digest authentication;
* **replaced**: the connection, TLS and proxy code (so connect and read
  timeouts differ, the upstream proxy needs no PySocks, the request goes on
  the wire exactly as the client sent it), response parsing (the same strict
  rules as the default transport, repeated headers such as ``Set-Cookie``
  kept separate), and decompression (never done: bodies and their
  ``Content-Encoding``/``Content-Length`` pass through as the backend sent
  them);
* **turned off**: redirect following, ``If-Match`` on ``PUT``, the
  ``http_proxy`` environment variables (unless ``proxy_from_env``), and the
  authentication schemes that are neither basic nor digest (httplib2's
  ``GoogleLogin`` would send the credentials to a third party).

Because a reverse proxy serves many users, the cache follows shared-cache
rules (httplib2 alone behaves as a private, single-user cache); see
:class:`Httplib2Transport`.
"""

import base64
import email
import email.utils
import http.client
import logging
import os
import re
import select
import socket
import ssl
import tempfile
import threading
import time
import urllib.request
import weakref
from urllib.parse import unquote, urlsplit

import httplib2
import httplib2.auth
from paste.deploy.converters import asbool, asint

from .errors import RequestTooLarge, ResponseTooLarge
from .transport import (BUFSIZE, HOP_BY_HOP, MAX_HEAD, MAX_INTERIM, BackendError,
                        BackendTimeout, BackendUnavailable, BadBackendResponse,
                        InvalidRequest, RequestBodyError, Response, Transport,
                        BODY_METHODS, IDEMPOTENT_METHODS, forget_connections_after_fork,
                        make_ssl_context, parse_response_head, request_head)

__all__ = ["Httplib2Transport", "ResponseTooLarge", "RequestTooLarge", "parse_credentials", "parse_size"]

log = logging.getLogger("wsgiproxy.httplib2transport")

DEFAULT_MAX_BODY = 10 * 1024 * 1024

_DEFAULT_PORTS = {"http": 80, "https": 443}
_CONNECTING = frozenset(["connect", "proxy-connect", "tunnel", "tls"])

# Request headers httplib2 itself may set that are allowed onto the wire:
# credentials, and the validators of a cache revalidation.  Everything else
# it adds (User-Agent, Accept-Encoding: gzip, If-Match...) is left out, so the
# backend gets the client's request as it was.
_ADDED_BY_HTTPLIB2 = ("authorization", "if-none-match", "if-modified-since")

# Request headers that keep a request away from the shared cache (read and write).
_PRIVATE_REQUEST = frozenset(["authorization", "cookie"])
_CONDITIONAL_REQUEST = frozenset(["if-none-match", "if-modified-since", "if-match",
                                  "if-unmodified-since", "if-range", "range"])

# httplib2 decompresses any body whose Content-Encoding it knows; it is shown
# this name instead, which no backend can send (not a token), and stores it
# in the cache under it.
_CE_MARKER = "wsgiproxy(content-encoding)"

_BAD_VALUE = re.compile(r"[\r\n\0]").search
_FOLD = re.compile(r"\r?\n[ \t]+")
_SIZE = re.compile(r"\s*([0-9]+)\s*(?:([kmg])(?:i?b)?|b)?\s*\Z", re.I).match
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})").match
_SPECIAL_NAMES = {"etag": "ETag", "www-authenticate": "WWW-Authenticate",
                  "content-md5": "Content-MD5", "x-xss-protection": "X-XSS-Protection"}


class _NotRetried(Exception):
    """httplib2 wanted to resend a non-idempotent request on a new connection."""


# -- option parsing (every option may come from an .ini file as a string) --------

def parse_size(value):
    """A byte count: an int, or a string such as ``"1048576"``, ``"512K"``, ``"10M"``, ``"1GB"``.

    The units are binary (K = 1024).
    """
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE(str(value))
        if match is None:
            raise ValueError("invalid size %r (use bytes, or a number with K, M or G)" % value)
        size = int(match.group(1)) * 1024 ** " kmg".index((match.group(2) or " ").lower())
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def parse_credentials(value):
    """``[(user, password, domain), ...]`` from a list, or from an ``.ini`` string.

    A list holds ``(user, password)`` or ``(user, password, domain)`` tuples.
    A string holds whitespace-separated items ``user:password`` (for every
    backend) or ``user:password@domain``, the domain being a backend's
    ``host``, or ``host:port`` for a non-default port.  The item splits at
    its last ``@`` (when what precedes it holds a ``:``) and then at the
    first ``:``; each part is percent-decoded, so write a space as ``%20``,
    ``%`` as ``%25``, an ``@`` in a password as ``%40`` and a ``:`` in a user
    name as ``%3A``.
    """
    if not value:
        return []
    items = value.split() if isinstance(value, str) else list(value)
    out = []
    for n, item in enumerate(items, 1):
        if isinstance(item, str):
            domain = ""
            userinfo, at, host = item.rpartition("@")
            if at and ":" in userinfo:
                item, domain = userinfo, host
            user, sep, password = item.partition(":")
            if not sep or not user:
                # Never echo the item: it holds a password.
                raise ValueError("credentials item %d is not user:password or "
                                 "user:password@domain" % n)
            user, password, domain = unquote(user), unquote(password), unquote(domain)
        else:
            item = tuple(item)
            if len(item) not in (2, 3):
                raise ValueError("credentials item %d is not (user, password[, domain])" % n)
            user, password, domain = (item + ("",))[:3]
        out.append((user, password, (domain or "").lower()))
    return out


def _optional(value):
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return value


def _host_list(value):
    if not value:
        return []
    if isinstance(value, str):
        return [item for item in re.split(r"[\s,]+", value) if item]
    return list(value)


class _Proxy:
    """An upstream HTTP proxy: ``http://[user:password@]host[:port]``."""

    def __init__(self, url):
        if isinstance(url, httplib2.ProxyInfo):
            if url.proxy_type != 3:  # socks.PROXY_TYPE_HTTP
                raise ValueError("only HTTP upstream proxies are supported, not SOCKS")
            host, port, user, password = (url.proxy_host, int(url.proxy_port),
                                          url.proxy_user, url.proxy_pass)
        else:
            parts = urlsplit(url if "://" in url else "http://" + url)
            if parts.scheme != "http":
                raise ValueError("proxy_info: only http:// upstream proxies are supported, "
                                 "not %r" % parts.scheme)
            if not parts.hostname:
                raise ValueError("proxy_info: no host in the proxy URL")
            host, port = parts.hostname, parts.port or 80
            user = unquote(parts.username) if parts.username is not None else None
            password = unquote(parts.password or "")
        self.host, self.port = host, port
        self.url = "http://%s:%d" % ("[%s]" % host if ":" in host else host, port)
        self.authorization = None
        if user is not None:
            token = base64.b64encode(("%s:%s" % (user, password or "")).encode("utf-8"))
            self.authorization = "Basic " + token.decode("ascii")

    def __repr__(self):  # without the credentials
        return "<upstream proxy %s>" % self.url


# -- the transport ------------------------------------------------------------------

class Httplib2Transport(Transport):
    """A transport on :class:`httplib2.Http`: whole bodies in memory, an optional shared cache.

    Every option may be given as a string (from an ``.ini`` file) and is
    converted here.

    :param connect_timeout: seconds for the TCP connection, the ``CONNECT``
        through an upstream proxy and the TLS handshake; past it: 504.
    :param read_timeout: seconds any single read or write may wait once
        connected (httplib2's one ``timeout``); past it: 504.
    :param pool_size: ``httplib2.Http`` objects kept idle, each with at most
        one keep-alive connection per backend.  An ``Http`` is not
        thread-safe, so each request takes one for itself; requests beyond
        ``pool_size`` at the same moment get a fresh one, closed afterwards.
    :param idle_timeout: idle connections older than this are not reused.
    :param ca_certs: CA bundle (PEM) for HTTPS backends; the system store
        when not given.
    :param verify: ``False`` turns certificate verification off.
    :param cert_file, key_file: a client certificate (PEM) for backends that
        ask for one; ``key_file`` when the key is not in ``cert_file``.
    :param ssl_context: a ready :class:`ssl.SSLContext` instead of the four above.
    :param cache_dir: a directory for httplib2's ``FileCache``; no cache when
        not given.  The shared-cache rules below apply.
    :param credentials: ``(user, password[, domain])`` tuples, or an ``.ini``
        string (:func:`parse_credentials`), for backends that answer 401 with
        a basic or digest challenge.  Give a ``domain`` (``host``, or
        ``host:port`` for non-default ports) unless every backend this proxy
        can reach may see the password.
    :param proxy_info: an upstream HTTP proxy, ``http://[user:password@]host:port``
        (or an :class:`httplib2.ProxyInfo` of HTTP type).  Plain-HTTP
        requests go to it in absolute form, HTTPS ones through ``CONNECT``.
    :param proxy_from_env: ``True`` to take the proxy from ``http_proxy``,
        ``https_proxy`` and ``no_proxy`` when no ``proxy_info`` is given.
        Off by default: those variables are ignored.
    :param no_proxy: hosts (and domain suffixes, ``.example.com``) reached
        directly, not through the upstream proxy.
    :param max_buffered_body: the largest response body, in bytes (or
        ``"10M"``), held in memory; a larger one is a 502 that says so.
        Default 10 MiB.
    :param max_request_body: the largest request body buffered before
        sending; a larger one is a 413.  Default: ``max_buffered_body``.

    Shared-cache rules, on top of httplib2's freshness and ``Vary`` logic:
    only ``GET`` responses (200, 203) are stored; a request with
    ``Authorization`` or ``Cookie`` is never served from the cache and its
    response never stored, nor one the proxy's own ``credentials``
    authenticated; conditional and range requests go to the backend; a
    response with ``Cache-Control: private`` or ``no-store``, ``Set-Cookie``,
    ``Vary: *``, or an ``s-maxage`` that differs from its ``max-age`` is not
    stored (and replaces nothing: the old entry is removed); entries are keyed
    by URL and ``Host`` header; a stored body in a ``Content-Encoding`` the
    client did not accept is not served to it.
    """

    streaming = False

    def __init__(self, connect_timeout=10.0, read_timeout=60.0, pool_size=10,
                 idle_timeout=50.0, ca_certs=None, verify=True, cert_file=None,
                 key_file=None, ssl_context=None, cache_dir=None, credentials=None,
                 proxy_info=None, proxy_from_env=False, no_proxy=None,
                 max_buffered_body=DEFAULT_MAX_BODY, max_request_body=None):
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.pool_size = asint(pool_size)
        self.idle_timeout = float(idle_timeout)
        if self.pool_size < 0 or self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive and pool_size not negative")
        self.max_buffered_body = parse_size(max_buffered_body)
        max_request_body = _optional(max_request_body)
        self.max_request_body = (self.max_buffered_body if max_request_body is None
                                 else parse_size(max_request_body))
        self._ssl_args = (_optional(ca_certs), asbool(verify), _optional(cert_file),
                          _optional(key_file))
        self._ssl_context = ssl_context
        if ssl_context is None and (self._ssl_args[0] or self._ssl_args[2]):
            self.ssl_context()  # a wrong path fails at start-up, not on a request
        self.credentials = parse_credentials(_optional(credentials))
        cache_dir = _optional(cache_dir)
        self.cache_dir = cache_dir
        self._store = _AtomicFileCache(cache_dir) if cache_dir else None
        proxy_info = _optional(proxy_info)
        self._proxy = _Proxy(proxy_info) if proxy_info is not None else None
        self._env_proxies = {}
        self._no_proxy = _host_list(no_proxy)
        if self._proxy is None and asbool(proxy_from_env):
            env = urllib.request.getproxies_environment()
            for scheme in ("http", "https"):
                if env.get(scheme):
                    self._env_proxies[scheme] = _Proxy(env[scheme])
            self._no_proxy += _host_list(env.get("no", ""))
        self._idle = []
        self._lock = threading.Lock()
        forget_connections_after_fork(self)

    # -- configuration helpers --------------------------------------------

    def ssl_context(self):
        """The TLS context for HTTPS backends, made on first use."""
        if self._ssl_context is None:
            self._ssl_context = make_ssl_context(*self._ssl_args)
        return self._ssl_context

    def proxy_for(self, scheme, host):
        """The upstream proxy for a backend, or ``None`` to connect directly."""
        proxy = self._proxy or self._env_proxies.get(scheme)
        if proxy is None:
            return None
        if self._no_proxy and urllib.request.proxy_bypass_environment(
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

    def idle_connections(self):
        """How many open keep-alive connections the idle ``Http`` objects hold."""
        with self._lock:
            clients = list(self._idle)
        return sum(client.open_connections() for client in clients)

    def forget_connections(self):
        self._idle = []
        self._lock = threading.Lock()

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for client in idle:
            client.discard()

    # -- one exchange ---------------------------------------------------------

    def request(self, scheme, host, port, method, target, headers,
                body=None, body_length=None):
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
        lower = {}
        for name, value in wire:
            lname = name.lower()
            lower[lname] = lower[lname] + ", " + value if lname in lower else value
        ctx.lower = lower
        ctx.host_header = lower.get("host", "")
        ctx.accept_encoding = lower.get("accept-encoding")
        ctx.cacheable = (self._store is not None and method == "GET" and "#" not in target
                         and not any(name in lower for name in _PRIVATE_REQUEST)
                         and not any(name in lower for name in _CONDITIONAL_REQUEST))
        if ctx.cacheable:
            h2headers = dict(lower)
        else:  # httplib2 must not answer from (or for) a cache that is not in play
            h2headers = {k: v for k, v in lower.items() if k not in ("cache-control", "pragma")}
        ctx.uri = "%s://%s%s" % (scheme, ctx.authority, target)

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
                raise mapped from None
            if any(r.leftover for r in ctx.responses):
                log.warning("%s sent bytes after the end of a response; connection discarded",
                            backend)
                client.discard()
            else:
                client.finish()
            return self._response(ctx, h2response, content, backend)
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
        while length is None or total < length:
            want = BUFSIZE if length is None else min(BUFSIZE, length - total)
            try:
                data = body.read(want)
            except RequestBodyError:
                raise
            except Exception as exc:
                raise RequestBodyError("reading the request body failed: %s" % exc) from exc
            if not data:
                if length is not None:
                    raise RequestBodyError("request body ended after %d of %d bytes"
                                           % (total, length))
                break
            total += len(data)
            if total > limit:
                raise RequestTooLarge(self._too_large_request(None))
            parts.append(data)
        return b"".join(parts)

    def _too_large_request(self, size):
        return ("the request body%s is larger than the %d bytes the httplib2 transport "
                "buffers (max_request_body)" % (" of %d bytes" % size if size is not None else "",
                                               self.max_request_body))

    def _response(self, ctx, h2response, content, backend):
        raw = ctx.responses[-1] if ctx.responses else None
        if raw is not None and not h2response.fromcache and raw.status == h2response.status:
            # From the wire: the headers as the backend sent them, in order.
            return Response(raw.status, raw.reason, list(raw.header_list),
                            b"" if ctx.method == "HEAD" else content)
        # From the cache (or httplib2's own 504 for "only-if-cached"): its
        # header names are lower-cased and repeated ones joined with ", ".
        headers = []
        for key, value in h2response.items():
            if (key == "status" or key.startswith("-") or key in HOP_BY_HOP
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
        if raw is None and "date" in h2response:
            age = _age(h2response["date"])
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


def _canonical(name):
    special = _SPECIAL_NAMES.get(name)
    if special:
        return special
    return "-".join(part.capitalize() for part in name.split("-"))


def _age(date):
    try:
        stamp = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0, int(time.time() - stamp))


class _Exchange:
    """What one request needs while httplib2 runs it (one thread, one ``Http``)."""

    __slots__ = ("method", "target", "authority", "uri", "wire", "lower", "host_header",
                 "accept_encoding", "cacheable", "normalized", "responses", "phase",
                 "failed", "sent_authorization", "proxy")

    def __init__(self):
        self.normalized = {}
        self.responses = []
        self.phase = "exchange"
        self.failed = None
        self.sent_authorization = False
        self.proxy = None

    def wire_headers(self, h2headers):
        """The client's headers, plus what httplib2 added that may go to the backend."""
        normalized = self.normalized
        extra = []
        for name in _ADDED_BY_HTTPLIB2:
            value = h2headers.get(name)
            if value is not None and value != normalized.get(name):
                if _BAD_VALUE(str(value)):
                    raise InvalidRequest("httplib2 produced an invalid %s header" % name)
                extra.append((name, str(value)))
        names = {name for name, _ in extra}
        self.sent_authorization = "authorization" in self.lower or "authorization" in names
        if not extra:
            return list(self.wire)
        return ([(n, v) for n, v in self.wire if n.lower() not in names]
                + [(_canonical(n), v) for n, v in extra])


class _Client:
    """One ``httplib2.Http`` with its connection classes and cache view; one user at a time."""

    def __init__(self, transport):
        self._transport = weakref.ref(transport)  # the transport holds its idle clients
        self.ctx = None
        # Everything below points back to this client weakly: no reference
        # cycle, so a dropped transport closes its sockets at once, not at
        # the next garbage collection.
        ref = weakref.ref(self)
        store = transport._store
        h = _Http(cache=_CacheView(store, ref) if store is not None else None,
                  timeout=transport.read_timeout, proxy_info=None)
        h.follow_redirects = False
        h.follow_all_redirects = False
        h.optimistic_concurrency_methods = []
        h.force_exception_to_status_code = False
        h.client_ref = ref
        for user, password, domain in transport.credentials:
            h.add_credentials(user, password, domain)
        self.http = h
        self.classes = {
            "http": type("HTTPConnection", (_HTTPConnection,), {"client_ref": ref}),
            "https": type("HTTPSConnection", (_HTTPSConnection,), {"client_ref": ref}),
        }

    @property
    def transport(self):
        return self._transport()

    def prepare(self):
        """Close connections that went stale while idle; forget closed ones."""
        connections = self.http.connections
        now = time.monotonic()
        for key, conn in list(connections.items()):
            sock = conn.sock
            if sock is not None and (now - conn.idle_since > self.transport.idle_timeout
                                     or not _looks_alive(sock)):
                conn.close()
                sock = None
            if sock is None:
                del connections[key]

    def finish(self):
        now = time.monotonic()
        for conn in self.http.connections.values():
            conn.idle_since = now

    def discard(self):
        """Close every connection (never ``Http.close()``: it forgets the credentials)."""
        connections, self.http.connections = self.http.connections, {}
        for conn in connections.values():
            try:
                conn.close()
            except OSError:
                pass

    def open_connections(self):
        return sum(1 for conn in self.http.connections.values() if conn.sock is not None)


def _looks_alive(sock):
    """An idle keep-alive socket must have nothing to read: data or EOF means stale."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    try:
        return not select.select((sock,), (), (), 0)[0]
    except (OSError, ValueError):
        return False


class _Http(httplib2.Http):
    client_ref = None

    def _normalize_headers(self, headers):
        # httplib2's own version runs each value through re.sub() as a
        # replacement template (a backslash in a header becomes an escape).
        normalized = {str(name).lower(): str(value) for name, value in headers.items()}
        self.client_ref().ctx.normalized = dict(normalized)
        return normalized

    def _auth_from_challenge(self, host, request_uri, headers, response, content):
        # Basic and digest only: httplib2 would also build a GoogleLogin
        # authorization, which posts the credentials to www.google.com.
        challenges = httplib2.auth._parse_www_authenticate(response, "www-authenticate")
        for cred in self.credentials.iter(host):
            for scheme in ("digest", "basic"):
                if scheme in challenges:
                    yield httplib2.AUTH_SCHEME_CLASSES[scheme](
                        cred, host, request_uri, headers, response, content, self)


# -- connections and responses ------------------------------------------------------

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

    def begin(self):
        if self.headers is not None:
            return
        for _ in range(MAX_INTERIM):
            version, status, reason, headers, framing = parse_response_head(self._read_head(), None)
            if status >= 200:
                break
            if status == 101:
                raise BadBackendResponse("backend switched protocols (101), which a WSGI "
                                         "proxy cannot carry")
            # 100 Continue, 103 Early Hints...: WSGI cannot pass them on.
        else:
            raise BadBackendResponse("too many interim (1xx) responses")
        length, chunked, conn_tokens = framing
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
        no_body = self._method == "HEAD" or status in (204, 304)
        self.chunked = chunked and not no_body
        self.chunk_left = None
        self.length = 0 if no_body else (None if chunked else length)
        keep_alive = version == "1.1" and "close" not in conn_tokens
        self.will_close = not keep_alive or (not self.chunked and self.length is None)

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
    via_proxy = None       # an upstream proxy taking absolute-form requests
    response_class = _HTTPResponse
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
        self.via_proxy = proxy if proxy and not self.tls else None
        ctx.phase = "exchange"

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


def _tunnel(sock, proxy, host, port):
    """Ask the upstream proxy for a tunnel to ``host:port`` (HTTP ``CONNECT``)."""
    hostport = "%s:%d" % ("[%s]" % host if ":" in host else host, port)
    lines = ["CONNECT %s HTTP/1.1" % hostport, "Host: %s" % hostport]
    if proxy.authorization:
        lines.append("Proxy-Authorization: %s" % proxy.authorization)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(4096)
        if not data:
            raise BackendUnavailable("upstream proxy %s closed the connection instead of "
                                     "answering CONNECT" % proxy.url)
        buf += data
        if len(buf) > MAX_HEAD:
            raise BadBackendResponse("upstream proxy %s sent an oversized CONNECT answer"
                                     % proxy.url)
    head, _, rest = buf.partition(b"\r\n\r\n")
    match = _STATUS_LINE(head)
    if match is None or not 200 <= int(match.group(1)) < 300:
        first = head.split(b"\r\n", 1)[0].decode("latin-1")
        raise BackendUnavailable("upstream proxy %s refused CONNECT to %s: %r"
                                 % (proxy.url, hostport, first[:80]))
    if rest:
        raise BadBackendResponse("upstream proxy %s sent data before the TLS handshake"
                                 % proxy.url)


# -- the shared cache ---------------------------------------------------------------

class _AtomicFileCache(httplib2.FileCache):
    """httplib2's FileCache, but a reader never sees a half-written entry."""

    def set(self, key, value):
        path = os.path.join(self.cache, self.safe(key))
        fd, tmp = tempfile.mkstemp(dir=self.cache, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(value)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def delete(self, key):
        try:
            os.remove(os.path.join(self.cache, self.safe(key)))
        except FileNotFoundError:
            pass


class _CacheView:
    """The cache as one ``Http`` sees it: the shared store behind the shared-cache rules."""

    def __init__(self, store, client_ref):
        self.store = store
        self.client_ref = client_ref

    def _key(self, key):
        return "%s host=%s" % (key, self.client_ref().ctx.host_header.lower())

    def get(self, key):
        ctx = self.client_ref().ctx
        if not ctx.cacheable:
            return None
        value = self.store.get(self._key(key))
        if value is None:
            return None
        why = _refuse(value, ctx, serving=True)
        if why:
            log.debug("not serving %s from the cache: %s", key, why)
            return None
        return value

    def set(self, key, value):
        ctx = self.client_ref().ctx
        if not ctx.cacheable:
            return
        why = _refuse(value, ctx, serving=False)
        try:
            if why:
                log.debug("not caching %s: %s", key, why)
                self.store.delete(self._key(key))
            else:
                self.store.set(self._key(key), value)
        except OSError as exc:
            log.warning("cache directory %s: %s", self.store.cache, exc)

    def delete(self, key):
        try:
            self.store.delete(self._key(key))
        except OSError as exc:
            log.warning("cache directory %s: %s", self.store.cache, exc)


def _cache_control(value):
    directives = {}
    for part in (value or "").split(","):
        name, _, arg = part.partition("=")
        name = name.strip().lower()
        if name:
            directives[name] = arg.strip().strip('"')
    return directives


def _refuse(value, ctx, serving):
    """Why a cache entry may not be stored (or served), or ``None`` when it may."""
    head, sep, content = value.partition(b"\r\n\r\n")
    if not sep:
        return "no header block"
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return "non-ASCII headers"
    msg = email.message_from_string(text)
    if msg.get("status") not in ("200", "203"):
        return "status %s" % msg.get("status")
    if not serving and ctx.sent_authorization:
        return "the request carried credentials"
    if not serving and ctx.method != "GET":  # (ctx.cacheable implies GET: a second guard)
        return "not a GET"
    for name, field in msg.items():
        if field.startswith("=?"):
            return "an encoded header"
    if "set-cookie" in msg:
        return "Set-Cookie"
    if "-x-permanent-redirect-url" in msg:
        return "a redirect"
    cc = _cache_control(", ".join(msg.get_all("cache-control") or ()))
    if "private" in cc or "no-store" in cc:
        return "Cache-Control: private or no-store"
    if "s-maxage" in cc and cc.get("s-maxage") != cc.get("max-age"):
        return "s-maxage differs from max-age"
    if any(v.strip() == "*" for v in ",".join(msg.get_all("vary") or ()).split(",")):
        return "Vary: *"
    length = msg.get("content-length")
    if length is not None and length.strip() != str(len(content)):
        return "Content-Length does not match the body"
    coding = msg.get(_CE_MARKER)
    if serving and coding and not _accepts(ctx.accept_encoding, coding):
        return "the client does not accept Content-Encoding %s" % coding
    return None


def _accepts(accept_encoding, coding):
    """Does an Accept-Encoding value (``None``: no header, identity only) allow ``coding``?"""
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return True
    if not accept_encoding:
        return False
    aliases = {"x-gzip": "gzip", "x-compress": "compress"}
    coding = aliases.get(coding, coding)
    star = None
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        name = aliases.get(name.strip().lower(), name.strip().lower())
        q = 1.0
        for param in params.split(";"):
            key, _, val = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        if name == coding:
            return q > 0
        if name == "*":
            star = q > 0
    return bool(star)
