"""docs/protocol.rst and docs/security.rst stay true to the code.

The wire examples of the protocol page (``http`` blocks) are regenerated here
by a real :class:`~wsgiproxy.app.WSGIProxyApp` whose transport writes to a raw
socket server on loopback, with the signing time and nonce fixed, and compared
with the page line by line.  The worked signature example is recomputed with
the standard library alone, and the page's stdlib verifier is run against
fresh requests.  The security page's behaviours that no other test covers are
checked here too, with real servers (waitress, gunicorn with TLS and client
certificates, redis-server).
"""

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import re
import shlex
import ssl
import stat
import subprocess
import sys
import tracemalloc
from unittest import mock

import pytest
import trustme
from paste.deploy import loadapp  # type: ignore[import-untyped]
from webob import Request

from wsgiproxy import protocol
from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.exactproxy import ExactProxy
from wsgiproxy.keys import new_request_id
from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.protocol import signature
from wsgiproxy.transport import HTTPTransport

from .client import JSON, add_header, call_wsgi, json_error, send_raw
from .docsnippets import snippet
from .servers import (
    BIN,
    Process,
    RawServer,
    WaitressServer,
    echo_app,
    free_port,
    scripted,
    wait_for_port,
    wait_until,
    write_secret,
)

# The worked example of docs/protocol.rst.
DOC_SECRET = "correct horse battery staple 2024"
DOC_TS = 1700000000
DOC_NONCE = "0123456789abcdef0123456789abcdef"
DOC_KEY_ID = "185fb5d998412bd4"
DOC_REQUEST_ID = "8c1f0e5a27d94b36000000000000002a"  # as new_request_id() makes them


# -- capturing what WSGIProxyApp really sends -------------------------------------

class RoutedTransport(HTTPTransport):
    """The default transport, except that every backend name connects to 127.0.0.1:``port``,
    so that an example can say ``backend.internal:8080`` and still be captured for real."""

    def __init__(self, port, **options):
        super().__init__(**options)
        self.routed_port = port

    def _connect(self, key, backend):
        scheme, _, _ = key
        return super()._connect((scheme, "127.0.0.1", self.routed_port), backend)


def _answer_204(conn):
    while conn.read_request()[0] is not None:
        conn.send(b"HTTP/1.1 204 No Content\r\n\r\n")


def make_environ(method="GET", script_name="", path_info="/", query="", host="www.example.com",
                 scheme="https", remote="192.0.2.7", headers=(), body=b"", **extra):
    """The environ a WSGI server in front of the proxy would build."""
    environ = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": script_name, "PATH_INFO": path_info,
        "QUERY_STRING": query, "SERVER_NAME": host.partition(":")[0],
        "SERVER_PORT": "443" if scheme == "https" else "80", "HTTP_HOST": host,
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": scheme, "REMOTE_ADDR": remote,
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
    }
    if body:
        environ["CONTENT_LENGTH"] = str(len(body))
    for name, value in headers:
        if name.lower() == "content-type":
            environ["CONTENT_TYPE"] = value
        else:
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    environ.update(extra)
    return environ


def with_doc_time_and_nonce(sign):
    """``sign`` (the signing function the app calls) with the page's timestamp and nonce."""
    return lambda *args, **kwargs: sign(*args, **dict(kwargs, now=DOC_TS, nonce=DOC_NONCE))


def capture(href, environ, fixed=True, **options):
    """The bytes a WSGIProxyApp(href, **options) sends for ``environ``: head, blank line, body.

    With ``fixed``, the signature uses the page's timestamp and nonce.
    """
    with RawServer(_answer_204) as raw:
        app = WSGIProxyApp(href, transport=RoutedTransport(raw.port), **options)
        patch = (mock.patch.object(signature, "sign", with_doc_time_and_nonce(signature.sign))
                 if fixed else mock.patch.dict({}))
        with patch, mock.patch.object(new_request_id, "next", lambda: DOC_REQUEST_ID):
            status, _, _ = call_wsgi(app, environ)
        app.close()
        assert status == "204 No Content", status
        wait_until(lambda: raw.requests, what="the request to arrive")
        head, data = raw.requests[0]
    return head + b"\r\n\r\n" + data


def as_page_text(data):
    """Wire bytes as an ``http`` block shows them: LF line ends, no trailing spaces."""
    text = data.decode("latin-1").replace("\r\n", "\n")
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")) + "\n"


def from_page_text(text):
    """An ``http`` block back to wire bytes (CRLF; a blank line ends the head)."""
    head, _, body = text.strip("\n").partition("\n\n")
    return (head.replace("\n", "\r\n") + "\r\n\r\n" + body).encode("latin-1")


def parse_request(data):
    """``(method, path, query, headers, body)`` of a raw request (headers as (name, value))."""
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _ = request_line.split(" ")
    path, _, query = target.partition("?")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name, value.strip(" \t")))
    return method, path, query, headers, body


def header(headers, name):
    values = [value for key, value in headers if key.lower() == name.lower()]
    assert len(values) == 1, (name, headers)
    return values[0]


@pytest.fixture
def doc_secret(tmp_path):
    """The secret file of the page's worked example."""
    return write_secret(tmp_path, DOC_SECRET)


def get_example(secret_file):
    """The signed GET of the worked example."""
    environ = make_environ("GET", "/shop", "/app/caf\xc3\xa9", "page=2",
                           headers=[("User-Agent", "curl/8.5")], REMOTE_USER="bob")
    return capture("http://backend.internal:8080", environ, secret_file=secret_file,
                   string_keys=["REMOTE_USER"])


def post_example(secret_file):
    """The signed POST whose body the signature covers."""
    body = b'{"qty":1}'
    environ = make_environ("POST", "", "/orders", host="shop.example", scheme="http",
                           remote="2001:db8::7", headers=[("Content-Type", "application/json")],
                           body=body)
    return capture("http://backend.internal:8080/api?v=2", environ, secret_file=secret_file,
                   sign_body_max=65536)


KEY_VALUES = {"REMOTE_USER": "bob", "greeting": " hello\n",
              "repoze.who.identity": {"groups": ["admin"], "name": "Zo\u00eb"}}


def keys_example():
    """An unsigned request carrying key headers of two kinds."""
    environ = make_environ("GET", "", "/profile", headers=[("Accept", "text/html")], **KEY_VALUES)
    return capture("http://backend.internal:8080", environ,
                   string_keys=["REMOTE_USER", "greeting"], json_keys=["repoze.who.identity"])


def page(shown):
    """A snippet's text with trailing spaces removed (as :func:`as_page_text` gives)."""
    return "\n".join(line.rstrip() for line in shown.text.strip("\n").split("\n")) + "\n"


def b64url(digest):
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# == docs/protocol.rst ===============================================================

def test_signed_get_example_is_what_wsgiproxyapp_sends(doc_secret):
    assert page(snippet("protocol-example-get")) == as_page_text(get_example(doc_secret))


def test_body_example_is_what_wsgiproxyapp_sends(doc_secret):
    sent = post_example(doc_secret)
    assert page(snippet("protocol-example-body")) == as_page_text(sent)
    method, path, query, headers, body = parse_request(sent)
    digest = protocol.parse_signature(header(headers, "X-WSGIProxy-Signature")).body_digest
    assert body == b'{"qty":1}' and digest == b64url(hashlib.sha256(body).digest())


def test_key_headers_example_is_what_wsgiproxyapp_sends():
    sent = keys_example()
    assert page(snippet("protocol-example-keys")) == as_page_text(sent)
    _, _, _, headers, _ = parse_request(sent)
    decoded = dict(protocol.decode_key_header(name, value) for name, value in headers
                   if protocol.key_header_kind(name))
    assert decoded == KEY_VALUES


def test_worked_signature_example_recomputed_with_the_stdlib():
    """The canonical string and the values shown follow from the request shown, by the rules
    of the page, with hmac and hashlib alone -- and wsgiproxy agrees."""
    request = from_page_text(page(snippet("protocol-example-get")))
    method, path, query, headers, _ = parse_request(request)
    fields = dict(part.strip().split("=", 1) for part in
                  header(headers, "X-WSGIProxy-Signature")[3:].split(","))
    values = dict(re.split(r"\s{2,}", line, maxsplit=1)
                  for line in page(snippet("protocol-example-values")).splitlines())
    assert values["secret"] == DOC_SECRET
    secret = DOC_SECRET.encode()
    assert values["key id"] == fields["kid"] == DOC_KEY_ID == \
        hashlib.sha256(b"wsgiproxy-key-id:" + secret).hexdigest()[:16]
    canonical = page(snippet("protocol-example-canonical")).rstrip("\n")
    assert canonical == protocol.canonical_request(
        method, header(headers, "Host"), path, query, int(fields["ts"]), fields["nonce"],
        fields["body"], headers).decode("latin-1")
    sig = b64url(hmac.new(secret, canonical.encode("latin-1"), hashlib.sha256).digest())
    assert values["sig"] == fields["sig"] == sig
    assert fields["ts"] == str(DOC_TS) and fields["nonce"] == DOC_NONCE


def test_stdlib_verifier_checks_the_example_and_real_requests(doc_secret, tmp_path):
    """The page's verifier (hmac/hashlib/urllib only) accepts what WSGIProxyApp really sends,
    agrees with wsgiproxy on the key id, and refuses tampered copies."""
    # The snippet itself asserts that the example verifies.
    namespace = snippet("protocol-verify-stdlib").run({"__name__": "protocol_verify_stdlib"})
    verify = namespace["verify"]
    assert namespace["EXAMPLE"] == from_page_text(page(snippet("protocol-example-get")))
    # Fresh requests: real time and nonce, a rotated file (the first key signs), every
    # kind of key, an encoded path, href's path and query, a body digest.
    path = tmp_path / "rotated.txt"
    path.write_text("# new\nthe-new-secret-0123456789abcdef\n" + DOC_SECRET + "\n")
    secrets = [b"the-new-secret-0123456789abcdef", DOC_SECRET.encode()]
    options = dict(secret_file=str(path), string_keys=["REMOTE_USER"],
                   unicode_keys=["name"], json_keys=["roles"], pickle_keys=["extra"],
                   sign_body_max=1000)
    environ = dict(REMOTE_USER="b\xf6b", name="Zo\u00eb \u2603", roles=["admin"],
                   extra={1, 2})
    sent = [
        capture("http://backend.internal:8080/base?x=1",
                make_environ("GET", "/mount", "/a b/caf\xc3\xa9/%2F", "q=%20&r=1", **environ),
                fixed=False, **options),
        capture("http://Backend.Internal:81",
                make_environ("PUT", "", "/upload", body=b"\x00binary\xff" * 10,
                             headers=[("Content-Type", "application/octet-stream")], **environ),
                fixed=False, **options),
    ]
    expected = protocol.key_id_for(secrets[0])
    for request in sent:
        assert verify(request, secrets) == expected
        method, req_path, query, headers, body = parse_request(request)
        assert protocol.verify_request(
            protocol.SecretKeys.from_secrets(secrets), header(headers, "X-WSGIProxy-Signature"),
            method, header(headers, "Host"), req_path, query, headers, body=body or None) == expected
        for old, new in ((b"X-Forwarded-Scheme: ", b"X-Forwarded-Scheme: x"),
                         (b"X-WSGIProxy-Str-0: REMOTE_USER ", b"X-WSGIProxy-Str-0: REMOTE_USER x"),
                         (b" HTTP/1.1\r\n", b"&more=1 HTTP/1.1\r\n"),
                         (b"\r\n\r\n", b"\r\nX-Forwarded-Prefix: /evil\r\n\r\n")):
            with pytest.raises(ValueError):
                verify(request.replace(old, new, 1), secrets)
        with pytest.raises(ValueError, match="unknown key"):
            verify(request, secrets[1:])
        with pytest.raises(ValueError, match="expired"):
            verify(request, secrets, now=int(header(headers, "X-WSGIProxy-Signature").split(
                "ts=")[1].split(",")[0]) + 301)
    with pytest.raises(ValueError, match="body mismatch"):
        verify(sent[1][:-1] + b"!", secrets)


def test_refused_error_example_is_what_the_middleware_answers():
    keys = protocol.SecretKeys.from_secrets([DOC_SECRET])
    middleware = WSGIProxyMiddleware(echo_app, secret_file=keys)

    def deliver():
        headers = [("X-WSGIProxy-Version", "1")]
        signature = protocol.sign_request(keys, "GET", "backend.internal:8080", "/", "", headers,
                                          nonce=DOC_NONCE)
        return Request.blank("/", headers=dict(headers, **{
            "Host": "backend.internal:8080", "X-WSGIProxy-Signature": signature,
            "Accept": "application/json"})).get_response(middleware)

    assert deliver().status_int == 200
    refused = deliver()
    assert refused.status_int == 403 and refused.content_type == "application/json"
    assert refused.json == json.loads(snippet("protocol-example-refused").text)


def test_versions_and_unknown_protocol_headers():
    """What the page's "Versions" section says a receiver does."""
    keys = protocol.SecretKeys.from_secrets([DOC_SECRET])
    app = WSGIProxyMiddleware(echo_app, secret_file=keys)

    def send(headers, version="v1"):
        signature = protocol.sign_request(keys, "GET", "b", "/", "", headers)
        headers = dict(headers, Host="b", Accept="application/json")
        headers["X-WSGIProxy-Signature"] = version + signature[2:]
        return Request.blank("/", headers=headers).get_response(app)

    assert send([("X-WSGIProxy-Version", "1")]).status_int == 200
    assert send([]).status_int == 200  # no version header: accepted
    res = send([("X-WSGIProxy-Version", "2")])
    assert "X-WSGIProxy-Version" in json_error(res, 400)["message"]
    res = send([("X-WSGIProxy-Version", "1")], version="v2")
    assert "malformed" in json_error(res, 403)["message"]
    res = send([("X-WSGIProxy-Version", "1"), ("X-WSGIProxy-Future-Thing", "x")])
    assert res.status_int == 200  # signed, ignored, removed
    assert not [k for k in res.json if k.startswith("HTTP_X_WSGIPROXY")]


# == docs/security.rst ===============================================================

def test_untrusted_requests_keep_their_forwarded_headers_in_the_environ():
    """Ignored, not removed: only X-WSGIProxy-* is taken out of an untrusted request."""
    app = WSGIProxyMiddleware(echo_app, trust_ips="10.0.0.1")
    seen = Request.blank("/", remote_addr="192.0.2.1", headers={
        "X-Forwarded-Proto": "https", "X-Forwarded-For": "1.2.3.4", "Forwarded": "for=1.2.3.4",
        "X-WSGIProxy-Str-0": "REMOTE_USER admin"}).get_response(app).json
    assert (seen["REMOTE_ADDR"], seen["wsgi.url_scheme"]) == ("192.0.2.1", "http")
    assert "REMOTE_USER" not in seen
    assert not [key for key in seen if key.startswith("HTTP_X_WSGIPROXY")]
    assert seen["HTTP_X_FORWARDED_PROTO"] == "https" and seen["HTTP_FORWARDED"] == "for=1.2.3.4"


def test_loopback_default_believes_what_a_local_reverse_proxy_passes_on():
    """The danger the page warns about: a same-host proxy that forwards client headers."""
    forged = {"X-WSGIProxy-Str-0": "REMOTE_USER admin", "X-Forwarded-For": "198.51.100.1"}
    passes_everything_on = ExactProxy()
    with WaitressServer(WSGIProxyMiddleware(echo_app)) as backend:
        seen = Request.blank("/", headers=forged, environ={
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(backend.port),
            "REMOTE_ADDR": "203.0.113.66"}).get_response(passes_everything_on).json
    assert (seen["REMOTE_USER"], seen["REMOTE_ADDR"]) == ("admin", "198.51.100.1")
    keys = protocol.SecretKeys.from_secrets([DOC_SECRET])
    with WaitressServer(WSGIProxyMiddleware(echo_app, secret_file=keys)) as backend:
        res = Request.blank("/", headers=forged, environ={
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(backend.port),
            "HTTP_ACCEPT": "application/json"}).get_response(passes_everything_on)
    assert "missing" in json_error(res, 403)["message"]
    passes_everything_on.close()


def test_x_for_counts_wsgiproxyapp_as_one_proxy(doc_secret):
    """nginx (10.0.0.5) -> WSGIProxyApp -> backend: the client is second from the right."""
    seen = {}
    for x_for in (1, 2):
        backend_app = WSGIProxyMiddleware(echo_app, secret_file=doc_secret, x_for=x_for)
        with WaitressServer(backend_app) as backend:
            proxy = WSGIProxyApp(backend.url, secret_file=doc_secret, trusted_proxies="10.0.0.5")
            seen[x_for] = Request.blank("/", remote_addr="10.0.0.5", headers={
                # what nginx's $proxy_add_x_forwarded_for makes of a client's forged value
                "X-Forwarded-For": "6.6.6.6, 203.0.113.9"}).get_response(proxy).json
            proxy.close()
    assert seen[2]["REMOTE_ADDR"] == "203.0.113.9"
    assert seen[1]["REMOTE_ADDR"] == "10.0.0.5"
    assert seen[2]["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, 203.0.113.9, 10.0.0.5"


def test_body_digest_covers_bodies_up_to_sign_body_max(doc_secret):
    """Bodies up to sign_body_max are covered, above the 64 KiB streaming threshold too;
    larger ones stream, unsigned."""
    digests = {}
    for size in (1, 65536, 65537, 200000, 200001):
        body = b"x" * size
        sent = capture("http://backend.internal", make_environ("POST", body=body), fixed=False,
                       secret_file=doc_secret, sign_body_max=200000)
        _, _, _, headers, received = parse_request(sent)
        assert received == body
        digests[size] = protocol.parse_signature(header(headers, "X-WSGIProxy-Signature")).body_digest
    for size in (1, 65536, 65537, 200000):
        assert digests[size] == protocol.signature._body_digest(b"x" * size)
    assert digests[200001] == "-"


def test_connection_header_cannot_remove_the_proxys_identity_headers(doc_secret):
    backend_app = WSGIProxyMiddleware(echo_app, secret_file=doc_secret, trust_ips="127.0.0.1")
    with WaitressServer(backend_app) as backend:
        proxy = WSGIProxyApp(backend.url, secret_file=doc_secret)
        seen = Request.blank("/", remote_addr="203.0.113.9", headers={
            "Connection": "X-Forwarded-For, X-WSGIProxy-Signature"}).get_response(proxy).json
        proxy.close()
    assert seen["REMOTE_ADDR"] == "203.0.113.9"


def test_cr_lf_nul_in_values_the_proxy_signs_never_reach_the_backend(doc_secret):
    with RawServer(scripted()) as raw:
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % raw.port, secret_file=doc_secret)
        for environ in ({"HTTP_HOST": "a\r\nX-Injected: 1"}, {"REMOTE_ADDR": "1.2.3.4\nX: 1"},
                        {"HTTP_HOST": "a\x00b"}, {"HTTP_HOST": "caf\u00e9\u20ac"}):
            req = Request.blank("/")
            req.environ.update(environ)
            assert req.get_response(proxy).status_int == 400, environ
        proxy.close()
    assert raw.requests == [] and raw.connections == 0


def test_memory_nonce_store_holds_a_nonce_in_about_200_bytes():
    store = protocol.MemoryNonceStore(clock=lambda: 0)
    nonces = [os.urandom(16).hex() for _ in range(20000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for nonce in nonces:
            assert store.check_and_add(DOC_KEY_ID, nonce, 10 ** 9)
        per_nonce = (tracemalloc.get_traced_memory()[0] - before) / len(nonces)
    finally:
        tracemalloc.stop()
    assert per_nonce < 250, per_nonce
    assert protocol.DEFAULT_NONCE_CAPACITY == 500000  # "about 1,600 a second over 300 s"
    assert protocol.DEFAULT_NONCE_CAPACITY / protocol.DEFAULT_SIGNATURE_WINDOW > 1600


def test_secret_file_replaced_by_rename_is_reloaded(tmp_path):
    """Atomic replacement: same size, same mtime, new inode -- still reloaded."""
    path = tmp_path / "secret.txt"
    path.write_text("old-secret-0123456789abcdef\n")
    keys = protocol.SecretKeys(str(path), check_interval=0)
    assert keys.signing_key()[1] == b"old-secret-0123456789abcdef"
    new = tmp_path / "secret.txt.new"
    new.write_text("new-secret-0123456789abcdef\n")
    mtime = os.stat(path).st_mtime_ns
    os.utime(new, ns=(mtime, mtime))
    os.replace(new, path)
    assert keys.signing_key()[1] == b"new-secret-0123456789abcdef"


def test_making_a_secret_file(tmp_path, caplog):
    shown = snippet("security-make-secret")
    commands, output = shown.commands(), shown.output()
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run(["sh", "-ec", "\n".join(commands)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "secret.txt"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    [shown] = output
    mode, _, _, _, size = shown.split()[:5]
    assert done.stdout.split()[0] == mode == "-rw-------"
    assert int(size) == os.stat(path).st_size == 44
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.protocol"):
        keys = protocol.SecretKeys(str(path))
    assert len(keys.signing_key()[1]) == 43 and not caplog.records


# -- the production configuration: TLS with client certificates, Redis, gunicorn ------

def tls_files(directory):
    """The certificates and keys the security page's snippets name, from two test CAs."""
    backend_ca, proxy_ca = trustme.CA(), trustme.CA()
    backend_ca.cert_pem.write_to_path(str(directory / "backend-ca.pem"))
    proxy_ca.cert_pem.write_to_path(str(directory / "proxy-ca.pem"))
    server = backend_ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(directory / "backend-cert.pem"))
    server.private_key_pem.write_to_path(str(directory / "backend-key.pem"))
    client = proxy_ca.issue_cert("proxy.internal")
    client.cert_chain_pems[0].write_to_path(str(directory / "proxy-cert.pem"))
    client.private_key_pem.write_to_path(str(directory / "proxy-key.pem"))


def tls_send(port, directory, data):
    """Send raw bytes over TLS with the proxy's client certificate; the answer, to EOF."""
    ctx = ssl.create_default_context(cafile=str(directory / "backend-ca.pem"))
    ctx.load_cert_chain(str(directory / "proxy-cert.pem"), str(directory / "proxy-key.pem"))
    return send_raw(port, data, ssl_context=ctx)


@pytest.mark.timeout(90)
def test_production_configuration_over_tls(tmp_path, redis_server):
    """The page's proxy.ini, backend.ini and gunicorn command, for real: 4 workers with TLS
    and client certificates, one Redis nonce store, only signed requests believed."""
    port = free_port()
    tls_files(tmp_path)
    (tmp_path / "secret.txt").write_text("production-test-secret-0123456789abcdef\n")
    backend_ini = snippet("security-backend").text
    assert "redis://127.0.0.1:6379/0" in backend_ini
    (tmp_path / "backend.ini").write_text(
        backend_ini.replace("redis://127.0.0.1:6379/0", redis_server.url))
    proxy_ini = snippet("security-proxy").text
    assert "https://backend.internal:8443" in proxy_ini
    (tmp_path / "proxy.ini").write_text(
        proxy_ini.replace("backend.internal:8443", "127.0.0.1:%d" % port))

    [command] = snippet("security-gunicorn-tls").commands()
    args = shlex.split(command.replace("10.0.0.2:8443", "127.0.0.1:%d" % port))
    assert args[0] == "gunicorn"
    log = open(str(tmp_path / "gunicorn.log"), "ab")
    with Process([os.path.join(BIN, "gunicorn")] + args[1:], cwd=str(tmp_path),
                 stdout=log, stderr=subprocess.STDOUT) as gunicorn:
        log.close()
        wait_for_port(port, process=gunicorn.proc)
        proxy = loadapp("config:proxy.ini", relative_to=str(tmp_path))

        def through_proxy(app, user="alice"):
            environ = make_environ("GET", "/shop", "/hello", "format=json",
                                   remote="203.0.113.9", headers=JSON.items(), REMOTE_USER=user)
            return Request(environ).get_response(app)

        def served():
            res = through_proxy(proxy)
            return res if res.status_int == 200 else None

        res = wait_until(served, timeout=30, what="gunicorn to answer through the proxy")
        seen = res.json
        assert (seen["REMOTE_USER"], seen["REMOTE_ADDR"]) == ("alice", "203.0.113.9")
        assert (seen["wsgi.url_scheme"], seen["HTTP_HOST"], seen["SCRIPT_NAME"]) == \
            ("https", "www.example.com", "/shop")
        assert seen["wsgiproxy.key_id"] == protocol.key_id_for(
            b"production-test-secret-0123456789abcdef")

        # A proxy without the client certificate: no TLS session, a 502.
        no_cert = WSGIProxyApp("https://127.0.0.1:%d" % port,
                               ca_certs=str(tmp_path / "backend-ca.pem"),
                               secret_file=str(tmp_path / "secret.txt"))
        assert through_proxy(no_cert).status_int == 502
        no_cert.close()
        # With the certificate but not the secret: 403 missing.
        no_secret = WSGIProxyApp("https://127.0.0.1:%d" % port,
                                 ca_certs=str(tmp_path / "backend-ca.pem"),
                                 cert_file=str(tmp_path / "proxy-cert.pem"),
                                 key_file=str(tmp_path / "proxy-key.pem"))
        assert "missing" in json_error(through_proxy(no_secret), 403)["message"]
        no_secret.close()

        # A signed request recorded on the way, sent again: once, then refused by
        # every worker (they share the Redis store).
        recorded = capture("http://127.0.0.1:%d" % port, make_environ(
            "GET", "", "/replayed", "format=json", REMOTE_USER="alice"), fixed=False,
            secret_file=str(tmp_path / "secret.txt"), string_keys=["REMOTE_USER"])
        recorded = add_header(add_header(recorded, "Connection", "close"),
                              "Accept", "application/json")
        answers = [tls_send(port, tmp_path, recorded) for _ in range(6)]
        assert answers[0].startswith(b"HTTP/1.1 200"), answers[0][:300]
        for answer in answers[1:]:
            assert "replayed" in json_error(answer, 403)["message"], answer[:300]
        proxy.close()


def test_trust_everyone_warns_and_loopback_default_covers_mapped_addresses(caplog):
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.middleware"):
        everyone = WSGIProxyMiddleware(echo_app, trust_ips="*")
    assert "trust_ips = *" in caplog.text
    forged = {"X-WSGIProxy-Str-0": "REMOTE_USER admin"}
    seen = Request.blank("/", remote_addr="198.51.100.7", headers=forged).get_response(everyone)
    assert seen.json["REMOTE_USER"] == "admin"
    default = WSGIProxyMiddleware(echo_app)
    for addr, trusted in (("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
                          ("::ffff:127.0.0.1", True), ("10.0.0.1", False), ("::2", False)):
        seen = Request.blank("/", remote_addr=addr, headers=forged).get_response(default).json
        assert (seen.get("REMOTE_USER") == "admin") is trusted, addr


def test_a_key_of_the_wrong_type_is_a_500_naming_the_key_and_nothing_is_sent(caplog):
    with RawServer(scripted()) as raw:
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % raw.port, string_keys=["user.id"])
        req = Request.blank("/")
        req.environ["user.id"] = 42
        with caplog.at_level(logging.ERROR, logger="wsgiproxy.app"):
            assert req.get_response(proxy).status_int == 500
        proxy.close()
    assert "user.id" in caplog.text and raw.connections == 0


def test_backend_certificate_host_name_is_checked(tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(ctx)  # valid, but for another name
    with RawServer(scripted(), ssl_context=ctx) as server:
        proxy = WSGIProxyApp("https://127.0.0.1:%d" % server.port,
                             ca_certs=str(tmp_path / "ca.pem"))
        res = Request.blank("/", headers=JSON).get_response(proxy)
        proxy.close()
    assert "certificate verification failed" in json_error(res, 502)["message"]


def test_secret_file_lines(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_bytes(b"  # a comment\n\n\tfirst-secret-0123456789  \nfirst-secret-0123456789\n"
                     b"second-secret-0123456789\n")
    keys = protocol.SecretKeys(str(path))
    assert keys.key_ids == [protocol.key_id_for(b"first-secret-0123456789"),
                            protocol.key_id_for(b"second-secret-0123456789")]
