"""Header names and header values of the wire protocol (sans-IO).

The identity header names both sides use, the value codec (literal or
``b64``), the key headers (``X-WSGIProxy-<Kind>-<N>``) and the path-valued
headers.  Pure functions on ``str``/``bytes``; none of them ever produces a
value containing CR, LF or NUL.
"""

from __future__ import annotations

import base64
import binascii
import json
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from ..converters import aslist
from ..errors import ProtocolError

__all__ = [
    "FORWARDED", "FORWARDED_FOR", "FORWARDED_HOST", "FORWARDED_PORT", "FORWARDED_PREFIX",
    "FORWARDED_PROTO", "FORWARDED_SCHEME", "FORWARDED_SCRIPT_NAME", "FORWARDED_SERVER",
    "HEADER_PREFIX", "KEY_KINDS", "PICKLE_PROTOCOL", "PROTOCOL_VERSION", "REQUEST_ID",
    "REQUEST_ID_HEADER", "SCRIPT_NAME_HEADER", "SIGNATURE_HEADER", "TRAVERSAL_PATH",
    "TRAVERSAL_QUERY_STRING", "VERSION_HEADER", "canonical_header_name", "check_header_value",
    "check_request_id", "decode_key_header", "decode_path_header", "decode_value",
    "encode_key_headers", "encode_path_header", "encode_value", "environ_key", "key_header_kind",
]

#: Value of the ``X-WSGIProxy-Version`` header.
PROTOCOL_VERSION = "1"
HEADER_PREFIX = "X-WSGIProxy-"
VERSION_HEADER = "X-WSGIProxy-Version"
SIGNATURE_HEADER = "X-WSGIProxy-Signature"
# The identity headers: set by WSGIProxyApp, read by WSGIProxyMiddleware.
FORWARDED_FOR = "X-Forwarded-For"
FORWARDED_SERVER = "X-Forwarded-Server"
FORWARDED_SCHEME = "X-Forwarded-Scheme"
FORWARDED_SCRIPT_NAME = "X-Forwarded-Script-Name"
TRAVERSAL_PATH = "X-Traversal-Path"
TRAVERSAL_QUERY_STRING = "X-Traversal-Query-String"
# Set with ``forwarded = true`` for backends without the middleware, and read
# from front proxies (nginx, ProxyFix's names).
FORWARDED = "Forwarded"
FORWARDED_PROTO = "X-Forwarded-Proto"
FORWARDED_HOST = "X-Forwarded-Host"
FORWARDED_PORT = "X-Forwarded-Port"
FORWARDED_PREFIX = "X-Forwarded-Prefix"
SCRIPT_NAME_HEADER = "X-Script-Name"
#: The request id as clients, load balancers and applications know it.
REQUEST_ID = "X-Request-ID"
#: The request id as WSGIProxyApp sends it: an X-WSGIProxy-* header, so it is signed
#: and believed like the other identity headers (and ignored by older middleware).
REQUEST_ID_HEADER = "X-WSGIProxy-Request-ID"
#: The kinds of key header, in the order both sides process them.
KEY_KINDS = ("Str", "Unicode", "Json", "Pickle")
#: Fixed so that senders and receivers on different Python versions agree.
PICKLE_PROTOCOL = 4


# ---------------------------------------------------------------------------
# Header names

CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters except HTAB


def canonical_header_name(name: str) -> str:
    """``X-Forwarded-For`` and ``HTTP_X_FORWARDED_FOR`` both become ``x-forwarded-for``.

    Lets callers pass either spelling; the environ form is recognised by its
    ``HTTP_`` prefix.
    """
    if not isinstance(name, str):
        raise TypeError("a header name must be a str, not %s" % type(name).__name__)
    return name.removeprefix("HTTP_").lower().replace("_", "-")


def environ_key(name: str) -> str:
    """``X-Forwarded-For`` -> ``HTTP_X_FORWARDED_FOR`` (the WSGI environ key of a header)."""
    return "HTTP_" + canonical_header_name(name).upper().replace("-", "_")


def check_header_value(value: str, what: str = "header value") -> str:
    """Return ``value`` if it may go into an HTTP header; raise :class:`ProtocolError` otherwise.

    A CR, LF or NUL would split or truncate the header block (response
    splitting, request smuggling), so they are refused everywhere.
    """
    if not isinstance(value, str):
        raise ProtocolError("%s must be a str, not %s" % (what, type(value).__name__))
    if "\r" in value or "\n" in value or "\0" in value:
        raise ProtocolError("%s contains CR, LF or NUL" % what)
    return value


# ---------------------------------------------------------------------------
# Values: literal printable ASCII, or "b64" + base64

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}\Z")
_LITERAL_RE = re.compile(rb"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\Z")
_B64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")


def encode_value(data: bytes) -> str:
    """Encode ``data`` (bytes) for a header: literally if that is unambiguous, else ``b64...``.

    Literal only when every byte is printable ASCII (0x20-0x7E), there is no
    leading or trailing space (servers strip them) and the text does not
    start with ``b64`` (the marker); the empty value is ``b64``.
    """
    data = bytes(data)
    if _LITERAL_RE.match(data) and not data.startswith(b"b64"):
        return data.decode("ascii")
    return "b64" + base64.b64encode(data).decode("ascii")


def decode_value(text: str) -> bytes:
    """Inverse of :func:`encode_value`: header text -> bytes.

    Raises :class:`ProtocolError` for bad base64 or an ambiguous literal.
    """
    if not isinstance(text, str):
        raise ProtocolError("a header value must be a str")
    if text.startswith("b64"):
        encoded = text[3:]
        if not _B64_RE.match(encoded):
            raise ProtocolError("invalid base64 after the b64 marker")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid base64 after the b64 marker") from None
    if text == "" or text != text.strip(" \t"):
        raise ProtocolError("a literal value must not be empty or have surrounding whitespace")
    if CTL_RE.search(text) or "\t" in text:
        raise ProtocolError("a literal value contains control characters")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise ProtocolError("a literal value contains characters outside ISO-8859-1") from None


# ---------------------------------------------------------------------------
# Key headers: X-WSGIProxy-<Kind>-<N>: <quoted key> <encoded value>

_KEY_NAME_RE = re.compile(r"x-wsgiproxy-(str|unicode|json|pickle)(?:-(.*))?\Z", re.DOTALL)
_KEY_INDEX_RE = re.compile(r"(?:0|[1-9][0-9]{0,5})\Z")
_QUOTED_KEY_RE = re.compile(r"(?:[A-Za-z0-9_.~/-]|%[0-9A-Fa-f]{2})+\Z")
_KIND_BY_LOWER = {kind.lower(): kind for kind in KEY_KINDS}


def key_header_kind(header_name: object) -> str | None:
    """``"Str"``/``"Unicode"``/``"Json"``/``"Pickle"`` for a key header name, else ``None``.

    Any name claiming a kind counts (``X-WSGIProxy-Pickle-x`` is ``"Pickle"``),
    so a malformed pickle header is still recognised -- and refused -- as one.
    """
    if not isinstance(header_name, str):
        return None
    match = _KEY_NAME_RE.match(canonical_header_name(header_name))
    return _KIND_BY_LOWER[match.group(1)] if match else None


def _key_header_index(header_name: str) -> tuple[str, int]:
    match = _KEY_NAME_RE.match(canonical_header_name(header_name))
    if not match:
        raise ProtocolError("%r is not an X-WSGIProxy key header" % (header_name,))
    index = match.group(2)
    if index is None or not _KEY_INDEX_RE.match(index):
        raise ProtocolError("key header %r has no valid number after its kind" % (header_name,))
    return _KIND_BY_LOWER[match.group(1)], int(index)


def _quote_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError("environ key %r is not a str" % (key,))
    if not key:
        raise ValueError("an empty environ key cannot be sent")
    try:
        return quote(key, safe="", encoding="utf-8", errors="strict")
    except UnicodeEncodeError:
        raise ValueError("environ key %r cannot be encoded as UTF-8" % (key,)) from None


def _unquote_key(quoted: str) -> str:
    if not _QUOTED_KEY_RE.match(quoted):
        raise ProtocolError("the key name is not correctly %-quoted")
    try:
        return unquote_to_bytes(quoted).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("the key name is not UTF-8 once unquoted") from None


def _encode_str(key: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("environ[%r] is listed in string_keys but is a %s, not a str"
                        % (key, type(value).__name__))
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise TypeError("environ[%r] is listed in string_keys but is not a native (latin-1) "
                        "string; list it in unicode_keys" % (key,)) from None


def _encode_unicode(key: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("environ[%r] is listed in unicode_keys but is a %s, not a str"
                        % (key, type(value).__name__))
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise TypeError("environ[%r] is listed in unicode_keys but cannot be encoded as UTF-8"
                        % (key,)) from None


def _encode_json(key: str, value: Any) -> bytes:
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError("environ[%r] is listed in json_keys but is not JSON-serialisable: %s"
                        % (key, exc)) from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the \\uXXXX escapes are still valid JSON
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _encode_pickle(key: str, value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 -- pickling fails in many ways (lambdas, sockets)
        raise TypeError("environ[%r] is listed in pickle_keys but cannot be pickled: %s"
                        % (key, exc)) from None


def _decode_str(data: bytes) -> str:
    return data.decode("latin-1")


def _decode_unicode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("the value is not valid UTF-8") from None


def _decode_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("the JSON value is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise ProtocolError("the value is not valid JSON") from None


def _decode_pickle(data: bytes) -> Any:
    try:
        return pickle.loads(data)  # only for signed requests (decode_key_header)
    except Exception:  # noqa: BLE001 -- a broken pickle can raise almost anything
        raise ProtocolError("the value could not be unpickled") from None


_ENCODERS: dict[str, Callable[[str, Any], bytes]] = {
    "Str": _encode_str, "Unicode": _encode_unicode, "Json": _encode_json,
    "Pickle": _encode_pickle}
_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "Str": _decode_str, "Unicode": _decode_unicode, "Json": _decode_json,
    "Pickle": _decode_pickle}

KeyNames = str | Iterable[str] | None


def _key_list(keys: KeyNames) -> list[str]:
    return aslist(keys)  # "A B,C" as in an .ini file, not an iterable of letters


def encode_key_headers(environ: Mapping[str, Any], string_keys: KeyNames = (),
                       unicode_keys: KeyNames = (), json_keys: KeyNames = (),
                       pickle_keys: KeyNames = ()) -> list[tuple[str, str]]:
    """Encode the named environ keys as ``[(header name, header value), ...]``.

    Keys absent from ``environ`` are skipped; ``N`` in ``X-WSGIProxy-<Kind>-N``
    counts the headers emitted for each kind from 0.  A value of the wrong
    type (a non-str under ``string_keys``, say) raises ``TypeError``
    naming the key, so a misconfiguration shows at the sender, not as a
    confusing value at the receiver.
    """
    headers = []
    for kind, keys in (("Str", string_keys), ("Unicode", unicode_keys),
                       ("Json", json_keys), ("Pickle", pickle_keys)):
        index = 0
        for key in _key_list(keys):
            if key not in environ:
                continue
            data = _ENCODERS[kind](key, environ[key])
            headers.append(("%s%s-%d" % (HEADER_PREFIX, kind, index),
                            "%s %s" % (_quote_key(key), encode_value(data))))
            index += 1
    return headers


def decode_key_header(header_name: str, value: str,
                      allow_pickle: bool = False) -> tuple[str, Any]:
    """Decode one key header into ``(environ key, value)``.

    Raises :class:`ProtocolError` for anything malformed.  A pickle header
    with ``allow_pickle`` false is refused before its value is even parsed,
    so nothing from an unverified request is ever unpickled.
    """
    if not isinstance(header_name, str) or not isinstance(value, str):
        raise ProtocolError("a key header name and value must be str")
    kind, _ = _key_header_index(header_name)
    if kind == "Pickle" and not allow_pickle:
        raise ProtocolError("pickle key headers are only accepted on signed requests")
    text = value.strip(" \t")
    quoted, sep, encoded = text.partition(" ")
    if not sep:
        raise ProtocolError("a key header value must be '<quoted key> <value>'")
    key = _unquote_key(quoted)
    return key, _DECODERS[kind](decode_value(encoded))


# ---------------------------------------------------------------------------
# Path-valued headers (X-Forwarded-Script-Name, X-Traversal-Path, ...)

def encode_path_header(path: str) -> str:
    """A native-string path (``SCRIPT_NAME``) -> the percent-encoded header value to send."""
    try:
        raw = path.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("path %r is not a native (latin-1) string" % (path,)) from None
    return quote(raw, safe="/")


def decode_path_header(value: str, header: str = "path header") -> str:
    """Inverse of :func:`encode_path_header`: percent-decode to a native string.

    Plain values (``/app``) pass unchanged, so senders that do not encode
    interoperate.  Control characters, once decoded, are refused.
    """
    text = check_header_value(value, header).strip(" \t")
    try:
        raw = unquote_to_bytes(text.encode("latin-1"))
    except UnicodeEncodeError:
        raise ProtocolError("%s contains characters outside ISO-8859-1" % header) from None
    path = raw.decode("latin-1")
    if CTL_RE.search(path) or "\t" in path:
        raise ProtocolError("%s contains control characters" % header)
    return path


# ---------------------------------------------------------------------------
# Request ids

def check_request_id(value: object) -> str | None:
    """A received ``X-Request-ID`` if it can be used as one, else ``None``.

    1 to 128 characters among letters, digits and ``._:@/+=-`` (what UUIDs,
    nginx's ``$request_id`` and cloud load balancers send): nothing that could
    break a log line or a header.
    """
    if isinstance(value, str) and _REQUEST_ID_RE.match(value):
        return value
    return None
