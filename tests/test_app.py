"""WSGIProxyApp end to end: client -> waitress (proxy) -> waitress (the echo backend)."""

import pytest
from webob import Request

from wsgiproxy import protocol
from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.wsgiapp import make_app

from .client import JSON, json_error, request
from .servers import RawServer, WaitressServer, scripted, with_environ

KEY_VALUES = {
    "wsgiproxy.test.str": "plain",
    "wsgiproxy.test.latin": "caf\xc3\xa9 \x00nul",
    "wsgiproxy.test.unicode": "  héllo\nwörld ☃ ",
    "wsgiproxy.test.b64": "b64AAAA",
    "wsgiproxy.test.json": {"nested": [1, 2.5, None, {"ü": "\n"}], "b64": "b64x"},
    "wsgiproxy.test.pickle": {"a set": {1, 2}, "bytes": b"\x00\xff"},
    "REMOTE_USER": "alice",
}


def front(app, set_keys=None, **options):
    """A waitress server in front of ``app``, setting ``set_keys`` in the environ first."""
    return WaitressServer(with_environ(app, **(set_keys or {})), **options)


@pytest.mark.parametrize("url_scheme", ["http", "https"])
@pytest.mark.parametrize("script_name", ["", "/mount"])
@pytest.mark.parametrize("href_path, href_query", [("", ""), ("/base/app", "x=1&y=two")])
def test_forwarding_headers(echo, url_scheme, script_name, href_path, href_query):
    href = echo.url + href_path + ("?" + href_query if href_query else "")
    proxy = WSGIProxyApp(href)
    with front(proxy, url_scheme=url_scheme, url_prefix=script_name) as server:
        answer = request(server.port, script_name + "/some/path?q=1",
                         headers={"Host": "front.example:8443", "X-Forwarded-For": "6.6.6.6"})
    seen = answer.json()
    assert answer.status == 200
    assert seen["PATH_INFO"] == href_path + "/some/path"
    assert seen["QUERY_STRING"] == "q=1" + ("&" + href_query if href_query else "")
    assert seen["HTTP_HOST"] == "127.0.0.1:%d" % echo.port
    assert seen["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"  # replaced: client is not trusted
    assert seen["HTTP_X_FORWARDED_SERVER"] == "front.example:8443"
    assert seen["HTTP_X_FORWARDED_SCHEME"] == url_scheme
    assert seen["HTTP_X_FORWARDED_SCRIPT_NAME"] == script_name
    assert seen.get("HTTP_X_TRAVERSAL_PATH", "") == href_path
    assert seen.get("HTTP_X_TRAVERSAL_QUERY_STRING", "") == href_query
    assert seen["HTTP_X_WSGIPROXY_VERSION"] == protocol.PROTOCOL_VERSION
    assert "HTTP_FORWARDED" not in seen


def test_forwarded_option_and_trusted_front_proxy(echo):
    proxy = WSGIProxyApp(echo.url, forwarded=True, trusted_proxies="127.0.0.0/8")
    with front(proxy, url_scheme="https") as server:
        seen = request(server.port, headers={"Host": "shop.example",
                                             "X-Forwarded-For": "203.0.113.9",
                                             "Forwarded": "for=203.0.113.9"}).json()
    assert seen["HTTP_X_FORWARDED_FOR"] == "203.0.113.9, 127.0.0.1"
    assert seen["HTTP_X_FORWARDED_PROTO"] == "https"
    assert seen["HTTP_X_FORWARDED_HOST"] == "shop.example"
    assert seen["HTTP_FORWARDED"] == "for=203.0.113.9, for=127.0.0.1;proto=https;host=shop.example"


def test_preserve_host(echo):
    proxy = WSGIProxyApp(echo.url, preserve_host=True)
    res = Request.blank("/", headers={"Host": "client.example"}).get_response(proxy)
    assert res.json["HTTP_HOST"] == "client.example"


def test_client_cannot_inject_protocol_or_identity_headers(echo):
    proxy = WSGIProxyApp(echo.url)
    req = Request.blank("/", headers={
        "X-WSGIProxy-Str-0": "REMOTE_USER admin", "X-WSGIProxy-Signature": "forged",
        "X-Forwarded-Server": "evil.example", "X-Forwarded-Scheme": "https",
        "X-Forwarded-Host": "evil.example", "X-Traversal-Path": "/x", "X-Script-Name": "/x",
        "Forwarded": "for=1.2.3.4"})
    seen = req.get_response(proxy).json
    assert "HTTP_X_WSGIPROXY_STR_0" not in seen
    assert "HTTP_X_WSGIPROXY_SIGNATURE" not in seen
    assert seen["HTTP_X_FORWARDED_SERVER"] == "localhost:80"
    assert seen["HTTP_X_FORWARDED_SCHEME"] == "http"
    for key in ("HTTP_X_FORWARDED_HOST", "HTTP_X_TRAVERSAL_PATH", "HTTP_X_SCRIPT_NAME",
                "HTTP_FORWARDED"):
        assert key not in seen


def test_keys_of_every_kind_round_trip(echo, secret_file):
    proxy = WSGIProxyApp(
        echo.url, secret_file=secret_file,
        string_keys=["wsgiproxy.test.str", "wsgiproxy.test.latin", "REMOTE_USER", "absent"],
        unicode_keys=["wsgiproxy.test.unicode", "wsgiproxy.test.b64"],
        json_keys=["wsgiproxy.test.json"], pickle_keys=["wsgiproxy.test.pickle"])
    with front(proxy, set_keys=KEY_VALUES) as server:
        seen = request(server.port).json()
    decoded = {}
    for key, value in seen.items():
        if protocol.key_header_kind(key):
            name, obj = protocol.decode_key_header(key, value, allow_pickle=True)
            decoded[name] = obj
    assert decoded == KEY_VALUES
    for key, value in seen.items():
        if key.startswith("HTTP_X_WSGIPROXY"):
            assert value.isprintable() and value == value.strip()
    assert seen["HTTP_X_WSGIPROXY_STR_2"] == "REMOTE_USER alice"


def test_pickle_keys_need_a_secret(echo):
    with pytest.raises(ValueError, match="pickle_keys needs secret_file"):
        WSGIProxyApp(echo.url, pickle_keys=["x"])


def test_signed_request_carries_a_verifiable_signature(echo, secret_file):
    proxy = WSGIProxyApp(echo.url + "/base", secret_file=secret_file,
                         string_keys=["REMOTE_USER"])
    req = Request.blank("/p%C3%A4th?q=1", headers={"Host": "front.example"})
    req.environ["REMOTE_USER"] = "bob"
    seen = req.get_response(proxy).json
    headers = [(k, v) for k, v in seen.items() if k.startswith("HTTP_")]
    key_id = protocol.verify_request(
        protocol.SecretKeys(secret_file), seen["HTTP_X_WSGIPROXY_SIGNATURE"],
        seen["REQUEST_METHOD"],
        seen["HTTP_HOST"], (seen["SCRIPT_NAME"] + seen["PATH_INFO"]).encode("latin-1"),
        seen["QUERY_STRING"], headers)
    assert key_id == protocol.SecretKeys(secret_file).signing_key()[0]


def test_absolute_redirect_comes_back_pointing_at_the_proxy():
    def handler(conn):
        while True:
            head, _ = conn.read_request()
            if head is None:
                return
            port = conn.server.port
            location = {
                b"GET /base/a ": b"http://127.0.0.1:%d/base/login?next=/a" % port,
                b"GET /base/b ": b"/base/relative",
                b"GET /base/c ": b"http://elsewhere.example/x",
                b"GET /base/d ": b"http://127.0.0.1:%d/based-on-prefix" % port,
            }[head[:head.index(b" ", 4) + 1]]
            conn.send(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Location: %s\r\n"
                      b"Content-Length: 0\r\n\r\n" % (location, location))

    with RawServer(handler) as backend:
        proxy = WSGIProxyApp("http://127.0.0.1:%d/base" % backend.port)
        with front(proxy, url_scheme="https", url_prefix="/mount") as server:
            host = {"Host": "shop.example"}
            answer = request(server.port, "/mount/a", headers=host)
            assert answer.headers["Location"] == "https://shop.example/mount/login?next=/a"
            assert answer.headers["Content-Location"] == \
                "https://shop.example/mount/login?next=/a"
            answer = request(server.port, "/mount/b", headers=host)
            assert answer.headers["Location"] == "/base/relative"
            answer = request(server.port, "/mount/c", headers=host)
            assert answer.headers["Location"] == "http://elsewhere.example/x"
            answer = request(server.port, "/mount/d", headers=host)
            assert answer.headers["Location"] == \
                "http://127.0.0.1:%d/based-on-prefix" % backend.port
        off = WSGIProxyApp("http://127.0.0.1:%d/base" % backend.port, rewrite_location=False)
        res = Request.blank("/a").get_response(off)
        assert res.location == "http://127.0.0.1:%d/base/login?next=/a" % backend.port


def test_allowed_methods_and_body_limit(echo):
    proxy = WSGIProxyApp(echo.url, allowed_methods=["GET", "post"], max_body_size=10)
    res = Request.blank("/", method="DELETE").get_response(proxy)
    assert res.status_int == 405
    assert res.headers["Allow"] == "GET, POST"
    res = Request.blank("/", method="POST", body=b"x" * 11).get_response(proxy)
    assert res.status_int == 413
    res = Request.blank("/", method="POST", body=b"x" * 10).get_response(proxy)
    assert res.status_int == 200 and res.json["body"] == "x" * 10


def test_body_limit_applies_to_chunked_uploads(echo):
    proxy = WSGIProxyApp(echo.url, max_body_size=1000)
    with front(proxy) as server:
        answer = request(server.port, "/", "POST", body=iter([b"x" * 600, b"y" * 600]),
                         chunked=True, accept="application/json")
    assert json_error(answer, 413)["type"] == "RequestEntityTooLarge"


def test_usable_as_a_client_from_a_view(echo):
    proxy = WSGIProxyApp(echo.url)
    res = Request.blank("/api/items?page=2").get_response(proxy)
    assert res.status_int == 200
    assert res.json["PATH_INFO"] == "/api/items"
    assert res.json["QUERY_STRING"] == "page=2"


def test_paste_factory_converts_ini_strings(echo, secret_file):
    app = make_app({"secret_file": secret_file}, href=echo.url, string_keys="REMOTE_USER, a b",
                   preserve_host="true", read_timeout="2.5", pool_size="3",
                   allowed_methods="GET HEAD", max_body_size="100")
    assert app.keys[0] == ("REMOTE_USER", "a", "b")
    assert app.preserve_host is True
    assert app.transport.read_timeout == 2.5 and app.transport.pool_size == 3
    assert app.allowed_methods == {"GET", "HEAD"}
    assert app.secret_keys is not None
    with pytest.raises(TypeError, match="unknown option"):
        make_app({}, href=echo.url, colour="blue")
    with pytest.raises(ValueError, match="href"):
        make_app({})
    with pytest.raises(ValueError, match="pool_size"):
        make_app({}, href=echo.url, pool_size="many")


def test_bad_href_is_a_clear_error():
    for href in ("ftp://x/", "http://", "http://user:pw@host/", "/relative"):
        with pytest.raises(ValueError, match="href"):
            WSGIProxyApp(href)


def test_request_at_exactly_the_mount_point(echo):
    """SCRIPT_NAME=/mount, PATH_INFO='' with an href without a path: the target is '/'."""
    proxy = WSGIProxyApp(echo.url)
    req = Request.blank("/")
    req.environ.update(SCRIPT_NAME="/mount", PATH_INFO="")
    res = req.get_response(proxy)
    assert res.status_int == 200
    assert res.json["PATH_INFO"] == "/"
    assert res.json["HTTP_X_FORWARDED_SCRIPT_NAME"] == "/mount"


@pytest.mark.parametrize("raw", ["/mount/a%2Fb", "http://front.example/mount/a%2Fb"])
def test_raw_target_spelling_survives_under_a_script_name(echo, raw):
    proxy = WSGIProxyApp(echo.url + "/base")
    req = Request.blank("/")
    req.environ.update(SCRIPT_NAME="/mount", PATH_INFO="/a/b", RAW_URI=raw)
    assert req.get_response(proxy).json["REQUEST_URI"] == "/base/a%2Fb"


def test_query_string_with_a_space_or_non_ascii_is_escaped_not_refused(echo):
    """A lenient WSGI server may pass a raw space or latin-1 bytes in QUERY_STRING."""
    proxy = WSGIProxyApp(echo.url)
    req = Request.blank("/q")
    req.environ["QUERY_STRING"] = "a=b c&d=\xe9%20"
    res = req.get_response(proxy)
    assert res.status_int == 200
    assert res.json["QUERY_STRING"] == "a=b%20c&d=%E9%20"
    proxy.close()


def test_connection_header_of_the_client_drops_only_client_headers(echo, secret_file):
    """The headers a client's Connection names are its own: never the proxy's identity ones."""
    proxy = WSGIProxyApp(echo.url, secret_file=secret_file)
    res = Request.blank("/", remote_addr="203.0.113.9", headers={
        "Connection": "X-Custom, X-Forwarded-For, X-WSGIProxy-Signature",
        "X-Custom": "dropped", "X-Kept": "kept"}).get_response(proxy)
    seen = res.json
    assert "HTTP_X_CUSTOM" not in seen and "HTTP_CONNECTION" not in seen
    assert seen["HTTP_X_KEPT"] == "kept"
    assert seen["HTTP_X_FORWARDED_FOR"] == "203.0.113.9"
    assert seen["HTTP_X_WSGIPROXY_SIGNATURE"].startswith("v1 ")
    proxy.close()


def test_sign_body_max_above_the_streaming_threshold_reads_and_signs_the_body(echo, secret_file):
    proxy = WSGIProxyApp(echo.url, secret_file=secret_file, sign_body_max=100000)
    for size, covered in ((90000, True), (100001, False)):
        body = b"x" * size
        res = Request.blank("/", method="POST", body=body).get_response(proxy)
        signature = protocol.parse_signature(res.json["HTTP_X_WSGIPROXY_SIGNATURE"])
        assert len(res.json["body"]) == size
        assert (signature.body_digest != "-") is covered
    proxy.close()


def test_a_request_that_cannot_be_signed_is_a_400_and_is_not_sent(secret_file):
    with RawServer(scripted()) as raw:
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % raw.port, secret_file=secret_file)
        req = Request.blank("/", headers=JSON)
        req.environ["HTTP_HOST"] = "caf\u00e9\u20ac.example"  # not latin-1: cannot be signed
        error = json_error(req.get_response(proxy), 400)
        assert error["type"] == "BadRequest" and "cannot sign" in error["message"]
        proxy.close()
    assert raw.connections == 0
