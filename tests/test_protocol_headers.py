"""protocol/headers.py: the value codec, key headers and path headers."""

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgiproxy.errors import ProtocolError
from wsgiproxy.protocol.headers import (
    PICKLE_PROTOCOL,
    PROTOCOL_VERSION,
    decode_key_header,
    decode_path_header,
    decode_value,
    encode_key_headers,
    encode_path_header,
    encode_value,
    key_header_kind,
)

from .client import Bomb


def roundtrip(kind, key, value):
    keyword = {"Str": "string_keys", "Unicode": "unicode_keys", "Json": "json_keys",
               "Pickle": "pickle_keys"}[kind]
    [(name, header_value)] = encode_key_headers({key: value}, **{keyword: [key]})
    assert name == "X-WSGIProxy-%s-0" % kind
    return decode_key_header(name, header_value, allow_pickle=True)


# -- values and key headers ---------------------------------------------------

@pytest.mark.parametrize("data, encoded", [
    (b"bob", "bob"),
    (b"a b", "a b"),
    (b" bob", "b64" + base64.b64encode(b" bob").decode()),
    (b"bob ", "b64" + base64.b64encode(b"bob ").decode()),
    (b"b64xyz", "b64" + base64.b64encode(b"b64xyz").decode()),
    (b"line\nbreak", "b64" + base64.b64encode(b"line\nbreak").decode()),
    (b"caf\xc3\xa9", "b64" + base64.b64encode(b"caf\xc3\xa9").decode()),
    (b"", "b64"),
    (b"tab\there", "b64" + base64.b64encode(b"tab\there").decode()),
])
def test_encode_value(data, encoded):
    assert encode_value(data) == encoded
    assert decode_value(encoded) == data


@pytest.mark.parametrize("text", ["b64!!!!", "b64abc", "b64YQ", " x", "x ", "", "a\x01b", "a\tb",
                                  "\u0100", "b64YWJj\n"])
def test_decode_value_malformed(text):
    with pytest.raises(ProtocolError):
        decode_value(text)


def test_encode_key_headers_numbering_and_skipping():
    environ = {"REMOTE_USER": "bob", "x.name": "v", "u": "\u00e9t\u00e9", "j": {"a": [1, None]},
               "p": {1, 2}}
    headers = encode_key_headers(environ, string_keys=["REMOTE_USER", "absent", "x.name"],
                                 unicode_keys=["u"], json_keys=["j"], pickle_keys=["p"])
    names = [name for name, _ in headers]
    assert names == ["X-WSGIProxy-Str-0", "X-WSGIProxy-Str-1", "X-WSGIProxy-Unicode-0",
                     "X-WSGIProxy-Json-0", "X-WSGIProxy-Pickle-0"]
    assert headers[0][1] == "REMOTE_USER bob"
    assert headers[1][1] == "x.name v"
    decoded = dict(decode_key_header(n, v, allow_pickle=True) for n, v in headers)
    assert decoded == environ


def test_encode_key_headers_accepts_an_ini_string():
    headers = encode_key_headers({"A": "1", "B": "2"}, string_keys="A, B")
    assert [v for _, v in headers] == ["A 1", "B 2"]


def test_key_names_are_quoted():
    [(name, value)] = encode_key_headers({"my key/%\u00e9": "v"}, string_keys=["my key/%\u00e9"])
    assert value == "my%20key%2F%25%C3%A9 v"
    assert decode_key_header(name, value) == ("my key/%\u00e9", "v")


@pytest.mark.parametrize("keyword, value, message", [
    ("string_keys", 5, "string_keys"),
    ("string_keys", b"bytes", "string_keys"),
    ("string_keys", "\u20ac", "unicode_keys"),
    ("unicode_keys", None, "unicode_keys"),
    ("json_keys", object(), "json_keys"),
    ("pickle_keys", lambda: 1, "pickle_keys"),
])
def test_wrong_types_raise_type_error_naming_the_key(keyword, value, message):
    with pytest.raises(TypeError, match="THE_KEY.*" + message):
        encode_key_headers({"THE_KEY": value}, **{keyword: ["THE_KEY"]})


def test_empty_key_name_refused():
    with pytest.raises(ValueError):
        encode_key_headers({"": "x"}, string_keys=[""])


def test_values_never_contain_cr_lf_nul():
    environ = {"a": "\r\n\0", "b": "\u2028x\r", "c": ["\n"], "d": b"\r\n"}
    headers = encode_key_headers(environ, string_keys=["a"], unicode_keys=["b"],
                                 json_keys=["c"], pickle_keys=["d"])
    for name, value in headers:
        for char in "\r\n\0":
            assert char not in value and char not in name


def test_decode_accepts_environ_spelling_and_any_case():
    value = "k b64" + base64.b64encode(b"[1]").decode()
    assert decode_key_header("HTTP_X_WSGIPROXY_JSON_3", value) == ("k", [1])
    assert decode_key_header("x-wsgiproxy-str-0", "k v") == ("k", "v")
    assert decode_key_header("X-WSGIPROXY-UNICODE-12", "k v") == ("k", "v")
    assert decode_key_header("X-WSGIProxy-Json-0", "k 1") == ("k", 1)


def test_decode_accepts_the_original_formats():
    # The original quoted keys with urllib.quote (slash unquoted) and sent JSON literally.
    assert decode_key_header("X-WSGIProxy-Str-0", "a/b x") == ("a/b", "x")
    assert decode_key_header("X-WSGIProxy-Json-0", 'k {"a":1}') == ("k", {"a": 1})


@pytest.mark.parametrize("name, value", [
    ("X-WSGIProxy-Bytes-0", "k v"),          # bad kind
    ("X-WSGIProxy-Str", "k v"),              # no N
    ("X-WSGIProxy-Str-", "k v"),
    ("X-WSGIProxy-Str-01", "k v"),           # leading zero
    ("X-WSGIProxy-Str-x", "k v"),
    ("X-WSGIProxy-Str-1234567", "k v"),      # too long
    ("X-Other", "k v"),
    ("X-WSGIProxy-Str-0", "kv"),             # no space
    ("X-WSGIProxy-Str-0", ""),
    ("X-WSGIProxy-Str-0", "%zz v"),          # bad quoting
    ("X-WSGIProxy-Str-0", "a%2 v"),
    ("X-WSGIProxy-Str-0", "%FF v"),          # not UTF-8 once unquoted
    ("X-WSGIProxy-Str-0", "a+b v"),
    ("X-WSGIProxy-Str-0", "k b64!!"),        # bad base64
    ("X-WSGIProxy-Str-0", "k  v"),           # literal with a leading space
    ("X-WSGIProxy-Str-0", "k v\u20ac"),      # not latin-1
    ("X-WSGIProxy-Unicode-0", "k b64/w=="),  # bad UTF-8
    ("X-WSGIProxy-Json-0", "k {"),           # bad JSON
    ("X-WSGIProxy-Json-0", "k " + "[" * 100000),  # too deep: RecursionError inside json
    ("X-WSGIProxy-Pickle-0", "k b64AAAA"),   # not a pickle (allowed, but broken)
])
def test_decode_malformed(name, value):
    with pytest.raises(ProtocolError):
        decode_key_header(name, value, allow_pickle=True)


def test_decode_refuses_pickle_without_permission_and_unpickles_nothing(tmp_path):
    target = tmp_path / "pwned"
    [(name, value)] = encode_key_headers({"k": Bomb(str(target))}, pickle_keys=["k"])
    with pytest.raises(ProtocolError, match="signed"):
        decode_key_header(name, value)
    with pytest.raises(ProtocolError):
        decode_key_header("HTTP_X_WSGIPROXY_PICKLE_0", value)
    with pytest.raises(ProtocolError):  # even a malformed pickle header is refused first
        decode_key_header("X-WSGIProxy-Pickle-zz", value)
    assert not target.exists()
    _, opened = decode_key_header(name, value, allow_pickle=True)
    opened.close()
    assert target.exists()  # the bomb is real: only the permission stopped it


@pytest.mark.parametrize("name, kind", [
    ("X-WSGIProxy-Str-0", "Str"), ("HTTP_X_WSGIPROXY_UNICODE_2", "Unicode"),
    ("x-wsgiproxy-json-1", "Json"), ("X-WSGIProxy-Pickle-x", "Pickle"),
    ("X-WSGIProxy-Pickle", "Pickle"), ("X-WSGIProxy-Version", None),
    ("X-WSGIProxy-Strange-0", None), ("X-Forwarded-For", None), (None, None), (3, None),
])
def test_key_header_kind(name, kind):
    assert key_header_kind(name) == kind


def test_pickle_uses_a_fixed_protocol():
    [(_, value)] = encode_key_headers({"k": [1]}, pickle_keys=["k"])
    data = base64.b64decode(value.split(" ", 1)[1][3:])
    assert data[:2] == bytes([0x80, PICKLE_PROTOCOL])


# -- hypothesis: encode -> decode is the identity -----------------------------

latin1_st = st.text(alphabet=st.characters(max_codepoint=255), max_size=60)
tricky_st = st.one_of(latin1_st, st.sampled_from(["b64", "b64abc", " lead", "trail ", "\n",
                                                   "a\r\nb", "", " ", "\x00"]))
json_st = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                       children, max_size=4),
    max_leaves=15)


@settings(max_examples=200, deadline=None)
@given(key=st.text(min_size=1, max_size=30), value=tricky_st)
def test_str_roundtrip(key, value):
    assert roundtrip("Str", key, value) == (key, value)


@settings(max_examples=200, deadline=None)
@given(key=st.text(min_size=1, max_size=30), value=st.one_of(st.text(max_size=60), tricky_st))
def test_unicode_roundtrip(key, value):
    assert roundtrip("Unicode", key, value) == (key, value)


@settings(max_examples=200, deadline=None)
@given(key=st.text(min_size=1, max_size=30), value=json_st)
def test_json_roundtrip(key, value):
    assert roundtrip("Json", key, value) == (key, value)


@settings(max_examples=100, deadline=None)
@given(key=st.text(min_size=1, max_size=30),
       value=st.one_of(json_st, st.binary(max_size=40), st.tuples(st.integers(), latin1_st),
                       st.frozensets(st.integers(), max_size=5)))
def test_pickle_roundtrip(key, value):
    assert roundtrip("Pickle", key, value) == (key, value)


@settings(max_examples=200, deadline=None)
@given(name=st.one_of(st.text(max_size=30), st.sampled_from([
           "X-WSGIProxy-Str-0", "X-WSGIProxy-Unicode-1", "HTTP_X_WSGIPROXY_JSON_2",
           "X-WSGIProxy-Pickle-0", "X-WSGIProxy-Json-x"])),
       value=st.one_of(st.text(max_size=80),
                       st.builds(lambda k, v: k + " " + v, st.text(max_size=10),
                                 st.text(max_size=60)),
                       st.builds(lambda v: "k b64" + v, st.text(max_size=40))),
       allow_pickle=st.booleans())
def test_decoder_raises_only_protocol_error(name, value, allow_pickle):
    if allow_pickle and key_header_kind(name) == "Pickle":
        allow_pickle = False  # never unpickle random data
    try:
        decode_key_header(name, value, allow_pickle=allow_pickle)
    except ProtocolError:
        pass


# -- path headers -------------------------------------------------------------

def test_path_headers():
    assert encode_path_header("/caf\xc3\xa9 x%") == "/caf%C3%A9%20x%25"
    assert decode_path_header("/caf%C3%A9%20x%25") == "/caf\xc3\xa9 x%"
    assert decode_path_header("/plain") == "/plain"
    for bad in ("/a%0Ab", "/a%00", "/a\nb", "/\u20ac"):
        with pytest.raises(ProtocolError):
            decode_path_header(bad)
    with pytest.raises(ValueError):
        encode_path_header("/\u20ac")


def test_protocol_version():
    assert PROTOCOL_VERSION == "1"
