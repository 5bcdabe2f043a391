"""The WSGIProxy wire protocol, "sans-IO": header names, value codecs and request signatures.

Both ends import this one module -- ``WSGIProxyApp``
encodes and signs with it, :class:`~wsgiproxy.middleware.WSGIProxyMiddleware`
verifies and decodes with it -- so the encoder and the decoder cannot drift
apart.  Everything here works on plain ``str``/``bytes``/``dict`` values: no
sockets, no WSGI servers, no configuration parsing.  The only I/O is reading
the secret file in :class:`SecretKeys`.

Conventions (those of WSGI): a "native string" is a ``str`` holding bytes as
ISO-8859-1 (latin-1) characters, which is how WSGI servers hand over header
values, ``PATH_INFO`` and ``QUERY_STRING``.  Header names are accepted in
header form (``X-Forwarded-For``) or environ form (``HTTP_X_FORWARDED_FOR``)
wherever a name is taken.  No encoder here ever produces a value containing
CR, LF or NUL.

The format is described for implementers of the other side in
``docs/protocol.rst``.
"""

import base64
import binascii
import hashlib
import heapq
import hmac
import itertools
import ipaddress
import json
import logging
import os
import pickle
import re
import threading
import time
from collections import namedtuple
from urllib.parse import quote, unquote_to_bytes

from ..errors import NonceStoreFull, ProtocolError, SignatureError

__all__ = [
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

log = logging.getLogger("wsgiproxy.protocol")

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
#: The kinds of key header, in the order both sides process them.
KEY_KINDS = ("Str", "Unicode", "Json", "Pickle")
#: Seconds a signature's timestamp may differ from the receiver's clock.
DEFAULT_SIGNATURE_WINDOW = 300
#: Largest body (bytes) covered by a body digest, by default, on both sides.
DEFAULT_MAX_SIGNED_BODY = 1024 * 1024
#: Fixed so that senders and receivers on different Python versions agree.
PICKLE_PROTOCOL = 4


# ---------------------------------------------------------------------------
# Header names

_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters except HTAB


def canonical_header_name(name):
    """``X-Forwarded-For`` and ``HTTP_X_FORWARDED_FOR`` both become ``x-forwarded-for``.

    Lets callers pass either spelling; the environ form is recognised by its
    ``HTTP_`` prefix.
    """
    if not isinstance(name, str):
        raise TypeError("a header name must be a str, not %s" % type(name).__name__)
    if name.startswith("HTTP_"):
        name = name[5:]
    return name.lower().replace("_", "-")


def environ_key(name):
    """``X-Forwarded-For`` -> ``HTTP_X_FORWARDED_FOR`` (the WSGI environ key of a header)."""
    return "HTTP_" + canonical_header_name(name).upper().replace("-", "_")


def check_header_value(value, what="header value"):
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

_LITERAL_RE = re.compile(rb"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\Z")
_B64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")


def encode_value(data):
    """Encode ``data`` (bytes) for a header: literally if that is unambiguous, else ``b64...``.

    Literal only when every byte is printable ASCII (0x20-0x7E), there is no
    leading or trailing space (servers strip them) and the text does not
    start with ``b64`` (the marker); the empty value is ``b64``.
    """
    data = bytes(data)
    if _LITERAL_RE.match(data) and not data.startswith(b"b64"):
        return data.decode("ascii")
    return "b64" + base64.b64encode(data).decode("ascii")


def decode_value(text):
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
    if _CTL_RE.search(text) or "\t" in text:
        raise ProtocolError("a literal value contains control characters")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise ProtocolError("a literal value contains characters outside ISO-8859-1") from None


# ---------------------------------------------------------------------------
# Key headers: X-WSGIProxy-<Kind>-<N>: <quoted key> <encoded value>

_KEY_NAME_RE = re.compile(r"x-wsgiproxy-(str|unicode|json|pickle)(?:-(.*))?\Z", re.S)
_KEY_INDEX_RE = re.compile(r"(?:0|[1-9][0-9]{0,5})\Z")
_QUOTED_KEY_RE = re.compile(r"(?:[A-Za-z0-9_.~/-]|%[0-9A-Fa-f]{2})+\Z")
_KIND_BY_LOWER = {kind.lower(): kind for kind in KEY_KINDS}


def key_header_kind(header_name):
    """``"Str"``/``"Unicode"``/``"Json"``/``"Pickle"`` for a key header name, else ``None``.

    Any name claiming a kind counts (``X-WSGIProxy-Pickle-x`` is ``"Pickle"``),
    so a malformed pickle header is still recognised -- and refused -- as one.
    """
    if not isinstance(header_name, str):
        return None
    match = _KEY_NAME_RE.match(canonical_header_name(header_name))
    return _KIND_BY_LOWER[match.group(1)] if match else None


def _key_header_index(header_name):
    match = _KEY_NAME_RE.match(canonical_header_name(header_name))
    if not match:
        raise ProtocolError("%r is not an X-WSGIProxy key header" % (header_name,))
    index = match.group(2)
    if index is None or not _KEY_INDEX_RE.match(index):
        raise ProtocolError("key header %r has no valid number after its kind" % (header_name,))
    return _KIND_BY_LOWER[match.group(1)], int(index)


def _quote_key(key):
    if not isinstance(key, str):
        raise TypeError("environ key %r is not a str" % (key,))
    if not key:
        raise ValueError("an empty environ key cannot be sent")
    try:
        return quote(key, safe="", encoding="utf-8", errors="strict")
    except UnicodeEncodeError:
        raise ValueError("environ key %r cannot be encoded as UTF-8" % (key,)) from None


def _unquote_key(quoted):
    if not _QUOTED_KEY_RE.match(quoted):
        raise ProtocolError("the key name is not correctly %-quoted")
    try:
        return unquote_to_bytes(quoted).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("the key name is not UTF-8 once unquoted") from None


def _encode_str(key, value):
    if not isinstance(value, str):
        raise TypeError("environ[%r] is listed in string_keys but is a %s, not a str"
                        % (key, type(value).__name__))
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise TypeError("environ[%r] is listed in string_keys but is not a native (latin-1) "
                        "string; list it in unicode_keys" % (key,)) from None


def _encode_unicode(key, value):
    if not isinstance(value, str):
        raise TypeError("environ[%r] is listed in unicode_keys but is a %s, not a str"
                        % (key, type(value).__name__))
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise TypeError("environ[%r] is listed in unicode_keys but cannot be encoded as UTF-8"
                        % (key,)) from None


def _encode_json(key, value):
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError("environ[%r] is listed in json_keys but is not JSON-serialisable: %s"
                        % (key, exc)) from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the \\uXXXX escapes are still valid JSON
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _encode_pickle(key, value):
    try:
        return pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    except Exception as exc:  # pickling may fail in many ways (lambdas, sockets...)
        raise TypeError("environ[%r] is listed in pickle_keys but cannot be pickled: %s"
                        % (key, exc)) from None


def _decode_str(data):
    return data.decode("latin-1")


def _decode_unicode(data):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("the value is not valid UTF-8") from None


def _decode_json(data):
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("the JSON value is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise ProtocolError("the value is not valid JSON") from None


def _decode_pickle(data):
    try:
        return pickle.loads(data)
    except Exception:  # a broken pickle can raise almost anything
        raise ProtocolError("the value could not be unpickled") from None


_ENCODERS = {"Str": _encode_str, "Unicode": _encode_unicode, "Json": _encode_json,
             "Pickle": _encode_pickle}
_DECODERS = {"Str": _decode_str, "Unicode": _decode_unicode, "Json": _decode_json,
             "Pickle": _decode_pickle}


def _key_list(keys):
    if keys is None:
        return []
    if isinstance(keys, str):  # "A B,C" as in an .ini file, not an iterable of letters
        return [k for k in re.split(r"[\s,]+", keys) if k]
    return list(keys)


def encode_key_headers(environ, string_keys=(), unicode_keys=(), json_keys=(), pickle_keys=()):
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


def decode_key_header(header_name, value, allow_pickle=False):
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

def encode_path_header(path):
    """A native-string path (``SCRIPT_NAME``) -> the percent-encoded header value to send."""
    try:
        raw = path.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("path %r is not a native (latin-1) string" % (path,)) from None
    return quote(raw, safe="/")


def decode_path_header(value, header="path header"):
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
    if _CTL_RE.search(path) or "\t" in path:
        raise ProtocolError("%s contains control characters" % header)
    return path


# ---------------------------------------------------------------------------
# Signatures

_SIGNED_PREFIXES = ("x-wsgiproxy-", "x-forwarded-", "x-traversal-")
_SIGNED_NAMES = frozenset(["x-script-name", "forwarded"])
_SIGNATURE_CANONICAL = "x-wsgiproxy-signature"
_CANON_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+\Z")
_NONCE_RE = re.compile(r"[0-9a-f]{32}\Z")
_KID_RE = re.compile(r"[0-9a-f]{16}\Z")
_DIGEST_RE = re.compile(r"[A-Za-z0-9_-]{43}\Z")
_TS_RE = re.compile(r"[0-9]{1,12}\Z")
_SIG_FIELDS = ("kid", "ts", "nonce", "body", "headers", "sig")
_WAITRESS_STRIPPED = frozenset(["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
                                "x-forwarded-port", "x-forwarded-by", "forwarded"])

#: A parsed ``X-WSGIProxy-Signature`` value (see :func:`parse_signature`).
Signature = namedtuple("Signature", "key_id timestamp nonce body_digest headers sig")


def is_signed_header(name):
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
_signed_names = {}
_SIGNED_NAMES_MAX = 4096
_SIGNED_NAME_LENGTH_MAX = 100
_UNSEEN = object()


def _signed_name(name):
    """The canonical name of a signed header, ``None`` for others (cached)."""
    try:
        return _signed_names[name]
    except KeyError:
        pass
    canonical = canonical_header_name(name)
    if canonical == _SIGNATURE_CANONICAL or not (
            canonical.startswith(_SIGNED_PREFIXES) or canonical in _SIGNED_NAMES):
        canonical = None
    elif not _CANON_NAME_RE.match(canonical):
        raise ProtocolError("header name %r is not a valid token" % (name,))
    if len(_signed_names) < _SIGNED_NAMES_MAX and len(name) <= _SIGNED_NAME_LENGTH_MAX:
        _signed_names[name] = canonical
    return canonical


def _b64url(digest):
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _body_digest(body):
    if body is None:
        return "-"
    if isinstance(body, str):
        raise TypeError("the body must be bytes, not str")
    return _b64url(hashlib.sha256(body).digest())


def _signed_headers(headers):
    """The covered headers as sorted ``[(canonical name, stripped value)]``; empty ones left out."""
    items = headers.items() if hasattr(headers, "items") else headers
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


def _sender_signed_headers(headers):
    """:func:`_signed_headers` for the list a sender is about to send, planned once per
    tuple of header names: which positions are signed, in which order."""
    if headers.__class__ is list:
        names = tuple([pair[0] for pair in headers])
        plan = _signed_plans.get(names)
        if plan is None:
            plan = _signed_plan(names)
        if plan:
            try:
                return [(canonical, value) for i, canonical in plan
                        if (value := headers[i][1].strip(" \t"))]
            except (AttributeError, TypeError):
                pass  # a value that is not a str: _signed_headers says which
    return _signed_headers(headers)


# A tuple of header names -> [(position, canonical name)] of the signed ones,
# sorted by name; ``False`` when a signed name repeats (_signed_headers then
# decides, by value).  Bounded in entries and in the length of the names, so
# a caller passing client-chosen names cannot grow it much.
_signed_plans = {}
_PLANS_MAX = 1024
_PLAN_NAMES_MAX = 2048  # characters of names in one cached tuple


def _signed_plan(names):
    signed = []
    for i, name in enumerate(names):
        canonical = _signed_name(name) if isinstance(name, str) else None
        if canonical is not None:
            signed.append((canonical, i))
    plan = [(i, canonical) for canonical, i in sorted(signed)]
    if len({canonical for canonical, _ in signed}) != len(signed):
        plan = False
    if (len(_signed_plans) < _PLANS_MAX
            and sum(len(name) for name in names if isinstance(name, str)) <= _PLAN_NAMES_MAX):
        _signed_plans[names] = plan
    return plan


_PLAIN_PATH = re.compile(r"[A-Za-z0-9_.~/-]*\Z").match  # canonical as it is


def _canonical_path(path):
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


def canonical_request(method, host, path, query, timestamp, nonce, body_digest, headers):
    """The bytes that are HMAC'd: one field per line, then one ``name:value`` line per header.

    ``path`` is the path as sent (str, percent-encoded) or the decoded path
    (bytes); both give the same canonical path.  ``headers`` may include
    headers that are not signed; only :func:`is_signed_header` ones are used.
    Exposed so that other implementations can compare their canonical form.
    """
    return _canonical_bytes(method, host, path, query, timestamp, nonce, body_digest,
                            _signed_headers(headers))


def _canonical_bytes(method, host, path, query, timestamp, nonce, body_digest, signed):
    """canonical_request() for headers already reduced by _signed_headers()."""
    method, host, query = method or "", host or "", query or ""  # None means empty
    try:
        lines = ["wsgiproxy-signature-v1", method.upper(), host.lower(),
                 _canonical_path(path), query, str(int(timestamp)), nonce, body_digest]
        lines += [name + ":" + value for name, value in signed]
        text = "\n".join(lines)
    except (AttributeError, TypeError):  # say which field is not a str
        for i, value in ((1, method), (2, host), (4, query), (6, nonce), (7, body_digest)):
            if not isinstance(value, str):
                raise ProtocolError("%s must be a str, not %s"
                                    % (_CANONICAL_FIELDS[i], type(value).__name__)) from None
        raise
    # One scan instead of one per value: a CR, LF or NUL anywhere is refused.
    if text.count("\n") != len(lines) - 1 or "\r" in text or "\0" in text:
        raise ProtocolError("the request to sign contains CR, LF or NUL")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise ProtocolError("the request contains characters outside ISO-8859-1 "
                            "(header values are bytes on the wire)") from None


_CANONICAL_FIELDS = ("the prefix", "the method", "the host", "the path", "the query string",
                     "the timestamp", "the nonce", "the body digest")


# secret -> an HMAC-SHA256 keyed with it, copied per message (cheaper than
# keying a new one each time).  Holds the few configured keys; bounded anyway.
_keyed_hmacs = {}


def _hmac(secret, canonical):
    """The unpadded base64url HMAC-SHA256 of ``canonical``."""
    keyed = _keyed_hmacs.get(secret)
    if keyed is None:
        keyed = hmac.new(secret, digestmod=hashlib.sha256)
        if len(_keyed_hmacs) < 64:
            _keyed_hmacs[secret] = keyed
    mac = keyed.copy()
    mac.update(canonical)
    return _b64url(mac.digest())


class _NonceSource:
    """Nonces that never repeat: a random 64-bit prefix per process, then a counter.

    A nonce only has to be unique (the signature, not the nonce, is the
    secret part); this costs no system call per request, unlike
    ``os.urandom``.  A forked child draws a new prefix, so parent and
    children never share a nonce.
    """

    def __init__(self):
        self.reseed()

    def reseed(self):
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def __call__(self):
        return "%s%016x" % (self.prefix, next(self.counter))  # next() on count is atomic


new_nonce = _NonceSource()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=new_nonce.reseed)


def _as_keys(keys):
    if isinstance(keys, (bytes, str)):
        return SecretKeys.from_secrets([keys])
    return keys


def sign_request(keys, method, host, path, query, headers, *, body=None, now=None, nonce=None):
    """Return the ``X-WSGIProxy-Signature`` value for a request about to be sent.

    ``keys`` is a :class:`SecretKeys` (the first key signs).  ``host`` is the
    Host header sent, ``path`` the request path as sent (percent-encoded),
    ``query`` the query string as sent, ``headers`` the ``(name, value)``
    pairs sent -- all signed ones are covered.  With ``body`` (bytes) a
    SHA-256 digest of it is covered too.  ``now`` and ``nonce`` are for tests.
    """
    keys = _as_keys(keys)
    key_id, secret = keys.signing_key()
    timestamp = int(time.time() if now is None else now)
    if nonce is None:
        nonce = new_nonce()
    elif not isinstance(nonce, str) or not _NONCE_RE.match(nonce):
        raise ValueError("a nonce must be 32 lowercase hex characters")
    digest = _body_digest(body)
    headers = _sender_signed_headers(headers)  # once: ``headers`` may be an iterator
    names = [name for name, _ in headers]
    canonical = _canonical_bytes(method, host, path, query, timestamp, nonce, digest, headers)
    return "v1 kid=%s, ts=%d, nonce=%s, body=%s, headers=%s, sig=%s" % (
        key_id, timestamp, nonce, digest, ";".join(names) or "-", _hmac(secret, canonical))


def parse_signature(value):
    """Parse an ``X-WSGIProxy-Signature`` value into a ``Signature`` named tuple.

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
    if any(not _CANON_NAME_RE.match(name) or not is_signed_header(name) for name in names):
        raise SignatureError("malformed", "headers must list lower-case signed header names")
    if len(set(names)) != len(names):
        raise SignatureError("malformed", "headers lists a name twice")
    return Signature(fields["kid"], int(fields["ts"]), fields["nonce"], fields["body"],
                     names, fields["sig"])


def verify_request(keys, signature, method, host, path, query, headers, *, now=None,
                   window=DEFAULT_SIGNATURE_WINDOW, nonce_store=None, body=None):
    """Check a received request's signature; return the id of the key that verified it.

    ``path`` is the decoded ``(SCRIPT_NAME + PATH_INFO).encode("latin-1")``
    (bytes) or the path as sent (str).  ``headers`` are the received headers,
    e.g. the environ's ``HTTP_*`` items.  Raises :class:`SignatureError` with
    the reason.  Checks run in this order, so a reason is only given for an
    authentic signature where that matters: format, key, covered header set,
    HMAC (constant time), timestamp window, body digest, then the nonce --
    which is only recorded for a request that passed everything else.

    ``body`` is the request body (bytes), or a function of no arguments that
    reads and returns it.  The function is called only when the signature
    claims a body digest, and only once the HMAC -- which covers that claimed
    digest -- and the window have been checked: a stranger cannot make the
    receiver read a body.  Whatever it raises propagates.
    """
    keys = _as_keys(keys)
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
    canonical = _canonical_bytes(method, host, path, query, parsed.timestamp, parsed.nonce,
                                 parsed.body_digest, received)
    if not hmac.compare_digest(_hmac(secret, canonical), parsed.sig):
        raise SignatureError("bad signature", "the request differs from the one signed")
    now = time.time() if now is None else now
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


# ---------------------------------------------------------------------------
# Secrets and nonces

def key_id_for(secret):
    """The public id of a secret: 16 hex characters of ``sha256(b"wsgiproxy-key-id:" + secret)``."""
    return hashlib.sha256(b"wsgiproxy-key-id:" + secret).hexdigest()[:16]


def _parse_secrets(data):
    secrets_ = []
    for line in data.splitlines():
        line = line.strip()
        if line and not line.startswith(b"#") and line not in secrets_:
            secrets_.append(line)
    return [(key_id_for(secret), secret) for secret in secrets_]


class SecretKeys:
    """The shared secrets of a secret file: the first signs, any of them verifies.

    Each non-empty line not starting with ``#`` is one secret (surrounding
    whitespace stripped), so a one-line file is the original WSGIProxy
    format and several lines allow rotation without downtime: add the new
    key as a second line everywhere, then move it first, then drop the old.
    The file is re-read when its mtime, size or inode changes, checked at
    most every ``check_interval`` seconds.  An empty, missing or unreadable
    file raises ``ValueError`` (naming the path, never the content) at
    construction; a later bad version is logged and the old keys are kept,
    so a half-written file cannot take the service down.
    """

    def __init__(self, path, check_interval=1.0):
        self.path = os.fspath(path)
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._stat_failed = False
        try:
            self._state, self._stat_key = self._read()
        except OSError as exc:
            raise ValueError("cannot read secret file %r: %s" % (self.path, exc.strerror or exc)) \
                from None
        self._next_check = time.monotonic() + check_interval

    @classmethod
    def from_secrets(cls, secrets):
        """In-memory keys (``str`` secrets are UTF-8 encoded); for tests and programmatic use."""
        if isinstance(secrets, (bytes, str)):
            secrets = [secrets]
        raw = []
        for secret in secrets:
            secret = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
            secret = secret.strip()
            if not secret:
                raise ValueError("an empty secret is not a secret")
            if secret not in raw:
                raw.append(secret)
        if not raw:
            raise ValueError("no secret given")
        self = cls.__new__(cls)
        self.path = None
        self.check_interval = None
        self._lock = threading.Lock()
        self._stat_failed = False
        self._stat_key = None
        self._state = cls._make_state([(key_id_for(s), s) for s in raw])
        self._next_check = float("inf")
        return self

    @staticmethod
    def _make_state(pairs):
        return pairs, dict(pairs)

    def _read(self):
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
        pairs = _parse_secrets(data)
        if not pairs:
            raise ValueError("secret file %r holds no secret (only empty or # lines)" % self.path)
        if any(len(secret) < 16 for _, secret in pairs):
            log.warning("secret file %s holds a secret shorter than 16 bytes; use a long random "
                        "one (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')",
                        self.path)
        if st.st_mode & 0o077 and os.name == "posix":
            log.warning("secret file %s can be read by other users (mode %03o): whoever reads "
                        "it can sign requests; chmod 600 it", self.path, st.st_mode & 0o777)
        return self._make_state(pairs), (st.st_mtime_ns, st.st_size, st.st_ino)

    def _maybe_reload(self):
        now = time.monotonic()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + self.check_interval
            try:
                st = os.stat(self.path)
            except OSError as exc:
                if not self._stat_failed:
                    log.warning("secret file %s is not readable (%s); keeping the keys loaded "
                                "before", self.path, exc.strerror or exc)
                    self._stat_failed = True
                return
            self._stat_failed = False
            stat_key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stat_key == self._stat_key:
                return
            try:
                self._state, self._stat_key = self._read()
            except (OSError, ValueError) as exc:
                self._stat_key = stat_key  # warn once per version of the file
                log.warning("secret file %s could not be reloaded (%s); keeping the %d key(s) "
                            "loaded before", self.path,
                            getattr(exc, "strerror", None) or exc, len(self._state[0]))
                return
            log.info("secret file %s reloaded: %d key(s)", self.path, len(self._state[0]))

    def signing_key(self):
        """``(key id, secret)`` of the key that signs: the first one."""
        self._maybe_reload()
        return self._state[0][0]

    def get(self, key_id):
        """The secret with this key id, or ``None``."""
        self._maybe_reload()
        return self._state[1].get(key_id)

    @property
    def key_ids(self):
        """The key ids, signing key first (they are public; the secrets are not)."""
        self._maybe_reload()
        return [key_id for key_id, _ in self._state[0]]

    def __repr__(self):  # never the secrets
        return "<SecretKeys %s: %s>" % (self.path or "in memory", ", ".join(self.key_ids))


class NonceStore:
    """Remembers the nonces of accepted signatures, so a captured request cannot be replayed.

    An interface: implement :meth:`check_and_add` atomically over a shared
    store (Redis ``SET key 1 NX EXAT expires_at``, say) when several
    processes verify requests signed with the same secret.
    """

    def check_and_add(self, key_id, nonce, expires_at):
        """Record ``nonce`` until ``expires_at`` (unix seconds); False if it was already there."""
        raise NotImplementedError


#: Default capacity of MemoryNonceStore: a 300 s window at ~1,500 signed
#: requests/s per process.  About 200 bytes per live nonce, so at most ~100 MB.
DEFAULT_NONCE_CAPACITY = 500000


class MemoryNonceStore(NonceStore):
    """A thread-safe, in-process :class:`NonceStore` with expiry and a size cap.

    Expired entries are dropped as time passes.  Size it for the signature
    window times the peak rate of signed requests per process.  When
    ``max_entries`` live entries are held it raises :class:`NonceStoreFull`
    (the middleware answers 503 and logs the reason) rather than forgetting
    live ones, which would re-open replays.  Only one process is protected;
    with several workers each remembers its own nonces (use a shared store).
    """

    def __init__(self, max_entries=DEFAULT_NONCE_CAPACITY, clock=time.time):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries = {}
        self._heap = []
        self._full_warned = False

    def _expire(self, now):
        heap, entries = self._heap, self._entries
        while heap and heap[0][0] < now:
            expires_at, key = heapq.heappop(heap)
            if entries.get(key) == expires_at:
                del entries[key]

    def check_and_add(self, key_id, nonce, expires_at):
        try:  # 24 bytes instead of a tuple of two strings: ~200 bytes per entry in all
            key = bytes.fromhex(key_id + nonce)
        except (TypeError, ValueError):
            key = (key_id, nonce)
        with self._lock:
            now = self._clock()
            self._expire(now)
            if key in self._entries:
                return False
            if len(self._entries) >= self.max_entries:
                if not self._full_warned:
                    log.warning("nonce store is full (%d live entries): refusing signed requests "
                                "until entries expire; raise max_entries (nonce_cache_size) or "
                                "use a shared store", self.max_entries)
                    self._full_warned = True
                raise NonceStoreFull("the nonce store is full (%d live nonces)" % self.max_entries)
            self._full_warned = False
            self._entries[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return True

    def __len__(self):
        with self._lock:
            self._expire(self._clock())
            return len(self._entries)


# ---------------------------------------------------------------------------
# RFC 7239 Forwarded, X-Forwarded-* lists, addresses and hosts

_FWD_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Unquoted values are a token; ':' '[' ']' are accepted too because proxies
# emit for=192.0.2.1:80 and for=[2001:db8::1] unquoted although RFC 7239 says
# to quote them.
_FWD_VALUE_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z:\[\]-]+")
_FWD_QUOTED_RE = re.compile(
    r'"((?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*)"')
_FWD_UNESCAPE_RE = re.compile(r"\\(.)", re.S)
_OBF_RE = re.compile(r"_[A-Za-z0-9._-]+\Z")
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")


def _skip_ows(value, pos):
    while pos < len(value) and value[pos] in " \t":
        pos += 1
    return pos


def parse_forwarded(value):
    """Parse an RFC 7239 ``Forwarded`` header into a list of dicts, one per hop, oldest first.

    Parameter names are lower-cased; quoted-string values are unescaped.
    Empty elements are skipped.  Raises :class:`ProtocolError` for unterminated
    quotes, a missing ``=``, a parameter repeated within one element, or stray
    characters.
    """
    if not isinstance(value, str):
        raise ProtocolError("Forwarded must be a str")
    elements, element = [], {}
    pos, end = 0, len(value)
    while True:
        pos = _skip_ows(value, pos)
        if pos >= end:
            break
        char = value[pos]
        if char == ",":
            if element:
                elements.append(element)
            element = {}
            pos += 1
            continue
        if char == ";":
            pos += 1
            continue
        match = _FWD_NAME_RE.match(value, pos)
        if not match:
            raise ProtocolError("Forwarded: expected a parameter name at character %d" % pos)
        name = match.group().lower()
        pos = match.end()
        if pos >= end or value[pos] != "=":
            raise ProtocolError("Forwarded: expected '=' after %r" % name)
        pos += 1
        if pos < end and value[pos] == '"':
            match = _FWD_QUOTED_RE.match(value, pos)
            if not match:
                raise ProtocolError("Forwarded: unterminated or invalid quoted string for %r"
                                    % name)
            param = _FWD_UNESCAPE_RE.sub(r"\1", match.group(1))
        else:
            match = _FWD_VALUE_RE.match(value, pos)
            if not match:
                raise ProtocolError("Forwarded: missing or invalid value for %r" % name)
            param = match.group()
        pos = match.end()
        if name in element:
            raise ProtocolError("Forwarded: parameter %r appears twice in one element" % name)
        element[name] = param
        pos = _skip_ows(value, pos)
        if pos < end and value[pos] not in ",;":
            raise ProtocolError("Forwarded: unexpected character at position %d" % pos)
    if element:
        elements.append(element)
    return elements


def _format_forwarded_value(value):
    if not isinstance(value, str):
        value = str(value)
    if _TOKEN_RE.match(value):
        return value
    if _CTL_RE.search(value):
        raise ProtocolError("a Forwarded value must not contain control characters")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ProtocolError("a Forwarded value must be ISO-8859-1") from None
    return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')


def format_forwarded(elements):
    """Format hops (mappings of parameter -> value, ``None`` skipped) as a ``Forwarded`` value.

    Values that are not tokens (IPv6 nodes, ports) are quoted; control
    characters raise :class:`ProtocolError`.
    """
    parts = []
    for element in elements:
        items = element.items() if hasattr(element, "items") else element
        pairs = []
        for name, value in items:
            if value is None:
                continue
            if not isinstance(name, str) or not _TOKEN_RE.match(name):
                raise ProtocolError("Forwarded parameter name %r is not a token" % (name,))
            pairs.append("%s=%s" % (name.lower(), _format_forwarded_value(value)))
        if pairs:
            parts.append(";".join(pairs))
    return ", ".join(parts)


def forwarded_node(address, port=None):
    """A ``for=``/``by=`` node: ``192.0.2.1``, ``[2001:db8::1]:8080``, ``unknown``, ``_hidden``."""
    if address is None or address == "":
        name = "unknown"
    elif address == "unknown" or _OBF_RE.match(address):
        name = address
    else:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            raise ValueError("%r is not an IP address, 'unknown' or an obfuscated node"
                             % (address,)) from None
        name = "[%s]" % ip if ip.version == 6 else str(ip)
    if port is not None and port != "":
        port = str(port)
        if not (_PORT_RE.match(port) and int(port) <= 65535) and not _OBF_RE.match(port):
            raise ValueError("%r is not a port" % (port,))
        name += ":" + port
    return name


def parse_node(value):
    """Parse a client address as found in ``for=`` or ``X-Forwarded-For``: ``(address, port)``.

    Accepts ``192.0.2.1``, ``192.0.2.1:80``, ``[2001:db8::1]``,
    ``[2001:db8::1]:80``, a bare ``2001:db8::1``, ``unknown`` and obfuscated
    ``_name`` nodes.  IP addresses come back normalised without brackets;
    ``port`` is a str or ``None``.  Raises :class:`ProtocolError` otherwise.
    """
    if not isinstance(value, str):
        raise ProtocolError("a node must be a str")
    text = value.strip(" \t")
    port = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ProtocolError("node %r has an unclosed '['" % text[:60])
        name, rest = text[1:close], text[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ProtocolError("node %r has stray characters after ']'" % text[:60])
            port = rest[1:]
        try:
            name = str(ipaddress.IPv6Address(name))
        except ValueError:
            raise ProtocolError("node %r is not a valid IPv6 address" % text[:60]) from None
    elif text.count(":") > 1:
        try:
            name = str(ipaddress.IPv6Address(text))
        except ValueError:
            raise ProtocolError("node %r is not a valid IPv6 address" % text[:60]) from None
    else:
        name, colon, port = text.partition(":")
        if not colon:
            port = None
        if name.lower() == "unknown":
            name = "unknown"
        elif not _OBF_RE.match(name):
            try:
                name = str(ipaddress.IPv4Address(name))
            except ValueError:
                raise ProtocolError("node %r is not an IP address, 'unknown' or an obfuscated "
                                    "identifier" % text[:60]) from None
    if port is not None:
        if not ((_PORT_RE.match(port) and int(port) <= 65535) or _OBF_RE.match(port)):
            raise ProtocolError("node %r has an invalid port" % text[:60])
    return name, port


def nth_from_right(value, n):
    """The ``n``-th item from the right of a comma list, or ``None`` if it has fewer than ``n``.

    Werkzeug ProxyFix semantics: each trusted proxy appends one value, so the
    ``n``-th from the right is the one written by the outermost of ``n``
    trusted proxies; anything further left was written by the client.  ``n``
    of 0 (or an empty value) gives ``None``.
    """
    if not n or not value:
        return None
    items = [item.strip(" \t") for item in value.split(",")]
    items = [item for item in items if item]
    if len(items) < n:
        return None
    return items[-n]


def _strip_brackets(text):
    if text.startswith("[") and "]" in text:
        inner, _, rest = text[1:].partition("]")
        return inner + rest
    return text


class TrustedNetworks:
    """A set of IP addresses and CIDR ranges (IPv4 and IPv6); ``"*"`` means every address.

    ``spec`` is a string or list of strings, items separated by commas or
    whitespace.  ``addr in networks`` never raises: anything that is not an
    IP address is not in the set.  ``[::1]`` brackets, zone ids and
    IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``) are understood.
    """

    def __init__(self, spec=None):
        self.everything = False
        self.networks = []
        if isinstance(spec, TrustedNetworks):
            self.everything, self.networks = spec.everything, list(spec.networks)
            return
        for item in self._items(spec):
            if item == "*":
                self.everything = True
                continue
            try:
                network = ipaddress.ip_network(_strip_brackets(item), strict=False)
            except ValueError:
                raise ValueError("trusted address %r is not an IP address or CIDR range"
                                 % (item,)) from None
            if network not in self.networks:
                self.networks.append(network)

    @staticmethod
    def _items(spec):
        if spec is None:
            return []
        if isinstance(spec, str):
            spec = [spec]
        items = []
        for part in spec:
            if not isinstance(part, str):
                raise TypeError("trusted addresses must be strings, not %r" % (part,))
            items.extend(item for item in re.split(r"[\s,]+", part) if item)
        return items

    def __contains__(self, addr):
        if self.everything:
            return True
        if not isinstance(addr, str) or not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(_strip_brackets(addr.strip()))
        except ValueError:
            return False
        candidates = [ip]
        if ip.version == 6 and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(candidate.version == network.version and candidate in network
                   for candidate in candidates for network in self.networks)

    def __bool__(self):
        return self.everything or bool(self.networks)

    def __repr__(self):
        if self.everything:
            return "TrustedNetworks('*')"
        return "TrustedNetworks(%r)" % " ".join(str(n) for n in self.networks)


#: Loopback peers: the default trust when neither a secret nor trusted addresses are configured.
LOOPBACK = TrustedNetworks("127.0.0.0/8 ::1")

_REG_NAME_RE = re.compile(r"[A-Za-z0-9._~%-]+\Z")


def split_host(value):
    """Split ``host[:port]`` into ``(host, port)``; IPv6 hosts keep their brackets.

    ``example.com:8080`` -> ``("example.com", 8080)``, ``[2001:db8::a]`` ->
    ``("[2001:db8::a]", None)``.  Brackets are kept so that ``host + ":" +
    port`` stays a valid authority.  Raises :class:`ProtocolError` for
    anything else (bad characters, bad port, bad IPv6, userinfo...).
    """
    if not isinstance(value, str):
        raise ProtocolError("a host must be a str")
    text = value.strip(" \t")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ProtocolError("host %r has an unclosed '['" % text[:100])
        host, rest = text[:close + 1], text[close + 1:]
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner.replace("%25", "%"))
        except ValueError:
            raise ProtocolError("host %r is not a valid IPv6 literal" % text[:100]) from None
        if rest and not rest.startswith(":"):
            raise ProtocolError("host %r has stray characters after ']'" % text[:100])
        port = rest[1:] if rest else ""
    else:
        host, _, port = text.partition(":")
        if not host or not _REG_NAME_RE.match(host):
            raise ProtocolError("host %r is not a valid host name" % text[:100])
    if port == "":
        return host, None
    if not _PORT_RE.match(port) or int(port) > 65535:
        raise ProtocolError("host %r has an invalid port" % text[:100])
    return host, int(port)


def default_port(scheme):
    """443 for https, 80 for anything else."""
    return 443 if scheme == "https" else 80


def join_host(host, port=None, scheme=None):
    """``host[:port]``, bracketing a bare IPv6 address; the port is left out when it is
    the default for ``scheme`` (so URLs built from it look like the ones clients typed)."""
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host
    if port is None or port == "":
        return host
    if scheme is not None and str(port) == str(default_port(scheme)):
        return host
    return "%s:%s" % (host, port)
