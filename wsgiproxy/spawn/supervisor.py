"""Supervision: the slots for children, their states, and who stops them when.

A :class:`Supervisor` has ``workers`` slots.  A slot is in one of four states::

    STOPPED ──begin_start──▶ STARTING ──started──▶ RUNNING ──begin_stop (idle)──▶ STOPPING
       ▲                        │                     │                              │
       └──── reset / failed ────┴───── reset (it died, or close) ────────────────────┘

:meth:`Slot.reset` is the one way back to STOPPED; :meth:`Slot.failed` is a
reset that also starts the back-off.  Every change happens under the
supervisor's lock, and waiters are woken after each.

The supervisor knows children only as :class:`~wsgiproxy.spawn.process.Child`
objects and starts and stops them through the two callables it is given, so
its state machine can be exercised without processes.

The running children are the backends of one
:class:`~wsgiproxy.balancer.Balancer` (:attr:`Supervisor.balancer`), which
chooses among them under the supervisor's lock: a child that is starting,
stopping or dead is not a candidate.  The supervisor only decides when the
load needs one more child (:meth:`Supervisor.choose`).

At the end: the process-wide part.  Every registered supervisor is closed at
interpreter exit and (when it asks) on SIGTERM, and starts afresh in a
forked process.  (Deaths that run no code of ours are
:mod:`~wsgiproxy.spawn.lifeline`'s.)
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from ..balancer import Backend, Balancer
from ..errors import BackendUnavailable, ServiceUnavailable, ShuttingDown, StartFailed
from ..observe import event
from . import lifeline
from .process import Child
from .readiness import LOOPBACK

__all__ = ["RUNNING", "STARTING", "STOPPED", "STOPPING", "Slot", "Supervisor", "register"]

STOPPED, STARTING, RUNNING, STOPPING = "stopped", "starting", "running", "stopping"
# Which slot a request prefers (lower first), after the fewest requests in flight.
_PREFERENCE = {RUNNING: 0, STOPPED: 1, STARTING: 1, STOPPING: 2}
_BACKING_OFF = 3
# Seconds between looks at a busy child's requests, for idle shutdown.
_BUSY_POLL = 0.5
# Seconds a request may wait beyond start_timeout + stop_timeout for another's start.
_WAIT_MARGIN = 5


class Slot:
    """One of the ``workers`` places for a child, with its supervision state.

    Changed only under the supervisor's lock, through the transitions below.
    """

    def __init__(self, index: int, now: float) -> None:
        self.index = index
        self.state = STOPPED
        self.child: Child | None = None
        self.backend: Backend | None = None  # the balancer's, while RUNNING
        self.outstanding = 0    # requests waiting for its start
        self.last_active = now
        self.failures = 0       # failed starts in a row
        self.not_before = 0.0   # no new start before this (monotonic) time
        self.last_failure = ""
        self.generation = 0     # counts starts, so waiters know which one they waited for
        self.failed_generation = -1

    def __repr__(self) -> str:
        return "<Slot %d %s>" % (self.index, self.state)

    def preference(self, now: float) -> int:
        """Lower is better: running, then stopped or starting, then stopping, then backing off."""
        if self.state == STOPPED and self.not_before > now:
            return _BACKING_OFF
        return _PREFERENCE[self.state]

    def begin_start(self) -> int:
        """STOPPED -> STARTING; the generation of this start."""
        self.state = STARTING
        self.generation += 1
        return self.generation

    def started(self, child: Child, now: float) -> None:
        """STARTING -> RUNNING: ``child`` is ready; it becomes a backend of the balancer."""
        self.child, self.state = child, RUNNING
        self.backend = Backend(LOOPBACK, child.port)
        self.failures = 0
        self.last_active = now

    def failed(self, reason: str, generation: int, now: float,
               backoff: Callable[[int], float]) -> None:
        """STARTING -> STOPPED: start ``generation`` failed; no new start for ``backoff(failures)``."""
        self.failures += 1
        self.last_failure = reason
        self.not_before = now + backoff(self.failures)
        self.failed_generation = generation
        self.reset()

    def begin_stop(self) -> Child:
        """RUNNING -> STOPPING: its child is stopped on purpose (idle); returns the child."""
        child = self.child
        if child is None:
            raise RuntimeError("%r has no child to stop" % self)
        self.state = STOPPING
        child.stopping = True
        return child

    def reset(self, child: Child | None = None) -> None:
        """Back to STOPPED without a child, so that the next request starts a new one.

        :param child: reset only if this is still the slot's child.
        """
        if child is not None and self.child is not child:
            return
        self.child = None
        self.backend = None
        self.state = STOPPED

    def load(self) -> int:
        """Requests waiting for its start, plus those in flight to its child."""
        backend = self.backend
        return self.outstanding + (backend.in_flight if backend is not None else 0)

    def failure_message(self, now: float) -> str:
        """Why its last start failed, and when the next one may happen."""
        left = max(0.0, self.not_before - now)
        message = "the backend failed to start (%s)" % self.last_failure
        if self.failures > 1:
            message += "; %d failed starts in a row" % self.failures
        if left > 0:
            message += "; restarting with back-off: next attempt in %.1f s" % left
        return message


StartChild = Callable[[int, "Supervisor"], Child]
StopChildren = Callable[[Sequence[Child]], None]


class Supervisor:
    """The slots of one SpawningApplication and the children in them.

    :param workers: how many slots.
    :param start: ``start(index, supervisor)`` starts the child of slot
        ``index`` (registering it through :meth:`adopt`) and returns it once
        it is ready; raises
        :class:`~wsgiproxy.errors.StartFailed`.
    :param stop: stops the children it is given and waits for them.
    :param start_timeout: seconds a start may take.
    :param stop_timeout: seconds a stop may take.
    :param idle_shutdown: stop a child after this many seconds without a
        request in flight (None: never).
    :param restart_backoff: the first wait after a failed start (0: none).
    :param max_backoff: the longest wait.
    :param log: where lifecycle events go.
    :param clock: seconds from a monotonic clock (tests pass their own).
    :param balance_options: for the :class:`~wsgiproxy.balancer.Balancer` over the
        running children (``balance``, ``least_conn`` unless given;
        ``next_upstream``...).
    """

    def __init__(self, workers: int, start: StartChild, stop: StopChildren, *,
                 start_timeout: float, stop_timeout: float, idle_shutdown: float | None,
                 restart_backoff: float, max_backoff: float, log: logging.Logger,
                 clock: Callable[[], float] = time.monotonic,
                 balance_options: dict[str, Any] | None = None) -> None:
        self.workers = workers
        self._clock = clock
        self._start = start
        self._stop = stop
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.idle_shutdown = idle_shutdown
        self.restart_backoff = restart_backoff
        self.max_backoff = max_backoff
        self.log = log
        self.balance_options = {"balance": "least_conn", **(balance_options or {})}
        self._init_state()

    def _init_state(self) -> None:
        # Re-entrant: the SIGTERM handler may run close() in a thread that holds it.
        self._cond = threading.Condition(threading.RLock())
        #: Chooses among the running children, under the same lock.
        self.balancer = Balancer(self._running, lock=self._cond, **self.balance_options)
        self.slots = [Slot(i, self._clock()) for i in range(self.workers)]
        self._children: set[Child] = set()  # every child not yet reaped, in any state
        self._crashed: set[int] = set()  # slots whose child exited unexpectedly (metrics)
        self._closed = False
        self._idle_thread: threading.Thread | None = None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def pids(self) -> list[int]:
        """Process ids of the children that are running or starting, in slot order."""
        with self._cond:
            return [c.pid for c in sorted(self._children, key=lambda c: c.slot)
                    if not c.dead]

    @property
    def ports(self) -> list[int]:
        """Ports of the children that are ready, in slot order."""
        with self._cond:
            return [s.child.port for s in self.slots if s.state == RUNNING and s.child]

    # -- one request ------------------------------------------------------------

    def _running(self) -> list[Backend]:
        """The balancer's candidates (under the lock): the running children, alive."""
        return [s.backend for s in self.slots if s.state == RUNNING and s.backend is not None
                and s.child is not None and not s.child.dead]

    def choose(self) -> Slot | None:
        """``None`` when a running child can take the request (the balancer chooses which);
        else the slot to start, or whose start to wait for, with the request counted in it.

        A slot is started when every running child has more requests than it
        (waiting and in flight), so children start as the load needs them.  With
        none running: the slot with the fewest, a stopped or starting one first.

        :raises ShuttingDown: once closed.
        """
        with self._cond:
            if self._closed:
                raise ShuttingDown()
            now = self._clock()
            for s in self.slots:
                if s.state == RUNNING and (s.child is None or s.child.dead):
                    s.reset()  # dead, not reaped yet: start it again
            running = [s for s in self.slots if s.state == RUNNING]
            if running:
                least = min(s.load() for s in running)
                ready = [s for s in self.slots if s.state == STARTING
                         or (s.state == STOPPED and s.not_before <= now)]
                slot = min(ready, key=lambda s: (s.outstanding, s.index), default=None)
                if slot is None or slot.outstanding >= least:
                    for s in running:
                        s.last_active = now
                    return None
            else:
                slot = min(self.slots, key=lambda s: (s.outstanding, s.preference(now), s.index))
            slot.outstanding += 1
            slot.last_active = now
            return slot

    def release(self, slot: Slot) -> None:
        """The request counted in ``slot`` by :meth:`choose` is over."""
        with self._cond:
            slot.outstanding -= 1
            slot.last_active = self._clock()
            if slot.outstanding == 0 and self.idle_shutdown:
                self._cond.notify_all()  # the idle thread computes a new deadline

    def acquire(self, slot: Slot) -> Child:
        """The slot's running child, after starting it (or waiting for its start).

        :raises ServiceUnavailable: (or a subclass) when there is no child to forward to;
            :class:`~wsgiproxy.errors.BackendUnavailable` (502) when the child died right
            after it started.
        """
        cond = self._cond
        with cond:
            waited = None  # the start generation this request waited for
            deadline = None
            while True:
                if self._closed:
                    raise ShuttingDown()
                if slot.state == RUNNING:
                    child = slot.child
                    if child is not None and not child.dead:
                        return child
                    slot.reset()
                    continue
                if slot.state in (STARTING, STOPPING):
                    if slot.state == STARTING and waited is None:
                        waited = slot.generation
                    if deadline is None:
                        deadline = (self._clock() + self.start_timeout + self.stop_timeout
                                    + _WAIT_MARGIN)
                    left = deadline - self._clock()
                    if left <= 0:
                        raise ServiceUnavailable("the backend is still starting",
                                                 self.start_timeout)
                    cond.wait(left)
                    continue
                # STOPPED: the start this request waited for failed, or back-off.
                now = self._clock()
                if ((waited is not None and slot.failed_generation == waited)
                        or now < slot.not_before):
                    raise StartFailed(slot.failure_message(now), slot.not_before - now)
                generation = slot.begin_start()
                break
        # This request starts the child; the others wait on the condition.
        return self._start_slot(slot, generation)

    def _start_slot(self, slot: Slot, generation: int) -> Child:
        cond = self._cond
        try:
            child = self._start(slot.index, self)
        except StartFailed as exc:
            with cond:
                now = self._clock()
                slot.failed(exc.message, generation, now, self._backoff)
                cond.notify_all()
                message = slot.failure_message(now)
                retry = slot.not_before - now
            raise StartFailed(message, retry) from None
        except BaseException:
            with cond:
                slot.reset()
                cond.notify_all()
            raise
        with cond:
            if not self._closed and not child.dead:
                slot.started(child, self._clock())
                cond.notify_all()
                self._ensure_idle_thread()
                return child
            slot.reset()
            cond.notify_all()
        if self._closed:
            self._stop([child])
            raise ShuttingDown()
        raise BackendUnavailable("the backend %s right after it started" % child.describe_exit())

    def _backoff(self, failures: int) -> float:
        if not self.restart_backoff:
            return 0.0
        return min(self.max_backoff, self.restart_backoff * 2 ** (failures - 1))

    # -- children ---------------------------------------------------------------

    def adopt(self, launch: Callable[[], Child]) -> Child:
        """``launch()`` a child and register it, unless closed; then watch it.

        Launching under the lock means :meth:`close` finds every child.

        :raises ShuttingDown: once closed.
        """
        with self._cond:
            if self._closed:
                raise ShuttingDown()
            child = launch()
            self._children.add(child)
        event("spawn", "started")
        if child.slot in self._crashed:
            self._crashed.discard(child.slot)
            event("spawn", "restarted")
        self.log.info("%s: started on port %d: %s", child.label, child.port,
                      shlex.join(child.argv))
        child.watch(self.child_exited)
        return child

    def child_exited(self, child: Child) -> None:
        """Called by the child's reaper thread once it has exited."""
        with self._cond:
            self._children.discard(child)
            slot = self.slots[child.slot] if child.slot < len(self.slots) else None
            unexpected = slot is not None and slot.child is child and slot.state == RUNNING
            if slot is not None and unexpected:
                slot.reset(child)
            self._cond.notify_all()
        if unexpected:
            self._crashed.add(child.slot)
            event("spawn", "crashed")
            lines = child.stderr_lines()
            self.log.warning("%s %s unexpectedly; the next request starts it again. "
                             "Last stderr lines:\n%s", child.label, child.describe_exit(),
                             "\n".join(lines) if lines else "(none)")
        elif child.stopping:
            self.log.info("%s %s", child.label, child.describe_exit())

    def _ensure_idle_thread(self) -> None:
        """Under the lock: start the idle-shutdown thread on the first start."""
        if self.idle_shutdown and self._idle_thread is None:
            self._idle_thread = threading.Thread(target=self._idle_loop, daemon=True,
                                                 name="wsgiproxy.spawn idle supervisor")
            self._idle_thread.start()

    def _idle_loop(self) -> None:
        cond = self._cond
        idle = self.idle_shutdown or 0.0
        while True:
            with cond:
                if self._closed or threading.current_thread() is not self._idle_thread:
                    return
                now = self._clock()
                due, next_at = [], None
                for slot in self.slots:
                    if slot.state != RUNNING:
                        continue
                    if slot.load():
                        # Busy: the balancer counts its requests; look again soon.
                        slot.last_active = now
                        at = now + min(idle, _BUSY_POLL)
                    else:
                        at = slot.last_active + idle
                    if at <= now and not slot.load():
                        due.append((slot, slot.begin_stop()))
                    elif next_at is None or at < next_at:
                        next_at = at
                if not due:
                    cond.wait(None if next_at is None else next_at - now)
                    continue
            for _, child in due:
                self.log.info("%s: idle for %g s; stopping it", child.label, idle)
            self._stop([child for _, child in due])
            with cond:
                for slot, child in due:
                    slot.reset(child)
                cond.notify_all()

    def close(self) -> None:
        """Stop every child and wait; later requests are answered 503."""
        with self._cond:
            self._closed = True
            children = list(self._children)
            for slot in self.slots:
                if slot.state in (RUNNING, STOPPING):
                    slot.reset()
            self._cond.notify_all()
        if children:
            self.log.info("stopping %d child process%s", len(children),
                          "" if len(children) == 1 else "es")
        self._stop(children)
        _registered.pop(self, None)

    def after_fork(self) -> None:
        """In a forked process: forget the parent's children and threads, untouched."""
        self._init_state()


# -- process-wide: exit, SIGTERM, fork ----------------------------------------

#: Every live supervisor, and whether it stops its children on SIGTERM.
_registered: weakref.WeakKeyDictionary[Supervisor, bool] = weakref.WeakKeyDictionary()
_signal_state: dict[str, Any] = {"installed": False, "previous": None}


def register(supervisor: Supervisor, handle_signals: bool) -> None:
    """Close ``supervisor`` at interpreter exit and, with ``handle_signals``, on SIGTERM.

    The SIGTERM handler chains to the one it replaces; it can only be
    installed from the main thread.  In a forked process the supervisor
    starts afresh.
    """
    _registered[supervisor] = handle_signals
    if handle_signals:
        _install_sigterm_handler()


def _stop_all(only_signal_handlers: bool = False) -> None:
    for supervisor, handle_signals in list(_registered.items()):
        if only_signal_handlers and not handle_signals:
            continue
        try:
            supervisor.close()
        except Exception:  # keep stopping the others
            supervisor.log.exception("stopping the children failed")


def _on_sigterm(signum: int, frame: Any) -> None:
    spawn = _event_loop_spawn()
    if spawn is not None:
        # gevent and eventlet run a signal handler in their hub when it
        # arrives while the hub waits, and nothing may wait there: stopping
        # the children (and then what the signal would have done) happens
        # in a greenlet of its own.
        spawn(_stop_then_chain, signum, frame)
        return
    _stop_then_chain(signum, frame)


def _event_loop_spawn() -> Callable[..., Any] | None:
    """gevent's or eventlet's ``spawn`` when this code runs in the hub of the one that
    patched threading; else None."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("threading"):
        hub = sys.modules["gevent.hub"]  # imported by the patching
        if isinstance(hub.getcurrent(), hub.Hub):
            return sys.modules["gevent"].spawn  # type: ignore[no-any-return]
        return None
    eventlet_patcher = sys.modules.get("eventlet.patcher")
    if eventlet_patcher is not None and eventlet_patcher.is_monkey_patched("thread"):
        hubs = sys.modules["eventlet.hubs"]
        if hubs.get_hub().greenlet is sys.modules["greenlet"].getcurrent():
            return sys.modules["eventlet"].spawn  # type: ignore[no-any-return]
    return None


def _stop_then_chain(signum: int, frame: Any) -> None:
    _stop_all(only_signal_handlers=True)
    previous = _signal_state["previous"]
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        # The default action (or a handler not set from Python): terminate, as
        # if we had not been here, with the watchdog reaped rather than orphaned.
        lifeline.shutdown()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_sigterm_handler() -> None:
    if _signal_state["installed"]:
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
        # ValueError outside the main thread.  (Asking threading instead is
        # wrong under eventlet: its main greenlet is not main_thread().)
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        return
    _signal_state.update(installed=True, previous=previous)


def _after_fork_in_child() -> None:
    for supervisor in list(_registered):
        supervisor.after_fork()


def _at_exit() -> None:
    _stop_all()
    lifeline.shutdown()  # after the children: the watchdog would stop them as if we had died


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
