"""WSGIProxy under cooperative workers: gunicorn ``-k gevent`` and eventlet's own WSGI server.

Each application is served for real by a subprocess (see :func:`serve`):
gunicorn with ``-k gevent`` (gevent patches the standard library in the
worker, after the fork), eventlet's ``eventlet.wsgi`` server after
``eventlet.monkey_patch()`` (gunicorn 27 no longer has an eventlet worker),
and gunicorn's ``gthread`` worker as the control with ordinary threads;
``--preload`` (the application made before gevent patches) where it works.
What is checked under each: a stalled backend gets a 504 after
``read_timeout`` while the worker serves other requests; pooled keep-alive
connections are reused, and one the backend closed while idle is not; a
signed request is verified by a backend's middleware with either nonce
store; and spawn starts, restarts, idles out and stops its children, leaving
no process behind.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from .client import JSON, json_error, parse_answer, request, send_raw
from .servers import (
    BIN,
    OK,
    Gunicorn,
    RawServer,
    Served,
    capture_signed_request,
    free_port,
    group_gone,
    parent_of,
    pid_gone,
    pids_in,
    wait_until,
    watchdog_of,
)

#: How the tests serve an application: gunicorn's worker classes, and eventlet's server.
KINDS = ["gevent", "eventlet", "gthread"]
#: Seconds a request may take before a test calls it a hang.
HANG = 30
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spawnchild.py")

#: eventlet's own WSGI server for a PasteDeploy file; with ``late``, wsgiproxy is imported
#: before eventlet patches the standard library (a server script that imports its
#: application first).
EVENTLET_SERVER = '''
import sys
if sys.argv[3:] == ["late"]:
    import wsgiproxy.transport
import eventlet
eventlet.monkey_patch()
import eventlet.wsgi
from paste.deploy import loadapp
app = loadapp("config:" + sys.argv[1])
eventlet.wsgi.server(eventlet.listen(("127.0.0.1", int(sys.argv[2]))), app, log_output=False)
'''


class Front:
    """A running server (a :class:`servers.Gunicorn` or :class:`servers.Served`).

    ``port``; ``pid``: the process that runs the application (gunicorn's one
    worker); ``stop()``: SIGTERM, as on a shutdown, and wait for the exit code.
    """

    def __init__(self, server, gunicorn):
        self.server = server
        self.port = server.port
        self.gunicorn = gunicorn
        self.pid = server.ready_workers()[0] if gunicorn else server.pid

    def stop(self):
        if self.gunicorn:
            self.server.stop()
            return self.server.process.proc.returncode
        os.kill(self.server.pid, signal.SIGTERM)
        return self.server.process.proc.wait(HANG)

    def output(self):
        return self.server.output()


@contextlib.contextmanager
def serve(kind, ini, directory, label="front"):
    """Serve the PasteDeploy file ``ini`` on a free port with one process of ``kind``: a
    gunicorn worker class (``gevent-preload``: with ``--preload``), ``eventlet`` or
    ``eventlet-late`` (see :data:`EVENTLET_SERVER`)."""
    port = free_port()
    if kind.startswith("eventlet"):
        script = directory / "eventlet_server.py"
        script.write_text(EVENTLET_SERVER)
        args = [sys.executable, script, ini, port] + (["late"] if kind == "eventlet-late" else [])
        with Served(args, port, directory / (label + ".log")) as server:
            yield Front(server, gunicorn=False)
        return
    worker, _, preload = kind.partition("-")
    args = [os.path.join(BIN, "gunicorn"), "--paste", ini, "-b", "127.0.0.1:%d" % port,
            "-w", "1", "-k", worker, "--graceful-timeout", "5"]
    args += ["--worker-connections", "200"] if worker == "gevent" else ["--threads", "8"]
    if preload:
        args.append("--preload")
    with Gunicorn(args, directory, label) as server:
        yield Front(server, gunicorn=True)


def proxy_ini(directory, href, **options):
    """A file with ``[app:main]`` a WSGIProxyApp for ``href``; returns its path."""
    path = directory / "proxy.ini"
    lines = ["[app:main]", "use = egg:WSGIProxy#main", "href = " + href]
    lines += ["%s = %s" % item for item in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Backend:
    """A RawServer handler: ``/stall`` is never answered (until ``release``), ``/bye`` is
    answered and then its connection closed (``closed`` is set), anything else answered
    with :data:`servers.OK` on a kept-alive connection."""

    def __init__(self):
        self.release = threading.Event()
        self.closed = threading.Event()

    def __call__(self, conn):
        while True:
            head, _ = conn.read_request()
            if head is None:
                return
            path = head.split(b" ")[1]
            if path == b"/stall":
                self.release.wait(HANG * 2)
                return
            conn.send(OK)
            if path == b"/bye":
                conn.close()
                self.closed.set()
                return


@pytest.fixture
def backend():
    """A RawServer running a :class:`Backend` (its ``handler``)."""
    with RawServer(Backend()) as raw:
        yield raw
        raw.handler.release.set()


# -- timeouts and the pool ----------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS + ["gevent-preload"])
def test_a_stalled_backend_gets_a_504_while_the_worker_serves_others(kind, tmp_path, backend):
    ini = proxy_ini(tmp_path, "http://127.0.0.1:%d" % backend.port, read_timeout=3)
    with serve(kind, ini, tmp_path) as front:
        stalled = []

        def ask():
            try:
                stalled.append(request(front.port, "/stall", accept=JSON["Accept"],
                                       timeout=HANG))
            except OSError as exc:  # a hang: the client's timeout
                stalled.append(exc)
        thread = threading.Thread(target=ask)
        thread.start()
        wait_until(lambda: any(b" /stall " in head for head, _ in backend.requests), HANG,
                   "the backend to receive the stalled request")
        # The worker serves another request while the first one waits.
        answer = request(front.port, "/other", timeout=HANG)
        assert answer.status == 200 and answer.body == b"ok"
        assert thread.is_alive() and not stalled, stalled
        thread.join(HANG * 2)
        [answer] = stalled
        assert not isinstance(answer, OSError), "no answer within %ds: %s" % (HANG, answer)
        assert "timed out" in json_error(answer, 504)["message"]


#: Patches the standard library with ``argv[1]`` (gevent, eventlet or none), then sends one
#: request per case in ``argv[2]`` (JSON: name -> [port, method, body size]) through an
#: HTTPTransport with 1 s timeouts, reading the body; prints what each raised, as JSON.
TRANSPORT_UNDER = """
import json, sys
if sys.argv[1] == "gevent":
    from gevent import monkey
    monkey.patch_all()
elif sys.argv[1] == "eventlet":
    import eventlet
    eventlet.monkey_patch()
from wsgiproxy.transport import HTTPTransport

transport = HTTPTransport(connect_timeout=1, read_timeout=1)
raised = {}
for name, (port, method, size) in json.loads(sys.argv[2]).items():
    try:
        response = transport.request("http", "127.0.0.1", port, method, "/" + name,
                                     [("Host", "backend")],
                                     b"x" * size if size else None)
        b"".join(response)
        raised[name] = "nothing"
    except Exception as exc:
        raised[name] = "%s: %s" % (type(exc).__name__, exc)
print(json.dumps(raised))
"""


def full_listener(stack):
    """The port of a listening socket whose accept queue is full: the kernel drops
    further SYNs, so connecting to it waits."""
    listener = stack.enter_context(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    for _ in range(3):
        queued = stack.enter_context(socket.socket())
        queued.setblocking(False)
        queued.connect_ex(("127.0.0.1", port))
    return port


@pytest.mark.parametrize("patching", ["gevent", "eventlet", "none"])
def test_every_wait_on_a_backend_ends_in_backend_timeout(patching, tmp_path):
    release = threading.Event()

    def stall(conn):  # read nothing more, answer nothing
        release.wait(HANG * 2)

    def stall_after_head(conn):
        conn.read_head()
        stall(conn)

    def stall_in_body(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        stall(conn)

    script = tmp_path / "transport_under.py"
    script.write_text(TRANSPORT_UNDER)
    with contextlib.ExitStack() as stack:
        head, body, upload = (stack.enter_context(RawServer(handler)) for handler in (
            stall_after_head, stall_in_body, stall_after_head))
        stack.callback(release.set)  # first thing at the end: the handlers return
        cases = {"connect": [full_listener(stack), "GET", 0],
                 "head": [head.port, "GET", 0],
                 "body": [body.port, "GET", 0],
                 # More than the socket buffers hold: sending it waits.
                 "upload": [upload.port, "POST", 64 << 20]}
        done = subprocess.run([sys.executable, str(script), patching, json.dumps(cases)],
                              capture_output=True, text=True, timeout=HANG * 2)
    assert done.returncode == 0, done.stderr
    raised = json.loads(done.stdout)
    assert raised == {
        "connect": "BackendTimeout: http://127.0.0.1:%d: timed out connecting after 1s"
                   % cases["connect"][0],
        "head": "BackendTimeout: http://127.0.0.1:%d: timed out after 1s waiting for the "
                "backend" % head.port,
        "body": "BackendTimeout: http://127.0.0.1:%d: timed out reading the response body"
                % body.port,
        "upload": "BackendTimeout: http://127.0.0.1:%d: timed out after 1s waiting for the "
                  "backend" % upload.port}


@pytest.mark.parametrize("kind", KINDS)
def test_a_backend_that_does_not_accept_gets_a_504_after_connect_timeout(kind, tmp_path):
    with contextlib.ExitStack() as stack:
        ini = proxy_ini(tmp_path, "http://127.0.0.1:%d" % full_listener(stack),
                        connect_timeout=1)
        with serve(kind, ini, tmp_path) as front:
            answer = request(front.port, "/", accept=JSON["Accept"], timeout=HANG)
            assert "timed out connecting" in json_error(answer, 504)["message"]


@pytest.mark.parametrize("kind", KINDS + ["eventlet-late"])
def test_kept_alive_connections_are_reused_and_a_closed_one_is_not(kind, tmp_path, backend):
    ini = proxy_ini(tmp_path, "http://127.0.0.1:%d" % backend.port)
    with serve(kind, ini, tmp_path) as front:
        for path in ("/a", "/b", "/bye"):
            answer = request(front.port, path, timeout=HANG)
            assert answer.status == 200, answer
        assert backend.connections == 1  # one connection, pooled and reused
        # The backend closed it while it was idle in the pool: the idle probe sees
        # that, and a POST (never sent twice) goes on a new connection.
        assert backend.handler.closed.wait(HANG)
        answer = request(front.port, "/post", method="POST", body=b"x" * 1000, timeout=HANG)
        assert answer.status == 200, answer
        assert backend.connections == 2
        assert backend.requests[-1][1] == b"x" * 1000


# -- signed requests and the nonce stores ----------------------------------------------

@pytest.fixture
def nonce_store(request):
    """``(the nonce_store option, the RedisServer or None)`` for ``memory`` or ``redis``."""
    if request.param == "memory":
        return "memory", None
    redis = request.getfixturevalue("redis_server")
    return redis.url, redis


@pytest.mark.parametrize("kind, nonce_store", [
    ("gevent", "memory"), ("gevent", "redis"), ("gevent-preload", "memory"),
    ("eventlet", "memory"), ("eventlet", "redis")], indirect=["nonce_store"])
def test_a_signed_request_is_verified_once_behind_cooperative_workers(kind, nonce_store,
                                                                       tmp_path, secret_file):
    url, redis = nonce_store
    backend_ini = tmp_path / "backend.ini"
    backend_ini.write_text(textwrap.dedent("""
        [pipeline:main]
        pipeline = verify sample
        [filter:verify]
        use = egg:WSGIProxy#main
        secret_file = {secret}
        nonce_store = {url}
        [app:sample]
        use = egg:WSGIProxy#sample
        """).format(secret=secret_file, url=url))
    (tmp_path / "backend").mkdir()
    (tmp_path / "front").mkdir()
    with serve(kind, backend_ini, tmp_path / "backend", "backend") as back:
        front_ini = tmp_path / "front.ini"
        front_ini.write_text(textwrap.dedent("""
            [pipeline:main]
            pipeline = user proxy
            [filter:user]
            use = egg:WSGIProxy#demo_user
            [app:proxy]
            use = egg:WSGIProxy#main
            href = http://127.0.0.1:{port}
            secret_file = {secret}
            string_keys = REMOTE_USER
            """).format(port=back.port, secret=secret_file))
        with serve(kind, front_ini, tmp_path / "front") as front:
            for i in range(3):
                answer = request_json(front.port, "/shop/%d?user=alice" % i,
                                      headers={"Host": "shop.example"})
                seen = answer.json()
                assert seen["REMOTE_USER"] == "alice" and seen["wsgiproxy.key_id"]
                assert seen["HTTP_HOST"] == "shop.example"
                assert seen["PATH_INFO"] == "/shop/%d" % i
        # The store remembers each nonce: a captured request is served once.
        data = capture_signed_request(secret_file, "/replay?format=json")
        answers = [parse_answer(send_raw(back.port, data)) for _ in range(3)]
        assert [a.status for a in answers] == [200, 403, 403], answers
        assert "replayed" in json_error(answers[1], 403)["message"]
    if redis is not None:
        assert len(redis.keys(redis.prefix + "*")) == 4


def request_json(port, path, **kwargs):
    """GET ``path`` asking for JSON; the answer must be a 200."""
    answer = request(port, path, accept=JSON["Accept"], timeout=HANG, **kwargs)
    assert answer.status == 200, answer
    return answer


# -- spawn -----------------------------------------------------------------------------

def spawn_ini(directory, piddir, mode="serve", **options):
    """A file with ``[app:main]`` a SpawningApplication running tests/spawnchild.py."""
    path = directory / "spawn.ini"
    lines = ["[app:main]", "use = egg:WSGIProxy#spawn",
             "start_script = %s %s __PORT__ %s" % (sys.executable, CHILD, piddir),
             "script_env = CHILD_MODE=%s" % mode]
    lines += ["%s = %s" % item for item in options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def child_of(front, path="/"):
    """The pid of the child that answered ``path`` through ``front``; it is the app's child."""
    seen = request_json(front.port, path).json()
    assert seen["ppid"] == front.pid, seen
    return seen["pid"]


@pytest.mark.parametrize("kind", KINDS)
def test_spawn_starts_restarts_idles_out_and_stops_its_children(kind, tmp_path, piddir):
    ini = spawn_ini(tmp_path, piddir, idle_shutdown=1, stop_timeout=5)
    with serve(kind, ini, tmp_path) as front:
        assert pids_in(piddir) == []  # nothing runs before the first request
        first = child_of(front)
        assert pids_in(piddir) == [first]
        # Killed: the next request starts another one.
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: pid_gone(first), HANG, "the killed child to be reaped")
        second = child_of(front)
        assert second != first
        # Idle for idle_shutdown: stopped, and started again by the next request.
        wait_until(lambda: pid_gone(second), HANG, "the idle child to be stopped")
        third = child_of(front)
        assert pids_in(piddir) == sorted([first, second, third])
        watchdog = watchdog_of(front.pid)
        assert watchdog is not None
        status = front.stop()
        # The application stopped and reaped them before it ended: nothing left, and
        # nothing for the watchdog to do.
        assert pid_gone(third) and group_gone(third) and pid_gone(watchdog)
        assert status == (0 if front.gunicorn else -signal.SIGTERM), front.output()
        assert "is gone; stopping" not in front.output()


@pytest.mark.parametrize("kind", ["gevent", "eventlet"])
def test_kill_9_of_a_cooperative_worker_leaves_no_child(kind, tmp_path, piddir):
    # The children ignore SIGTERM, and so the parent-death signal: only the lifeline
    # (the watchdog) stops them, with SIGKILL after stop_timeout.
    ini = spawn_ini(tmp_path, piddir, mode="ignore-term", stop_timeout=1)
    with serve(kind, ini, tmp_path) as front:
        child = child_of(front)
        watchdog = watchdog_of(front.pid)
        os.kill(front.pid, signal.SIGKILL)
        wait_until(lambda: group_gone(child), HANG, "the child to be stopped by the watchdog")
        wait_until(lambda: pid_gone(watchdog) or parent_of(watchdog) != front.pid, HANG,
                   "the watchdog to exit")


#: A process that starts a spawn child with gevent's patching, but with an os.close that
#: closes at once, as gevent's did before 25.8.1 (setup.py allows gevent 24).
GEVENT_OS_CLOSE_AT_ONCE = """
import os, sys
from gevent import monkey
monkey.patch_all()
os.close = monkey.get_original("os", "close")
from webob import Request
from wsgiproxy.spawn import SpawningApplication

app = SpawningApplication([sys.executable, sys.argv[1], "__PORT__", sys.argv[2]], stop_timeout=5)
response = Request.blank("/").get_response(app)
print(response.status_int, response.json["pid"] if response.status_int == 200 else response.text)
app.close()
"""


def test_spawn_under_gevent_with_an_os_close_that_closes_at_once(tmp_path, piddir):
    # gevent's Popen forks in Python, running at-fork hooks in the child: the lifeline
    # the child must hand to its program is not closed there.
    script = tmp_path / "parent.py"
    script.write_text(GEVENT_OS_CLOSE_AT_ONCE)
    done = subprocess.run([sys.executable, str(script), CHILD, piddir], capture_output=True,
                          text=True, timeout=HANG)
    status, _, rest = done.stdout.partition(" ")
    assert status == "200", done.stdout + done.stderr
    pid = int(rest)
    assert pids_in(piddir) == [pid] and pid_gone(pid)
