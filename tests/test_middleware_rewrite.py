"""WSGIProxyMiddleware: the forced values (prefix, scheme, host...) and the ports of HTTP_HOST."""

import pytest
from webob import Request

from wsgiproxy.middleware import WSGIProxyMiddleware

from .middleware_helpers import NGINX, STRANGER, Recorder, call, error_message, make

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
    resp = call(mw, "/application/a", accept="application/json")
    message = error_message(resp, 400)
    assert "/app" in message and "/application/a" in message


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
