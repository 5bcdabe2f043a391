"""Bound responses: the middleware signs each answer to an RFC 9421-signed request.

With ``sign_responses``, :class:`ResponseSigner` wraps ``start_response`` so
that the answer gets ``Signature-Input`` and ``Signature`` (label and tag
``wsgiproxy``) covering ``@status``, ``Content-Type`` when there is one, and
the request's own signature (``"signature";req;key="wsgiproxy"``, RFC 9421
section 2.4).  ``WSGIProxyApp(verify_responses=True)`` then knows that the
response answers the request it sent, and not another one left on a pooled
connection.  Only headers are signed: the body streams as the application
writes it, and framing headers (``Content-Length``, ``Transfer-Encoding``),
which servers may change, are not covered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..errors import ProtocolError
from ..keys import new_nonce
from ..protocol import DEFAULT_SIGNATURE_WINDOW, rfc9421

__all__ = ["ResponseSigner"]

log = logging.getLogger("wsgiproxy.middleware")

StartResponse = Callable[..., Any]


class ResponseSigner:
    """Signs the answers of one middleware (``sign_responses``).

    :param signer: the key that signs: ``response_key_file``'s Ed25519 key
        (:class:`~wsgiproxy.keys.PrivateKey`) or the secrets
        (:class:`~wsgiproxy.protocol.rfc9421.HMACKeys`).
    :param window: seconds the signature is valid (``expires`` - ``created``).
    """

    def __init__(self, signer: rfc9421.Signer,
                 window: float = DEFAULT_SIGNATURE_WINDOW) -> None:
        self.signer = signer
        self.window = window

    def bind(self, start_response: StartResponse, binding: str) -> StartResponse:
        """``start_response`` that signs the answer, bound to the request signature
        ``binding`` (:attr:`~wsgiproxy.protocol.rfc9421.Parsed.binding`)."""
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            code = status[:3]
            if code.isdigit() and code.isascii():
                try:
                    headers = list(headers) + rfc9421.sign_response(
                        self.signer, int(code), headers, binding, now=time.time(),
                        nonce=new_nonce.next(), window=self.window)
                except ProtocolError as exc:  # e.g. a Content-Type outside ASCII
                    log.error("response to a signed request left unsigned: %s", exc)
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)
        return start
