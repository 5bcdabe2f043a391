"""WSGIProxyMiddleware: decoding, trust, forced values, ProxyFix/Forwarded, signatures.

Driven both with ``webob.Request.blank`` and through a real waitress server on
127.0.0.1, with a backend that answers its environ as JSON.
"""

import http.client
import io
import json
import logging
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from webob import Request

from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.wsgiapp import make_middleware
from wsgiproxy.protocol import (
    MemoryNonceStore, SecretKeys, encode_key_headers, encode_path_header, key_id_for,
    sign_request,
)

from .servers import WaitressServer

SECRET = "middleware-test-secret-0123456789"
KEYS = SecretKeys.from_secrets([SECRET])
PROXY_ADDR = "192.0.2.50"  # the WSGIProxyApp host, as the backend sees it


class Bomb:
    """Unpickling this creates a file: the proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class Recorder:
    """Backend app: keeps the environ it was called with and answers it as JSON."""

    def __init__(self):
        self.environ = None
        self.calls = 0

    def __call__(self, environ, start_response):
        self.calls += 1
        self.environ = environ
        body = environ["wsgi.input"].read() if "wsgi.input" in environ else b""
        data = {k: v for k, v in environ.items() if not k.startswith("wsgi.")}
        data["body"] = body.decode("latin-1")
        data["wsgi.url_scheme"] = environ.get("wsgi.url_scheme")
        out = json.dumps(data, default=repr).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(out)))])
        return [out]


def make(**options):
    app = Recorder()
    return app, WSGIProxyMiddleware(app, **options)


def blank(path="/", headers=None, remote_addr="127.0.0.1", **kw):
    environ = kw.pop("environ", {})
    if remote_addr is not None:
        environ["REMOTE_ADDR"] = remote_addr
    return Request.blank(path, headers=headers or {}, environ=environ, **kw)


def call(mw, *args, **kwargs):
    return blank(*args, **kwargs).get_response(mw)


def signed(path="/", method="GET", host="backend:8080", query="", headers=(), body=None,
           digest=False, now=None, keys=KEYS, remote_addr=PROXY_ADDR, accept=None):
    """A request as WSGIProxyApp sends it: signed over the path as sent on the wire."""
    headers = list(headers) + [("X-WSGIProxy-Version", "1")]
    signature = sign_request(keys, method, host, path, query, headers,
                             body=body if digest else None, now=now)
    all_headers = dict(headers, Host=host)
    all_headers["X-WSGIProxy-Signature"] = signature
    if accept:
        all_headers["Accept"] = accept
    req = blank(path + ("?" + query if query else ""), headers=all_headers,
                remote_addr=remote_addr, method=method)
    if body is not None:
        req.body = body
    return req


IDENTITY = [("X-Forwarded-Server", "www.example.com"), ("X-Forwarded-Scheme", "https"),
            ("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Script-Name", "/shop"),
            ("X-Traversal-Path", "/backend")]


# -- decoding -----------------------------------------------------------------

def test_wsgiproxy_headers_rebuild_the_original_environ():
    app, mw = make()
    resp = call(mw, "/backend/items/1", headers=dict(IDENTITY))
    assert resp.status_int == 200
    env = app.environ
    assert Request(env).url == "https://www.example.com/shop/items/1"
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == \
        ("www.example.com", "www.example.com", "443")
    assert (env["wsgi.url_scheme"], env["REMOTE_ADDR"]) == ("https", "203.0.113.9")
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/shop", "/items/1")
    assert env["wsgiproxy.orig"]["REMOTE_ADDR"] == "127.0.0.1"
    assert env["wsgiproxy.orig"]["HTTP_HOST"] == "localhost:80"
    assert env["wsgiproxy.key_id"] is None


def test_default_trust_is_loopback_only_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.middleware"):
        app, mw = make()
    assert "loopback" in caplog.text
    for addr in ("127.0.0.1", "127.8.0.1", "::1"):
        call(mw, headers={"X-Forwarded-For": "203.0.113.9"}, remote_addr=addr)
        assert app.environ["REMOTE_ADDR"] == "203.0.113.9"
    call(mw, "/backend/x", headers=dict(IDENTITY), remote_addr="192.0.2.1")
    env = app.environ
    assert (env["REMOTE_ADDR"], env["HTTP_HOST"], env["SCRIPT_NAME"], env["PATH_INFO"]) == \
        ("192.0.2.1", "localhost:80", "", "/backend/x")


def test_server_port_and_ipv6_hosts():
    app, mw = make()
    call(mw, headers={"X-Forwarded-Server": "www.example.com:8080"})
    assert (app.environ["SERVER_NAME"], app.environ["SERVER_PORT"]) == ("www.example.com", "8080")
    call(mw, headers={"X-Forwarded-Server": "[2001:db8::a]:8443", "X-Forwarded-Scheme": "https"})
    env = app.environ
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == \
        ("[2001:db8::a]:8443", "[2001:db8::a]", "8443")
    assert Request(env).host_url == "https://[2001:db8::a]:8443"
    call(mw, headers={"X-Forwarded-Server": "[2001:db8::a]"})
    assert app.environ["SERVER_PORT"] == "80"


def test_traversal_path():
    app, mw = make()
    call(mw, "/backend", headers={"X-Traversal-Path": "/backend/"})
    assert (app.environ["SCRIPT_NAME"], app.environ["PATH_INFO"]) == ("", "")
    call(mw, "/a", headers={"X-Traversal-Path": "/"}, environ={"SCRIPT_NAME": "/m"})
    assert (app.environ["SCRIPT_NAME"], app.environ["PATH_INFO"]) == ("/m", "/a")
    call(mw, "/backend/a", headers={"X-Traversal-Path": "backend"})  # original: no leading /
    assert app.environ["PATH_INFO"] == "/a"
    call(mw, "/caf%C3%A9/a", headers={"X-Traversal-Path": encode_path_header("/caf\xc3\xa9")})
    assert app.environ["PATH_INFO"] == "/a"
    # the backend server mounted the middleware below the traversal path
    call(mw, "/a", headers={"X-Traversal-Path": "/mount/sub", "X-Forwarded-Script-Name": "/f"},
         environ={"SCRIPT_NAME": "/mount/sub"})
    assert (app.environ["SCRIPT_NAME"], app.environ["PATH_INFO"]) == ("/f", "/a")


def test_traversal_mismatch_is_a_400_naming_both_paths():
    app, mw = make()
    resp = call(mw, "/backendx/a", headers={"X-Traversal-Path": "/backend"})
    assert resp.status_int == 400
    assert "/backend" in resp.text and "/backendx/a" in resp.text
    assert app.calls == 0


def test_script_name_headers():
    app, mw = make()
    call(mw, "/a", headers={"X-Script-Name": "/front/"}, environ={"SCRIPT_NAME": "/mounted"})
    assert app.environ["SCRIPT_NAME"] == "/front/mounted"  # the older header is prepended
    call(mw, "/a", headers={"X-Forwarded-Script-Name": "/shop"},
         environ={"SCRIPT_NAME": "/mounted"})
    assert app.environ["SCRIPT_NAME"] == "/shop"  # the original SCRIPT_NAME replaces
    call(mw, "/a", headers={"X-Forwarded-Script-Name": "/caf%C3%A9"})
    assert app.environ["SCRIPT_NAME"] == "/caf\xc3\xa9"
    resp = call(mw, "/a", headers={"X-Script-Name": "front"})
    assert resp.status_int == 400 and "X-Script-Name" in resp.text


def test_key_headers_are_decoded_with_their_types_and_removed():
    app, mw = make()
    original = {"REMOTE_USER": "b\xf6b", "greeting": " hi\n", "name": "Zo\u00eb \u2603",
                "identity": {"groups": ["admin"], "nested": [{"a": None}]}, "empty": ""}
    headers = encode_key_headers(original, string_keys=["REMOTE_USER", "greeting", "empty"],
                                 unicode_keys=["name"], json_keys=["identity"])
    call(mw, headers=dict(headers + [("X-WSGIProxy-Version", "1"),
                                      ("X-WSGIProxy-Future-Thing", "x")]))
    env = app.environ
    for key, value in original.items():
        assert env[key] == value
    assert not [k for k in env if k.startswith("HTTP_X_WSGIPROXY")]


def test_protocol_headers_are_stripped_even_when_untrusted():
    app, mw = make(trust_ips="10.0.0.0/8")
    call(mw, headers={"X-WSGIProxy-Str-0": "REMOTE_USER admin", "X-WSGIProxy-Json-0": "{"},
         remote_addr="192.0.2.1")
    assert "REMOTE_USER" not in app.environ
    assert not [k for k in app.environ if k.startswith("HTTP_X_WSGIPROXY")]


@pytest.mark.parametrize("headers, text", [
    ({"X-WSGIProxy-Str-0": "wsgi.input evil"}, "reserved"),
    ({"X-WSGIProxy-Str-0": "wsgiproxy.key_id x"}, "reserved"),
    ({"X-WSGIProxy-Str-0": "K a", "X-WSGIProxy-Unicode-0": "K b"}, "twice"),
    ({"X-WSGIProxy-Json-0": "K {"}, "X-WSGIProxy-Json-0"),
    ({"X-WSGIProxy-Str-x": "K a"}, "number"),
    ({"X-WSGIProxy-Version": "2"}, "Version"),
])
def test_bad_key_headers_are_400(headers, text):
    app, mw = make()
    resp = call(mw, headers=headers)
    assert resp.status_int == 400 and text in resp.text
    assert app.calls == 0


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-Server": "bad host/x"}, {"X-Forwarded-Server": "host:99999"},
    {"X-Forwarded-Server": "[::1"}, {"X-Forwarded-Scheme": "gopher"},
    {"X-Forwarded-Proto": "ftp"}, {"X-Forwarded-For": "not-an-ip"},
    {"X-Forwarded-For": "1.2.3.4, 999.1.1.1"}, {"X-Forwarded-Script-Name": "relative"},
    {"X-Forwarded-Script-Name": "/a%00b"}, {"X-Traversal-Path": "/nope"},
    {"X-WSGIProxy-Unicode-0": "K b64/w=="}, {"X-WSGIProxy-Str-0": "novalue"},
])
def test_malformed_headers_are_400_never_500(headers):
    app, mw = make()
    resp = call(mw, headers=headers, accept="application/json")
    assert resp.status_int == 400, resp.text
    assert resp.json["error"]["code"] == 400 and resp.json["error"]["type"] == "BadRequest"
    assert app.calls == 0


def test_signature_header_without_secret_is_ignored():
    app, mw = make()
    resp = call(mw, headers={"X-WSGIProxy-Signature": "garbage"})
    # no secret configured: the header means nothing here and is dropped
    assert resp.status_int == 200
    assert "HTTP_X_WSGIPROXY_SIGNATURE" not in app.environ
    _, mw = make(secret_file=KEYS, trust_ips="127.0.0.1")
    resp = call(mw, headers={"X-WSGIProxy-Signature": "garbage"})
    assert resp.status_int == 403 and "malformed" in resp.text


def test_blank_environ_does_not_crash():
    for options in ({}, {"prefix": "/p"}, {"pop_prefix": "/p"}, {"host": "h:81"},
                    {"domain": "d.example"}, {"port": "8080"}, {"scheme": "https"},
                    {"trust_ips": "*"}, {"secret_file": KEYS},
                    {"secret_file": KEYS, "require_signature": False}):
        app, mw = make(**options)
        statuses = []
        body = mw({}, lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(body)
        assert statuses and statuses[0][0] in "24", (options, statuses)


def test_error_bodies_follow_accept():
    app, mw = make()
    headers = {"X-Traversal-Path": "/x"}
    resp = call(mw, "/y", headers=headers, accept="application/json")
    assert resp.content_type == "application/json"
    assert resp.json["error"]["message"].startswith("The header X-Traversal-Path")
    resp = call(mw, "/y", headers=headers, accept="text/html")
    assert resp.content_type == "text/html" and "X-Traversal-Path" in resp.text
    resp = call(mw, "/y", headers=headers, method="HEAD")
    assert resp.status_int == 400 and resp.body == b""


# -- pickle -------------------------------------------------------------------

def pickle_headers(obj):
    return dict(encode_key_headers({"payload": obj}, pickle_keys=["payload"]))


def test_unsigned_pickle_is_refused_and_never_unpickled(tmp_path):
    target = tmp_path / "pwned"
    headers = pickle_headers(Bomb(str(target)))
    for options, addr in (({}, "127.0.0.1"), ({"trust_ips": "*"}, "192.0.2.1"),
                          ({"secret_file": KEYS, "trust_ips": "127.0.0.1"}, "127.0.0.1"),
                          ({"secret_file": KEYS, "require_signature": False}, "192.0.2.1")):
        app, mw = make(**options)
        resp = call(mw, headers=headers, remote_addr=addr, accept="application/json")
        assert resp.status_int == 403, options
        assert "Pickle" in resp.json["error"]["message"]
        assert app.calls == 0
    assert not target.exists()


def test_signed_pickle_is_decoded():
    app, mw = make(secret_file=KEYS)
    headers = list(pickle_headers({"set": {1, 2}, "tuple": (1, "a")}).items())
    resp = signed(headers=headers).get_response(mw)
    assert resp.status_int == 200
    assert app.environ["payload"] == {"set": {1, 2}, "tuple": (1, "a")}


def test_pickle_from_trusted_ips_needs_explicit_opt_in(caplog):
    with pytest.raises(ValueError, match="trust_ips"):
        WSGIProxyMiddleware(Recorder(), allow_pickle_from_trusted_ips=True)
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.middleware"):
        app, mw = make(trust_ips="10.0.0.1", allow_pickle_from_trusted_ips=True)
    assert "run code" in caplog.text
    resp = call(mw, headers=pickle_headers([1, {2}]), remote_addr="10.0.0.1")
    assert resp.status_int == 200 and app.environ["payload"] == [1, {2}]
    resp = call(mw, headers=pickle_headers([1]), remote_addr="10.0.0.2")
    assert resp.status_int == 403


# -- forced values ------------------------------------------------------------

def test_prefix():
    app, mw = make(prefix="/forced/")
    call(mw, "/a/b", environ={"SCRIPT_NAME": "/x"})
    assert (app.environ["SCRIPT_NAME"], app.environ["PATH_INFO"]) == ("/forced", "/a/b")


def test_pop_prefix():
    app, mw = make(pop_prefix="/app")
    call(mw, "/app/a")
    assert (app.environ["SCRIPT_NAME"], app.environ["PATH_INFO"]) == ("/app", "/a")
    call(mw, "/app")
    assert (app.environ["SCRIPT_NAME"], app.environ["PATH_INFO"]) == ("/app", "")
    resp = call(mw, "/application/a")
    assert resp.status_int == 400 and "/app" in resp.text and "/application/a" in resp.text


def test_scheme_host_domain_port():
    app, mw = make(scheme="HTTPS", host="www.example.com:8443")
    call(mw, headers={"X-Forwarded-Server": "ignored.example", "X-Forwarded-Scheme": "http"})
    env = app.environ
    assert (env["wsgi.url_scheme"], env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == \
        ("https", "www.example.com:8443", "www.example.com", "8443")
    app, mw = make(host="www.example.com:443", scheme="https")
    call(mw)
    assert (app.environ["HTTP_HOST"], app.environ["SERVER_PORT"]) == ("www.example.com", "443")
    app, mw = make(host="[2001:db8::1]")
    call(mw)
    assert (app.environ["HTTP_HOST"], app.environ["SERVER_PORT"]) == ("[2001:db8::1]", "80")
    app, mw = make(domain="example.org")
    call(mw, environ={"HTTP_HOST": "localhost:8080", "SERVER_PORT": "8080"})
    assert (app.environ["HTTP_HOST"], app.environ["SERVER_NAME"]) == \
        ("example.org:8080", "example.org")
    app, mw = make(port=8443)
    call(mw, environ={"HTTP_HOST": "localhost:8080", "SERVER_PORT": "8080"})
    assert (app.environ["HTTP_HOST"], app.environ["SERVER_PORT"]) == ("localhost:8443", "8443")
    app, mw = make(domain="example.org", port="81")
    call(mw)
    assert (app.environ["HTTP_HOST"], app.environ["SERVER_PORT"]) == ("example.org:81", "81")


@pytest.mark.parametrize("options, message", [
    (dict(prefix="/a", pop_prefix="/b"), "exclude each other"),
    (dict(host="h:1", domain="d"), "host excludes"),
    (dict(host="h:1", port=2), "host excludes"),
    (dict(scheme="ftp"), "scheme"),
    (dict(host="bad host"), "host"),
    (dict(domain="d:80"), "domain"),
    (dict(port="http"), "port"),
    (dict(port=70000), "port"),
    (dict(prefix="relative"), "prefix"),
    (dict(pop_prefix="/"), "pop_prefix"),
    (dict(x_for=-1), "x_for"),
    (dict(forwarded="1"), "forwarded"),
    (dict(trust_ips="localhost"), "trusted address"),
    (dict(require_signature=True), "secret_file"),
    (dict(signature_window=0), "signature_window"),
])
def test_invalid_configuration_fails_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        WSGIProxyMiddleware(Recorder(), **options)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="bogus"):
        WSGIProxyMiddleware(Recorder(), bogus=1)


# -- front proxies: ProxyFix and Forwarded --------------------------------------

def test_proxyfix_semantics():
    app, mw = make(trust_ips="10.0.0.0/8", x_for=2, x_proto=1, x_host=1, x_port=1, x_prefix=1)
    call(mw, "/a", remote_addr="10.0.0.2", headers={
        "X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.0.0.1",
        "X-Forwarded-Proto": "http, https", "X-Forwarded-Host": "evil, www.example.com",
        "X-Forwarded-Port": "8443", "X-Forwarded-Prefix": "/pre/"})
    env = app.environ
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    assert env["wsgi.url_scheme"] == "https"
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == \
        ("www.example.com:8443", "www.example.com", "8443")
    assert env["SCRIPT_NAME"] == "/pre"
    assert Request(env).url == "https://www.example.com:8443/pre/a"


def test_proxyfix_ignores_headers_with_fewer_values_than_trusted():
    app, mw = make(trust_ips="10.0.0.0/8", x_for=2, x_host=2)
    call(mw, remote_addr="10.0.0.2", headers={"X-Forwarded-For": "203.0.113.9",
                                             "X-Forwarded-Host": "www.example.com"})
    assert (app.environ["REMOTE_ADDR"], app.environ["HTTP_HOST"]) == ("10.0.0.2", "localhost:80")


def test_proxyfix_defaults_and_zero():
    app, mw = make(trust_ips="10.0.0.1")
    call(mw, remote_addr="10.0.0.1", headers={
        "X-Forwarded-For": "6.6.6.6, 203.0.113.9", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "ignored.example", "X-Forwarded-Port": "1",
        "X-Forwarded-Prefix": "/ignored"})
    env = app.environ
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("203.0.113.9", "https")
    assert (env["HTTP_HOST"], env["SCRIPT_NAME"]) == ("localhost:80", "")  # x_host/x_prefix 0
    app, mw = make(trust_ips="10.0.0.1", x_for=0, x_proto=0)
    call(mw, remote_addr="10.0.0.1", headers={"X-Forwarded-For": "203.0.113.9",
                                             "X-Forwarded-Proto": "https"})
    assert (app.environ["REMOTE_ADDR"], app.environ["wsgi.url_scheme"]) == ("10.0.0.1", "http")


def test_ipv6_everywhere():
    app, mw = make(trust_ips="2001:db8::/32", x_host=1, x_port=1)
    call(mw, remote_addr="2001:db8::5", headers={
        "X-Forwarded-For": "[2001:db8::a]:51000", "X-Forwarded-Host": "[2001:db8::1]:8080",
        "X-Forwarded-Port": "9090"})
    env = app.environ
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::a", "51000")
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"]) == \
        ("[2001:db8::1]:9090", "[2001:db8::1]", "9090")
    call(mw, remote_addr="2001:db8::5", headers={"X-Forwarded-For": "2001:db8::b"})
    assert app.environ["REMOTE_ADDR"] == "2001:db8::b"


def test_rfc7239_forwarded():
    app, mw = make(trust_ips="10.0.0.1", forwarded=1)
    call(mw, remote_addr="10.0.0.1", headers={
        "Forwarded": 'for=6.6.6.6;host=evil, for="[2001:db8::a]:8080";proto=https;'
                     'host="example.com:8443"',
        "X-Forwarded-For": "7.7.7.7", "X-Forwarded-Proto": "http"})
    env = app.environ
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::a", "8080")
    assert env["wsgi.url_scheme"] == "https"
    assert (env["HTTP_HOST"], env["SERVER_PORT"]) == ("example.com:8443", "8443")
    call(mw, remote_addr="10.0.0.1", headers={"Forwarded": "for=_hidden;proto=http"})
    assert app.environ["REMOTE_ADDR"] == "_hidden"
    app, mw = make(trust_ips="10.0.0.1", forwarded=2)
    call(mw, remote_addr="10.0.0.1", headers={"Forwarded": "for=203.0.113.1"})
    assert app.environ["REMOTE_ADDR"] == "10.0.0.1"  # fewer hops than trusted: ignored
    resp = call(mw, remote_addr="10.0.0.1", headers={"Forwarded": 'for="unterminated'})
    assert resp.status_int == 400 and "Forwarded" in resp.text


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


def check_refused(mw, req, reason, caplog=None):
    req.headers["Accept"] = "application/json"
    resp = req.get_response(mw)
    assert resp.status_int == 403, resp.text
    assert reason in resp.json["error"]["message"]
    return resp


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


# -- PasteDeploy ----------------------------------------------------------------

def test_paste_filter_factory(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    mw = make_middleware(
        Recorder(), {"secret_file": str(path), "trust_ips": "10.0.0.1", "here": "/x"},
        x_for="2", x_proto="0", forwarded="0", require_body_digest="true",
        allow_pickle_from_trusted_ips="yes", max_signed_body_size="100", prefix="",
        signature_window="30", nonce_cache_size="5")
    assert mw.keys.path == str(path)
    assert "10.0.0.1" in mw.trusted and "10.0.0.2" not in mw.trusted
    assert (mw.x_for, mw.x_proto, mw.max_signed_body_size, mw.signature_window) == (2, 0, 100, 30)
    assert mw.require_body_digest and mw.allow_pickle_from_trusted_ips and mw.prefix is None
    assert mw.nonce_store.max_entries == 5
    mw = make_middleware(Recorder(), {"trust_ips": "10.0.0.1"},
                                         trust_ips="192.0.2.0/24,  2001:db8::/32 10.1.0.0/16")
    assert "192.0.2.9" in mw.trusted and "2001:db8::1" in mw.trusted and "10.1.2.3" in mw.trusted
    assert "10.0.0.1" not in mw.trusted  # local setting wins over [DEFAULT]


def test_paste_filter_factory_nonce_store_and_errors():
    mw = make_middleware(Recorder(), {}, secret_file=None, trust_ips="*",
                                         nonce_store="wsgiproxy.protocol:MemoryNonceStore")
    assert isinstance(mw.nonce_store, MemoryNonceStore)
    with pytest.raises(TypeError, match="bogus.*x_forr|x_forr.*bogus"):
        make_middleware(Recorder(), {}, bogus="1", x_forr="1")
    with pytest.raises(ValueError, match="x_for"):
        make_middleware(Recorder(), {}, x_for="many")
    with pytest.raises(ValueError, match="require_body_digest"):
        make_middleware(Recorder(), {}, require_body_digest="perhaps")


# -- hypothesis: any header set gets 2xx or 4xx, never 500 ------------------------

HEADER_NAMES = ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port",
                "X-Forwarded-Prefix", "X-Forwarded-Server", "X-Forwarded-Scheme",
                "X-Forwarded-Script-Name", "X-Script-Name", "X-Traversal-Path", "Forwarded",
                "X-WSGIProxy-Version", "X-WSGIProxy-Signature", "X-WSGIProxy-Str-0",
                "X-WSGIProxy-Unicode-1", "X-WSGIProxy-Json-0", "X-WSGIProxy-Json-x",
                "X-WSGIProxy-Pickle-0", "Host", "Content-Length", "Accept"]
VALUE_PIECES = st.sampled_from(["", " ", "/", "/backend", ",", ";", "=", '"', "[", "]", ":",
                                "::1", "10.0.0.1", "2001:db8::a", "https", "b64", "b64AAAA",
                                "K ", "%", "%00", "%zz", "_x", "unknown", "for=", "proto=",
                                "host=", "v1 kid=", "\xff", "{", "0", "99999", "\t"])
VALUES = st.one_of(st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=40),
                   st.lists(VALUE_PIECES, max_size=8).map("".join))
MIDDLEWARES = [
    WSGIProxyMiddleware(Recorder()),
    WSGIProxyMiddleware(Recorder(), trust_ips="*", x_for=2, x_host=1, x_port=1, x_prefix=1),
    WSGIProxyMiddleware(Recorder(), trust_ips="*", forwarded=1, pop_prefix="/backend"),
    WSGIProxyMiddleware(Recorder(), secret_file=KEYS, trust_ips="127.0.0.1", domain="d.example",
                        port=8080, require_body_digest=True),
    WSGIProxyMiddleware(Recorder(), secret_file=KEYS, require_signature=False, host="[::1]:81"),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=st.dictionaries(st.sampled_from(HEADER_NAMES), VALUES, max_size=8),
       path=st.sampled_from(["/", "/backend", "/backend/x", "/other", ""]),
       remote=st.sampled_from(["127.0.0.1", "::1", "10.0.0.1", "garbage", None]),
       which=st.integers(0, len(MIDDLEWARES) - 1))
def test_random_headers_never_500(headers, path, remote, which):
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b"body"),
               "wsgi.input_terminated": True, "SERVER_NAME": "localhost", "SERVER_PORT": "80"}
    if remote is not None:
        environ["REMOTE_ADDR"] = remote
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_LENGTH" else "HTTP_" + key] = value
    statuses = []
    body = MIDDLEWARES[which](environ, lambda s, h, exc_info=None: statuses.append(s))
    b"".join(body)
    assert statuses[0][:1] in ("2", "4"), statuses


# -- through a real waitress server -----------------------------------------------

class Server:
    """waitress on a free loopback port (tests.servers.WaitressServer), with request helpers."""

    def __init__(self, app, **options):
        self.waitress = WaitressServer(app, threads=4, **options).__enter__()
        self.port = self.waitress.port

    def close(self):
        self.waitress.__exit__(None, None, None)

    def request(self, method, target, headers=(), body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if resp.getheader(
                "Content-Type", "").startswith("application/json") else data.decode("latin-1")
        finally:
            conn.close()

    def signed(self, method, path, query="", headers=(), body=None, digest=False, keys=KEYS,
               host=None):
        host = host or "127.0.0.1:%d" % self.port
        headers = list(headers) + [("X-WSGIProxy-Version", "1")]
        signature = sign_request(keys, method, host, path, query, headers,
                                 body=body if digest else None)
        headers += [("Host", host), ("X-WSGIProxy-Signature", signature),
                    ("Accept", "application/json")]
        return self.request(method, path + ("?" + query if query else ""), headers, body)


@pytest.fixture(scope="module")
def secured():
    server = Server(WSGIProxyMiddleware(Recorder(), secret_file=KEYS))
    yield server
    server.close()


@pytest.fixture(scope="module")
def loopback_trusting():
    server = Server(WSGIProxyMiddleware(Recorder()))
    yield server
    server.close()


def test_http_signed_request_round_trip(secured):
    keys_headers = encode_key_headers(
        {"REMOTE_USER": "b\xf6b", "note": " b64 line\nbreak ", "name": "Zo\u00eb",
         "identity": {"groups": ["admin"], "deep": [[{"x": "\u2603"}]]}},
        string_keys=["REMOTE_USER", "note"], unicode_keys=["name"], json_keys=["identity"])
    status, env = secured.signed(
        "POST", "/backend/caf%C3%A9/a%2Fb", query="x=1&y=%20", body=b"\x00payload\xff",
        digest=True, headers=IDENTITY + keys_headers + [("Accept", "application/json")])
    assert status == 200, env
    assert env["HTTP_HOST"] == "www.example.com" and env["wsgi.url_scheme"] == "https"
    assert env["SCRIPT_NAME"] == "/shop" and env["PATH_INFO"] == "/caf\xc3\xa9/a/b"
    assert env["REMOTE_ADDR"] == "203.0.113.9" and env["QUERY_STRING"] == "x=1&y=%20"
    assert env["REMOTE_USER"] == "b\xf6b" and env["note"] == " b64 line\nbreak "
    assert env["name"] == "Zo\u00eb" and env["identity"]["deep"] == [[{"x": "\u2603"}]]
    assert env["body"] == "\x00payload\xff"
    assert not [k for k in env if k.startswith("HTTP_X_WSGIPROXY")]


def test_http_forged_tampered_replayed(secured):
    status, body = secured.request("GET", "/", [("Host", "x"), ("X-Forwarded-For", "1.2.3.4"),
                                                ("Accept", "application/json")])
    assert status == 403 and "missing" in body["error"]["message"]
    # signed for one path, sent to another
    host = "127.0.0.1:%d" % secured.port
    signature = sign_request(KEYS, "GET", host, "/public", "", [("X-WSGIProxy-Version", "1")])
    status, body = secured.request("GET", "/admin", [
        ("Host", host), ("X-WSGIProxy-Version", "1"), ("X-WSGIProxy-Signature", signature),
        ("Accept", "application/json")])
    assert status == 403 and "bad signature" in body["error"]["message"]
    # replay of a captured request
    headers = [("Host", host), ("X-WSGIProxy-Version", "1"), ("X-WSGIProxy-Signature", signature),
               ("Accept", "application/json")]
    assert secured.request("GET", "/public", headers)[0] == 200
    status, body = secured.request("GET", "/public", headers)
    assert status == 403 and "replayed" in body["error"]["message"]
    # expired
    old = sign_request(KEYS, "GET", host, "/", "", [], now=time.time() - 3600)
    status, body = secured.request("GET", "/", [("Host", host), ("X-WSGIProxy-Signature", old),
                                                ("Accept", "application/json")])
    assert status == 403 and "expired" in body["error"]["message"]


def test_http_unsigned_pickle_never_unpickled(secured, loopback_trusting, tmp_path):
    target = tmp_path / "pwned"
    headers = list(pickle_headers(Bomb(str(target))).items()) + [("Host", "x")]
    for server in (secured, loopback_trusting):
        status, _ = server.request("GET", "/", headers)
        assert status == 403
    assert not target.exists()


def test_http_loopback_trust_without_secret(loopback_trusting):
    status, env = loopback_trusting.request("GET", "/backend/a", [
        ("Host", "backend")] + IDENTITY)
    assert status == 200
    assert (env["REMOTE_ADDR"], env["HTTP_HOST"], env["SCRIPT_NAME"], env["PATH_INFO"]) == \
        ("203.0.113.9", "www.example.com", "/shop", "/a")


def test_http_waitress_default_strips_signed_headers_and_says_so():
    server = Server(WSGIProxyMiddleware(Recorder(), secret_file=KEYS),
                    clear_untrusted_proxy_headers=True)
    try:
        status, body = server.signed("GET", "/", headers=[("X-Forwarded-For", "203.0.113.9")])
    finally:
        server.close()
    assert status == 403
    assert "clear_untrusted_proxy_headers" in body["error"]["message"]


def test_full_nonce_store_is_503_not_replayed():
    """A store full of live nonces refuses new signed requests without calling them replays."""
    mw = WSGIProxyMiddleware(Recorder(), secret_file=KEYS,
                             nonce_store=MemoryNonceStore(max_entries=1))
    assert signed("/a").get_response(mw).status_int == 200
    res = signed("/b", accept="application/json").get_response(mw)
    assert res.status_int == 503
    assert "nonce store" in res.json["error"]["message"]
    assert "replayed" not in res.text
    assert res.headers["Retry-After"]


# -- two kinds of trust: trust_ips (WSGIProxyApp) and front_proxy_ips (nginx) -----------

NGINX = "10.0.0.5"  # a front proxy: writes X-Forwarded-*, passes every other header on
WSGIPROXY = "10.0.0.1"  # a WSGIProxyApp host: removes the client's identity headers
STRANGER = "192.0.2.66"
#: A client's request as a plain reverse proxy passes it on: its X-Forwarded-For
#: value appended, and the client's own WSGIProxy headers left in.
BOTH_FAMILIES = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9",
                 "X-WSGIProxy-Str-0": "REMOTE_USER admin"}


def outcome(mw, app, peer, signed_request=False):
    """What the app was made to believe: "all", "front", "nothing", or the 403 reason."""
    if signed_request:
        req = signed(headers=list(BOTH_FAMILIES.items()), remote_addr=peer)
    else:
        req = blank(headers=dict(BOTH_FAMILIES), remote_addr=peer)
    req.headers["Accept"] = "application/json"
    app.environ = None
    resp = req.get_response(mw)
    if resp.status_int == 403:
        assert app.environ is None
        message = resp.json["error"]["message"]
        assert message.startswith("X-WSGIProxy-Signature: "), message
        return "403 " + message.split(": ")[1].split(" (")[0]
    assert resp.status_int == 200, resp.text
    env = app.environ
    assert not [k for k in env if k.startswith("HTTP_X_WSGIPROXY")]
    front = env["REMOTE_ADDR"] == "203.0.113.9"
    identity = env.get("REMOTE_USER") == "admin"
    if not front:
        assert env["REMOTE_ADDR"] == peer
    return {(True, True): "all", (True, False): "front", (False, False): "nothing"}[
        (front, identity)]


@pytest.mark.parametrize("options, peer, signed_request, expected", [
    # Nothing configured: loopback is trusted like trust_ips (with a warning).
    ({}, "127.0.0.1", False, "all"),
    ({}, STRANGER, False, "nothing"),
    # trust_ips: WSGIProxyApp hosts, believed for everything.
    ({"trust_ips": WSGIPROXY}, WSGIPROXY, False, "all"),
    ({"trust_ips": WSGIPROXY}, "127.0.0.1", False, "nothing"),  # no loopback default
    ({"trust_ips": WSGIPROXY}, NGINX, False, "nothing"),
    # front_proxy_ips: nginx & co, believed for X-Forwarded-* only.
    ({"front_proxy_ips": NGINX}, NGINX, False, "front"),
    ({"front_proxy_ips": NGINX}, "127.0.0.1", False, "nothing"),  # no loopback default
    ({"front_proxy_ips": NGINX}, WSGIPROXY, False, "nothing"),
    ({"front_proxy_ips": "*"}, STRANGER, False, "front"),
    ({"trust_ips": WSGIPROXY, "front_proxy_ips": NGINX}, WSGIPROXY, False, "all"),
    ({"trust_ips": WSGIPROXY, "front_proxy_ips": NGINX}, NGINX, False, "front"),
    ({"trust_ips": WSGIPROXY, "front_proxy_ips": NGINX}, STRANGER, False, "nothing"),
    ({"trust_ips": "10.0.0.0/24", "front_proxy_ips": NGINX}, NGINX, False, "all"),  # in both
    # A secret: unsigned requests refused unless from trust_ips...
    ({"secret_file": KEYS}, "127.0.0.1", False, "403 missing"),
    ({"secret_file": KEYS, "trust_ips": WSGIPROXY}, WSGIPROXY, False, "all"),
    ({"secret_file": KEYS, "trust_ips": WSGIPROXY}, NGINX, False, "403 missing"),
    # ... or served, with require_signature = false.
    ({"secret_file": KEYS, "require_signature": False}, "127.0.0.1", False, "nothing"),
    ({"secret_file": KEYS, "require_signature": False, "front_proxy_ips": NGINX}, NGINX,
     False, "front"),
    ({"secret_file": KEYS, "require_signature": False, "front_proxy_ips": NGINX,
      "trust_ips": WSGIPROXY}, WSGIPROXY, False, "all"),
    ({"secret_file": KEYS, "require_signature": False, "front_proxy_ips": NGINX}, STRANGER,
     False, "nothing"),
    # A valid signature is believed for everything, whoever the peer is.
    ({"secret_file": KEYS}, STRANGER, True, "all"),
    ({"secret_file": KEYS, "require_signature": False, "front_proxy_ips": NGINX}, NGINX,
     True, "all"),
    ({"secret_file": KEYS, "require_signature": False, "front_proxy_ips": NGINX}, STRANGER,
     True, "all"),
])
def test_who_is_believed_for_what(options, peer, signed_request, expected):
    app, mw = make(**options)
    assert outcome(mw, app, peer, signed_request) == expected


def test_bad_signature_is_refused_from_every_kind_of_peer():
    app, mw = make(secret_file=KEYS, require_signature=False, trust_ips=WSGIPROXY,
                   front_proxy_ips=NGINX)
    for peer in (WSGIPROXY, NGINX, STRANGER):
        req = signed(headers=list(BOTH_FAMILIES.items()), remote_addr=peer)
        req.query_string = "changed"
        check_refused(mw, req, "bad signature")
    assert app.calls == 0


def test_front_proxy_peer_cannot_set_wsgiproxy_identity():
    """The hole front_proxy_ips closes: nginx passes these on from the client unchanged."""
    app, mw = make(front_proxy_ips=NGINX, x_host=1, x_port=1, x_prefix=1)
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9", "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "shop.example", "X-Forwarded-Port": "8443",
               "X-Forwarded-Prefix": "/shop",
               # what the client added, and nginx passed on:
               "X-WSGIProxy-Str-0": "REMOTE_USER admin", "X-WSGIProxy-Version": "1",
               "X-WSGIProxy-Json-0": 'identity {"groups": ["admin"]}',
               "X-WSGIProxy-Unicode-0": "name b64w6k=",
               "X-Forwarded-Server": "evil.example", "X-Forwarded-Scheme": "http",
               "X-Forwarded-Script-Name": "/evil", "X-Script-Name": "/evil",
               "X-Traversal-Path": "/backend"}
    resp = call(mw, "/backend/a", headers=headers, remote_addr=NGINX)
    assert resp.status_int == 200, resp.text
    env = app.environ
    assert Request(env).url == "https://shop.example:8443/shop/backend/a"
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    for key in ("REMOTE_USER", "identity", "name"):
        assert key not in env
    assert not [k for k in env if k.startswith("HTTP_X_WSGIPROXY")]
    assert env["wsgiproxy.key_id"] is None
    # Ignored means not even checked: malformed WSGIProxy headers are no 400 either.
    resp = call(mw, "/a", remote_addr=NGINX, headers={
        "X-WSGIProxy-Version": "99", "X-WSGIProxy-Json-0": "K {", "X-Traversal-Path": "/nope",
        "X-Forwarded-Server": "bad host/x", "X-Forwarded-For": "203.0.113.9"})
    assert resp.status_int == 200 and app.environ["REMOTE_ADDR"] == "203.0.113.9"
    # The front-proxy headers are still checked.
    resp = call(mw, remote_addr=NGINX, headers={"X-Forwarded-Proto": "javascript"})
    assert resp.status_int == 400
    # ... and the same request from a trust_ips peer is believed entirely.
    app, mw = make(trust_ips=WSGIPROXY, x_host=1, x_port=1, x_prefix=1)
    resp = call(mw, "/backend/a", headers=headers, remote_addr=WSGIPROXY)
    assert resp.status_int == 200, resp.text
    env = app.environ
    assert (env["REMOTE_USER"], env["identity"], env["name"]) == \
        ("admin", {"groups": ["admin"]}, "\xe9")
    assert Request(env).url == "http://evil.example/evil/evil/a"


def test_front_proxy_peer_with_forwarded_header():
    app, mw = make(front_proxy_ips="2001:db8::/64", forwarded=1)
    call(mw, "/a", remote_addr="2001:db8::5", headers={
        "Forwarded": 'for=6.6.6.6, for="[2001:db8::a]:51000";proto=https;host=shop.example',
        "X-Forwarded-For": "7.7.7.7", "X-Forwarded-Server": "evil.example",
        "X-WSGIProxy-Str-0": "REMOTE_USER admin"})
    env = app.environ
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::a", "51000")
    assert (env["wsgi.url_scheme"], env["HTTP_HOST"]) == ("https", "shop.example")
    assert "REMOTE_USER" not in env


def test_front_proxy_peer_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned"
    headers = pickle_headers(Bomb(str(target)))
    for options in ({"front_proxy_ips": NGINX},
                    {"front_proxy_ips": NGINX, "trust_ips": WSGIPROXY,
                     "allow_pickle_from_trusted_ips": True},
                    {"front_proxy_ips": NGINX, "secret_file": KEYS,
                     "require_signature": False}):
        app, mw = make(**options)
        resp = call(mw, headers=headers, remote_addr=NGINX, accept="application/json")
        assert resp.status_int == 403, options
        assert "Pickle" in resp.json["error"]["message"] and app.calls == 0
    assert not target.exists()
    with pytest.raises(ValueError, match="needs trust_ips"):
        WSGIProxyMiddleware(Recorder(), front_proxy_ips=NGINX, allow_pickle_from_trusted_ips=True)


def test_front_proxy_ips_configuration(caplog):
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.middleware"):
        _, mw = make(front_proxy_ips="10.0.0.5, 10.1.0.0/16  2001:db8::/32")
    assert caplog.text == ""  # no loopback default, no warning
    assert "10.1.2.3" in mw.front_proxies and "2001:db8::9" in mw.front_proxies
    assert "127.0.0.1" not in mw.trusted and not mw.trusted
    _, mw = make(front_proxy_ips=["10.0.0.5", "fd00::1"])
    assert "::ffff:10.0.0.5" in mw.front_proxies and "[fd00::1]" in mw.front_proxies
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.middleware"):
        make(front_proxy_ips="*")
    assert "front_proxy_ips = *" in caplog.text
    with pytest.raises(ValueError, match="trusted address"):
        WSGIProxyMiddleware(Recorder(), front_proxy_ips="nginx.internal")
    # With a secret, unsigned requests from a front proxy would all be refused:
    # that is a configuration error, said at startup.
    for options in ({}, {"require_signature": True}):
        with pytest.raises(ValueError, match="require_signature"):
            WSGIProxyMiddleware(Recorder(), secret_file=KEYS, front_proxy_ips=NGINX, **options)
    WSGIProxyMiddleware(Recorder(), secret_file=KEYS, front_proxy_ips=NGINX,
                        require_signature=False)
    with pytest.raises(TypeError):  # keyword-only: positional arguments keep their places
        WSGIProxyMiddleware(Recorder(), None, None, None, None, None, None, None, None, 1, 1, 0,
                            0, 0, NGINX)


def test_paste_filter_factory_forwarded_as_count_or_switch():
    assert make_middleware(Recorder(), {}, forwarded="2").forwarded == 2
    assert make_middleware(Recorder(), {}, forwarded="true").forwarded == 1
    assert make_middleware(Recorder(), {}, forwarded="off").forwarded == 0
    with pytest.raises(ValueError, match="forwarded"):
        make_middleware(Recorder(), {}, forwarded="sometimes")


def test_paste_filter_factory_front_proxy_ips():
    mw = make_middleware(Recorder(), {"trust_ips": "10.0.0.1"},
                         front_proxy_ips="192.0.2.0/24,  2001:db8::/32 10.1.0.0/16",
                         x_host="1")
    assert "192.0.2.9" in mw.front_proxies and "2001:db8::1" in mw.front_proxies
    assert "10.1.2.3" in mw.front_proxies and "10.0.0.1" not in mw.front_proxies
    assert "10.0.0.1" in mw.trusted and mw.x_host == 1
    mw = make_middleware(Recorder(), {"front_proxy_ips": "10.0.0.9"})
    assert not mw.front_proxies  # not read from [DEFAULT]
    with pytest.raises(ValueError, match="front_proxy_ips"):
        make_middleware(Recorder(), {}, front_proxy_ips="10.0.0.5/99")


class NginxLike:
    """A plain reverse proxy on a real server, as nginx with ``proxy_set_header
    X-Forwarded-For $proxy_add_x_forwarded_for`` and ``X-Forwarded-Proto``: every
    other header of the client's request goes on unchanged."""

    def __init__(self, backend_port):
        from wsgiproxy.exactproxy import ExactProxy
        self.proxy = ExactProxy()
        self.backend_port = backend_port

    def __call__(self, environ, start_response):
        environ = dict(environ)
        before = environ.get("HTTP_X_FORWARDED_FOR")
        environ["HTTP_X_FORWARDED_FOR"] = (before + ", " if before else "") + \
            environ["REMOTE_ADDR"]
        environ["HTTP_X_FORWARDED_PROTO"] = "https"  # as if it ended TLS
        environ["SERVER_NAME"], environ["SERVER_PORT"] = "127.0.0.1", str(self.backend_port)
        return self.proxy(environ, start_response)


def from_client(port, path, headers):
    """GET from the client address 127.0.0.2: (status, environ the backend app saw)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=("127.0.0.2", 0))
    try:
        conn.request("GET", path, headers=dict(headers, Accept="application/json"))
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if resp.status == 200 else data
    finally:
        conn.close()


def test_http_client_behind_front_proxy_cannot_choose_its_user():
    """client -> nginx-like proxy -> backend: front_proxy_ips keeps the client's
    X-WSGIProxy-* and X-Forwarded-Server out; trust_ips (the old advice) did not."""
    forged = {"Host": "shop.example", "X-WSGIProxy-Str-0": "REMOTE_USER admin",
              "X-Forwarded-Server": "evil.example", "X-Forwarded-For": "6.6.6.6"}
    backend = Server(WSGIProxyMiddleware(Recorder(), front_proxy_ips="127.0.0.1"))
    try:
        with WaitressServer(NginxLike(backend.port)) as nginx:
            status, env = from_client(nginx.port, "/account", forged)
    finally:
        backend.close()
    assert status == 200, env
    assert "REMOTE_USER" not in env
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("127.0.0.2", "https")
    assert env["HTTP_HOST"] == "shop.example"
    # trust_ips is for WSGIProxyApp peers: behind a plain proxy the client is believed.
    backend = Server(WSGIProxyMiddleware(Recorder(), trust_ips="127.0.0.1"))
    try:
        with WaitressServer(NginxLike(backend.port)) as nginx:
            status, env = from_client(nginx.port, "/account", forged)
    finally:
        backend.close()
    assert (env["REMOTE_USER"], env["HTTP_HOST"]) == ("admin", "evil.example")


def test_http_wsgiproxyapp_peer_in_trust_ips_is_believed_for_everything():
    """client -> WSGIProxyApp (unsigned) -> backend with trust_ips: the proxy's own
    REMOTE_USER, host and scheme arrive; what the client forged does not."""
    from wsgiproxy.app import WSGIProxyApp
    backend = Server(WSGIProxyMiddleware(Recorder(), trust_ips="127.0.0.1"))
    try:
        proxy = WSGIProxyApp(backend.waitress.url, string_keys=["REMOTE_USER"])

        def logged_in(environ, start_response):
            environ["REMOTE_USER"] = "alice"
            return proxy(environ, start_response)
        with WaitressServer(logged_in, url_scheme="https") as front:
            status, env = from_client(front.port, "/account", {
                "Host": "shop.example", "X-WSGIProxy-Str-1": "REMOTE_USER admin",
                "X-WSGIProxy-Json-0": 'role "admin"', "X-Forwarded-Server": "evil.example"})
    finally:
        backend.close()
    assert status == 200, env
    assert env["REMOTE_USER"] == "alice" and "role" not in env
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"], env["HTTP_HOST"]) == \
        ("127.0.0.2", "https", "shop.example")


# -- ports: the default port is left out of HTTP_HOST ----------------------------------

@pytest.mark.parametrize("options, headers, host, port", [
    ({}, {"X-Forwarded-Proto": "https", "X-Forwarded-Port": "443"}, "shop.example", "443"),
    ({}, {"X-Forwarded-Proto": "http", "X-Forwarded-Port": "80"}, "shop.example", "80"),
    ({}, {"X-Forwarded-Proto": "https", "X-Forwarded-Port": "8443"}, "shop.example:8443",
     "8443"),
    ({}, {"X-Forwarded-Proto": "http", "X-Forwarded-Port": "443"}, "shop.example:443", "443"),
    # the scheme that counts is the final one: WSGIProxy's header, then the forced one
    ({}, {"X-Forwarded-Port": "443", "X-Forwarded-Scheme": "https"}, "shop.example", "443"),
    ({"scheme": "https"}, {"X-Forwarded-Port": "80"}, "shop.example:80", "80"),
    ({"scheme": "https"}, {"X-Forwarded-Port": "443"}, "shop.example", "443"),
    ({}, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "[2001:db8::1]:8080",
          "X-Forwarded-Port": "443"}, "[2001:db8::1]", "443"),
    # the port option: the same rule
    ({"port": "443"}, {"X-Forwarded-Proto": "https"}, "shop.example", "443"),
    ({"port": "443", "scheme": "https"}, {}, "shop.example", "443"),
    ({"port": "443"}, {}, "shop.example:443", "443"),
    ({"port": "8080", "scheme": "https"}, {"X-Forwarded-Port": "443"}, "shop.example:8080",
     "8080"),
    ({"port": "443", "domain": "www.example"}, {"X-Forwarded-Proto": "https"}, "www.example",
     "443"),
])
def test_default_port_is_left_out_of_http_host(options, headers, host, port):
    app, mw = make(trust_ips=NGINX, x_host=1, x_port=1, **options)
    resp = call(mw, headers=headers, remote_addr=NGINX,
                environ={"HTTP_HOST": "shop.example:8000", "SERVER_PORT": "8000"})
    assert resp.status_int == 200, resp.text
    assert (app.environ["HTTP_HOST"], app.environ["SERVER_PORT"]) == (host, port)
    assert Request(app.environ).host == host


def test_forced_port_without_a_host_header():
    app, mw = make(port="443", scheme="https")
    body = mw({"REQUEST_METHOD": "GET", "SERVER_NAME": "backend", "SERVER_PORT": "8000",
               "REMOTE_ADDR": STRANGER}, lambda *a: None)
    b"".join(body)
    assert (app.environ["HTTP_HOST"], app.environ["SERVER_PORT"]) == ("backend", "443")


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
