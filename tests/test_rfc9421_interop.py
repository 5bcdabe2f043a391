"""RFC 9421 signatures against independent implementations, both directions.

The peers (tests/interop/peers.py) are the PyPI package ``http-message-signatures``
and the npm package ``http-message-signatures`` run by Node.  Before anything of
ours, the harness itself is checked on the RFC's own examples (Appendix B.2.5,
hmac-sha256, and B.2.6, ed25519): each peer must produce and accept exactly the
published signature and signature base.
"""

import base64
import time

import pytest

from .interop.peers import (
    NodePeer,
    Request,
    Response,
    ed25519_key,
    hmac_key,
    python_sign,
    python_verify,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node():
    """The npm package in one Node process for the module (installed the first time)."""
    peer = NodePeer()
    yield peer
    peer.close()


# -- the RFC's examples: the harness reproduces them with each peer ------------------------

#: RFC 9421 Appendix B.1.5 (the shared secret) and B.1.4 (the Ed25519 key pair).
RFC_SHARED_SECRET = base64.b64decode(
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==")
RFC_ED25519_PRIVATE = (b"-----BEGIN PRIVATE KEY-----\n"
                       b"MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n"
                       b"-----END PRIVATE KEY-----\n")
RFC_ED25519_PUBLIC = (b"-----BEGIN PUBLIC KEY-----\n"
                      b"MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n"
                      b"-----END PUBLIC KEY-----\n")


def rfc_request():
    """The request of RFC 9421 Appendix B.2 (its body is not checked: its digest is sha-512)."""
    return Request("POST", "https://example.com/foo?param=Value&Pet=dog", [
        ("Host", "example.com"),
        ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("Content-Type", "application/json"),
        ("Content-Digest", "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu"
                           "7BNNyealdVLvRwEmTHWXvJwew==:"),
        ("Content-Length", "18"),
    ])


RFC_VECTORS = {
    "B.2.5": dict(
        key=hmac_key(RFC_SHARED_SECRET, "test-shared-secret"),
        label="sig-b25",
        components=["date", "@authority", "content-type"],
        base='"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
             '"@authority": example.com\n'
             '"content-type": application/json\n'
             '"@signature-params": ("date" "@authority" "content-type")'
             ';created=1618884473;keyid="test-shared-secret"',
        signature_input='sig-b25=("date" "@authority" "content-type")'
                        ';created=1618884473;keyid="test-shared-secret"',
        signature="sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"),
    "B.2.6": dict(
        key=ed25519_key(RFC_ED25519_PRIVATE, "test-key-ed25519"),
        label="sig-b26",
        components=["date", "@method", "@path", "@authority", "content-type", "content-length"],
        base='"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
             '"@method": POST\n'
             '"@path": /foo\n'
             '"@authority": example.com\n'
             '"content-type": application/json\n'
             '"content-length": 18\n'
             '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" '
             '"content-length");created=1618884473;keyid="test-key-ed25519"',
        signature_input='sig-b26=("date" "@method" "@path" "@authority" "content-type" '
                        '"content-length");created=1618884473;keyid="test-key-ed25519"',
        signature="sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6v"
                  "uQv5lIp5WPpBKRCw==:"),
}


def test_rfc_ed25519_key_pair_is_the_published_one():
    assert ed25519_key(RFC_ED25519_PRIVATE, "k").public == RFC_ED25519_PUBLIC


@pytest.mark.parametrize("peer", ["python", "node"])
@pytest.mark.parametrize("vector", sorted(RFC_VECTORS))
def test_each_peer_reproduces_the_rfc_example(node, peer, vector):
    v = RFC_VECTORS[vector]
    message = rfc_request()
    sign = python_sign if peer == "python" else node.sign
    base = sign(message, v["key"], label=v["label"], components=v["components"],
                params={"created": 1618884473, "alg": False})
    assert base == v["base"]
    assert message.headers["Signature-Input"] == v["signature_input"]
    assert message.headers["Signature"] == v["signature"]


@pytest.mark.parametrize("peer", ["python", "node"])
@pytest.mark.parametrize("vector", sorted(RFC_VECTORS))
def test_each_peer_accepts_the_rfc_signature_and_refuses_it_altered(node, peer, vector):
    v = RFC_VECTORS[vector]
    message = rfc_request()
    message.headers["Signature-Input"] = v["signature_input"]
    message.headers["Signature"] = v["signature"]
    if peer == "python":
        def verify(m):
            return python_verify(m, v["key"], label=None, tag=None, max_age=None)
    else:
        def verify(m):
            return node.verify(m, v["key"], label=v["label"], tag=None)
    verdict = verify(message)
    assert verdict.ok, verdict
    assert verdict.base == v["base"]
    # The same signature over another Date is refused (every component is covered).
    message.headers["Date"] = "Tue, 20 Apr 2021 02:07:56 GMT"
    assert not verify(message)


@pytest.mark.parametrize("signer", ["python", "node"])
def test_the_peers_agree_on_a_response_bound_to_its_request(node, signer):
    # Each peer signs a request and a response bound to it ("signature";req): the other
    # accepts the response with that request, and not with another request.
    key = hmac_key(b"a-secret-for-binding-0123456789", "binding")
    sign = python_sign if signer == "python" else node.sign
    verifiers = [lambda m: python_verify(m, key), lambda m: node.verify(m, key)]
    params = {"created": int(time.time()), "expires": int(time.time()) + 300,
              "nonce": "n" * 24, "tag": "wsgiproxy"}
    requests = []
    for path in ("/one", "/two"):
        req = Request("GET", "http://backend:8080" + path, [("Host", "backend:8080")])
        sign(req, key, label="wsgiproxy", components=["@method", "@path"], params=params)
        requests.append(req)
    res = Response(200, [("Content-Type", "text/plain")], requests[0])
    base = sign(res, key, label="wsgiproxy",
                components=["@status", "content-type", '"signature";req;key="wsgiproxy"'],
                params=params)
    assert base.startswith('"@status": 200\n"content-type": text/plain\n'
                           '"signature";req;key="wsgiproxy": :')
    for verify in verifiers:
        verdict = verify(res)
        assert verdict.ok and verdict.base == base, verdict
        other = res.copy()
        other.request = requests[1]
        assert not verify(other)
