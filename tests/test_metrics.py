"""Prometheus metrics (issue 20): through gunicorn with two workers, and each family's source."""

import http.client
import logging
import os
import signal

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from wsgiproxy import observe
from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.metrics import Metrics, metrics_app
from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.protocol import SecretKeys

from .client import call_wsgi
from .docsnippets import snippet
from .middleware_helpers import Recorder
from .servers import (
    BIN,
    ROOT,
    Gunicorn,
    WaitressServer,
    free_port,
    pid_gone,
    wait_until,
)
from .test_spawn import child_script, get_json, spawn  # noqa: F401 -- fixtures


def get(port, target="/", headers=()):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", target, headers=dict(headers))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def samples(text):
    """``{(name, sorted label items): value}`` of a scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("python_", "process_")):
            continue  # prometheus-client's own, served in single-process mode
        assert family.name.startswith("wsgiproxy_"), family.name
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(scraped, name, **labels):
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


INI = """
[composite:main]
use = egg:Paste#urlmap
/ = proxy
/metrics = metrics

[app:proxy]
use = egg:WSGIProxy#main
href = {href}

[app:metrics]
# egg:WSGIProxy#metrics once installed; call: works from a checkout as well.
use = call:wsgiproxy.wsgiapp:make_metrics_app
"""


def test_the_documented_recipe_is_the_one_tested():
    commands = snippet("operations-metrics-gunicorn").commands()
    assert "mkdir" in commands[0]
    assert commands[1].startswith("PROMETHEUS_MULTIPROC_DIR=")
    assert "gunicorn --paste proxy.ini -w 4" in commands[1]
    assert "/metrics" in commands[2]


def test_scrape_after_traffic_through_gunicorn_with_two_workers(tmp_path):
    """The recipe of docs/operations.rst: every worker counts into an empty
    PROMETHEUS_MULTIPROC_DIR; whichever worker answers the scrape adds them all up."""
    backend_app = Recorder()
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    with WaitressServer(backend_app) as backend:
        ini = tmp_path / "proxy.ini"
        ini.write_text(INI.format(href=backend.url))
        port = free_port()
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(prom_dir), PYTHONPATH=ROOT)
        args = [os.path.join(BIN, "gunicorn"), "--paste", str(ini), "-w", "2",
                "-b", "127.0.0.1:%d" % port]
        with Gunicorn(args, tmp_path, env=env) as server:
            sent = 0

            def both_workers_served():
                nonlocal sent
                for _ in range(10):
                    assert get(port, "/shop?n=%d" % sent)[0] == 200
                    sent += 1
                pids = {pid for pid, status, line in server.access_log()
                        if line.startswith("GET /shop")}
                return len(pids) == 2
            wait_until(both_workers_served, 60, "both workers to serve requests")
            backend_label = "127.0.0.1:%d" % backend.port

            def counted():
                # A request is counted when the worker closes its body, which may be
                # just after the client has read the answer.
                status, body = get(port, "/metrics")
                return status == 200 and value(
                    samples(body.decode()), "wsgiproxy_requests_total", side="proxy",
                    backend=backend_label, method="GET", status="2xx") == sent
            wait_until(counted, 10, "the last request to be counted")
            scrapes = [get(port, "/metrics") for _ in range(6)]
    for status, body in scrapes:
        assert status == 200
        scraped = samples(body.decode())
        assert value(scraped, "wsgiproxy_requests_total", side="proxy", backend=backend_label,
                     method="GET", status="2xx") == sent
        assert value(scraped, "wsgiproxy_upstream_first_byte_seconds_count",
                     backend=backend_label) == sent
        assert value(scraped, "wsgiproxy_request_duration_seconds_count", side="proxy",
                     backend=backend_label) == sent
        # Each worker opened its own pooled connection at least once.
        assert 2 <= value(scraped, "wsgiproxy_upstream_connect_seconds_count",
                          backend=backend_label) <= sent
    assert backend_app.calls == sent


@pytest.fixture
def metrics():
    """A Metrics of its own registry, seeing what the package observes meanwhile."""
    registry = prometheus_client.CollectorRegistry()
    sink = Metrics(registry)
    observe.SINKS.append(sink)
    try:
        yield lambda: samples(prometheus_client.generate_latest(registry).decode())
    finally:
        observe.SINKS.remove(sink)


def test_retries_and_ejections_are_counted(metrics):
    dead = "127.0.0.1:%d" % free_port()
    with WaitressServer(Recorder()) as live:
        proxy = WSGIProxyApp(["http://" + dead, live.url], max_fails=1)
        with WaitressServer(proxy) as front:
            for _ in range(3):
                assert get(front.port)[0] == 200
        proxy.close()
    live_label = "127.0.0.1:%d" % live.port
    scraped = wait_until(lambda: (s := metrics()) and value(
        s, "wsgiproxy_requests_total", side="proxy", backend=live_label, method="GET",
        status="2xx") == 3 and s, what="3 requests counted")
    assert value(scraped, "wsgiproxy_retries_total", backend=live_label) == 1
    assert value(scraped, "wsgiproxy_backend_ejections_total", backend=dead) == 1


def test_refusals_by_reason_and_the_backend_side(metrics):
    keys = SecretKeys.from_secrets(["a-secret-of-some-length-0123456789"])
    mw = WSGIProxyMiddleware(Recorder(), secret_file=keys)
    with WaitressServer(mw) as backend:
        assert get(backend.port)[0] == 403  # unsigned
        assert get(backend.port, headers=[("X-WSGIProxy-Signature", "v1 junk")])[0] == 403
    scraped = wait_until(lambda: (s := metrics()) and value(
        s, "wsgiproxy_requests_total", side="backend", backend="-", method="GET",
        status="4xx") == 2 and s, what="2 refusals counted")
    assert value(scraped, "wsgiproxy_signature_refusals_total", reason="missing") == 1
    assert value(scraped, "wsgiproxy_signature_refusals_total", reason="malformed") == 1


def test_metrics_are_off_until_enabled(caplog, no_metrics):
    assert observe.SINKS == []  # nothing counts by default: no record is even made
    logging.getLogger("wsgiproxy.access").setLevel(logging.WARNING)
    try:
        assert WSGIProxyApp("http://127.0.0.1:1").observer.start({}) is None
    finally:
        logging.getLogger("wsgiproxy.access").setLevel(logging.NOTSET)


def test_the_metrics_app_answers_in_the_text_format():
    status, headers, body = call_wsgi(metrics_app, {"REQUEST_METHOD": "GET", "PATH_INFO": "/"})
    assert status == "200 OK"
    assert dict(headers)["Content-Type"].startswith("text/plain")
    assert body is not None


def test_spawn_starts_crashes_and_restarts_are_counted(metrics, spawn):  # noqa: F811
    app, server = spawn()
    first = get_json(server, "/")["pid"]
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: pid_gone(first) and app.pids == [], 10, "the dead child to be reaped")
    second = get_json(server, "/")["pid"]
    assert second != first

    def served(scraped):  # a request is counted when its body is closed, after the answer
        return sum(v for (name, labels), v in scraped.items()
                   if name == "wsgiproxy_requests_total" and ("side", "proxy") in labels)
    scraped = wait_until(lambda: (s := metrics()) and served(s) == 2 and s,
                         what="both requests counted")
    assert value(scraped, "wsgiproxy_spawn_children_total", event="started") == 2
    assert value(scraped, "wsgiproxy_spawn_children_total", event="crashed") == 1
    assert value(scraped, "wsgiproxy_spawn_children_total", event="restarted") == 1


TUNNEL_INI = """
[composite:main]
use = egg:Paste#urlmap
/ = proxy
/metrics = metrics

[app:proxy]
use = egg:WSGIProxy#main
href = {href}
metrics = true

[app:metrics]
use = call:wsgiproxy.wsgiapp:make_metrics_app
"""


def test_open_tunnels_are_a_gauge(tmp_path):
    """A WebSocket session through gunicorn: counted open while it lasts, then not."""
    from .test_websocket import ENV, ws, ws_backend

    with ws_backend(free_port(), tmp_path / "ws.log") as backend:
        ini = tmp_path / "tunnel.ini"
        ini.write_text(TUNNEL_INI.format(href="http://127.0.0.1:%d" % backend.port))
        port = free_port()
        args = [os.path.join(BIN, "gunicorn"), "--paste", str(ini), "-w", "1",
                "-k", "gthread", "--threads", "4", "-b", "127.0.0.1:%d" % port]
        with Gunicorn(args, tmp_path, env=ENV, cwd=ROOT):
            def tunnels():
                return value(samples(get(port, "/metrics")[1].decode()),
                             "wsgiproxy_tunnels_open")
            assert tunnels() == 0
            with ws(port) as client:
                client.send("hi")
                assert client.recv(timeout=10) == "hi"
                assert tunnels() == 1
            wait_until(lambda: tunnels() == 0, 10, "the tunnel to be counted closed")
            wait_until(lambda: value(
                samples(get(port, "/metrics")[1].decode()), "wsgiproxy_requests_total",
                side="proxy", backend="127.0.0.1:%d" % backend.port, method="GET",
                status="1xx") == 1, 10, "the tunnel's request to be counted")


def test_open_connections_are_counted_until_closed(echo):
    """The transport counts the backend connections it opened and has not closed yet."""
    from wsgiproxy.transport import HTTPTransport
    transport = HTTPTransport(pool_size=1)
    key = ("http", "127.0.0.1", echo.port)
    one, two = transport._connect(key, "echo"), transport._connect(key, "echo")
    assert transport.open_connections(key) == 2 == transport.open_connections()
    transport._release(one)  # back to the pool: still open
    assert (transport.open_connections(key), transport.idle_connections(key)) == (2, 1)
    two.close()
    two.close()  # closing twice counts once
    assert transport.open_connections(key) == 1
    transport.close()
    assert transport.open_connections() == 0
