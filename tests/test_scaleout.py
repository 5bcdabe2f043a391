"""Scale-out with real parts: gunicorn workers, a shared Redis nonce store, spawn under
gunicorn, and nginx spreading requests over two backends.

Every test starts its own servers on loopback (redis-server, gunicorn, nginx,
waitress) and stops them; processes are followed by pid, and the tests
synchronise on ports, pids, files and log lines with deadlines, never on bare
sleeps.
"""

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import redis
from paste.deploy import loadapp  # type: ignore[import-untyped]

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.protocol import MemoryNonceStore
from wsgiproxy.redisstore import NonceStoreUnavailable, RedisNonceStore
from wsgiproxy.wsgiapp import make_middleware

from .client import JSON, get_json, json_error, parse_answer, request, send_raw
from .servers import (
    BIN,
    Gunicorn,
    RedisServer,
    WaitressServer,
    alive,
    capture_signed_request,
    children_of,
    counted,
    echo_app,
    free_port,
    nginx_conf,
    nginx_process,
    pids_in,
    wait_for_port,
    wait_until,
    with_environ,
)

PREFIX = RedisServer.prefix

pytestmark = pytest.mark.timeout(45)


def gunicorn(tmp_path, ini, workers, *options):
    """gunicorn --paste ``ini`` -w ``workers`` on a free port (servers.Gunicorn: entered once
    every worker is ready; its access log has the worker pids)."""
    return Gunicorn([os.path.join(BIN, "gunicorn"), "--paste", ini,
                     "-b", "127.0.0.1:%d" % free_port(), "-w", str(workers),
                     "--graceful-timeout", "10", *options], tmp_path)


def as_alice(app):
    return with_environ(app, REMOTE_USER="alice")


BACKEND_INI = """
[DEFAULT]
secret_file = {secret}

[pipeline:main]
pipeline = verify sample

[filter:verify]
use = egg:WSGIProxy#main
{store}

[app:sample]
use = egg:WSGIProxy#sample
"""


def backend_ini(tmp_path, secret_file, store):
    path = tmp_path / "backend.ini"
    path.write_text(BACKEND_INI.format(secret=secret_file, store=store))
    return path


# -- the Redis store on its own ---------------------------------------------------

def test_redis_store_check_and_add_expiry_and_url(redis_server):
    store = RedisNonceStore(redis_server.url + "&clock_skew=5&socket_timeout=0.25")
    try:
        assert store.prefix == PREFIX and store.clock_skew == 5.0 and store.retries == 1
        kwargs = store.client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.25 and kwargs["socket_connect_timeout"] == 0.5
        expires_at = time.time() + 60
        assert store.check_and_add("kid1", "a" * 32, expires_at) is True
        assert store.check_and_add("kid1", "a" * 32, expires_at) is False
        assert store.check_and_add("kid2", "a" * 32, expires_at) is True  # per key id
        direct = redis_server.client()
        key = PREFIX + "kid1:" + "a" * 32
        assert direct.exists(key)
        ttl = direct.pttl(key)  # expires_at + clock_skew, from our clock
        assert 60000 < ttl <= 65000, ttl
        # Expired nonces go away on their own (kept at least a second).
        assert store.check_and_add("kid1", "b" * 32, time.time() - 100) is True
        assert 0 < direct.pttl(PREFIX + "kid1:" + "b" * 32) <= 1000
        direct.close()
    finally:
        store.close()


def test_redis_store_url_password_not_shown_and_bad_urls():
    store = RedisNonceStore("redis://user:s3cret@127.0.0.1:1/2?prefix=x:")
    assert "s3cret" not in repr(store) and "127.0.0.1:1/2" in repr(store)
    assert store.prefix == "x:"
    with pytest.raises(NonceStoreUnavailable) as info:
        store.check_and_add("k", "n", time.time() + 10)  # nothing listens on port 1
    assert "s3cret" not in str(info.value) and "nonce store unavailable" in str(info.value)
    store.close()
    with pytest.raises(ValueError, match="must start with redis://"):
        RedisNonceStore("http://127.0.0.1:6379/0")
    with pytest.raises(TypeError):
        RedisNonceStore(42)


class _LosesFirstAnswer:
    """A redis client whose first SET reaches Redis but whose answer is lost (a timeout)."""

    def __init__(self, client):
        self.client = client
        self.lost = False

    def set(self, *args, **kwargs):
        result = self.client.set(*args, **kwargs)
        if not self.lost:
            self.lost = True
            raise redis.exceptions.TimeoutError("Timeout reading from socket")
        return result

    def get(self, key):
        return self.client.get(key)


def test_redis_store_retry_does_not_mistake_its_own_write_for_a_replay(redis_server):
    client = redis_server.client()
    store = RedisNonceStore(_LosesFirstAnswer(client), prefix=PREFIX)
    assert store.check_and_add("k", "c" * 32, time.time() + 30) is True
    # A nonce that really was used before stays refused, retry or not.
    store = RedisNonceStore(_LosesFirstAnswer(client), prefix=PREFIX)
    assert store.check_and_add("k", "c" * 32, time.time() + 30) is False

    class Broken:
        def set(self, *args, **kwargs):
            raise redis.exceptions.ResponseError("READONLY You can't write against a replica.")
        get = set
    with pytest.raises(NonceStoreUnavailable, match="READONLY"):
        RedisNonceStore(Broken()).check_and_add("k", "d" * 32, time.time() + 30)
    client.close()


def test_ini_spelling_and_lazy_import(redis_server, secret_file):
    mw = make_middleware(echo_app, {}, secret_file=secret_file,
                                         nonce_store=redis_server.url)
    assert isinstance(mw.nonce_store, RedisNonceStore)
    assert mw.nonce_store.location == "redis://127.0.0.1:%d/0" % redis_server.port
    mw.nonce_store.close()
    mw = make_middleware(echo_app, {}, secret_file=secret_file,
                                         nonce_store="wsgiproxy.protocol:MemoryNonceStore")
    assert isinstance(mw.nonce_store, MemoryNonceStore)
    # The core package does not import redis-py.
    code = ("import sys, wsgiproxy.middleware, wsgiproxy.wsgiapp, wsgiproxy.redisstore; "
            "assert 'redis' not in sys.modules, 'redis imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# -- gunicorn -w 4 with signing -------------------------------------------------

def replay_until(server, data, enough, rounds=15, batch=8):
    """Replay ``data`` to the gunicorn ``server`` in concurrent batches, a new connection
    each, until ``enough(answers, replays)`` (or ``rounds`` batches).

    Returns the answers (client.Answer) and the access log entries of the replays.
    """
    answers = []

    def replays():
        return [e for e in server.access_log() if "/replay" in e[2]]

    with concurrent.futures.ThreadPoolExecutor(batch) as pool:
        for _ in range(rounds):
            answers.extend(pool.map(lambda _: parse_answer(send_raw(server.port, data)),
                                    range(batch)))
            wait_until(lambda: len(replays()) >= len(answers), 10, "the access log")
            if enough(answers, replays()):
                break
    return answers, replays()


def refused_as_replayed(answer):
    return "replayed" in json_error(answer, 403)["message"]


def test_gunicorn_workers_share_the_redis_store_and_refuse_replays(tmp_path, redis_server,
                                                                    secret_file):
    ini = backend_ini(tmp_path, secret_file, "nonce_store = " + redis_server.url)
    with gunicorn(tmp_path, ini, 4) as backend:
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % backend.port, secret_file=secret_file,
                             string_keys=["REMOTE_USER"])
        with WaitressServer(as_alice(proxy), threads=8) as front, \
                concurrent.futures.ThreadPoolExecutor(8) as pool:
            seen_all = list(pool.map(lambda i: get_json(
                front.port, "/page/%d" % i, {"Host": "www.example.com"}), range(40)))
        proxy.close()
        workers = set()
        for seen in seen_all:
            assert seen["REMOTE_USER"] == "alice"
            assert seen["HTTP_HOST"] == "www.example.com"
            assert seen["wsgiproxy.key_id"]
            workers.add(seen["wsgiproxy.sample.pid"])
        assert len(workers) >= 2, "all 40 concurrent requests went to one worker"
        # Every accepted nonce is in Redis, under the configured prefix.
        assert len(redis_server.keys(PREFIX + "*")) == 40

        # A captured signed request, replayed straight to the backend, again and
        # again on new connections: only the first is served, whichever worker
        # gets the others.
        data = capture_signed_request(secret_file, "/replay?format=json")
        answers, replays = replay_until(
            backend, data, lambda answers, replays: len({pid for pid, _, _ in replays}) >= 3)
        assert [answer.status for answer in answers].count(200) == 1
        for answer in answers:
            assert answer.status == 200 or refused_as_replayed(answer), answer
        assert len({pid for pid, status, _ in replays if status == 403}) >= 2
        assert len(redis_server.keys(PREFIX + "*")) == 41


def test_without_a_shared_store_replays_get_through_other_workers(tmp_path, secret_file):
    """Why the store matters: each worker's in-memory store knows only its own nonces."""
    ini = backend_ini(tmp_path, secret_file, "")
    with gunicorn(tmp_path, ini, 4) as backend:
        data = capture_signed_request(secret_file, "/replay?format=json")
        answers, replays = replay_until(
            backend, data,
            lambda answers, replays: [a.status for a in answers].count(200) >= 2)
    served = [pid for pid, status, _ in replays if status == 200]
    # The same signed request was served more than once: once per worker that got it.
    assert len(served) >= 2, replays
    assert len(served) == len(set(served)) <= 4
    for answer in answers:
        assert answer.status == 200 or refused_as_replayed(answer), answer


# -- fail closed --------------------------------------------------------------------

def test_redis_down_or_stalled_fails_closed_with_503(tmp_path, redis_server, secret_file):
    ini = backend_ini(tmp_path, secret_file, "nonce_store = %s&socket_timeout=0.3"
                      % redis_server.url)
    backend_app = loadapp("config:" + str(ini))
    store = backend_app.nonce_store
    with WaitressServer(backend_app) as backend:
        proxy = WSGIProxyApp(backend.url, secret_file=secret_file, string_keys=["REMOTE_USER"])
        with WaitressServer(as_alice(proxy)) as front:
            def through_proxy():
                return request(front.port, "/p", headers={"Host": "www.example.com"},
                               accept="application/json")

            assert through_proxy().status == 200
            captured = capture_signed_request(secret_file, "/replay?format=json")
            assert parse_answer(send_raw(backend.port, captured)).status == 200

            def assert_refused():
                started = time.monotonic()
                answer = through_proxy()
                elapsed = time.monotonic() - started
                error = json_error(answer, 503)
                assert error["type"] == "ServiceUnavailable"
                assert "nonce store unavailable" in error["message"]
                assert answer.headers["Retry-After"] == "5"
                replay = parse_answer(send_raw(backend.port, captured))
                assert json_error(replay, 503) == error  # never 200
                return elapsed

            # Stalled: Redis accepts connections but does not answer (SIGSTOP).
            os.kill(redis_server.process.proc.pid, signal.SIGSTOP)
            try:
                elapsed = assert_refused()
            finally:
                os.kill(redis_server.process.proc.pid, signal.SIGCONT)
            # Two attempts of 0.3 s each, plus connecting: bounded by the timeouts.
            assert elapsed < 3, elapsed
            assert through_proxy().status == 200

            # Down: the server is gone.
            redis_server.stop()
            assert_refused()
            # Unsigned requests are refused as before (403), not 503.
            answer = request(backend.port, "/x", accept="application/json")
            assert "missing" in json_error(answer, 403)["message"]

            # Back (same port, empty): requests are served again.
            redis_server.start()
            assert through_proxy().status == 200
            # A restart between two requests leaves a closed pooled connection,
            # which is replaced without an error.
            redis_server.stop()
            redis_server.start()
            assert through_proxy().status == 200
        proxy.close()
    store.close()


def test_any_store_exception_is_answered_503_not_500(secret_file, caplog):
    class Broken:
        def check_and_add(self, key_id, nonce, expires_at):
            raise RuntimeError("disk on fire")

    with WaitressServer(WSGIProxyMiddleware(echo_app, secret_file=secret_file,
                                            nonce_store=Broken())) as backend:
        proxy = WSGIProxyApp(backend.url, secret_file=secret_file)
        with WaitressServer(proxy) as front:
            answer = request(front.port, "/x", headers=JSON)
        proxy.close()
    error = json_error(answer, 503)
    assert answer.headers["Retry-After"] == "5"
    assert error["message"].startswith("nonce store unavailable")
    assert b"Traceback" not in answer.body
    assert b"disk on fire" not in answer.body  # the details are logged, not shown
    assert any("disk on fire" in r.getMessage() and r.levelname == "ERROR"
               for r in caplog.records)


# -- spawn under several gunicorn workers -----------------------------------------

@pytest.fixture
def spawn_ini(tmp_path):
    """An ``egg:WSGIProxy#spawn`` config; children write their pid into ``piddir``.

    At teardown no child may be left; any that is (a test failed, or the
    SIGKILL test) is killed by its pid, as a safety net.
    """
    piddir = tmp_path / "pids"
    piddir.mkdir()
    child = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spawnchild.py")
    ini = tmp_path / "spawn.ini"
    ini.write_text(textwrap.dedent("""
        [app:main]
        use = egg:WSGIProxy#spawn
        start_script = {python} {child} __PORT__ {piddir}
        stop_timeout = 5
        read_timeout = 30
        """).format(python=sys.executable, child=child, piddir=piddir))
    yield ini, str(piddir)
    left = [pid for pid in pids_in(piddir) if alive(pid)]
    for pid in left:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, "children left running: %s" % left


def test_each_gunicorn_worker_supervises_its_own_children(tmp_path, spawn_ini):
    ini, piddir = spawn_ini
    with gunicorn(tmp_path, ini, 3, "-k", "sync") as master:
        port, master_pid = master.port, master.pid
        workers = wait_until(lambda: len(children_of(master_pid)) == 3
                             and children_of(master_pid), what="3 workers")
        # Three requests held open at once: a sync worker serves one at a time,
        # so each worker gets one, and each starts a child of its own.
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            held = [pool.submit(get_json, port, "/hold") for _ in range(3)]
            holding = wait_until(
                lambda: len([n for n in os.listdir(piddir) if n.startswith("inflight-")]) == 3
                and [int(n.split("-")[1]) for n in os.listdir(piddir) if n.startswith("inflight-")],
                what="three held requests")
            open(os.path.join(piddir, "release"), "w").close()
            answers = [f.result(timeout=30) for f in held]
        children = sorted(a["pid"] for a in answers)
        assert sorted(holding) == children and len(set(children)) == 3
        assert len({a["port"] for a in answers}) == 3  # free ports, no clash
        worker_of = {a["pid"]: a["ppid"] for a in answers}
        assert sorted(worker_of.values()) == workers  # one child per worker
        assert pids_in(piddir) == children

        # gunicorn stops one worker (SIGTERM, as on scale-down or a timeout
        # restart): its child goes with it, the others are untouched, and the
        # master starts a replacement worker.
        first = children[0]
        os.kill(worker_of[first], signal.SIGTERM)
        wait_until(lambda: not alive(first), what="the stopped worker's child to exit")
        wait_until(lambda: len(children_of(master_pid)) == 3
                   and worker_of[first] not in children_of(master_pid), what="a new worker")
        assert all(alive(pid) for pid in children[1:])

        # SIGHUP: gunicorn reloads, replacing every worker; every old child is stopped.
        os.kill(master_pid, signal.SIGHUP)
        wait_until(lambda: not any(alive(pid) for pid in children[1:]),
                   what="the old workers' children to exit")
        wait_until(lambda: len(children_of(master_pid)) == 3
                   and not set(children_of(master_pid)) & set(workers), what="new workers")
        fresh = get_json(port)
        assert fresh["pid"] not in children and alive(fresh["pid"])
        assert fresh["ppid"] in children_of(master_pid)

        # Stopping the master stops every worker, and every worker its children.
        master.stop()
    started = pids_in(piddir)
    assert fresh["pid"] in started
    wait_until(lambda: not any(alive(pid) for pid in started), 10, "every child to exit")


def test_worker_restarted_after_max_requests_stops_its_children(tmp_path, spawn_ini):
    ini, piddir = spawn_ini
    with gunicorn(tmp_path, ini, 2, "-k", "sync", "--max-requests", "3") as master:
        seen = {}  # child pid -> worker pid
        for _ in range(12):
            answer = get_json(master.port)
            seen[answer["pid"]] = answer["ppid"]
        # 12 requests, 3 per worker life: at least 4 workers, each with its child.
        assert len(set(seen.values())) >= 4, seen
        for child, worker in seen.items():
            if worker not in children_of(master.pid):
                wait_until(lambda child=child: not alive(child),
                           what="child %d of the restarted worker %d to exit" % (child, worker))
        master.stop()
    wait_until(lambda: not any(alive(pid) for pid in pids_in(piddir)), 10,
               "every child to exit")


def test_sigkilled_worker_takes_its_child_with_it(tmp_path, spawn_ini):
    """SIGKILL gives a worker no chance to stop its children, yet they die with it
    (docs/scaleout.rst; tests/test_spawn_lifeline.py has the whole process trees)."""
    ini, piddir = spawn_ini
    with gunicorn(tmp_path, ini, 1, "-k", "sync") as master:
        first = get_json(master.port)
        os.kill(first["ppid"], signal.SIGKILL)
        wait_until(lambda: not alive(first["pid"]), what="the killed worker's child to die")
        wait_until(lambda: children_of(master.pid)
                   and first["ppid"] not in children_of(master.pid), what="a new worker")
        second = get_json(master.port)  # the new worker starts a child of its own
        assert second["pid"] != first["pid"] and second["ppid"] in children_of(master.pid)
        master.stop()
    wait_until(lambda: not alive(second["pid"]), 10, "the new worker's child to exit")


# -- several backend hosts behind nginx ---------------------------------------------

#: The ``http {}`` body of the nginx in front of two backends (for servers.nginx_conf).
NGINX_HTTP = """\
    upstream wsgiproxy_backends {{
        server 127.0.0.1:{backend_a};
        server 127.0.0.1:{backend_b};
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{port};

        location / {{
            proxy_pass http://wsgiproxy_backends;
            # Keep-alive to the backends.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The Host WSGIProxyApp signed; nginx would send the upstream's name.
            proxy_set_header Host $http_host;
            # X-Forwarded-* and X-WSGIProxy-* pass through unchanged: do not
            # set them here (they are covered by the signature).
        }}

        # Without proxy_set_header Host: nginx sends "Host: wsgiproxy_backends".
        location /default-host/ {{
            proxy_pass http://wsgiproxy_backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def test_nginx_spreads_signed_requests_over_two_backends(tmp_path, secret_file):
    counts = {"a": 0, "b": 0}

    def named(name):  # each backend verifies with the same secret file
        return WSGIProxyMiddleware(counted(echo_app, counts, name), secret_file=secret_file)

    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    with WaitressServer(named("a")) as backend_a, WaitressServer(named("b")) as backend_b:
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, NGINX_HTTP.format(
            port=port, backend_a=backend_a.port, backend_b=backend_b.port),
            log_format="$request $status $upstream_addr"))
        with nginx_process(prefix, conf) as nginx:
            wait_for_port(port, process=nginx.proc)
            proxy = WSGIProxyApp("http://127.0.0.1:%d" % port, secret_file=secret_file,
                                 string_keys=["REMOTE_USER"], sign_body_max=65536)
            with WaitressServer(as_alice(proxy)) as front:
                for i in range(20):
                    seen = get_json(front.port, "/item/%d?q=%d" % (i, i),
                                    {"Host": "shop.example:8080"})
                    assert seen["REMOTE_USER"] == "alice"  # a string key, signed
                    assert seen["HTTP_HOST"] == "shop.example:8080"
                    assert seen["PATH_INFO"] == "/item/%d" % i
                    assert seen["QUERY_STRING"] == "q=%d" % i
                    assert seen["REMOTE_ADDR"] == "127.0.0.1"
                    assert seen["wsgiproxy.key_id"]
                # A body, covered by the signature, through nginx.
                answer = request(front.port, "/upload", "POST", body=b"x" * 5000,
                                 headers={"Content-Type": "text/plain"}, accept="application/json")
                assert answer.status == 200, answer
                assert answer.json()["body"] == "x" * 5000
                # Without proxy_set_header Host, the Host that reaches the backend is not
                # the one signed: refused.  The setting matters.
                answer = request(front.port, "/default-host/x", headers=JSON)
                assert "bad signature" in json_error(answer, 403)["message"]
            proxy.close()
    assert counts["a"] >= 5 and counts["b"] >= 5, counts  # round robin over both
    assert sum(counts.values()) == 21  # the refused request never reached an app
    upstreams = (prefix / "access.log").read_text()
    assert "127.0.0.1:%d" % backend_a.port in upstreams
    assert "127.0.0.1:%d" % backend_b.port in upstreams
