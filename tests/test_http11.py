"""wsgiproxy.http11 alone: pure functions, bytes and values, no sockets.

The framing decision is tested exhaustively here (RFC 9112 section 6.3, in
the order it gives); the transports' tests check what they do with it.
"""

import itertools

import pytest

from wsgiproxy.errors import BadBackendResponse, InvalidRequest
from wsgiproxy.http11 import (
    CHUNKED,
    CONTENT_LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    body_framing,
    check_interim,
    connection_tokens,
    is_chunk_size,
    parse_response_head,
    request_head,
    trailer_line_ok,
)


def framing_of(method, head):
    """The framing decision for a response head (its lines joined with CRLF)."""
    version, status, _, _, framing = parse_response_head("\r\n".join(head).encode("latin-1"), "b")
    return body_framing(method, status, version, *framing)


# -- the framing decision, from the bytes a backend sends ----------------------------

FRAMING_CASES = [
    # (method, response head lines, (mode, length, keep_alive))
    ("GET", ["HTTP/1.1 200 OK", "Content-Length: 5"], (CONTENT_LENGTH, 5, True)),
    ("GET", ["HTTP/1.1 200 OK", "Content-Length: 0"], (CONTENT_LENGTH, 0, True)),
    ("GET", ["HTTP/1.1 200 OK", "Content-Length: 5, 5"], (CONTENT_LENGTH, 5, True)),
    ("POST", ["HTTP/1.1 201 Created", "Content-Length: 2"], (CONTENT_LENGTH, 2, True)),
    ("GET", ["HTTP/1.1 200 OK", "Transfer-Encoding: chunked"], (CHUNKED, None, True)),
    ("GET", ["HTTP/1.1 200 OK", "Transfer-Encoding: Chunked"], (CHUNKED, None, True)),
    # Neither: the body runs to the end of the connection, which is then not reusable.
    ("GET", ["HTTP/1.1 200 OK"], (UNTIL_CLOSE, None, False)),
    ("GET", ["HTTP/1.1 404 Not Found", "Connection: keep-alive"], (UNTIL_CLOSE, None, False)),
    # Connection: close, in any case and among other tokens.
    ("GET", ["HTTP/1.1 200 OK", "Connection: close", "Content-Length: 1"],
     (CONTENT_LENGTH, 1, False)),
    ("GET", ["HTTP/1.1 200 OK", "Connection: CLOSE", "Transfer-Encoding: chunked"],
     (CHUNKED, None, False)),
    ("GET", ["HTTP/1.1 200 OK", "Connection: keep-alive, close", "Content-Length: 1"],
     (CONTENT_LENGTH, 1, False)),
    ("GET", ["HTTP/1.1 200 OK", "Connection: keep-alive", "Connection: close",
             "Content-Length: 1"], (CONTENT_LENGTH, 1, False)),
    ("GET", ["HTTP/1.1 200 OK", "Connection: keep-alive", "Content-Length: 1"],
     (CONTENT_LENGTH, 1, True)),
    # HTTP/1.0: never kept, even with Connection: keep-alive (this client never asks for it).
    ("GET", ["HTTP/1.0 200 OK", "Content-Length: 1"], (CONTENT_LENGTH, 1, False)),
    ("GET", ["HTTP/1.0 200 OK", "Connection: keep-alive", "Content-Length: 1"],
     (CONTENT_LENGTH, 1, False)),
    ("GET", ["HTTP/1.0 200 OK"], (UNTIL_CLOSE, None, False)),
    # HEAD: no body whatever the headers announce; the connection is kept only
    # when the head announces no body bytes (Content-Length: 0).  Otherwise a
    # backend that sends the body anyway, however late, would have it read as
    # the next response (issue 15).
    ("HEAD", ["HTTP/1.1 200 OK", "Content-Length: 0"], (NO_BODY, 0, True)),
    ("HEAD", ["HTTP/1.1 200 OK", "Content-Length: 99"], (NO_BODY, 0, False)),
    ("HEAD", ["HTTP/1.1 200 OK", "Transfer-Encoding: chunked"], (NO_BODY, 0, False)),
    ("HEAD", ["HTTP/1.1 200 OK"], (NO_BODY, 0, False)),  # a body of unknown size
    ("HEAD", ["HTTP/1.1 404 Not Found", "Content-Length: 9"], (NO_BODY, 0, False)),
    ("HEAD", ["HTTP/1.1 200 OK", "Connection: close", "Content-Length: 0"],
     (NO_BODY, 0, False)),
    ("HEAD", ["HTTP/1.0 200 OK", "Content-Length: 0"], (NO_BODY, 0, False)),
    ("HEAD", ["HTTP/1.1 304 Not Modified"], (NO_BODY, 0, True)),  # no body by its status
    ("HEAD", ["HTTP/1.1 204 No Content"], (NO_BODY, 0, True)),
    # 204 and 304: no body either (a 304's length describes the representation);
    # kept without a length or with Content-Length: 0, not when one is announced.
    ("GET", ["HTTP/1.1 204 No Content"], (NO_BODY, 0, True)),
    ("GET", ["HTTP/1.1 204 No Content", "Content-Length: 0"], (NO_BODY, 0, True)),
    ("GET", ["HTTP/1.1 204 No Content", "Content-Length: 5"], (NO_BODY, 0, False)),
    ("POST", ["HTTP/1.1 204 No Content", "Transfer-Encoding: chunked"], (NO_BODY, 0, False)),
    ("GET", ["HTTP/1.1 304 Not Modified"], (NO_BODY, 0, True)),
    ("GET", ["HTTP/1.1 304 Not Modified", "Content-Length: 0"], (NO_BODY, 0, True)),
    ("GET", ["HTTP/1.1 304 Not Modified", "Content-Length: 99"], (NO_BODY, 0, False)),
    ("GET", ["HTTP/1.1 304 Not Modified", "Transfer-Encoding: chunked"], (NO_BODY, 0, False)),
    ("GET", ["HTTP/1.1 304 Not Modified", "Connection: close"], (NO_BODY, 0, False)),
    ("GET", ["HTTP/1.0 304 Not Modified"], (NO_BODY, 0, False)),
    # 1xx: interim responses have no body; the connection carries the final one,
    # and is not kept after it when an interim response announced a body.
    ("GET", ["HTTP/1.1 100 Continue"], (NO_BODY, 0, True)),
    ("POST", ["HTTP/1.1 103 Early Hints", "Link: </a.css>; rel=preload"], (NO_BODY, 0, True)),
    ("GET", ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket"], (NO_BODY, 0, True)),
    ("POST", ["HTTP/1.1 100 Continue", "Content-Length: 5"], (NO_BODY, 0, False)),
    ("POST", ["HTTP/1.1 100 Continue", "Transfer-Encoding: chunked"], (NO_BODY, 0, False)),
    ("POST", ["HTTP/1.1 100 Continue", "Content-Length: 0"], (NO_BODY, 0, True)),
]


@pytest.mark.parametrize(("method", "head", "expected"), FRAMING_CASES,
                         ids=["%s %s" % (c[0], " | ".join(c[1])) for c in FRAMING_CASES])
def test_framing_decision(method, head, expected):
    assert framing_of(method, head) == expected


@pytest.mark.parametrize("head", [
    ["HTTP/1.1 200 OK", "Transfer-Encoding: chunked", "Content-Length: 5"],  # both
    ["HTTP/1.1 200 OK", "Content-Length: 5", "Transfer-Encoding: chunked"],
    ["HTTP/1.1 204 No Content", "Content-Length: 0", "Transfer-Encoding: chunked"],
    ["HTTP/1.1 200 OK", "Content-Length: 5", "Content-Length: 6"],
    ["HTTP/1.1 200 OK", "Content-Length: 5, 6"],
    ["HTTP/1.1 200 OK", "Content-Length: -1"],
    ["HTTP/1.1 200 OK", "Content-Length: 0x10"],
    ["HTTP/1.1 200 OK", "Content-Length: 1234567890123456789"],
    ["HTTP/1.1 200 OK", "Transfer-Encoding: gzip, chunked"],
    ["HTTP/1.1 200 OK", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
    ["HTTP/1.1 200 OK", "Transfer-Encoding: identity"],
])
def test_ambiguous_framing_is_refused_before_any_decision(head):
    with pytest.raises(BadBackendResponse):
        framing_of("GET", head)


# The rules of RFC 9112 section 6.3, in its order, over every combination.
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]
STATUSES = [100, 101, 103, 199, 200, 201, 204, 205, 206, 301, 304, 400, 404, 500, 502, 599]
LENGTHS = [None, 0, 1, 65536]
VERSIONS = ["1.1", "1.0"]
TOKEN_SETS = [(), {"close"}, {"keep-alive"}, {"keep-alive", "x-custom"}, {"close", "x-custom"}]


@pytest.mark.parametrize(("method", "status"), list(itertools.product(METHODS, STATUSES)))
def test_framing_decision_over_every_combination(method, status):
    for length, chunked, version, tokens in itertools.product(
            LENGTHS, (False, True), VERSIONS, TOKEN_SETS):
        if chunked and length is not None:
            continue  # refused by parse_response_head (above)
        mode, got_length, keep_alive = body_framing(method, status, version, length,
                                                    chunked, tokens)
        persistent = version == "1.1" and "close" not in tokens
        if method == "HEAD" or status < 200 or status in (204, 304):
            # Kept only when the head announces no body bytes (issue 15).
            announces_body = chunked or bool(length) or (
                method == "HEAD" and length is None and status >= 200 and status not in (204, 304))
            assert (mode, got_length, keep_alive) == (NO_BODY, 0,
                                                      persistent and not announces_body)
        elif chunked:
            assert (mode, got_length, keep_alive) == (CHUNKED, None, persistent)
        elif length is not None:
            assert (mode, got_length, keep_alive) == (CONTENT_LENGTH, length, persistent)
        else:
            assert (mode, got_length, keep_alive) == (UNTIL_CLOSE, None, False)


def test_interim_responses_are_dropped_but_101_is_refused():
    for status in (100, 102, 103, 199):
        check_interim(status, "b")
    with pytest.raises(BadBackendResponse, match="switched protocols"):
        check_interim(101, "http://backend:80")


# -- response heads ------------------------------------------------------------------

def test_response_head_drops_hop_by_hop_and_nominated_headers():
    head = (b"HTTP/1.1 200 OK\r\nConnection: x-hop, keep-alive\r\nX-Hop: 1\r\n"
            b"Keep-Alive: timeout=5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
            b"Content-Length: 2")
    version, status, reason, headers, framing = parse_response_head(head, "b")
    assert (version, status, reason) == ("1.1", 200, "OK")
    assert headers == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Length", "2")]
    assert framing == (2, False, {"x-hop", "keep-alive"})


def test_204_loses_its_content_length_and_304_keeps_it():
    assert parse_response_head(b"HTTP/1.1 204 No Content\r\nContent-Length: 0", "b")[3] == []
    assert parse_response_head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9", "b")[3] == [
        ("Content-Length", "9")]


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nX: a\rb", b"HTTP/1.1 200 OK\nX: a", b"HTTP/1.1 200 OK\r\nX: \x00",
    b"HTTP/1.1 200 OK\r\n folded", b"HTTP/1.1 200 OK\r\nBad Name: x", b"HTTP/2 200 OK",
    b"HTTP/1.1 20 OK", b"HTTP/1.1 099 Low", b"HTTP/1.1 2000 OK", b"ICY 200 OK",
])
def test_malformed_response_heads_are_refused(head):
    with pytest.raises(BadBackendResponse):
        parse_response_head(head, "b")


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nX: a\rY: b", b"HTTP/1.1 200 OK\r\nX: a\nY: b",
    b"HTTP/1.1 200 OK\nX: a", b"HTTP/1.1 200 OK\r\nX: a\r", b"HTTP/1.1 200 OK\r\n\nX: a",
])
def test_a_bare_cr_or_lf_in_a_response_head_is_named(head):
    with pytest.raises(BadBackendResponse, match="bare CR or LF"):
        parse_response_head(head, "b")


# -- requests ------------------------------------------------------------------------

def test_request_head_writes_its_own_framing_and_drops_hop_by_hop():
    head = request_head("POST", "/p", [("Host", "h"), ("Connection", "x-a"), ("X-A", "1"),
                                       ("Content-Length", "9"), ("Expect", "100-continue"),
                                       ("X-B", "2")], 3, False)
    assert head == b"POST /p HTTP/1.1\r\nHost: h\r\nX-B: 2\r\nContent-Length: 3\r\n\r\n"
    chunked = request_head("PUT", "/p", [("Host", "h")], None, True)
    assert chunked.endswith(b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert b"Content-Length" not in request_head("GET", "/", [("Host", "h")], 0, False)
    assert b"Content-Length: 0" in request_head("PATCH", "/", [("Host", "h")], 0, False)


@pytest.mark.parametrize(("method", "target", "headers"), [
    ("GE T", "/", [("Host", "h")]),
    ("GET", "/a b", [("Host", "h")]),
    ("GET", "", [("Host", "h")]),
    ("GET", "/", [("Host", "h"), ("X", "a\r\nInjected: 1")]),
    ("GET", "/", [("Host", "h"), ("X", "a\nInjected: 1")]),  # a bare LF
    ("GET", "/", [("Host", "h\r"), ("X", "1")]),  # a bare CR
    ("GET", "/", [("Host", "h"), ("X", "a\x00")]),
    ("GET", "/", [("Host", "h"), ("Bad Name", "1")]),
    ("GET", "/", [("Host", "h"), ("X", "\u20ac")]),
    ("GET", "/", [("X", "1")]),
])
def test_request_head_refuses_what_could_split_a_request(method, target, headers):
    with pytest.raises(InvalidRequest):
        request_head(method, target, headers, 0, False)


# -- small pieces --------------------------------------------------------------------

def test_connection_tokens_split_lists_with_quotes_respected():
    assert connection_tokens("close") == {"close"}
    assert connection_tokens(" Keep-Alive ") == {"keep-alive"}
    assert connection_tokens("") == set()
    assert connection_tokens("close, X-Foo ,, x-bar") == {"close", "x-foo", "x-bar"}
    assert connection_tokens('x-a, "b,c"') == {"x-a", '"b,c"'}
    assert connection_tokens("x-a,\xa0close\xa0") == {"x-a", "close"}


def test_chunk_size_and_trailer_checks():
    assert all(is_chunk_size(s) for s in (b"0", b"a", b"FFFF", b"0" * 16))
    assert not any(is_chunk_size(s) for s in (b"", b"-1", b"0x1", b"g", b"1 ", b"0" * 17))
    assert trailer_line_ok(b"X-Checksum: abc")
    assert not trailer_line_ok(b" folded")
    assert not trailer_line_ok(b"\tfolded")
    assert not trailer_line_ok(b"X: a\x00b")
