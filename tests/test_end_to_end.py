"""The whole chain: client -> proxy (WSGIProxyApp) -> backend server -> WSGIProxyMiddleware -> app.

Flask and Django build the URLs the client used; forged, tampered and
replayed requests are refused by the backend.
"""

import pytest

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.middleware import WSGIProxyMiddleware

from .client import json_error, parse_answer, request, send_raw
from .servers import WaitressServer, capture_signed_request, with_environ


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
    """Django's WSGI application; Django is configured by the ``django_settings`` fixture
    (conftest.py), with this module as its URL configuration."""
    from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]
    return get_wsgi_application()


def _django_view(request, name):
    from django.http import JsonResponse  # type: ignore[import-untyped]
    from django.urls import reverse  # type: ignore[import-untyped]
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


@pytest.fixture(params=["flask", "django"])
def framework_app(request):
    """The application of each framework (Django configured for this module)."""
    if request.param == "django":
        request.getfixturevalue("django_settings")
        return django_app()
    return flask_app()


@pytest.mark.parametrize("url_scheme, prefix, href_path", [
    ("http", "", ""), ("https", "", ""), ("https", "/shop", "/inner"), ("http", "/a/b", "")])
def test_backend_builds_the_urls_the_client_used(secret_file, framework_app, url_scheme, prefix,
                                                 href_path):
    backend_app = WSGIProxyMiddleware(framework_app, secret_file=secret_file)
    if href_path:
        # The backend itself is mounted under href's path: the middleware strips it.
        inner = backend_app

        def backend_app(environ, start_response):
            return inner(environ, start_response)
    with WaitressServer(backend_app) as backend:
        proxy = WSGIProxyApp(backend.url + href_path, secret_file=secret_file,
                             string_keys=["REMOTE_USER"])
        with WaitressServer(with_environ(proxy, REMOTE_USER="alice"), url_scheme=url_scheme,
                            url_prefix=prefix) as front:
            answer = request(front.port, prefix + "/page/x%C3%BC",
                             headers={"Host": "www.example.com:8443"})
    assert answer.status == 200, answer
    seen = answer.json()
    assert seen["url"] == "%s://www.example.com:8443%s/page/x%%C3%%BC" % (url_scheme, prefix)
    assert seen["remote_addr"] == "127.0.0.1"
    assert seen["remote_user"] == "alice"


def test_replayed_and_tampered_requests_are_refused(secret_file):
    data = capture_signed_request(secret_file, "/page/x")
    with WaitressServer(WSGIProxyMiddleware(flask_app(), secret_file=secret_file)) as backend:
        first = parse_answer(send_raw(backend.port, data))
        assert first.status == 200, first
        assert first.json()["remote_user"] == "alice"
        again = json_error(send_raw(backend.port, data), 403)
        assert "replayed" in again["message"]

        fresh = capture_signed_request(secret_file, "/page/x")
        for old, new in [(b"GET /page/x", b"GET /page/y"),
                         (b"Host: 127.0.0.1", b"Host: evil.example"),
                         (b"X-Forwarded-Server: www.example.com", b"X-Forwarded-Server: evil.example"),
                         (b"REMOTE_USER alice", b"REMOTE_USER admin")]:
            assert old in fresh, old
            error = json_error(send_raw(backend.port, fresh.replace(old, new)), 403)
            assert "bad signature" in error["message"], old
        forged = b"\r\n".join(line for line in fresh.split(b"\r\n")
                              if not line.lower().startswith(b"x-wsgiproxy-signature"))
        assert "missing" in json_error(send_raw(backend.port, forged), 403)["message"]
