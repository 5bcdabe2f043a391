"""WSGIProxyMiddleware and RFC 9421 signatures: what is accepted and refused, formats,
Ed25519 keys, bound responses; then WSGIProxyApp and the middleware together on real
servers, and a backend that leaves a stray response on a pooled connection."""

import io
import logging
import sys
import time

import pytest
from webob import Request

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.errors import MessageSignatureError
from wsgiproxy.keys import PrivateKey, PublicKeys, SecretKeys, key_id_for
from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.protocol import rfc9421, sign_request, sign_request_rfc9421
from wsgiproxy.wsgiapp import make_app, make_middleware

from .client import call_wsgi, request
from .middleware_helpers import (
    IDENTITY,
    KEYS,
    PROXY_ADDR,
    SECRET,
    Recorder,
    blank,
    call,
    check_refused,
    make,
)
from .servers import TEST_SECRET, RawServer, WaitressServer, wait_until, write_secret
from .test_keys import ed25519_pem

PRIVATE_PEM, PUBLIC_PEM = ed25519_pem()
PRIVATE = PrivateKey.from_pem(PRIVATE_PEM)
PUBLIC = PublicKeys.from_pem(PUBLIC_PEM)
KID = key_id_for(SECRET.encode())


def signed(path="/", method="GET", host="backend:8080", query="", headers=(), body=None,
           digest=False, now=None, keys=KEYS, remote_addr=PROXY_ADDR, raw_uri=None):
    """A request as WSGIProxyApp(signature_format="rfc9421") sends it."""
    headers = list(headers) + [("X-WSGIProxy-Version", "1")]
    headers += sign_request_rfc9421(keys, method, host, raw_uri or path, query, headers,
                                    body=body if digest else None, now=now)
    req = blank(path + ("?" + query if query else ""), headers=dict(headers, Host=host),
                remote_addr=remote_addr, method=method)
    if raw_uri:
        req.environ["RAW_URI"] = raw_uri + ("?" + query if query else "")
    if body is not None:
        req.body = body
    return req


# -- what is accepted and refused --------------------------------------------------------

def test_signed_request_is_trusted_from_any_address():
    app, mw = make(secret_file=KEYS)
    resp = signed("/backend/caf%C3%A9/x", query="q=1", headers=IDENTITY).get_response(mw)
    assert resp.status_int == 200, resp.text
    env = app.environ
    assert Request(env).path_url == "https://www.example.com/shop/caf%C3%A9/x"
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    assert env["wsgiproxy.key_id"] == KID


def test_the_raw_path_is_what_is_covered():
    """A server that passes the request target as sent (gunicorn's RAW_URI, waitress's
    REQUEST_URI): escapes in lower case, or an encoded slash, are covered as sent."""
    app, mw = make(secret_file=KEYS)
    for raw in ("/backend/caf%c3%a9", "/backend/a%2Fb"):
        req = signed(raw, raw_uri=raw, headers=IDENTITY)
        assert req.get_response(mw).status_int == 200, raw


@pytest.mark.parametrize("tamper", ["path", "host", "query", "method", "forwarded header",
                                    "added header", "removed header", "key header",
                                    "content-digest"])
def test_tampered_requests_are_refused(tamper, caplog):
    app, mw = make(secret_file=KEYS)
    req = signed("/backend/a", query="q=1", headers=IDENTITY + [
        ("X-WSGIProxy-Str-0", "REMOTE_USER bob")], method="POST", body=b"data", digest=True)
    if tamper == "path":
        req.path_info = "/backend/admin"
    elif tamper == "host":
        req.host = "other:8080"
    elif tamper == "query":
        req.query_string = "q=2"
    elif tamper == "method":
        req.method = "DELETE"
    elif tamper == "forwarded header":
        req.headers["X-Forwarded-For"] = "10.0.0.1"
    elif tamper == "added header":
        req.headers["X-Forwarded-Prefix"] = "/evil"
    elif tamper == "removed header":
        del req.headers["X-Forwarded-Script-Name"]
    elif tamper == "key header":
        req.headers["X-WSGIProxy-Str-0"] = "REMOTE_USER admin"
    elif tamper == "content-digest":
        req.headers["Content-Digest"] = rfc9421.content_digest(b"DATA")
        req.body = b"DATA"
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.middleware"):
        check_refused(mw, req, "bad signature")
    assert app.calls == 0
    assert "Signature: bad signature" in caplog.text and SECRET not in caplog.text


def test_forged_expired_replayed_missing_unknown():
    app, mw = make(secret_file=KEYS, signature_window=60)
    check_refused(mw, signed(now=time.time() - 120), "expired")
    check_refused(mw, signed(now=time.time() + 120), "expired")
    req = signed("/backend/a", headers=IDENTITY)
    assert req.copy().get_response(mw).status_int == 200
    check_refused(mw, req, "replayed")
    check_refused(mw, signed(keys=SecretKeys.from_secrets(["another-secret-0123456789"])),
                  "unknown key")
    forged = signed()
    forged.headers["Signature"] = "wsgiproxy=:%s:" % ("A" * 43 + "=")
    check_refused(mw, forged, "bad signature")
    garbled = signed()
    garbled.headers["Signature-Input"] = "wsgiproxy=(\"@method\""
    check_refused(mw, garbled, "malformed")
    assert app.calls == 1


def test_body_digest_and_require_body_digest():
    app, mw = make(secret_file=KEYS, require_body_digest=True)
    resp = signed(method="POST", body=b"payload", digest=True).get_response(mw)
    assert resp.status_int == 200 and resp.json["body"] == "payload"
    check_refused(mw, signed(method="POST", body=b"unchecked"), "body mismatch")
    app, mw = make(secret_file=KEYS, max_signed_body_size=4)
    check_refused(mw, signed(method="POST", body=b"payload", digest=True), "max_signed_body_size")


def test_the_body_is_not_read_before_the_signature_is_checked():
    app, mw = make(secret_file=KEYS)
    reads = []

    class Input(io.BytesIO):
        def read(self, *args):
            reads.append(1)
            return super().read(*args)

    for change in ("path", "expired", None):
        req = signed("/a", method="POST", body=b"x" * 100, digest=True,
                     now=time.time() - 600 if change == "expired" else None)
        if change == "path":
            req.path_info = "/admin"
        req.environ["wsgi.input"] = Input(b"x" * 100)
        req.is_body_seekable = False
        resp = req.get_response(mw)
        assert (resp.status_int, bool(reads)) == ((403, False) if change else (200, True))


def test_ed25519_public_keys_count_like_a_secret():
    app, mw = make(public_key_file=PUBLIC)
    assert signed("/backend/x", headers=IDENTITY, keys=PRIVATE).get_response(mw).status_int == 200
    assert app.environ["wsgiproxy.key_id"] == PRIVATE.key_id
    # signatures required, no loopback trust
    check_refused(mw, blank(headers=dict(IDENTITY), remote_addr="127.0.0.1"), "missing")
    check_refused(mw, signed(keys=KEYS), "unknown key")
    # both kinds of key together
    app, mw = make(secret_file=KEYS, public_key_file=PUBLIC)
    for keys in (KEYS, PRIVATE):
        assert signed(keys=keys).get_response(mw).status_int == 200


def test_public_key_file_from_a_path(tmp_path):
    (tmp_path / "public.pem").write_bytes(PUBLIC_PEM)
    app, mw = make(public_key_file=str(tmp_path / "public.pem"))
    assert signed(keys=PRIVATE).get_response(mw).status_int == 200


def v1_signed(**kwargs):
    headers = [("X-WSGIProxy-Version", "1")]
    value = sign_request(KEYS, "GET", "backend:8080", "/", "", headers)
    return blank("/", headers=dict(headers, Host="backend:8080",
                                   **{"X-WSGIProxy-Signature": value}),
                 remote_addr=PROXY_ADDR, **kwargs)


def test_signature_formats():
    app, mw = make(secret_file=KEYS, require_signature=False)  # both, by default
    assert v1_signed().get_response(mw).status_int == 200
    assert app.environ["wsgiproxy.signature_format"] == "v1"
    assert signed().get_response(mw).status_int == 200
    assert app.environ["wsgiproxy.signature_format"] == "rfc9421"
    assert call(mw, "/").status_int == 200
    assert app.environ["wsgiproxy.signature_format"] is None
    both = signed()
    both.headers["X-WSGIProxy-Signature"] = v1_signed().headers["X-WSGIProxy-Signature"]
    check_refused(mw, both, "carries both")
    app, mw = make(secret_file=KEYS, signature_formats=["v1"])
    check_refused(mw, signed(), "missing")  # ignored: unsigned
    assert v1_signed().get_response(mw).status_int == 200
    app, mw = make(secret_file=KEYS, signature_formats="rfc9421")
    check_refused(mw, v1_signed(), "missing")
    assert signed().get_response(mw).status_int == 200
    with pytest.raises(ValueError, match="signature_formats"):
        make(secret_file=KEYS, signature_formats=["v2"])
    with pytest.raises(ValueError, match="public_key_file needs rfc9421"):
        make(public_key_file=PUBLIC, signature_formats=["v1"])


def test_another_label_or_tag_counts_as_unsigned():
    app, mw = make(secret_file=KEYS)
    for old, new in (("wsgiproxy=", "other="), ('tag="wsgiproxy"', 'tag="other"')):
        req = signed(headers=IDENTITY)
        req.headers["Signature-Input"] = req.headers["Signature-Input"].replace(old, new)
        req.headers["Signature"] = req.headers["Signature"].replace(old, new)
        check_refused(mw, req, "missing")
    # and when unsigned requests are served, served without the identity
    app, mw = make(secret_file=KEYS, require_signature=False)
    req = signed(headers=IDENTITY)
    req.headers["Signature-Input"] = req.headers["Signature-Input"].replace("wsgiproxy=", "x=")
    req.headers["Signature"] = req.headers["Signature"].replace("wsgiproxy=", "x=")
    assert req.get_response(mw).status_int == 200
    assert app.environ["REMOTE_ADDR"] == PROXY_ADDR


# -- bound responses ---------------------------------------------------------------------

def bound_to(req, resp, keys):
    """The key id of ``resp``'s signature, checked as WSGIProxyApp checks it."""
    fields = {k.lower(): v for k, v in req.headers.items()}
    sent = rfc9421.Message(fields=fields)
    return rfc9421.verify_response(keys, resp.status_int, list(resp.headerlist), sent,
                                   now=time.time())


def test_sign_responses():
    app, mw = make(secret_file=KEYS, sign_responses=True)
    req = signed("/backend/x", headers=IDENTITY)
    resp = req.copy().get_response(mw)
    assert resp.status_int == 200
    assert bound_to(req, resp, rfc9421.HMACKeys(KEYS)) == KID
    other = signed("/backend/x", headers=IDENTITY)
    with pytest.raises(MessageSignatureError, match="bad signature"):
        bound_to(other, resp, rfc9421.HMACKeys(KEYS))
    # the middleware's own refusal is signed too: the proxy can tell it from a stray
    resp = req.get_response(mw)
    assert resp.status_int == 403 and "replayed" in resp.text
    assert bound_to(req, resp, rfc9421.HMACKeys(KEYS)) == KID
    # unsigned and v1 requests get unsigned answers: there is nothing to bind to
    assert "Signature" not in v1_signed().get_response(mw).headers
    # an Ed25519 key of the backend's own
    app, mw = make(secret_file=KEYS, sign_responses=True, response_key_file=PRIVATE)
    req = signed("/backend/x", headers=IDENTITY)
    assert bound_to(req, req.get_response(mw), PUBLIC) == PRIVATE.key_id


def test_sign_responses_configuration(tmp_path):
    with pytest.raises(ValueError, match="signature_formats"):
        make(secret_file=KEYS, sign_responses=True, signature_formats=["v1"])
    with pytest.raises(ValueError, match="response_key_file or secret_file"):
        make(public_key_file=PUBLIC, sign_responses=True)
    with pytest.raises(ValueError, match="needs sign_responses"):
        make(secret_file=KEYS, response_key_file=PRIVATE)
    (tmp_path / "key.pem").write_bytes(PRIVATE_PEM)
    (tmp_path / "key.pem").chmod(0o600)
    mw = make_middleware(Recorder(), {}, public_key_file=_write(tmp_path, PUBLIC_PEM),
                         sign_responses="true", response_key_file=str(tmp_path / "key.pem"),
                         signature_formats="rfc9421")
    assert mw.signature_formats == {"rfc9421"} and mw.response_signer is not None


def _write(tmp_path, data, name="public.pem"):
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


# -- WSGIProxyApp and the middleware, on real servers -----------------------------------

@pytest.fixture
def pem_files(tmp_path):
    """(private key file, public key file) of a fresh Ed25519 key."""
    private = tmp_path / "proxy-key.pem"
    private.write_bytes(PRIVATE_PEM)
    private.chmod(0o600)
    return str(private), _write(tmp_path, PUBLIC_PEM, "proxy-public.pem")


def backend(**options):
    app = Recorder()
    return app, WaitressServer(WSGIProxyMiddleware(app, **options))


def environ(path="/app/x", method="GET", body=b"", headers=(), user="alice"):
    env = Request.blank(path, method=method, POST=None).environ
    env.update({"REMOTE_ADDR": "192.0.2.7", "REMOTE_USER": user, "wsgi.errors": sys.stderr,
                "HTTP_HOST": "www.example.com", "wsgi.input": io.BytesIO(body)})
    if body:
        env["CONTENT_LENGTH"] = str(len(body))
    for name, value in headers:
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


def test_end_to_end_hmac(secret_file):
    recorder, server = backend(secret_file=secret_file, sign_responses=True,
                               require_body_digest=True)
    with server:
        proxy = WSGIProxyApp(server.url, secret_file=secret_file, signature_format="rfc9421",
                             string_keys=["REMOTE_USER"], sign_body_max=1024,
                             verify_responses=True)
        status, headers, body = call_wsgi(proxy, environ(headers=[
            ("Signature-Input", 'wsgiproxy=("@method");tag="wsgiproxy"'),
            ("Signature", "wsgiproxy=:AAAA:")]))
        assert status == "200 OK", body
        seen = recorder.environ
        assert seen["REMOTE_USER"] == "alice" and seen["REMOTE_ADDR"] == "192.0.2.7"
        assert seen["wsgiproxy.key_id"] == key_id_for(TEST_SECRET.encode())
        assert "HTTP_X_WSGIPROXY_SIGNATURE" not in seen
        # the client's own signature was dropped, the response is the backend's, signed
        assert seen["HTTP_SIGNATURE_INPUT"].startswith('wsgiproxy=("@method" "@authority"')
        assert any(k == "Signature-Input" for k, _ in headers)
        # a covered body: the proxy's Content-Digest replaces the client's
        status, _, body = call_wsgi(proxy, environ(method="POST", body=b"order 1", headers=[
            ("Content-Digest", "sha-256=:AAAA:")]))
        assert status == "200 OK", body
        assert recorder.environ["HTTP_CONTENT_DIGEST"] == rfc9421.content_digest(b"order 1")
        proxy.close()


def test_each_host_is_signed_as_its_own_authority_with_preserve_host(secret_file):
    """The signer remembers the @authority of the last Host: a request for another Host
    (preserve_host sends the client's) is signed with its own, and back again."""
    recorder, server = backend(secret_file=secret_file)
    with server:
        proxy = WSGIProxyApp(server.url, secret_file=secret_file, signature_format="rfc9421",
                             preserve_host=True)
        for host in ("www.example.com", "shop.example:8080", "WWW.Example.com:80",
                     "www.example.com"):
            env = environ()
            env["HTTP_HOST"] = host
            status, _, body = call_wsgi(proxy, env)
            assert status == "200 OK", (host, body)
            assert recorder.environ["HTTP_HOST"] == host
            assert recorder.environ["wsgiproxy.signature_format"] == "rfc9421"
        proxy.close()


def test_end_to_end_ed25519_both_ways(tmp_path, pem_files):
    proxy_key, proxy_public = pem_files
    backend_private, backend_public = ed25519_pem()
    backend_key = _write(tmp_path, backend_private, "backend-key.pem")
    (tmp_path / "backend-key.pem").chmod(0o600)
    recorder, server = backend(public_key_file=proxy_public, sign_responses=True,
                               response_key_file=backend_key)
    with server:
        proxy = make_app({}, href=server.url, signature_format="rfc9421",
                         private_key_file=proxy_key, string_keys="REMOTE_USER",
                         verify_responses="true",
                         response_public_key_file=_write(tmp_path, backend_public,
                                                         "backend-public.pem"))
        status, _, body = call_wsgi(proxy, environ())
        assert status == "200 OK", body
        assert recorder.environ["wsgiproxy.key_id"] == PRIVATE.key_id
        assert recorder.environ["REMOTE_USER"] == "alice"
        # the proxy holds no secret: nothing here could sign as the backend, or verify v1
        assert proxy.secret_keys is None
        proxy.close()


def test_unsigned_or_foreign_responses_are_502(secret_file, tmp_path):
    recorder, server = backend(secret_file=secret_file)  # no sign_responses
    with server:
        proxy = WSGIProxyApp(server.url, secret_file=secret_file, signature_format="rfc9421",
                             verify_responses=True)
        status, _, body = call_wsgi(proxy, environ())
        assert status.startswith("502"), body
        assert b"the response is not signed" in body
        assert recorder.calls == 1  # it ran: the answer is what is refused
        assert proxy.transport.idle_connections() == 0
        proxy.close()
    other = write_secret(tmp_path, "a-different-secret-0123456789", "other.txt")
    recorder, server = backend(secret_file=secret_file, sign_responses=True)
    with server:
        proxy = WSGIProxyApp(server.url, secret_file=secret_file, signature_format="rfc9421",
                             verify_responses=True, response_public_key_file=None)
        assert call_wsgi(proxy, environ())[0] == "200 OK"
        proxy.close()
        proxy = WSGIProxyApp(server.url, secret_file=other, signature_format="rfc9421",
                             verify_responses=True)
        status, _, body = call_wsgi(proxy, environ())
        assert status.startswith("502")  # the backend refused it (403), signed with its key...
        assert b"unknown key" in body  # ...which this proxy does not have
        proxy.close()


def test_app_configuration(secret_file, pem_files):
    proxy_key, proxy_public = pem_files
    for options, message in (
            (dict(signature_format="v2"), "v1 or rfc9421"),
            (dict(signature_format="rfc9421"), "secret_file or private_key_file"),
            (dict(private_key_file=proxy_key), "signature_format = rfc9421"),
            (dict(secret_file=secret_file, verify_responses=True), "signature_format"),
            (dict(private_key_file=proxy_key, signature_format="rfc9421",
                  verify_responses=True), "response_public_key_file or secret_file"),
            (dict(secret_file=secret_file, signature_format="rfc9421", verify_responses=True,
                  transport="httplib2"), "http transport"),
            (dict(secret_file=secret_file, response_public_key_file=proxy_public),
             "needs verify_responses")):
        with pytest.raises(ValueError, match=message):
            WSGIProxyApp("http://127.0.0.1:9", **options)
    proxy = WSGIProxyApp("http://127.0.0.1:9", private_key_file=proxy_key,
                         signature_format="rfc9421", pickle_keys=["x"])
    assert isinstance(proxy.signer, PrivateKey)


# -- a stray response on a pooled connection -----------------------------------------------

def stray_backend(stray_kind):
    """A raw backend that answers each request on a connection with a response signed by
    TEST_SECRET and bound to it -- except the second request of a connection, which gets
    a stray instead, complete and alone (so nothing tells it from an answer): the first
    answer again, or an unsigned one."""
    keys = rfc9421.HMACKeys(SecretKeys.from_secrets([TEST_SECRET]))

    def answer(head):
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:])
        user = fields.get("X-WSGIProxy-Str-0", "").split(" ")[-1]
        body = b"the account of " + user.encode()
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        binding = fields["Signature"][len("wsgiproxy="):]
        headers += rfc9421.sign_response(keys, 200, headers, binding, now=time.time(),
                                         nonce="%032x" % time.monotonic_ns())
        head = "HTTP/1.1 200 OK\r\n" + "".join("%s: %s\r\n" % h for h in headers)
        return head.encode("latin-1") + b"\r\n" + body

    def handler(conn):
        served = []
        while True:
            head, _ = conn.read_request()
            if head is None:
                return
            if len(served) == 1:
                conn.send(served[0] if stray_kind == "replayed" else (
                    b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nthe account of alice"))
            else:
                conn.send(answer(head))
            served.append(answer(head))
    return handler


@pytest.mark.parametrize("stray_kind", ["replayed", "unsigned"])
@pytest.mark.parametrize("verify_responses", [True, False])
def test_a_stray_response_on_a_pooled_connection(secret_file, stray_kind, verify_responses):
    with RawServer(stray_backend(stray_kind)) as raw:
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % raw.port, secret_file=secret_file,
                             signature_format="rfc9421", string_keys=["REMOTE_USER"],
                             verify_responses=verify_responses)
        answers = [call_wsgi(proxy, environ(user="alice"))]
        answers.append(call_wsgi(proxy, environ(user="bob")))
        pooled_after_bob = proxy.transport.idle_connections()
        answers.append(call_wsgi(proxy, environ(user="carol")))
        statuses = [status for status, _, _ in answers]
        bodies = [body for _, _, body in answers]
        assert bodies[0] == b"the account of alice"
        if not verify_responses:  # the hazard the check is for: bob reads alice's answer,
            assert bodies[1] == b"the account of alice"  # and the connection is reused
            assert (pooled_after_bob, raw.connections) == (1, 1)
        else:
            assert statuses == ["200 OK", "502 Bad Gateway", "200 OK"], answers
            reason = "bad signature" if stray_kind == "replayed" else "not signed"
            assert reason.encode() in bodies[1]
            assert b"alice" not in bodies[1]
            assert bodies[2] == b"the account of carol"
            # bob's connection was closed, never pooled: carol's request opened another
            assert (pooled_after_bob, raw.connections) == (0, 2)
        proxy.close()
        wait_until(lambda: len(raw.requests) == 3, what="the three requests")


def test_a_pooled_connection_survives_good_responses(secret_file):
    recorder, server = backend(secret_file=secret_file, sign_responses=True)
    with server:
        proxy = WSGIProxyApp(server.url, secret_file=secret_file, signature_format="rfc9421",
                             verify_responses=True)
        for _ in range(3):
            assert call_wsgi(proxy, environ())[0] == "200 OK"
        assert proxy.transport.idle_connections() == 1
        proxy.close()


def test_through_a_front_server(secret_file):
    """A client of a waitress front in front of the proxy: the whole path, over HTTP."""
    recorder, server = backend(secret_file=secret_file, sign_responses=True)
    with server:
        proxy = WSGIProxyApp(server.url, secret_file=secret_file, signature_format="rfc9421",
                             verify_responses=True)
        with WaitressServer(proxy) as front:
            answer = request(front.port, "/caf%C3%A9?x=%20y", headers={"Host": "shop.example"})
        assert answer.status == 200, answer
        assert recorder.environ["PATH_INFO"] == "/caf\xc3\xa9"
        assert recorder.environ["HTTP_HOST"] == "shop.example"
        proxy.close()


def test_unsigned_answer_to_unsigned_request_with_call(secret_file):
    """An unsigned request to a signing middleware: no response signature, nothing breaks."""
    app, mw = make(secret_file=KEYS, sign_responses=True, require_signature=False)
    resp = call(mw, "/x", remote_addr="192.0.2.1")
    assert resp.status_int == 200 and "Signature" not in resp.headers
