"""Several backends as real processes: a SIGKILL under load, a restart, the split, the budget.

Each backend (tests/balancebackend.py) writes every request to its own log as
it arrives, so what ran where is counted on the backends, even on one that
was killed.  The proxy is called in-process from several threads.
"""

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time

import pytest
from webob import Request

from wsgiproxy.app import WSGIProxyApp

from .servers import Process, free_port, wait_for_port, wait_until

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "balancebackend.py")


class Backend:
    """One backend process on its own port, its requests in ``log``."""

    def __init__(self, directory, delay=0.0, status=200, port=None):
        self.port = port or free_port()
        self.log = os.path.join(str(directory), "backend-%d.log" % self.port)
        self.delay = delay
        self.status = status
        self.process = None

    def start(self):
        env = dict(os.environ, BACKEND_DELAY=str(self.delay), BACKEND_STATUS=str(self.status))
        self.process = Process([sys.executable, PROGRAM, str(self.port), self.log], env=env)
        wait_for_port(self.port, process=self.process.proc)
        return self

    def kill(self):
        os.killpg(self.process.proc.pid, signal.SIGKILL)
        self.process.proc.wait(10)

    def stop(self):
        if self.process is not None:
            self.process.__exit__(None, None, None)

    def requests(self):
        """``[(time, method, id), ...]`` of what reached it."""
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [tuple(line.split()) for line in f if line.strip()]

    def ids(self, method=None):
        return [ident for _, m, ident in self.requests() if method in (None, m)]


@pytest.fixture
def backends(tmp_path):
    started = []

    def start(count, **kw):
        new = [Backend(tmp_path, **kw).start() for _ in range(count)]
        started.extend(new)
        return new

    yield start
    for backend in started:
        backend.stop()


def proxy_for(backends, **options):
    return WSGIProxyApp(["http://127.0.0.1:%d/" % b.port for b in backends], **options)


def call(proxy, ident, method="GET", body=None):
    """One request through ``proxy``: ``(status, port or None)``."""
    request = Request.blank("/x", method=method, headers={"X-Id": ident})
    if body is not None:
        request.body = body
    response = request.get_response(proxy)
    body = response.body  # read to the end and closed, as a WSGI server does
    port = None
    if response.status_int == 200:
        port = json.loads(body)["port"]
    return response.status_int, port


class Load:
    """``threads`` clients sending requests through ``proxy`` until stopped; every answer
    kept as ``{id: (status, port, started)}``."""

    def __init__(self, proxy, threads, method="GET", body=None, limit=None):
        self.proxy = proxy
        self.method = method
        self.body = body
        self.limit = limit
        self.answers = {}
        self.stopping = threading.Event()
        self.errors = []
        self.lock = threading.Lock()
        self.counter = 0
        self.threads = [threading.Thread(target=self.run, args=(n,)) for n in range(threads)]

    def run(self, n):
        try:
            while not self.stopping.is_set():
                with self.lock:
                    if self.limit is not None and self.counter >= self.limit:
                        return
                    self.counter += 1
                    ident = "r%d" % self.counter
                started = time.monotonic()
                status, port = call(self.proxy, ident, self.method, self.body)
                with self.lock:
                    self.answers[ident] = (status, port, started)
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
        assert not self.errors, self.errors

    def wait(self):
        for thread in self.threads:
            thread.join(120)
        assert not self.errors, self.errors

    def answered(self):
        with self.lock:
            return dict(self.answers)


def kill_with_one_in_flight(victim, load):
    """SIGKILL ``victim`` while it holds a request it has not answered: their ids.

    Only requests that arrived in the last 50 ms count: the victim takes 200 ms
    to answer, so it cannot answer them between the check and the kill.
    """
    def unanswered():
        answered = load.answered()
        recent = time.time() - 0.05
        return [i for t, _, i in victim.requests() if float(t) > recent and i not in answered]
    in_flight = wait_until(unanswered, what="a request in flight on the victim")
    victim.kill()
    return in_flight, time.monotonic()


def test_sigkill_under_a_get_load_fails_no_get(backends):
    group = backends(3, delay=0.2)
    victim = group[1]
    proxy = proxy_for(group, fail_timeout=60)
    try:
        with Load(proxy, 6) as load:
            wait_until(lambda: len(load.answered()) >= 20, what="the load to run")
            in_flight, killed_at = kill_with_one_in_flight(victim, load)
            wait_until(lambda: sum(1 for a in load.answered().values() if a[2] > killed_at) >= 30,
                       what="requests after the kill")
        answers = load.answered()
        assert [i for i, a in answers.items() if a[0] != 200] == []
        # The requests the victim held when it died were answered by another backend.
        for ident in in_flight:
            assert answers[ident][:2] != (200, victim.port), ident
            assert answers[ident][0] == 200
        assert sum(1 for a in answers.values() if a[1] == victim.port) > 0
        assert [b["out"] for b in proxy.balancer.state()] == [False, True, False]
    finally:
        proxy.close()


def test_sigkill_under_a_post_load_runs_no_post_twice(backends):
    group = backends(3, delay=0.2)
    victim = group[0]
    proxy = proxy_for(group, fail_timeout=60)
    try:
        with Load(proxy, 6, method="POST", body=b"pay 10 euros") as load:
            wait_until(lambda: len(load.answered()) >= 20, what="the load to run")
            in_flight, killed_at = kill_with_one_in_flight(victim, load)
            wait_until(lambda: sum(1 for a in load.answered().values() if a[2] > killed_at) >= 30,
                       what="requests after the kill")
        answers = load.answered()
        ran = [i for b in group for i in b.ids("POST")]
        assert len(ran) == len(set(ran)), "a POST ran twice"
        # What the victim held may have run: it was not sent elsewhere, the client got a 502.
        for ident in in_flight:
            assert answers[ident][0] == 502, (ident, answers[ident])
            assert ran.count(ident) == 1
        # Every POST that started after the kill was sent where it could run: none failed.
        assert [i for i, a in answers.items() if a[2] > killed_at and a[0] != 200] == []
        assert all(ran.count(i) == 1 for i, a in answers.items() if a[0] == 200)
    finally:
        proxy.close()


def test_a_restarted_backend_gets_requests_after_fail_timeout(backends, caplog):
    caplog.set_level(logging.INFO, logger="wsgiproxy.balancer")
    group = backends(2)
    victim = group[1]
    fail_timeout = 1.5
    proxy = proxy_for(group, fail_timeout=fail_timeout)
    name = "127.0.0.1:%d" % victim.port
    try:
        for n in range(4):
            assert call(proxy, "a%d" % n) == (200, group[n % 2].port)
        victim.kill()
        statuses = {call(proxy, "b%d" % n)[0] for n in range(4)}
        assert statuses == {200}
        out = [r for r in caplog.records if "taken out" in r.getMessage()]
        assert len(out) == 1 and name in out[0].getMessage()
        with contextlib.suppress(OSError):
            os.unlink(victim.log)
        victim.start()
        counter = iter(range(10 ** 6))

        def reached():
            assert call(proxy, "c%d" % next(counter))[0] == 200
            return victim.requests()

        first = wait_until(reached, timeout=fail_timeout + 10, what="the victim to be back")
        assert float(first[0][0]) >= out[0].created + fail_timeout - 0.05
        for n in range(6):
            call(proxy, "d%d" % n)
        assert len(victim.ids()) >= 3
        back = [r for r in caplog.records if "is back" in r.getMessage()]
        assert len(back) == 1 and name in back[0].getMessage()
        assert len([r for r in caplog.records if "taken out" in r.getMessage()]) == 1
    finally:
        proxy.close()


def test_round_robin_splits_evenly(backends):
    group = backends(3)
    proxy = proxy_for(group)
    try:
        Load(proxy, 3, limit=300).__enter__().wait()
        assert [len(b.ids()) for b in group] == [100, 100, 100]
    finally:
        proxy.close()


def test_least_conn_avoids_a_slow_backend(backends):
    slow = backends(1, delay=0.5)[0]
    fast = backends(2, delay=0.005)
    group = [fast[0], slow, fast[1]]
    proxy = proxy_for(group, balance="least_conn")
    try:
        load = Load(proxy, 4, limit=120).__enter__()
        load.wait()
        assert all(a[0] == 200 for a in load.answered().values())
        assert len(slow.ids()) <= 10, [len(b.ids()) for b in group]
    finally:
        proxy.close()


@pytest.mark.parametrize("budget", [20.0, 100.0])
def test_the_budget_stops_a_retry_storm(backends, budget):
    group = backends(3, delay=0.05, status=503)
    proxy = proxy_for(group, next_upstream="error timeout http_503", retry_budget=budget)
    requests = 96
    try:
        load = Load(proxy, 12, limit=requests).__enter__()
        load.wait()
        assert {a[0] for a in load.answered().values()} == {503}
        tries = sum(len(b.ids()) for b in group)
        if budget == 100.0:  # no budget: every request tried every backend
            assert tries == 3 * requests
        else:
            assert requests < tries <= 1.6 * requests
        assert proxy.balancer.retrying == 0 and proxy.balancer.in_flight == 0
    finally:
        proxy.close()
