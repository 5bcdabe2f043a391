"""The whole chain: client -> proxy (WSGIProxyApp) -> backend server -> WSGIProxyMiddleware -> app.

Flask and Django build the URLs the client used; forged, tampered and
replayed requests are refused by the backend.
"""

import http.client
import json

import pytest

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.middleware import WSGIProxyMiddleware

from .servers import WaitressServer, capture_signed_request, send_raw

SECRET = "end-to-end-test-secret-0123456789"


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e") / "secret.txt"
    path.write_text(SECRET + "\n")
    return str(path)


def flask_app():
    import flask
    app = flask.Flask("e2e")

    @app.route("/page/<name>")
    def page(name):
        return flask.jsonify(url=flask.url_for("page", name=name, _external=True),
                             remote_addr=flask.request.remote_addr,
                             remote_user=flask.request.environ.get("REMOTE_USER"))
    return app


def django_app():
    import django
    from django.conf import settings
    if not settings.configured:
        settings.configure(DEBUG=False, SECRET_KEY="e2e-tests", ALLOWED_HOSTS=["*"],
                           ROOT_URLCONF=__name__, MIDDLEWARE=[], INSTALLED_APPS=[],
                           USE_TZ=True)
        django.setup()
    from django.core.wsgi import get_wsgi_application
    return get_wsgi_application()


def _django_view(request, name):
    from django.http import JsonResponse
    from django.urls import reverse
    return JsonResponse({"url": request.build_absolute_uri(reverse("page", args=[name])),
                         "remote_addr": request.META.get("REMOTE_ADDR"),
                         "remote_user": request.META.get("REMOTE_USER")})


def _urlpatterns():
    from django.urls import path
    return [path("page/<str:name>", _django_view, name="page")]


def __getattr__(name):  # Django imports ROOT_URLCONF lazily; build the patterns then
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


def set_user(app, user):
    def outer(environ, start_response):
        environ["REMOTE_USER"] = user
        return app(environ, start_response)
    return outer


def request(port, path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", path, headers=headers)
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res.status, body


@pytest.mark.parametrize("framework", ["flask", "django"])
@pytest.mark.parametrize("url_scheme, prefix, href_path", [
    ("http", "", ""), ("https", "", ""), ("https", "/shop", "/inner"), ("http", "/a/b", "")])
def test_backend_builds_the_urls_the_client_used(secret_file, framework, url_scheme, prefix,
                                                 href_path):
    app = flask_app() if framework == "flask" else django_app()
    backend_app = WSGIProxyMiddleware(app, secret_file=secret_file)
    if href_path:
        # The backend itself is mounted under href's path: the middleware strips it.
        inner = backend_app

        def backend_app(environ, start_response):
            return inner(environ, start_response)
    with WaitressServer(backend_app) as backend:
        proxy = WSGIProxyApp(backend.url + href_path, secret_file=secret_file,
                             string_keys=["REMOTE_USER"])
        with WaitressServer(set_user(proxy, "alice"), url_scheme=url_scheme,
                            url_prefix=prefix) as front:
            status, body = request(front.port, prefix + "/page/x%C3%BC",
                                   {"Host": "www.example.com:8443"})
    assert status == 200, body
    seen = json.loads(body)
    assert seen["url"] == "%s://www.example.com:8443%s/page/x%%C3%%BC" % (url_scheme, prefix)
    assert seen["remote_addr"] == "127.0.0.1"
    assert seen["remote_user"] == "alice"


def test_replayed_and_tampered_requests_are_refused(secret_file):
    data = capture_signed_request(secret_file, "/page/x")
    with WaitressServer(WSGIProxyMiddleware(flask_app(), secret_file=secret_file)) as backend:
        first = send_raw(backend.port, data)
        assert first.startswith(b"HTTP/1.1 200"), first[:300]
        assert b"alice" in first
        again = send_raw(backend.port, data)
        assert again.startswith(b"HTTP/1.1 403") and b"replayed" in again

        fresh = capture_signed_request(secret_file, "/page/x")
        for old, new in [(b"GET /page/x", b"GET /page/y"),
                         (b"Host: 127.0.0.1", b"Host: evil.example"),
                         (b"X-Forwarded-Server: www.example.com", b"X-Forwarded-Server: evil.example"),
                         (b"REMOTE_USER alice", b"REMOTE_USER admin")]:
            assert old in fresh, old
            res = send_raw(backend.port, fresh.replace(old, new))
            assert res.startswith(b"HTTP/1.1 403"), (old, res[:300])
            assert b"bad signature" in res
        forged = b"\r\n".join(line for line in fresh.split(b"\r\n")
                              if not line.lower().startswith(b"x-wsgiproxy-signature"))
        res = send_raw(backend.port, forged)
        assert res.startswith(b"HTTP/1.1 403") and b"missing" in res
