"""WSGIProxyMiddleware and front proxies: Werkzeug ProxyFix's x_* counts, RFC 7239 Forwarded."""

from webob import Request

from .middleware_helpers import call, error_message, make


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
    resp = call(mw, remote_addr="10.0.0.1", headers={"Forwarded": 'for="unterminated'},
                accept="application/json")
    assert "Forwarded" in error_message(resp, 400)
