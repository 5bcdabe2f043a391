"""WSGIProxyMiddleware: the WSGIProxy headers decoded into the environ, and pickles.

Driven with ``webob.Request.blank``; the backend answers its environ as JSON.
"""

import logging

import pytest
from webob import Request

from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.protocol import encode_key_headers, encode_path_header

from .client import Bomb
from .middleware_helpers import (
    IDENTITY,
    KEYS,
    Recorder,
    call,
    error_message,
    make,
    pickle_headers,
    signed,
)

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
    resp = call(mw, "/backendx/a", headers={"X-Traversal-Path": "/backend"},
                accept="application/json")
    message = error_message(resp, 400)
    assert "/backend" in message and "/backendx/a" in message
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
    resp = call(mw, "/a", headers={"X-Script-Name": "front"}, accept="application/json")
    assert "X-Script-Name" in error_message(resp, 400)


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
    resp = call(mw, headers=headers, accept="application/json")
    assert text in error_message(resp, 400)
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
    resp = call(mw, headers={"X-WSGIProxy-Signature": "garbage"}, accept="application/json")
    assert "malformed" in error_message(resp, 403)


def test_blank_environ_does_not_crash():
    for options in ({}, {"prefix": "/p"}, {"pop_prefix": "/p"}, {"host": "h:81"},
                    {"domain": "d.example"}, {"port": "8080"}, {"scheme": "https"},
                    {"trust_ips": "*"}, {"secret_file": KEYS},
                    {"secret_file": KEYS, "require_signature": False}):
        app, mw = make(**options)
        statuses = []
        body = mw({}, lambda status, headers, exc_info=None, seen=statuses: seen.append(status))
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
