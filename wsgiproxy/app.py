"""WSGIProxyApp: forward every request to one backend, with the original request's identity.

The backend learns what the proxy hides (the client's Host, scheme, address
and SCRIPT_NAME, and chosen environ keys) from headers described in
:doc:`protocol`; :class:`wsgiproxy.middleware.WSGIProxyMiddleware` on the
backend turns them back into the original environ.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from . import protocol
from .balancer import Balancer, parse_next_upstream
from .cookies import CookieRewriter, RuleInput
from .errors import (
    BodyTooLarge,
    ConfigError,
    InvalidRequest,
    MessageSignatureError,
    MethodNotAllowed,
    WSGIProxyError,
)
from .forwarding import (
    DEFAULT_SKIP,
    INLINE_BODY_MAX,
    EnvironHeaders,
    OutgoingRequest,
    failure_answer,
    outgoing_request,
    quote_path,
    relay,
    request_path,
    safe_target,
    send,
    send_checked,
    send_upgrade,
)
from .keys import new_request_id
from .observe import REQUEST_ID_KEY as REQUEST_ID_ENVIRON
from .observe import SINKS, Observer, Record, RequestIds
from .protocol import rfc9421
from .signing import request_signer
from .transport import Transport, make_transport
from .upgrade import Tunnels, requested_protocols

__all__ = ["WSGIProxyApp", "BodyTooLarge"]

log = logging.getLogger("wsgiproxy.app")

# A port right after href's host in a Location (location_any_port).
_PORT_PREFIX = re.compile(r":[0-9]{1,5}(?=[/?#]|\Z)").match
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Identity headers are ours to set: whatever the client sent under these
# names is dropped, so it can never be signed and believed.
_end_to_end_headers = EnvironHeaders(
    DEFAULT_SKIP | {protocol.environ_key(protocol.FORWARDED),
                    protocol.environ_key(protocol.SCRIPT_NAME_HEADER)},
    (protocol.environ_key(protocol.HEADER_PREFIX), "HTTP_X_FORWARDED_", "HTTP_X_TRAVERSAL_"))
_FORWARDED_FOR_KEY = protocol.environ_key(protocol.FORWARDED_FOR)
_FORWARDED_KEY = protocol.environ_key(protocol.FORWARDED)
_REQUEST_ID_KEY = protocol.environ_key(protocol.REQUEST_ID)
Environ = dict[str, Any]


class _LimitedInput:
    """Wraps ``wsgi.input`` of a body without a length, stopping past ``limit`` bytes."""

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream = stream
        self.left = limit

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.left -= len(data)
        if self.left < 0:
            raise BodyTooLarge("request body larger than the limit")
        return data


def _split_href(href: str) -> Any:
    """The parts of one backend URL; a clear ``ValueError`` for what cannot be one."""
    parts = urlsplit(href)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("href must be http(s)://host[:port][/path][?query], got %r" % href)
    if parts.fragment or parts.username or parts.password:
        raise ValueError("href may not carry a fragment or credentials: %r" % href)
    try:
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        raise ConfigError("href", "the port of %r must be a number from 0 to 65535"
                          % href) from None
    return parts


def _port(parts: Any) -> int:
    """A backend URL's port, the scheme's default when it names none."""
    return parts.port or _DEFAULT_PORTS[parts.scheme]


class WSGIProxyApp:
    """A WSGI app that forwards every request to ``href``.

    :param href: ``http(s)://host[:port][/path][?query]``.  The request path
        is appended to href's path, and href's query to the request's query.
        A list of such URLs, differing only in ``host:port``, makes several
        backends (:doc:`backends`); the ``Host`` sent is the first one's.
    :param secret_file: a file of shared secrets; requests are then signed
        (``X-WSGIProxy-Signature``, or ``hmac-sha256`` with ``rfc9421``) so the
        middleware can trust them.
    :param signature_format: ``"v1"`` (``X-WSGIProxy-Signature``) or
        ``"rfc9421"`` (``Signature-Input``/``Signature``, :doc:`protocol`).
    :param private_key_file: an Ed25519 private key (PEM): requests are signed
        ``ed25519`` with it (``rfc9421`` only; ``secret_file`` is then not
        needed to sign).  Backends verify with the public key alone.
    :param verify_responses: check that every response is signed by the
        backend's middleware (``sign_responses``) and bound to the request it
        answers, before anything is sent to the client: any other response
        is a 502 and its connection is closed (``rfc9421`` and the default
        ``http`` transport only).
    :param response_public_key_file: the backend's Ed25519 public key(s) that
        sign responses; without it, responses are checked with ``secret_file``.
    :param string_keys, unicode_keys, json_keys, pickle_keys: environ keys
        sent as ``X-WSGIProxy-Str-N`` / ``-Unicode-N`` / ``-Json-N`` /
        ``-Pickle-N`` headers (e.g. ``string_keys=["REMOTE_USER"]``).
        Pickled values are only unpickled by a middleware that verified the
        signature, so ``pickle_keys`` needs ``secret_file`` (or ``private_key_file``).
    :param preserve_host: send the client's Host instead of href's host.
    :param trusted_proxies: addresses/CIDR ranges of front proxies whose
        ``X-Forwarded-For`` is kept and appended to; from anyone else it is
        replaced by REMOTE_ADDR.  ``"*"`` trusts every client (unsafe).
    :param forwarded: also send RFC 7239 ``Forwarded`` and
        ``X-Forwarded-Proto``/``X-Forwarded-Host``, for backends without the
        middleware (Django's ``SECURE_PROXY_SSL_HEADER``, Werkzeug's ProxyFix).
    :param rewrite_location: rewrite ``Location``/``Content-Location`` that
        point into href to the URL the client used (default on).
    :param cookie_path, cookie_domain: rewrite the ``Path``/``Domain`` of each
        ``Set-Cookie`` as nginx's ``proxy_cookie_path``/``proxy_cookie_domain``
        do: a mapping FROM -> TO or ``(FROM, TO)`` pairs, the first match wins
        (:mod:`wsgiproxy.cookies`).
    :param allowed_methods: methods to forward; others get 405.  ``None``:
        all methods.
    :param max_body_size: request bodies larger than this get 413.
    :param sign_body_max: when signing, bodies up to this many bytes
        (with a Content-Length) are covered by the signature (0: off).  Such
        bodies are read into memory before they are sent; larger ones stream
        unsigned.  The middleware reads at most its ``max_signed_body_size``
        (1 MiB) to check a digest.
    :param balance, max_fails, fail_timeout, next_upstream, next_upstream_tries, next_upstream_timeout, retry_budget:
        with several backends, how one is chosen and when a request goes on
        to the next (:class:`~wsgiproxy.balancer.Balancer`; unused with one
        backend).
    :param max_tunnels: WebSocket (``Upgrade``) tunnels open at once in this
        process, at most (503 past it; 0: tunnels off, 501).  Tunnels need a
        WSGI server that hands over the client's socket (:doc:`websockets`).
    :param websocket_idle_timeout: close a tunnel after this many seconds
        without a byte either way (``None``: never; ``read_timeout`` does
        not apply to tunnels).
    :param request_ids: send each request's id (``X-WSGIProxy-Request-ID``, signed): a
        ``trusted_proxies`` peer's ``X-Request-ID``, else a new one (:doc:`operations`).
    :param request_id_header: return ``X-Request-ID`` to the client.
    :param access_log: one INFO line per request on ``wsgiproxy.access``.
    :param access_log_format: its format, ``{client}`` and so on.
    :param metrics: count requests in Prometheus metrics (``WSGIProxy[metrics]``).
    :param transport: ``"http"`` (default, streaming), ``"httplib2"``, or a
        :class:`~wsgiproxy.transport.Transport` instance; the remaining
        keyword arguments (``connect_timeout``, ``read_timeout``,
        ``pool_size``, ``ca_certs``, ``verify``...) configure it.
    """

    #: Also rewrite ``Location`` headers that name href's host with any port
    #: (spawn's children: one proxy, and each child listens on a port of its own).
    location_any_port = False

    def __init__(self, href: str | Sequence[str], secret_file: str | None = None,
                 string_keys: Iterable[str] = (), unicode_keys: Iterable[str] = (),
                 json_keys: Iterable[str] = (), pickle_keys: Iterable[str] = (),
                 preserve_host: bool = False, trusted_proxies: Any = (),
                 forwarded: bool = False, rewrite_location: bool = True,
                 cookie_path: RuleInput | None = None, cookie_domain: RuleInput | None = None,
                 allowed_methods: Iterable[str] | None = None, max_body_size: int | None = None,
                 sign_body_max: int = 0,
                 balance: str = "round_robin", max_fails: int = 1, fail_timeout: float = 10.0,
                 next_upstream: str = "error timeout", next_upstream_tries: int = 0,
                 next_upstream_timeout: float = 0.0, retry_budget: float = 20.0,
                 max_tunnels: int = 1000, websocket_idle_timeout: float | None = None,
                 signature_format: str = "v1", private_key_file: str | None = None,
                 verify_responses: bool = False, response_public_key_file: str | None = None,
                 request_ids: bool = True, request_id_header: bool = False,
                 access_log: bool = True, access_log_format: str | None = None,
                 metrics: bool = False, transport: Transport | str = "http",
                 **transport_options: Any) -> None:
        hrefs = [href] if isinstance(href, str) else list(href)
        if not hrefs:
            raise ValueError("href: no URL given")
        backends = [_split_href(one) for one in hrefs]
        parts = backends[0]
        self.href = hrefs[0] if len(hrefs) == 1 else " ".join(hrefs)
        self.hrefs = tuple(hrefs)
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = _port(parts)
        self.host_header = parts.netloc.lower()
        self.path = parts.path.rstrip("/")  # joined with PATH_INFO, which starts with "/"
        self.query = parts.query
        self.traversal_headers = [(name, value) for name, value in (
            (protocol.TRAVERSAL_PATH, self.path),
            (protocol.TRAVERSAL_QUERY_STRING, self.query)) if value]
        self.keys = (tuple(string_keys), tuple(unicode_keys), tuple(json_keys),
                     tuple(pickle_keys))
        self.has_keys = any(self.keys)
        self.secret_keys = protocol.SecretKeys(secret_file) if secret_file else None
        # (One attribute for all of signing: past 30 attributes, CPython 3.11 stops
        # sharing the instance dict's keys and every ``self.x`` of the request path
        # gets slower.)
        #: What signs requests (:class:`~wsgiproxy.signing.RequestSigner`), or ``None``.
        self.signing = request_signer(
            signature_format, self.secret_keys,
            protocol.PrivateKey(private_key_file) if private_key_file else None,
            int(sign_body_max or 0), self.scheme)
        if pickle_keys and self.signing is None:
            raise ValueError("pickle_keys needs secret_file (or private_key_file): the "
                             "middleware only unpickles values from signed requests")
        # Bodies are read whole up to this size (the rest stream): as far as
        # the signature must cover them.
        self.inline_body_max = (max(INLINE_BODY_MAX, self.signing.body_max)
                                if self.signing is not None else INLINE_BODY_MAX)
        self.preserve_host = preserve_host
        self.trusted_proxies = protocol.TrustedNetworks(trusted_proxies) if trusted_proxies else None
        self.forwarded = forwarded
        self.rewrite_location = rewrite_location
        cookies = CookieRewriter(cookie_path, cookie_domain)
        self.cookie_rewriter = cookies if cookies else None  # None: no per-request work
        self.allowed_methods = (frozenset(m.upper() for m in allowed_methods)
                                if allowed_methods else None)
        self.max_body_size = int(max_body_size) if max_body_size is not None else None
        if isinstance(transport, Transport):
            if transport_options:
                raise TypeError("transport options given with a ready transport: %s"
                                % ", ".join(sorted(transport_options)))
            self.transport = transport
        else:
            self.transport = make_transport(transport, **transport_options)
        #: With ``verify_responses``: the keys that verify responses, else ``None``.
        self.response_keys: rfc9421.Verifier | None = None
        if verify_responses:
            self._init_response_checks(response_public_key_file)
        elif response_public_key_file:
            raise ValueError("response_public_key_file needs verify_responses")
        self._location_prefixes = tuple({prefix for one in backends for prefix in (
            "%s://%s%s" % (self.scheme, one.netloc.lower(), self.path), "%s://%s%s" % (
                self.scheme, protocol.join_host(one.hostname, _port(one), self.scheme),
                self.path))})
        #: The WebSocket tunnels: how many, how idle (:class:`~wsgiproxy.upgrade.Tunnels`).
        self.tunnels = Tunnels(max_tunnels, websocket_idle_timeout)
        #: Several backends: the :class:`~wsgiproxy.balancer.Balancer`; one: ``None``.
        self.balancer: Balancer | None = None
        parse_next_upstream(next_upstream)  # a wrong value fails even with one backend
        if len(backends) > 1:
            for one, text in zip(backends[1:], hrefs[1:]):
                if (one.scheme, one.path.rstrip("/"), one.query) != (
                        self.scheme, self.path, self.query):
                    raise ConfigError("href", "the URLs must differ only in host:port: "
                                              "%r and %r" % (hrefs[0], text))
            self.balancer = Balancer(
                [(one.hostname or "", _port(one)) for one in backends], balance, max_fails,
                fail_timeout, next_upstream, next_upstream_tries, next_upstream_timeout,
                retry_budget)
        self._init_observing(request_ids, request_id_header, access_log, access_log_format,
                             metrics)

    def __repr__(self) -> str:
        return "<WSGIProxyApp %s>" % self.href

    @property
    def signature_format(self) -> str:
        """``"v1"`` or ``"rfc9421"`` (``"v1"`` when requests go unsigned)."""
        return self.signing.format if self.signing is not None else "v1"

    @property
    def signer(self) -> Any:
        """What signs requests: the :class:`~wsgiproxy.keys.SecretKeys` (``v1``), an RFC
        9421 signer (``HMACKeys`` over them, or the ``PrivateKey``), or ``None``."""
        return self.signing.keys if self.signing is not None else None

    @property
    def sign_body_max(self) -> int:
        """Bodies up to this many bytes are covered by the signature (0: none)."""
        return self.signing.body_max if self.signing is not None else 0

    def _init_observing(self, request_ids: bool, request_id_header: bool, access_log: bool,
                        access_log_format: str | None, metrics: bool) -> None:
        if request_id_header and not request_ids:
            raise ValueError("request_id_header needs request_ids")
        if metrics:
            from .metrics import enable
            enable()
        # One attribute for all of it: see self.signing on the instance's size.
        #: The request ids, the access log and the metrics (:class:`~wsgiproxy.observe.Observer`).
        self.observer = Observer(access_log, access_log_format, "proxy", RequestIds(
            self.trusted_proxies, request_id_header) if request_ids else None)

    @property
    def request_ids(self) -> RequestIds | None:
        """The request ids (:class:`~wsgiproxy.observe.RequestIds`), or ``None`` (off)."""
        return self.observer.ids

    def _init_response_checks(self, public_key_file: str | None) -> None:
        if self.signature_format != "rfc9421":
            raise ValueError("verify_responses needs signature_format = rfc9421: a response "
                             "is bound to the request's RFC 9421 signature")
        if not self.transport.checks_responses:
            raise ValueError("verify_responses needs the http transport: it checks a response "
                             "before its connection can be used again")
        if public_key_file:
            self.response_keys = protocol.PublicKeys(public_key_file)
        elif self.secret_keys is not None:
            self.response_keys = rfc9421.HMACKeys(self.secret_keys)
        else:
            raise ValueError("verify_responses needs response_public_key_file or secret_file")

    def close(self) -> None:
        """Close the transport's pooled connections."""
        self.transport.close()

    def __call__(self, environ: Environ, start_response: Any,
                 record: Record | None = None) -> Iterable[bytes]:
        """The WSGI application.

        :param record: (from :meth:`_observed` only) what the access log and the
            metrics get of this request.  Servers pass two arguments: the request
            is then observed through :meth:`_observed` when anything wants it.
        """
        if record is None:  # the call from the server
            observer = self.observer
            if observer.ids is not None and observer.ids.respond:
                start_response = observer.ids.start_response(environ, start_response)
            if ((observer.quiet.get(20) is not False or SINKS)  # else nothing observes it
                    and (record := observer.start(environ)) is not None):
                return self._observed(environ, start_response, record)
        url_scheme = environ.get("wsgi.url_scheme", "http")
        client_host = environ.get("HTTP_HOST") or protocol.join_host(
            environ.get("SERVER_NAME", "localhost"), environ.get("SERVER_PORT"), url_scheme)
        try:
            request = self.request_for(environ, url_scheme, client_host)
            if "HTTP_UPGRADE" in environ and (protocols := requested_protocols(environ)):
                response, body = self.tunnels.open(
                    environ, functools.partial(self._send_upgrade, request, protocols, record))
                if response.status == 101:
                    if record is not None:
                        record.status = response.status_line
                    return self.tunnels.run(environ, start_response, response, body)
            elif self.response_keys is not None:
                sender: Any = functools.partial(send_checked, check=functools.partial(
                    self._response_problem, request))
                if record is not None:
                    sender = record.sender(sender)
                if self.balancer is None:
                    response, body = sender(self.transport, self.scheme, self.host, self.port,
                                            request)
                else:
                    response, body = self.balancer.send(self.transport, self.scheme, request,
                                                        sender)
            elif record is not None:
                if self.balancer is None:
                    response, body = record.sender(send)(self.transport, self.scheme, self.host,
                                                         self.port, request)
                else:
                    response, body = self.balancer.send(self.transport, self.scheme, request,
                                                        record.sender(send))
            elif self.balancer is None:
                response, body = send(self.transport, self.scheme, self.host, self.port, request)
            else:
                response, body = self.balancer.send(self.transport, self.scheme, request)
        except WSGIProxyError as exc:
            return failure_answer(environ, start_response, exc)
        headers = None
        if self.rewrite_location:
            headers = self._rewrite_locations(url_scheme, client_host,
                                              environ.get("SCRIPT_NAME", ""), response.headers)
        if self.cookie_rewriter is not None:
            headers = self.cookie_rewriter.rewrite_headers(
                response.headers if headers is None else headers)
        return relay(start_response, response, body, headers)

    def _observed(self, environ: Environ, start_response: Any, record: Record) -> Iterable[bytes]:
        """This request through :meth:`__call__`, ``record`` filled and written when the
        answer ends (a tunnel: when it is answered)."""
        try:
            body = self(environ, record.start_response(start_response), record)
        except BaseException:
            record.finish()
            raise
        if record.status is not None and record.status.startswith("101"):
            record.finish()  # a tunnel: relayed already, when the server runs it inline
            return body
        return record.body(body)

    def _send_upgrade(self, request: OutgoingRequest, protocols: str,
                      record: Record | None = None) -> tuple[Any, Iterable[bytes]]:
        sender: Any = functools.partial(send_upgrade, protocols=protocols)
        if record is not None:
            sender = record.sender(sender)
        if self.balancer is None:
            return sender(self.transport, self.scheme, self.host, self.port, request)
        return self.balancer.send(self.transport, self.scheme, request, sender)

    def request_for(self, environ: Environ, url_scheme: str,
                    client_host: str) -> OutgoingRequest:
        """The finished request for href: identity and key headers, body, signature.

        :param url_scheme: the scheme the client used.
        :param client_host: the Host the client asked for (``host[:port]``).

        Raises a :class:`~wsgiproxy.errors.WSGIProxyError` for a request that
        is refused (405, 413) or cannot be forwarded (400).
        """
        if (self.allowed_methods is not None
                and (method := environ.get("REQUEST_METHOD") or "GET") not in self.allowed_methods):
            allow = ", ".join(sorted(self.allowed_methods))
            raise MethodNotAllowed("method %s is not allowed here (allowed: %s)" % (method, allow),
                                   [("Allow", allow)])
        if self.max_body_size is not None:
            self._check_body_size(environ)

        headers = _end_to_end_headers(environ)
        script_name = environ.get("SCRIPT_NAME", "")
        remote = environ.get("REMOTE_ADDR", "")

        forwarded_for = remote
        if self.trusted_proxies is not None and remote in self.trusted_proxies:
            incoming = environ.get(_FORWARDED_FOR_KEY)
            if incoming:
                forwarded_for = "%s, %s" % (incoming, remote) if remote else incoming
        host_header = client_host if self.preserve_host else self.host_header
        headers.append(("Host", host_header))
        identity_at = len(headers)  # from here on: the headers the signature covers
        headers += [
            (protocol.FORWARDED_FOR, forwarded_for),
            (protocol.FORWARDED_SERVER, client_host),
            (protocol.FORWARDED_SCHEME, url_scheme),
            (protocol.FORWARDED_SCRIPT_NAME,
             protocol.encode_path_header(script_name) if script_name else ""),
            (protocol.VERSION_HEADER, protocol.PROTOCOL_VERSION),
        ]
        if (ids := self.observer.ids) is not None:  # X-WSGIProxy-Request-ID, signed
            request_id = None
            if _REQUEST_ID_KEY in environ:  # kept from a trusted peer (and forwarded as it is)
                request_id = ids.incoming(environ)
            if request_id is None:
                request_id = new_request_id.next()
            environ[REQUEST_ID_ENVIRON] = request_id
            headers.append((protocol.REQUEST_ID_HEADER, request_id))
        if self.traversal_headers:
            headers += self.traversal_headers
        if self.forwarded:
            try:
                forwarded = self._forwarded(environ, remote, url_scheme, client_host)
            except protocol.ProtocolError as exc:  # e.g. control characters in the Host
                raise InvalidRequest("cannot forward this request: %s" % exc) from None
            headers += [
                (protocol.FORWARDED, forwarded),
                (protocol.FORWARDED_PROTO, url_scheme),
                (protocol.FORWARDED_HOST, client_host),
            ]
        if self.has_keys:
            try:
                headers += protocol.encode_key_headers(environ, *self.keys)
            except (TypeError, ValueError) as exc:
                log.error("cannot encode environ keys: %s", exc)
                raise WSGIProxyError("the proxy could not encode an environ key") from None

        # PATH_INFO is empty for a request at exactly the mount point.
        path = self.path + request_path(environ, include_script_name=False) or "/"
        query = environ.get("QUERY_STRING", "")
        if self.query:
            query = query + "&" + self.query if query else self.query
        if query:
            query = safe_target(query)
            target = path + "?" + query
        else:
            target = path
        request = outgoing_request(environ, target, headers, self.inline_body_max)
        if self.signing is not None:
            self.signing.sign(request, path, query, host_header, identity_at, environ)
        return request

    def _forwarded(self, environ: Environ, remote: str, url_scheme: str, client_host: str) -> str:
        """RFC 7239 ``Forwarded`` for this hop, after a trusted front proxy's own."""
        try:
            node = protocol.forwarded_node(remote)
        except ValueError:
            node = "unknown"
        hop = protocol.format_forwarded([{"for": node, "proto": url_scheme, "host": client_host}])
        incoming = environ.get(_FORWARDED_KEY)
        if incoming and self.trusted_proxies is not None and remote in self.trusted_proxies:
            return incoming + ", " + hop
        return hop

    def _check_body_size(self, environ: Environ) -> None:
        limit = self.max_body_size
        assert limit is not None
        length = environ.get("CONTENT_LENGTH")
        if length:
            if length.isdigit() and int(length) > limit:
                raise BodyTooLarge("request body of %s bytes is larger than the limit of %d bytes"
                                   % (length, limit))
        elif environ.get("HTTP_TRANSFER_ENCODING") and "wsgi.input" in environ:
            environ["wsgi.input"] = _LimitedInput(environ["wsgi.input"], limit)

    def _response_problem(self, request: OutgoingRequest, status: int,
                          headers: list[tuple[str, str]]) -> str | None:
        """Why a response cannot be accepted as the answer to ``request`` (None: it can).

        The transport calls it before the response's connection can be reused.
        """
        assert self.response_keys is not None
        method, target, request_headers, _, _ = request
        path, _, query = target.partition("?")
        fields: dict[str, str] = {}
        for name, value in request_headers:
            name = name.lower()
            fields[name] = fields[name] + ", " + value if name in fields else value
        sent = rfc9421.Message(method, rfc9421.authority(fields.get("host", ""), self.scheme),
                               path, query, fields=fields)
        try:
            rfc9421.verify_response(self.response_keys, status, headers, sent, now=time.time())
        except MessageSignatureError as exc:
            return "refused response (verify_responses): %s" % exc
        return None

    def _rewrite_locations(self, url_scheme: str, client_host: str, script_name: str,
                           headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Point ``Location``/``Content-Location`` headers that lead into href at the client's URL."""
        out = None
        prefixes = self._location_prefixes
        for i, (name, value) in enumerate(headers):
            if (name[0] in "LlCc" and value.startswith(prefixes)
                    and name.lower() in ("location", "content-location")):
                for prefix in prefixes:
                    rest = value[len(prefix):]
                    if self.location_any_port and rest[:1] == ":":
                        port = _PORT_PREFIX(rest)
                        if port:
                            rest = rest[port.end():]
                    if value.startswith(prefix) and (not rest or rest[0] in "/?#"):
                        if out is None:
                            out = list(headers)
                        out[i] = (name, "%s://%s%s%s" % (url_scheme, client_host,
                                                         quote_path(script_name), rest))
                        break
        return headers if out is None else out
