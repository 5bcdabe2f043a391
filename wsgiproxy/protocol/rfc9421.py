"""RFC 9421 HTTP message signatures (sans-IO): the signature base, signing and verifying.

The second signature format of the wire protocol (``signature_format =
rfc9421``): ``Signature-Input`` and ``Signature`` under the label
``wsgiproxy`` with ``tag="wsgiproxy"``, covering ``@method``,
``@authority``, ``@path``, ``@query``, the identity and key headers the
``v1`` format signs (:func:`~wsgiproxy.protocol.is_signed_header`) and,
when the body is covered, ``content-digest`` (RFC 9530).  Responses can be
signed too and bound to the request they answer (``"signature";req;key=
"wsgiproxy"``, RFC 9421 section 2.4).

Nothing here reads the clock, draws a nonce or touches a file: ``now`` and
``nonce`` are arguments.  Keys are objects with ``signer()`` (who signs:
``(alg, key id, function)``) and ``verifier(key_id)`` (``(alg, function)``
or ``None``): :class:`HMACKeys` adapts a :class:`~wsgiproxy.keys.SecretKeys`
(``hmac-sha256``), :class:`wsgiproxy.keys.PrivateKey` and
:class:`wsgiproxy.keys.PublicKeys` hold Ed25519 keys, :class:`KeyChain`
looks a key id up in several.  :func:`signature_base` is exposed so that
other implementations can compare theirs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from binascii import b2a_base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from ..errors import MessageSignatureError, ProtocolError
from .headers import canonical_header_name
from .signature import (
    _WAITRESS_STRIPPED,
    DEFAULT_SIGNATURE_WINDOW,
    Form,
    Headers,
    NonceChecker,
    _covered_parts,
    _signed_headers,
    hmac_for,
    is_signed_header,
)
from .structured import (
    StructuredFieldError,
    parse_dictionary,
    serialize_inner_list,
    serialize_member,
    serialize_string,
)

__all__ = [
    "BINDING", "CONTENT_DIGEST", "ED25519", "HMAC_SHA256", "LABEL", "REQUIRED", "SIGNATURE",
    "SIGNATURE_INPUT", "TAG", "Component", "HMACKeys", "KeyChain", "Message", "Parsed",
    "Signer", "Verifier", "authority", "check_nonce", "component_value", "content_digest",
    "parse_signature", "sign", "sign_response", "signature_base", "signature_params",
    "verify", "verify_response",
]

#: The label of WSGIProxy's signature in ``Signature-Input`` and ``Signature``.
LABEL = "wsgiproxy"
#: The ``tag`` parameter of WSGIProxy's signatures: a signature with another is not ours.
TAG = "wsgiproxy"
SIGNATURE_INPUT = "Signature-Input"
SIGNATURE = "Signature"
CONTENT_DIGEST = "Content-Digest"
HMAC_SHA256 = "hmac-sha256"
ED25519 = "ed25519"

#: A covered component: its name and its parameters, in order.
Component = tuple[str, tuple[tuple[str, Any], ...]]
#: What a request signature must cover, at least.
REQUIRED: tuple[Component, ...] = (("@method", ()), ("@authority", ()), ("@path", ()),
                                   ("@query", ()))
#: The component binding a response to the request's signature (``;req``).
BINDING: Component = ("signature", (("req", True), ("key", LABEL)))
_STATUS: Component = ("@status", ())
_CONTENT_DIGEST: Component = ("content-digest", ())
_DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
_NONCE_MIN, _PARAM_MAX = 16, 256
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_EMPTY: Mapping[str, str] = MappingProxyType({})


class Signer(Protocol):
    """Who signs: :class:`HMACKeys`, :class:`wsgiproxy.keys.PrivateKey`."""

    def signer(self) -> tuple[str, str, Callable[[bytes], bytes]]:
        """``(alg, key id, sign)``: ``sign(signature base)`` returns the signature's bytes."""


class Verifier(Protocol):
    """Who verifies: :class:`HMACKeys`, :class:`wsgiproxy.keys.PublicKeys`, :class:`KeyChain`."""

    def verifier(self, key_id: str) -> tuple[str, Callable[[bytes, bytes], bool]] | None:
        """``(alg, verify)`` of the key with this id (``verify(base, signature)``), or None."""


# ---------------------------------------------------------------------------
# Keys

class HMACKeys:
    """``hmac-sha256`` with the secrets of a :class:`~wsgiproxy.keys.SecretKeys`.

    The key id is the ``v1`` key id of the secret (:func:`~wsgiproxy.keys.key_id_for`);
    the first secret signs, every secret verifies.

    :param secrets: any object with ``signing_key()`` and ``get(key_id)``.
    """

    __slots__ = ("secrets", "_signing")

    def __init__(self, secrets: Any) -> None:
        self.secrets = secrets
        self._signing: tuple[Any, Any] = (None, None)  # (signing_key(), its signer())

    def signer(self) -> tuple[str, str, Callable[[bytes], bytes]]:
        """``("hmac-sha256", key id, sign)`` of the first secret."""
        key = self.secrets.signing_key()
        made, signer = self._signing
        if key is not made:  # (a reloaded secret file gives another key)
            signer = HMAC_SHA256, key[0], hmac_for(key[1])
            self._signing = key, signer
        return signer

    def verifier(self, key_id: str) -> tuple[str, Callable[[bytes, bytes], bool]] | None:
        """``("hmac-sha256", verify)`` of the secret with this key id, or None."""
        secret = self.secrets.get(key_id)
        if secret is None:
            return None
        sign = hmac_for(secret)
        return HMAC_SHA256, lambda data, signature: hmac.compare_digest(sign(data), signature)


class KeyChain:
    """Looks a key id up in several key sets, in order (secrets and public keys, say).

    :param sources: objects with ``verifier(key_id)``; ``None`` items are skipped.
    """

    def __init__(self, *sources: Any) -> None:
        self.sources = tuple(source for source in sources if source is not None)

    def verifier(self, key_id: str) -> tuple[str, Callable[[bytes, bytes], bool]] | None:
        """The first source's ``(alg, verify)`` for this key id, or None."""
        for source in self.sources:
            found = source.verifier(key_id)
            if found is not None:
                return found
        return None


# ---------------------------------------------------------------------------
# Components and the signature base

class Message(NamedTuple):
    """What a signature base is computed from: a request's or a response's components.

    ``fields`` maps lower-case header names to their values (several lines
    of one field joined with ``", "``); ``request`` is the request a
    response answers, for components with ``;req``.  A component whose part
    is ``None`` (or whose field is absent) cannot be covered.
    """

    method: str | None = None
    #: ``host[:port]``, lower case, without the scheme's default port (:func:`authority`).
    authority: str | None = None
    #: The path of the request target as sent (percent-encoded).
    path: str | None = None
    #: The query as sent, without the ``?``.
    query: str | None = None
    status: int | None = None
    fields: Mapping[str, str] = _EMPTY
    request: Message | None = None


def authority(host: str, scheme: str) -> str:
    """The ``@authority`` of a ``Host``: lower case, the scheme's default port removed."""
    host = host.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default and host.endswith(default):
        host = host[:-len(default)]
    return host


def _component_id(component: Component) -> str:
    """A component as it appears in a signature base and in ``Signature-Input``."""
    return serialize_inner_list([component], ())[1:-1]


def component_value(message: Message, component: Component) -> str:
    """The value of one covered component of ``message`` (RFC 9421 section 2).

    Supported: ``@method``, ``@authority``, ``@path``, ``@query``,
    ``@request-target``, ``@status``, header fields (with ``key`` for a
    dictionary member) and ``req`` on any of them.

    :raises ValueError: for a component the message does not have, or one
        this implementation does not support.
    """
    name, params = component
    if ("req", True) in params:
        if message.request is None:
            raise ValueError("%s: ;req on a message that answers no request"
                             % _component_id(component))
        message = message.request
        params = tuple(p for p in params if p[0] != "req")
    if name.startswith("@"):
        if params:
            raise ValueError("%s: parameters on a derived component are not supported"
                             % _component_id(component))
        value: Any
        if name == "@method":
            value = message.method
        elif name == "@authority":
            value = message.authority
        elif name == "@path":
            value = message.path or ("/" if message.path is not None else None)
        elif name == "@query":
            value = None if message.query is None else "?" + message.query
        elif name == "@request-target":
            value = None if message.path is None else message.path + (
                "?" + message.query if message.query else "")
        elif name == "@status":
            value = None if message.status is None else "%03d" % message.status
        else:
            raise ValueError("%s is not supported" % name)
        if value is None:
            raise ValueError("%s: the message has none" % name)
        return value
    value = message.fields.get(name)
    if value is None:
        raise ValueError("header %s is absent" % name)
    if not params:
        return value
    if len(params) == 1 and params[0][0] == "key" and isinstance(params[0][1], str):
        try:
            member = parse_dictionary(value).get(params[0][1])
        except StructuredFieldError as exc:
            raise ValueError("header %s is not a dictionary: %s" % (name, exc)) from None
        if member is None:
            raise ValueError("header %s has no member %s" % (name, params[0][1]))
        return serialize_member(member)
    raise ValueError("%s: these parameters are not supported" % _component_id(component))


def signature_params(covered: Sequence[Component],
                     params: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> str:
    """The ``@signature-params`` value: the covered components and the parameters,
    serialised (also the member's value in ``Signature-Input``)."""
    items = params.items() if isinstance(params, Mapping) else params
    return serialize_inner_list([(name, p) for name, p in covered], tuple(items))


def _base_text(lines: list[str]) -> bytes:
    return _encoded("\n".join(lines), len(lines))


def signature_base(message: Message, covered: Sequence[Component],
                   params: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> bytes:
    """The bytes that are signed (RFC 9421 section 2.5): one line per covered
    component, then ``"@signature-params"``.  Exposed so that other
    implementations can compare theirs.

    :raises ValueError: for a component the message does not have
        (:func:`component_value`); :class:`~wsgiproxy.errors.ProtocolError`
        (a ``ValueError``) for a value with CR, LF, NUL or non-ASCII characters.
    """
    lines = ["%s: %s" % (_component_id(c), component_value(message, c)) for c in covered]
    lines.append('"@signature-params": ' + signature_params(covered, params))
    return _base_text(lines)


# ---------------------------------------------------------------------------
# Finding a signature in a message

class Parsed(NamedTuple):
    """One signature of a message, as ``Signature-Input`` and ``Signature`` give it."""

    label: str
    covered: tuple[Component, ...]
    params: dict[str, Any]
    signature: bytes
    #: The ``Signature`` member serialised: what a bound response covers.
    binding: str

    def param(self, name: str, kind: type, required: bool = True) -> Any:
        """A parameter of the right type; raises ``malformed`` when it is not."""
        value = self.params.get(name)
        if value is None and not required:
            return None
        if type(value) is not kind:
            raise MessageSignatureError("malformed", "the %s parameter must be %s"
                                        % (name, "an integer" if kind is int else "a string"))
        return value


def _check_covered(items: list[Any]) -> tuple[Component, ...]:
    covered = []
    for value, params in items:
        if type(value) is not str or value != value.lower():
            raise MessageSignatureError("malformed", "covered components are lower-case strings")
        covered.append((value, tuple(params.items())))
    if len(set(covered)) != len(covered):
        raise MessageSignatureError("malformed", "a component is covered twice")
    return tuple(covered)


def parse_signature(signature_input: str | None, signature: str | None,
                    label: str = LABEL, tag: str | None = TAG) -> Parsed | None:
    """The signature under ``label`` whose ``tag`` is ``tag`` (any tag for ``None``).

    ``None`` when there is none: a signature under another label or with
    another tag is not ours, and is ignored.  Raises
    :class:`~wsgiproxy.errors.MessageSignatureError` ``malformed`` when a field
    is not a valid dictionary, or ours is incomplete.
    """
    if not signature_input:
        if signature and label in _members(signature, SIGNATURE):
            raise MessageSignatureError("malformed", "Signature has a %s member but "
                                        "Signature-Input has none" % label)
        return None
    member = _members(signature_input, SIGNATURE_INPUT).get(label)
    if member is None:
        return None
    items, params = member
    if not isinstance(items, list):
        raise MessageSignatureError("malformed", "Signature-Input %s is not an inner list" % label)
    if tag is not None and params.get("tag") != tag:
        return None
    value = _members(signature or "", SIGNATURE).get(label)
    if value is None:
        raise MessageSignatureError("malformed", "Signature has no %s member" % label)
    if not isinstance(value[0], bytes):
        raise MessageSignatureError("malformed", "Signature %s is not a byte sequence" % label)
    return Parsed(label, _check_covered(items), params, value[0], serialize_member(value))


def _members(value: str, field: str) -> dict[str, Any]:
    try:
        return parse_dictionary(value)
    except StructuredFieldError as exc:
        raise MessageSignatureError("malformed", "%s: %s" % (field, exc)) from None


# ---------------------------------------------------------------------------
# Signing and verifying requests

def check_nonce(nonce: object) -> str:
    """Return ``nonce`` if it can be one (16 to 256 printable ASCII characters, no ``"``
    or ``\\``, so it is a string as it is); else ``ValueError``."""
    if (not isinstance(nonce, str) or not _NONCE_MIN <= len(nonce) <= _PARAM_MAX
            or not nonce.isascii() or not nonce.isprintable() or '"' in nonce
            or "\\" in nonce):
        raise ValueError("a nonce must be 16 to 256 printable ASCII characters, "
                         "without \" or \\")
    return nonce


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` of a body (RFC 9530): ``sha-256=:<base64>:``."""
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError("the body must be bytes, not %s" % type(body).__name__)
    return "sha-256=:%s:" % base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


# key id -> the key id as a structured string; the few configured keys, bounded anyway.
_quoted_ids: dict[str, str] = {}


def _quoted(key_id: str) -> str:
    """A key id as a structured string, remembered for the few configured keys."""
    quoted = _quoted_ids.get(key_id)
    if quoted is None:
        quoted = serialize_string(key_id)
        if len(_quoted_ids) < 64:
            _quoted_ids[key_id] = quoted
    return quoted


def _params(created: int, window: float, nonce: str, key_id: str, alg: str) -> str:
    """The signature's parameters (``nonce`` as :func:`check_nonce` admits it)."""
    return ';created=%d;expires=%d;nonce="%s";keyid=%s;alg="%s";tag="wsgiproxy"' % (
        created, created + int(window), nonce, _quoted(key_id), alg)


def _encoded(text: str, lines: int) -> bytes:
    """``text`` (a signature base of ``lines`` lines) as bytes, refusing CR, LF, NUL and
    anything outside ASCII in a value: one scan for all of them."""
    if text.count("\n") != lines - 1 or "\r" in text or "\0" in text:
        raise ProtocolError("the signature base would contain CR, LF or NUL")
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise ProtocolError("a signed value holds characters outside ASCII (RFC 9421 "
                            "signs ASCII text)") from None


def sign(keys: Signer, method: str, authority: str, path: str, query: str, headers: Headers,
         *, now: float, nonce: str, body: bytes | None = None,
         window: float = DEFAULT_SIGNATURE_WINDOW) -> list[tuple[str, str]]:
    """The headers that sign a request about to be sent: ``Content-Digest`` (with a
    body), ``Signature-Input`` and ``Signature``, to be added after ``headers``.

    :param keys: ``keys.signer()`` signs.
    :param authority: the ``Host`` sent, through :func:`authority`.
    :param path: the path of the request target as sent (percent-encoded).
    :param query: the query as sent, without ``?``.
    :param headers: the ``(name, value)`` pairs sent; every signed one is covered.
    :param now: the time to sign with (``created``; ``expires`` is ``window`` later).
    :param nonce: never used before with this key (:func:`check_nonce`, not called here).
    :param body: when given (bytes), covered through ``content-digest``.
    """
    # On every signed request's path: strings are joined from parts planned per shape
    # of ``headers`` (bench/signing_cost.py --format rfc9421 measures it).
    global _last_times
    alg, key_id, signing = keys.signer()
    (inner, count), parts = _covered_parts(headers, _forms, '\n"%s": ', _made)
    created, added, times = int(now), [], _last_times
    if times[0] != created or times[1] != window:  # a new second: its text, made once
        times = _last_times = (created, window, ");created=%d;expires=%d" % (
            created, created + int(window)))
    if body is not None:
        digest = content_digest(body)
        added, inner, count = [(CONTENT_DIGEST, digest)], inner + ' "content-digest"', count + 1
        parts += ('\n"content-digest": ', digest)
    value = "".join((inner, times[2], ';nonce="', nonce, '";keyid=',
                     _quoted_ids.get(key_id) or _quoted(key_id), ';alg="', alg,
                     '";tag="wsgiproxy"'))
    base = _encoded("".join(('"@method": ', method, '\n"@authority": ', authority, '\n"@path": ',
                             path or "/", '\n"@query": ?', query, *parts,
                             '\n"@signature-params": ', value)), count + 5)
    added += ((SIGNATURE_INPUT, "wsgiproxy=" + value),
              (SIGNATURE, "wsgiproxy=:" + b2a_base64(signing(base), newline=False).decode() + ":"))
    return added


_forms: dict[tuple[Any, ...], Form | None] = {}
#: ``(created, window, ");created=...;expires=...")`` of the last request signed: the
#: text changes once a second, and every request of that second shares it.
_last_times: tuple[int, float, str] = (0, 0, "")


def _made(names: tuple[str, ...]) -> tuple[str, int]:
    """What RFC 9421 makes of the covered names: the covered list (open), how many."""
    return ('("@method" "@authority" "@path" "@query"'
            + "".join([' "%s"' % name for name in names]), len(names))


def _field_map(headers: Headers, wanted: set[str]) -> dict[str, str]:
    """``{lower-case name: value}`` of the ``wanted`` headers (repeated ones joined)."""
    items: Iterable[Any] = headers.items() if hasattr(headers, "items") else headers
    fields: dict[str, str] = {}
    for name, value in items:
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        name = canonical_header_name(name)
        if name in wanted:
            value = value.strip(" \t")
            fields[name] = fields[name] + ", " + value if name in fields else value
    return fields


def _check_params(parsed: Parsed) -> tuple[int, str, str]:
    """``(created, nonce, key id)``, or ``malformed``/``expired``."""
    created = parsed.param("created", int)
    expires = parsed.param("expires", int, required=False)
    nonce = parsed.param("nonce", str)
    key_id = parsed.param("keyid", str)
    parsed.param("alg", str, required=False)
    if expires is not None and expires < created:
        raise MessageSignatureError("malformed", "expires is before created")
    if not _NONCE_MIN <= len(nonce) <= _PARAM_MAX or not 0 < len(key_id) <= _PARAM_MAX:
        raise MessageSignatureError("malformed", "the nonce must have 16 to 256 characters, "
                                    "the keyid 1 to 256")
    return created, nonce, key_id


def _check_window(created: int, expires: int | None, now: float, window: float) -> None:
    if abs(now - created) > window:
        raise MessageSignatureError("expired", "created %d is %d seconds away from this "
                                    "server's clock; the window is %d seconds"
                                    % (created, abs(now - created), window))
    if expires is not None and now > expires:
        raise MessageSignatureError("expired", "the signature expired at %d" % expires)


def _verify_base(keys: Verifier, parsed: Parsed, key_id: str, message: Message) -> None:
    """Look the key up and check the signature over the base (``unknown key``, ``bad signature``)."""
    found = keys.verifier(key_id)
    if found is None:
        raise MessageSignatureError("unknown key", "key id %s is not configured" % key_id)
    alg, check = found
    claimed = parsed.params.get("alg")
    if claimed is not None and claimed != alg:
        raise MessageSignatureError("bad signature", "alg %s does not match the key's (%s)"
                                    % (claimed, alg))
    try:
        base = signature_base(message, parsed.covered, parsed.params)
    except ValueError as exc:
        raise MessageSignatureError("bad signature", str(exc)) from None
    if not check(base, parsed.signature):
        raise MessageSignatureError("bad signature", "the message differs from the one signed")


def _check_digest(value: str, body: bytes) -> None:
    try:
        members = parse_dictionary(value)
    except StructuredFieldError as exc:
        raise MessageSignatureError("body mismatch", "Content-Digest: %s" % exc) from None
    known = [(name, member[0]) for name, member in members.items() if name in _DIGESTS]
    if not known:
        raise MessageSignatureError("body mismatch", "Content-Digest has no sha-256 or "
                                    "sha-512 member")
    for name, digest in known:
        if not isinstance(digest, bytes) or not hmac.compare_digest(
                _DIGESTS[name](body).digest(), digest):
            raise MessageSignatureError("body mismatch", "the body differs from the one signed")


def verify(keys: Verifier, parsed: Parsed | None, method: str, authority: str, path: str,
           query: str, headers: Headers, *, now: float, window: float = DEFAULT_SIGNATURE_WINDOW,
           nonce_store: NonceChecker | None = None,
           body: bytes | Callable[[], bytes | None] | None = None) -> str:
    """Check a received request's signature; return the id of the key that verified it.

    Raises :class:`~wsgiproxy.errors.MessageSignatureError` with the reason,
    checked in the order of the ``v1`` format: the parameters, the covered
    set (``@method``, ``@authority``, ``@path``, ``@query`` and exactly the
    signed headers that arrived), the key, the signature, the time window
    (``created``, ``expires``), the body against ``Content-Digest`` when it
    is covered, then the nonce, recorded only for a request that passed
    everything else.

    :param parsed: the request's signature (:func:`parse_signature`);
        ``None`` is ``missing``.
    :param authority: the ``Host`` received, through :func:`authority`.
    :param path: the path of the request target as received (percent-encoded).
    :param headers: the received headers (an environ's ``HTTP_*`` items, and
        ``Content-Type``/``Content-Length`` if another signer covers them).
    :param body: the body, or a function that reads it, called only when
        ``content-digest`` is covered and everything before has passed.
    """
    if parsed is None:
        raise MessageSignatureError("missing")
    created, nonce, key_id = _check_params(parsed)
    covered = parsed.covered
    missing = [c[0] for c in REQUIRED if c not in covered]
    if missing:
        raise MessageSignatureError("bad signature", "%s must be covered" % ", ".join(missing))
    received = _signed_headers(headers)
    covered_signed = {name for name, params in covered
                      if not params and not name.startswith("@") and is_signed_header(name)}
    received_names = {name for name, _ in received}
    if received_names != covered_signed:
        detail = []
        absent = sorted(covered_signed - received_names)
        if absent:
            detail.append("signed header(s) %s did not arrive" % ", ".join(absent))
            if _WAITRESS_STRIPPED.intersection(absent):
                detail.append("waitress removes X-Forwarded-* and Forwarded unless "
                              "clear_untrusted_proxy_headers = false")
        extra = sorted(received_names - covered_signed)
        if extra:
            detail.append("header(s) %s are not covered by the signature" % ", ".join(extra))
        raise MessageSignatureError("bad signature", "; ".join(detail))
    wanted = {name for name, _ in covered if not name.startswith("@")} - received_names
    fields = _field_map(headers, wanted) if wanted else {}
    fields.update(received)
    message = Message(method, authority, path, query, fields=fields)
    _verify_base(keys, parsed, key_id, message)
    _check_window(created, parsed.params.get("expires"), now, window)
    if _CONTENT_DIGEST in covered:
        if callable(body):
            body = body()
        if body is None:
            raise MessageSignatureError("body mismatch", "the signature covers a body that was "
                                        "not read")
        _check_digest(fields["content-digest"], body)
    if nonce_store is not None and not nonce_store.check_and_add(key_id, nonce,
                                                                 created + window + 1):
        raise MessageSignatureError("replayed", "nonce %s was already used" % nonce)
    return key_id


# ---------------------------------------------------------------------------
# Bound responses

def sign_response(keys: Signer, status: int, headers: Iterable[tuple[str, str]], binding: str,
                  *, now: float, nonce: str,
                  window: float = DEFAULT_SIGNATURE_WINDOW) -> list[tuple[str, str]]:
    """``Signature-Input`` and ``Signature`` for a response, bound to its request.

    Covers ``@status``, ``content-type`` when the response has one, and the
    request's signature (:data:`BINDING`): never a framing header, never the
    body, so nothing is buffered.

    :param headers: the response's headers (``Content-Type`` is looked up).
    :param binding: the request's ``Signature`` member (:attr:`Parsed.binding`).
    """
    alg, key_id, signing = keys.signer()
    content_type = [v.strip(" \t") for k, v in headers if k.lower() == "content-type"]
    names, lines = ['"@status"'], ['"@status": %03d' % status]
    if content_type and any(content_type):
        names.append('"content-type"')
        lines.append('"content-type": ' + ", ".join(content_type))
    names.append(_component_id(BINDING))
    lines.append("%s: %s" % (names[-1], binding))
    value = "(%s)%s" % (" ".join(names), _params(int(now), window, nonce, key_id, alg))
    lines.append('"@signature-params": ' + value)
    signature = base64.b64encode(signing(_base_text(lines))).decode("ascii")
    return [(SIGNATURE_INPUT, LABEL + "=" + value), (SIGNATURE, "%s=:%s:" % (LABEL, signature))]


def verify_response(keys: Verifier, status: int, headers: Iterable[tuple[str, str]],
                    request: Message, *, now: float,
                    window: float = DEFAULT_SIGNATURE_WINDOW) -> str:
    """Check that a response is signed and answers ``request``; return the key id.

    The response must carry a ``wsgiproxy`` signature covering at least
    ``@status`` and :data:`BINDING`, valid within the window.  Its nonce is
    not remembered: the binding already makes it good for one request only.

    :param request: the request as sent; its ``fields`` need ``signature``
        (and whatever else the response covers with ``;req``).
    :raises MessageSignatureError: ``missing`` for an unsigned response,
        else the reason.
    """
    headers = list(headers)
    fields = _field_map(headers, {"signature-input", "signature"})
    parsed = parse_signature(fields.get("signature-input"), fields.get("signature"))
    if parsed is None:
        raise MessageSignatureError("missing", "the response is not signed")
    created, _, key_id = _check_params(parsed)
    if _STATUS not in parsed.covered or BINDING not in parsed.covered:
        raise MessageSignatureError("bad signature", "@status and the request's signature "
                                    "must be covered")
    wanted = {name for name, params in parsed.covered
              if not name.startswith("@") and ("req", True) not in params}
    message = Message(status=status, fields=_field_map(headers, wanted), request=request)
    _verify_base(keys, parsed, key_id, message)
    _check_window(created, parsed.params.get("expires"), now, window)
    return key_id
