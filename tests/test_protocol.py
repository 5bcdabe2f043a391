"""The sans-IO wire protocol: key codecs, signatures, secrets, nonces, Forwarded and hosts."""

import base64
import hashlib
import logging
import os
import threading
from urllib.parse import quote, unquote_to_bytes

import pytest
from hypothesis import given, settings, strategies as st

from wsgiproxy import keys, protocol
from wsgiproxy.protocol import signature
from wsgiproxy.protocol import (
    LOOPBACK, PROTOCOL_VERSION, SIGNATURE_HEADER, MemoryNonceStore, NonceStore, NonceStoreFull,
    ProtocolError,
    SecretKeys, SignatureError, TrustedNetworks, canonical_request, decode_key_header,
    decode_path_header, decode_value, encode_key_headers, encode_path_header, encode_value,
    format_forwarded, forwarded_node, is_signed_header, join_host, key_header_kind, key_id_for,
    nth_from_right, parse_forwarded, parse_node, parse_signature, sign_request, split_host,
    verify_request,
)

NOW = 1700000000
NONCE = "0123456789abcdef0123456789abcdef"
KEYS = SecretKeys.from_secrets(["first-secret-0123456789", "second-secret-0123456789"])


class Bomb:
    """Unpickling this creates a file: the proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


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
    assert data[:2] == bytes([0x80, protocol.PICKLE_PROTOCOL])


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


# -- signatures ---------------------------------------------------------------

@pytest.mark.parametrize("name, signed", [
    ("X-WSGIProxy-Str-0", True), ("HTTP_X_WSGIPROXY_VERSION", True), ("X-WSGIProxy-Foo", True),
    ("X-WSGIProxy-Signature", False), ("HTTP_X_WSGIPROXY_SIGNATURE", False),
    ("X-Forwarded-For", True), ("HTTP_X_FORWARDED_PREFIX", True), ("x-forwarded-anything", True),
    ("X-Traversal-Path", True), ("HTTP_X_TRAVERSAL_QUERY_STRING", True),
    ("X-Script-Name", True), ("HTTP_X_SCRIPT_NAME", True), ("Forwarded", True),
    ("HTTP_FORWARDED", True), ("Host", False), ("HTTP_HOST", False), ("Accept", False),
    ("X-Forwarded", False), ("wsgi.input", False), ("X-Scripts", False), (None, False),
])
def test_is_signed_header(name, signed):
    assert is_signed_header(name) is signed


BASE = dict(method="POST", host="backend.example:8080", path="/app/caf%C3%A9/a%2Fb",
            query="x=1&y=%20", headers=[("X-Forwarded-For", "192.0.2.1"),
                                        ("X-Forwarded-Server", "www.example.com"),
                                        ("X-WSGIProxy-Version", "1"),
                                        ("X-WSGIProxy-Str-0", "REMOTE_USER bob"),
                                        ("Accept", "text/html"), ("Cookie", "a=b")])


def received(headers):
    """Headers as a WSGI server hands them over: environ keys."""
    return {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers}


def sign(**changes):
    args = dict(BASE, **changes)
    return sign_request(KEYS, args["method"], args["host"], args["path"], args["query"],
                        args["headers"], body=args.get("body"), now=NOW, nonce=NONCE)


def verify(signature, now=NOW + 10, store=None, **changes):
    args = dict(BASE, **changes)
    headers = args.get("received", received(args["headers"]))
    return verify_request(KEYS, signature, args["method"], args["host"], args["path"],
                          args["query"], headers, now=now, nonce_store=store,
                          body=args.get("body"))


def test_signature_format():
    value = sign()
    assert value.startswith("v1 kid=%s, ts=%d, nonce=%s, body=-, headers=" % (
        KEYS.key_ids[0], NOW, NONCE))
    parsed = parse_signature(value)
    assert parsed.headers == ("x-forwarded-for", "x-forwarded-server", "x-wsgiproxy-str-0",
                              "x-wsgiproxy-version")
    for char in "\r\n\0":
        assert char not in value


def test_sign_and_verify_with_decoded_path():
    signature = sign()
    assert verify(signature, path=b"/app/caf\xc3\xa9/a/b") == KEYS.key_ids[0]
    assert verify(signature) == KEYS.key_ids[0]  # or the path as sent
    assert verify(signature, host="BACKEND.example:8080", method="post") == KEYS.key_ids[0]


def test_signature_with_generator_headers():
    signature = sign(headers=(h for h in BASE["headers"]))
    assert verify(signature) == KEYS.key_ids[0]


def test_header_whitespace_and_empty_headers():
    signature = sign(headers=BASE["headers"] + [("X-Forwarded-Script-Name", "")])
    headers = received(BASE["headers"])
    headers["HTTP_X_FORWARDED_FOR"] = "  192.0.2.1 "
    assert verify(signature, received=headers)  # empty = absent, values are stripped


@pytest.mark.parametrize("change", [
    dict(method="GET"), dict(host="other.example:8080"), dict(path="/app/cafe/a%2Fb"),
    dict(path="/app/caf%C3%A9/a%2Fb/"), dict(query="x=1&y=%21"), dict(query=""),
])
def test_any_change_is_a_bad_signature(change):
    with pytest.raises(SignatureError) as info:
        verify(sign(), **change)
    assert info.value.reason == "bad signature"


@pytest.mark.parametrize("mutate, detail", [
    (lambda h: h.update(HTTP_X_FORWARDED_FOR="10.0.0.1"), "differs"),
    (lambda h: h.update(HTTP_X_WSGIPROXY_STR_0="REMOTE_USER admin"), "differs"),
    (lambda h: h.update(HTTP_X_FORWARDED_HOST="evil.example"), "not covered"),
    (lambda h: h.update(HTTP_X_SCRIPT_NAME="/evil"), "not covered"),
    (lambda h: h.update(HTTP_X_WSGIPROXY_PICKLE_0="k b64"), "not covered"),
    (lambda h: h.pop("HTTP_X_FORWARDED_FOR"), "did not arrive"),
])
def test_changed_added_or_removed_signed_headers(mutate, detail):
    headers = received(BASE["headers"])
    mutate(headers)
    with pytest.raises(SignatureError, match=detail) as info:
        verify(sign(), received=headers)
    assert info.value.reason == "bad signature"


def test_missing_forwarded_header_hints_at_waitress():
    headers = received(BASE["headers"])
    del headers["HTTP_X_FORWARDED_FOR"]
    with pytest.raises(SignatureError, match="clear_untrusted_proxy_headers"):
        verify(sign(), received=headers)


def test_unsigned_headers_may_change():
    headers = received(BASE["headers"])
    headers["HTTP_ACCEPT"] = "application/json"
    headers["HTTP_USER_AGENT"] = "curl"
    assert verify(sign(), received=headers)


@pytest.mark.parametrize("now", [NOW + 301, NOW - 301, NOW + 10 ** 6])
def test_expired(now):
    with pytest.raises(SignatureError) as info:
        verify(sign(), now=now)
    assert info.value.reason == "expired"
    assert verify(sign(), now=NOW + 300)


def test_replayed():
    store = MemoryNonceStore(clock=lambda: NOW)
    signature = sign()
    assert verify(signature, store=store)
    with pytest.raises(SignatureError) as info:
        verify(signature, store=store)
    assert info.value.reason == "replayed"


def test_failed_verification_does_not_burn_the_nonce():
    store = MemoryNonceStore(clock=lambda: NOW)
    signature = sign()
    with pytest.raises(SignatureError):
        verify(signature, store=store, query="tampered")
    assert verify(signature, store=store)


def test_body_digest():
    signature = sign(body=b"payload")
    assert parse_signature(signature).body_digest == base64.urlsafe_b64encode(
        hashlib.sha256(b"payload").digest()).rstrip(b"=").decode()
    assert verify(signature, body=b"payload")
    for body in (None, b"payload!", b""):
        with pytest.raises(SignatureError) as info:
            verify(signature, body=body)
        assert info.value.reason == "body mismatch"
    with pytest.raises(TypeError):
        sign(body="text")


def test_empty_body_digest_differs_from_no_digest():
    signature = sign(body=b"")
    assert parse_signature(signature).body_digest != "-"
    assert verify(signature, body=b"")


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing(value):
    with pytest.raises(SignatureError) as info:
        verify(value)
    assert info.value.reason == "missing"


def test_malformed_signatures():
    good = sign()
    bad = [
        "v2" + good[2:], "garbage", "v1", "v1 kid=abc",
        good.replace("kid=", "kid=zz"), good.replace("ts=%d" % NOW, "ts=-1"),
        good.replace("ts=%d" % NOW, "ts=1.5"), good.replace(NONCE, "short"),
        good.replace("body=-", "body=xyz"), good.replace("sig=", "sig=x"),
        good + ", extra=1", good.replace("body=-", "body=-, body=-"),
        good.replace("headers=x-forwarded-for", "headers=Host;x-forwarded-for"),
        good.replace("headers=x-forwarded-for", "headers=x-forwarded-for;x-forwarded-for"),
    ]
    for value in bad:
        with pytest.raises(SignatureError) as info:
            verify(value)
        assert info.value.reason == "malformed", value


def test_unknown_key():
    other = SecretKeys.from_secrets(["a-different-secret-0123"])
    signature = sign_request(other, "GET", "h", "/", "", [], now=NOW)
    with pytest.raises(SignatureError) as info:
        verify_request(KEYS, signature, "GET", "h", "/", "", [], now=NOW)
    assert info.value.reason == "unknown key"
    assert "first-secret" not in str(info.value)


def test_forged_sig_with_known_key_id():
    signature = sign()
    forged = signature[:-43] + ("A" * 43)
    with pytest.raises(SignatureError) as info:
        verify(forged)
    assert info.value.reason == "bad signature"


def test_rotation_old_key_still_verifies():
    old = SecretKeys.from_secrets(["second-secret-0123456789"])
    signature = sign_request(old, "GET", "h", "/", "", [], now=NOW)
    assert verify_request(KEYS, signature, "GET", "h", "/", "", [], now=NOW) == KEYS.key_ids[1]


@pytest.mark.parametrize("kwargs", [
    dict(headers=[("X-Forwarded-For", "1.2.3.4\r\nX-Evil: 1")]),
    dict(headers=[("X-Forwarded-For", "a\0")]),
    dict(headers=[("X-Forwarded-For", "a"), ("x-forwarded-for", "b")]),
    dict(query="a\nb"), dict(host="h\r"), dict(method="GET\n"),
    dict(path="/a?b"), dict(path="/\u20ac"), dict(headers=[("X-Forwarded-For", "\u20ac")]),
])
def test_cr_lf_nul_and_unencodable_refused_on_both_sides(kwargs):
    with pytest.raises(ProtocolError):
        sign(**kwargs)
    if "headers" in kwargs and "\u20ac" not in str(kwargs) and len(kwargs["headers"]) == 1:
        with pytest.raises(ProtocolError):
            verify(sign(), received=received(kwargs["headers"]))


def test_sign_rejects_bad_nonce():
    with pytest.raises(ValueError):
        sign_request(KEYS, "GET", "h", "/", "", [], nonce="XYZ")


def test_secret_never_in_errors_or_repr():
    for reason_case in (dict(query="changed"), dict(now=NOW + 10 ** 6)):
        with pytest.raises(SignatureError) as info:
            verify(sign(), **reason_case)
        assert "secret" not in str(info.value).replace(SIGNATURE_HEADER, "")
    assert "first-secret" not in repr(KEYS)


# The example of docs/protocol.rst, checked so that the page stays true.
DOC_SECRET = "correct horse battery staple 2024"
DOC_CANONICAL = """wsgiproxy-signature-v1
GET
backend.internal:8080
/app/caf%C3%A9
page=2
1700000000
0123456789abcdef0123456789abcdef
-
x-forwarded-for:192.0.2.7
x-forwarded-scheme:https
x-forwarded-script-name:/shop
x-forwarded-server:www.example.com
x-wsgiproxy-str-0:REMOTE_USER bob
x-wsgiproxy-version:1"""
DOC_HEADERS = [("X-Forwarded-For", "192.0.2.7"), ("X-Forwarded-Server", "www.example.com"),
               ("X-Forwarded-Scheme", "https"), ("X-Forwarded-Script-Name", "/shop"),
               ("X-WSGIProxy-Str-0", "REMOTE_USER bob"), ("X-WSGIProxy-Version", "1"),
               ("User-Agent", "curl/8.5")]


def test_documented_example():
    canonical = canonical_request("GET", "backend.internal:8080", "/app/caf%C3%A9", "page=2",
                                  NOW, NONCE, "-", DOC_HEADERS)
    assert canonical.decode("latin-1") == DOC_CANONICAL
    keys = SecretKeys.from_secrets([DOC_SECRET])
    signature = sign_request(keys, "GET", "backend.internal:8080", "/app/caf%C3%A9", "page=2",
                             DOC_HEADERS, now=NOW, nonce=NONCE)
    kid = key_id_for(DOC_SECRET.encode())
    assert kid == hashlib.sha256(b"wsgiproxy-key-id:" + DOC_SECRET.encode()).hexdigest()[:16]
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "protocol.rst")) as f:
        page = f.read()
    # The page shows the key id and signature computed here.
    assert kid in page
    assert signature.split("sig=")[1] in page
    assert DOC_CANONICAL in "\n".join(line[4:] if line.startswith("    ") else line
                                      for line in page.splitlines())


# hypothesis: sign -> verify, and any single change fails with the right reason
header_value_st = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF),
                          min_size=1, max_size=30).filter(lambda v: v.strip(" \t"))
signed_names_st = st.sampled_from(["X-Forwarded-For", "X-Forwarded-Server", "X-Forwarded-Scheme",
                                   "X-WSGIProxy-Str-0", "X-WSGIProxy-Json-1", "X-Traversal-Path",
                                   "Forwarded", "X-Script-Name", "X-WSGIProxy-Version"])
request_st = st.fixed_dictionaries({
    "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    "host": st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True),
    "path": st.lists(st.text(max_size=8), max_size=4).map(
        lambda parts: "/" + "/".join(quote(p.encode("utf-8"), safe="") for p in parts)),
    "query": st.from_regex(r"[a-z0-9=&%+]{0,20}", fullmatch=True),
    "headers": st.dictionaries(signed_names_st, header_value_st, max_size=6).map(
        lambda d: sorted(d.items())),
    "body": st.one_of(st.none(), st.binary(max_size=40)),
})

MUTATIONS = ["method", "host", "path", "query", "header value", "added header", "expired",
             "replayed", "body"]


@settings(max_examples=200, deadline=None)
@given(request=request_st, mutation=st.sampled_from(MUTATIONS), data=st.data())
def test_sign_verify_property(request, mutation, data):
    signature = sign_request(KEYS, request["method"], request["host"], request["path"],
                             request["query"], request["headers"], body=request["body"], now=NOW)
    store = MemoryNonceStore(clock=lambda: NOW)
    args = dict(request, headers=received(request["headers"]), now=NOW + 5)
    path_bytes = unquote_to_bytes(request["path"])
    # unchanged: verifies (with the decoded path the receiver sees)
    assert verify_request(KEYS, signature, args["method"], args["host"], path_bytes,
                          args["query"], args["headers"], now=args["now"],
                          nonce_store=MemoryNonceStore(clock=lambda: NOW), body=args["body"])
    reason = "bad signature"
    if mutation == "method":
        args["method"] = "OPTIONS" if args["method"] != "OPTIONS" else "GET"
    elif mutation == "host":
        args["host"] = "x" + args["host"]
    elif mutation == "path":
        args["path"] = request["path"] + "x"
    elif mutation == "query":
        args["query"] = request["query"] + "&z"
    elif mutation == "header value":
        if not args["headers"]:
            args["headers"] = {"HTTP_X_FORWARDED_FOR": "1.2.3.4"}
        else:
            key = data.draw(st.sampled_from(sorted(args["headers"])))
            args["headers"] = dict(args["headers"], **{key: args["headers"][key] + "x"})
    elif mutation == "added header":
        args["headers"] = dict(args["headers"], HTTP_X_FORWARDED_PREFIX="/added")
    elif mutation == "expired":
        args["now"] = NOW + data.draw(st.sampled_from([-1, 1])) * data.draw(
            st.integers(301, 10 ** 9))
        reason = "expired"
    elif mutation == "replayed":
        assert store.check_and_add(KEYS.key_ids[0], parse_signature(signature).nonce, NOW + 400)
        reason = "replayed"
    elif mutation == "body":
        if request["body"] is None:
            args["body"] = b"smuggled"  # no digest signed: body is not checked...
            assert verify_request(KEYS, signature, args["method"], args["host"], args["path"],
                                  args["query"], args["headers"], now=args["now"],
                                  body=args["body"])
            return
        args["body"] = request["body"] + b"!"
        reason = "body mismatch"
    with pytest.raises(SignatureError) as info:
        verify_request(KEYS, signature, args["method"], args["host"], args["path"],
                       args["query"], args["headers"], now=args["now"], nonce_store=store,
                       body=args["body"])
    assert info.value.reason == reason


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.text(max_size=200), st.builds(
    lambda a, b: "v1 " + a + "=" + b, st.sampled_from(["kid", "ts", "sig", "x"]), st.text())))
def test_parse_signature_raises_only_signature_error(value):
    try:
        parse_signature(value)
    except SignatureError as exc:
        assert exc.reason in ("missing", "malformed")


# -- secret files -------------------------------------------------------------

def write(path, text):
    path.write_text(text)
    # make sure the change is seen even on coarse-mtime file systems
    st_ = os.stat(path)
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000_000 * write.counter))
    write.counter += 1


write.counter = 1


def test_secret_file_format(tmp_path):
    path = tmp_path / "secret"
    write(path, "# rotated 2024-05\n  new-secret-0123456789  \n\n# old\nold-secret-0123456789\n")
    keys = SecretKeys(str(path))
    assert keys.key_ids == [key_id_for(b"new-secret-0123456789"),
                            key_id_for(b"old-secret-0123456789")]
    assert keys.signing_key() == (key_id_for(b"new-secret-0123456789"), b"new-secret-0123456789")
    assert keys.get(key_id_for(b"old-secret-0123456789")) == b"old-secret-0123456789"
    assert keys.get("0000000000000000") is None
    assert "new-secret" not in repr(keys)


def test_single_line_file_is_the_original_format(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"the-only-secret-012345\n")
    assert SecretKeys(path).signing_key()[1] == b"the-only-secret-012345"


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n", "   \n"])
def test_empty_secret_file_is_an_error(tmp_path, content):
    path = tmp_path / "secret"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        SecretKeys(str(path))
    assert str(path) in str(info.value)


def test_missing_secret_file_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(ValueError, match="nope"):
        SecretKeys(str(tmp_path / "nope"))


def test_unreadable_secret_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="secret-dir"):
        (tmp_path / "secret-dir").mkdir()
        SecretKeys(str(tmp_path / "secret-dir"))


def test_secret_file_reload_and_bad_reload(tmp_path, caplog):
    path = tmp_path / "secret"
    write(path, "first-secret-0123456789\n")
    keys = SecretKeys(str(path), check_interval=0)
    first = keys.signing_key()
    write(path, "second-secret-0123456789\nfirst-secret-0123456789\n")
    assert keys.signing_key()[1] == b"second-secret-0123456789"
    assert keys.get(first[0]) == b"first-secret-0123456789"
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.protocol"):
        write(path, "# half written\n")
        assert keys.signing_key()[1] == b"second-secret-0123456789"
        os.unlink(path)
        assert keys.signing_key()[1] == b"second-secret-0123456789"
        assert keys.signing_key()[1] == b"second-secret-0123456789"
    messages = [r.getMessage() for r in caplog.records
                if "read by other users" not in r.getMessage()]  # the file's mode: not this test
    assert len(messages) == 2, messages  # once per bad version, not once per request
    assert all("second-secret" not in m and "half written" not in m for m in messages)
    write(path, "third-secret-0123456789\n")
    assert keys.signing_key()[1] == b"third-secret-0123456789"


def test_reload_is_rate_limited(tmp_path):
    path = tmp_path / "secret"
    write(path, "first-secret-0123456789\n")
    keys = SecretKeys(str(path), check_interval=3600)
    write(path, "second-secret-0123456789\n")
    assert keys.signing_key()[1] == b"first-secret-0123456789"


def test_short_secret_warns(tmp_path, caplog):
    path = tmp_path / "secret"
    path.write_text("short\n")
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.protocol"):
        SecretKeys(path)
    assert "shorter than 16" in caplog.text and "short\n" not in caplog.text


def test_from_secrets():
    keys = SecretKeys.from_secrets("one-secret-0123456789")
    assert keys.signing_key()[1] == b"one-secret-0123456789"
    with pytest.raises(ValueError):
        SecretKeys.from_secrets([])
    with pytest.raises(ValueError):
        SecretKeys.from_secrets([" "])


# -- nonce stores -------------------------------------------------------------

def test_nonce_store_interface():
    with pytest.raises(NotImplementedError):
        NonceStore().check_and_add("k", "n", 0)


def test_memory_nonce_store_expiry():
    clock = [1000.0]
    store = MemoryNonceStore(clock=lambda: clock[0])
    assert store.check_and_add("k", "a", 1010)
    assert not store.check_and_add("k", "a", 1010)
    assert store.check_and_add("other-key", "a", 1010)  # per key id
    clock[0] = 1010
    assert not store.check_and_add("k", "a", 1010)  # still live at its expiry second
    clock[0] = 1011
    assert len(store) == 0
    assert store.check_and_add("k", "a", 1020)


def test_memory_nonce_store_is_bounded_and_fails_closed(caplog):
    clock = [0.0]
    store = MemoryNonceStore(max_entries=3, clock=lambda: clock[0])
    for nonce in "abc":
        assert store.check_and_add("k", nonce, 10)
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.protocol"):
        with pytest.raises(NonceStoreFull):  # not "replayed": the nonce is new
            store.check_and_add("k", "d", 10)
    assert "full" in caplog.text
    assert not store.check_and_add("k", "a", 10)  # live entries were not forgotten
    clock[0] = 11
    assert store.check_and_add("k", "d", 20)
    assert len(store) == 1


def test_memory_nonce_store_is_thread_safe():
    store = MemoryNonceStore()
    results = []
    barrier = threading.Barrier(16)

    def worker():
        barrier.wait()
        results.append(store.check_and_add("k", "same", 2 ** 40))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 15 + [True]


# -- Forwarded, nodes, lists, networks, hosts ---------------------------------

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
    text in LOOPBACK  # never raises


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


def test_protocol_version():
    assert PROTOCOL_VERSION == "1"


def test_errors_are_value_errors_with_reasons():
    assert issubclass(SignatureError, ProtocolError) and issubclass(ProtocolError, ValueError)
    assert SignatureError("expired", "by 5 s").reason == "expired"
    assert str(SignatureError("replayed")) == "X-WSGIProxy-Signature: replayed"
    with pytest.raises(ValueError):
        SignatureError("no such reason")


def test_nonces_are_unique_in_threads_and_across_fork():
    import threading
    seen = []
    lock = threading.Lock()

    def draw():
        mine = [keys.new_nonce() for _ in range(2000)]
        with lock:
            seen.extend(mine)
    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == len(seen) == 8000
    assert all(signature._NONCE_RE.match(n) for n in seen)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its nonces must differ from the parent's next ones
        os.close(read_end)
        os.write(write_end, " ".join(keys.new_nonce() for _ in range(100)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        child = set(f.read().split())
    os.waitpid(pid, 0)
    parent = {keys.new_nonce() for _ in range(100)}
    assert len(child) == 100 and not child & parent and not child & set(seen)


@pytest.mark.parametrize("headers", [
    [("X-Forwarded-For", "1.2.3.4"), ("Accept", "*/*"), ("X-WSGIProxy-Version", "1")],
    [("X-Forwarded-For", " 1.2.3.4 "), ("x-forwarded-for", "")],  # empty twin: absent
    [("X-Forwarded-Server", ""), ("X-Traversal-Path", "/a")],
    [("Accept", "x")],
    [],
])
def test_a_senders_planned_headers_equal_the_general_reduction(headers):
    for _ in range(2):  # the second time from the plan cache
        assert signature._sender_signed_headers(list(headers)) == signature._signed_headers(headers)


def test_sender_plans_are_bounded_for_long_client_chosen_names():
    before = len(signature._signed_plans)
    for i in range(50):
        names = [("X-Client-%d-%s" % (i, "n" * 3000), "v"), ("X-Forwarded-For", "1.2.3.4")]
        assert signature._sender_signed_headers(names) == [("x-forwarded-for", "1.2.3.4")]
    assert len(signature._signed_plans) == before


def test_a_secret_file_others_can_read_is_warned_about(tmp_path, caplog):
    path = tmp_path / "secret.txt"
    path.write_text("a-long-enough-secret-value\n")
    os.chmod(path, 0o600)
    with caplog.at_level("WARNING", logger="wsgiproxy"):
        protocol.SecretKeys(str(path))
    assert "can be read by other users" not in caplog.text
    os.chmod(path, 0o644)
    with caplog.at_level("WARNING", logger="wsgiproxy"):
        protocol.SecretKeys(str(path))
    assert "can be read by other users (mode 644)" in caplog.text
