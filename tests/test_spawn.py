"""SpawningApplication with real child processes: start, readiness, idle, crash, back-off, stop.

Every child writes its pid to a file in ``piddir`` when it starts, so a test
can count starts and check by pid that no process was left behind.  Tests
synchronise on ports, pids, files and events with deadlines, never on bare
sleeps.
"""

import http.client
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from paste.deploy import loadapp

from wsgiproxy.spawn import SpawningApplication

from .client import request
from .servers import (
    BIN,
    Process,
    WaitressServer,
    free_port,
    group_gone,
    pid_gone,
    pids_in,
    wait_for_port,
    wait_until,
)

C_SERVER = r'''
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[1]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&addr, sizeof addr) || listen(s, 16)) {
        perror("c-server: bind");
        return 1;
    }
    fprintf(stderr, "c-server listening on %s\n", argv[1]);
    for (;;) {
        char req[8192], body[128], head[256];
        size_t got = 0;
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        while (got < sizeof req - 1) {
            ssize_t n = read(c, req + got, sizeof req - 1 - got);
            if (n <= 0) break;
            got += n;
            req[got] = 0;
            if (strstr(req, "\r\n\r\n")) break;
        }
        if (got) {
            int len = snprintf(body, sizeof body, "hello from C, pid %d\n", (int)getpid());
            int hlen = snprintf(head, sizeof head,
                                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                                "Content-Length: %d\r\nConnection: close\r\n\r\n", len);
            write(c, head, hlen);
            write(c, body, len);
        }
        close(c);
    }
}
'''


# -- helpers ------------------------------------------------------------------

def Front(app):
    """waitress in front of ``app`` (many threads: the tests send concurrent requests)."""
    return WaitressServer(app, threads=16)


def in_flight(piddir):
    """Pids of the children's /hold requests in progress, one entry per request."""
    return sorted(int(name.split("-")[1]) for name in os.listdir(piddir)
                  if name.startswith("inflight-"))


def fetch(port, path="/", timeout=20, headers=None):
    """GET asking for JSON (unless ``headers`` says otherwise): ``(answer, body)``."""
    answer = request(port, path, headers=headers, accept="application/json", timeout=timeout)
    return answer, answer.body


@pytest.fixture
def piddir(tmp_path):
    path = tmp_path / "pids"
    path.mkdir()
    return str(path)


@pytest.fixture
def child_script():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "spawnchild.py")


@pytest.fixture
def spawn(child_script, piddir):
    """``spawn(mode=..., **options)`` -> (app, front server); all are closed at teardown."""
    made = []

    def make(mode="serve", env=None, **options):
        env = dict(env or {}, CHILD_MODE=mode)
        options.setdefault("handle_signals", False)
        options.setdefault("stop_timeout", 5)
        app = SpawningApplication([sys.executable, child_script, "__PORT__", piddir],
                                  script_env=env, **options)
        server = Front(app).__enter__()
        made.append((app, server))
        return app, server

    yield make
    for app, server in made:
        server.__exit__(None, None, None)
        app.close()
    pids = pids_in(piddir)
    for pid in pids:
        wait_until(lambda pid=pid: pid_gone(pid) and group_gone(pid), 10,
                   "child %d to be gone" % pid)
    squatter = os.path.join(piddir, "squatter.pid")
    if os.path.exists(squatter):
        with open(squatter) as f:
            os.kill(int(f.read()), signal.SIGKILL)


def get_json(server, path="/", expect=200, **kwargs):
    res, body = fetch(server.port, path, **kwargs)
    assert res.status == expect, body
    return json.loads(body)


# -- tests --------------------------------------------------------------------

def test_lazy_start_forwarding_and_logging(spawn, piddir, tmp_path, caplog):
    secret = tmp_path / "secret.txt"
    secret.write_text("a-spawn-test-secret\n")
    caplog.set_level(logging.INFO, logger="wsgiproxy.spawn")
    app, server = spawn(env={"CHILD_ENV": "port=__PORT__"}, secret_file=str(secret),
                        string_keys=["REMOTE_USER"], forwarded=True)
    assert app.pids == [] and pids_in(piddir) == []  # nothing before the first request
    seen = get_json(server, "/hello?x=1", headers={"Host": "front.example"})
    assert pids_in(piddir) == [seen["pid"]] == app.pids
    assert seen["path"] == "/hello?x=1"
    assert seen["env"] == "port=%d" % seen["port"]  # __PORT__ in script_env
    headers = seen["headers"]
    assert headers["X-Forwarded-Server"] == "front.example"
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert "X-WSGIProxy-Signature" in headers  # signed by the one WSGIProxyApp code
    assert get_json(server, "/again")["pid"] == seen["pid"]
    wait_until(lambda: "child-listening on %d" % seen["port"] in caplog.text, 5, "stdout log")


def test_a_child_redirecting_to_its_own_port_is_rewritten_to_the_client_host(spawn):
    """One proxy serves every child, each on a port of its own: a Location naming a child's
    address, whatever its port, points at the URL the client used."""
    app, server = spawn()
    answer = request(server.port, "/redirect", headers={"Host": "front.example"})
    assert answer.status == 302
    assert answer.headers["Location"].startswith("http://front.example/target?from=")


def test_concurrent_first_requests_start_one_child(spawn, piddir):
    app, server = spawn()
    barrier = threading.Barrier(10)
    results = []

    def one():
        barrier.wait()
        results.append(get_json(server, "/")["pid"])

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 10
    assert len(set(results)) == 1
    assert pids_in(piddir) == [results[0]]


def test_idle_shutdown_and_restart(spawn, piddir):
    app, server = spawn(idle_shutdown=0.5)
    first = get_json(server, "/")["pid"]
    wait_until(lambda: pid_gone(first) and app.pids == [], 10, "the idle child to stop")
    second = get_json(server, "/")["pid"]
    assert second != first and pids_in(piddir) == sorted([first, second])


def test_streaming_response_keeps_child_alive(spawn):
    app, server = spawn(idle_shutdown=0.3)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.request("GET", "/stream?n=8&delay=0.15")  # 1.2 s, four times idle_shutdown
    res = conn.getresponse()
    assert res.status == 200
    pid = app.pids[0]
    lines = [res.readline() for _ in range(8)]
    assert lines == [b"chunk %d\n" % i for i in range(8)]
    assert not pid_gone(pid) and app.pids == [pid]
    assert res.read() == b""
    conn.close()
    wait_until(lambda: pid_gone(pid), 10, "the child to stop once idle")


def test_crash_recovery_and_in_flight_502(spawn, piddir):
    app, server = spawn()
    first = get_json(server, "/")["pid"]
    outcome = {}

    def one_in_flight():
        outcome["res"] = fetch(server.port, "/hold")

    t = threading.Thread(target=one_in_flight)
    t.start()
    wait_until(lambda: in_flight(piddir) == [first], 10, "the request to reach the child")
    os.kill(first, signal.SIGKILL)
    t.join(20)
    res, body = outcome["res"]
    assert res.status == 502, body
    wait_until(lambda: pid_gone(first) and app.pids == [], 10, "the dead child to be reaped")
    second = get_json(server, "/")["pid"]
    assert second != first and app.pids == [second]


def test_start_timeout_gives_503_and_logs_stderr(spawn, piddir, caplog):
    caplog.set_level(logging.INFO, logger="wsgiproxy.spawn")
    app, server = spawn(mode="never", start_timeout=1, restart_backoff=0)
    started = time.monotonic()
    res, body = fetch(server.port, "/")
    assert res.status == 503
    assert 0.9 < time.monotonic() - started < 10
    assert int(res.headers["Retry-After"]) >= 1
    assert "did not accept connections" in json.loads(body)["error"]["message"]
    assert "child-stuck: never listening" in caplog.text  # the stderr tail, in the log
    [pid] = pids_in(piddir)
    wait_until(lambda: pid_gone(pid), 10, "the stuck child to be stopped")


def test_child_exiting_at_once_backs_off(spawn, piddir, caplog):
    caplog.set_level(logging.INFO, logger="wsgiproxy.spawn")
    app, server = spawn(mode="exit", restart_backoff=5, max_backoff=20)
    res, body = fetch(server.port, "/")
    assert res.status == 503
    message = json.loads(body)["error"]["message"]
    assert "exited with code 3" in message and "back-off" in message, message
    assert 1 <= int(res.headers["Retry-After"]) <= 5
    assert "child-boom: cannot start" in caplog.text
    # Within the back-off nothing is started again, and the answer says when.
    res, body = fetch(server.port, "/", headers={"Accept": "text/html"})
    assert res.status == 503 and b"next attempt in" in body
    assert len(pids_in(piddir)) == 1


def test_back_off_then_a_good_start_resets_it(spawn, piddir):
    app, server = spawn(mode="fail-twice", restart_backoff=0.2, max_backoff=0.3)
    answers = []

    def answered():
        res, body = fetch(server.port, "/")
        answers.append((res.status, res.headers["Retry-After"], body))
        return res.status == 200

    wait_until(answered, 15, "a start to succeed after two failures")
    assert len(pids_in(piddir)) == 3
    failures = [json.loads(body)["error"]["message"] for status, _, body in answers[:-1]]
    assert all(status == 503 and retry == "1" for status, retry, _ in answers[:-1])
    assert any("2 failed starts in a row" in m and "exited with code 4" in m for m in failures)
    assert app._supervisor.slots[0].failures == 0
    assert json.loads(answers[-1][2])["pid"] == app.pids[0]


def test_port_taken_before_child_binds_tries_another(spawn, piddir):
    app, server = spawn(mode="squat")
    seen = get_json(server, "/")
    with open(os.path.join(piddir, "squatted")) as f:
        assert seen["port"] != int(f.read())
    assert len(pids_in(piddir)) == 2


def test_health_path_waits_for_2xx(spawn, piddir, tmp_path):
    health_file = str(tmp_path / "healthy")
    env = {"CHILD_HEALTH_FILE": health_file}
    app, server = spawn(mode="health-file", env=env, health_path="/health")
    answer = {}
    t = threading.Thread(target=lambda: answer.update(res=fetch(server.port, "/")))
    t.start()
    # The child accepts connections and is being probed, but is not healthy yet.
    wait_until(lambda: os.path.exists(os.path.join(piddir, "health-probed")), 10, "a probe")
    assert t.is_alive() and app.ports == []
    open(health_file, "w").close()
    t.join(20)
    res, body = answer["res"]
    assert res.status == 200 and json.loads(body)["path"] == "/"
    os.unlink(health_file)
    # Without health_path, a child that accepts connections is ready.
    app2, server2 = spawn(mode="health-file", env=env)
    res, _ = fetch(server2.port, "/")
    assert res.status == 500


@pytest.mark.parametrize("signature_format", ["v1", "rfc9421"])
def test_health_probe_is_signed_like_requests(spawn, piddir, tmp_path, signature_format):
    """A child whose /health requires a signature becomes ready: the probe goes
    through the same WSGIProxyApp options (secret_file, signature_format) as the requests."""
    secret = tmp_path / "secret.txt"
    secret.write_text("a-secret-shared-with-the-child\n")
    app, server = spawn(mode="signed-health", env={"CHILD_SECRET_FILE": str(secret),
                                                   "CHILD_SIGNATURE_FORMAT": signature_format},
                        health_path="/health", secret_file=str(secret), start_timeout=15,
                        signature_format=signature_format)
    res, body = fetch(server.port, "/")
    assert res.status == 200 and json.loads(body)["path"] == "/"
    assert os.path.exists(os.path.join(piddir, "health-200"))
    assert not os.path.exists(os.path.join(piddir, "health-403"))


def test_workers_spread_load(spawn, piddir):
    app, server = spawn(workers=3)
    barrier = threading.Barrier(6)
    pids = []

    def one():
        barrier.wait()
        pids.append(get_json(server, "/hold")["pid"])

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    wait_until(lambda: len(in_flight(piddir)) == 6, 20, "six requests in the children")
    spread = in_flight(piddir)
    assert len(set(spread)) == 3 and sorted(set(spread)) == pids_in(piddir)
    assert all(spread.count(pid) == 2 for pid in spread)  # least outstanding: two each
    assert sorted(app.pids) == sorted(set(spread))
    open(os.path.join(piddir, "release"), "w").close()
    for t in threads:
        t.join(30)
    assert sorted(pids) == spread


def test_close_stops_children_that_ignore_sigterm(spawn, piddir):
    app, server = spawn(mode="ignore-term", stop_timeout=0.5, workers=2)
    pid = get_json(server, "/")["pid"]
    started = time.monotonic()
    app.close()
    assert 0.4 < time.monotonic() - started < 8
    assert pid_gone(pid) and group_gone(pid)  # killed and reaped by close() itself
    res, body = fetch(server.port, "/")
    assert res.status == 503 and res.headers["Retry-After"]


def test_non_python_child(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        pytest.skip("no C compiler to build the non-Python test server")
    source = tmp_path / "server.c"
    source.write_text(C_SERVER)
    binary = str(tmp_path / "cserver")
    subprocess.run([compiler, "-O", "-o", binary, str(source)], check=True, timeout=60)
    app = SpawningApplication("%s __PORT__" % binary, handle_signals=False, stop_timeout=5)
    try:
        with Front(app) as server:
            res, body = fetch(server.port, "/")
            assert res.status == 200
            [pid] = app.pids
            assert body == b"hello from C, pid %d\n" % pid
    finally:
        app.close()
    assert pid_gone(pid)


def test_ini_through_paste_deploy(tmp_path):
    # A bare "wsgiproxy" is found next to the running Python even off PATH.
    (tmp_path / "backend.ini").write_text(textwrap.dedent("""
        [app:main]
        use = egg:WSGIProxy#sample
        [server:main]
        use = egg:waitress#main
        listen = 127.0.0.1:%(http_port)s
        """))
    (tmp_path / "spawn.ini").write_text(textwrap.dedent("""
        [app:main]
        use = egg:WSGIProxy#spawn
        start_script = wsgiproxy serve %(here)s/backend.ini http_port=__PORT__
        cwd = %(here)s
        script_env = GREETING="hello world" OTHER=1
        idle_shutdown = 30
        start_timeout = 20
        stop_timeout = 5
        restart_backoff = 0.5
        max_backoff = 4
        workers = 1
        handle_signals = false
        logger = wsgiproxy.spawn.test
        read_timeout = 15
        string_keys = REMOTE_USER
        """))
    app = loadapp("config:" + str(tmp_path / "spawn.ini"))
    try:
        assert isinstance(app, SpawningApplication)
        assert app.script_env == {"GREETING": "hello world", "OTHER": "1"}
        assert (app.idle_shutdown, app.start_timeout, app.max_backoff) == (30.0, 20.0, 4.0)
        assert app.log.name == "wsgiproxy.spawn.test" and not app.handle_signals
        with Front(app) as server:
            seen = get_json(server, "/some/path", headers={"Host": "front.example"})
        assert seen["PATH_INFO"] == "/some/path"
        assert seen["HTTP_X_FORWARDED_SERVER"] == "front.example"
        assert seen["SERVER_PORT"] == str(app.ports[0])
        [pid] = app.pids
    finally:
        app.close()
    assert pid_gone(pid) and group_gone(pid)


PARENT = r'''
import os, sys
from webob import Request
from wsgiproxy.spawn import SpawningApplication

app = SpawningApplication([sys.executable, sys.argv[1], "__PORT__", sys.argv[2]],
                          stop_timeout=5)
if sys.argv[3] == "exit":
    print(Request.blank("/").get_response(app).json["pid"], flush=True)
    sys.exit(0)   # atexit stops the child
import waitress
server = waitress.create_server(app, host="127.0.0.1", port=int(sys.argv[4]))
server.run()      # until SIGTERM
'''


@pytest.mark.parametrize("how", ["sigterm", "exit"])
def test_no_orphans_after_parent_exits(tmp_path, child_script, piddir, how):
    parent = tmp_path / "parent.py"
    parent.write_text(PARENT)
    port = free_port()
    args = [sys.executable, str(parent), child_script, piddir, how, str(port)]
    with Process(args, stderr=subprocess.PIPE) as proc:
        if how == "sigterm":
            wait_for_port(port, process=proc.proc)
            res, body = fetch(port, "/")
            assert res.status == 200, body
            pid = json.loads(body)["pid"]
            os.kill(proc.proc.pid, signal.SIGTERM)  # the parent only, not its group
            assert proc.proc.wait(15) == -signal.SIGTERM  # the default action still happens
        else:
            pid = int(proc.proc.stdout.readline())
            assert proc.proc.wait(15) == 0
        assert pids_in(piddir) == [pid]
        # Reaped by the parent before it ended: gone at once, group and all.
        assert pid_gone(pid) and group_gone(pid)


def test_gunicorn_workers_each_supervise_their_children(tmp_path, child_script, piddir):
    port = free_port()
    (tmp_path / "gunicorn.ini").write_text(textwrap.dedent(f"""
        [app:main]
        use = egg:WSGIProxy#spawn
        start_script = {sys.executable} {child_script} __PORT__ {piddir}
        stop_timeout = 5
        """))
    args = [os.path.join(BIN, "gunicorn"), "--paste", str(tmp_path / "gunicorn.ini"),
            "-b", "127.0.0.1:%d" % port, "-w", "2", "-k", "gthread", "--threads", "4"]
    with Process(args) as proc:
        wait_for_port(port, process=proc.proc)
        seen = set()
        for _ in range(12):
            res, body = fetch(port, "/")
            assert res.status == 200, body
            seen.add(json.loads(body)["pid"])
        assert 1 <= len(seen) <= 2  # one child per gunicorn worker that got requests
        os.kill(proc.proc.pid, signal.SIGTERM)
        proc.proc.wait(30)
    for pid in pids_in(piddir):
        assert pid_gone(pid) and group_gone(pid)
