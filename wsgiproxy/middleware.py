"""WSGIProxyMiddleware: rebuild the original environ behind a proxy, trusting nothing unverified.

The receiving end of ``WSGIProxyApp``, and a stricter
cousin of Werkzeug's ``ProxyFix`` for other front proxies (nginx, HAProxy,
load balancers).  All parsing and signature checking lives in
:mod:`wsgiproxy.protocol`; this module decides what to believe and rewrites
the environ.  See ``docs/middleware.rst``.
"""

import functools
import io
import logging

from .errors import Forbidden
from .responses import error_response
from .protocol import (
    DEFAULT_MAX_SIGNED_BODY, DEFAULT_NONCE_CAPACITY, DEFAULT_SIGNATURE_WINDOW, KEY_KINDS,
    LOOPBACK, PROTOCOL_VERSION, MemoryNonceStore, ProtocolError, SecretKeys, SignatureError, TrustedNetworks,
    decode_key_header, decode_path_header, default_port, join_host, key_header_kind,
    nth_from_right, parse_forwarded, parse_node, parse_signature, split_host, verify_request,
)

__all__ = ["WSGIProxyMiddleware"]

log = logging.getLogger("wsgiproxy.middleware")

_PROTOCOL_PREFIX = "HTTP_X_WSGIPROXY_"
_SIGNATURE_KEY = "HTTP_X_WSGIPROXY_SIGNATURE"
_VERSION_KEY = "HTTP_X_WSGIPROXY_VERSION"
_SCHEMES = ("http", "https")
_RESERVED_KEY_PREFIXES = ("wsgi.", "wsgiproxy.", _PROTOCOL_PREFIX)
_KIND_ORDER = {kind: i for i, kind in enumerate(KEY_KINDS)}
_ORIG_KEYS = ("REMOTE_ADDR", "wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT",
              "SCRIPT_NAME", "PATH_INFO")


class _NonceStoreFailed(Exception):
    """The nonce store raised: a signed request cannot be checked for replay (answered 503)."""


class _GuardedNonceStore:
    """Turns any exception of a nonce store into :class:`_NonceStoreFailed` (fail closed)."""

    __slots__ = ("store",)

    def __init__(self, store):
        self.store = store

    def check_and_add(self, key_id, nonce, expires_at):
        try:
            return self.store.check_and_add(key_id, nonce, expires_at)
        except Exception as exc:
            raise _NonceStoreFailed(str(exc) or type(exc).__name__) from exc


def _header(environ, key):
    """A header's value stripped of whitespace, or None when absent or empty (empty = absent)."""
    value = environ.get(key)
    if not isinstance(value, str):
        return None
    value = value.strip(" \t")
    return value or None


def _check_scheme(value, header):
    scheme = value.strip(" \t").lower()
    if scheme not in _SCHEMES:
        raise ProtocolError("%s must be http or https, not %r" % (header, value[:40]))
    return scheme


def _check_port(value, what):
    text = str(value).strip(" \t")
    if not text.isdigit() or not text.isascii() or not 0 < int(text) <= 65535:
        raise ProtocolError("%s must be a port number, not %r" % (what, text[:40]))
    return str(int(text))


def _path_prefix(value, header):
    """A path-prefix header (X-Forwarded-Prefix, -Script-Name...) as SCRIPT_NAME: decoded, no
    trailing slash, and starting with '/' unless empty."""
    path = decode_path_header(value, header).rstrip("/")
    if path and not path.startswith("/"):
        raise ProtocolError("%s gives %r, which does not start with /" % (header, path[:200]))
    return path


def _named(header, func, *args):
    """Call a protocol parser and prefix its error with the header it came from."""
    try:
        return func(*args)
    except ProtocolError as exc:
        message = str(exc)
        if message.startswith(header + ":"):
            raise
        raise ProtocolError("%s: %s" % (header, message)) from None


def _networks(spec, option):
    """The TrustedNetworks of an address option; a bad item is a ValueError naming it."""
    if not spec:
        return TrustedNetworks()
    try:
        return TrustedNetworks(spec)
    except ValueError as exc:
        raise ValueError("%s: %s" % (option, exc)) from None


class _State:
    """The request identity being rebuilt; written to the environ only once all checks pass."""

    def __init__(self, environ):
        self.scheme = environ.get("wsgi.url_scheme") or "http"
        self.host = environ.get("HTTP_HOST")
        self.server_name = environ.get("SERVER_NAME")
        self.server_port = environ.get("SERVER_PORT")
        self.remote_addr = environ.get("REMOTE_ADDR")
        self.remote_port = None
        self.script_name = environ.get("SCRIPT_NAME") or ""
        self.path_info = environ.get("PATH_INFO") or ""
        self.host_set = False
        self.port_set = False  # HTTP_HOST's port comes from set_port: rebuilt by write()

    def set_host(self, value, header):
        name, port = _named(header, split_host, value)
        self.host = value.strip(" \t")
        self.server_name = name
        self.server_port = None if port is None else str(port)
        self.host_set = True
        self.port_set = False

    def host_name(self):
        if self.host:
            return _named("Host", split_host, self.host)[0]
        return self.server_name or "localhost"

    def set_port(self, port):
        """The port from X-Forwarded-Port or the ``port`` option: SERVER_PORT, and the port
        of HTTP_HOST -- left out there by write() when it is the default of the final scheme."""
        self.server_port = port
        self.port_set = True

    def write(self, environ):
        if self.host_set and self.server_port is None:
            self.server_port = str(default_port(self.scheme))
        if self.port_set and self.host:
            self.host = join_host(self.host_name(), self.server_port, self.scheme)
        values = {"wsgi.url_scheme": self.scheme, "HTTP_HOST": self.host,
                  "SERVER_NAME": self.server_name, "SERVER_PORT": self.server_port,
                  "REMOTE_ADDR": self.remote_addr, "REMOTE_PORT": self.remote_port,
                  "SCRIPT_NAME": self.script_name, "PATH_INFO": self.path_info}
        for key, value in values.items():
            if value is not None:
                environ[key] = value


class WSGIProxyMiddleware:
    """Rebuild the environ of a request that came through WSGIProxy or another proxy.

    Anyone can send the headers a proxy adds, and believing them lets a
    client choose its own IP address, host name or ``REMOTE_USER``.  They
    come in two families, believed from different senders:

    *front-proxy headers*
        ``X-Forwarded-For``, ``-Proto``, ``-Host``, ``-Port`` and
        ``-Prefix`` (each as its ``x_*`` count says), or RFC 7239
        ``Forwarded`` instead of the first four (``forwarded``): what nginx,
        HAProxy or a load balancer write about their own client.
    *WSGIProxy identity headers*
        ``X-WSGIProxy-Version``, the ``X-WSGIProxy-Str-N`` (``-Unicode-``,
        ``-Json-``, ``-Pickle-``) key headers, ``X-Forwarded-Server``,
        ``X-Forwarded-Scheme``, ``X-Forwarded-Script-Name``,
        ``X-Script-Name`` and ``X-Traversal-Path``: what ``WSGIProxyApp``
        writes.  Plain reverse proxies pass these on from the client
        unchanged, so only a sender that removes the client's own copies
        (``WSGIProxyApp`` does) may be believed for them.

    Who is believed for what:

    ================================  ===========================================
    request                           believed
    ================================  ===========================================
    valid signature (any peer)        both families; pickles too
    bad signature (any peer)          nothing: 403 with the reason
    unsigned, peer in ``trust_ips``   both families; pickles only with
                                      ``allow_pickle_from_trusted_ips``
    unsigned, peer in                 front-proxy headers only; a pickle
    ``front_proxy_ips``               header is a 403
    unsigned, any other peer          nothing (a pickle header is a 403)
    ================================  ===========================================

    Headers that are not believed are not parsed either (a malformed one is
    no 400), and a peer in both lists counts as ``trust_ips``.  Without
    ``secret_file`` a signature is ignored: the request counts as unsigned.
    With ``secret_file``,
    ``require_signature`` (on by default) answers every unsigned request not
    from ``trust_ips`` 403 "missing" -- ``front_proxy_ips`` peers included,
    so ``front_proxy_ips`` with ``secret_file`` needs
    ``require_signature=False`` (else ``ValueError``).  With none of
    ``secret_file``, ``trust_ips`` and ``front_proxy_ips``, loopback peers
    are trusted as if listed in ``trust_ips``, and a warning is logged.
    Whatever is believed, the ``X-WSGIProxy-*`` headers are removed from
    the environ before the app is called.

    ``app``
        The WSGI application to call with the rebuilt environ.
    ``secret_file``
        Path of the file shared with ``WSGIProxyApp``
        (or a :class:`~wsgiproxy.protocol.SecretKeys`).  Requests signed with
        one of its keys are trusted; when it is set, unsigned requests are
        refused (403 "missing") unless they come from ``trust_ips`` or
        ``require_signature`` is false.  Re-read when it changes.
    ``trust_ips``
        Addresses and CIDR ranges (list or comma/space separated string,
        IPv4 and IPv6) whose unsigned requests are trusted like signed ones:
        list only ``WSGIProxyApp`` hosts (or proxies that remove every
        header named above from their clients' requests); for nginx and the
        like use ``front_proxy_ips``.  ``"*"`` trusts everyone, as the
        original WSGIProxy did: unsafe unless the server is unreachable
        except through the proxy.
    ``prefix``
        Force ``SCRIPT_NAME`` to this value (``PATH_INFO`` unchanged).
    ``pop_prefix``
        Move this leading part of ``PATH_INFO`` to ``SCRIPT_NAME``; a request
        outside it gets a 400.  Excludes ``prefix``.
    ``scheme``
        Force ``wsgi.url_scheme`` (``http`` or ``https``).
    ``host``
        Force ``HTTP_HOST``, ``SERVER_NAME`` and ``SERVER_PORT`` from
        ``name[:port]`` (the port defaults to the scheme's).  Excludes
        ``domain`` and ``port``.
    ``domain``
        Force the host name, keeping the request's port.
    ``port``
        Force the port, keeping the request's host name.  As with
        ``X-Forwarded-Port``, ``SERVER_PORT`` is set and the port is left
        out of ``HTTP_HOST`` when it is the default of the final scheme.
    ``x_for``, ``x_proto``, ``x_host``, ``x_port``, ``x_prefix``
        Werkzeug ``ProxyFix`` semantics: how many trusted proxies set
        ``X-Forwarded-For``/``-Proto``/``-Host``/``-Port``/``-Prefix``; the
        value that many places from the right is used, a header with fewer
        values is ignored, 0 ignores the header.

    Keyword-only options:

    ``forwarded`` (0)
        How many trusted proxies append to the RFC 7239 ``Forwarded``
        header; when above 0 its ``for``/``proto``/``host`` are used *instead
        of* ``X-Forwarded-For/-Proto/-Host/-Port``, which are then ignored (a
        proxy that writes one family often passes the other through from the
        client unchecked).
    ``front_proxy_ips`` (None)
        Addresses and CIDR ranges, as ``trust_ips``, of front proxies
        (nginx, HAProxy, load balancers) whose unsigned requests get their
        front-proxy headers applied, and nothing else: their WSGIProxy
        identity headers are ignored and their pickles refused.  ``"*"``
        lets every peer choose its address, scheme and host (a warning is
        logged).  With ``secret_file``, needs ``require_signature=False``.
    ``signature_window`` (300)
        Seconds a signature's timestamp may differ from this server's clock.
    ``nonce_store`` (None: a :class:`~wsgiproxy.protocol.MemoryNonceStore`)
        Where used nonces are remembered to refuse replays; share one
        (e.g. :class:`~wsgiproxy.redisstore.RedisNonceStore`, or
        ``redis://host:port/db`` in the ``.ini``) between processes that
        serve the same secret.  If the store raises, the request is answered
        503 "nonce store unavailable" (fail closed).
    ``nonce_cache_size`` (500000)
        Size cap of the default in-memory nonce store.
    ``require_signature`` (None: true when ``secret_file`` is set)
        Refuse unsigned requests from peers not in ``trust_ips`` with 403
        (``front_proxy_ips`` peers included).  When false they are served,
        with the front-proxy headers applied from ``front_proxy_ips`` peers
        and every forwarded header ignored from others.
    ``require_body_digest`` (False)
        Refuse a signed request whose body is not covered by the signature.
    ``max_signed_body_size`` (1 MiB)
        Largest body read to check a signed body digest (it is held in
        memory); a larger one is refused.  The body is read only once the
        key, the HMAC (which covers the claimed digest) and the time window
        have been checked, and the nonce is recorded only after the body
        matched: a request that fails any check does not use its nonce up.
    ``allow_pickle_from_trusted_ips`` (False)
        Also unpickle ``X-WSGIProxy-Pickle-*`` headers from unsigned requests
        of ``trust_ips`` peers.  Unpickling runs arbitrary code: anyone who
        can connect from those addresses can then run code in this process.
        Without it pickles need a valid signature, else 403.

    Errors are answered, never raised: a malformed header gets a 400 and a
    refused signature a 403 naming the reason (HTML, or JSON when the client
    prefers it); both are logged to ``wsgiproxy.middleware`` without secrets.
    ``environ["wsgiproxy.orig"]`` keeps the values that were replaced and
    ``environ["wsgiproxy.key_id"]`` the id of the key that verified the
    request (or None).
    """

    def __init__(self, app, secret_file=None, trust_ips=None, prefix=None, pop_prefix=None,
                 scheme=None, host=None, domain=None, port=None, x_for=1, x_proto=1, x_host=0,
                 x_port=0, x_prefix=0, *, forwarded=0, front_proxy_ips=None,
                 signature_window=DEFAULT_SIGNATURE_WINDOW, nonce_store=None,
                 nonce_cache_size=DEFAULT_NONCE_CAPACITY, require_signature=None,
                 require_body_digest=False,
                 max_signed_body_size=DEFAULT_MAX_SIGNED_BODY,
                 allow_pickle_from_trusted_ips=False):
        self.app = app
        if secret_file is None or isinstance(secret_file, SecretKeys):
            self.keys = secret_file
        else:
            self.keys = SecretKeys(secret_file)
        self.trust_ips_configured = bool(trust_ips)
        self.trusted = _networks(trust_ips, "trust_ips")
        if self.trusted.everything:
            log.warning("trust_ips = * : every peer may set forwarded headers (host, scheme, "
                        "client address, keys); only safe if nothing but the proxy can connect")
        self.front_proxies = _networks(front_proxy_ips, "front_proxy_ips")
        if self.front_proxies.everything:
            log.warning("front_proxy_ips = * : every peer may set X-Forwarded-* and Forwarded "
                        "(client address, scheme, host); only safe if nothing but the front "
                        "proxy can connect")
        if self.keys is None and not self.trusted and not self.front_proxies:
            self.trusted = LOOPBACK
            log.warning("neither secret_file nor trust_ips nor front_proxy_ips is configured: "
                        "trusting forwarded headers from loopback peers (127.0.0.0/8, ::1) only")

        if prefix is not None and pop_prefix is not None:
            raise ValueError("prefix and pop_prefix exclude each other: prefix sets SCRIPT_NAME, "
                             "pop_prefix moves part of PATH_INFO into it")
        self.prefix = self._config_path(prefix, "prefix", allow_empty=True)
        self.pop_prefix = self._config_path(pop_prefix, "pop_prefix", allow_empty=False)
        self.scheme = None
        if scheme is not None:
            if str(scheme).lower() not in _SCHEMES:
                raise ValueError("scheme must be http or https, not %r" % (scheme,))
            self.scheme = str(scheme).lower()
        if host is not None and (domain is not None or port is not None):
            raise ValueError("host excludes domain and port: give host = name:port, or "
                             "domain and/or port")
        self.host = None
        if host is not None:
            try:
                self.host = split_host(str(host))
            except ProtocolError:
                raise ValueError("host must be name[:port], not %r" % (host,)) from None
        self.domain = None
        if domain is not None:
            try:
                name, domain_port = split_host(str(domain))
            except ProtocolError:
                domain_port = True
            if domain_port is not None:
                raise ValueError("domain must be a host name without a port, not %r" % (domain,))
            self.domain = name
        self.port = None
        if port is not None:
            try:
                self.port = _check_port(port, "port")
            except ProtocolError:
                raise ValueError("port must be a number from 1 to 65535, not %r" % (port,)) \
                    from None

        for name, value in (("x_for", x_for), ("x_proto", x_proto), ("x_host", x_host),
                            ("x_port", x_port), ("x_prefix", x_prefix), ("forwarded", forwarded)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError("%s must be a whole number of trusted proxies (0 or more), "
                                 "not %r" % (name, value))
        self.x_for, self.x_proto, self.x_host = x_for, x_proto, x_host
        self.x_port, self.x_prefix, self.forwarded = x_port, x_prefix, forwarded

        if signature_window <= 0:
            raise ValueError("signature_window must be positive")
        if max_signed_body_size < 0:
            raise ValueError("max_signed_body_size must not be negative")
        self.signature_window = signature_window
        self.max_signed_body_size = max_signed_body_size
        if require_signature is None:
            require_signature = self.keys is not None
        if (require_signature or require_body_digest) and self.keys is None:
            raise ValueError("require_signature and require_body_digest need a secret_file")
        self.require_signature = bool(require_signature)
        if self.require_signature and self.front_proxies:
            raise ValueError("front_proxy_ips has no effect while require_signature is on: "
                             "unsigned requests from those proxies would be refused. Set "
                             "require_signature = false to serve them with their X-Forwarded-* "
                             "headers applied")
        self.require_body_digest = bool(require_body_digest)
        if allow_pickle_from_trusted_ips and not self.trust_ips_configured:
            raise ValueError("allow_pickle_from_trusted_ips needs trust_ips")
        if allow_pickle_from_trusted_ips:
            log.warning("allow_pickle_from_trusted_ips is on: any process that can connect from "
                        "%r can run code in this one", self.trusted)
        self.allow_pickle_from_trusted_ips = bool(allow_pickle_from_trusted_ips)
        if nonce_store is None and self.keys is not None:
            nonce_store = MemoryNonceStore(max_entries=nonce_cache_size)
        self.nonce_store = nonce_store

    @staticmethod
    def _config_path(value, name, allow_empty):
        if value is None:
            return None
        value = str(value).rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("%s must start with /, not %r" % (name, value))
        if not value and not allow_empty:
            raise ValueError("%s must not be empty or /" % name)
        return value

    # -- request handling ---------------------------------------------------

    def __call__(self, environ, start_response):
        try:
            self._rebuild(environ)
        except (SignatureError, Forbidden) as exc:
            return self._refuse(environ, start_response, 403, exc)
        except ProtocolError as exc:
            return self._refuse(environ, start_response, 400, exc)
        except _NonceStoreFailed as exc:
            log.error("nonce store unavailable, refusing a signed request from %s for %r: %s",
                      environ.get("REMOTE_ADDR"), environ.get("PATH_INFO"), exc)
            return error_response(environ, start_response, 503,
                                  "nonce store unavailable: the signature cannot be checked "
                                  "for replay now; try again later", [("Retry-After", "5")])
        return self.app(environ, start_response)

    def _refuse(self, environ, start_response, code, exc):
        peer = environ.get("REMOTE_ADDR")
        path = environ.get("PATH_INFO")
        if code == 403:
            log.warning("refused request from %s for %r: %s", peer, path, exc)
        else:
            log.info("bad request from %s for %r: %s", peer, path, exc)
        return error_response(environ, start_response, code, str(exc))

    def _rebuild(self, environ):
        """Check, decode and rewrite ``environ`` in place; raise ProtocolError to refuse it."""
        protocol_keys = [k for k in environ
                         if isinstance(k, str) and k.startswith(_PROTOCOL_PREFIX)]
        has_pickle = any(key_header_kind(k) == "Pickle" and _header(environ, k) is not None
                         for k in protocol_keys)
        peer = environ.get("REMOTE_ADDR")
        ip_trusted = peer in self.trusted
        front_proxy = not ip_trusted and peer in self.front_proxies

        key_id = None
        signature = _header(environ, _SIGNATURE_KEY)
        if self.keys is not None and signature is not None:
            key_id = self._verify(environ, signature)
        elif signature is not None:
            log.debug("ignoring X-WSGIProxy-Signature: no secret_file is configured")
        signed = key_id is not None

        pickle_ok = signed or (ip_trusted and self.allow_pickle_from_trusted_ips)
        if has_pickle and not pickle_ok:
            raise Forbidden("X-WSGIProxy-Pickle headers are only accepted on requests with a "
                             "valid X-WSGIProxy-Signature; nothing was unpickled")
        if self.keys is not None and self.require_signature and not signed and not ip_trusted:
            raise SignatureError("missing", "this server only accepts signed requests")

        state = _State(environ)
        keys = {}
        if signed or ip_trusted:
            # A WSGIProxyApp (or its signature) vouches for everything.
            version = _header(environ, _VERSION_KEY)
            if version is not None and version != PROTOCOL_VERSION:
                raise ProtocolError("X-WSGIProxy-Version %r is not supported (this side speaks %s)"
                                    % (version[:20], PROTOCOL_VERSION))
            self._apply_front_proxies(environ, state)
            self._apply_wsgiproxy(environ, state)
            self._apply_traversal(environ, state)
            self._apply_forwarded_prefix(environ, state)
            self._apply_script_name(environ, state)
            keys = self._decode_keys(environ, protocol_keys, pickle_ok)
        elif front_proxy:
            # nginx and the like: only the headers they write themselves; they pass
            # WSGIProxy's headers on from the client unchanged.
            self._apply_front_proxies(environ, state)
            self._apply_forwarded_prefix(environ, state)
        self._apply_forced(state)

        orig = {k: environ[k] for k in _ORIG_KEYS if k in environ}
        state.write(environ)
        for k in protocol_keys:
            environ.pop(k, None)
        environ.update(keys)
        environ["wsgiproxy.orig"] = orig
        environ["wsgiproxy.key_id"] = key_id

    def _verify(self, environ, signature):
        parsed = parse_signature(signature)
        body = None
        if parsed.body_digest != "-":
            self._check_body_length(environ)  # cheap: Content-Length only, nothing read
            # Read only once verify_request has checked the key, the HMAC over the
            # claimed digest and the window (and before it records the nonce).
            body = functools.partial(self._read_body, environ)
        elif self.require_body_digest and self._has_body(environ):
            raise SignatureError("body mismatch", "the request has a body the signature does not "
                                 "cover, and require_body_digest is on")
        path = (environ.get("SCRIPT_NAME") or "") + (environ.get("PATH_INFO") or "")
        try:
            path = path.encode("latin-1")
        except (UnicodeEncodeError, AttributeError):
            raise ProtocolError("SCRIPT_NAME/PATH_INFO are not native strings") from None
        headers = [(k, v) for k, v in environ.items()
                   if isinstance(k, str) and k.startswith("HTTP_")]
        return verify_request(self.keys, signature, environ.get("REQUEST_METHOD") or "",
                              environ.get("HTTP_HOST") or "", path,
                              environ.get("QUERY_STRING") or "", headers,
                              window=self.signature_window,
                              nonce_store=(None if self.nonce_store is None
                                           else _GuardedNonceStore(self.nonce_store)),
                              body=body)

    def _content_length(self, environ):
        text = environ.get("CONTENT_LENGTH")
        if text is None or (isinstance(text, str) and not text.strip()):
            return None
        text = str(text).strip()
        if not (text.isdigit() and text.isascii()):
            raise ProtocolError("Content-Length %r is not a number" % text[:40])
        return int(text)

    def _check_body_length(self, environ):
        length = self._content_length(environ)
        if length is not None and length > self.max_signed_body_size:
            raise SignatureError("body mismatch", "the body is %d bytes, more than "
                                 "max_signed_body_size (%d), so it cannot be checked"
                                 % (length, self.max_signed_body_size))
        return length

    def _read_body(self, environ):
        """Read the body to check its digest, bounded, and give the app a fresh stream of it."""
        limit = self.max_signed_body_size
        length = self._check_body_length(environ)
        stream = environ.get("wsgi.input")
        chunks, size = [], 0
        want = length if length is not None else (limit + 1 if environ.get(
            "wsgi.input_terminated") else 0)
        try:
            while size < want:
                chunk = stream.read(min(want - size, 65536)) if stream is not None else b""
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except (OSError, ValueError) as exc:
            raise ProtocolError("the request body could not be read: %s" % exc) from None
        data = b"".join(chunks)
        if length is not None and size < length:
            raise ProtocolError("the body ended after %d of its %d bytes" % (size, length))
        if size > limit:
            raise SignatureError("body mismatch", "the body is more than max_signed_body_size "
                                 "(%d bytes), so it cannot be checked" % limit)
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        return data

    def _has_body(self, environ):
        length = self._content_length(environ)
        if length is not None:
            return length > 0
        if not environ.get("wsgi.input_terminated") or environ.get("wsgi.input") is None:
            return False
        try:
            first = environ["wsgi.input"].read(1)
        except (OSError, ValueError):
            return True
        if first:
            return True
        environ["wsgi.input"] = io.BytesIO(b"")
        return False

    def _apply_front_proxies(self, environ, state):
        """X-Forwarded-* (or Forwarded) from proxies in front, counted from the right."""
        if self.forwarded:
            raw = _header(environ, "HTTP_FORWARDED")
            elements = _named("Forwarded", parse_forwarded, raw) if raw else []
            if len(elements) >= self.forwarded:
                element = elements[-self.forwarded]
                if "for" in element:
                    state.remote_addr, port = _named("Forwarded for", parse_node, element["for"])
                    if port is not None and port.isdigit():
                        state.remote_port = port
                if "proto" in element:
                    state.scheme = _check_scheme(element["proto"], "Forwarded proto")
                if "host" in element:
                    state.set_host(element["host"], "Forwarded host")
        else:
            value = nth_from_right(_header(environ, "HTTP_X_FORWARDED_FOR"), self.x_for)
            if value:
                state.remote_addr, port = _named("X-Forwarded-For", parse_node, value)
                if port is not None and port.isdigit():
                    state.remote_port = port
            value = nth_from_right(_header(environ, "HTTP_X_FORWARDED_PROTO"), self.x_proto)
            if value:
                state.scheme = _check_scheme(value, "X-Forwarded-Proto")
            value = nth_from_right(_header(environ, "HTTP_X_FORWARDED_HOST"), self.x_host)
            if value:
                state.set_host(value, "X-Forwarded-Host")
            value = nth_from_right(_header(environ, "HTTP_X_FORWARDED_PORT"), self.x_port)
            if value:
                state.set_port(_check_port(value, "X-Forwarded-Port"))

    def _apply_wsgiproxy(self, environ, state):
        """The headers WSGIProxyApp sends: the original scheme, host and paths."""
        value = _header(environ, "HTTP_X_FORWARDED_SCHEME")
        if value:
            state.scheme = _check_scheme(value, "X-Forwarded-Scheme")
        value = _header(environ, "HTTP_X_FORWARDED_SERVER")
        if value:
            state.set_host(value, "X-Forwarded-Server")

    def _apply_traversal(self, environ, state):
        """X-Traversal-Path comes off the physical path: PATH_INFO is the original one."""
        value = _header(environ, "HTTP_X_TRAVERSAL_PATH")
        traversal = decode_path_header(value, "X-Traversal-Path").rstrip("/") if value else ""
        if traversal:
            if not traversal.startswith("/"):
                traversal = "/" + traversal  # the original sender left the slash out
            full = (environ.get("SCRIPT_NAME") or "") + (environ.get("PATH_INFO") or "")
            if not (full == traversal or full.startswith(traversal + "/")):
                raise ProtocolError("The header X-Traversal-Path gives %r but the request path is "
                                    "%r (it should start with X-Traversal-Path)"
                                    % (traversal[:200], full[:200]))
            state.script_name = ""
            state.path_info = full[len(traversal):]

    def _apply_forwarded_prefix(self, environ, state):
        """X-Forwarded-Prefix (a front-proxy header, counted by x_prefix) sets SCRIPT_NAME."""
        value = nth_from_right(_header(environ, "HTTP_X_FORWARDED_PREFIX"), self.x_prefix)
        if value:
            state.script_name = _path_prefix(value, "X-Forwarded-Prefix")

    def _apply_script_name(self, environ, state):
        """WSGIProxy's prefix headers: the SCRIPT_NAME the client saw."""
        value = _header(environ, "HTTP_X_FORWARDED_SCRIPT_NAME")
        if value:
            state.script_name = _path_prefix(value, "X-Forwarded-Script-Name")
        value = _header(environ, "HTTP_X_SCRIPT_NAME")
        if value:
            state.script_name = _path_prefix(value, "X-Script-Name") + state.script_name

    def _decode_keys(self, environ, protocol_keys, allow_pickle):
        """The key headers as ``{environ key: value}``, in Str/Unicode/Json/Pickle order."""
        found = []
        for k in protocol_keys:
            kind = key_header_kind(k)
            if kind is not None and _header(environ, k) is not None:
                found.append((_KIND_ORDER[kind], k))
        found.sort()
        keys = {}
        for _, k in found:
            header = "X-WSGIProxy-" + k[len(_PROTOCOL_PREFIX):].replace("_", "-").title()
            name, value = _named(header, decode_key_header, k, environ[k], allow_pickle)
            if name.startswith(_RESERVED_KEY_PREFIXES):
                raise ProtocolError("%s names the reserved environ key %r" % (header, name[:100]))
            if name in keys:
                raise ProtocolError("environ key %r is sent twice" % name[:100])
            keys[name] = value
        return keys

    def _apply_forced(self, state):
        """The configured values: they win over anything a header said."""
        if self.scheme is not None:
            state.scheme = self.scheme
        if self.host is not None:
            name, port = self.host
            port = default_port(state.scheme) if port is None else port
            state.host = join_host(name, port, state.scheme)
            state.server_name, state.server_port = name, str(port)
        if self.port is not None:
            if not state.host:  # no Host header: make one, as for the other forced values
                state.host = join_host(self.domain or state.host_name())
            state.set_port(self.port)
        if self.domain is not None:
            port = state.server_port or str(default_port(state.scheme))
            state.server_name = self.domain
            state.host = join_host(self.domain, port, state.scheme)
        if self.prefix is not None:
            state.script_name = self.prefix
        elif self.pop_prefix is not None:
            pop, path = self.pop_prefix, state.path_info
            if path == pop or path.startswith(pop + "/"):
                state.script_name += pop
                state.path_info = path[len(pop):]
            else:
                raise ProtocolError("It was expected that all requests would start with the path "
                                    "%r, but got a request with %r" % (pop, path[:200]))
