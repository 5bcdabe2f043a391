"""The sample app's page (egg:WSGIProxy#sample): what arrived beside what the middleware rebuilt.

Each test runs real servers on loopback: a signing WSGIProxyApp in front, the
middleware and the sample app behind it (with or without the demo's
``received`` filter), and reads the page as HTML and as ``?format=json``.
"""

import re

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.keys import SecretKeys
from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.sampleapp import application, make_received_filter

from .client import get_json, request
from .servers import WaitressServer, with_environ, write_secret


class Chain:
    """front (WSGIProxyApp, REMOTE_USER=alice) -> backend (received? -> middleware? -> sample)."""

    def __init__(self, tmp_path, signed=True, received=True, middleware=True):
        secret = write_secret(tmp_path) if signed else None
        backend = application
        if middleware:
            backend = WSGIProxyMiddleware(backend, secret_file=secret,
                                          trust_ips=None if signed else "127.0.0.1")
        if received:
            backend = make_received_filter({})(backend)
        self.secret = secret
        self.backend = WaitressServer(backend)
        self.proxy = WSGIProxyApp(self.backend.url, secret_file=secret,
                                  string_keys=["REMOTE_USER"])
        self.front = WaitressServer(with_environ(self.proxy, REMOTE_USER="alice"))

    def __enter__(self):
        self.backend.__enter__()
        self.front.__enter__()
        return self

    def __exit__(self, *exc):
        self.front.__exit__(*exc)
        self.proxy.close()
        self.backend.__exit__(*exc)


def test_signed_request_json_names_what_the_middleware_rebuilt(tmp_path):
    with Chain(tmp_path) as chain:
        seen = get_json(chain.front.port, "/a/b?format=json", {"Host": "www.example.com"})
    # The flat environ, as before: scripts and tests read it.
    assert seen["HTTP_HOST"] == "www.example.com" and seen["REMOTE_USER"] == "alice"
    assert seen["PATH_INFO"] == "/a/b" and isinstance(seen["wsgiproxy.sample.pid"], int)
    received = seen["wsgiproxy.sample.received"]
    assert received["HTTP_HOST"] == "127.0.0.1:%d" % chain.backend.port
    assert received["HTTP_X_WSGIPROXY_STR_0"] == "REMOTE_USER alice"
    assert received["HTTP_X_WSGIPROXY_SIGNATURE"].startswith("v1 ")
    assert "REMOTE_USER" not in received
    rebuilt = seen["wsgiproxy.sample.rebuilt"]
    for key in ("HTTP_HOST", "REMOTE_USER", "SERVER_PORT", "HTTP_X_WSGIPROXY_STR_0",
                "HTTP_X_WSGIPROXY_SIGNATURE"):
        assert key in rebuilt
    assert "PATH_INFO" not in rebuilt and "HTTP_X_FORWARDED_FOR" not in rebuilt
    key_id = SecretKeys(chain.secret).key_ids[0]
    assert seen["wsgiproxy.sample.signature"] == {
        "key_id": key_id, "format": "v1",
        "verdict": "valid: verified with key %s (v1 signature)" % key_id}
    parts = seen["wsgiproxy.sample.parts"]
    assert "X-WSGIProxy-Str-0" in parts["proxy"] and "X-Forwarded-For" in parts["proxy"]
    assert parts["middleware"].startswith("WSGIProxyMiddleware checked the signature (valid)")
    assert "REMOTE_USER" in parts["middleware"]
    assert "http://www.example.com/a/b" in parts["app"]


def test_without_the_received_filter_the_middleware_originals_are_shown(tmp_path):
    """Behind the middleware alone, ``wsgiproxy.orig`` says what the server had."""
    with Chain(tmp_path, received=False) as chain:
        seen = get_json(chain.front.port, "/x", {"Host": "www.example.com"})
    assert seen["wsgiproxy.sample.received"]["HTTP_HOST"] == "127.0.0.1:%d" % chain.backend.port
    assert "HTTP_HOST" in seen["wsgiproxy.sample.rebuilt"]
    assert "HTTP_X_WSGIPROXY_STR_0" not in seen["wsgiproxy.sample.received"]
    assert seen["wsgiproxy.sample.signature"]["verdict"].startswith("valid: ")


def test_unsigned_request_from_a_trusted_peer(tmp_path):
    with Chain(tmp_path, signed=False) as chain:
        seen = get_json(chain.front.port, "/x", {"Host": "www.example.com"})
    assert seen["REMOTE_USER"] == "alice"  # believed: the peer is in trust_ips
    signature = seen["wsgiproxy.sample.signature"]
    assert signature["key_id"] is None and signature["format"] is None
    assert signature["verdict"].startswith("unsigned: ")
    assert "(unsigned)" in seen["wsgiproxy.sample.parts"]["middleware"]


def test_no_proxy_and_no_middleware(tmp_path):
    with WaitressServer(application) as server:
        seen = get_json(server.port, "/plain")
    assert seen["wsgiproxy.sample.rebuilt"] == []
    assert seen["wsgiproxy.sample.signature"]["verdict"].startswith("not checked: ")
    parts = seen["wsgiproxy.sample.parts"]
    assert parts["proxy"].startswith("no proxy headers arrived")
    assert parts["middleware"].startswith("no WSGIProxyMiddleware ran")


def test_hostile_values_are_escaped_and_the_page_has_no_external_assets(tmp_path):
    evil = "<script>alert(\"x\")</script>&'"
    path = "/<img/src=x/onerror=alert(1)>?q=\"><b>x</b>"
    with Chain(tmp_path) as chain:
        page = request(chain.front.port, path, headers={"X-Evil": evil})
    assert page.status == 200, page
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    text = page.body.decode("utf-8")
    for raw in ("<script", "<img", "<b>x"):
        assert raw not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;" in text
    assert "&lt;img/src=x/onerror=alert(1)&gt;" in text
    # Nothing loaded from elsewhere: the one link is the JSON view of the same page.
    assert re.findall(r"<[^<>]*\b(?:src|href)=[^<>]*>", text) == ['<a href="?format=json">']
