"""protocol/signature.py: covered headers, the canonical request, sign, parse and verify.

Sans-IO: the clock and the nonce are arguments, so nothing here is patched.
"""

import base64
import hashlib
import os
from urllib.parse import quote, unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgiproxy.errors import ProtocolError, SignatureError
from wsgiproxy.keys import MemoryNonceStore, SecretKeys, key_id_for
from wsgiproxy.protocol import signature as signing
from wsgiproxy.protocol.headers import SIGNATURE_HEADER
from wsgiproxy.protocol.signature import canonical_request, is_signed_header, parse_signature

NOW = 1700000000
NONCE = "0123456789abcdef0123456789abcdef"
KEYS = SecretKeys.from_secrets(["first-secret-0123456789", "second-secret-0123456789"])


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
    return signing.sign(KEYS, args["method"], args["host"], args["path"], args["query"],
                        args["headers"], body=args.get("body"), now=NOW, nonce=NONCE)


def verify(signature, now=NOW + 10, store=None, **changes):
    args = dict(BASE, **changes)
    headers = args.get("received", received(args["headers"]))
    return signing.verify(KEYS, signature, args["method"], args["host"], args["path"],
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
    signature = signing.sign(other, "GET", "h", "/", "", [], now=NOW, nonce=NONCE)
    with pytest.raises(SignatureError) as info:
        signing.verify(KEYS, signature, "GET", "h", "/", "", [], now=NOW)
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
    signature = signing.sign(old, "GET", "h", "/", "", [], now=NOW, nonce=NONCE)
    assert signing.verify(KEYS, signature, "GET", "h", "/", "", [], now=NOW) == KEYS.key_ids[1]


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


@pytest.mark.parametrize("nonce", ["XYZ", NONCE.upper(), NONCE + "0", NONCE[:-1], None, 5])
def test_check_nonce(nonce):
    with pytest.raises(ValueError):
        signing.check_nonce(nonce)
    assert signing.check_nonce(NONCE) == NONCE


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
x-wsgiproxy-request-id:8c1f0e5a27d94b36000000000000002a
x-wsgiproxy-str-0:REMOTE_USER bob
x-wsgiproxy-version:1"""
DOC_HEADERS = [("X-Forwarded-For", "192.0.2.7"), ("X-Forwarded-Server", "www.example.com"),
               ("X-Forwarded-Scheme", "https"), ("X-Forwarded-Script-Name", "/shop"),
               ("X-WSGIProxy-Version", "1"),
               ("X-WSGIProxy-Request-ID", "8c1f0e5a27d94b36000000000000002a"),
               ("X-WSGIProxy-Str-0", "REMOTE_USER bob"), ("User-Agent", "curl/8.5")]


def test_documented_example():
    canonical = canonical_request("GET", "backend.internal:8080", "/app/caf%C3%A9", "page=2",
                                  NOW, NONCE, "-", DOC_HEADERS)
    assert canonical.decode("latin-1") == DOC_CANONICAL
    keys = SecretKeys.from_secrets([DOC_SECRET])
    signature = signing.sign(keys, "GET", "backend.internal:8080", "/app/caf%C3%A9", "page=2",
                             DOC_HEADERS, now=NOW, nonce=NONCE)
    kid = key_id_for(DOC_SECRET.encode())
    assert kid == hashlib.sha256(b"wsgiproxy-key-id:" + DOC_SECRET.encode()).hexdigest()[:16]
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "protocol.rst")) as f:
        page = f.read()
    # The page shows the key id and signature computed here.
    assert kid in page
    assert signature.split("sig=")[1] in page
    assert DOC_CANONICAL in "\n".join(line.removeprefix("    ")
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
    signature = signing.sign(KEYS, request["method"], request["host"], request["path"],
                             request["query"], request["headers"], body=request["body"], now=NOW,
                             nonce=NONCE)
    store = MemoryNonceStore(clock=lambda: NOW)
    args = dict(request, headers=received(request["headers"]), now=NOW + 5)
    path_bytes = unquote_to_bytes(request["path"])
    # unchanged: verifies (with the decoded path the receiver sees)
    assert signing.verify(KEYS, signature, args["method"], args["host"], path_bytes,
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
            assert signing.verify(KEYS, signature, args["method"], args["host"], args["path"],
                                  args["query"], args["headers"], now=args["now"],
                                  body=args["body"])
            return
        args["body"] = request["body"] + b"!"
        reason = "body mismatch"
    with pytest.raises(SignatureError) as info:
        signing.verify(KEYS, signature, args["method"], args["host"], args["path"],
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


def test_errors_are_value_errors_with_reasons():
    assert issubclass(SignatureError, ProtocolError) and issubclass(ProtocolError, ValueError)
    assert SignatureError("expired", "by 5 s").reason == "expired"
    assert str(SignatureError("replayed")) == "X-WSGIProxy-Signature: replayed"
    with pytest.raises(ValueError):
        SignatureError("no such reason")


SENDER_LISTS = [
    [("X-Forwarded-For", "1.2.3.4"), ("Accept", "*/*"), ("X-WSGIProxy-Version", "1")],
    [("X-Forwarded-For", " 1.2.3.4 "), ("x-forwarded-for", "")],  # empty twin: absent
    [("X-Forwarded-Server", ""), ("X-Traversal-Path", "/a")],
    [("X-Forwarded-Server", " \t"), ("X-Traversal-Path", "/a")],  # blank once stripped
    [("X-Forwarded-For", "a"), ("X-Forwarded-For", "b")],  # twice: refused
    [("X-Forwarded-For", "a"), ("x-forwarded-for", " ")],  # a blank twin: absent
    [("X-Forwarded-For", 5)],  # not a str: refused
    [("X-Forwarded-For", None)], [("X-Forwarded-For", b"")],  # false, but not str
    [("X-Forwarded-Fo o", "")],  # not a token, even empty: refused
    [(b"X-Forwarded-For", "x"), (None, ""), ("X-Forwarded-Scheme", "http")],  # not str names
    [("X-Forwarded-Host", "100%s"), ("X-Forwarded-%", "%d")],  # % in names and values
    [("Accept", "x")],
    [],
]


def _outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # the same exception, type and message, from both paths
        return type(exc), str(exc)


@pytest.mark.parametrize("headers", SENDER_LISTS)
def test_a_senders_planned_headers_equal_the_general_reduction(headers):
    for _ in range(2):  # the second time from the plan cache
        assert (_outcome(signing._sender_signed_headers, list(headers))
                == _outcome(signing._signed_headers, headers))


@pytest.mark.parametrize("headers", SENDER_LISTS)
def test_signing_a_list_equals_signing_any_other_iterable(headers):
    """sign() plans a list once per shape; a tuple takes the general path."""
    keys = SecretKeys.from_secrets([b"k" * 32])
    for _ in range(2):
        assert (_outcome(signing.sign, keys, "GET", "h", "/", "", list(headers), now=1,
                         nonce="0" * 32)
                == _outcome(signing.sign, keys, "GET", "h", "/", "", tuple(headers), now=1,
                            nonce="0" * 32))


def test_sender_plans_are_bounded_for_long_client_chosen_names():
    before = len(signing._pair_forms)
    for i in range(50):
        names = [("X-Client-%d-%s" % (i, "n" * 3000), "v"), ("X-Forwarded-For", "1.2.3.4")]
        assert signing._sender_signed_headers(names) == [("x-forwarded-for", "1.2.3.4")]
    assert len(signing._pair_forms) == before


# -- keys and nonce stores are duck-typed ---------------------------------------

class PlainKeys:
    """Not a SecretKeys: only the two methods signing and verifying call."""

    key_id = "00112233445566ff"

    def __init__(self, secret):
        self.secret = secret

    def signing_key(self):
        return self.key_id, self.secret

    def get(self, key_id):
        return self.secret if key_id == self.key_id else None


class RecordingStore:
    """Not a NonceStore: only check_and_add."""

    def __init__(self):
        self.calls = []

    def check_and_add(self, key_id, nonce, expires_at):
        self.calls.append((key_id, nonce, expires_at))
        return len(self.calls) == 1


def test_sign_and_verify_take_any_keys_and_nonce_store():
    keys = PlainKeys(b"plain-secret-0123456789")
    value = signing.sign(keys, "GET", "h", "/", "", BASE["headers"], now=NOW, nonce=NONCE)
    assert parse_signature(value).key_id == PlainKeys.key_id
    store = RecordingStore()
    args = ("GET", "h", "/", "", received(BASE["headers"]))
    assert signing.verify(keys, value, *args, now=NOW, window=30,
                          nonce_store=store) == PlainKeys.key_id
    assert store.calls == [(PlainKeys.key_id, NONCE, NOW + 30 + 1)]
    with pytest.raises(SignatureError) as info:
        signing.verify(keys, value, *args, now=NOW, nonce_store=store)
    assert info.value.reason == "replayed"
    with pytest.raises(SignatureError) as info:
        signing.verify(PlainKeys(b"another-secret-0123456"), value, *args, now=NOW)
    assert info.value.reason == "bad signature"


def test_sign_is_a_function_of_its_arguments():
    # No clock, no nonce source inside: the same arguments give the same value.
    assert sign() == sign()
    assert sign(body=b"x") == sign(body=b"x") != sign()
    later = signing.sign(KEYS, "GET", "h", "/", "", [], now=NOW + 1, nonce=NONCE)
    assert parse_signature(later).timestamp == NOW + 1


@pytest.mark.parametrize("key_length", [0, 1, 32, 63, 64, 65, 200])
def test_keyed_hmac_is_hmac_sha256(key_length):
    """The two precomputed SHA-256 states give the standard library's HMAC, for keys
    shorter than, as long as and longer than SHA-256's block."""
    import hmac
    key = os.urandom(key_length)
    mac = signing.keyed_hmac(key)
    for message in (b"", b"x", os.urandom(300)):
        assert mac(message) == hmac.new(key, message, hashlib.sha256).digest()


def test_planned_parts_are_not_written_by_a_request():
    """The planned parts are shared by every request (and thread): a request joins its
    values in a copy, so no value of one request is left in them for another."""
    from wsgiproxy.protocol import rfc9421
    keys = SecretKeys.from_secrets([b"k" * 32])
    pairs = [("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Script-Name", ""),
             ("X-WSGIProxy-Version", "1")]
    signing.sign(keys, "GET", "h", "/", "", pairs, now=1, nonce="0" * 32)
    rfc9421.sign(rfc9421.HMACKeys(keys), "GET", "h", "/", "", pairs, now=1, nonce="0" * 32)
    for forms in (signing._v1_forms, rfc9421._forms):
        planned = [form[1] for form in forms.values() if form is not None]
        assert planned and all(parts[1::2] == [None] * (len(parts) // 2) for parts in planned)
