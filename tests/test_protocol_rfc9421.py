"""protocol/rfc9421.py and protocol/structured.py: RFC 9421 signatures, sans-IO.

First the RFC's own test vectors, reproduced with this code: Appendix B.2.5
(hmac-sha256) and B.2.6 (ed25519), over the test-request message of
Appendix B.2 with the keys of B.1.4 and B.1.5.  Then RFC 9651 structured
fields, and WSGIProxy's own signature: what it covers, what refuses it and
in which order, and bound responses.
"""

import base64
import hashlib
import hmac
import json
import time

import pytest

from wsgiproxy.errors import MessageSignatureError, ProtocolError
from wsgiproxy.keys import MemoryNonceStore, PrivateKey, PublicKeys, SecretKeys, key_id_for
from wsgiproxy.protocol import rfc9421, sign_request_rfc9421, verify_request_rfc9421
from wsgiproxy.protocol.structured import (
    Date,
    DisplayString,
    StructuredFieldError,
    Token,
    parse_dictionary,
    serialize_dictionary,
    serialize_item,
    serialize_string,
)

# -- RFC 9421 Appendix B: the test keys and the test-request message ----------------

# B.1.4 test-key-ed25519
RFC_ED25519_PRIVATE = (b"-----BEGIN PRIVATE KEY-----\n"
                       b"MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n"
                       b"-----END PRIVATE KEY-----\n")
RFC_ED25519_PUBLIC = (b"-----BEGIN PUBLIC KEY-----\n"
                      b"MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n"
                      b"-----END PUBLIC KEY-----\n")
RFC_ED25519_JWK_X = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs"
# B.1.5 test-shared-secret
RFC_SHARED_SECRET = base64.b64decode(
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==")

# B.2: POST /foo?param=Value&Pet=dog to example.com
RFC_REQUEST = rfc9421.Message("POST", "example.com", "/foo", "param=Value&Pet=dog", fields={
    "host": "example.com",
    "date": "Tue, 20 Apr 2021 02:07:55 GMT",
    "content-type": "application/json",
    "content-digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7"
                      "BNNyealdVLvRwEmTHWXvJwew==:",
    "content-length": "18",
})
RFC_BODY = b'{"hello": "world"}'

B25_INPUT = 'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
B25_SIGNATURE = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"
B25_BASE = (b'"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
            b'"@authority": example.com\n'
            b'"content-type": application/json\n'
            b'"@signature-params": ("date" "@authority" "content-type");created=1618884473'
            b';keyid="test-shared-secret"')

B26_INPUT = ('sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
             ';created=1618884473;keyid="test-key-ed25519"')
B26_SIGNATURE = ("sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6v"
                 "uQv5lIp5WPpBKRCw==:")
B26_BASE = (b'"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
            b'"@method": POST\n'
            b'"@path": /foo\n'
            b'"@authority": example.com\n'
            b'"content-type": application/json\n'
            b'"content-length": 18\n'
            b'"@signature-params": ("date" "@method" "@path" "@authority" "content-type" '
            b'"content-length");created=1618884473;keyid="test-key-ed25519"')


class RawSecret:
    """The RFC's shared secret as a key source: 64 random bytes, which SecretKeys (one secret
    per line of text, stripped) cannot hold; its key id is the RFC's."""

    def signing_key(self):
        return "test-shared-secret", RFC_SHARED_SECRET

    def get(self, key_id):
        return RFC_SHARED_SECRET if key_id == "test-shared-secret" else None


def rfc_signature(signature_input, signature, label):
    parsed = rfc9421.parse_signature(signature_input, signature, label=label, tag=None)
    assert parsed is not None
    return parsed


def test_b25_hmac_sha256():
    parsed = rfc_signature(B25_INPUT, B25_SIGNATURE, "sig-b25")
    assert parsed.covered == (("date", ()), ("@authority", ()), ("content-type", ()))
    assert parsed.params == {"created": 1618884473, "keyid": "test-shared-secret"}
    base = rfc9421.signature_base(RFC_REQUEST, parsed.covered, parsed.params)
    assert base == B25_BASE
    alg, key_id, sign = rfc9421.HMACKeys(RawSecret()).signer()
    assert (alg, key_id) == ("hmac-sha256", "test-shared-secret")
    assert sign(base) == parsed.signature  # HMAC is deterministic: the RFC's very bytes
    assert "sig-b25=" + rfc9421.signature_params(parsed.covered, parsed.params) == B25_INPUT
    assert "sig-b25=" + parsed.binding == B25_SIGNATURE
    _, verify = rfc9421.HMACKeys(RawSecret()).verifier("test-shared-secret")
    assert verify(base, parsed.signature)
    assert not verify(base.replace(b"example.com", b"example.org"), parsed.signature)


def test_b26_ed25519():
    parsed = rfc_signature(B26_INPUT, B26_SIGNATURE, "sig-b26")
    base = rfc9421.signature_base(RFC_REQUEST, parsed.covered, parsed.params)
    assert base == B26_BASE
    private = PrivateKey.from_pem(RFC_ED25519_PRIVATE)
    alg, key_id, sign = private.signer()
    assert alg == "ed25519"
    assert sign(base) == parsed.signature  # Ed25519 is deterministic too
    public = PublicKeys.from_pem(RFC_ED25519_PUBLIC)
    assert public.key_ids == [key_id]
    _, verify = public.verifier(key_id)
    assert verify(base, parsed.signature)
    assert not verify(base.replace(b"POST", b"PUT"), parsed.signature)
    assert public.verifier("test-key-ed25519") is None  # keys are found by their thumbprint


def test_ed25519_key_id_is_the_rfc7638_thumbprint_of_the_jwk():
    """Recomputed from the JWK of B.1.4 with the standard library alone."""
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": RFC_ED25519_JWK_X},
                           separators=(",", ":"), sort_keys=True)
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest())
    expected = thumbprint.rstrip(b"=").decode()
    assert PrivateKey.from_pem(RFC_ED25519_PRIVATE).key_id == expected
    assert PublicKeys.from_pem(RFC_ED25519_PUBLIC).key_ids == [expected]
    assert expected == "poqkLGiymh_W0uP6PZFw-dvez3QJT5SolqXBCW38r0U"


def test_the_rfc_content_digest_is_checked_by_ours():
    rfc9421._check_digest(RFC_REQUEST.fields["content-digest"], RFC_BODY)
    with pytest.raises(MessageSignatureError, match="body mismatch"):
        rfc9421._check_digest(RFC_REQUEST.fields["content-digest"], RFC_BODY + b" ")
    assert rfc9421.content_digest(RFC_BODY) == (
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:")


# -- RFC 9651 structured fields ---------------------------------------------------------

def test_every_type_is_parsed():
    members = parse_dictionary(
        'a=1, b=?0, c="q\\"u\\\\ote", d=:AQID:, e=tok/en*:x, f=(1 "two");p, g;x=1.5,'
        '\th=@1659578233, i=%"caf%c3%a9", j=-42, k=(), l')
    assert members["a"] == (1, {})
    assert members["b"] == (False, {})
    assert members["c"] == ('q"u\\ote', {})
    assert members["d"] == (b"\x01\x02\x03", {})
    assert members["e"] == (Token("tok/en*:x"), {}) and type(members["e"][0]) is Token
    assert members["f"] == ([(1, {}), ("two", {})], {"p": True})
    assert members["g"] == (True, {"x": 1.5})
    assert members["h"][0] == 1659578233 and type(members["h"][0]) is Date
    assert members["i"][0] == "café" and type(members["i"][0]) is DisplayString
    assert members["j"] == (-42, {})
    assert members["k"] == ([], {})
    assert members["l"] == (True, {})
    assert serialize_dictionary(members) == (
        'a=1, b=?0, c="q\\"u\\\\ote", d=:AQID:, e=tok/en*:x, f=(1 "two");p, g;x=1.5, '
        'h=@1659578233, i=%"caf%c3%a9", j=-42, k=(), l')


def test_parsing_details():
    assert parse_dictionary("") == {}
    assert parse_dictionary("  a=1  ") == {"a": (1, {})}
    # a key given twice: the last value, in the last place
    assert list(parse_dictionary("a=1, b=2, a=3").items()) == [("b", (2, {})), ("a", (3, {}))]
    assert parse_dictionary("a=1;p=1;p=2") == {"a": (1, {"p": 2})}
    assert parse_dictionary("a=:AQI:")["a"][0] == b"\x01\x02"  # missing padding tolerated
    assert parse_dictionary("a=( 1  2 )")["a"][0] == [(1, {}), (2, {})]
    assert parse_dictionary("a=999999999999999")["a"][0] == 999999999999999
    assert parse_dictionary("a=123456789012.123")["a"][0] == 123456789012.123


@pytest.mark.parametrize("text", [
    "a=1,", "a=1, ", "a=", "A=1", "1a=1", "a=1 b=2", "a=1;", "a=(1 2", "a=(1\"x\")",
    'a="open', 'a="bad\\escape"', 'a="tab\there"', "a=\"caf\xe9\"", "a=1234567890123456",
    "a=1.2345", "a=1.", "a=1234567890123.5", "a=?2", "a=:not base64!:", "a=:AQID",
    "a=@1.5", 'a=%"CAF%C3%A9"', 'a=%"%ff"', "a=-", "a=#", "a=1;P=2",
])
def test_malformed_fields_are_refused(text):
    with pytest.raises(StructuredFieldError):
        parse_dictionary(text)


def test_serialising():
    assert serialize_string('a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert serialize_item(b"\x00\xff", {"k": Token("v"), "f": True}) == ":AP8=:;k=v;f"
    assert serialize_item(2.0) == "2.0" and serialize_item(0.25) == "0.25"
    assert serialize_item(-1.5) == "-1.5"
    for bad in ("caf\xe9", "new\nline", 10 ** 15, Token("1a"), object()):
        with pytest.raises(StructuredFieldError):
            serialize_item(bad)
    with pytest.raises(StructuredFieldError):
        serialize_item(1, {"Bad": True})


# -- WSGIProxy's signature: what it covers --------------------------------------------------

SECRET = "rfc9421-test-secret-0123456789"
KEYS = SecretKeys.from_secrets([SECRET])
HMAC_KEYS = rfc9421.HMACKeys(KEYS)
ED_PRIVATE = PrivateKey.from_pem(RFC_ED25519_PRIVATE)
ED_PUBLIC = PublicKeys.from_pem(RFC_ED25519_PUBLIC)
BOTH = rfc9421.KeyChain(HMAC_KEYS, ED_PUBLIC)
NONCE = "0123456789abcdef0123456789abcdef"
NOW = 1700000000
IDENTITY = [("User-Agent", "curl/8.5"), ("Host", "backend:8080"),
            ("X-Forwarded-For", "192.0.2.7"), ("X-Forwarded-Server", "www.example.com"),
            ("X-Forwarded-Scheme", "https"), ("X-Forwarded-Script-Name", ""),
            ("X-WSGIProxy-Version", "1"), ("X-WSGIProxy-Str-0", "REMOTE_USER bob")]


def signed(keys=HMAC_KEYS, method="GET", path="/app/caf%C3%A9", query="page=2",
           headers=IDENTITY, body=None, now=NOW, nonce=NONCE):
    return list(headers) + rfc9421.sign(keys, method, "backend:8080", path, query, headers,
                                        now=now, nonce=nonce, body=body)


def value(headers, name):
    values = [v for k, v in headers if k.lower() == name.lower()]
    assert len(values) == 1, (name, headers)
    return values[0]


def verify(headers, keys=BOTH, method="GET", authority="backend:8080", path="/app/caf%C3%A9",
           query="page=2", now=NOW, **kwargs):
    parsed = rfc9421.parse_signature(value(headers, "Signature-Input"),
                                     value(headers, "Signature"))
    return rfc9421.verify(keys, parsed, method, authority, path, query, headers, now=now,
                          **kwargs)


def test_the_request_signature_covers_the_identity_and_key_headers():
    headers = signed()
    assert value(headers, "Signature-Input") == (
        'wsgiproxy=("@method" "@authority" "@path" "@query" "x-forwarded-for" '
        '"x-forwarded-scheme" "x-forwarded-server" "x-wsgiproxy-str-0" "x-wsgiproxy-version")'
        ';created=1700000000;expires=1700000300;nonce="0123456789abcdef0123456789abcdef"'
        ';keyid="%s";alg="hmac-sha256";tag="wsgiproxy"' % key_id_for(SECRET.encode()))
    # The base, written out, HMAC'd with the standard library: the same signature.
    base = "\n".join([
        '"@method": GET', '"@authority": backend:8080', '"@path": /app/caf%C3%A9',
        '"@query": ?page=2', '"x-forwarded-for": 192.0.2.7', '"x-forwarded-scheme": https',
        '"x-forwarded-server": www.example.com', '"x-wsgiproxy-str-0": REMOTE_USER bob',
        '"x-wsgiproxy-version": 1',
        '"@signature-params": ' + value(headers, "Signature-Input")[len("wsgiproxy="):]])
    mac = hmac.new(SECRET.encode(), base.encode(), hashlib.sha256).digest()
    assert value(headers, "Signature") == "wsgiproxy=:%s:" % base64.b64encode(mac).decode()
    assert verify(headers) == key_id_for(SECRET.encode())


def test_a_covered_body_is_a_content_digest():
    headers = signed(method="POST", body=b'{"qty":1}')
    digest = value(headers, "Content-Digest")
    assert digest == rfc9421.content_digest(b'{"qty":1}')
    assert digest.startswith("sha-256=:")
    assert value(headers, "Signature-Input").startswith(
        'wsgiproxy=("@method" "@authority" "@path" "@query" "x-forwarded-for" '
        '"x-forwarded-scheme" "x-forwarded-server" "x-wsgiproxy-str-0" "x-wsgiproxy-version" '
        '"content-digest");')
    assert verify(headers, method="POST", body=b'{"qty":1}')
    with pytest.raises(MessageSignatureError, match="body mismatch"):
        verify(headers, method="POST", body=b'{"qty":9}')


@pytest.mark.parametrize("body", [None, b"", b'{"qty":1}'])
@pytest.mark.parametrize("headers", [
    [("X-Forwarded-For", " 192.0.2.7"), ("Accept", "*/*"), ("X-WSGIProxy-Version", "1")],
    [("X-Forwarded-Script-Name", ""), ("X-Forwarded-For", "a"), ("X-Traversal-Path", "/a")],
    [("X-Forwarded-Server", " \t"), ("X-Forwarded-For", "a")],  # blank once stripped
    [("X-Forwarded-For", "a"), ("X-Forwarded-For", "b")],  # twice: refused
    [("X-Forwarded-For", 5)], [("X-Forwarded-For", None)],  # not a str: refused
    [("X-Forwarded-%", "100%d")],  # % in a name and a value
    [("Accept", "x")], [],
])
def test_signing_a_list_equals_signing_any_other_iterable(headers, body):
    """sign() plans a list once per shape; a tuple takes the general path."""
    def outcome(pairs):
        try:
            return rfc9421.sign(rfc9421.HMACKeys(SecretKeys.from_secrets([SECRET])), "GET",
                                "backend", "/", "", pairs, now=1700000000, body=body,
                                nonce="0123456789abcdef")
        except Exception as exc:  # the same exception, type and message, from both paths
            return type(exc), str(exc)
    for _ in range(2):  # the second time from the cache
        assert outcome(list(headers)) == outcome(tuple(headers))


def test_ed25519_signature_and_its_key_id():
    headers = signed(keys=ED_PRIVATE)
    assert ';keyid="%s";alg="ed25519";' % ED_PRIVATE.key_id in value(headers, "Signature-Input")
    assert verify(headers) == ED_PRIVATE.key_id
    with pytest.raises(MessageSignatureError, match="unknown key"):
        verify(headers, keys=HMAC_KEYS)


def test_authority():
    assert rfc9421.authority("Backend.Example:80", "http") == "backend.example"
    assert rfc9421.authority("backend:443", "https") == "backend"
    assert rfc9421.authority("backend:443", "http") == "backend:443"
    assert rfc9421.authority("[2001:DB8::1]:80", "http") == "[2001:db8::1]"
    assert rfc9421.authority("[2001:db8::80]", "http") == "[2001:db8::80]"


def test_values_outside_ascii_or_with_line_breaks_cannot_be_signed():
    for headers in ([("X-Forwarded-Server", "caf\xe9.example")],
                    [("X-Forwarded-Server", "a\nb")]):
        with pytest.raises(ProtocolError):
            signed(headers=headers)
    with pytest.raises(ProtocolError):
        rfc9421.sign(HMAC_KEYS, "GET", "h\r\nx", "/", "", [], now=NOW, nonce=NONCE)


# -- what refuses it --------------------------------------------------------------------

def tampered(change):
    headers = signed(method="POST", body=b"payload")
    kwargs = {"method": "POST", "body": b"payload"}
    if change in ("method", "authority", "path", "query"):
        kwargs[change] = {"method": "DELETE", "authority": "other:8080", "path": "/admin",
                          "query": "page=3"}[change]
    elif change == "signed header":
        headers = [(k, "10.0.0.1" if k == "X-Forwarded-For" else v) for k, v in headers]
    elif change == "content-digest":
        headers = [(k, rfc9421.content_digest(b"other") if k == "Content-Digest" else v)
                   for k, v in headers]
        kwargs["body"] = b"other"
    elif change == "signature":
        headers = [(k, v.replace(v[11:15], "AAAA") if k == "Signature" else v)
                   for k, v in headers]
    elif change == "created":
        headers = [(k, v.replace("created=17", "created=16") if k == "Signature-Input" else v)
                   for k, v in headers]
    return headers, kwargs


@pytest.mark.parametrize("change", ["method", "authority", "path", "query", "signed header",
                                    "content-digest", "signature", "created"])
def test_each_covered_part_is_checked(change):
    headers, kwargs = tampered(change)
    with pytest.raises(MessageSignatureError, match="bad signature"):
        verify(headers, **kwargs)


def test_headers_that_are_not_covered():
    headers = signed() + [("Accept", "text/html")]  # not a signed header: fine
    assert verify(headers)
    with pytest.raises(MessageSignatureError, match="x-forwarded-host are not covered"):
        verify(signed() + [("X-Forwarded-Host", "evil.example")])
    with pytest.raises(MessageSignatureError, match="x-wsgiproxy-str-0 did not arrive"):
        verify([h for h in signed() if h[0] != "X-WSGIProxy-Str-0"])
    # an empty one counts as absent, on both sides
    assert verify(signed() + [("X-Forwarded-Prefix", " ")])


def resigned(input_value, keys=HMAC_KEYS, headers=IDENTITY):
    """A signature with the parameters and covered list of ``input_value`` (sans label), made
    over the real base: what another signer could send."""
    fields = {k.lower(): v for k, v in headers}
    member = parse_dictionary("x=" + input_value)["x"]
    covered = tuple((name, tuple(params.items())) for name, params in member[0])
    message = rfc9421.Message("GET", "backend:8080", "/app/caf%C3%A9", "page=2", fields=fields)
    try:
        signature = keys.signer()[2](rfc9421.signature_base(message, covered, member[1]))
    except ValueError:  # a covered list no base can be made of: any signature will do
        signature = bytes(32)
    return list(headers) + [("Signature-Input", "wsgiproxy=" + input_value),
                            ("Signature", "wsgiproxy=:%s:" % base64.b64encode(signature).decode())]


ALL = ('("@method" "@authority" "@path" "@query" "x-forwarded-for" "x-forwarded-scheme" '
       '"x-forwarded-server" "x-wsgiproxy-str-0" "x-wsgiproxy-version")')
KID = key_id_for(SECRET.encode())


@pytest.mark.parametrize("params, reason", [
    (';created=1700000000;nonce="%s";keyid="%s";tag="wsgiproxy"' % (NONCE, KID), None),
    (';created=1700000000;expires=1700000300;nonce="%s";keyid="%s";tag="wsgiproxy";ext=1'
     % (NONCE, KID), None),
    (';nonce="%s";keyid="%s";tag="wsgiproxy"' % (NONCE, KID), "malformed"),
    (';created=1700000000;keyid="%s";tag="wsgiproxy"' % KID, "malformed"),
    (';created=1700000000;nonce="%s";tag="wsgiproxy"' % NONCE, "malformed"),
    (';created="1700000000";nonce="%s";keyid="%s";tag="wsgiproxy"' % (NONCE, KID), "malformed"),
    (';created=1700000000;nonce="short";keyid="%s";tag="wsgiproxy"' % KID, "malformed"),
    (';created=1700000000;expires=1699999999;nonce="%s";keyid="%s";tag="wsgiproxy"'
     % (NONCE, KID), "malformed"),
    (';created=1699999000;nonce="%s";keyid="%s";tag="wsgiproxy"' % (NONCE, KID), "expired"),
    (';created=1700001000;nonce="%s";keyid="%s";tag="wsgiproxy"' % (NONCE, KID), "expired"),
    (';created=1699999950;expires=1699999990;nonce="%s";keyid="%s";tag="wsgiproxy"'
     % (NONCE, KID), "expired"),
    (';created=1700000000;nonce="%s";keyid="0000000000000000";tag="wsgiproxy"' % NONCE,
     "unknown key"),
    (';created=1700000000;nonce="%s";keyid="%s";alg="ed25519";tag="wsgiproxy"' % (NONCE, KID),
     "bad signature"),
])
def test_parameters(params, reason):
    headers = resigned(ALL + params)
    if reason is None:
        assert verify(headers) == KID
    else:
        with pytest.raises(MessageSignatureError, match=reason):
            verify(headers)


@pytest.mark.parametrize("covered, reason", [
    (('("@method" "@path" "@query" "x-forwarded-for" "x-forwarded-scheme" "x-forwarded-server" '
      '"x-wsgiproxy-str-0" "x-wsgiproxy-version")'), "@authority must be covered"),
    (('("@method" "@authority" "@path" "@query" "x-forwarded-for" "x-forwarded-scheme" '
      '"x-forwarded-server" "x-wsgiproxy-version")'), "x-wsgiproxy-str-0 are not covered"),
    ('("@method" "@authority" "@path" "@query" "@query" "x-forwarded-for")', "twice"),
    ('("@method" "@authority" "@path" "@query" "X-Forwarded-For")', "lower-case"),
    ('("@method" "@authority" "@path" "@query" x-forwarded-for)', "lower-case"),
])
def test_covered_set(covered, reason):
    params = ';created=1700000000;nonce="%s";keyid="%s";tag="wsgiproxy"' % (NONCE, KID)
    with pytest.raises((MessageSignatureError, ValueError), match=reason):
        verify(resigned(covered + params))


def test_another_signer_may_cover_more():
    headers = IDENTITY + [("Date", "Tue, 20 Apr 2021 02:07:55 GMT")]
    covered = ALL[:-1] + ' "date" "user-agent")'
    params = ';created=1700000000;nonce="%s";keyid="%s";tag="wsgiproxy"' % (NONCE, KID)
    signed_headers = resigned(covered + params, headers=headers)
    assert verify(signed_headers) == KID
    changed = [(k, "Wed" + v[3:] if k == "Date" else v) for k, v in signed_headers]
    with pytest.raises(MessageSignatureError, match="bad signature"):
        verify(changed)


def test_other_labels_and_tags_are_not_ours():
    headers = signed()
    si, sig = value(headers, "Signature-Input"), value(headers, "Signature")
    assert rfc9421.parse_signature(si.replace("wsgiproxy=", "other="),
                                   sig.replace("wsgiproxy=", "other=")) is None
    assert rfc9421.parse_signature(si.replace('tag="wsgiproxy"', 'tag="web-bot-auth"'),
                                   sig) is None
    assert rfc9421.parse_signature(si.replace(';tag="wsgiproxy"', ""), sig) is None
    # ours among others'
    both = rfc9421.parse_signature('sig1=("@method");created=1, ' + si, "sig1=:AAAA:, " + sig)
    assert both is not None and both.label == "wsgiproxy"
    with pytest.raises(MessageSignatureError, match="missing"):
        rfc9421.verify(BOTH, None, "GET", "backend:8080", "/", "", [], now=NOW)


@pytest.mark.parametrize("si, sig, detail", [
    ("wsgiproxy=(", "wsgiproxy=:AAAA:", "Signature-Input"),
    (None, "wsgiproxy=:AAAA:", "Signature-Input has none"),
    ('wsgiproxy=("@method");tag="wsgiproxy"', None, "no wsgiproxy member"),
    ('wsgiproxy=("@method");tag="wsgiproxy"', "wsgiproxy=1", "not a byte sequence"),
    ('wsgiproxy=("@method");tag="wsgiproxy"', "wsgiproxy=:AAAA", "Signature"),
    ('wsgiproxy=1;tag="wsgiproxy"', "wsgiproxy=:AAAA:", "not an inner list"),
])
def test_malformed_signatures(si, sig, detail):
    with pytest.raises(MessageSignatureError, match="malformed") as info:
        rfc9421.parse_signature(si, sig)
    assert detail in str(info.value)
    assert str(info.value).startswith("Signature: malformed")


def test_the_body_is_read_only_after_the_signature_and_the_window():
    calls = []

    def reader():
        calls.append(1)
        return b"payload"

    headers = signed(method="POST", body=b"payload")
    for bad in (dict(method="PUT"), dict(now=NOW + 3600)):
        with pytest.raises(MessageSignatureError):
            verify(headers, **{"method": "POST", "body": reader, **bad})
    assert calls == []
    assert verify(headers, method="POST", body=reader)
    assert calls == [1]


def test_nonces():
    store = MemoryNonceStore(clock=lambda: NOW)
    headers = signed(method="POST", body=b"payload")
    with pytest.raises(MessageSignatureError, match="body mismatch"):
        verify(headers, method="POST", body=b"altered", nonce_store=store)
    assert len(store) == 0  # a refused request does not use up the nonce
    assert verify(headers, method="POST", body=b"payload", nonce_store=store)
    with pytest.raises(MessageSignatureError, match="replayed"):
        verify(headers, method="POST", body=b"payload", nonce_store=store)


def test_content_digests_of_other_signers():
    sha512 = "sha-512=:%s:" % base64.b64encode(hashlib.sha512(b"payload").digest()).decode()
    for digest, ok in ((sha512, True), ("md5=:AAAA:, " + sha512, True), ("md5=:AAAA:", False),
                       ("sha-256=1", False), ("sha-256=(", False)):
        headers = IDENTITY + [("Content-Digest", digest)]
        covered = ALL[:-1] + ' "content-digest")'
        params = ';created=1700000000;nonce="%s";keyid="%s";tag="wsgiproxy"' % (NONCE, KID)
        if ok:
            assert verify(resigned(covered + params, headers=headers), body=b"payload")
        else:
            with pytest.raises(MessageSignatureError, match="body mismatch"):
                verify(resigned(covered + params, headers=headers), body=b"payload")


def test_the_edge_fills_in_clock_and_nonce():
    added = sign_request_rfc9421(KEYS, "GET", "backend:80", "/", "", IDENTITY)
    si = dict(added)["Signature-Input"]
    assert abs(int(si.split("created=")[1].split(";")[0]) - time.time()) < 60
    assert verify_request_rfc9421(KEYS, "GET", "backend", "/", "", IDENTITY + added) == KID
    assert verify_request_rfc9421(SECRET, "GET", "backend", "/", "", IDENTITY + added) == KID
    with pytest.raises(ValueError, match="nonce"):
        sign_request_rfc9421(KEYS, "GET", "backend", "/", "", IDENTITY, nonce="short")
    added = sign_request_rfc9421(ED_PRIVATE, "GET", "backend:443", "/", "", IDENTITY,
                                 scheme="https", now=NOW, nonce=NONCE)
    assert verify_request_rfc9421(ED_PUBLIC, "GET", "backend", "/", "", IDENTITY + added,
                                  scheme="https", now=NOW) == ED_PRIVATE.key_id


# -- bound responses ------------------------------------------------------------------------

def request_message(headers):
    return rfc9421.Message("GET", "backend:8080", "/app/caf%C3%A9", "page=2",
                           fields={k.lower(): v for k, v in headers})


def test_a_response_is_bound_to_its_request():
    request = signed()
    binding = value(request, "Signature")[len("wsgiproxy="):]
    response = [("Content-Type", "text/html"), ("Content-Length", "5")]
    response += rfc9421.sign_response(ED_PRIVATE, 200, response, binding, now=NOW, nonce=NONCE)
    assert value(response, "Signature-Input").startswith(
        'wsgiproxy=("@status" "content-type" "signature";req;key="wsgiproxy");created=1700000000;')
    assert rfc9421.verify_response(ED_PUBLIC, 200, response, request_message(request),
                                   now=NOW) == ED_PRIVATE.key_id
    other = signed(nonce="fedcba9876543210fedcba9876543210")
    refusals = [
        (rfc9421.Message(fields={}), "bad signature"),  # nothing to bind to
        (request_message(other), "bad signature"),  # another request's answer
    ]
    for sent, reason in refusals:
        with pytest.raises(MessageSignatureError, match=reason):
            rfc9421.verify_response(ED_PUBLIC, 200, response, sent, now=NOW)
    for status, changed, reason in (
            (500, response, "bad signature"),
            (200, [(k, "text/plain" if k == "Content-Type" else v) for k, v in response],
             "bad signature"),
            (200, [h for h in response if not h[0].startswith("Signature")], "missing"),
            (200, response, "unknown key")):
        keys = HMAC_KEYS if reason == "unknown key" else ED_PUBLIC
        with pytest.raises(MessageSignatureError, match=reason):
            rfc9421.verify_response(keys, status, changed, request_message(request), now=NOW)
    with pytest.raises(MessageSignatureError, match="expired"):
        rfc9421.verify_response(ED_PUBLIC, 200, response, request_message(request),
                                now=NOW + 301)


def test_a_response_must_cover_status_and_binding():
    request = signed()
    message = request_message(request)
    for covered in ('("@status")', '("signature";req;key="wsgiproxy")'):
        input_value = covered + ';created=%d;nonce="%s";keyid="%s";tag="wsgiproxy"' % (
            NOW, NONCE, KID)
        member = parse_dictionary("x=" + input_value)["x"]
        parts = tuple((n, tuple(p.items())) for n, p in member[0])
        base = rfc9421.signature_base(rfc9421.Message(status=200, request=message), parts,
                                      member[1])
        sig = base64.b64encode(HMAC_KEYS.signer()[2](base)).decode()
        response = [("Signature-Input", "wsgiproxy=" + input_value),
                    ("Signature", "wsgiproxy=:%s:" % sig)]
        with pytest.raises(MessageSignatureError, match="must be covered"):
            rfc9421.verify_response(HMAC_KEYS, 200, response, message, now=NOW)


def test_a_response_without_content_type_and_with_req_components():
    request = signed()
    binding = value(request, "Signature")[len("wsgiproxy="):]
    response = rfc9421.sign_response(HMAC_KEYS, 204, [], binding, now=NOW, nonce=NONCE)
    assert value(response, "Signature-Input").startswith(
        'wsgiproxy=("@status" "signature";req;key="wsgiproxy");')
    assert rfc9421.verify_response(HMAC_KEYS, 204, response, request_message(request), now=NOW)
    # another implementation may cover more of the request, with ;req
    message = rfc9421.Message(status=204, request=request_message(request))
    covered = (("@status", ()), ("@method", (("req", True),)), ("@path", (("req", True),)),
               rfc9421.BINDING)
    params = {"created": NOW, "nonce": NONCE, "keyid": KID, "tag": "wsgiproxy"}
    base = rfc9421.signature_base(message, covered, params)
    assert b'"@method";req: GET\n"@path";req: /app/caf%C3%A9\n' in base
    sig = base64.b64encode(HMAC_KEYS.signer()[2](base)).decode()
    response = [("Signature-Input", "wsgiproxy=" + rfc9421.signature_params(covered, params)),
                ("Signature", "wsgiproxy=:%s:" % sig)]
    assert rfc9421.verify_response(HMAC_KEYS, 204, response, request_message(request), now=NOW)
