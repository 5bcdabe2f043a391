"""cookie_path / cookie_domain end to end: real backends, WSGIProxyApp, .ini, spawn."""

import sys
import textwrap

import pytest
from paste.deploy import loadapp  # type: ignore[import-untyped]

from wsgiproxy.app import WSGIProxyApp

from .client import request
from .docsnippets import snippet
from .servers import WaitressServer

#: What the backend sets, in this order, on every answer.
SENT = [
    "sid=abc; Path=/base/cart; HttpOnly",
    "lang=en; path=/; Domain=localhost",
    "tz=2; Domain=.LOCALHOST; Secure",
    "seen=1; Max-Age=60",
    "exp=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/base/; SameSite=Lax",
    "odd;Path=/base/x",                       # no "=": a browser drops it, we leave it
    "sp=1 ;  PATH = /base/a ;\tdomain=localhost",
]
#: What the client gets with the docs' rules (/base/ -> /mount/, / -> /mount/,
#: localhost -> shop.example).
WANTED = [
    "sid=abc; Path=/mount/cart; HttpOnly",
    "lang=en; path=/mount/; Domain=shop.example",
    "tz=2; Domain=.shop.example; Secure",
    "seen=1; Max-Age=60",
    "exp=1; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/mount/; SameSite=Lax",
    "odd;Path=/base/x",
    "sp=1 ;  PATH = /mount/a ;\tdomain=shop.example",
]
PATHS = [("/base/", "/mount/"), ("/", "/mount/")]
DOMAINS = {"localhost": "shop.example"}


def cookie_backend(environ, start_response):
    """Sets the SENT cookies; /redirect also redirects into its own /base/."""
    headers = [("Content-Type", "text/plain")] + [("Set-Cookie", v) for v in SENT]
    if environ["PATH_INFO"].endswith("/redirect"):
        host = environ["HTTP_HOST"]
        start_response("302 Found", [("Location", "http://%s/base/login" % host)] + headers)
    else:
        start_response("200 OK", headers)
    return [b"ok"]


@pytest.fixture(scope="module")
def backend():
    with WaitressServer(cookie_backend) as server:
        yield server


def front(app):
    return WaitressServer(app, url_prefix="/mount")


def cookies_through(app, path="/mount/page"):
    with front(app) as server:
        answer = request(server.port, path, headers={"Host": "shop.example"})
    return answer, answer.headers.get_all("Set-Cookie")


@pytest.mark.parametrize("transport", ["http", "httplib2"])
def test_cookies_are_rewritten_separately_and_in_order(backend, transport):
    proxy = WSGIProxyApp(backend.url + "/base", cookie_path=PATHS, cookie_domain=DOMAINS,
                         transport=transport)
    try:
        answer, cookies = cookies_through(proxy)
    finally:
        proxy.close()
    assert answer.status == 200 and answer.body == b"ok"
    assert cookies == WANTED


def test_without_the_options_cookies_pass_byte_for_byte(backend):
    proxy = WSGIProxyApp(backend.url + "/base")
    assert proxy.cookie_rewriter is None  # nothing to do per request
    try:
        _, cookies = cookies_through(proxy)
    finally:
        proxy.close()
    assert cookies == SENT


def test_one_option_alone(backend):
    proxy = WSGIProxyApp(backend.url + "/base", cookie_domain=[(".localhost", "shop.example")])
    try:
        _, cookies = cookies_through(proxy)
    finally:
        proxy.close()
    assert cookies == [
        SENT[0], "lang=en; path=/; Domain=shop.example", "tz=2; Domain=.shop.example; Secure",
        SENT[3], SENT[4], SENT[5], "sp=1 ;  PATH = /base/a ;\tdomain=shop.example"]


@pytest.mark.parametrize("rewrite_location", [True, False])
def test_with_a_redirect_both_rewritings_apply(backend, rewrite_location):
    proxy = WSGIProxyApp(backend.url + "/base", cookie_path=PATHS, cookie_domain=DOMAINS,
                         rewrite_location=rewrite_location)
    try:
        answer, cookies = cookies_through(proxy, "/mount/redirect")
    finally:
        proxy.close()
    assert answer.status == 302 and cookies == WANTED
    assert answer.headers["Location"] == (
        "http://shop.example/mount/login" if rewrite_location
        else "http://127.0.0.1:%d/base/login" % backend.port)


def test_bad_rules_fail_at_construction(backend):
    with pytest.raises(ValueError, match="cookie_path"):
        WSGIProxyApp(backend.url, cookie_path={"/": "/app/\r\nX-Evil: 1"})
    with pytest.raises(TypeError, match="cookie_domain"):
        WSGIProxyApp(backend.url, cookie_domain="localhost shop.example")


# -- .ini ----------------------------------------------------------------------------------

def test_docs_ini_example_end_to_end(tmp_path, backend):
    """The example of docs/app.rst, loaded with PasteDeploy, gives what the page's table says."""
    s = snippet("app-cookie-rewrite-ini")
    path = tmp_path / "cookies.ini"
    path.write_text(s.replaced({"http://127.0.0.1:8081/base": backend.url + "/base"}))
    proxy = loadapp("config:" + str(path))
    try:
        assert proxy.cookie_rewriter.paths == tuple(PATHS)
        answer, cookies = cookies_through(proxy)
    finally:
        proxy.close()
    assert cookies == WANTED


def test_docs_python_example_makes_the_same_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cookies.ini").write_text(snippet("app-cookie-rewrite-ini").text)
    from_ini = loadapp("config:" + str(tmp_path / "cookies.ini"))
    from_python = snippet("app-cookie-rewrite-python").run()["proxy"]
    try:
        assert from_ini.cookie_rewriter.paths == from_python.cookie_rewriter.paths
        assert from_ini.cookie_rewriter.domains == from_python.cookie_rewriter.domains \
            == (("localhost", "shop.example"),)
    finally:
        from_ini.close()
        from_python.close()


def write_ini(tmp_path, body):
    path = tmp_path / "test.ini"
    path.write_text(textwrap.dedent(body))
    return "config:" + str(path)


def main_ini(tmp_path, options):
    """An ``egg:WSGIProxy#main`` section with these option lines."""
    return write_ini(tmp_path, "[app:main]\nuse = egg:WSGIProxy#main\n"
                               "href = http://127.0.0.1:9/\n" + textwrap.dedent(options))


def test_ini_errors_name_the_option_and_line(tmp_path):
    config = main_ini(tmp_path, """\
        cookie_path =
            /a/ /b/
            /c/
        """)
    with pytest.raises(ValueError, match=r"cookie_path = .*line 2"):
        loadapp(config)


def test_ini_empty_values_mean_no_rewriting(tmp_path):
    proxy = loadapp(main_ini(tmp_path, "cookie_path =\ncookie_domain =\n"))
    assert proxy.cookie_rewriter is None
    proxy.close()


CHILD = '''
import sys
import waitress

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Set-Cookie", "a=1; Path=/; Domain=127.0.0.1"),
                              ("Set-Cookie", "b=2; Path=/b/; HttpOnly")])
    return [b"child"]

waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=2)
'''


def test_spawn_passes_the_rules_to_its_children(tmp_path):
    """``egg:WSGIProxy#spawn`` takes every proxy option: the children's cookies are rewritten."""
    (tmp_path / "child.py").write_text(CHILD)
    config = write_ini(tmp_path, """
        [app:main]
        use = egg:WSGIProxy#spawn
        start_script = %s %%(here)s/child.py __PORT__
        start_timeout = 20
        stop_timeout = 5
        handle_signals = false
        cookie_path =
            /b/ /mount/b/
            / /mount/
        cookie_domain = 127.0.0.1 shop.example
        """ % sys.executable)
    app = loadapp(config)
    try:
        answer, cookies = cookies_through(app)
    finally:
        app.close()
    assert answer.body == b"child"
    assert cookies == ["a=1; Path=/mount/; Domain=shop.example",
                       "b=2; Path=/mount/b/; HttpOnly"]
