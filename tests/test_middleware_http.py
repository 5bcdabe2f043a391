"""WSGIProxyMiddleware through a real waitress server on 127.0.0.1."""

import time

import pytest

from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.protocol import MemoryNonceStore, encode_key_headers, sign_request

from .client import Bomb
from .middleware_helpers import (
    IDENTITY,
    KEYS,
    Recorder,
    Server,
    pickle_headers,
    signed,
)


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
