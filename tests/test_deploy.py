"""Deployment: PasteDeploy factories, `wsgiproxy serve`, `gunicorn --paste`, development.ini."""

import os

from paste.deploy import loadapp  # type: ignore[import-untyped]
from webob import Request

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.command import servers_in

from .client import get_json, request
from .servers import (
    BIN,
    ROOT,
    WSGIPROXY,
    Gunicorn,
    Served,
    WaitressServer,
    echo_app,
    free_port,
    parent_of,
    pid_gone,
    wait_for_port,
    wait_until,
)

#: The fixed port of development.ini: checked, never assumed free.
DEMO_PORT = 8080


def write_config(tmp_path, text):
    path = tmp_path / "test.ini"
    path.write_text(text)
    return str(path)


def test_loadapp_main_real_proxy_and_sample(tmp_path):
    path = write_config(tmp_path, """
[app:main]
use = egg:WSGIProxy#main
href = http://127.0.0.1:1/base
preserve_host = yes
[app:exact]
use = egg:WSGIProxy#real_proxy
read_timeout = 5
[app:sample]
use = egg:WSGIProxy#sample
""")
    app = loadapp("config:" + path)
    assert isinstance(app, WSGIProxyApp) and app.preserve_host and app.path == "/base"
    with WaitressServer(echo_app) as backend:
        exact = loadapp("config:" + path, name="exact")
        req = Request.blank("/x", headers={"Host": "wanted.example"})
        req.environ["paste.httpserver.proxy.host"] = "127.0.0.1:%d" % backend.port
        assert req.get_response(exact).json["HTTP_HOST"] == "wanted.example"
    sample = loadapp("config:" + path, name="sample")
    assert Request.blank("/?format=json").get_response(sample).json["PATH_INFO"] == "/"


def test_servers_in_lists_main_first():
    assert servers_in(os.path.join(ROOT, "development.ini")) == ["main"]
    assert servers_in(os.path.join(ROOT, "docs", "examples", "demo-backend.ini")) == ["main"]


def test_wsgiproxy_serve_runs_proxy_and_backend(tmp_path):
    front, back = free_port(), free_port()
    path = write_config(tmp_path, """
[app:main]
use = egg:WSGIProxy#main
href = http://127.0.0.1:%d/inner
[server:main]
use = egg:waitress#main
listen = 127.0.0.1:%d
[app:backend]
use = egg:WSGIProxy#sample
[server:backend]
use = egg:waitress#main
listen = 127.0.0.1:%d
""" % (back, front, back))
    with Served([WSGIPROXY, "serve", path], front, tmp_path / "serve.log") as served:
        wait_for_port(back, process=served.process.proc)
        seen = get_json(front, "/hello", {"Host": "demo.example"})
    assert seen["PATH_INFO"] == "/inner/hello"
    assert seen["HTTP_X_FORWARDED_SERVER"] == "demo.example"


def test_development_ini_demo_serves(tmp_path):
    """The demo config itself (the README's first command): spawn starts the signed backend.

    It needs port 8080: the test fails, saying so, when another process listens there,
    and talks to the port only once the server it started is the listener.
    """
    with Served([WSGIPROXY, "serve", os.path.join(ROOT, "development.ini")], DEMO_PORT,
                tmp_path / "demo.log", cwd=ROOT, fixed=True) as demo:
        seen = get_json(DEMO_PORT, "/demo?user=alice", {"Host": "demo.example:8080"})
        child = seen["wsgiproxy.sample.pid"]
        assert parent_of(child) == demo.pid  # spawned by the server this test started
    # The sample app saw the original request, rebuilt by the middleware.
    assert seen["HTTP_HOST"] == "demo.example:8080"
    assert seen["PATH_INFO"] == "/demo"
    assert seen["SCRIPT_NAME"] == ""
    assert seen["REMOTE_USER"] == "alice"
    assert seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["wsgi.url_scheme"] == "http"
    assert seen["wsgiproxy.key_id"]
    # Stopping the demo stops the backend it spawned.
    wait_for_exit(child)


def wait_for_exit(pid, timeout=15.0):
    wait_until(lambda: pid_gone(pid), timeout, "process %d to exit" % pid)


def test_gunicorn_paste(tmp_path):
    with WaitressServer(echo_app) as backend:
        port = free_port()
        path = write_config(tmp_path, """
[app:main]
use = egg:WSGIProxy#main
href = http://127.0.0.1:%d/
""" % backend.port)
        with Gunicorn([os.path.join(BIN, "gunicorn"), "--paste", path, "-b", "127.0.0.1:%d" % port,
                       "-w", "2", "-k", "gthread", "--threads", "4"], tmp_path):
            for i in range(10):
                seen = get_json(port, "/g/%d" % i)
                assert seen["PATH_INFO"] == "/g/%d" % i
                assert seen["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
            # A chunked upload: gunicorn hands it over with wsgi.input_terminated
            # and no CONTENT_LENGTH; the proxy streams it on, chunked.
            pieces = [b"%06d" % i * 1000 for i in range(40)]
            answer = request(port, "/upload", "POST", body=iter(pieces), chunked=True,
                             accept="application/json")
            assert answer.json()["body"] == b"".join(pieces).decode()
