"""Two independent RFC 9421 implementations behind one small interface, for
tests/test_rfc9421_interop.py: the PyPI package ``http-message-signatures`` (in the
venv) and the npm package ``http-message-signatures`` (its ``httpbis`` module, run by
``rfc9421.js`` in one Node process per test module).

* :class:`Request` and :class:`Response` are messages both read: the Python package
  takes them as they are (``method``, ``url``, ``headers``; ``status_code``,
  ``request``), :meth:`Request.to_json` hands them to Node.  :func:`request_from_raw`,
  :func:`response_from_raw` and :func:`to_raw` move them on and off the wire.
* :class:`Key`: an hmac-sha256 secret or an Ed25519 key pair, with its keyid.
* :func:`python_sign`, :func:`python_verify`, :meth:`NodePeer.sign` and
  :meth:`NodePeer.verify`: one signature under one label.  Verifying gives a
  :class:`Verdict` with the signature base the peer built, for the messages of
  failing tests.

The npm package is installed, pinned, by the tests themselves the first time
(:func:`node_modules`) into ``$WSGIPROXY_RFC9421_NODE`` (default
``.venv/rfc9421-node``), as tests/test_httplib2transport_cachesuite.py installs its
suite; ``./dev test`` installs Debian's nodejs and npm when npm is missing.
"""

import base64
import datetime
import hashlib
import json
import os
import subprocess
import threading
from typing import NamedTuple

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    MappingKeyResolver,
)
from http_message_signatures.algorithms import ED25519, HMAC_SHA256

from ..client import parse_answer
from ..servers import ROOT, need

#: The npm package and the version these tests were written against (and its
#: Structured Fields dependency, pinned too so that an install is reproducible).
NODE_PACKAGE = "http-message-signatures"
NODE_VERSION = "1.0.6"
NODE_DEPENDENCIES = ["structured-headers@2.1.0"]
INSTALL = os.environ.get("WSGIPROXY_RFC9421_NODE") or os.path.join(ROOT, ".venv", "rfc9421-node")
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rfc9421.js")

_ALGORITHMS = {"hmac-sha256": HMAC_SHA256, "ed25519": ED25519}


def node_modules():
    """The ``node_modules`` directory holding the npm package, installed the first time."""
    stamp = os.path.join(INSTALL, ".installed-%s-%s" % (NODE_PACKAGE, NODE_VERSION))
    if not os.path.exists(stamp):
        npm = need("npm")
        os.makedirs(INSTALL, exist_ok=True)
        done = subprocess.run(
            [npm, "install", "--prefix", INSTALL, "--no-audit", "--no-fund", "--omit=dev",
             "--no-save", "%s@%s" % (NODE_PACKAGE, NODE_VERSION)] + NODE_DEPENDENCIES,
            capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, "npm install %s failed:\n%s" % (NODE_PACKAGE, done.stderr)
        open(stamp, "w").close()
    return os.path.join(INSTALL, "node_modules")


# -- messages ------------------------------------------------------------------------

class Fields:
    """Header field lines in wire order (repeated names kept), looked up without regard
    to case: what the Python package asks of a message's ``headers``."""

    def __init__(self, pairs=()):
        self.pairs = [(name, value) for name, value in pairs]

    def items(self):
        return list(self.pairs)

    def __iter__(self):
        return iter([name for name, _ in self.pairs])

    def __contains__(self, name):
        return any(n.lower() == name.lower() for n, _ in self.pairs)

    def __getitem__(self, name):
        values = [v for n, v in self.pairs if n.lower() == name.lower()]
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __setitem__(self, name, value):
        """Replace the first line of ``name`` (dropping the others), or add one at the end."""
        out, done = [], False
        for n, v in self.pairs:
            if n.lower() != name.lower():
                out.append((n, v))
            elif not done:
                out.append((n, value))
                done = True
        if not done:
            out.append((name, value))
        self.pairs = out

    def __delitem__(self, name):
        if name not in self:
            raise KeyError(name)
        self.pairs = [(n, v) for n, v in self.pairs if n.lower() != name.lower()]

    def __repr__(self):
        return "Fields(%r)" % (self.pairs,)


class Request:
    """A request: ``url`` is absolute (scheme, the ``Host`` value, the request target).

    ``body`` is ``None`` when a verifier is not to check a Content-Digest against it.
    """

    def __init__(self, method, url, headers=(), body=None):
        self.method = method
        self.url = url
        self.headers = Fields(headers)
        self.body = body

    @property
    def target(self):
        """The request target (origin form) of ``url``."""
        rest = self.url.split("://", 1)[1]
        return "/" + rest.split("/", 1)[1] if "/" in rest else "/"

    def copy(self):
        return Request(self.method, self.url, self.headers.items(), self.body)

    def to_json(self):
        out = {"method": self.method, "url": self.url, "headers": self.headers.items()}
        if self.body is not None:
            out["body_b64"] = base64.b64encode(self.body).decode()
        return out


class Response:
    """A response and the request it answers (``;req`` components come from there)."""

    def __init__(self, status_code, headers, request, body=None):
        self.status_code = status_code
        self.headers = Fields(headers)
        self.request = request
        self.body = body

    def copy(self):
        return Response(self.status_code, self.headers.items(), self.request.copy(), self.body)

    def to_json(self):
        return {"status": self.status_code, "headers": self.headers.items(),
                "request": self.request.to_json()}


def request_from_raw(head, body, scheme="http"):
    """The :class:`Request` whose head (bytes, without the blank line) and body these are."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    pairs = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        pairs.append((name, value.strip(" \t")))
    host = Fields(pairs)["Host"]
    return Request(method, "%s://%s%s" % (scheme, host, target), pairs, body)


def to_raw(request, *extra):
    """``request`` as HTTP/1.1 bytes (its own headers in order, then ``extra`` pairs)."""
    head = ["%s %s HTTP/1.1" % (request.method, request.target)]
    head += ["%s: %s" % pair for pair in request.headers.items() + list(extra)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (request.body or b"")


def response_from_raw(data, request):
    """The :class:`Response` in raw bytes ``data``, answering ``request``."""
    answer = parse_answer(data)
    return Response(answer.status, answer.headers.items(), request)


# -- keys ----------------------------------------------------------------------------

class Key(NamedTuple):
    """A key as both peers take it: ``private`` signs, ``public`` verifies (for
    hmac-sha256 both are the secret; for ed25519, PEM bytes)."""

    alg: str
    keyid: str
    private: bytes
    public: bytes

    def node(self, which):
        """The key for a Node job: ``which`` is ``"private"`` or ``"public"``."""
        if self.alg == "hmac-sha256":
            return {"alg": self.alg, "keyid": self.keyid,
                    "secret_b64": base64.b64encode(self.private).decode()}
        return {"alg": self.alg, "keyid": self.keyid, "pem": getattr(self, which).decode()}


def hmac_key(secret, keyid):
    """An hmac-sha256 :class:`Key`: ``secret`` (bytes) under ``keyid``."""
    return Key("hmac-sha256", keyid, secret, secret)


def ed25519_key(private_pem, keyid):
    """An ed25519 :class:`Key` from a PKCS#8 PEM private key, under ``keyid``."""
    private = serialization.load_pem_private_key(private_pem, password=None)
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return Key("ed25519", keyid, private_pem, public)


def new_ed25519_pem():
    """A new Ed25519 private key as PKCS#8 PEM bytes."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def python_thumbprint(public_pem):
    """RFC 7638 JWK SHA-256 thumbprint of an Ed25519 public key (base64url, no padding),
    computed here from the raw key bytes (``cryptography``), independently of wsgiproxy."""
    raw = serialization.load_pem_public_key(public_pem).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"%s"}' % x
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(
        b"=").decode()


# -- signing and verifying -------------------------------------------------------------

class Verdict(NamedTuple):
    """A peer's verdict on a signature: ``reason`` when refused; ``base`` is the
    signature base the peer built (``None`` when it got no further than parsing)."""

    ok: bool
    reason: str
    base: str | None

    def __bool__(self):
        return self.ok


def _when(timestamp):
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)


def python_sign(message, key, *, label, components, params):
    """Sign ``message`` in place with the Python package; the signature base it signed.

    ``params`` has ``created`` (required), ``expires``, ``nonce``, ``tag`` (each
    optional) and ``alg`` (False leaves it out).  A request with a ``body`` gets a
    Content-Digest (sha-256, made by the package) covered at the end of
    ``components`` unless they name it.
    """
    signer = HTTPMessageSigner(signature_algorithm=_ALGORITHMS[key.alg],
                               key_resolver=MappingKeyResolver(public_keys={},
                                                               private_keys={key.keyid: key.private}))
    body = message.body if isinstance(message, Request) else None
    prepared = signer.prepare(
        message, key_id=key.keyid, created=_when(params["created"]),
        expires=_when(params["expires"]) if "expires" in params else None,
        nonce=params.get("nonce"), tag=params.get("tag"), label=label,
        include_alg=params.get("alg", True) is not False,
        covered_component_ids=components, body=body,
        use_existing_digest="Content-Digest" in message.headers)
    algorithm = _ALGORITHMS[key.alg](private_key=signer.key_resolver.resolve_private_key(key.keyid))
    signer.apply(message, prepared, algorithm.sign(prepared.signature_base))
    return prepared.signature_base.decode()


def python_verify(message, key, *, label="wsgiproxy", tag="wsgiproxy", required=(),
                  max_age=datetime.timedelta(days=1)):
    """The Python package's :class:`Verdict` on ``message``'s signature under ``label``
    and ``tag`` (both ``None``: the only signature), checked against ``key``; with a
    request ``body``, its Content-Digest too."""
    verifier = HTTPMessageVerifier(
        signature_algorithm=_ALGORITHMS[key.alg],
        key_resolver=MappingKeyResolver(public_keys={key.keyid: key.public}, private_keys={}))
    try:
        results = verifier.verify(message, max_age=max_age, expect_tag=tag, expect_label=label,
                                  require_components=required, body=getattr(message, "body", None))
    except HTTPMessageSignaturesException as exc:  # InvalidSignature is one
        return Verdict(False, "%s: %s" % (type(exc).__name__, exc), None)
    (result,) = results
    base = "\n".join("%s: %s" % item for item in result.covered_components.items())
    return Verdict(True, "", base)


class NodePeer:
    """``rfc9421.js`` in a Node process: one JSON line per job each way."""

    def __init__(self):
        node = need("node")
        modules = node_modules()
        self.proc = subprocess.Popen(
            [node, SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=dict(os.environ, NODE_PATH=modules))
        self.lock = threading.Lock()  # a backend's threads may share the process

    def run(self, job):
        """The result of one job (a dict); a job that failed in Node fails the test."""
        with self.lock:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise AssertionError("node exited with %s: %s"
                                 % (self.proc.returncode, self.proc.stderr.read()))
        result = json.loads(line)
        assert "error" not in result, "node: %s (job %s)" % (result["error"], job["op"])
        return result

    def sign(self, message, key, *, label, components, params):
        """Sign ``message`` in place with the npm package; the signature base it signed.

        ``params`` has ``created``, ``expires``, ``nonce``, ``tag`` (those given, with
        ``keyid`` and ``alg`` from ``key`` unless ``alg`` is False).  A request with a
        ``body`` gets a Content-Digest (sha-256, made by the script with node:crypto),
        which ``components`` must name to cover it (the package adds nothing itself).
        """
        params = dict(params)
        if params.pop("alg", True) is not False:
            params["alg"] = key.alg
        params["keyid"] = key.keyid
        out = self.run({"op": "sign", "message": message.to_json(), "key": key.node("private"),
                        "label": label, "components": list(components), "params": params})
        if out.get("content_digest"):
            message.headers["Content-Digest"] = out["content_digest"]
        message.headers["Signature-Input"] = out["signature_input"]
        message.headers["Signature"] = out["signature"]
        return out["base"]

    def verify(self, message, key, *, label="wsgiproxy", tag="wsgiproxy", required=(),
               required_params=()):
        """The npm package's :class:`Verdict` on ``message`` (see :func:`python_verify`)."""
        out = self.run({"op": "verify", "message": message.to_json(), "keys": [key.node("public")],
                        "label": label, "tag": tag, "required_components": list(required),
                        "required_params": list(required_params)})
        return Verdict(out["ok"], out.get("reason", ""), out.get("base"))

    def thumbprint(self, public_pem):
        """RFC 7638 thumbprint of a public key, as Node's JWK export computes it."""
        return self.run({"op": "thumbprint", "pem": public_pem.decode()})["thumbprint"]

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc.stderr.close()
