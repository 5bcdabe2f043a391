"""The WSGIProxy wire protocol, "sans-IO": header names, value codecs, signatures, Forwarded.

Both ends import this package -- ``WSGIProxyApp`` encodes and signs with it,
:class:`~wsgiproxy.middleware.WSGIProxyMiddleware` verifies and decodes with
it -- so the encoder and the decoder cannot drift apart.  Everything works on
plain ``str``/``bytes``/``dict`` values: no sockets, no WSGI servers, no
configuration parsing.  The modules:

* :mod:`~wsgiproxy.protocol.headers`: header names, the value codec, key
  headers and path headers;
* :mod:`~wsgiproxy.protocol.signature`: the covered headers, the canonical
  request, signing and verifying, with the clock and the nonce as arguments;
* :mod:`~wsgiproxy.protocol.rfc9421`: the same for RFC 9421 signatures
  (``Signature-Input``/``Signature``), and bound responses;
  :mod:`~wsgiproxy.protocol.structured` reads and writes the RFC 9651
  structured fields they are made of;
* :mod:`~wsgiproxy.protocol.forwarded`: ``Forwarded``/``X-Forwarded-*``,
  client addresses, trusted networks and hosts.

This ``__init__`` is the package's edge: :func:`sign_request`,
:func:`verify_request` and their RFC 9421 counterparts
(:func:`sign_request_rfc9421`, :func:`verify_request_rfc9421`) read the
clock and draw the nonce when the caller gives none, and the stateful parts (secret files, nonce stores:
:mod:`wsgiproxy.keys`) are re-exported so that the old import paths keep
working.

Conventions (those of WSGI): a "native string" is a ``str`` holding bytes as
ISO-8859-1 (latin-1) characters, which is how WSGI servers hand over header
values, ``PATH_INFO`` and ``QUERY_STRING``.  Header names are accepted in
header form (``X-Forwarded-For``) or environ form (``HTTP_X_FORWARDED_FOR``)
wherever a name is taken.  No encoder here ever produces a value containing
CR, LF or NUL.

The format is described for implementers of the other side in
``docs/protocol.rst``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import NonceStoreFull as NonceStoreFull  # not in __all__, as before
from ..errors import ProtocolError, SignatureError
from ..keys import DEFAULT_NONCE_CAPACITY as DEFAULT_NONCE_CAPACITY  # not in __all__, as before
from ..keys import MemoryNonceStore, NonceStore, SecretKeys, key_id_for, new_nonce
from ..keys import PrivateKey as PrivateKey  # not in __all__ (see RFC9421_NAMES)
from ..keys import PublicKeys as PublicKeys
from ..keys import ed25519_key_id as ed25519_key_id
from . import rfc9421
from . import signature as _signature
from .forwarded import (
    LOOPBACK,
    TrustedNetworks,
    default_port,
    format_forwarded,
    forwarded_node,
    join_host,
    nth_from_right,
    parse_forwarded,
    parse_node,
    split_host,
)
from .headers import (
    FORWARDED,
    FORWARDED_FOR,
    FORWARDED_HOST,
    FORWARDED_PORT,
    FORWARDED_PREFIX,
    FORWARDED_PROTO,
    FORWARDED_SCHEME,
    FORWARDED_SCRIPT_NAME,
    FORWARDED_SERVER,
    HEADER_PREFIX,
    KEY_KINDS,
    PICKLE_PROTOCOL,
    PROTOCOL_VERSION,
    SCRIPT_NAME_HEADER,
    SIGNATURE_HEADER,
    TRAVERSAL_PATH,
    TRAVERSAL_QUERY_STRING,
    VERSION_HEADER,
    canonical_header_name,
    check_header_value,
    decode_key_header,
    decode_path_header,
    decode_value,
    encode_key_headers,
    encode_path_header,
    encode_value,
    environ_key,
    key_header_kind,
)
from .headers import REQUEST_ID as REQUEST_ID  # not in __all__ (the names before it)
from .headers import REQUEST_ID_HEADER as REQUEST_ID_HEADER
from .headers import check_request_id as check_request_id
from .signature import (
    DEFAULT_MAX_SIGNED_BODY,
    DEFAULT_SIGNATURE_WINDOW,
    Headers,
    KeySource,
    NonceChecker,
    Signature,
    canonical_request,
    is_signed_header,
    parse_signature,
)

__all__ = [  # grouped as the reference in docs/protocol.rst
    "PROTOCOL_VERSION", "HEADER_PREFIX", "VERSION_HEADER", "SIGNATURE_HEADER", "KEY_KINDS",
    "DEFAULT_SIGNATURE_WINDOW", "DEFAULT_MAX_SIGNED_BODY", "PICKLE_PROTOCOL",
    "ProtocolError", "SignatureError",
    "canonical_header_name", "environ_key", "check_header_value",
    "encode_value", "decode_value", "encode_key_headers", "decode_key_header", "key_header_kind",
    "encode_path_header", "decode_path_header",
    "is_signed_header", "canonical_request", "sign_request", "verify_request",
    "parse_signature", "Signature",
    "SecretKeys", "key_id_for", "NonceStore", "MemoryNonceStore",
    "parse_forwarded", "format_forwarded", "forwarded_node", "parse_node",
    "nth_from_right", "TrustedNetworks", "LOOPBACK", "split_host", "join_host", "default_port",
    "FORWARDED_FOR", "FORWARDED_SERVER", "FORWARDED_SCHEME", "FORWARDED_SCRIPT_NAME",
    "TRAVERSAL_PATH", "TRAVERSAL_QUERY_STRING", "FORWARDED", "FORWARDED_PROTO", "FORWARDED_HOST",
    "FORWARDED_PORT", "FORWARDED_PREFIX", "SCRIPT_NAME_HEADER",
]

# Importable from here, but not in __all__ (which stays the list of names the
# package had before it was split): the RFC 9421 edge and the Ed25519 key classes.
RFC9421_NAMES = ("sign_request_rfc9421", "verify_request_rfc9421", "rfc9421", "PrivateKey",
                 "PublicKeys", "ed25519_key_id", "SIGNATURE_FORMATS")

#: The signature formats: ``X-WSGIProxy-Signature`` (:mod:`.signature`) and RFC 9421.
SIGNATURE_FORMATS = ("v1", "rfc9421")

Keys = KeySource | bytes | str


def _as_keys(keys: Keys) -> KeySource:
    if isinstance(keys, (bytes, str)):
        return SecretKeys.from_secrets([keys])
    return keys


def sign_request(keys: Keys, method: str, host: str, path: str | bytes, query: str,
                 headers: Headers, *, body: bytes | None = None, now: float | None = None,
                 nonce: str | None = None) -> str:
    """Return the ``X-WSGIProxy-Signature`` value for a request about to be sent.

    :func:`signature.sign <wsgiproxy.protocol.signature.sign>`, which says
    what the arguments are, with these defaults:

    :param keys: a :class:`SecretKeys` (the first key signs), or one secret.
    :param now: the time to sign with; by default the clock.
    :param nonce: by default a fresh one; one given is checked
        (:func:`~wsgiproxy.protocol.signature.check_nonce`).
    """
    if isinstance(keys, (bytes, str)):  # (not _as_keys(): one call less per request)
        keys = SecretKeys.from_secrets([keys])
    return _signature.sign(keys, method, host, path, query, headers, body=body,
                           now=time.time() if now is None else now,
                           nonce=new_nonce.next() if nonce is None
                           else _signature.check_nonce(nonce))


def verify_request(keys: Keys, signature: str | None, method: str, host: str,
                   path: str | bytes, query: str, headers: Headers, *, now: float | None = None,
                   window: float = DEFAULT_SIGNATURE_WINDOW,
                   nonce_store: NonceChecker | None = None,
                   body: bytes | Callable[[], bytes | None] | None = None) -> str:
    """Check a received request's signature; return the id of the key that verified it.

    :func:`signature.verify <wsgiproxy.protocol.signature.verify>`, which
    says what the arguments are and in which order the checks run (raising
    :class:`SignatureError` with the reason), with these defaults:

    :param keys: a :class:`SecretKeys` (any of its keys verifies), or one secret.
    :param now: the receiver's time; by default the clock.
    """
    return _signature.verify(_as_keys(keys), signature, method, host, path, query, headers,
                             now=time.time() if now is None else now, window=window,
                             nonce_store=nonce_store, body=body)


# -- RFC 9421 -------------------------------------------------------------------------

def _as_signer(keys: Any) -> rfc9421.Signer:
    if isinstance(keys, (bytes, str)):
        return rfc9421.HMACKeys(SecretKeys.from_secrets([keys]))
    if hasattr(keys, "signer"):
        return keys
    return rfc9421.HMACKeys(keys)


def _as_verifier(keys: Any) -> rfc9421.Verifier:
    if isinstance(keys, (bytes, str)):
        return rfc9421.HMACKeys(SecretKeys.from_secrets([keys]))
    if hasattr(keys, "verifier"):
        return keys
    return rfc9421.HMACKeys(keys)


def sign_request_rfc9421(keys: Any, method: str, host: str, path: str, query: str,
                         headers: Headers, *, scheme: str = "http", body: bytes | None = None,
                         now: float | None = None,
                         nonce: str | None = None) -> list[tuple[str, str]]:
    """The RFC 9421 headers that sign a request about to be sent (``Content-Digest``
    with a body, ``Signature-Input``, ``Signature``): add them after ``headers``.

    :func:`rfc9421.sign <wsgiproxy.protocol.rfc9421.sign>`, which says what
    the arguments are, with these defaults:

    :param keys: a :class:`PrivateKey` (``ed25519``), a :class:`SecretKeys`
        (``hmac-sha256``, the first secret signs), one secret, or any
        :class:`~wsgiproxy.protocol.rfc9421.Signer`.
    :param host: the ``Host`` header sent; ``scheme`` (the backend's) tells its
        default port, which ``@authority`` leaves out.
    :param now: the time to sign with; by default the clock.
    :param nonce: by default a fresh one; one given is checked
        (:func:`~wsgiproxy.protocol.rfc9421.check_nonce`).
    """
    if keys.__class__ is not rfc9421.HMACKeys:  # the app's usual signer: one call less
        keys = _as_signer(keys)
    return rfc9421.sign(keys, method, rfc9421.authority(host, scheme), path, query,
                        headers, now=time.time() if now is None else now,
                        nonce=new_nonce.next() if nonce is None else rfc9421.check_nonce(nonce),
                        body=body)


def verify_request_rfc9421(keys: Any, method: str, host: str, path: str, query: str,
                           headers: Headers, *, scheme: str = "http", now: float | None = None,
                           window: float = DEFAULT_SIGNATURE_WINDOW,
                           nonce_store: NonceChecker | None = None,
                           body: bytes | Callable[[], bytes | None] | None = None) -> str:
    """Check a received request's RFC 9421 signature (label and tag ``wsgiproxy``,
    read from ``headers``); return the id of the key that verified it.

    :func:`rfc9421.verify <wsgiproxy.protocol.rfc9421.verify>`, which says
    what the arguments are and in which order the checks run, with these
    defaults:

    :param keys: a :class:`PublicKeys`, a :class:`SecretKeys`, one secret, or
        any :class:`~wsgiproxy.protocol.rfc9421.Verifier`
        (:class:`~wsgiproxy.protocol.rfc9421.KeyChain` for several).
    :param host: the ``Host`` received; ``scheme`` tells its default port.
    :param now: the receiver's time; by default the clock.
    """
    fields = rfc9421._field_map(headers, {"signature-input", "signature"})
    parsed = rfc9421.parse_signature(fields.get("signature-input"), fields.get("signature"))
    return rfc9421.verify(_as_verifier(keys), parsed, method, rfc9421.authority(host, scheme),
                          path, query, headers, now=time.time() if now is None else now,
                          window=window, nonce_store=nonce_store, body=body)
