"""Sans-IO HTTP/1.1 for the transports: bytes and values in, bytes and values out.

Request serialisation (:func:`request_head`), response head parsing
(:func:`parse_response_head`), the one body-framing decision
(:func:`body_framing`) and the hop-by-hop rules.  No sockets, no WSGI: every
transport builds on these, so they cannot drift apart.

The name caches below were measured: a header name seen before costs one
dict lookup instead of a regex match and a few comparisons.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from .abnf import TOKEN, is_token, split_comma_list
from .errors import BadBackendResponse, InvalidRequest

__all__ = [
    "BODY_METHODS",
    "CHUNKED",
    "CONTENT_LENGTH",
    "HOP_BY_HOP",
    "IDEMPOTENT_METHODS",
    "MAX_CHUNK_LINE",
    "MAX_HEAD",
    "MAX_INTERIM",
    "NON_NOMINATING_TOKENS",
    "NO_BODY",
    "UNFORWARDED_REQUEST_HEADERS",
    "UNTIL_CLOSE",
    "body_framing",
    "check_interim",
    "connection_tokens",
    "is_chunk_size",
    "parse_response_head",
    "request_head",
    "trailer_line_ok",
    "upgrade_protocols",
    "with_upgrade",
]

#: Hop-by-hop headers (RFC 9110 section 7.6.1, plus the legacy ones); never forwarded.
HOP_BY_HOP = frozenset([
    "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization",
])
#: Request headers a transport never passes on: hop-by-hop ones, the framing
#: it writes itself, and ``Expect`` (the client's ``100-continue`` was already
#: answered by its WSGI server).
UNFORWARDED_REQUEST_HEADERS = HOP_BY_HOP | {"content-length", "expect"}
#: ``Connection`` tokens that name no header to drop.
NON_NOMINATING_TOKENS = frozenset(["close", "keep-alive"])
#: Methods a transport may send again after a connection failed unanswered.
IDEMPOTENT_METHODS = frozenset(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"])
#: Methods that get ``Content-Length: 0`` when they have no body.
BODY_METHODS = frozenset(["POST", "PUT", "PATCH"])

MAX_HEAD = 65536           # bytes in a response header block (and in a trailer section)
MAX_INTERIM = 16           # 1xx responses skipped before the final one
MAX_CHUNK_LINE = 4096      # a chunk-size line with its extensions

#: How a response body is delimited (the first item :func:`body_framing` returns).
NO_BODY, CONTENT_LENGTH, CHUNKED, UNTIL_CLOSE = range(4)

_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]").search
# Bytes allowed in a header block: all but the controls other than HT, LF, CR.
# ``block.translate(None, _HEAD_BYTES)`` is empty exactly when a block is clean
# (one table lookup a byte, much cheaper than a regex scan).
_HEAD_BYTES = bytes(b for b in range(256) if b in (9, 10, 13) or 32 <= b < 127 or b > 127)

#: True when a chunk size (the part of a chunk-size line before any ``;``,
#: stripped) is valid hex of at most 16 digits.  The body reader calls it
#: inline, once a chunk, so that no function layer is added to that loop.
is_chunk_size = re.compile(rb"[0-9A-Fa-f]{1,16}\Z").match


def connection_tokens(value: str) -> set[str]:
    """The lowercased tokens of a ``Connection`` header value, as a set."""
    if "," not in value:  # the usual "close" or "keep-alive": no list to split
        token = value.strip().lower()
        return {token} if token else set()
    # str.strip() on top: Unicode spaces around a token are dropped too, as always.
    return {token for element in split_comma_list(value) if (token := element.strip().lower())}


def body_framing(method: str, status: int, version: str, length: int | None,
                 chunked: bool, conn_tokens: Collection[str]) -> tuple[int, int | None, bool]:
    """How a response body is delimited, and whether the connection may be kept after it.

    The one framing decision of every transport.  The arguments are the
    request method and what :func:`parse_response_head` returned (``version``
    is ``"1.1"`` or ``"1.0"``; ``length``, ``chunked`` and ``conn_tokens``
    are its framing triple, already checked for conflicts).

    Returns ``(mode, length, keep_alive)``: ``mode`` is :data:`NO_BODY`
    (``length`` 0), :data:`CONTENT_LENGTH` (``length`` bytes),
    :data:`CHUNKED` or :data:`UNTIL_CLOSE` (``length`` ``None``).
    ``keep_alive`` says whether the response's framing lets the connection
    carry another exchange once the body was read to its end; a transport
    still closes it when stray bytes follow the response, or when the request
    was not sent completely.  For an interim (1xx) response it says whether
    the exchange may still end with a reusable connection.

    A response without a body by rule (to ``HEAD``; 1xx, 204, 304) whose
    head announces body bytes anyway (``Transfer-Encoding``, a
    ``Content-Length`` above 0, or, to ``HEAD``, no length at all where the
    status would have a body) leaves the connection unusable: a backend
    that sent those bytes, however late, would have them read as the next
    response.
    """
    # HTTP/1.0 closes unless told otherwise; this client never asks, so it closes.
    keep_alive = version == "1.1" and "close" not in conn_tokens
    if method == "HEAD" or status in (204, 304) or status < 200:
        # No body whatever the headers say (a 304's Content-Length describes
        # the representation, not this message).  The pooling rule after
        # bodiless responses lives here: kept only when the head announces no
        # body bytes either (Content-Length: 0, or no length where the status
        # has no body).  A 200 (say) to HEAD without a length stands for a
        # body of unknown size.
        if chunked or length or (length is None and method == "HEAD"
                                 and status >= 200 and status not in (204, 304)):
            return NO_BODY, 0, False
        return NO_BODY, 0, keep_alive
    if chunked:
        return CHUNKED, None, keep_alive
    if length is not None:
        return CONTENT_LENGTH, length, keep_alive
    return UNTIL_CLOSE, None, False  # the end of the body is the end of the connection


def check_interim(status: int, backend: str | None) -> None:
    """An interim (1xx) response came before the final one: dropped, except ``101``.

    WSGI cannot pass interim responses (``100 Continue``, ``103 Early
    Hints``) on; a transport reads at most :data:`MAX_INTERIM` of them.

    :raises BadBackendResponse: for ``101 Switching Protocols``.
    """
    if status == 101:
        raise BadBackendResponse("backend switched protocols (101), which a WSGI "
                                 "proxy cannot carry", backend)


def trailer_line_ok(line: bytes) -> bool:
    """Whether one line of a chunked body's trailer section is acceptable (it is then dropped)."""
    return not (line.translate(None, _HEAD_BYTES) or line[:1] in (b" ", b"\t"))


# -- requests ------------------------------------------------------------------------

# Request header names seen before -> what to write for them: ``"Name: "``
# (kept), or _SKIP / _CONNECTION.  Bounded so hostile clients cannot grow it;
# a name is only remembered after it was checked to be a token.
_NAME_CACHE_MAX = 4096
_NAME_LENGTH_MAX = 100  # longer names are checked each time, never remembered
_SKIP, _CONNECTION = 1, 2
_request_names: dict[str, str | int] = {}


def _request_name_kind(name: str) -> str | int:
    if not is_token(name):
        raise InvalidRequest("invalid header name %r" % name[:100])
    lname = name.lower()
    kind = (_CONNECTION if lname == "connection"
            else _SKIP if lname in UNFORWARDED_REQUEST_HEADERS else name + ": ")
    if len(_request_names) < _NAME_CACHE_MAX and len(name) <= _NAME_LENGTH_MAX:
        _request_names[name] = kind
    return kind


def request_head(method: str, target: str, headers: Sequence[tuple[str, str]],
                 body_length: int | None, chunked: bool) -> bytes:
    """Serialise the request line and headers (bytes); hop-by-hop and framing headers are ours.

    Raises :class:`~wsgiproxy.errors.InvalidRequest` for anything that could
    split or smuggle a request.  Shared by every transport so they cannot
    drift apart.
    """
    if not is_token(method):
        raise InvalidRequest("invalid method %r" % method)
    if not target or _BAD_TARGET(target):
        raise InvalidRequest("invalid request target %r" % target[:200])
    kinds = _request_names
    try:
        lines = [kind + value for name, value in headers
                 if (kind := kinds[name]).__class__ is str]
    except KeyError:  # a name not seen before
        lines = [kind + value for name, value in headers
                 if (kind := kinds.get(name) or _request_name_kind(name)).__class__ is str]
    except TypeError:
        raise InvalidRequest("header names and values must be str") from None
    if len(lines) != len(headers):  # some were dropped: did a Connection header name others?
        nominated: set[str] = set()
        for value in [value for name, value in headers
                      if (seen := kinds.get(name)) == _CONNECTION
                      or (seen is None and name.lower() == "connection")]:
            nominated |= connection_tokens(value)
        nominated -= NON_NOMINATING_TOKENS
        if nominated:  # rare: drop the headers the client's Connection named
            lines = [line for line in lines if line.partition(":")[0].lower() not in nominated]
    # The header lines joined once for three memchr scans: counting CRs and LFs in
    # the head instead costs a byte-at-a-time loop each (~0.3 ns a byte).
    joined = "".join(lines)
    if "\n" in joined or "\r" in joined or "\0" in joined:
        raise InvalidRequest("a header value contains CR, LF or NUL")
    lines.insert(0, "%s %s HTTP/1.1" % (method, target))
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif body_length or method in BODY_METHODS:
        lines.append("Content-Length: %d" % body_length)  # type: ignore[str-format]
    lines.append("\r\n")
    text = "\r\n".join(lines)
    if "\nHost:" not in text and "\nhost:" not in text.lower():
        raise InvalidRequest("no Host header")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidRequest("a header value is not latin-1 text") from None


# ``protocol = protocol-name ["/" protocol-version]``, one element of ``Upgrade`` (RFC 9110 7.8).
_PROTOCOL = re.compile("%s(?:/%s)?\\Z" % (TOKEN, TOKEN)).match


def upgrade_protocols(upgrade: str | None, connection: str | None, version: str) -> str | None:
    """The protocols a request asks to switch to (``"websocket"``), or ``None`` for no switch.

    An ``Upgrade`` counts only with the ``upgrade`` token in ``Connection``,
    and only in HTTP/1.1 (RFC 9110 section 7.8: not in HTTP/1.0; HTTP/2 has
    no ``Upgrade``); otherwise it is an ordinary hop-by-hop header, dropped.
    ``version`` is the request's protocol (``SERVER_PROTOCOL``).  Empty list
    elements are dropped.

    :raises InvalidRequest: for an ``Upgrade`` value that is not a protocol list.
    """
    if not upgrade or not connection or version != "HTTP/1.1":
        return None
    if "upgrade" not in connection_tokens(connection):
        return None
    protocols = split_comma_list(upgrade)
    if not protocols or not all(_PROTOCOL(p) for p in protocols) or '"' in upgrade:
        raise InvalidRequest("invalid Upgrade header %r" % upgrade[:100])
    return ", ".join(protocols)


def with_upgrade(head: bytes, protocols: str) -> bytes:
    """A request head from :func:`request_head` that asks the backend to switch to ``protocols``.

    ``protocols`` comes from :func:`upgrade_protocols` (already checked).
    """
    return b"%sConnection: Upgrade\r\nUpgrade: %s\r\n\r\n" % (head[:-2],
                                                                protocols.encode("ascii"))


# -- responses -----------------------------------------------------------------------

_RESP_KEEP, _RESP_HOP, _RESP_TE, _RESP_CONNECTION, _RESP_LENGTH = range(5)
_response_names: dict[str, int] = {}


def _response_name_kind(name: str, line: str, backend: str | None) -> int:
    if not is_token(name):
        if line[:1] in (" ", "\t"):
            raise BadBackendResponse("obsolete line folding in the response headers", backend)
        raise BadBackendResponse("invalid header name %r" % name[:80], backend)
    lname = name.lower()
    kind = (_RESP_TE if lname == "transfer-encoding"
            else _RESP_CONNECTION if lname == "connection"
            else _RESP_HOP if lname in HOP_BY_HOP
            else _RESP_LENGTH if lname == "content-length" else _RESP_KEEP)
    if len(_response_names) < _NAME_CACHE_MAX and len(name) <= _NAME_LENGTH_MAX:
        _response_names[name] = kind
    return kind


#: What :func:`parse_response_head` returns.
ResponseHead = tuple[str, int, str, list[tuple[str, str]],
                     tuple[int | None, bool, Collection[str]]]


def parse_response_head(head: bytes, backend: str | None) -> ResponseHead:
    """Parse a response header block, rejecting anything ambiguous (every transport's parser).

    Returns ``(version, status, reason, headers, (content_length, chunked,
    connection_tokens))`` with hop-by-hop headers already removed; give the
    last three to :func:`body_framing`.

    :param head: the block without its final empty line.
    :param backend: named in the :class:`~wsgiproxy.errors.BadBackendResponse` raised.
    """
    if head.translate(None, _HEAD_BYTES):
        raise BadBackendResponse("control characters in the response headers", backend)
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    joined = "".join(lines)  # (memchr scans, as in request_head, not counting loops)
    if "\r" in joined or "\n" in joined:
        raise BadBackendResponse("bare CR or LF in the response headers", backend)
    # "HTTP/1.x NNN[ reason]"; the reason phrase may be empty or missing.
    status_line = lines[0]
    status_text = status_line[9:12]
    if (status_line[:7] != "HTTP/1." or status_line[7:9] not in ("1 ", "0 ")
            or not (status_text.isdigit() and status_text.isascii() and len(status_text) == 3)
            or status_line[12:13] not in ("", " ")):
        raise BadBackendResponse("invalid status line %r" % status_line[:80], backend)
    version = status_line[7]
    reason = status_line[13:]
    status = int(status_text)
    if status < 100:
        raise BadBackendResponse("invalid status code %d" % status, backend)
    headers: list[tuple[str, str]] = []
    append = headers.append
    kinds = _response_names
    lengths: list[str] | None = None
    te: str | None = None
    conn_tokens: Collection[str] = ()
    nominated = False
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        kind = kinds.get(name)
        if kind is None or not sep:
            if not sep:
                if line[:1] in (" ", "\t"):
                    raise BadBackendResponse("obsolete line folding in the response headers",
                                             backend)
                raise BadBackendResponse("invalid header line %r" % line[:80], backend)
            kind = _response_name_kind(name, line, backend)
        if kind:
            value = value.strip(" \t")
            if kind == _RESP_LENGTH:
                if lengths is None:
                    lengths = []
                    length_at = len(headers)  # keep its place; normalised below
                lengths += value.split(",")
            elif kind == _RESP_TE:
                te = value if te is None else te + ", " + value
            elif kind == _RESP_CONNECTION:
                conn_tokens = connection_tokens(value) | set(conn_tokens)
                nominated = nominated or bool(conn_tokens - NON_NOMINATING_TOKENS)
            continue
        append((name, value.strip(" \t")))
    length = None
    if lengths is not None:
        if len(lengths) == 1:
            length_value = lengths[0].strip(" \t")
        else:
            values = {v.strip(" \t") for v in lengths}
            if len(values) != 1:
                raise BadBackendResponse("conflicting Content-Length values", backend)
            length_value = values.pop()
        if not (length_value.isdigit() and length_value.isascii()) or len(length_value) > 18:
            raise BadBackendResponse("invalid Content-Length %r" % length_value[:40], backend)
        length = int(length_value)
    chunked = False
    if te is not None:
        if lengths is not None:
            raise BadBackendResponse("both Transfer-Encoding and Content-Length", backend)
        if te.lower() != "chunked":
            raise BadBackendResponse("unsupported Transfer-Encoding %r" % te[:40], backend)
        chunked = True
    if length is not None and status != 204:  # a 204 has no Content-Length
        headers.insert(length_at, ("Content-Length", length_value))
    if nominated:
        headers = [h for h in headers if h[0].lower() not in conn_tokens]
    return "1." + version, status, reason or "", headers, (length, chunked, conn_tokens)
