"""Shared pieces of the WSGIProxyMiddleware tests (tests/test_middleware_*.py).

A backend app that records its environ, ways to build requests as a client, a
plain proxy or ``WSGIProxyApp`` send them, and a waitress server with
request helpers.
"""

import http.client
import json

from webob import Request

from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.protocol import SecretKeys, encode_key_headers, sign_request

from .servers import WaitressServer

SECRET = "middleware-test-secret-0123456789"
KEYS = SecretKeys.from_secrets([SECRET])
PROXY_ADDR = "192.0.2.50"  # the WSGIProxyApp host, as the backend sees it
NGINX = "10.0.0.5"  # a front proxy: writes X-Forwarded-*, passes every other header on
WSGIPROXY = "10.0.0.1"  # a WSGIProxyApp host: removes the client's identity headers
STRANGER = "192.0.2.66"


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


def error_message(resp, status):
    """The message of an error answer asked for as JSON, once its status is checked."""
    assert resp.status_int == status, resp.text
    assert resp.content_type == "application/json", resp.content_type
    assert resp.json["error"]["code"] == status
    return resp.json["error"]["message"]


def check_refused(mw, req, reason, caplog=None):
    """Send ``req`` asking for JSON: a 403 whose message gives ``reason``."""
    req.headers["Accept"] = "application/json"
    resp = req.get_response(mw)
    assert reason in error_message(resp, 403)
    return resp


def pickle_headers(obj):
    return dict(encode_key_headers({"payload": obj}, pickle_keys=["payload"]))


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
