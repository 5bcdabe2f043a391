"""Deployment: PasteDeploy factories, `wsgiproxy serve`, `gunicorn --paste`, development.ini."""

import http.client
import json
import os
import sys

from paste.deploy import loadapp
from webob import Request

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.command import servers_in

from .servers import (Process, WaitressServer, echo_app, free_port, pid_gone, wait_for_port,
                      wait_until)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def get_json(port, path="/", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("GET", path, headers=dict({"Accept": "application/json"}, **(headers or {})))
    res = conn.getresponse()
    body = res.read()
    conn.close()
    assert res.status == 200, body
    return json.loads(body)


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
    with Process([os.path.join(BIN, "wsgiproxy"), "serve", path]) as proc:
        wait_for_port(front, process=proc.proc)
        wait_for_port(back, process=proc.proc)
        seen = get_json(front, "/hello", {"Host": "demo.example"})
    assert seen["PATH_INFO"] == "/inner/hello"
    assert seen["HTTP_X_FORWARDED_SERVER"] == "demo.example"


def test_development_ini_demo_serves():
    """The demo config itself (the README's first command): spawn starts the signed backend."""
    with Process([os.path.join(BIN, "wsgiproxy"), "serve", os.path.join(ROOT, "development.ini")],
                 cwd=ROOT) as proc:
        wait_for_port(8080, process=proc.proc)
        seen = get_json(8080, "/demo?user=alice", {"Host": "demo.example:8080"})
        child = seen["wsgiproxy.sample.pid"]
        assert child != proc.proc.pid
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
        with Process([os.path.join(BIN, "gunicorn"), "--paste", path, "-b", "127.0.0.1:%d" % port,
                      "-w", "2", "-k", "gthread", "--threads", "4"]) as proc:
            wait_for_port(port, process=proc.proc)
            for i in range(10):
                seen = get_json(port, "/g/%d" % i)
                assert seen["PATH_INFO"] == "/g/%d" % i
                assert seen["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
            # A chunked upload: gunicorn hands it over with wsgi.input_terminated
            # and no CONTENT_LENGTH; the proxy streams it on, chunked.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            pieces = [b"%06d" % i * 1000 for i in range(40)]
            conn.request("POST", "/upload", body=iter(pieces), encode_chunked=True,
                         headers={"Accept": "application/json"})
            res = conn.getresponse()
            seen = json.loads(res.read())
            conn.close()
            assert seen["body"] == b"".join(pieces).decode()
