"""wsgiproxy.cookies: Path and Domain of Set-Cookie values, nginx's rules, nothing else touched."""

import pytest

from wsgiproxy.converters import parse_pairs
from wsgiproxy.cookies import CookieRewriter, rewrite_set_cookie, rules


def path(value, *pairs):
    return CookieRewriter(paths=pairs).rewrite(value)


def domain(value, *pairs):
    return CookieRewriter(domains=pairs).rewrite(value)


# -- Path: a prefix, replaced ---------------------------------------------------------

@pytest.mark.parametrize("value, want", [
    ("a=1; Path=/x", "a=1; Path=/app/x"),
    ("a=1; Path=/", "a=1; Path=/app/"),
    ("a=1; Path=/x/y/", "a=1; Path=/app/x/y/"),
])
def test_root_to_mount_point(value, want):
    """The issue's example: ``/ -> /app/`` turns ``/x`` into ``/app/x``."""
    assert path(value, ("/", "/app/")) == want


def test_the_nginx_documentation_example():
    assert path("a=1; path=/two/some/uri/", ("/two/", "/")) == "a=1; path=/some/uri/"


@pytest.mark.parametrize("value", [
    "a=1; Path=/other",
    "a=1; Path=/Base/x",       # case-sensitive, as paths are
    "a=1; Path=/bas",          # shorter than FROM
    "a=1; Path=base/x",        # no leading slash: not the prefix
])
def test_a_path_without_the_prefix_is_left_alone(value):
    assert path(value, ("/base", "/mount")) == value


def test_the_prefix_has_no_segment_boundary():
    """As in nginx: FROM ``/app`` also matches ``/apple``; write ``/app/`` to bound it."""
    assert path("a=1; Path=/apple", ("/app", "/x")) == "a=1; Path=/xle"
    assert path("a=1; Path=/apple", ("/app/", "/x/")) == "a=1; Path=/apple"


def test_first_matching_rule_wins():
    """nginx: several proxy_cookie_path directives, the first that matches is used."""
    pairs = [("/one/", "/"), ("/", "/two/")]
    assert path("a=1; Path=/one/x", *pairs) == "a=1; Path=/x"
    assert path("a=1; Path=/three", *pairs) == "a=1; Path=/two/three"
    # Not applied twice: /one/x became /x and stays so.
    assert path("a=1; Path=/one/", *pairs) == "a=1; Path=/"


def test_a_mapping_keeps_its_order():
    rewriter = CookieRewriter(paths={"/a/b/": "/x/", "/a/": "/y/"})
    assert rewriter.rewrite("c=1; Path=/a/b/c") == "c=1; Path=/x/c"
    assert rewriter.rewrite("c=1; Path=/a/c") == "c=1; Path=/y/c"


@pytest.mark.parametrize("path_name, domain_name", [
    ("Path", "Domain"), ("path", "domain"), ("PATH", "DOMAIN"), ("pAtH", "dOmAiN")])
def test_attribute_names_in_any_case(path_name, domain_name):
    value = "a=1; %s=/x; %s=back.example" % (path_name, domain_name)
    rewriter = CookieRewriter(paths={"/": "/app/"}, domains={"back.example": "front.example"})
    assert rewriter.rewrite(value) == "a=1; %s=/app/x; %s=front.example" % (path_name, domain_name)


@pytest.mark.parametrize("value, want", [
    ("a=1;Path=/x", "a=1;Path=/app/x"),
    ("a=1;   Path=/x", "a=1;   Path=/app/x"),
    ("a=1; Path = /x ; Secure", "a=1; Path = /app/x ; Secure"),
    ("a=1;\tPath\t=\t/x\t;HttpOnly", "a=1;\tPath\t=\t/app/x\t;HttpOnly"),
    ("a=1; Path=/x ", "a=1; Path=/app/x "),
    ("a=1; Secure; Path=/x", "a=1; Secure; Path=/app/x"),
])
def test_spaces_around_names_and_values_are_kept(value, want):
    assert path(value, ("/", "/app/")) == want


def test_every_path_attribute_is_rewritten():
    """Browsers use the last Path, other readers the first: both are rewritten."""
    value = "a=1; Path=/x; Secure; path=/y; Path=/elsewhere"
    assert path(value, ("/x", "/m/x"), ("/y", "/m/y")) == \
        "a=1; Path=/m/x; Secure; path=/m/y; Path=/elsewhere"


@pytest.mark.parametrize("value", [
    "a=1",
    "a=1; Secure; HttpOnly",
    "a=1; Path",                # a flag, no value
    "a=1; Path=",               # empty: the browser uses its default path
    "a=1; Path=   ; Secure",
    "a=1; Max-Age=10; Expires=Wed, 21 Oct 2037 07:28:00 GMT",
    "a=1; XPath=/x; Pathway=/x; Path_=/x",  # other names that contain "path"
])
def test_values_without_a_path_to_rewrite_are_unchanged(value):
    assert path(value, ("/", "/app/")) == value


def test_expires_with_its_comma_and_other_attributes_are_untouched():
    value = ("sid=abc123; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Max-Age=3600; "
             "Path=/base/; SameSite=Lax; Secure; HttpOnly; Partitioned")
    assert path(value, ("/base/", "/mount/")) == value.replace("/base/", "/mount/")


def test_the_cookie_name_and_value_are_never_rewritten():
    value = "Path=/x; Path=/x"
    assert path(value, ("/x", "/y")) == "Path=/x; Path=/y"
    value = "sid=Domain=back.example; Domain=back.example"
    assert domain(value, ("back.example", "front.example")) == \
        "sid=Domain=back.example; Domain=front.example"


def test_quoted_cookie_values():
    """A quoted cookie value is kept; a quoted attribute value is read as the browser reads
    it, quotes included, so it does not start with ``/``."""
    assert path('a="x y"; Path=/x', ("/", "/app/")) == 'a="x y"; Path=/app/x'
    assert path('a=""; Path=/x', ("/", "/app/")) == 'a=""; Path=/app/x'
    assert path('a=1; Path="/x"', ("/", "/app/")) == 'a=1; Path="/x"'
    assert domain('a=1; Domain="back.example"', ("back.example", "f.example")) == \
        'a=1; Domain="back.example"'


@pytest.mark.parametrize("value", [
    "no-equals-sign; Path=/x",              # a browser drops it
    "  ; Path=/x",                          # no name=value at all
    'a="open; Path=/x"; Path=/x',           # a quote left open: readers split it differently
    'a="; Path=/x',
    'a="x"y; Path=/x',
    "a=1; Path=/x\x00",                     # control characters
    "a=1\x01; Path=/x",
    "a=1; Path=/x\r\nX-Injected: 1",
    "a=1; Path=/x\x7f",
])
def test_malformed_cookies_are_left_alone(value):
    assert path(value, ("/", "/app/")) == value
    assert domain(value.replace("Path", "Domain"), ("x", "y")) == value.replace("Path", "Domain")


def test_a_nameless_cookie_is_a_cookie():
    """``=value`` is a cookie for browsers (RFC 6265bis): it is rewritten."""
    assert path("=v; Path=/x", ("/", "/app/")) == "=v; Path=/app/x"


# -- Domain: an exact, case-insensitive match ---------------------------------------------

def test_the_nginx_domain_example():
    assert domain("a=1; domain=localhost", ("localhost", "example.org")) == \
        "a=1; domain=example.org"


@pytest.mark.parametrize("value, want", [
    ("a=1; Domain=back.example", "a=1; Domain=front.example"),
    ("a=1; Domain=BACK.Example", "a=1; Domain=front.example"),
    ("a=1; Domain=.back.example", "a=1; Domain=.front.example"),  # its dot is kept
    ("a=1; Domain = back.example ; Path=/", "a=1; Domain = front.example ; Path=/"),
    ("a=1; Domain=www.back.example", "a=1; Domain=www.back.example"),  # exact: no suffix match
    ("a=1; Domain=back.example.org", "a=1; Domain=back.example.org"),
    ("a=1; Domain=..back.example", "a=1; Domain=..back.example"),  # one dot only
    ("a=1; Domain=", "a=1; Domain="),
])
def test_domain_matches_exactly_ignoring_case_and_one_leading_dot(value, want):
    assert domain(value, ("back.example", "front.example")) == want


@pytest.mark.parametrize("old, new", [
    (".back.example", "front.example"),
    ("back.example", ".front.example"),
    ("BACK.example", "front.example"),
])
def test_a_leading_dot_of_the_rule_is_ignored(old, new):
    assert domain("a=1; Domain=back.example", (old, new)) == "a=1; Domain=front.example"
    assert domain("a=1; Domain=.back.example", (old, new)) == "a=1; Domain=.front.example"


def test_the_replacement_keeps_its_case():
    assert domain("a=1; Domain=back", ("back", "Front.Example")) == "a=1; Domain=Front.Example"


def test_first_matching_domain_rule_wins():
    pairs = [("a.example", "one.example"), ("A.EXAMPLE", "two.example")]
    assert domain("c=1; Domain=a.example", *pairs) == "c=1; Domain=one.example"


def test_path_and_domain_together():
    rewriter = CookieRewriter(paths=[("/", "/app/")], domains={"localhost": "shop.example"})
    assert rewriter.rewrite("s=1; Domain=localhost; Path=/cart; HttpOnly") == \
        "s=1; Domain=shop.example; Path=/app/cart; HttpOnly"


def test_the_function_takes_prepared_rules():
    assert rewrite_set_cookie("a=1; Path=/x; Domain=b", (("/", "/m/"),), (("b", "c"),)) == \
        "a=1; Path=/m/x; Domain=c"
    assert rewrite_set_cookie("a=1; Path=/x") == "a=1; Path=/x"


# -- Headers: only Set-Cookie, each one, in order ---------------------------------------

def test_headers_keep_their_order_and_repeats():
    rewriter = CookieRewriter(paths={"/": "/app/"})
    headers = [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1; Path=/"),
        ("X-Note", "Path=/x"),
        ("set-cookie", "b=2; Path=/b; Expires=Wed, 21 Oct 2037 07:28:00 GMT"),
        ("Set-Cookie", "c=3"),
        ("SET-COOKIE", "d=4; path=/d"),
        ("Set-Cookie2", "e=5; Path=/e"),  # obsolete, not a Set-Cookie
    ]
    assert rewriter.rewrite_headers(headers) == [
        ("Content-Type", "text/plain"),
        ("Set-Cookie", "a=1; Path=/app/"),
        ("X-Note", "Path=/x"),
        ("set-cookie", "b=2; Path=/app/b; Expires=Wed, 21 Oct 2037 07:28:00 GMT"),
        ("Set-Cookie", "c=3"),
        ("SET-COOKIE", "d=4; path=/app/d"),
        ("Set-Cookie2", "e=5; Path=/e"),
    ]
    assert headers[1] == ("Set-Cookie", "a=1; Path=/")  # the backend's list is not changed


def test_headers_come_back_as_they_were_when_nothing_matches():
    headers = [("Set-Cookie", "a=1; Path=/x"), ("", "")]
    assert CookieRewriter(paths={"/y": "/z"}).rewrite_headers(headers) is headers


def test_no_rules_is_false():
    assert not CookieRewriter()
    assert not CookieRewriter({}, [])
    assert CookieRewriter(domains={"a": "b"})


# -- The rules themselves ------------------------------------------------------------------

def test_rules_from_a_mapping_or_pairs():
    assert rules({"/a": "/b", "/c": "/d"}) == (("/a", "/b"), ("/c", "/d"))
    assert rules([("/a", "/b"), ["/c", "/d"]]) == (("/a", "/b"), ("/c", "/d"))
    assert rules(iter([("/a", "/b")])) == (("/a", "/b"),)
    assert rules(None) == rules([]) == ()


@pytest.mark.parametrize("bad", ["/ /app/", b"/ /app/", ["/a"], [("/a", "/b", "/c")], ["ab"]])
def test_rules_refuse_what_is_not_pairs(bad):
    with pytest.raises(TypeError):
        rules(bad, "cookie_path")


@pytest.mark.parametrize("old, new", [
    ("", "/x"), ("/x", ""),
    ("/x", "/a b"), ("/x", "/a;b"), ("/x;", "/a"),
    ("/x", "/a\r\nSet-Cookie: evil=1"), ("/x", "/a\n"), ("/x", "/a\x00"), ("/x", "/a\t"),
    ("/x", "/caf\xe9"), ("/x", None), (1, "/a"),
])
def test_rules_refuse_text_that_could_break_the_header(old, new):
    with pytest.raises(ValueError, match="cookie_path item 1"):
        CookieRewriter(paths=[(old, new)])


@pytest.mark.parametrize("old, new", [(".", "front.example"), ("back.example", ".")])
def test_a_domain_of_only_a_dot_is_refused(old, new):
    with pytest.raises(ValueError, match="cookie_domain item 1"):
        CookieRewriter(domains=[(old, new)])


@pytest.mark.parametrize("value", [
    "a=1; Path=/x", "a=1; Path=/x\r\n", "a=1\n; Path=/", "a=1; Path=/\x00; Path=/x",
    'a="q"; Path=/; Domain=b', "a=1; Path=/; Path=/; Path=/",
])
def test_no_cr_or_lf_is_ever_produced(value):
    """Whatever the backend sent, the result has no CR/LF/NUL it did not already have."""
    rewriter = CookieRewriter(paths=[("/", "/app/")], domains=[("b", "front.example")])
    out = rewriter.rewrite(value)
    for char in "\r\n\x00":
        assert out.count(char) == value.count(char)


# -- The .ini spelling ---------------------------------------------------------------------

def test_ini_pairs_one_per_line():
    text = "\n  /one/ /\n\n  /   /two/\n"
    assert parse_pairs(text) == [("/one/", "/"), ("/", "/two/")]
    assert parse_pairs("localhost shop.example") == [("localhost", "shop.example")]
    assert CookieRewriter(paths=parse_pairs(text)).paths == (("/one/", "/"), ("/", "/two/"))


@pytest.mark.parametrize("text", ["/only-one", "/a /b /c", "/a /b\n/c"])
def test_ini_pairs_name_the_bad_line(text):
    with pytest.raises(ValueError, match="line"):
        parse_pairs(text)
