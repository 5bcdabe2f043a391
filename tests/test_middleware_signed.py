"""WSGIProxyMiddleware and signed requests: tampering, replays, bodies, rotation, nonce stores."""

import io
import logging
import os
import time

import pytest
from webob import Request

from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.protocol import SecretKeys, key_id_for, sign_request

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
    signed,
)

# -- signatures ---------------------------------------------------------------

def test_signed_request_is_trusted_from_any_address():
    app, mw = make(secret_file=KEYS)
    resp = signed("/backend/caf%C3%A9/a%2Fb", query="q=1", headers=IDENTITY).get_response(mw)
    assert resp.status_int == 200, resp.text
    env = app.environ
    assert Request(env).path_url == "https://www.example.com/shop/caf%C3%A9/a/b"
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    assert env["wsgiproxy.key_id"] == key_id_for(SECRET.encode())
    assert "HTTP_X_WSGIPROXY_SIGNATURE" not in env


@pytest.mark.parametrize("tamper", ["path", "host", "query", "method", "forwarded header",
                                    "added header", "removed header", "key header"])
def test_tampered_requests_are_refused(tamper, caplog):
    app, mw = make(secret_file=KEYS)
    req = signed("/backend/a", query="q=1", headers=IDENTITY + [
        ("X-WSGIProxy-Str-0", "REMOTE_USER bob")], method="POST", body=b"")
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
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.middleware"):
        check_refused(mw, req, "bad signature")
    assert app.calls == 0
    assert "bad signature" in caplog.text and SECRET not in caplog.text


def test_forged_expired_replayed_missing_unknown():
    app, mw = make(secret_file=KEYS, signature_window=60)
    check_refused(mw, blank(headers=dict(IDENTITY), remote_addr=PROXY_ADDR), "missing")
    check_refused(mw, signed(now=time.time() - 120), "expired")
    check_refused(mw, signed(now=time.time() + 120), "expired")
    req = signed("/backend/a", headers=IDENTITY)
    assert req.copy().get_response(mw).status_int == 200
    check_refused(mw, req, "replayed")
    other = SecretKeys.from_secrets(["some-other-secret-0123456789"])
    check_refused(mw, signed(keys=other), "unknown key")
    forged = signed()
    forged.headers["X-WSGIProxy-Signature"] = forged.headers["X-WSGIProxy-Signature"][:-5] + "AAAAA"
    check_refused(mw, forged, "bad signature")
    assert app.calls == 1


def test_loopback_cannot_forge_identity_when_a_secret_is_configured():
    app, mw = make(secret_file=KEYS)
    check_refused(mw, blank(headers=dict(IDENTITY), remote_addr="127.0.0.1"), "missing")
    # ... unless trust_ips names it
    app, mw = make(secret_file=KEYS, trust_ips="127.0.0.1")
    resp = call(mw, "/backend/a", headers=dict(IDENTITY), remote_addr="127.0.0.1")
    assert resp.status_int == 200 and app.environ["REMOTE_ADDR"] == "203.0.113.9"
    # a trusted address with a bad signature is still refused
    req = signed(remote_addr="127.0.0.1")
    req.query_string = "x"
    check_refused(mw, req, "bad signature")


def test_require_signature_false_serves_unsigned_requests_untrusted():
    app, mw = make(secret_file=KEYS, require_signature=False)
    resp = call(mw, "/backend/a", headers=dict(IDENTITY), remote_addr="127.0.0.1")
    assert resp.status_int == 200
    assert (app.environ["REMOTE_ADDR"], app.environ["PATH_INFO"]) == ("127.0.0.1", "/backend/a")


def test_body_digest():
    app, mw = make(secret_file=KEYS)
    resp = signed(method="POST", body=b"payload", digest=True).get_response(mw)
    assert resp.status_int == 200 and resp.json["body"] == "payload"
    req = signed(method="POST", body=b"payload", digest=True)
    req.body = b"PAYLOAD"
    check_refused(mw, req, "body mismatch")
    # a body with no Content-Length, read to the end (servers that de-chunk, like gunicorn)
    req = signed(method="POST", body=b"streamed", digest=True)
    del req.environ["CONTENT_LENGTH"]
    req.environ["wsgi.input_terminated"] = True
    resp = req.get_response(mw)
    assert resp.status_int == 200 and resp.json["body"] == "streamed"


def test_body_digest_size_limit():
    app, mw = make(secret_file=KEYS, max_signed_body_size=10)
    check_refused(mw, signed(method="POST", body=b"x" * 11, digest=True), "max_signed_body_size")
    req = signed(method="POST", body=b"x" * 11, digest=True)
    del req.environ["CONTENT_LENGTH"]
    req.environ["wsgi.input_terminated"] = True
    check_refused(mw, req, "max_signed_body_size")
    assert app.calls == 0


def test_require_body_digest():
    app, mw = make(secret_file=KEYS, require_body_digest=True)
    check_refused(mw, signed(method="POST", body=b"unchecked"), "body mismatch")
    assert signed(method="GET").get_response(mw).status_int == 200
    assert signed(method="POST", body=b"ok", digest=True).get_response(mw).status_int == 200
    req = signed(method="POST", body=b"")
    del req.environ["CONTENT_LENGTH"]
    req.environ["wsgi.input_terminated"] = True
    assert req.get_response(mw).status_int == 200


def test_short_body_is_a_400():
    app, mw = make(secret_file=KEYS)
    req = signed(method="POST", body=b"payload", digest=True)
    req.environ["wsgi.input"] = io.BytesIO(b"pay")
    assert req.get_response(mw).status_int == 400


def test_secret_rotation_through_the_file(tmp_path):
    path = tmp_path / "secret"
    old, new = "old-secret-0123456789abcdef", "new-secret-0123456789abcdef"
    path.write_text(old + "\n")
    keys = SecretKeys(str(path), check_interval=0)
    app, mw = make(secret_file=keys)
    old_keys, new_keys = SecretKeys.from_secrets(old), SecretKeys.from_secrets(new)

    def rewrite(text, bump):
        path.write_text(text)
        mtime = os.stat(path).st_mtime_ns + bump * 1_000_000_000
        os.utime(path, ns=(mtime, mtime))

    assert signed(keys=old_keys).get_response(mw).status_int == 200
    rewrite(new + "\n" + old + "\n", 1)  # step 1: both keys everywhere
    assert signed(keys=old_keys).get_response(mw).status_int == 200
    assert signed(keys=new_keys).get_response(mw).status_int == 200
    rewrite(new + "\n", 2)  # step 2: the old key is gone
    check_refused(mw, signed(keys=old_keys), "unknown key")
    assert signed(keys=new_keys).get_response(mw).status_int == 200


def test_secret_file_path_and_bad_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    app, mw = make(secret_file=str(path))
    assert signed().get_response(mw).status_int == 200
    path.write_text("")
    with pytest.raises(ValueError, match=str(path)):
        WSGIProxyMiddleware(Recorder(), secret_file=str(path))
    with pytest.raises(ValueError, match="missing-file"):
        WSGIProxyMiddleware(Recorder(), secret_file=str(tmp_path / "missing-file"))


class SharedStore:
    def __init__(self):
        self.seen = set()

    def check_and_add(self, key_id, nonce, expires_at):
        if (key_id, nonce) in self.seen:
            return False
        self.seen.add((key_id, nonce))
        return True


def test_nonce_store_is_shared_between_instances():
    store = SharedStore()
    _, first = make(secret_file=KEYS, nonce_store=store)
    _, second = make(secret_file=KEYS, nonce_store=store)
    req = signed()
    assert req.copy().get_response(first).status_int == 200
    check_refused(second, req, "replayed")


# -- the body of a signed request is read only after the HMAC is checked -----------------

class RecordingInput:
    """wsgi.input that counts its reads."""

    def __init__(self, data):
        self.stream = io.BytesIO(data)
        self.reads = 0

    def read(self, *args):
        self.reads += 1
        return self.stream.read(*args)


def with_recording_input(req):
    req.environ["wsgi.input"] = recorder = RecordingInput(req.body)
    req.is_body_seekable = False  # so that webob does not rewind (or read) it itself
    return req, recorder


def test_body_is_not_read_before_the_signature_is_checked(caplog):
    app, mw = make(secret_file=KEYS, signature_window=60)
    body = b"x" * 1000
    refused = []
    bad_hmac = signed(method="POST", body=body, digest=True)
    value = bad_hmac.headers["X-WSGIProxy-Signature"]
    bad_hmac.headers["X-WSGIProxy-Signature"] = value[:-5] + ("AAAAA" if value[-5:] != "AAAAA"
                                                                else "BBBBB")
    refused.append((bad_hmac, "bad signature"))
    tampered = signed("/a", method="POST", body=body, digest=True)
    tampered.path_info = "/admin"
    refused.append((tampered, "bad signature"))
    refused.append((signed(method="POST", body=body, digest=True, now=time.time() - 600),
                    "expired"))
    refused.append((signed(method="POST", body=body, digest=True,
                           keys=SecretKeys.from_secrets(["another-secret-0123456789"])),
                    "unknown key"))
    added = signed(method="POST", body=body, digest=True)
    added.headers["X-Forwarded-Host"] = "evil.example"
    refused.append((added, "bad signature"))
    for req, reason in refused:
        req, recorder = with_recording_input(req)
        check_refused(mw, req, reason)
        assert recorder.reads == 0, reason
    assert app.calls == 0
    # A valid one is read (once the checks passed) and handed on whole.
    req, recorder = with_recording_input(signed(method="POST", body=body, digest=True))
    resp = req.get_response(mw)
    assert resp.status_int == 200 and resp.json["body"] == body.decode()
    assert recorder.reads >= 1


def test_body_mismatch_does_not_use_the_nonce_up():
    app, mw = make(secret_file=KEYS)
    genuine = signed(method="POST", body=b"transfer 10", digest=True)
    altered = genuine.copy()
    altered.body = b"transfer 99"
    check_refused(mw, altered, "body mismatch")
    assert app.calls == 0
    # the refused copy did not record the nonce: the genuine request still goes through once
    assert genuine.copy().get_response(mw).status_int == 200
    check_refused(mw, genuine, "replayed")


def test_verify_request_calls_the_body_reader_only_after_the_hmac():
    from wsgiproxy.protocol import SignatureError, verify_request
    calls = []

    def reader():
        calls.append(1)
        return b"payload"

    args = ("POST", "h", "/", "", [])
    good = sign_request(KEYS, *args, body=b"payload")
    assert verify_request(KEYS, good, *args, body=reader) == KEYS.key_ids[0]
    assert calls == [1]
    forged = good.replace("sig=", "sig=A", 1)
    for signature, reason in ((forged, "bad signature|malformed"),
                              (sign_request(KEYS, *args, body=b"payload",
                                            now=time.time() - 3600), "expired")):
        with pytest.raises(SignatureError, match=reason):
            verify_request(KEYS, signature, *args, body=reader)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_request(KEYS, good, "POST", "other", "/", "", [], body=reader)
    assert calls == [1]
    # no digest claimed: never called
    plain = sign_request(KEYS, *args)
    verify_request(KEYS, plain, *args, body=reader)
    assert calls == [1]
