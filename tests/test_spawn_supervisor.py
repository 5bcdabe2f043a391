"""The spawn supervisor's slot state machine, driven without processes.

The supervisor starts and stops children only through the two callables it
is given, so these tests give it fake children (which "die" when told) and
a clock they move themselves.  tests/test_spawn.py runs the same paths with
real processes.
"""

import json
import logging
import threading
import time

import pytest

from wsgiproxy.errors import BackendUnavailable, ShuttingDown, StartFailed
from wsgiproxy.spawn import SpawningApplication
from wsgiproxy.spawn.process import describe_exit
from wsgiproxy.spawn.supervisor import RUNNING, STARTING, STOPPED, STOPPING, Slot, Supervisor

from .servers import wait_until


class FakeChild:
    """What the supervisor uses of a process.Child."""

    def __init__(self, slot, pid):
        self.slot, self.pid, self.port = slot, pid, 40000 + pid
        self.label = "fake[%d] pid %d" % (slot, pid)
        self.argv = ["fake-server", str(self.port)]
        self.stopping = False
        self.exited = threading.Event()
        self.code = None
        self.on_exit = None

    @property
    def dead(self):
        return self.exited.is_set()

    def watch(self, on_exit):
        self.on_exit = on_exit

    def stderr_lines(self, wait=1.0):
        return ["last words"]

    def describe_exit(self):
        return describe_exit(self.code)

    def die(self, code=1, reap=True):
        """Exit; ``reap``: the reaper thread notices (otherwise only ``dead`` tells)."""
        self.code = code
        self.exited.set()
        if reap:
            self.on_exit(self)


class WatchedCondition(threading.Condition):
    """A condition that counts the waits, so a test knows a request is waiting."""

    def __init__(self):
        super().__init__(threading.RLock())
        self.waits = threading.Semaphore(0)

    def wait(self, timeout=None):
        self.waits.release()
        return super().wait(timeout)


class Harness:
    """A Supervisor over fake children, on a clock the test moves (``now``).

    ``plan`` says what the next starts do, one function each, called with the
    adopted child: return normally (ready), or raise.  No entry: ready.
    """

    def __init__(self, workers=1, clock=None, **options):
        self.now = 1000.0
        self.plan = []
        self.starts = []      # the child of every start that succeeded
        self.children = []    # every child adopted
        self.stopped = []     # children given to stop(), in order
        self.stop_called = threading.Event()
        options = dict(dict(start_timeout=30.0, stop_timeout=10.0, idle_shutdown=None,
                            restart_backoff=1.0, max_backoff=60.0), **options)
        self.sup = Supervisor(workers, self.start, self.stop, clock=clock or (lambda: self.now),
                              log=_log(), **options)
        self.cond = self.sup._cond = self.sup.balancer._lock = WatchedCondition()

    def start(self, index, sup):
        child = sup.adopt(lambda: FakeChild(index, 100 + len(self.children)))
        self.children.append(child)
        step = self.plan.pop(0) if self.plan else None
        if step is not None:
            step(child)
        self.starts.append(child)
        return child

    def stop(self, children):
        for child in children:
            self.stopped.append(child)
            child.stopping = True
            if not child.dead:
                child.die(-15)
        self.stop_called.set()

    def held_start(self, then=None):
        """A request whose start is held until the returned gate opens: ``(request, gate)``.

        ``then(child)`` runs when the gate opens (e.g. to fail the start).
        """
        entered, gate = threading.Event(), threading.Event()

        def step(child):
            entered.set()
            assert gate.wait(10), "the test never opened the gate"
            if then is not None:
                then(child)

        self.plan.append(step)
        request = run(self.request)
        assert entered.wait(10), "the start should have begun"
        return request, gate

    def request(self):
        """One request's way through the supervisor and the balancer: ``(slot, child)``.

        Counted in flight on the child's backend, as the balancer does, until
        :meth:`done`.
        """
        slot = self.sup.choose()
        if slot is not None:
            try:
                self.sup.acquire(slot)
            finally:
                self.sup.release(slot)
        with self.sup._cond:
            backend = self.sup.balancer._pick([], self.now, False)
            assert backend is not None, "no running child"
            self.sup.balancer.in_flight += 1
            slot = next(s for s in self.sup.slots if s.backend is backend)
        return slot, slot.child

    def done(self, slot):
        """The request sent to ``slot``'s child is over."""
        self.sup.balancer._release(slot.backend)


def _log():
    return logging.getLogger("wsgiproxy.spawn.test-supervisor")


def fails(reason, code=3):
    def step(child):
        child.die(code)
        raise StartFailed(reason)
    return step


def run(target):
    """Run ``target`` in a thread; the result (or exception) is in the returned dict."""
    out = {}

    def body():
        try:
            out["value"] = target()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    out["thread"] = threading.Thread(target=body, daemon=True)
    out["thread"].start()
    return out


# -- states and transitions -------------------------------------------------------

def test_first_request_starts_the_child_and_later_ones_reuse_it():
    h = Harness()
    slot, child = h.request()
    assert slot.state == RUNNING and h.sup.pids == [100] and h.sup.ports == [40100]
    assert h.request()[1] is child
    assert len(h.starts) == 1 and slot.load() == 2 and slot.outstanding == 0


def test_choose_starts_a_child_only_when_every_running_one_is_busier():
    h = Harness(workers=2)
    first, _ = h.request()
    second, _ = h.request()
    assert (first.index, second.index) == (0, 1)  # slot 0 was busy
    h.done(first)
    h.done(second)
    assert h.sup.choose() is None  # both run, idle: the balancer chooses
    h.sup.slots[0].reset()  # say slot 0's child is gone: only 1 runs, idle
    assert h.sup.choose() is None
    h.request()  # slot 1 busy: slot 0 is started for the next one
    assert h.sup.choose() is h.sup.slots[0]


def test_slot_preference_order():
    slot = Slot(0, now=10.0)
    order = {}
    for state in (RUNNING, STOPPED, STARTING, STOPPING):
        slot.state = state
        order[state] = slot.preference(10.0)
    slot.state, slot.not_before = STOPPED, 11.0
    backing_off = slot.preference(10.0)
    assert order[RUNNING] < order[STOPPED] == order[STARTING] < order[STOPPING] < backing_off


def test_failed_start_backs_off_doubling_up_to_the_most():
    h = Harness(restart_backoff=1.0, max_backoff=3.0)
    retries = []
    for _ in range(4):
        h.plan.append(fails("it exited with code 3"))
        with pytest.raises(StartFailed) as caught:
            h.request()
        retries.append(caught.value.retry_after)
        slot = h.sup.slots[0]
        assert slot.state == STOPPED and slot.child is None
        # Within the back-off nothing starts, and the answer says when.
        with pytest.raises(StartFailed, match="next attempt in"):
            h.request()
        h.now = slot.not_before
    assert retries == [1, 2, 3, 3]
    assert len(h.children) == 4 and h.starts == []
    assert caught.value.status == 503
    assert dict(caught.value.headers)["Retry-After"] == "3"
    assert "(it exited with code 3); 4 failed starts in a row" in caught.value.message
    h.request()  # a good start resets the count
    assert h.sup.slots[0].failures == 0 and h.sup.slots[0].state == RUNNING


def test_no_back_off_when_turned_off():
    h = Harness(restart_backoff=0, max_backoff=0)
    h.plan.append(fails("boom"))
    with pytest.raises(StartFailed) as caught:
        h.request()
    assert "next attempt" not in caught.value.message and caught.value.retry_after == 1
    h.request()  # at once
    assert len(h.children) == 2


def test_an_unexpected_error_in_start_resets_without_back_off():
    h = Harness()

    def explode(child):
        raise RuntimeError("bug")

    h.plan.append(explode)
    with pytest.raises(RuntimeError):
        h.request()
    slot = h.sup.slots[0]
    assert slot.state == STOPPED and slot.failures == 0 and slot.outstanding == 0
    h.request()
    assert slot.state == RUNNING


def test_waiters_share_one_start():
    h = Harness()
    starter, gate = h.held_start()
    assert h.sup.slots[0].state == STARTING
    waiter = run(h.request)
    assert h.cond.waits.acquire(timeout=10), "the second request should wait for the start"
    gate.set()
    for out in (starter, waiter):
        out["thread"].join(10)
    assert starter["value"][1] is waiter["value"][1] is h.children[0]
    assert len(h.children) == 1


def test_waiters_get_the_failure_of_the_start_they_waited_for():
    h = Harness(restart_backoff=0, max_backoff=0)
    starter, gate = h.held_start(then=fails("it did not accept connections"))
    waiter = run(h.request)
    assert h.cond.waits.acquire(timeout=10)
    gate.set()
    for out in (starter, waiter):
        out["thread"].join(10)
        assert isinstance(out["error"], StartFailed), out
        assert "did not accept connections" in out["error"].message
    # Without back-off, the waiter did not start a second child of its own.
    assert len(h.children) == 1 and h.sup.slots[0].outstanding == 0


def test_a_child_that_dies_is_replaced_on_the_next_request():
    h = Harness()
    slot, child = h.request()
    child.die(-9)
    assert slot.state == STOPPED and slot.child is None and slot.backend is None
    assert h.sup.pids == [] and h.sup.balancer.state() == []
    _, again = h.request()
    assert again is not child and len(h.starts) == 2 and slot.child.pid != child.pid


def test_a_dead_child_is_noticed_before_its_reaper_and_reset_once():
    h = Harness()
    slot, child = h.request()
    child.die(-9, reap=False)
    h.request()  # finds it dead: resets the slot, starts another
    assert len(h.starts) == 2
    new_child = slot.child
    child.on_exit(child)  # the reaper comes late: the slot has another child now
    assert slot.child is new_child and slot.state == RUNNING


def test_child_dead_right_after_its_start_is_a_502():
    h = Harness()
    h.plan.append(lambda child: child.die(2, reap=False))
    with pytest.raises(BackendUnavailable) as caught:
        h.request()
    assert caught.value.status == 502 and "exited with code 2" in caught.value.message
    assert caught.value.headers == ()  # a broken backend: no Retry-After promise
    assert len(h.starts) == 1 and h.sup.slots[0].state == STOPPED


def test_close_stops_every_child_and_refuses():
    h = Harness(workers=2)
    (s0, _), (s1, _) = h.request(), h.request()
    h.sup.close()
    assert sorted(c.pid for c in h.stopped) == [100, 101]
    assert s0.state == s1.state == STOPPED and h.sup.pids == []
    with pytest.raises(ShuttingDown) as caught:
        h.sup.choose()
    assert caught.value.status == 503 and dict(caught.value.headers)["Retry-After"] == "5"
    with pytest.raises(ShuttingDown):
        h.sup.adopt(lambda: pytest.fail("nothing is launched once closed"))


def test_close_during_a_start_stops_the_new_child():
    h = Harness()
    starter, gate = h.held_start()
    closer = run(h.sup.close)  # stops the starting child too: it is registered
    closer["thread"].join(10)
    gate.set()
    starter["thread"].join(10)
    assert isinstance(starter["error"], ShuttingDown)
    assert h.children[0] in h.stopped and h.starts == h.children
    assert h.sup.slots[0].state == STOPPED


def test_idle_child_is_stopped_once_its_requests_are_over():
    h = Harness(idle_shutdown=0.05, clock=time.monotonic)
    slot, child = h.request()
    backend = slot.backend
    time.sleep(0.2)  # past idle_shutdown: a request in flight keeps it
    assert slot.state == RUNNING and not h.stopped
    h.done(slot)
    assert h.stop_called.wait(10), "the idle child should be stopped"
    wait_until(lambda: slot.state == STOPPED, 10, "the slot to be reset")
    assert h.stopped == [child] and child.stopping and backend.in_flight == 0
    h.request()  # the next request starts another
    assert len(h.starts) == 2
    h.sup.close()


def test_begin_stop_marks_the_child_as_stopped_on_purpose():
    slot = Slot(0, now=0.0)
    child = FakeChild(0, 1)
    slot.begin_start()
    slot.started(child, now=1.0)
    assert slot.backend.name == "127.0.0.1:40001"
    assert slot.begin_stop() is child and child.stopping and slot.state == STOPPING
    slot.reset(FakeChild(0, 2))  # not its child
    assert slot.state == STOPPING
    slot.reset(child)
    assert slot.state == STOPPED and slot.child is None and slot.backend is None


# -- the WSGI face answers once ------------------------------------------------------

def test_application_answers_a_failed_start_once_and_releases_the_request():
    app = SpawningApplication(["fake-server", "__PORT__"], handle_signals=False)
    h = Harness(restart_backoff=5, max_backoff=5)
    app._supervisor = h.sup
    h.plan.append(fails("it exited with code 3"))
    answers = []
    body = app({"REQUEST_METHOD": "GET", "HTTP_ACCEPT": "application/json"},
               lambda status, headers, exc_info=None: answers.append((status, dict(headers))))
    [(status, headers)] = answers
    error = json.loads(b"".join(body))["error"]
    assert status.startswith("503") and headers["Retry-After"] == "5"
    assert error["code"] == 503 and "back-off" in error["message"]
    assert h.sup.slots[0].outstanding == 0
    h.now += 5
    answers.clear()
    # Started: the balancer sends to the fake child's port, where nothing listens.
    body = app({"REQUEST_METHOD": "GET"},
               lambda status, headers, exc_info=None: answers.append((status, dict(headers))))
    b"".join(body)
    assert answers[0][0].startswith("502") and h.sup.slots[0].state == RUNNING
    assert h.sup.slots[0].outstanding == 0 and h.sup.balancer.in_flight == 0
    app.close()
