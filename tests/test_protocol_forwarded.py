"""protocol/forwarded.py: Forwarded, X-Forwarded-* lists, nodes, networks and hosts."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgiproxy.errors import ProtocolError
from wsgiproxy.protocol.forwarded import (
    LOOPBACK,
    TrustedNetworks,
    format_forwarded,
    forwarded_node,
    join_host,
    nth_from_right,
    parse_forwarded,
    parse_node,
    split_host,
)


def test_parse_forwarded():
    value = ('for="[2001:db8::a]:8080";proto=https;host="example.com:8443", '
             'For=192.0.2.43;By=_proxy1 ,, for="_hidden";host="a\\"b,c;d"')
    assert parse_forwarded(value) == [
        {"for": "[2001:db8::a]:8080", "proto": "https", "host": "example.com:8443"},
        {"for": "192.0.2.43", "by": "_proxy1"},
        {"for": "_hidden", "host": 'a"b,c;d'},
    ]
    assert parse_forwarded("") == []
    assert parse_forwarded("for=[2001:db8::1]:80") == [{"for": "[2001:db8::1]:80"}]  # lenient


@pytest.mark.parametrize("value", [
    'for="unterminated', "for", "for=", "=x", "for=a b", "for=a;for=b", 'for="a"x',
    "for=a\nb", 'for="\x01"', "for=\u20ac",
])
def test_parse_forwarded_malformed(value):
    with pytest.raises(ProtocolError):
        parse_forwarded(value)


def test_format_forwarded_roundtrip():
    elements = [{"for": forwarded_node("2001:db8::1", 8080), "proto": "https",
                 "host": "example.com"},
                {"for": forwarded_node("192.0.2.1"), "by": forwarded_node("_proxy", "_p1"),
                 "host": 'quote"and\\backslash'}]
    text = format_forwarded(elements)
    assert text.startswith('for="[2001:db8::1]:8080";proto=https;host=example.com, ')
    assert parse_forwarded(text) == elements
    assert format_forwarded([{"for": None, "proto": "http"}]) == "proto=http"
    with pytest.raises(ProtocolError):
        format_forwarded([{"host": "a\r\nb"}])
    with pytest.raises(ProtocolError):
        format_forwarded([{"bad name": "x"}])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["for", "by", "proto", "host", "ext"]),
                                st.text(alphabet=st.characters(min_codepoint=0x20,
                                                               max_codepoint=0xFF,
                                                               blacklist_characters="\x7f"),
                                        max_size=20), min_size=1, max_size=4),
                max_size=4))
def test_forwarded_format_parse_property(elements):
    text = format_forwarded(elements)
    assert "\r" not in text and "\n" not in text and "\0" not in text
    assert parse_forwarded(text) == elements


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=100))
def test_forwarded_and_hosts_raise_only_protocol_error(text):
    for func in (parse_forwarded, split_host, parse_node):
        try:
            func(text)
        except ProtocolError:
            pass
    assert (text in LOOPBACK) in (True, False)  # never raises


def test_forwarded_node():
    assert forwarded_node("192.0.2.1") == "192.0.2.1"
    assert forwarded_node("2001:DB8::1", 80) == "[2001:db8::1]:80"
    assert forwarded_node("[::1]") == "[::1]"
    assert forwarded_node(None) == "unknown"
    assert forwarded_node("_hidden", "_port") == "_hidden:_port"
    for bad in (("example.com",), ("1.2.3.4", 70000), ("1.2.3.4", "x")):
        with pytest.raises(ValueError):
            forwarded_node(*bad)


@pytest.mark.parametrize("value, expected", [
    ("192.0.2.1", ("192.0.2.1", None)), ("192.0.2.1:8080", ("192.0.2.1", "8080")),
    ("[2001:DB8::a]:8080", ("2001:db8::a", "8080")), ("[2001:db8::a]", ("2001:db8::a", None)),
    ("2001:db8::a", ("2001:db8::a", None)), ("unknown", ("unknown", None)),
    ("UNKNOWN", ("unknown", None)), ("_hidden", ("_hidden", None)),
    ("_hidden:_port", ("_hidden", "_port")), (" 10.0.0.1 ", ("10.0.0.1", None)),
])
def test_parse_node(value, expected):
    assert parse_node(value) == expected


@pytest.mark.parametrize("value", ["", "example.com", "1.2.3.4:99999", "[::1", "[::1]x",
                                   "[1.2.3.4]", "1.2.3.4:x", "256.0.0.1", "::1::2", "_", "a b"])
def test_parse_node_malformed(value):
    with pytest.raises(ProtocolError):
        parse_node(value)


@pytest.mark.parametrize("value, n, expected", [
    ("a, b, c", 1, "c"), ("a, b, c", 2, "b"), ("a, b, c", 3, "a"), ("a, b, c", 4, None),
    ("a,,b", 2, "a"), ("a", 0, None), (None, 1, None), ("", 1, None), (" c ", 1, "c"),
])
def test_nth_from_right(value, n, expected):
    assert nth_from_right(value, n) == expected


@pytest.mark.parametrize("value, n, expected", [
    ('"a, b", c', 1, "c"), ('"a, b", c', 2, '"a, b"'), ('"a, b", c', 3, None),
    ('192.0.2.1, "x, y"', 2, "192.0.2.1"), ('192.0.2.1, "x, y"', 1, '"x, y"'),
    ('a, "q\\"x, y", b', 2, '"q\\"x, y"'),  # an escaped quote does not end the string
    ('"a, b" , , "c,d"', 2, '"a, b"'),
])
def test_nth_from_right_respects_quoted_commas(value, n, expected):
    assert nth_from_right(value, n) == expected


@pytest.mark.parametrize("value, n, expected", [
    # The client wrote '6.6.6.6, "' and two trusted proxies appended theirs:
    # the open quote must not swallow them and move 6.6.6.6 into their place.
    ('6.6.6.6, ", 10.0.0.1, 10.0.0.2', 2, "10.0.0.1"),
    ('6.6.6.6, ", 10.0.0.1, 10.0.0.2', 3, '"'),
    ('"a, b", 6.6.6.6, "x, 10.0.0.1', 1, "10.0.0.1"),
    ('6.6.6.6, "\\", 10.0.0.1', 1, "10.0.0.1"),  # an escaped quote does not close it
])
def test_nth_from_right_an_unterminated_quote_protects_no_comma(value, n, expected):
    assert nth_from_right(value, n) == expected


@pytest.mark.parametrize("header, remote_addr", [
    # The proxy next to us wrote one quoted item, the one before it 192.0.2.9:
    # split on every comma, the second from the right was 'x"' (a 400).
    ('198.51.100.7, 192.0.2.9, "unknown, x"', "192.0.2.9"),
    # The client opened a quote; the two proxies' items are still theirs.
    ('6.6.6.6, ", 192.0.2.9, 10.0.0.1', "192.0.2.9"),
])
def test_x_forwarded_for_quotes_through_the_middleware(header, remote_addr):
    from wsgiproxy.middleware import WSGIProxyMiddleware
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [])
        return [b""]
    mw = WSGIProxyMiddleware(app, front_proxy_ips="10.0.0.1", x_for=2)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "b",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "REMOTE_ADDR": "10.0.0.1",
               "HTTP_X_FORWARDED_FOR": header}
    statuses = []
    mw(environ, lambda status, headers, exc_info=None: statuses.append(status))
    assert statuses == ["200 OK"]
    assert seen["REMOTE_ADDR"] == remote_addr


def test_trusted_networks():
    nets = TrustedNetworks("10.0.0.0/8, 192.0.2.7 2001:db8::/32,[::1]")
    for addr in ("10.1.2.3", "192.0.2.7", "2001:db8::1", "::1", "[::1]", "::ffff:10.0.0.1",
                 " 10.0.0.1 "):
        assert addr in nets, addr
    for addr in ("11.0.0.1", "192.0.2.8", "2001:db9::1", "garbage", "", None, 5, "[::2]",
                 "::ffff:11.0.0.1"):
        assert addr not in nets, addr
    assert TrustedNetworks(["10.0.0.1", "10.0.0.2 10.0.0.3"]).networks[2].num_addresses == 1
    assert "anything" in TrustedNetworks("*") and None in TrustedNetworks(["*"])
    assert not TrustedNetworks() and not TrustedNetworks("")
    assert "1.2.3.4" not in TrustedNetworks()
    assert "fe80::1%eth0" in TrustedNetworks("fe80::/10")
    assert "127.0.0.5" in LOOPBACK and "::1" in LOOPBACK and "10.0.0.1" not in LOOPBACK
    assert "TrustedNetworks" in repr(nets)
    for bad in ("localhost", "10.0.0.0/33", "1.2.3"):
        with pytest.raises(ValueError, match="trusted address"):
            TrustedNetworks(bad)


@pytest.mark.parametrize("value, expected", [
    ("example.com", ("example.com", None)), ("Example.COM:8080", ("Example.COM", 8080)),
    ("[2001:db8::a]:8080", ("[2001:db8::a]", 8080)), ("[::1]", ("[::1]", None)),
    ("127.0.0.1:80", ("127.0.0.1", 80)), ("host:", ("host", None)),
    ("[fe80::1%25eth0]:1", ("[fe80::1%25eth0]", 1)), ("my_host.local", ("my_host.local", None)),
])
def test_split_host(value, expected):
    assert split_host(value) == expected


@pytest.mark.parametrize("value", ["", ":80", "a b", "user@host", "host:99999", "host:8o",
                                   "[::1", "[::1]80", "[zz]", "a/b", "h\r\nx", "a,b",
                                   "2001:db8::1"])
def test_split_host_malformed(value):
    with pytest.raises(ProtocolError):
        split_host(value)


def test_join_host():
    assert join_host("example.com", 8080) == "example.com:8080"
    assert join_host("example.com", 443, "https") == "example.com"
    assert join_host("example.com", 443, "http") == "example.com:443"
    assert join_host("2001:db8::1", 80, "https") == "[2001:db8::1]:80"
    assert join_host("[::1]") == "[::1]"
