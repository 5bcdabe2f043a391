"""Checking what a request's sender may not merely claim: its signature, replays, pickles.

:class:`Verifier` checks an ``X-WSGIProxy-Signature`` with
:func:`wsgiproxy.protocol.verify_request`, or an RFC 9421 signature
(``Signature-Input``/``Signature``, label and tag ``wsgiproxy``) with
:func:`wsgiproxy.protocol.rfc9421.verify` (reading a signed body, bounded,
only once the signature has been checked), through a nonce store that fails
closed.  :func:`admit` enforces the row of the trust table a request got:
pickles and required signatures.
"""

from __future__ import annotations

import functools
import io
import logging
import time
from collections.abc import Iterable
from typing import Any

from ..errors import (
    Forbidden,
    MessageSignatureError,
    NonceStoreUnavailable,
    ProtocolError,
    SignatureError,
)
from ..forwarding import request_path
from ..protocol import (
    DEFAULT_MAX_SIGNED_BODY,
    DEFAULT_NONCE_CAPACITY,
    DEFAULT_SIGNATURE_WINDOW,
    SIGNATURE_FORMATS,
    SIGNATURE_HEADER,
    MemoryNonceStore,
    PublicKeys,
    SecretKeys,
    environ_key,
    key_header_kind,
    parse_signature,
    rfc9421,
    verify_request,
)
from .rewrite import header
from .trust import Belief, Pickles

__all__ = ["SIGNATURE_FORMATS", "GuardedNonceStore", "Verifier", "admit", "has_pickles",
           "load_keys", "load_public_keys"]

log = logging.getLogger("wsgiproxy.middleware")

_SIGNATURE_KEY = environ_key(SIGNATURE_HEADER)
#: What :meth:`Verifier.find` returns: ``("v1", header value)`` or ``("rfc9421", Parsed)``.
Found = tuple[str, Any]

#: What a client is told when the nonce store fails; the store's own words are logged.
STORE_FAILED = ("nonce store unavailable: the signature cannot be checked for replay now; "
                "try again later")


def load_keys(secret_file: str | SecretKeys | None) -> SecretKeys | None:
    """The :class:`~wsgiproxy.protocol.SecretKeys` of a path (read now), or the object given."""
    if secret_file is None or isinstance(secret_file, SecretKeys):
        return secret_file
    return SecretKeys(secret_file)


def load_public_keys(public_key_file: str | PublicKeys | None) -> PublicKeys | None:
    """The :class:`~wsgiproxy.keys.PublicKeys` of a path (read now), or the object given."""
    if public_key_file is None or isinstance(public_key_file, PublicKeys):
        return public_key_file
    return PublicKeys(public_key_file)


def formats(value: str | Iterable[str]) -> frozenset[str]:
    """The ``signature_formats`` option, checked."""
    chosen = frozenset([value] if isinstance(value, str) else value)
    if not chosen or not chosen <= set(SIGNATURE_FORMATS):
        raise ValueError("signature_formats must name v1, rfc9421 or both, not %r" % (value,))
    return chosen


class GuardedNonceStore:
    """A nonce store that fails closed: whatever the store raises becomes
    :class:`~wsgiproxy.errors.NonceStoreUnavailable` (503, ``Retry-After: 5``),
    caused by the original exception."""

    __slots__ = ("store",)

    def __init__(self, store: Any) -> None:
        self.store = store

    def check_and_add(self, key_id: str, nonce: str, expires_at: float) -> bool:
        """The store's answer: True if the nonce is new (and now recorded)."""
        try:
            return bool(self.store.check_and_add(key_id, nonce, expires_at))
        except Exception as exc:
            raise NonceStoreUnavailable(STORE_FAILED) from exc


class Verifier:
    """Signature checks of one middleware.

    :param keys: the secrets; None when no ``secret_file`` is configured
        (a signature is then ignored).
    :param public_keys: Ed25519 public keys (``public_key_file``): RFC 9421
        signatures with them are verified too.
    :param signature_formats: the formats accepted; a signature in another is ignored.
    :param signature_window: seconds a signature's timestamp may be off this clock.
    :param nonce_store: where used nonces are remembered; None for a
        :class:`~wsgiproxy.protocol.MemoryNonceStore` of ``nonce_cache_size``
        (only with ``keys``).
    :param require_body_digest: refuse a signed body the signature does not cover.
    :param max_signed_body_size: largest body read into memory to check its digest.
    """

    def __init__(self, keys: SecretKeys | None, *, public_keys: PublicKeys | None = None,
                 signature_formats: str | Iterable[str] = SIGNATURE_FORMATS,
                 signature_window: float = DEFAULT_SIGNATURE_WINDOW, nonce_store: Any = None,
                 nonce_cache_size: int = DEFAULT_NONCE_CAPACITY,
                 require_body_digest: bool = False,
                 max_signed_body_size: int = DEFAULT_MAX_SIGNED_BODY) -> None:
        self.keys = keys
        self.public_keys = public_keys
        self.signature_formats = formats(signature_formats)
        if public_keys is not None and "rfc9421" not in self.signature_formats:
            raise ValueError("public_key_file needs rfc9421 in signature_formats")
        #: The keys RFC 9421 signatures are checked with (None: they are ignored).
        self.rfc9421_keys: rfc9421.Verifier | None = None
        if "rfc9421" in self.signature_formats and (keys or public_keys) is not None:
            self.rfc9421_keys = rfc9421.KeyChain(
                rfc9421.HMACKeys(keys) if keys is not None else None, public_keys)
        if signature_window <= 0:
            raise ValueError("signature_window must be positive")
        if max_signed_body_size < 0:
            raise ValueError("max_signed_body_size must not be negative")
        if require_body_digest and keys is None and public_keys is None:
            raise ValueError("require_body_digest needs a secret_file or public_key_file")
        self.signature_window = signature_window
        self.max_signed_body_size = max_signed_body_size
        self.require_body_digest = bool(require_body_digest)
        if nonce_store is None and (keys or public_keys) is not None:
            nonce_store = MemoryNonceStore(max_entries=nonce_cache_size)
        self.nonce_store = nonce_store

    @property
    def nonce_store(self) -> Any:
        """The nonce store as configured (its guard is what verification uses)."""
        return self._nonce_store

    @nonce_store.setter
    def nonce_store(self, store: Any) -> None:
        self._nonce_store = store
        self._guarded = None if store is None else GuardedNonceStore(store)

    def key_id(self, environ: dict[str, Any]) -> str | None:
        """The id of the key that verified the request; None when it is unsigned.

        Raises :class:`~wsgiproxy.errors.SignatureError` for a signature that
        cannot be accepted, :class:`~wsgiproxy.errors.ProtocolError` for an
        unreadable body and :class:`~wsgiproxy.errors.NonceStoreUnavailable`.
        """
        return self.verify(environ, self.find(environ))

    def find(self, environ: dict[str, Any]) -> Found | None:
        """The request's signature in a format this verifier checks, or None (unsigned).

        A signature in a format not accepted, or for which no key is
        configured, is ignored; an RFC 9421 one under another label or tag
        is not ours.  Raises :class:`~wsgiproxy.errors.SignatureError`
        ``malformed`` for an unreadable one, or when the request carries both.
        """
        signature = header(environ, _SIGNATURE_KEY)
        if signature is not None and (self.keys is None or "v1" not in self.signature_formats):
            log.debug("ignoring X-WSGIProxy-Signature: no secret_file, or v1 is not in "
                      "signature_formats")
            signature = None
        parsed = None
        if self.rfc9421_keys is not None and "HTTP_SIGNATURE_INPUT" in environ:
            parsed = rfc9421.parse_signature(environ.get("HTTP_SIGNATURE_INPUT"),
                                             environ.get("HTTP_SIGNATURE"))
        if parsed is None:
            return None if signature is None else ("v1", signature)
        if signature is not None:
            raise SignatureError("malformed", "the request carries both X-WSGIProxy-Signature "
                                 "and an RFC 9421 signature; send one")
        return "rfc9421", parsed

    def verify(self, environ: dict[str, Any], found: Found | None) -> str | None:
        """Verify what :meth:`find` found; the key id (None for nothing found).

        Raises as :meth:`key_id` does.
        """
        if found is None:
            return None
        if found[0] == "rfc9421":
            return self._verify_rfc9421(environ, found[1])
        signature = found[1]
        assert self.keys is not None
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
                              window=self.signature_window, nonce_store=self._guarded,
                              body=body)

    def _verify_rfc9421(self, environ: dict[str, Any], parsed: rfc9421.Parsed) -> str:
        assert self.rfc9421_keys is not None
        body = None
        if ("content-digest", ()) in parsed.covered:
            self._check_body_length(environ)  # cheap: Content-Length only, nothing read
            body = functools.partial(self._read_body, environ)
        elif self.require_body_digest and self._has_body(environ):
            raise MessageSignatureError("body mismatch", "the request has a body the signature "
                                        "does not cover, and require_body_digest is on")
        try:
            path = request_path(environ)
        except UnicodeEncodeError:
            raise ProtocolError("SCRIPT_NAME/PATH_INFO are not native strings") from None
        headers = [(k, v) for k, v in environ.items()
                   if isinstance(k, str) and k.startswith("HTTP_")]
        for key, name in (("CONTENT_TYPE", "Content-Type"), ("CONTENT_LENGTH", "Content-Length")):
            if environ.get(key):
                headers.append((name, environ[key]))
        authority = rfc9421.authority(environ.get("HTTP_HOST") or "",
                                      environ.get("wsgi.url_scheme") or "http")
        return rfc9421.verify(self.rfc9421_keys, parsed, environ.get("REQUEST_METHOD") or "",
                              authority, path or "/", environ.get("QUERY_STRING") or "",
                              headers, now=time.time(), window=self.signature_window,
                              nonce_store=self._guarded, body=body)

    # -- the body of a signed request -------------------------------------------

    @staticmethod
    def _content_length(environ: dict[str, Any]) -> int | None:
        text = environ.get("CONTENT_LENGTH")
        if text is None or (isinstance(text, str) and not text.strip()):
            return None
        text = str(text).strip()
        if not (text.isdigit() and text.isascii()):
            raise ProtocolError("Content-Length %r is not a number" % text[:40])
        return int(text)

    def _check_body_length(self, environ: dict[str, Any]) -> int | None:
        length = self._content_length(environ)
        if length is not None and length > self.max_signed_body_size:
            raise SignatureError("body mismatch", "the body is %d bytes, more than "
                                 "max_signed_body_size (%d), so it cannot be checked"
                                 % (length, self.max_signed_body_size))
        return length

    def _read_body(self, environ: dict[str, Any]) -> bytes:
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

    def _has_body(self, environ: dict[str, Any]) -> bool:
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


# -- the row a request got ---------------------------------------------------------

def has_pickles(environ: dict[str, Any], protocol_keys: list[str]) -> bool:
    """Whether any of the request's ``X-WSGIProxy-*`` environ keys is a non-empty pickle."""
    return any(key_header_kind(k) == "Pickle" and header(environ, k) is not None
               for k in protocol_keys)


def admit(belief: Belief, has_pickle: bool) -> None:
    """Refuse the request if its row says so: a pickle it may not send, a missing signature.

    Both are 403s, raised before any forwarded header is parsed: nothing is
    unpickled from a request that is refused.
    """
    if has_pickle and belief.pickles is not Pickles.UNPICKLED:
        raise Forbidden("X-WSGIProxy-Pickle headers are only accepted on requests with a "
                        "valid X-WSGIProxy-Signature; nothing was unpickled")
    if belief.needs_signature:
        raise SignatureError("missing", "this server only accepts signed requests")
