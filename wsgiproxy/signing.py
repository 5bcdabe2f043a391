"""Signing the requests WSGIProxyApp sends: one signer per app, in its format.

:mod:`wsgiproxy.protocol` has the formats (sans-IO: the clock and the nonce
are arguments there).  A signer here is the app's glue around one of them:
which body the signature covers, which of the client's own headers it
replaces, the clock and a fresh nonce, and a value that cannot be signed as a
400.  The app keeps its signer in one attribute (see
:class:`~wsgiproxy.app.WSGIProxyApp` on the size of its instances), and each
format has its own class, so a request asks nothing about the format.
"""

from __future__ import annotations

import time
from typing import Any

from .errors import InvalidRequest, ProtocolError
from .forwarding import OutgoingRequest
from .keys import new_nonce
from .protocol import SIGNATURE_FORMATS, SIGNATURE_HEADER, rfc9421, signature

__all__ = ["RequestSigner", "RFC9421RequestSigner", "request_signer"]

Environ = dict[str, Any]

# Signing with RFC 9421, the client's own Signature and Signature-Input are dropped
# (the backend must see only the proxy's), and its Content-Digest when ours covers
# the body.
_CLIENT_SIGNATURES = frozenset(["signature", "signature-input"])
_CLIENT_DIGEST = frozenset(["content-digest"])


class RequestSigner:
    """Signs a WSGIProxyApp's finished requests with ``X-WSGIProxy-Signature`` (``v1``).

    :param keys: what signs: a :class:`~wsgiproxy.keys.SecretKeys` (``v1``),
        an RFC 9421 :class:`~wsgiproxy.protocol.rfc9421.Signer` (``rfc9421``).
    :param body_max: bodies read whole and at most this long are covered too (0: none).
    """

    __slots__ = ("keys", "body_max")
    #: The ``signature_format`` this class signs in.
    format = "v1"

    def __init__(self, keys: Any, body_max: int = 0) -> None:
        self.keys = keys
        self.body_max = body_max

    def sign(self, request: OutgoingRequest, path: str, query: str, host: str,
             identity_at: int, environ: Environ) -> None:
        """Add the signature header(s) to ``request``.

        :param path: the path of the request target, as sent.
        :param query: its query, as sent, without ``?``.
        :param host: the ``Host`` header sent.
        :param identity_at: where the headers the proxy added begin.  Only
            ``headers[identity_at:]`` can be signed ones: the client's own identity
            headers were dropped, so the rest need not be looked at.
        :raises InvalidRequest: for a value that cannot be signed (e.g. a CR in the Host).
        """
        method, _, headers, body, _ = request
        try:  # (the work of protocol.sign_request, one call less)
            headers.append((SIGNATURE_HEADER, signature.sign(
                self.keys, method, host, path, query, headers[identity_at:], now=time.time(),
                nonce=new_nonce.next(), body=(bytes(body) if isinstance(body, (bytes, bytearray))
                                              and len(body) <= self.body_max else None))))
        except ProtocolError as exc:
            raise InvalidRequest("cannot sign this request: %s" % exc) from None


class RFC9421RequestSigner(RequestSigner):
    """Signs a WSGIProxyApp's finished requests with RFC 9421 ``Signature-Input`` and
    ``Signature`` (``rfc9421``), and ``Content-Digest`` when the body is covered.

    :param scheme: the backend's, for the ``@authority`` (its default port is left out).
    """

    __slots__ = ("scheme", "_authority")
    format = "rfc9421"

    def __init__(self, keys: Any, body_max: int = 0, scheme: str = "http") -> None:
        super().__init__(keys, body_max)
        self.scheme = scheme
        #: The last ``(Host, @authority)``: the Host is the same on most requests.
        self._authority = ("", "")

    def sign(self, request: OutgoingRequest, path: str, query: str, host: str,
             identity_at: int, environ: Environ) -> None:
        method, _, headers, body, _ = request
        body = (bytes(body) if isinstance(body, (bytes, bytearray))
                and len(body) <= self.body_max else None)
        dropped = (_CLIENT_SIGNATURES if "HTTP_SIGNATURE" in environ
                   or "HTTP_SIGNATURE_INPUT" in environ else None)
        if body is not None:  # the client's Content-Digest: ours replaces it
            dropped = _CLIENT_DIGEST if dropped is None else dropped | _CLIENT_DIGEST
        if dropped is not None:  # the client's headers come before ours
            client = [h for h in headers[:identity_at] if h[0].lower() not in dropped]
            headers[:identity_at] = client
            identity_at = len(client)
        last_host, authority = self._authority
        if host != last_host:
            authority = rfc9421.authority(host, self.scheme)
            self._authority = host, authority
        try:  # (the work of protocol.sign_request_rfc9421, one call less)
            headers += rfc9421.sign(self.keys, method, authority, path, query,
                                    headers[identity_at:], now=time.time(),
                                    nonce=new_nonce.next(), body=body)
        except ProtocolError as exc:
            raise InvalidRequest("cannot sign this request: %s" % exc) from None


def request_signer(signature_format: str, secret_keys: Any, private_key: Any,
                   body_max: int, scheme: str) -> RequestSigner | None:
    """The signer of a WSGIProxyApp's options (``None``: requests go unsigned).

    :param secret_keys: the :class:`~wsgiproxy.keys.SecretKeys` of ``secret_file``, or None.
    :param private_key: the :class:`~wsgiproxy.keys.PrivateKey` of ``private_key_file``, or None.
    :raises ValueError: for a format that does not exist or lacks its key.
    """
    if signature_format not in SIGNATURE_FORMATS:
        raise ValueError("signature_format must be v1 or rfc9421, not %r" % (signature_format,))
    if signature_format == "v1":
        if private_key is not None:
            raise ValueError("private_key_file needs signature_format = rfc9421")
        return RequestSigner(secret_keys, body_max) if secret_keys is not None else None
    if private_key is None and secret_keys is None:
        raise ValueError("signature_format = rfc9421 needs secret_file or private_key_file")
    return RFC9421RequestSigner(private_key if private_key is not None
                                else rfc9421.HMACKeys(secret_keys), body_max, scheme)
