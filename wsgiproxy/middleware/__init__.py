"""WSGIProxyMiddleware: rebuild the original environ behind a proxy, trusting nothing unverified.

The receiving end of ``WSGIProxyApp``, and a stricter cousin of Werkzeug's
``ProxyFix`` for other front proxies (nginx, HAProxy, load balancers).  Each
request goes through three pieces:

:mod:`~wsgiproxy.middleware.verify`
    checks the signature, ``v1`` or RFC 9421 (and replays, through a nonce
    store that fails closed);
:mod:`~wsgiproxy.middleware.trust`
    decides who sent it and so which forwarded headers are believed, from a
    table in code; :func:`~wsgiproxy.middleware.verify.admit` refuses what
    that row refuses (pickles, unsigned requests);
:mod:`~wsgiproxy.middleware.rewrite`
    rebuilds the environ from the believed headers and the forced values.

With ``sign_responses``, :mod:`~wsgiproxy.middleware.bound` signs the
answer, bound to the request's RFC 9421 signature.

Parsing and signature checking live in :mod:`wsgiproxy.protocol`.  See
``docs/middleware.rst``; every option is described in
``docs/configuration.rst``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import NonceStoreUnavailable, SignatureError, WSGIProxyError
from ..observe import REQUEST_ID_KEY, SINKS, Observer, Record, RequestIds, event
from ..protocol import (
    DEFAULT_MAX_SIGNED_BODY,
    DEFAULT_NONCE_CAPACITY,
    DEFAULT_SIGNATURE_WINDOW,
    REQUEST_ID,
    REQUEST_ID_HEADER,
    PrivateKey,
    PublicKeys,
    SecretKeys,
    check_request_id,
    environ_key,
    rfc9421,
)
from ..responses import error_answer
from .bound import ResponseSigner
from .rewrite import Rewriter, protocol_keys
from .trust import Addresses, Belief, Trust
from .verify import SIGNATURE_FORMATS, Verifier, admit, has_pickles, load_keys, load_public_keys

__all__ = ["WSGIProxyMiddleware"]

log = logging.getLogger("wsgiproxy.middleware")
_REQUEST_ID_ENVIRON = environ_key(REQUEST_ID)
_REQUEST_ID_HEADER_ENVIRON = environ_key(REQUEST_ID_HEADER)

StartResponse = Callable[..., Any]
WSGIApplication = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _option(piece: str, name: str) -> Any:
    """An option held by one of the pieces, read and set through the middleware as before."""
    def get(self: Any) -> Any:
        return getattr(getattr(self, piece), name)

    def set_(self: Any, value: Any) -> None:
        setattr(getattr(self, piece), name, value)
    return property(get, set_)


class WSGIProxyMiddleware:
    """Rebuild the environ of a request that came through WSGIProxy or another proxy.

    Forwarded headers are believed only from a request with a valid
    signature, or from a peer listed in ``trust_ips`` (everything) or
    ``front_proxy_ips`` (the ``X-Forwarded-*``/``Forwarded`` headers only);
    :data:`wsgiproxy.middleware.trust.BELIEVED` is the table.  Errors are
    answered, never raised: 400 for a malformed header, 403 for a refused
    signature or pickle, 503 when the nonce store fails.  Every option is
    described in ``docs/configuration.rst``.

    :param app: the WSGI application called with the rebuilt environ.
    :param secret_file: shared secrets (a path or a :class:`~wsgiproxy.protocol.SecretKeys`):
        signed requests are believed from anyone; unsigned ones are refused
        unless ``trust_ips`` names their peer or ``require_signature`` is false.
    :param trust_ips: ``WSGIProxyApp`` hosts, believed for every forwarded header
        without a signature; never nginx and the like.  ``*`` believes everyone.
    :param prefix: force ``SCRIPT_NAME``; configuration, believed for every request.
    :param pop_prefix: move this leading part of ``PATH_INFO`` to ``SCRIPT_NAME``
        (400 for a request outside it).
    :param scheme: force ``wsgi.url_scheme``, whatever any header says.
    :param host: force ``HTTP_HOST``/``SERVER_NAME``/``SERVER_PORT`` from ``name[:port]``.
    :param domain: force the host name, keeping the request's port.
    :param port: force the port, keeping the request's host name.
    :param x_for: how many believed proxies append to ``X-Forwarded-For``;
        values further left were written by the client and are never used.
    :param x_proto: the same for ``X-Forwarded-Proto``.
    :param x_host: the same for ``X-Forwarded-Host`` (0: a client-chosen host
        poisons absolute URLs).
    :param x_port: the same for ``X-Forwarded-Port``.
    :param x_prefix: the same for ``X-Forwarded-Prefix``.
    :param forwarded: how many believed proxies append to RFC 7239 ``Forwarded``;
        above 0 it replaces ``X-Forwarded-For/-Proto/-Host/-Port``.
    :param front_proxy_ips: nginx, HAProxy, load balancers: believed for the
        front-proxy headers only, never for WSGIProxy identity headers or pickles.
    :param signature_window: seconds a signature's timestamp may be off this clock.
    :param nonce_store: where used nonces are remembered, to refuse replays;
        share one between processes that accept the same secret.  A failing
        store refuses signed requests (503).
    :param nonce_cache_size: capacity of the default in-memory nonce store.
    :param require_signature: refuse unsigned requests from peers not in
        ``trust_ips`` (default: when ``secret_file`` is set).
    :param require_body_digest: refuse a signed body the signature does not cover.
    :param max_signed_body_size: largest signed body read into memory to check its digest.
    :param allow_pickle_from_trusted_ips: also unpickle from unsigned ``trust_ips``
        requests: anyone who can connect from them can run code here.
    :param signature_formats: the signature formats accepted, ``v1`` and/or
        ``rfc9421`` (both by default, so both sides can switch one at a time);
        a signature in another format is ignored, as if there were none.
    :param public_key_file: Ed25519 public keys (PEM, a path or a
        :class:`~wsgiproxy.keys.PublicKeys`) that verify RFC 9421 signatures;
        counts like ``secret_file`` (signatures are then required).
    :param sign_responses: sign each answer to an RFC 9421-signed request,
        bound to that request, for ``WSGIProxyApp(verify_responses=True)``.
    :param response_key_file: the Ed25519 private key (PEM) that signs
        responses; without it the first secret of ``secret_file`` does.
    :param request_ids: give every request an id (``wsgiproxy.request_id`` and
        ``HTTP_X_REQUEST_ID``): the ``X-WSGIProxy-Request-ID`` of a believed
        ``WSGIProxyApp``, else the ``X-Request-ID`` of a believed front proxy;
        a new one otherwise.
    :param request_id_header: also send ``X-Request-ID`` back with the answer.
    :param access_log: one INFO line per request on ``wsgiproxy.access``.
    :param access_log_format: its format, ``{client}`` and so on
        (:data:`wsgiproxy.observe.FIELDS`).
    :param metrics: count requests and refusals in Prometheus metrics
        (``WSGIProxy[metrics]``, :mod:`wsgiproxy.metrics`).
    """

    def __init__(self, app: WSGIApplication, secret_file: str | SecretKeys | None = None,
                 trust_ips: Addresses = None, prefix: str | None = None,
                 pop_prefix: str | None = None, scheme: str | None = None,
                 host: str | None = None, domain: str | None = None,
                 port: int | str | None = None, x_for: int = 1, x_proto: int = 1,
                 x_host: int = 0, x_port: int = 0, x_prefix: int = 0, *, forwarded: int = 0,
                 front_proxy_ips: Addresses = None,
                 signature_window: float = DEFAULT_SIGNATURE_WINDOW, nonce_store: Any = None,
                 nonce_cache_size: int = DEFAULT_NONCE_CAPACITY,
                 require_signature: bool | None = None, require_body_digest: bool = False,
                 max_signed_body_size: int = DEFAULT_MAX_SIGNED_BODY,
                 allow_pickle_from_trusted_ips: bool = False,
                 signature_formats: str | Iterable[str] = SIGNATURE_FORMATS,
                 public_key_file: str | PublicKeys | None = None,
                 sign_responses: bool = False,
                 response_key_file: str | PrivateKey | None = None,
                 request_ids: bool = True, request_id_header: bool = False,
                 access_log: bool = True, access_log_format: str | None = None,
                 metrics: bool = False) -> None:
        self.app = app
        if metrics:
            from ..metrics import enable
            enable()
        if request_id_header and not request_ids:
            raise ValueError("request_id_header needs request_ids")
        #: Request ids (:class:`~wsgiproxy.observe.RequestIds`), or ``None`` (off).
        self.request_ids = RequestIds(respond=request_id_header) if request_ids else None
        #: The access log and the metrics (:class:`~wsgiproxy.observe.Observer`).
        self.observer = Observer(access_log, access_log_format, "backend")
        keys = load_keys(secret_file)
        public_keys = load_public_keys(public_key_file)
        self.trust = Trust(trust_ips, front_proxy_ips,
                           secret=keys is not None or public_keys is not None,
                           require_signature=require_signature,
                           allow_pickle_from_trusted_ips=allow_pickle_from_trusted_ips)
        self.rewriter = Rewriter(prefix, pop_prefix, scheme, host, domain, port, x_for=x_for,
                                 x_proto=x_proto, x_host=x_host, x_port=x_port,
                                 x_prefix=x_prefix, forwarded=forwarded)
        self.verifier = Verifier(keys, public_keys=public_keys,
                                 signature_formats=signature_formats,
                                 signature_window=signature_window,
                                 nonce_store=nonce_store, nonce_cache_size=nonce_cache_size,
                                 require_body_digest=require_body_digest,
                                 max_signed_body_size=max_signed_body_size)
        #: With ``sign_responses``: what signs the answers, else ``None``.
        self.response_signer: ResponseSigner | None = None
        if sign_responses:
            if "rfc9421" not in self.verifier.signature_formats:
                raise ValueError("sign_responses needs rfc9421 in signature_formats: a response "
                                 "is bound to the request's RFC 9421 signature")
            if response_key_file is not None:
                signer: rfc9421.Signer = (response_key_file
                                          if isinstance(response_key_file, PrivateKey)
                                          else PrivateKey(response_key_file))
            elif keys is not None:
                signer = rfc9421.HMACKeys(keys)
            else:
                raise ValueError("sign_responses needs response_key_file or secret_file")
            self.response_signer = ResponseSigner(signer, signature_window)
        elif response_key_file is not None:
            raise ValueError("response_key_file needs sign_responses")

    # The options, as attributes of the middleware (each held by the piece that uses it).
    keys = _option("verifier", "keys")
    public_keys = _option("verifier", "public_keys")
    signature_formats = _option("verifier", "signature_formats")
    signature_window = _option("verifier", "signature_window")
    nonce_store = _option("verifier", "nonce_store")
    require_body_digest = _option("verifier", "require_body_digest")
    max_signed_body_size = _option("verifier", "max_signed_body_size")
    trusted = _option("trust", "trusted")
    trust_ips_configured = _option("trust", "trust_ips_configured")
    front_proxies = _option("trust", "front_proxies")
    require_signature = _option("trust", "require_signature")
    allow_pickle_from_trusted_ips = _option("trust", "allow_pickle_from_trusted_ips")
    prefix = _option("rewriter", "prefix")
    pop_prefix = _option("rewriter", "pop_prefix")
    scheme = _option("rewriter", "scheme")
    host = _option("rewriter", "host")
    domain = _option("rewriter", "domain")
    port = _option("rewriter", "port")
    x_for = _option("rewriter", "x_for")
    x_proto = _option("rewriter", "x_proto")
    x_host = _option("rewriter", "x_host")
    x_port = _option("rewriter", "x_port")
    x_prefix = _option("rewriter", "x_prefix")
    forwarded = _option("rewriter", "forwarded")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse,
                 record: Record | None = None) -> Iterable[bytes]:
        """Check, rebuild the environ and call the app; or answer the refusal.

        :param record: (from :meth:`_observed` only) what the access log and the
            metrics get of this request; servers pass two arguments.
        """
        if record is None:  # the call from the server
            if self.request_ids is not None and self.request_ids.respond:
                start_response = self.request_ids.start_response(environ, start_response)
            if ((self.observer.quiet.get(20) is not False or SINKS)  # else nothing observes it
                    and (record := self.observer.start(environ)) is not None):
                return self._observed(environ, start_response, record)
        try:
            found = protocol_keys(environ)
            signature = self.verifier.find(environ)
            if self.response_signer is not None and signature and signature[0] == "rfc9421":
                start_response = self.response_signer.bind(start_response, signature[1].binding)
            key_id = self.verifier.verify(environ, signature)
            belief = self.trust.decide(environ.get("REMOTE_ADDR"), key_id is not None)
            admit(belief, has_pickles(environ, found))
            if self.request_ids is not None:  # before rebuild() removes X-WSGIProxy-*
                self._request_id(environ, belief)
            self.rewriter.rebuild(environ, belief, found, key_id)
            environ["wsgiproxy.signature_format"] = (signature[0] if signature is not None
                                                     and key_id is not None else None)
        except WSGIProxyError as error:
            if self.request_ids is not None and REQUEST_ID_KEY not in environ:
                RequestIds.assign(environ, None)
            self._log_refusal(environ, error)
            return error_answer(environ, start_response, error)
        return self.app(environ, start_response)

    def _observed(self, environ: dict[str, Any], start_response: StartResponse,
                  record: Record) -> Iterable[bytes]:
        """This request through :meth:`__call__`, ``record`` written when the answer ends."""
        try:
            return record.body(self(environ, record.start_response(start_response), record))
        except BaseException:
            record.finish()
            raise

    @staticmethod
    def _request_id(environ: dict[str, Any], belief: Belief) -> None:
        """The request's id: ``X-WSGIProxy-Request-ID`` from a sender believed for the
        identity headers (signed, ``trust_ips``, loopback), ``X-Request-ID`` from a front
        proxy (``front_proxy_ips``); else a new one.  (A ``WSGIProxyApp`` older than request
        ids passes the client's ``X-Request-ID`` on: never believed.)"""
        request_id = None
        if belief.identity:
            value = environ.get(_REQUEST_ID_HEADER_ENVIRON)
        else:
            value = environ.get(_REQUEST_ID_ENVIRON) if belief.front else None
        if value:
            request_id = check_request_id(value.strip(" \t"))
        environ[_REQUEST_ID_ENVIRON] = RequestIds.assign(environ, request_id)

    @staticmethod
    def _log_refusal(environ: dict[str, Any], error: WSGIProxyError) -> None:
        """403s are warnings, a failing nonce store an error, anything else (400s) info."""
        peer, path = environ.get("REMOTE_ADDR"), environ.get("PATH_INFO")
        if isinstance(error, SignatureError):
            event("refusal", error.reason)
        if isinstance(error, NonceStoreUnavailable):
            cause = error.__cause__
            detail = (str(cause) or type(cause).__name__) if cause is not None else error
            log.error("nonce store unavailable, refusing a signed request from %s for %r: %s",
                      peer, path, detail)
        elif error.status == 403:
            log.warning("refused request from %s for %r: %s", peer, path, error)
        else:
            log.info("bad request from %s for %r: %s", peer, path, error)
