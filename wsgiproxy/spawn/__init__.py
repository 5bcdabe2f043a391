"""SpawningApplication: start backend processes on demand and forward requests to them.

A :class:`SpawningApplication` is a WSGI app that owns one or more child
processes (any program that speaks HTTP on a loopback port).  The first
request starts a child; requests are then forwarded to it by a
:class:`~wsgiproxy.app.WSGIProxyApp` -- the one proxy implementation, so the
child sees the same ``X-Forwarded-*`` headers, keys and signature as any
backend behind ``egg:WSGIProxy#main``.  The children are supervised: stopped
when idle, started again after a crash (with back-off when they keep failing
to start), and stopped with their whole process group at exit, on SIGTERM
or on :meth:`SpawningApplication.close`.
"""

import atexit
import logging
import os
import shlex
import signal
import threading
import time
import weakref

from ..app import WSGIProxyApp
from ..errors import ServiceUnavailable, ShuttingDown, StartFailed
from ..responses import error_response
from .process import (
    PORT_PLACEHOLDER,
    Command,
    describe_exit,
    parse_env,
    split_command,
    stop_children,
)
from .readiness import LOOPBACK, Starter

__all__ = ["SpawningApplication"]

log = logging.getLogger("wsgiproxy.spawn")

# Slot states.
STOPPED, STARTING, RUNNING, STOPPING = "stopped", "starting", "running", "stopping"


class _Slot:
    """One of the ``workers`` places for a child, with its supervision state."""

    def __init__(self, index):
        self.index = index
        self.state = STOPPED
        self.child = None
        self.proxy = None
        self.outstanding = 0
        self.last_active = time.monotonic()
        self.failures = 0       # failed starts in a row
        self.not_before = 0.0   # no new start before this (monotonic) time
        self.last_failure = ""
        self.generation = 0     # counts starts, so waiters know which one they waited for
        self.failed_generation = -1


class SpawningApplication:
    """A WSGI app that starts a backend process on the first request and forwards to it.

    :param start_script: the command that runs the backend in the foreground,
        as a list of arguments or a string split like a shell command line
        (:func:`shlex.split`; no shell is involved).  Every ``__PORT__`` in
        it is replaced by the port the child must listen on, on 127.0.0.1.
        Any program works, not only Python.  A bare command name is looked
        up on ``PATH``, then next to the running Python (so the console
        scripts of our virtualenv work without activating it).  To use shell
        features, say so:
        ``sh -c 'exec myserver --port __PORT__ 2>&1'``.
    :param cwd: the child's working directory (default: ours).
    :param script_env: environment variables added to ours for the child: a
        dict, a list of ``NAME=VALUE`` strings, or a string of them
        (``A=1 B="two words"``).  ``__PORT__`` is replaced in the values too.
        ``PYTHONUNBUFFERED=1`` is set unless given, so Python children log
        line by line.
    :param spawned_port: the port for the child; by default a free loopback
        port is picked for each start (and another one tried if the child
        could not bind it).  With ``workers > 1`` the children get
        consecutive ports from this one.
    :param idle_shutdown: stop a child after this many seconds without a
        request (``None`` or 0: never).  A request in flight -- until its
        response has been sent to the end -- keeps the child alive.
    :param logger: a :class:`logging.Logger` or a logger name; default
        ``wsgiproxy.spawn``.  The children's stdout and stderr lines are
        logged to it at INFO level, and their lifecycle events.
    :param start_timeout: seconds a start may take before the child is
        considered failed (it is stopped, and requests get 503).
    :param health_path: if given, a child is ready only when ``GET
        health_path`` answers 2xx or 3xx; otherwise when it accepts TCP
        connections.
    :param stop_timeout: seconds between SIGTERM and SIGKILL when stopping.
    :param workers: how many children at most.  Each request goes to the
        child with the fewest requests in flight (a running one on ties);
        children are started lazily, when a request is sent to them.
    :param restart_backoff: seconds to wait before starting again a child
        that failed to start; doubled after each further failure in a row,
        up to ``max_backoff``.  0 turns back-off off.
    :param max_backoff: the longest wait between failed starts.
    :param handle_signals: stop the children on SIGTERM (then chain to the
        previous handler; the default action terminates the process).  Only
        possible when the app is created in the main thread.  With
        ``False`` the children are still stopped at a normal interpreter
        exit.
    :param options: everything else goes to the :class:`~wsgiproxy.app.WSGIProxyApp`
        made for each child (``secret_file``, ``string_keys``...,
        ``preserve_host``, ``forwarded``, ``read_timeout``,
        ``connect_timeout``, ``pool_size``, ``transport``...); only ``href``
        is chosen here.
    """

    def __init__(self, start_script, cwd=None, script_env=None, spawned_port=None,
                 idle_shutdown=None, logger=None, start_timeout=30.0, health_path=None,
                 stop_timeout=10.0, workers=1, restart_backoff=1.0, max_backoff=60.0,
                 handle_signals=True, **options):
        argv = split_command(start_script)
        if "href" in options:
            raise TypeError("SpawningApplication chooses href itself (the child's port)")
        self.command = Command(argv, cwd, parse_env(script_env))
        self.argv, self.cwd, self.script_env = self.command.argv, cwd, self.command.env
        if spawned_port is None and not self.command.mentions_port:
            raise ValueError("start_script (or a script_env value) must contain %s so the "
                             "child knows its port, or give spawned_port"
                             % PORT_PLACEHOLDER)
        self.spawned_port = int(spawned_port) if spawned_port else None
        self.idle_shutdown = float(idle_shutdown) if idle_shutdown else None
        self.start_timeout = float(start_timeout)
        self.stop_timeout = float(stop_timeout)
        self.health_path = health_path or None
        if self.health_path and not self.health_path.startswith("/"):
            raise ValueError("health_path must start with '/': %r" % health_path)
        self.workers = int(workers)
        self.restart_backoff = float(restart_backoff)
        self.max_backoff = float(max_backoff)
        if self.start_timeout <= 0 or self.stop_timeout < 0 or self.workers < 1:
            raise ValueError("start_timeout must be positive, stop_timeout not negative, "
                             "workers at least 1")
        if self.restart_backoff < 0 or self.max_backoff < self.restart_backoff:
            raise ValueError("restart_backoff must be >= 0 and max_backoff >= restart_backoff")
        if self.idle_shutdown is not None and self.idle_shutdown < 0:
            raise ValueError("idle_shutdown must be positive")
        if isinstance(logger, str):
            logger = logging.getLogger(logger)
        self.log = logger or logging.getLogger("wsgiproxy.spawn")
        self.proxy_options = options
        # Fail at configuration time, not on the first request.
        WSGIProxyApp("http://%s:1" % LOOPBACK, **options).close()
        self.handle_signals = bool(handle_signals)
        self._starter = Starter(self.command, options, self.spawned_port, self.start_timeout,
                                self.health_path, self._stop_children, self.log)
        self._init_state()
        _live_apps.add(self)
        if self.handle_signals:
            _install_sigterm_handler()

    def _init_state(self):
        # Re-entrant: the SIGTERM handler may run close() in a thread that holds it.
        self._cond = threading.Condition(threading.RLock())
        self._slots = [_Slot(i) for i in range(self.workers)]
        self._children = set()  # every child not yet reaped, in any state
        self._closed = False
        self._supervisor = None

    def __repr__(self):
        return "<SpawningApplication %s (%d worker%s)>" % (
            " ".join(self.argv), self.workers, "" if self.workers == 1 else "s")

    # -- introspection ----------------------------------------------------

    @property
    def pids(self):
        """Process ids of the children that are running or starting, in slot order."""
        with self._cond:
            return [c.pid for c in sorted(self._children, key=lambda c: c.slot)
                    if not c.dead]

    @property
    def ports(self):
        """Ports of the children that are ready, in slot order."""
        with self._cond:
            return [s.child.port for s in self._slots if s.state == RUNNING and s.child]

    # -- WSGI ---------------------------------------------------------------

    def __call__(self, environ, start_response):
        slot = self._choose()
        if slot is None:
            return error_response(environ, start_response, 503,
                                  "the backend is shutting down", [("Retry-After", "5")])
        try:
            proxy = self._proxy_for(slot)
        except ServiceUnavailable as exc:
            self._release(slot)
            return error_response(environ, start_response, exc.status, exc.message,
                                  [("Retry-After", str(exc.retry_after))])
        except BaseException:
            self._release(slot)
            raise
        try:
            result = proxy(environ, start_response)
        except BaseException:
            self._release(slot)
            raise
        return _ReleasingIterable(result, self._release, slot)

    def _choose(self):
        """The slot with the fewest requests in flight; counts this request in it."""
        rank = {RUNNING: 0, STOPPED: 1, STARTING: 1, STOPPING: 2}
        with self._cond:
            if self._closed:
                return None
            now = time.monotonic()
            slot = min(self._slots, key=lambda s: (
                s.outstanding, 3 if s.state == STOPPED and s.not_before > now else rank[s.state],
                s.index))
            slot.outstanding += 1
            slot.last_active = now
            return slot

    def _release(self, slot):
        with self._cond:
            slot.outstanding -= 1
            slot.last_active = time.monotonic()
            if slot.outstanding == 0 and self.idle_shutdown:
                self._cond.notify_all()  # the idle supervisor computes a new deadline

    def _proxy_for(self, slot):
        """The running child's proxy, after starting it (or waiting for its start)."""
        cond = self._cond
        with cond:
            waited = None  # the start generation this request waited for
            deadline = None
            while True:
                if self._closed:
                    raise ServiceUnavailable("the backend is shutting down", 5)
                if slot.state == RUNNING:
                    if not slot.child.dead:
                        return slot.proxy
                    self._forget_child(slot, slot.child)
                    continue
                if slot.state in (STARTING, STOPPING):
                    if slot.state == STARTING and waited is None:
                        waited = slot.generation
                    if deadline is None:
                        deadline = time.monotonic() + self.start_timeout + self.stop_timeout + 5
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ServiceUnavailable("the backend is still starting", self.start_timeout)
                    cond.wait(left)
                    continue
                # STOPPED
                if waited is not None and slot.failed_generation == waited:
                    raise ServiceUnavailable(self._failure_message(slot),
                                       slot.not_before - time.monotonic())
                if time.monotonic() < slot.not_before:
                    raise ServiceUnavailable(self._failure_message(slot),
                                       slot.not_before - time.monotonic())
                slot.state = STARTING
                slot.generation += 1
                generation = slot.generation
                break
        # This request starts the child; the others wait on the condition.
        try:
            child, proxy = self._starter(slot.index, self)
        except StartFailed as exc:
            with cond:
                slot.failures += 1
                slot.last_failure = str(exc)
                slot.not_before = time.monotonic() + self._backoff(slot.failures)
                slot.failed_generation = generation
                slot.state = STOPPED
                cond.notify_all()
                message = self._failure_message(slot)
                retry = slot.not_before - time.monotonic()
            raise ServiceUnavailable(message, retry) from None
        except BaseException:
            with cond:
                slot.state = STOPPED
                cond.notify_all()
            raise
        with cond:
            if not self._closed and not child.dead:
                slot.child, slot.proxy, slot.state = child, proxy, RUNNING
                slot.failures = 0
                slot.last_active = time.monotonic()
                cond.notify_all()
                self._ensure_supervisor()
                return proxy
            slot.state = STOPPED
            cond.notify_all()
        proxy.close()
        if self._closed:
            self._stop_children([child])
            raise ServiceUnavailable("the backend is shutting down", 5)
        raise ServiceUnavailable("the backend %s right after it started" % describe_exit(
            child.returncode()), 1, status=502)

    def _backoff(self, failures):
        if not self.restart_backoff:
            return 0.0
        return min(self.max_backoff, self.restart_backoff * 2 ** (failures - 1))

    def _failure_message(self, slot):
        left = max(0.0, slot.not_before - time.monotonic())
        message = "the backend failed to start (%s)" % slot.last_failure
        if slot.failures > 1:
            message += "; %d failed starts in a row" % slot.failures
        if left > 0:
            message += "; restarting with back-off: next attempt in %.1f s" % left
        return message

    # -- starting -------------------------------------------------------------

    @property
    def closed(self):
        return self._closed

    def adopt(self, launch):
        """Under the lock, unless closed: ``launch()`` a child and register it; then watch it."""
        with self._cond:
            if self._closed:
                raise ShuttingDown()
            child = launch()
            self._children.add(child)
        self.log.info("%s: started on port %d: %s", child.label, child.port,
                      shlex.join(child.argv))
        child.watch(self._child_exited)
        return child

    # -- stopping ---------------------------------------------------------

    def _child_exited(self, child):
        """Called by the child's reaper thread once it has exited."""
        with self._cond:
            self._children.discard(child)
            slot = self._slots[child.slot] if child.slot < len(self._slots) else None
            unexpected = (slot is not None and slot.child is child and slot.state == RUNNING)
            if unexpected:
                self._forget_child(slot, child)
            self._cond.notify_all()
        if unexpected:
            lines = child.stderr_lines()
            self.log.warning("%s %s unexpectedly; the next request starts it again. "
                             "Last stderr lines:\n%s", child.label,
                             describe_exit(child.returncode()),
                             "\n".join(lines) if lines else "(none)")
        elif child.stopping:
            self.log.info("%s %s", child.label, describe_exit(child.returncode()))

    def _forget_child(self, slot, child):
        """Under the lock: the slot's child is gone; its next request starts a new one."""
        if slot.child is child:
            proxy = slot.proxy
            slot.child = slot.proxy = None
            slot.state = STOPPED
            if proxy is not None:
                proxy.close()

    def _stop_children(self, children):
        stop_children(children, self.stop_timeout, self.log)

    def _ensure_supervisor(self):
        """Under the lock: start the idle-shutdown thread on the first start."""
        if self.idle_shutdown and self._supervisor is None:
            self._supervisor = threading.Thread(target=self._idle_loop, daemon=True,
                                                name="wsgiproxy.spawn idle supervisor")
            self._supervisor.start()

    def _idle_loop(self):
        cond = self._cond
        idle = self.idle_shutdown
        while True:
            with cond:
                if self._closed or threading.current_thread() is not self._supervisor:
                    return
                now = time.monotonic()
                due, next_at = [], None
                for slot in self._slots:
                    if slot.state != RUNNING or slot.outstanding:
                        continue
                    at = slot.last_active + idle
                    if at <= now:
                        slot.state = STOPPING
                        slot.child.stopping = True
                        due.append((slot, slot.child, slot.proxy))
                    elif next_at is None or at < next_at:
                        next_at = at
                if not due:
                    cond.wait(None if next_at is None else next_at - now)
                    continue
            for slot, child, proxy in due:
                self.log.info("%s: idle for %g s; stopping it", child.label, idle)
            self._stop_children([child for _, child, _ in due])
            with cond:
                for slot, child, proxy in due:
                    if slot.child is child:
                        slot.child = slot.proxy = None
                        slot.state = STOPPED
                    proxy.close()
                cond.notify_all()

    def close(self):
        """Stop every child (SIGTERM to its group, SIGKILL after ``stop_timeout``) and wait.

        Later requests are answered 503.  Called at interpreter exit and,
        with ``handle_signals``, on SIGTERM.
        """
        with self._cond:
            self._closed = True
            children = list(self._children)
            proxies = [s.proxy for s in self._slots if s.proxy is not None]
            for slot in self._slots:
                if slot.state in (RUNNING, STOPPING):
                    slot.child = slot.proxy = None
                    slot.state = STOPPED
            self._cond.notify_all()
        if children:
            self.log.info("stopping %d child process%s", len(children),
                          "" if len(children) == 1 else "es")
        self._stop_children(children)
        for proxy in proxies:
            proxy.close()
        _live_apps.discard(self)

    def _after_fork(self):
        # In a forked process (gunicorn --preload workers) the children and
        # threads belong to the parent: start afresh, without touching them.
        self._init_state()


class _ReleasingIterable:
    """The proxied response; the request counts as in flight until ``close()``."""

    __slots__ = ("iterable", "release", "slot")

    def __init__(self, iterable, release, slot):
        self.iterable = iterable
        self.release = release
        self.slot = slot

    def __iter__(self):
        return iter(self.iterable)

    def close(self):
        release, self.release = self.release, None
        try:
            close = getattr(self.iterable, "close", None)
            if close is not None:
                close()
        finally:
            if release is not None:
                release(self.slot)


# -- process-wide: exit, SIGTERM, fork ----------------------------------------

_live_apps = weakref.WeakSet()
_signal_state = {"installed": False, "previous": None}


def _stop_all(only_signal_handlers=False):
    for app in list(_live_apps):
        if only_signal_handlers and not app.handle_signals:
            continue
        try:
            app.close()
        except Exception:  # keep stopping the others
            app.log.exception("stopping the children failed")


def _on_sigterm(signum, frame):
    _stop_all(only_signal_handlers=True)
    previous = _signal_state["previous"]
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        # The default action (or a handler not set from Python): terminate, as
        # if we had not been here.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_sigterm_handler():
    if _signal_state["installed"] or threading.current_thread() is not threading.main_thread():
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):
        return
    _signal_state.update(installed=True, previous=previous)


def _after_fork_in_child():
    for app in list(_live_apps):
        app._after_fork()


atexit.register(_stop_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
