"""RFC 9651 structured field values (sans-IO): what HTTP message signatures need.

``Signature-Input``, ``Signature`` and ``Content-Digest`` are dictionaries;
their members are items (a bare value with parameters) or inner lists of
items.  :func:`parse_dictionary` reads every type RFC 9651 defines, so a
field written by another implementation is never refused for a type we do
not write; the serialisers write the canonical form (section 4.1), which is
what a signature base contains.

Values as Python objects:

==================  =========================================================
RFC 9651 type        Python
==================  =========================================================
Integer             ``int``
Decimal             ``float``
String              ``str``
Token               :class:`Token` (a ``str`` subclass)
Byte Sequence       ``bytes``
Boolean             ``bool``
Date                :class:`Date` (an ``int`` subclass)
Display String      :class:`DisplayString` (a ``str`` subclass)
Parameters          ``dict`` of key to bare value, in order
Item                ``(bare value, parameters)``
Inner List          ``(list of items, parameters)`` with the list a ``list``
==================  =========================================================

Parsing failures raise :class:`ValueError` (:class:`StructuredFieldError`)
naming the problem; serialising a value that has no structured form raises
it too.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "Date", "DisplayString", "StructuredFieldError", "Token", "parse_dictionary",
    "serialize_bare_item", "serialize_dictionary", "serialize_inner_list", "serialize_item",
    "serialize_member", "serialize_params", "serialize_string",
]


class StructuredFieldError(ValueError):
    """A field value that is not a valid structured field, or a value that cannot be one."""


class Token(str):
    """An RFC 9651 token (``sha-256``, ``*foo``), told apart from a string."""

    __slots__ = ()


class Date(int):
    """An RFC 9651 date: integer seconds since the epoch, written ``@1659578233``."""

    __slots__ = ()


class DisplayString(str):
    """An RFC 9651 display string (Unicode, written ``%"caf%c3%a9"``)."""

    __slots__ = ()


Params = dict[str, Any]
Item = tuple[Any, Params]
InnerList = tuple[list[Item], Params]
Member = Item | InnerList  # an inner list's value is a list
#: Parameters as the serialisers take them: a dict or ``(key, value)`` pairs.
ParamsIn = Params | tuple[tuple[str, Any], ...]

_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_KEY_FULL = re.compile(r"[a-z*][a-z0-9_\-.*]*\Z").match
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_TOKEN_FULL = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*\Z").match
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]*)?")
_STRING_BODY = re.compile(r'[\x20\x21\x23-\x5b\x5d-\x7e]*')  # no '"' or '\'
_PRINTABLE = re.compile(r"[\x20-\x7e]*\Z").match
_BASE64 = re.compile(r"[A-Za-z0-9+/=]*")
_OWS = " \t"
_MAX_INT = 999_999_999_999_999


# ---------------------------------------------------------------------------
# Parsing (RFC 9651 section 4.2)

class _Parser:
    __slots__ = ("text", "pos")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> StructuredFieldError:
        return StructuredFieldError("%s at character %d" % (what, self.pos))

    def peek(self) -> str:
        return self.text[self.pos:self.pos + 1]

    def skip(self, chars: str) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in chars:
            pos += 1
        self.pos = pos

    def key(self) -> str:
        match = _KEY.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected a key (lower case letter or '*')")
        self.pos = match.end()
        return match.group()

    def params(self) -> Params:
        params: Params = {}
        while self.peek() == ";":
            self.pos += 1
            self.skip(" ")
            key = self.key()
            value: Any = True
            if self.peek() == "=":
                self.pos += 1
                value = self.bare_item()
            params.pop(key, None)  # a repeated key: the last value, in the last place
            params[key] = value
        return params

    def item(self) -> Item:
        value = self.bare_item()
        return value, self.params()

    def item_or_inner_list(self) -> Member:
        if self.peek() != "(":
            return self.item()
        self.pos += 1
        items: list[Item] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.pos += 1
                return items, self.params()
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise self.fail("expected a space or ')' in an inner list")

    def bare_item(self) -> Any:
        char = self.peek()
        if char == '"':
            return self.string()
        if char == ":":
            return self.byte_sequence()
        if char == "?":
            value = self.text[self.pos + 1:self.pos + 2]
            if value not in ("0", "1"):
                raise self.fail("a boolean is ?0 or ?1")
            self.pos += 2
            return value == "1"
        if char == "@":
            self.pos += 1
            seconds = self.number()
            if not isinstance(seconds, int):
                raise self.fail("a date is an integer")
            return Date(seconds)
        if char == "%":
            return self.display_string()
        if char == "-" or char.isdigit():
            return self.number()
        match = _TOKEN.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected an item")
        self.pos = match.end()
        return Token(match.group())

    def number(self) -> int | float:
        match = _NUMBER.match(self.text, self.pos)
        if match is None:
            raise self.fail("expected a number")
        text = match.group()
        digits = text.lstrip("-")
        whole, dot, fraction = digits.partition(".")
        if not dot:
            if len(whole) > 15:
                raise self.fail("an integer has at most 15 digits")
            self.pos = match.end()
            return int(text)
        if len(whole) > 12 or not 1 <= len(fraction) <= 3:
            raise self.fail("a decimal has at most 12 digits, a dot and 1 to 3 digits")
        self.pos = match.end()
        return float(text)

    def string(self) -> str:
        self.pos += 1
        text, out = self.text, []
        while True:
            match = _STRING_BODY.match(text, self.pos)
            assert match is not None  # matches the empty string
            out.append(match.group())
            self.pos = match.end()
            char = self.peek()
            if char == '"':
                self.pos += 1
                return "".join(out)
            if char == "\\":
                escaped = text[self.pos + 1:self.pos + 2]
                if escaped not in ('"', "\\"):
                    raise self.fail("only \\\" and \\\\ are escapes in a string")
                out.append(escaped)
                self.pos += 2
            elif not char:
                raise self.fail("a string is not closed")
            else:
                raise self.fail("a string holds printable ASCII only")

    def byte_sequence(self) -> bytes:
        match = _BASE64.match(self.text, self.pos + 1)
        assert match is not None
        if self.text[match.end():match.end() + 1] != ":":
            raise self.fail("a byte sequence is base64 between colons")
        data = match.group()
        data += "=" * (-len(data) % 4)  # RFC 9651: missing padding is tolerated
        try:
            value = base64.b64decode(data, validate=True)
        except binascii.Error:
            raise self.fail("a byte sequence is not valid base64") from None
        self.pos = match.end() + 1
        return value

    def display_string(self) -> DisplayString:
        if self.text[self.pos + 1:self.pos + 2] != '"':
            raise self.fail("a display string starts with %\"")
        self.pos += 2
        text, out = self.text, bytearray()
        while self.pos < len(text):
            char = text[self.pos]
            if char == '"':
                self.pos += 1
                try:
                    return DisplayString(out.decode("utf-8"))
                except UnicodeDecodeError:
                    raise self.fail("a display string is not UTF-8") from None
            if not " " <= char <= "~":
                raise self.fail("a display string holds printable ASCII only")
            if char == "%":
                hexa = text[self.pos + 1:self.pos + 3]
                if len(hexa) != 2 or hexa.strip("0123456789abcdef"):
                    raise self.fail("a display string's escapes are %xx in lower case")
                out.append(int(hexa, 16))
                self.pos += 3
            else:
                out += char.encode("ascii")
                self.pos += 1
        raise self.fail("a display string is not closed")


def parse_dictionary(text: str) -> dict[str, Member]:
    """The members of a dictionary field value (several field lines joined with ``,``).

    A member without a value is ``(True, params)``.  A key given twice keeps
    the last value (RFC 9651), in the last place.  An empty value is an empty
    dictionary.

    :raises StructuredFieldError: (a ``ValueError``) for anything malformed.
    """
    if not isinstance(text, str):
        raise StructuredFieldError("a field value must be a str, not %s" % type(text).__name__)
    parser = _Parser(text.strip(" "))
    members: dict[str, Member] = {}
    if not parser.text:
        return members
    while True:
        key = parser.key()
        if parser.peek() == "=":
            parser.pos += 1
            member = parser.item_or_inner_list()
        else:
            member = (True, parser.params())
        members.pop(key, None)
        members[key] = member
        parser.skip(_OWS)
        if parser.pos == len(parser.text):
            return members
        if parser.peek() != ",":
            raise parser.fail("expected ',' between dictionary members")
        parser.pos += 1
        parser.skip(_OWS)
        if parser.pos == len(parser.text):
            raise parser.fail("a dictionary does not end with ','")


# ---------------------------------------------------------------------------
# Serialising (RFC 9651 section 4.1)

def serialize_string(value: str) -> str:
    """``"value"`` with ``\\`` and ``"`` escaped; printable ASCII only."""
    if not _PRINTABLE(value):
        raise StructuredFieldError("a string holds printable ASCII only: %r" % value[:40])
    return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')


def _serialize_decimal(value: float) -> str:
    text = "%.3f" % round(value, 3)
    whole = text.lstrip("-").partition(".")[0]
    if len(whole) > 12:
        raise StructuredFieldError("a decimal has at most 12 integer digits")
    text = text.rstrip("0")
    return text + "0" if text.endswith(".") else text


def serialize_bare_item(value: Any) -> str:
    """One bare item in its canonical form (the type table in the module's docstring)."""
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        if not -_MAX_INT <= value <= _MAX_INT:
            raise StructuredFieldError("an integer has at most 15 digits")
        return ("@%d" if isinstance(value, Date) else "%d") % value
    if isinstance(value, Token):
        if not _TOKEN_FULL(value):
            raise StructuredFieldError("not a token: %r" % value[:40])
        return str(value)
    if isinstance(value, DisplayString):
        out = []
        for byte in value.encode("utf-8"):
            char = chr(byte)
            out.append("%%%02x" % byte if byte > 0x7e or byte < 0x20 or char in '%"'
                       else char)
        return '%"' + "".join(out) + '"'
    if isinstance(value, str):
        return serialize_string(value)
    if isinstance(value, (bytes, bytearray)):
        return ":%s:" % base64.b64encode(value).decode("ascii")
    if isinstance(value, float):
        return _serialize_decimal(value)
    raise StructuredFieldError("%s has no structured field form" % type(value).__name__)


def serialize_params(params: ParamsIn) -> str:
    """``;key=value`` for each parameter (just ``;key`` for ``True``)."""
    items = params.items() if isinstance(params, dict) else params
    out = []
    for key, value in items:
        if not _KEY_FULL(key):
            raise StructuredFieldError("not a key: %r" % key[:40])
        out.append(";" + key if value is True else ";%s=%s" % (key, serialize_bare_item(value)))
    return "".join(out)


def serialize_item(value: Any, params: ParamsIn = ()) -> str:
    """An item: its bare value, then its parameters."""
    return serialize_bare_item(value) + serialize_params(params)


def serialize_inner_list(items: Sequence[tuple[Any, ParamsIn]], params: ParamsIn = ()) -> str:
    """``(item item ...)`` followed by the list's parameters."""
    return "(%s)%s" % (" ".join(serialize_item(v, p) for v, p in items), serialize_params(params))


def serialize_member(member: Member) -> str:
    """A dictionary member's value: an inner list or an item (the part after ``key=``)."""
    value, params = member
    if isinstance(value, list):
        return serialize_inner_list(value, params)
    return serialize_item(value, params)


def serialize_dictionary(members: dict[str, Member]) -> str:
    """``key=value, key;param, ...``: a member whose value is ``True`` shows its key only."""
    out = []
    for key, member in members.items():
        if not _KEY_FULL(key):
            raise StructuredFieldError("not a key: %r" % key[:40])
        value, params = member
        if value is True:
            out.append(key + serialize_params(params))
        else:
            out.append("%s=%s" % (key, serialize_member(member)))
    return ", ".join(out)
