"""Request signatures (sans-IO): which headers are covered, the canonical request,
:func:`sign`, :func:`parse_signature` and :func:`verify`.

Nothing here reads the clock, draws a nonce or touches a file: ``now`` and
``nonce`` are arguments, the keys are any object with ``signing_key()`` and
``get(key_id)`` (as :class:`~wsgiproxy.keys.SecretKeys` has) and the nonce
store any object with ``check_and_add(key_id, nonce, expires_at)``.
:func:`wsgiproxy.protocol.sign_request` and
:func:`~wsgiproxy.protocol.verify_request` fill in the clock and the nonce.

The per-request work is kept small on purpose: header
names are reduced through bounded caches, and the HMAC key schedule is
computed once per secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from binascii import b2a_base64
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Protocol
from urllib.parse import quote, unquote_to_bytes

from ..abnf import is_token
from ..errors import ProtocolError, SignatureError
from .headers import (
    FORWARDED,
    HEADER_PREFIX,
    SCRIPT_NAME_HEADER,
    SIGNATURE_HEADER,
    canonical_header_name,
    check_header_value,
)

__all__ = [
    "DEFAULT_MAX_SIGNED_BODY", "DEFAULT_SIGNATURE_WINDOW", "KeySource", "NonceChecker",
    "Signature", "canonical_request", "check_nonce", "is_signed_header", "parse_signature",
    "sign", "verify",
]

#: Seconds a signature's timestamp may differ from the receiver's clock.
DEFAULT_SIGNATURE_WINDOW = 300
#: Largest body (bytes) covered by a body digest, by default, on both sides.
DEFAULT_MAX_SIGNED_BODY = 1024 * 1024


class KeySource(Protocol):
    """What signing and verifying need of the keys (:class:`~wsgiproxy.keys.SecretKeys` has it)."""

    def signing_key(self) -> tuple[str, bytes]:
        """``(key id, secret)`` of the key that signs."""

    def get(self, key_id: str) -> bytes | None:
        """The secret with this key id, or ``None``."""


class NonceChecker(Protocol):
    """What verifying needs of a nonce store (:class:`~wsgiproxy.keys.NonceStore`)."""

    def check_and_add(self, key_id: str, nonce: str, expires_at: float) -> bool:
        """Record ``nonce`` until ``expires_at``; False if it was already there."""


#: Header pairs as a mapping (an environ's ``HTTP_*`` items) or ``(name, value)`` pairs.
Headers = Mapping[str, Any] | Iterable[Any]

_SIGNED_PREFIXES = (HEADER_PREFIX.lower(), "x-forwarded-", "x-traversal-")
_SIGNED_NAMES = frozenset([SCRIPT_NAME_HEADER.lower(), FORWARDED.lower()])
_SIGNATURE_CANONICAL = SIGNATURE_HEADER.lower()
_NONCE_RE = re.compile(r"[0-9a-f]{32}\Z")
_KID_RE = re.compile(r"[0-9a-f]{16}\Z")
_DIGEST_RE = re.compile(r"[A-Za-z0-9_-]{43}\Z")
_TS_RE = re.compile(r"[0-9]{1,12}\Z")
_SIG_FIELDS = ("kid", "ts", "nonce", "body", "headers", "sig")
_WAITRESS_STRIPPED = frozenset(["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
                                "x-forwarded-port", "x-forwarded-by", "forwarded"])


class Signature(NamedTuple):
    """A parsed ``X-WSGIProxy-Signature`` value (see :func:`parse_signature`)."""

    key_id: str
    timestamp: int
    nonce: str
    body_digest: str
    headers: tuple[str, ...]
    sig: str


# ---------------------------------------------------------------------------
# The covered headers

def _is_canonical_name(name: str) -> bool:
    """A lower-case token: how header names appear in the canonical request."""
    return bool(is_token(name)) and name == name.lower()


def is_signed_header(name: object) -> bool:
    """True for headers whose values the signature covers (header or environ spelling).

    Those are the ones that carry identity: every ``X-WSGIProxy-*`` except the
    signature itself, ``X-Forwarded-*``, ``X-Traversal-*``, ``X-Script-Name``
    and ``Forwarded``.
    """
    if not isinstance(name, str):
        return False
    return _signed_name(name) is not None


# name as given -> its canonical name if signed, else None.  Bounded in entries
# and name length, so a stream of made-up header names cannot grow it much.
_signed_names: dict[str, str | None] = {}
_SIGNED_NAMES_MAX = 4096
_SIGNED_NAME_LENGTH_MAX = 100
_UNSEEN: Any = object()


def _signed_name(name: str) -> str | None:
    """The canonical name of a signed header, ``None`` for others (cached)."""
    try:
        return _signed_names[name]
    except KeyError:
        pass
    canonical = canonical_header_name(name)
    signed: str | None = canonical
    if canonical == _SIGNATURE_CANONICAL or not (
            canonical.startswith(_SIGNED_PREFIXES) or canonical in _SIGNED_NAMES):
        signed = None
    elif not is_token(canonical):  # lower case already
        raise ProtocolError("header name %r is not a valid token" % (name,))
    if len(_signed_names) < _SIGNED_NAMES_MAX and len(name) <= _SIGNED_NAME_LENGTH_MAX:
        _signed_names[name] = signed
    return signed


def _signed_headers(headers: Headers) -> list[tuple[str, str]]:
    """The covered headers as sorted ``[(canonical name, stripped value)]``; empty ones left out."""
    items: Iterable[Any] = headers.items() if hasattr(headers, "items") else headers
    seen = {}
    for name, value in items:
        if not isinstance(name, str):
            continue
        canonical = _signed_names.get(name, _UNSEEN)
        if canonical is _UNSEEN:
            canonical = _signed_name(name)
        if canonical is None:
            continue
        if not isinstance(value, str):
            raise ProtocolError("header %s must be a str, not %s"
                                % (canonical, type(value).__name__))
        value = value.strip(" \t")  # CR, LF and NUL are refused in _canonical_bytes
        if not value:  # intermediaries may drop empty headers: treat empty as absent
            continue
        if canonical in seen:
            raise ProtocolError("header %s is given twice; send it once, comma-joined" % canonical)
        seen[canonical] = value
    return sorted(seen.items())


def _sender_signed_headers(headers: Headers) -> list[tuple[str, str]]:
    """:func:`_signed_headers` through :func:`_covered_parts` (what a sender's signature
    covers, as pairs)."""
    _, parts = _covered_parts(headers, _pair_forms, "%s", len)
    return list(zip(parts[::2], parts[1::2]))


# -- The sender's planned forms
#
# A sender signs lists of (name, value) pairs whose names repeat request after
# request.  A list's "shape" -- its names, with ``(name, value)`` in place of a name
# whose value is empty (or another false value) -- decides all but the values:
# which positions are covered, in which order, and each format's text around the
# values.  So each format keeps what it makes of the covered names per shape, and a
# request only fetches and strips the covered values.  Bounded in entries and in
# the length of the names, so client-chosen names cannot grow them much.
_PLANS_MAX = 1024
_PLAN_NAMES_MAX = 2048  # characters of one shape's repr
#: A form: where each covered value goes (``(position in the list, index in the
#: parts)``), the parts with ``None`` there, and what the format made of the names.
Form = tuple[tuple[tuple[int, int], ...], list[Any], Any]


def _shape_plan(shape: tuple[Any, ...]) -> tuple[tuple[int, ...], tuple[str, ...]] | None:
    """The covered positions of a shape and their canonical names, sorted by name;
    ``None`` when :func:`_signed_headers` must decide (a value that is not a str, a
    covered name given twice, a name it would refuse)."""
    signed = []
    for i, entry in enumerate(shape):
        try:
            if entry.__class__ is tuple:  # an empty value: absent, but checked as it would be
                name, value = entry
                if not isinstance(value, str):
                    return None
                if isinstance(name, str):
                    _signed_name(name)
            elif isinstance(entry, str) and (canonical := _signed_name(entry)) is not None:
                signed.append((canonical, i))
        except (ProtocolError, ValueError):
            return None
    if len({canonical for canonical, _ in signed}) != len(signed):
        return None
    signed.sort()
    return tuple(i for _, i in signed), tuple(canonical for canonical, _ in signed)


def _covered_parts(headers: Headers, forms: dict[tuple[Any, ...], Form | None], line: str,
                  make: Callable[[tuple[str, ...]], Any]) -> tuple[Any, list[Any]]:
    """``(made, parts)`` for the headers a signature covers: what ``make`` made of their
    canonical names (sorted), and ``[line % name, value, ...]`` with each value stripped.

    Reduces ``headers`` as :func:`_signed_headers` does (and raises what it
    raises).  A sender's list is reduced through ``forms``, its format's plans:
    once per shape, then only its covered values are fetched (in a loop, not a
    comprehension, which makes a function object per call in CPython 3.11).
    """
    if headers.__class__ is list:
        shape_list = []
        for name, value in headers:  # type: ignore[misc]
            shape_list.append(name if value else (name, value))
        shape = tuple(shape_list)
        form = forms.get(shape, _UNSEEN)
        if form is _UNSEEN:
            form = _form(shape, line, make)
            if len(forms) < _PLANS_MAX and len(repr(shape)) <= _PLAN_NAMES_MAX:
                forms[shape] = form
        if form is not None:
            slots, template, made = form
            parts = template[:]  # (a copy: the planned parts are shared by every request)
            try:
                for i, slot in slots:
                    value = headers[i][1].strip(" \t")  # type: ignore[index]
                    if not value:  # blank once stripped: absent, which the plan did not foresee
                        break
                    parts[slot] = value
                else:
                    return made, parts
            except (AttributeError, TypeError):  # not a str: _signed_headers says which
                pass
    signed = _signed_headers(headers)  # once: ``headers`` may be an iterator
    names = tuple([name for name, _ in signed])
    parts = _value_parts(names, line)
    parts[1::2] = [value for _, value in signed]
    return make(names), parts


def _form(shape: tuple[Any, ...], line: str, make: Callable[[tuple[str, ...]], Any]
          ) -> Form | None:
    """The form of a shape (``None``: :func:`_signed_headers` decides each time)."""
    plan = _shape_plan(shape)
    if plan is None:
        return None
    positions, names = plan
    return (tuple([(i, 2 * k + 1) for k, i in enumerate(positions)]),
            _value_parts(names, line), make(names))


_pair_forms: dict[tuple[Any, ...], Form | None] = {}


# ---------------------------------------------------------------------------
# The canonical request

_PLAIN_PATH = re.compile(r"[A-Za-z0-9_.~/-]*\Z").match  # canonical as it is


def _canonical_path(path: str | bytes | bytearray | None) -> str:
    if isinstance(path, str) and _PLAIN_PATH(path):
        return path
    if isinstance(path, (bytes, bytearray)):
        raw = bytes(path)  # already percent-decoded (SCRIPT_NAME + PATH_INFO)
    elif isinstance(path, str):
        check_header_value(path, "the path")
        if "?" in path or "#" in path:
            raise ProtocolError("the path to sign must not contain '?' or '#'")
        try:
            raw = unquote_to_bytes(path.encode("latin-1"))
        except UnicodeEncodeError:
            raise ProtocolError("the path contains characters outside ISO-8859-1") from None
    elif path is None:
        raw = b""
    else:
        raise TypeError("the path must be str or bytes")
    return quote(raw, safe="/")


def canonical_request(method: str | None, host: str | None, path: str | bytes | None,
                      query: str | None, timestamp: int, nonce: str, body_digest: str,
                      headers: Headers) -> bytes:
    """The bytes that are HMAC'd: one field per line, then one ``name:value`` line per header.

    ``path`` is the path as sent (str, percent-encoded) or the decoded path
    (bytes); both give the same canonical path.  ``headers`` may include
    headers that are not signed; only :func:`is_signed_header` ones are used.
    Exposed so that other implementations can compare their canonical form.
    """
    signed = _signed_headers(headers)
    return _canonical_bytes(method, host, path, query, str(int(timestamp)), nonce, body_digest,
                            _header_lines(signed), len(signed))


def _header_lines(signed: list[tuple[str, str]]) -> list[str]:
    """The ``name:value`` lines of headers reduced by _signed_headers(), each after a LF."""
    return ["\n%s:%s" % pair for pair in signed]


def _canonical_bytes(method, host, path, query, timestamp, nonce, body_digest, lines, count):
    """canonical_request() with the timestamp as text and the header lines already made
    (``count`` of them, each after a LF: _header_lines(), or the parts of a sender's
    planned form)."""
    method, host, query = method or "", host or "", query or ""  # None means empty
    try:
        text = "".join((
            "wsgiproxy-signature-v1\n", method.upper(), "\n", host.lower(), "\n",
            path if path.__class__ is str and _PLAIN_PATH(path) else _canonical_path(path),
            "\n", query, "\n", timestamp, "\n", nonce, "\n", body_digest, *lines))
    except (AttributeError, TypeError):  # say which field is not a str
        for i, value in ((1, method), (2, host), (4, query), (6, nonce), (7, body_digest)):
            if not isinstance(value, str):
                raise ProtocolError("%s must be a str, not %s"
                                    % (_CANONICAL_FIELDS[i], type(value).__name__)) from None
        raise
    # One scan instead of one per value: a CR, LF or NUL anywhere is refused.
    if text.count("\n") != count + 7 or "\r" in text or "\0" in text:
        raise ProtocolError("the request to sign contains CR, LF or NUL")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise ProtocolError("the request contains characters outside ISO-8859-1 "
                            "(header values are bytes on the wire)") from None


_CANONICAL_FIELDS = ("the prefix", "the method", "the host", "the path", "the query string",
                     "the timestamp", "the nonce", "the body digest")


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64url(digest: bytes) -> str:
    """Unpadded base64url (what ``base64.urlsafe_b64encode`` gives, without its Python
    wrappers: this runs twice per signed request)."""
    return b2a_base64(digest, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _body_digest(body: bytes | None) -> str:
    if body is None:
        return "-"
    if isinstance(body, str):
        raise TypeError("the body must be bytes, not str")
    return _b64url(hashlib.sha256(body).digest())


_IPAD, _OPAD = bytes(b ^ 0x36 for b in range(256)), bytes(b ^ 0x5C for b in range(256))


def keyed_hmac(secret: bytes) -> Callable[[bytes], bytes]:
    """HMAC-SHA256 keyed with ``secret`` (RFC 2104), as a function of the message.

    The padded key blocks are hashed once; a message then costs two copies of a
    SHA-256 state, cheaper than copying an OpenSSL HMAC context (which copies
    three digest contexts) or keying a new HMAC.
    """
    key = hashlib.sha256(secret).digest() if len(secret) > 64 else secret
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(key.translate(_IPAD))
    outer = hashlib.sha256(key.translate(_OPAD))

    def mac(message: bytes) -> bytes:
        state = inner.copy()
        state.update(message)
        result = outer.copy()
        result.update(state.digest())
        return result.digest()
    return mac


# secret -> keyed_hmac(secret): the few configured keys; bounded anyway.
_keyed_hmacs: dict[bytes, Callable[[bytes], bytes]] = {}


def hmac_for(secret: bytes) -> Callable[[bytes], bytes]:
    """:func:`keyed_hmac` of ``secret``, its key schedule computed once per secret."""
    mac = _keyed_hmacs.get(secret)
    if mac is None:
        mac = keyed_hmac(secret)
        if len(_keyed_hmacs) < 64:
            _keyed_hmacs[secret] = mac
    return mac


def _hmac(secret: bytes, canonical: bytes) -> str:
    """The unpadded base64url HMAC-SHA256 of ``canonical`` (on every signed request:
    a known secret's HMAC is taken from the cache without calling hmac_for)."""
    return b2a_base64((_keyed_hmacs.get(secret) or hmac_for(secret))(canonical),
                      newline=False).translate(_URLSAFE)[:43].decode()


# ---------------------------------------------------------------------------
# Signing and verifying

def check_nonce(nonce: object) -> str:
    """Return ``nonce`` if it is 32 lowercase hex characters; raise ``ValueError`` otherwise."""
    if not isinstance(nonce, str) or not _NONCE_RE.match(nonce):
        raise ValueError("a nonce must be 32 lowercase hex characters")
    return nonce


def sign(keys: KeySource, method: str, host: str, path: str | bytes, query: str,
         headers: Headers, *, now: float, nonce: str, body: bytes | None = None) -> str:
    """Return the ``X-WSGIProxy-Signature`` value for a request about to be sent.

    :param keys: the first key signs (``keys.signing_key()``).
    :param host: the Host header sent.
    :param path: the request path as sent (percent-encoded).
    :param query: the query string as sent.
    :param headers: the ``(name, value)`` pairs sent; all signed ones are covered.
    :param now: the time to sign with, in unix seconds.
    :param nonce: never used before with this key; 32 lowercase hex characters
        (:func:`check_nonce`, not called here: a fresh nonce needs no check).
    :param body: when given (bytes), a SHA-256 digest of it is covered too.
    """
    key_id, secret = keys.signing_key()
    timestamp = str(int(now))
    digest = "-" if body is None else _body_digest(body)
    (listed, count), parts = _covered_parts(headers, _v1_forms, "\n%s:", _v1_made)
    canonical = _canonical_bytes(method, host, path, query, timestamp, nonce, digest, parts,
                                 count)
    return "".join(("v1 kid=", key_id, ", ts=", timestamp, ", nonce=", nonce, ", body=",
                    digest, listed, _hmac(secret, canonical)))


_v1_forms: dict[tuple[Any, ...], Form | None] = {}


def _v1_made(names: tuple[str, ...]) -> tuple[str, int]:
    """What v1 makes of the covered names: its text from ``, headers=`` to ``sig=``,
    and how many."""
    return ", headers=%s, sig=" % (";".join(names) or "-"), len(names)


def _value_parts(names: tuple[str, ...], line: str) -> list[Any]:
    """``[line % name, None, ...]``: a request's copy gets a value at each None (then
    joined: cheaper than %-formatting a template, which costs per character)."""
    parts: list[Any] = []
    for name in names:
        parts += [line % name, None]
    return parts


def parse_signature(value: str | None) -> Signature:
    """Parse an ``X-WSGIProxy-Signature`` value into a :class:`Signature`.

    Raises :class:`SignatureError` ``"missing"`` for an empty value and
    ``"malformed"`` for anything not exactly in the documented format.
    """
    if value is None or (isinstance(value, str) and not value.strip(" \t")):
        raise SignatureError("missing")
    if not isinstance(value, str):
        raise SignatureError("malformed", "not a string")
    text = value.strip(" \t")
    version, sep, rest = text.partition(" ")
    if version != "v1" or not sep:
        raise SignatureError("malformed", "expected a value starting with 'v1 '")
    fields = {}
    # A plain split: no field may hold a quote or a comma, and an empty element
    # is malformed here (abnf.split_comma_list would skip it).
    for part in rest.split(","):
        name, eq, field = part.strip(" \t").partition("=")
        if not eq or name not in _SIG_FIELDS:
            raise SignatureError("malformed", "unexpected field %r" % name[:20])
        if name in fields:
            raise SignatureError("malformed", "field %s given twice" % name)
        fields[name] = field
    missing = [name for name in _SIG_FIELDS if name not in fields]
    if missing:
        raise SignatureError("malformed", "missing field(s) %s" % ", ".join(missing))
    if not _KID_RE.match(fields["kid"]):
        raise SignatureError("malformed", "kid must be 16 hex characters")
    if not _TS_RE.match(fields["ts"]):
        raise SignatureError("malformed", "ts must be unix seconds")
    if not _NONCE_RE.match(fields["nonce"]):
        raise SignatureError("malformed", "nonce must be 32 hex characters")
    if fields["body"] != "-" and not _DIGEST_RE.match(fields["body"]):
        raise SignatureError("malformed", "body must be '-' or an unpadded base64url SHA-256")
    if not _DIGEST_RE.match(fields["sig"]):
        raise SignatureError("malformed", "sig must be an unpadded base64url HMAC-SHA256")
    names = () if fields["headers"] == "-" else tuple(fields["headers"].split(";"))
    if any(not _is_canonical_name(name) or not is_signed_header(name) for name in names):
        raise SignatureError("malformed", "headers must list lower-case signed header names")
    if len(set(names)) != len(names):
        raise SignatureError("malformed", "headers lists a name twice")
    return Signature(fields["kid"], int(fields["ts"]), fields["nonce"], fields["body"],
                     names, fields["sig"])


def verify(keys: KeySource, signature: str | None, method: str, host: str,
           path: str | bytes, query: str, headers: Headers, *, now: float,
           window: float = DEFAULT_SIGNATURE_WINDOW, nonce_store: NonceChecker | None = None,
           body: bytes | Callable[[], bytes | None] | None = None) -> str:
    """Check a received request's signature; return the id of the key that verified it.

    Raises :class:`SignatureError` with the reason.  Checks run in this
    order, so a reason is only given for an authentic signature where that
    matters: format, key, covered header set, HMAC (constant time),
    timestamp window, body digest, then the nonce -- which is only recorded
    for a request that passed everything else.

    :param keys: ``keys.get(key_id)`` gives the secret of a key id.
    :param path: the decoded ``(SCRIPT_NAME + PATH_INFO).encode("latin-1")``
        (bytes) or the path as sent (str).
    :param headers: the received headers, e.g. the environ's ``HTTP_*`` items.
    :param now: the receiver's time, in unix seconds.
    :param window: seconds the signature's timestamp may differ from ``now``.
    :param nonce_store: records the nonce (``check_and_add``); ``None`` skips it.
    :param body: the request body (bytes), or a function of no arguments that
        reads and returns it.  The function is called only when the signature
        claims a body digest, and only once the HMAC -- which covers that
        claimed digest -- and the window have been checked: a stranger cannot
        make the receiver read a body.  Whatever it raises propagates.
    """
    parsed = parse_signature(signature)
    secret = keys.get(parsed.key_id)
    if secret is None:
        raise SignatureError("unknown key", "key id %s is not in the secret file" % parsed.key_id)
    received = _signed_headers(headers)
    received_names = {name for name, _ in received}
    if received_names != set(parsed.headers):
        missing = sorted(set(parsed.headers) - received_names)
        extra = sorted(received_names - set(parsed.headers))
        detail = []
        if missing:
            detail.append("signed header(s) %s did not arrive" % ", ".join(missing))
            if _WAITRESS_STRIPPED.intersection(missing):
                detail.append("waitress removes X-Forwarded-* and Forwarded unless "
                              "clear_untrusted_proxy_headers = false")
        if extra:
            detail.append("header(s) %s are not covered by the signature" % ", ".join(extra))
        raise SignatureError("bad signature", "; ".join(detail))
    canonical = _canonical_bytes(method, host, path, query, str(parsed.timestamp), parsed.nonce,
                                 parsed.body_digest, _header_lines(received), len(received))
    if not hmac.compare_digest(_hmac(secret, canonical), parsed.sig):
        raise SignatureError("bad signature", "the request differs from the one signed")
    if abs(now - parsed.timestamp) > window:
        raise SignatureError("expired", "timestamp %d is %d seconds away from this server's "
                             "clock; the window is %d seconds"
                             % (parsed.timestamp, abs(now - parsed.timestamp), window))
    if parsed.body_digest != "-":
        if callable(body):
            body = body()
        if body is None:
            raise SignatureError("body mismatch", "the signature covers a body that was not read")
        if not hmac.compare_digest(_body_digest(body), parsed.body_digest):
            raise SignatureError("body mismatch", "the body differs from the one signed")
    if nonce_store is not None:
        expires_at = parsed.timestamp + window + 1
        if not nonce_store.check_and_add(parsed.key_id, parsed.nonce, expires_at):
            raise SignatureError("replayed", "nonce %s was already used" % parsed.nonce)
    return parsed.key_id
