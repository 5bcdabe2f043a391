"""RFC 9421 signatures against independent implementations, both directions.

The peers (tests/interop/peers.py) are the PyPI package ``http-message-signatures``
and the npm package ``http-message-signatures`` run by Node; each verifies with the
policy an application would write around it (label and tag ``wsgiproxy``, our key,
the body's Content-Digest).

* The harness first: each peer reproduces and accepts the RFC's own examples
  (Appendix B.2.5, hmac-sha256, and B.2.6, ed25519, as tests/test_protocol_rfc9421.py
  has them for our code), and the two agree on a response bound to its request.
* Requests signed by ``WSGIProxyApp`` (caught by a raw backend), for hmac-sha256 and
  ed25519: both peers accept them, over unusual targets too, and find the same
  signature base; each tampered component is refused by both peers and by our
  middleware; so are expired and replayed ones.
* Requests signed by each peer, as another implementation of docs/protocol.rst would
  send them: our middleware (on waitress, in front of an echo app) accepts them and
  rebuilds the environ, refuses each tampered component, and refuses what its policy
  does not allow although RFC 9421 does (a required component left out, an uncovered
  identity header, another label or tag, the window, nonces).
* Bound responses: our middleware's (``sign_responses``) verify with both peers,
  bound to the request (``;req``), and not once tampered or paired with another
  request; the peers' pass ``WSGIProxyApp(verify_responses=True)``, wrong ones are a 502.

Where a peer departs from the RFC (:data:`DEVIATIONS`, also listed in
docs/protocol.rst), that peer is left out of the case: these tests check
WSGIProxy, not the peers, and must not break when a peer's release changes.
"""

import base64
import hashlib
import os
import re
import secrets
import time
from typing import NamedTuple

import pytest

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.keys import PrivateKey, SecretKeys
from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.protocol import rfc9421

from .client import json_error, parse_answer, request, send_raw
from .interop.peers import (
    Key,
    NodePeer,
    Request,
    Response,
    ed25519_key,
    hmac_key,
    new_ed25519_pem,
    python_sign,
    python_thumbprint,
    python_verify,
    request_from_raw,
    response_from_raw,
    to_raw,
)
from .servers import TEST_SECRET, RawServer, WaitressServer, echo_app, with_environ, write_secret
from .test_protocol_rfc9421 import (
    B25_BASE,
    B25_INPUT,
    B25_SIGNATURE,
    B26_BASE,
    B26_INPUT,
    B26_SIGNATURE,
    RFC_ED25519_PRIVATE,
    RFC_ED25519_PUBLIC,
    RFC_REQUEST,
    RFC_SHARED_SECRET,
)


@pytest.fixture(scope="module")
def node():
    """The npm package in one Node process for the module (installed the first time)."""
    peer = NodePeer()
    yield peer
    peer.close()


# -- the RFC's examples: the harness reproduces them with each peer ------------------------

def rfc_request():
    """The request of RFC 9421 Appendix B.2 (its body is not checked: its digest is sha-512)."""
    return Request("POST", "https://example.com/foo?param=Value&Pet=dog",
                   RFC_REQUEST.fields.items())


RFC_VECTORS = {
    "B.2.5": dict(key=hmac_key(RFC_SHARED_SECRET, "test-shared-secret"), label="sig-b25",
                  components=["date", "@authority", "content-type"], base=B25_BASE.decode(),
                  signature_input=B25_INPUT, signature=B25_SIGNATURE),
    "B.2.6": dict(key=ed25519_key(RFC_ED25519_PRIVATE, "test-key-ed25519"), label="sig-b26",
                  components=["date", "@method", "@path", "@authority", "content-type",
                              "content-length"], base=B26_BASE.decode(),
                  signature_input=B26_INPUT, signature=B26_SIGNATURE),
}


def test_rfc_ed25519_key_pair_is_the_published_one():
    assert ed25519_key(RFC_ED25519_PRIVATE, "k").public == RFC_ED25519_PUBLIC


@pytest.mark.parametrize("peer", ["python", "node"])
@pytest.mark.parametrize("vector", sorted(RFC_VECTORS))
def test_each_peer_reproduces_the_rfc_example(request, peer, vector):
    v = RFC_VECTORS[vector]
    message = rfc_request()
    sign = python_sign if peer == "python" else request.getfixturevalue("node").sign
    base = sign(message, v["key"], label=v["label"], components=v["components"],
                params={"created": 1618884473, "alg": False})
    assert base == v["base"]
    assert message.headers["Signature-Input"] == v["signature_input"]
    assert message.headers["Signature"] == v["signature"]


@pytest.mark.parametrize("peer", ["python", "node"])
@pytest.mark.parametrize("vector", sorted(RFC_VECTORS))
def test_each_peer_accepts_the_rfc_signature_and_refuses_it_altered(request, peer, vector):
    v = RFC_VECTORS[vector]
    message = rfc_request()
    message.headers["Signature-Input"] = v["signature_input"]
    message.headers["Signature"] = v["signature"]
    if peer == "python":
        def verify(m):
            return python_verify(m, v["key"], label=None, tag=None, max_age=None)
    else:
        node = request.getfixturevalue("node")

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


# -- our side: keys, a signing proxy, a verifying backend ----------------------------------

LABEL = TAG = "wsgiproxy"
ALGORITHMS = ["hmac-sha256", "ed25519"]
BODY = b'{"order": 17, "note": "caf\\u00e9"}'
#: What a request of these tests carries besides the derived components: the identity
#: headers (the client's address, host, scheme, SCRIPT_NAME, the traversal path of
#: href, the protocol version) and one key header (REMOTE_USER), in lower case.
IDENTITY = ["x-forwarded-for", "x-forwarded-server", "x-forwarded-scheme",
            "x-forwarded-script-name", "x-traversal-path", "x-wsgiproxy-version",
            "x-wsgiproxy-str-0"]
DERIVED = ["@method", "@authority", "@path", "@query"]
COVERED = DERIVED + IDENTITY + ["content-digest"]


class Side(NamedTuple):
    """One algorithm's keys: the :class:`Key` the peers use for requests, and the options of
    ``WSGIProxyApp`` (``sender``) and ``WSGIProxyMiddleware`` (``receiver``); the same for
    responses (``response_key``, the middleware's ``responder`` options and the app's
    ``response_checker`` options)."""

    key: Key
    sender: dict
    receiver: dict
    response_key: Key
    responder: dict
    response_checker: dict


def _ed25519_files(directory, name):
    """A new Ed25519 :class:`Key` (keyid: its RFC 7638 thumbprint, computed here) and the
    paths of its private and public PEM files in ``directory``."""
    private_pem = new_ed25519_pem()
    key = ed25519_key(private_pem, "")
    key = key._replace(keyid=python_thumbprint(key.public))
    private_file, public_file = directory / (name + ".key"), directory / (name + ".pem")
    private_file.write_bytes(private_pem)
    private_file.chmod(0o600)
    public_file.write_bytes(key.public)
    return key, str(private_file), str(public_file)


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rfc9421-keys")
    secret = TEST_SECRET.encode()
    secret_file = write_secret(directory)
    os.chmod(secret_file, 0o600)
    # The documented keyid rule for a shared secret, computed here, not by wsgiproxy.
    shared = hmac_key(secret, hashlib.sha256(b"wsgiproxy-key-id:" + secret).hexdigest()[:16])
    ed, private_file, public_file = _ed25519_files(directory, "proxy")
    answers, answers_private, answers_public = _ed25519_files(directory, "backend")
    return {
        "hmac-sha256": Side(shared, {"secret_file": secret_file}, {"secret_file": secret_file},
                            shared, {}, {}),
        "ed25519": Side(ed, {"private_key_file": private_file},
                        {"public_key_file": public_file},
                        answers, {"response_key_file": answers_private},
                        {"response_public_key_file": answers_public}),
    }


@pytest.fixture(scope="module", params=ALGORITHMS)
def side(request, sides):
    return sides[request.param]


@pytest.fixture(scope="module")
def backend():
    """A raw backend that keeps each request as it arrived and answers 204."""
    def answer(conn):
        while True:
            head, _ = conn.read_request()
            if head is None:
                return
            conn.send(b"HTTP/1.1 204 No Content\r\n\r\n")

    with RawServer(answer) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(side, backend):
    """WSGIProxyApp signing RFC 9421 requests to ``backend`` (href path /backend), mounted
    at /shop, with REMOTE_USER=alice passed as a key header and bodies covered."""
    app = WSGIProxyApp("http://127.0.0.1:%d/backend" % backend.port, signature_format="rfc9421",
                       string_keys=["REMOTE_USER"], sign_body_max=65536, **side.sender)
    with WaitressServer(with_environ(app, REMOTE_USER="alice"), url_prefix="/shop") as server:
        yield server
    app.close()


@pytest.fixture(scope="module")
def receiver(side):
    """WSGIProxyMiddleware in front of the echo app, verifying with ``side``'s key."""
    with WaitressServer(WSGIProxyMiddleware(echo_app, **side.receiver)) as server:
        yield server


def capture(proxy, backend, target="/shop/orders?color=red&size=10", method="POST", body=BODY):
    """The request WSGIProxyApp sends for a client's ``method target`` with ``body``, as the
    backend received it."""
    before = len(backend.requests)
    answer = request(proxy.port, target, method=method, body=body,
                     headers={"Host": "www.example.com", "Content-Type": "application/json"})
    assert answer.status == 204, answer
    assert len(backend.requests) == before + 1
    head, data = backend.requests[-1]
    return request_from_raw(head, data)


def deliver(receiver, message):
    """Send ``message`` to the middleware (asking for JSON): the :class:`Answer`."""
    return parse_answer(send_raw(receiver.port, to_raw(
        message, ("Accept", "application/json"), ("Connection", "close"))))


def accepted(answer):
    assert answer.status == 200, (answer.status, answer.body[:500])
    return answer.json()


def refused(answer, reason):
    """Check that the middleware answered 403 for ``reason`` (a part of its message)."""
    message = json_error(answer, 403)["message"]
    assert reason in message, (reason, message)


def signature_params(message):
    """The inner list and parameters of ``message``'s ``wsgiproxy`` signature, as text."""
    value = message.headers["Signature-Input"]
    match = re.search(r'(?:^|,\s*)wsgiproxy=(\([^)]*\)[^,]*)', value)
    assert match, value
    return match.group(1)


def covered(message):
    return re.findall(r'"([^"]+)"', signature_params(message).split(")")[0])


def param(message, name):
    match = re.search(r';%s=("[^"]*"|[0-9]+)' % name, signature_params(message))
    assert match, (name, message.headers["Signature-Input"])
    return match.group(1).strip('"')


# -- tampering: one change each, after signing -----------------------------------------------

def _retarget(message, host=None, path=None, query=None):
    scheme, rest = message.url.split("://", 1)
    authority, _, target = rest.partition("/")
    old_path, _, old_query = ("/" + target).partition("?")
    authority = host or authority
    path = old_path if path is None else path
    query = old_query if query is None else query
    message.url = "%s://%s%s%s" % (scheme, authority, path, "?" + query if query else "")
    message.headers["Host"] = authority


def _header(name, change):
    def tamper(message):
        message.headers[name] = change(message.headers[name])
    return tamper


def _signature_input(pattern, replacement):
    def tamper(message):
        for header in ("Signature-Input",) + (("Signature",) if pattern == "label" else ()):
            old = message.headers[header]
            new = (re.sub(r"(^|,\s*)wsgiproxy=", r"\1other=", old) if pattern == "label"
                   else re.sub(pattern, replacement, old, count=1))
            assert new != old, (pattern, old)
            message.headers[header] = new
    return tamper


def _other_body(message):
    """Another body of the same length, with the Content-Digest of the original kept."""
    message.body = message.body.replace(b"17", b"99")


def _other_body_and_digest(message):
    """Another body, with its own (correct) Content-Digest."""
    message.body = message.body.replace(b"17", b"99")
    digest = base64.b64encode(hashlib.sha256(message.body).digest()).decode()
    message.headers["Content-Digest"] = "sha-256=:%s:" % digest


def _other_signature(message):
    value = message.headers["Signature"]
    i = value.index("wsgiproxy=:") + len("wsgiproxy=:")
    message.headers["Signature"] = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1:]


def _other_alg(message):
    alg = param(message, "alg")
    _signature_input(';alg="%s"' % alg,
                     ';alg="%s"' % ("ed25519" if alg == "hmac-sha256" else "hmac-sha256"))(message)


TAMPERS = {
    "method": lambda m: setattr(m, "method", "PUT"),
    "authority": lambda m: _retarget(m, host="evil.example:8080"),
    "path": lambda m: _retarget(m, path="/backend/admin"),
    "query": lambda m: _retarget(m, query="color=blue&size=10"),
    "x-forwarded-for": _header("X-Forwarded-For", lambda v: "10.9.8.7"),
    "x-forwarded-server": _header("X-Forwarded-Server", lambda v: "evil.example"),
    "x-forwarded-scheme": _header("X-Forwarded-Scheme",
                                  lambda v: "http" if v == "https" else "https"),
    "x-forwarded-script-name": _header("X-Forwarded-Script-Name", lambda v: "/admin"),
    "x-traversal-path": _header("X-Traversal-Path", lambda v: "/back"),
    "x-wsgiproxy-version": _header("X-WSGIProxy-Version", lambda v: "2"),
    "x-wsgiproxy-str-0": _header("X-WSGIProxy-Str-0", lambda v: "REMOTE_USER mallory"),
    "body": _other_body,
    "content-digest": _other_body_and_digest,
    "component dropped": _signature_input(r'\s*"x-forwarded-for"', ""),
    "created": _signature_input(r";created=([0-9]+)", lambda m: ";created=%d" % (int(m[1]) - 1)),
    "expires": _signature_input(r";expires=([0-9]+)", lambda m: ";expires=%d" % (int(m[1]) + 600)),
    "nonce": _signature_input(r';nonce="(.)', lambda m: ';nonce="%s' % ("a" if m[1] != "a" else "b")),
    "keyid": _signature_input(r';keyid="[^"]*"', ';keyid="0123456789abcdef"'),
    "alg": _other_alg,
    "tag": _signature_input(r';tag="wsgiproxy"', ';tag="other"'),
    "label": _signature_input("label", None),
    "signature": _other_signature,
}


#: Why the middleware refuses each: a signature under another label or tag is not
#: WSGIProxy's, so the request counts as unsigned.
TAMPER_REASONS = {
    "body": "body mismatch (",
    "component dropped": "bad signature (header(s) x-forwarded-for are not covered",
    "keyid": "unknown key (",
    "alg": "bad signature (alg ",
    "label": "missing (",
    "tag": "missing (",
}
DIFFERS = "bad signature (the message differs from the one signed)"


def tampered(message, name):
    copy = message.copy()
    TAMPERS[name](copy)
    if copy.body is not None and copy.headers["Content-Length"] != str(len(copy.body)):
        copy.headers["Content-Length"] = str(len(copy.body))
    return copy


# -- targets

PEERS = ["python", "node"]

#: Authorities and targets whose components need the RFC's normalisation rules
#: (RFC 9421 section 2.2: the scheme's default port and the host's case go; percent
#: escapes, dot segments and an empty query stay as sent).
TARGETS = [
    ("backend.internal:80", "/backend/orders?color=red"),
    ("Backend.Internal:8080", "/backend/orders?color=red"),
    ("[::1]:8080", "/backend/orders"),
    ("backend.internal:8080", "/backend/caf%C3%A9/a%2Fb?q=caf%C3%A9&empty=&x=a%20b"),
    ("backend.internal:8080", "/backend/a;v=1/b?"),
    ("backend.internal:8080", "/backend/%7e%7E~?a=%7e&b=~&c=a+b"),
    ("backend.internal:8080", "/backend/a/./b/../c"),
    ("backend.internal:8080", "/backend/orders?q=/?:@!$'()*+,;="),
    ("backend.internal:8080", "/backend/orders?a[]=1&b=[2]"),
]

#: Where a peer departs from RFC 9421 (found by these tests; each is expected to fail,
#: strictly, so that a fixed release is noticed).
DEVIATIONS = {
    ("node", "/backend/a/./b/../c"):
        "npm http-message-signatures 1.0.6 takes @path from a WHATWG URL, which removes "
        "dot segments: it signs '/backend/a/c' for the path '/backend/a/./b/../c' as sent",
    ("node", "/backend/orders?q=/?:@!$'()*+,;="):
        "npm http-message-signatures 1.0.6 takes @query from a WHATWG URL, which "
        "percent-encodes ' in the query of an http URL: '?q=/?:@!$%27()*+,;=' instead of "
        "the query as sent",
    ("python", "/backend/orders?a[]=1&b=[2]"):
        "PyPI http-message-signatures 3.0.0 refuses a target outside RFC 3986 (raw [ and ] "
        "in a query, as browsers send them): 'Invalid URL'",
}


def by_peer_and_target():
    """(peer, host, target) for each peer and :data:`TARGETS`, but a :data:`DEVIATIONS` case."""
    for peer in PEERS:
        for host, target in TARGETS:
            if (peer, target) not in DEVIATIONS:
                yield pytest.param(peer, host, target, id="%s-%s%s" % (peer, host, target))


#: The paths of :data:`TARGETS` as a client of the proxy asks for them (mounted at
#: /shop, the proxy sends them under its href's /backend).
CLIENT_TARGETS = sorted({"/shop" + target[len("/backend"):] for _, target in TARGETS})


def by_peer_and_client_target():
    """(peer, client target) for each peer and :data:`CLIENT_TARGETS`, as above."""
    for peer in PEERS:
        for target in CLIENT_TARGETS:
            if (peer, "/backend" + target[len("/shop"):]) not in DEVIATIONS:
                yield pytest.param(peer, target, id="%s-%s" % (peer, target))


def other_peer_agrees(node, peer, target, message, key, base):
    """Unless the other peer departs from the RFC on ``target``: it finds ``base`` too."""
    if ("node" if peer == "python" else "python", target) not in DEVIATIONS:
        other = node.verify(message, key) if peer == "python" else python_verify(message, key)
        assert other.ok and other.base == base, (other, base)



# -- requests signed by WSGIProxyApp, checked by the peers and by our middleware ------------

def test_our_signature_input_has_the_documented_shape(side, proxy, backend):
    message = capture(proxy, backend)
    assert covered(message)[:4] == DERIVED
    assert sorted(covered(message)[4:]) == sorted(
        IDENTITY + ["x-wsgiproxy-request-id", "content-digest"])
    params = dict(re.findall(r';([a-z]+)=("[^"]*"|[0-9]+)', signature_params(message)))
    assert sorted(params) == ["alg", "created", "expires", "keyid", "nonce", "tag"], params
    assert len(param(message, "nonce")) >= 16
    assert param(message, "tag") == TAG
    assert int(param(message, "expires")) == int(param(message, "created")) + 300
    assert abs(int(param(message, "created")) - time.time()) < 60
    # keyid: the documented rules, computed independently (see the sides fixture).
    assert param(message, "keyid") == side.key.keyid
    assert param(message, "alg") == side.key.alg


def test_our_ed25519_keyid_is_the_rfc7638_thumbprint_node_computes(sides, node):
    ed = sides["ed25519"].key
    assert node.thumbprint(ed.public) == ed.keyid


@pytest.mark.parametrize("peer, target", list(by_peer_and_client_target()))
def test_our_signed_requests_verify_with_each_peer(side, proxy, backend, node, peer, target):
    message = capture(proxy, backend, target)
    required = DERIVED + ["x-forwarded-for", "x-forwarded-server", "x-wsgiproxy-version",
                          "content-digest"]
    if peer == "python":
        verdict = python_verify(message, side.key, required=required)
    else:
        verdict = node.verify(message, side.key, required=required,
                              required_params=["created", "expires", "nonce", "keyid", "alg",
                                               "tag"])
    assert verdict.ok, verdict
    wire = "/backend" + target[len("/shop"):]
    other_peer_agrees(node, peer, wire, message, side.key, verdict.base)


@pytest.mark.parametrize("target", CLIENT_TARGETS)
def test_our_signed_requests_are_accepted_by_our_middleware(side, proxy, backend, receiver, target):
    env = accepted(deliver(receiver, capture(proxy, backend, target)))
    assert env["REMOTE_USER"] == "alice"
    assert env["HTTP_HOST"] == "www.example.com"
    assert env["SCRIPT_NAME"] == "/shop"
    assert env["body"] == BODY.decode("latin-1")


def test_our_signed_request_without_a_body_covers_no_digest(side, proxy, backend, receiver, node):
    message = capture(proxy, backend, "/shop/orders", "GET", b"")
    assert "content-digest" not in covered(message)
    assert python_verify(message, side.key) and node.verify(message, side.key)
    assert accepted(deliver(receiver, message))["REQUEST_METHOD"] == "GET"


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_our_signed_request_tampered_is_refused_by_both_peers_and_our_middleware(
        side, proxy, backend, receiver, node, tamper):
    message = tampered(capture(proxy, backend), tamper)
    by_python = python_verify(message, side.key)
    by_node = node.verify(message, side.key)
    assert not by_python, by_python
    assert not by_node, by_node
    refused(deliver(receiver, message), TAMPER_REASONS.get(tamper, DIFFERS))


def our_signer(side):
    """What signs like ``side.sender`` in wsgiproxy's protocol layer."""
    if side.key.alg == "ed25519":
        return PrivateKey.from_pem(side.key.private)
    return rfc9421.HMACKeys(SecretKeys.from_secrets([side.key.private.decode()]))


def test_our_expired_signature_is_refused_by_both_peers_and_our_middleware(side, receiver, node):
    # Signed by wsgiproxy's protocol layer 1000 s ago (expires: 700 s ago).
    message = their_request()
    headers = [pair for pair in message.headers.items() if pair[0] != "Content-Length"]
    for name, value in rfc9421.sign(our_signer(side), "POST", "backend.internal:8080",
                                    "/backend/orders", "color=red&size=10", headers,
                                    now=time.time() - 1000, nonce=secrets.token_hex(16),
                                    body=BODY):
        message.headers[name] = value
    assert not python_verify(message, side.key)
    assert "xpire" in node.verify(message, side.key).reason
    refused(deliver(receiver, message), "expired (")
    # The same, signed now, is accepted by all three.
    fresh = their_request()
    for name, value in rfc9421.sign(our_signer(side), "POST", "backend.internal:8080",
                                    "/backend/orders", "color=red&size=10", headers,
                                    now=time.time(), nonce=secrets.token_hex(16), body=BODY):
        fresh.headers[name] = value
    assert python_verify(fresh, side.key) and node.verify(fresh, side.key)
    accepted(deliver(receiver, fresh))


def test_our_signed_request_is_refused_when_replayed(side, proxy, backend, receiver):
    message = capture(proxy, backend)
    accepted(deliver(receiver, message))
    refused(deliver(receiver, message), "replayed (")


# -- requests signed by the peers, checked by our middleware ---------------------------------

def their_request(body=BODY):
    """A request as another implementation of the protocol would send it to a backend:
    the identity headers of docs/protocol.rst, and a body."""
    return Request("POST", "http://backend.internal:8080/backend/orders?color=red&size=10", [
        ("Host", "backend.internal:8080"),
        ("Content-Type", "application/json"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Server", "www.example.com"),
        ("X-Forwarded-Scheme", "https"),
        ("X-Forwarded-Script-Name", "/shop"),
        ("X-Traversal-Path", "/backend"),
        ("X-WSGIProxy-Version", "1"),
        ("X-WSGIProxy-Str-0", "REMOTE_USER alice"),
        ("Content-Length", str(len(body))),
    ], body)


def their_params(now=None, **changes):
    now = int(time.time()) if now is None else now
    params = {"created": now, "expires": now + 300, "nonce": secrets.token_hex(16), "tag": TAG}
    params.update(changes)
    return {name: value for name, value in params.items() if value is not None}


def their_sign(peer, node, message, key, components=tuple(COVERED), label=LABEL, **params):
    """Sign ``message`` in place with the peer named ``peer``; the base it signed."""
    sign = python_sign if peer == "python" else node.sign
    return sign(message, key, label=label, components=list(components),
                params=their_params(**params))


@pytest.mark.parametrize("peer", PEERS)
def test_requests_signed_by_each_peer_are_accepted_by_our_middleware(side, receiver, node, peer):
    message = their_request()
    their_sign(peer, node, message, side.key)
    env = accepted(deliver(receiver, message))
    assert env["REMOTE_ADDR"] == "203.0.113.7"
    assert env["HTTP_HOST"] == "www.example.com"
    assert env["wsgi.url_scheme"] == "https"
    assert env["SCRIPT_NAME"] == "/shop"
    assert env["PATH_INFO"] == "/orders"
    assert env["QUERY_STRING"] == "color=red&size=10"
    assert env["REMOTE_USER"] == "alice"
    assert env["body"] == BODY.decode("latin-1")


@pytest.mark.parametrize("peer", PEERS)
def test_a_peer_signed_request_without_a_body_or_query_is_accepted(side, receiver, node, peer):
    message = their_request(body=b"")
    message.method = "GET"
    _retarget(message, query="")
    del message.headers["Content-Length"]
    message.body = None
    their_sign(peer, node, message, side.key, components=DERIVED + IDENTITY)
    env = accepted(deliver(receiver, message))
    assert (env["REQUEST_METHOD"], env["QUERY_STRING"], env["REMOTE_USER"]) == ("GET", "", "alice")


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
@pytest.mark.parametrize("peer", PEERS)
def test_requests_signed_by_each_peer_tampered_are_refused_by_our_middleware(
        side, receiver, node, peer, tamper):
    message = their_request()
    their_sign(peer, node, message, side.key)
    refused(deliver(receiver, tampered(message, tamper)), TAMPER_REASONS.get(tamper, DIFFERS))


#: Signatures the peers make correctly (RFC 9421 lets a verifier accept them) that
#: our middleware's policy refuses: what each one leaves out, or adds, and why.
POLICY = {
    "@method not covered": (dict(components=[c for c in COVERED if c != "@method"]),
                            "bad signature (@method must be covered)"),
    "@authority not covered": (dict(components=[c for c in COVERED if c != "@authority"]),
                               "bad signature (@authority must be covered)"),
    "@path not covered": (dict(components=[c for c in COVERED if c != "@path"]),
                          "bad signature (@path must be covered)"),
    "@query not covered": (dict(components=[c for c in COVERED if c != "@query"]),
                           "bad signature (@query must be covered)"),
    "x-forwarded-for not covered": (
        dict(components=[c for c in COVERED if c != "x-forwarded-for"]),
        "bad signature (header(s) x-forwarded-for are not covered"),
    "key header not covered": (
        dict(components=[c for c in COVERED if c != "x-wsgiproxy-str-0"]),
        "bad signature (header(s) x-wsgiproxy-str-0 are not covered"),
    # now, expires: seconds from the time the test runs.
    "expired": (dict(now=-1000), "expired ("),
    "created in the future": (dict(now=1000), "expired ("),
    "expires passed": (dict(now=-100, expires=-10), "expired (the signature expired"),
    "no nonce": (dict(nonce=None), "malformed (the nonce"),
    "short nonce": (dict(nonce="0123456789"), "malformed (the nonce"),
    "another tag": (dict(tag="other"), "missing ("),
    "another label": (dict(label="other"), "missing ("),
}


@pytest.mark.parametrize("case", sorted(POLICY))
@pytest.mark.parametrize("peer", PEERS)
def test_our_middleware_refuses_what_its_policy_does_not_allow(side, receiver, node, peer, case):
    message = their_request()
    options, reason = POLICY[case]
    now = int(time.time())
    options = {name: now + value if name in ("now", "expires") else value
               for name, value in options.items()}
    their_sign(peer, node, message, side.key, **options)
    refused(deliver(receiver, message), reason)


@pytest.mark.parametrize("peer", PEERS)
def test_an_uncovered_identity_header_is_refused_though_the_signature_is_valid(
        side, receiver, node, peer):
    message = their_request()
    their_sign(peer, node, message, side.key)
    message.headers["X-WSGIProxy-Str-1"] = "HTTP_X_ROLE admin"
    # RFC 9421 lets a verifier accept it: the peers do.
    assert python_verify(message, side.key)
    assert node.verify(message, side.key)
    refused(deliver(receiver, message), "header(s) x-wsgiproxy-str-1 are not covered")


@pytest.mark.parametrize("peer", PEERS)
def test_a_second_signature_under_another_label_is_ignored(side, receiver, node, peer):
    message = their_request()
    their_sign(peer, node, message, side.key)
    ours = message.headers["Signature-Input"], message.headers["Signature"]
    del message.headers["Signature-Input"], message.headers["Signature"]
    other = hmac_key(b"some-other-key-of-another-party", "other-party")
    their_sign(peer, node, message, other, label="other", tag="other")
    message.headers["Signature-Input"] = ours[0] + ", " + message.headers["Signature-Input"]
    message.headers["Signature"] = ours[1] + ", " + message.headers["Signature"]
    accepted(deliver(receiver, message))


@pytest.mark.parametrize("peer", PEERS)
def test_a_peer_signed_request_replayed_or_under_an_unknown_key_is_refused(
        side, receiver, node, peer):
    message = their_request()
    their_sign(peer, node, message, side.key)
    accepted(deliver(receiver, message))
    refused(deliver(receiver, message), "replayed (")
    stranger = their_request()
    their_sign(peer, node, stranger, side.key._replace(keyid="0123456789abcdef"))
    refused(deliver(receiver, stranger), "unknown key (")


@pytest.mark.parametrize("peer", PEERS)
def test_a_peer_signature_without_expires_is_accepted_within_the_window(
        side, receiver, node, peer):
    # expires is optional (RFC 9421 section 2.3); the window still bounds created.
    message = their_request()
    their_sign(peer, node, message, side.key, expires=None)
    assert "expires" not in message.headers["Signature-Input"]
    accepted(deliver(receiver, message))


@pytest.mark.parametrize("peer, host, target", list(by_peer_and_target()))
def test_peer_signed_requests_for_unusual_targets_are_accepted(
        side, receiver, node, peer, host, target):
    message = their_request(body=b"")
    message.method, message.body = "GET", None
    del message.headers["Content-Length"]
    message.url = "http://%s%s" % (host, target)
    message.headers["Host"] = host
    base = their_sign(peer, node, message, side.key, components=DERIVED + IDENTITY)
    other_peer_agrees(node, peer, target, message, side.key, base)
    accepted(deliver(receiver, message))


# -- bound responses (RFC 9421 section 2.4) ---------------------------------------------------

BINDING = '"signature";req;key="wsgiproxy"'


@pytest.fixture(scope="module")
def responder(side):
    """The middleware signing its answers (``sign_responses``), in front of the echo app."""
    app = WSGIProxyMiddleware(echo_app, sign_responses=True, **side.receiver, **side.responder)
    with WaitressServer(app) as server:
        yield server


def answered(responder, message):
    """``message`` sent to ``responder``: the :class:`Response`, bound to ``message``."""
    return response_from_raw(send_raw(responder.port, to_raw(message, ("Connection", "close"))),
                             message)


def response_verdicts(node, response, key):
    """Both peers' verdicts on a response, requiring @status and the binding."""
    return (python_verify(response, key, required=["@status", BINDING]),
            node.verify(response, key, required=["@status", "signature"],
                        required_params=["created", "keyid", "alg", "tag", "nonce"]))


@pytest.mark.parametrize("origin", ["ours"] + PEERS)
def test_our_signed_responses_verify_with_both_peers(side, proxy, backend, responder, node,
                                                     origin):
    # The request: signed by WSGIProxyApp, or by a peer.
    if origin == "ours":
        message = capture(proxy, backend)
    else:
        message = their_request()
        their_sign(origin, node, message, side.key)
    response = answered(responder, message)
    assert response.status_code == 200
    by_python, by_node = response_verdicts(node, response, side.response_key)
    assert by_python.ok, by_python
    assert by_node.ok, by_node
    assert by_python.base == by_node.base
    lines = by_python.base.split("\n")
    member = re.search(r"wsgiproxy=(:[^:]*:)", message.headers["Signature"]).group(1)
    assert lines[:3] == ['"@status": 200', '"content-type": application/json',
                         "%s: %s" % (BINDING, member)]
    assert len(lines) == 4 and lines[3].startswith('"@signature-params": ')
    assert ';tag="wsgiproxy"' in lines[3] and ';keyid="%s"' % side.response_key.keyid in lines[3]


def _bound_elsewhere(response, side, node):
    """The response checked against another signed request (same path, another nonce)."""
    other = their_request()
    their_sign("python", node, other, side.key)
    response.request = other


RESPONSE_TAMPERS = {
    "status": lambda r, side, node: setattr(r, "status_code", 201),
    "content-type": lambda r, side, node: r.headers.__setitem__("Content-Type", "text/html"),
    "another request": _bound_elsewhere,
    "signature": lambda r, side, node: _other_signature(r),
    "label": lambda r, side, node: _signature_input("label", None)(r),
    "tag": lambda r, side, node: _signature_input(';tag="wsgiproxy"', ';tag="other"')(r),
    "keyid": lambda r, side, node: _signature_input(r';keyid="[^"]*"', ';keyid="0123456789abcdef"')(r),
}


@pytest.mark.parametrize("tamper", sorted(RESPONSE_TAMPERS))
def test_our_signed_response_tampered_or_bound_elsewhere_is_refused_by_both_peers(
        side, proxy, backend, responder, node, tamper):
    response = answered(responder, capture(proxy, backend))
    RESPONSE_TAMPERS[tamper](response, side, node)
    by_python, by_node = response_verdicts(node, response, side.response_key)
    assert not by_python, by_python
    assert not by_node, by_node


# -- responses signed by the peers, checked by WSGIProxyApp(verify_responses=True) -----------

def _peer_signed_answers(side, node):
    """A backend whose answers a peer signs, bound to the request: ``/<peer>/<how>`` says
    which peer, and how the answer departs from what was signed (``right``: it does not)."""
    def app(environ, start_response):
        _, peer, how = environ["PATH_INFO"].split("/")
        request = Request(environ["REQUEST_METHOD"], "http://%s/" % environ["HTTP_HOST"],
                          [("Signature", environ["HTTP_SIGNATURE"])])
        if how == "elsewhere":
            request.headers["Signature"] = "wsgiproxy=:%s:" % base64.b64encode(b"x" * 32).decode()
        key = side.response_key
        if how == "stranger":
            key = (hmac_key(b"a-stranger-secret-0123456789", key.keyid) if key.alg == "hmac-sha256"
                   else ed25519_key(new_ed25519_pem(), key.keyid))
        response = Response(200, [("Content-Type", "text/plain")], request)
        if how != "unsigned":
            sign = python_sign if peer == "python" else node.sign
            sign(response, key, label=LABEL, components=["@status", "content-type", BINDING],
                 params=their_params())
        status = "201 Created" if how == "status" else "200 OK"
        if how == "content-type":
            response.headers["Content-Type"] = "text/html"
        start_response(status, response.headers.items() + [("Content-Length", "2")])
        return [b"ok"]
    return app


@pytest.fixture(scope="module")
def checking_proxy(side, node):
    """WSGIProxyApp with ``verify_responses`` in front of :func:`_peer_signed_answers`."""
    with WaitressServer(_peer_signed_answers(side, node)) as answers:
        app = WSGIProxyApp(answers.url, signature_format="rfc9421", verify_responses=True,
                           **side.sender, **side.response_checker)
        with WaitressServer(app) as server:
            yield server
        app.close()


@pytest.mark.parametrize("peer", PEERS)
def test_responses_signed_by_each_peer_are_accepted_by_our_proxy(side, checking_proxy, peer):
    answer = request(checking_proxy.port, "/%s/right" % peer)
    assert (answer.status, answer.body) == (200, b"ok"), answer


@pytest.mark.parametrize("how", ["status", "content-type", "elsewhere", "stranger", "unsigned"])
@pytest.mark.parametrize("peer", PEERS)
def test_responses_signed_by_each_peer_wrongly_are_a_502(side, checking_proxy, peer, how):
    answer = request(checking_proxy.port, "/%s/%s" % (peer, how), accept="application/json")
    reason = "missing (the response is not signed)" if how == "unsigned" else DIFFERS
    message = json_error(answer, 502)["message"]
    assert "refused response (verify_responses): Signature: " + reason in message, message
