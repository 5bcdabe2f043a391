"""Tying each child's life to ours: no process spawn starts outlives the process that started it.

Stopping the children at exit and on SIGTERM is the supervisor's job; this
module covers the deaths that run no code of ours -- SIGKILL (gunicorn's
for a worker past its timeout, the out-of-memory killer's), a crash.  Two
ties, because each one alone has holes:

* **Parent-death signal** (Linux).  Before it runs its program, the child
  asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``).
  The kernel means the parent *thread*: the signal comes when the thread
  that forked the child ends, even if the process lives on.  So every child
  is forked by one thread that lasts as long as the process, the launcher
  (:class:`_Launcher`), never by a request thread of the WSGI server, which
  may end first.  The tie is not inherited by the child's own children (a
  shell's), and a set-user-id program drops it.
* **Lifeline** (everywhere).  A watchdog process holds the read end of a
  pipe whose only write end is ours.  Each child registers its process
  group on it before it runs its program, and we unregister the group once
  the child is reaped.  When the pipe reads end of file we are gone,
  however we ended, and the watchdog stops every group still registered:
  SIGTERM, the child's ``stop_timeout``, SIGKILL.  That catches the
  grandchildren too, and a child that ignores SIGTERM.

The layout stays what it was: the child is our direct child, with the pid
we started (the small program that ties it execs the child's program in
the same process), in a new session of its own; its exit code and output
are its own.  The watchdog is one more direct child of ours per process, in
its own session, started with the first child and ended at exit.  Both run
:mod:`wsgiproxy.spawn.watchdog` with our interpreter.

The write end must reach no other process, or the pipe would never read
end of file: it is not inheritable, is passed only to the child being
started (which closes it before its program runs), and a process forked
from ours (a gunicorn worker) closes its copy at once and starts afresh:
its children are its own, tied to it.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["PDEATHSIG", "after_fork", "forget", "shutdown", "spawn", "watchdog_pid"]

#: The signal Linux sends a child when the process that started it dies; None: the
#: lifeline alone (the only tie where ``PR_SET_PDEATHSIG`` does not exist).
PDEATHSIG: int | None = signal.SIGTERM if sys.platform.startswith("linux") else None
#: The program run before each child's, and as the watchdog.
WATCHDOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "watchdog.py")
#: Seconds :func:`shutdown` waits for the watchdog to exit.
SHUTDOWN_WAIT = 2.0

log = logging.getLogger("wsgiproxy.spawn")
_T = TypeVar("_T")


class _Launcher:
    """One daemon thread that forks every child, started on first use and never stopped.

    Its life is the process's, so a child's parent-death signal comes when
    the process dies, not when the request thread that wanted the child ends.
    """

    def __init__(self) -> None:
        # queue.Queue, not SimpleQueue: built on threading's locks, which
        # gevent's monkey-patching makes cooperative.
        self._jobs: queue.Queue[tuple[Callable[[], Any], list[Any], threading.Event]] = \
            queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.ident: int | None = None  # the thread's (the greenlet's, under gevent)

    def call(self, job: Callable[[], _T]) -> _T:
        """Run ``job()`` in the launcher thread; its result, or its exception raised here."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="wsgiproxy.spawn launcher")
                self._thread.start()
        if threading.current_thread() is self._thread:
            return job()
        outcome: list[Any] = []
        done = threading.Event()
        self._jobs.put((job, outcome, done))
        done.wait()
        ok, value = outcome
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def _run(self) -> None:
        self.ident = threading.get_ident()
        while True:
            job, outcome, done = self._jobs.get()
            try:
                outcome[:] = [True, job()]
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller
                outcome[:] = [False, exc]
            done.set()
            del job, outcome, done


class _Tether:
    """The process's launcher, watchdog and lifeline, and the children registered on it."""

    def __init__(self) -> None:
        # Re-entrant: the SIGTERM handler's shutdown() may run in a thread that holds it.
        self.lock = threading.RLock()
        self.launcher = _Launcher()
        self.watchdog: subprocess.Popen[bytes] | None = None
        self.lifeline: int | None = None     # our write end, the only one
        self.children: dict[int, float] = {}  # pid (= process group) -> grace, registered
        self.warned = False

    # -- starting a child ----------------------------------------------------------

    def spawn(self, argv: Sequence[str], cwd: str | None, env: dict[str, str],
              grace: float) -> subprocess.Popen[bytes]:
        if not _runnable():
            if not self.warned:
                self.warned = True
                log.warning("spawn: cannot run %s with %r; children are started untied and "
                            "survive a SIGKILL of this process", WATCHDOG, sys.executable)
            return _popen(list(argv), cwd, env)
        errors, errors_w = os.pipe()
        try:
            proc = self.launcher.call(functools.partial(self._fork, argv, cwd, env, grace,
                                                        errors_w))
        except BaseException:
            os.close(errors)
            raise
        finally:
            _close_now(errors_w)
        reported = _read_to_end(errors)  # end of file when the program runs (close on exec)
        if reported:
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            with self.lock:
                self._send("-%d\n" % proc.pid)  # it had registered its group
            code = int(reported)
            raise OSError(code, os.strerror(code), argv[0])
        with self.lock:
            self.children[proc.pid] = grace
        return proc

    def _fork(self, argv: Sequence[str], cwd: str | None, env: dict[str, str], grace: float,
              errors: int) -> subprocess.Popen[bytes]:
        """In the launcher thread: start the child through ``watchdog.py exec``."""
        with self.lock:
            lifeline = self._ensure_watchdog()
            ctype = env.get("LC_CTYPE")
            tie = [sys.executable, "-I", "-S", WATCHDOG, "exec", str(os.getpid()),
                   str(-1 if lifeline is None else lifeline), str(errors),
                   str(PDEATHSIG or 0), "%g" % grace, "-" if ctype is None else "=" + ctype,
                   "--"]
            fds = (errors,) if lifeline is None else (errors, lifeline)
            return _popen(tie + list(argv), cwd, env, fds)

    def _ensure_watchdog(self) -> int | None:
        """Under the lock: the lifeline's write end, after (re)starting the watchdog if need be."""
        if self.watchdog is not None and self.lifeline is not None:
            if self.watchdog.poll() is None:
                return self.lifeline
            log.warning("spawn: the watchdog (pid %d) exited with %s; starting another",
                        self.watchdog.pid, self.watchdog.returncode)
        self._close_lifeline()
        read_end, write_end = os.pipe()
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", WATCHDOG, "watch"], stdin=read_end,
                stdout=subprocess.DEVNULL, cwd="/", start_new_session=True, close_fds=True)
        except OSError as exc:
            os.close(write_end)
            log.error("spawn: cannot start the watchdog (%s); children survive a SIGKILL "
                      "of this process", exc)
            return None
        finally:
            os.close(read_end)
        self.lifeline = write_end
        for pid, grace in self.children.items():  # a new watchdog learns the live ones
            self._send("+%d %g\n" % (pid, grace))
        return self.lifeline

    # -- the lifeline --------------------------------------------------------------

    def forget(self, pid: int) -> None:
        with self.lock:
            if self.children.pop(pid, None) is not None:
                self._send("-%d\n" % pid)

    def _send(self, message: str) -> None:
        """Under the lock.  A short write on a pipe is atomic; a dead watchdog is replaced
        at the next start."""
        if self.lifeline is None:
            return
        try:
            os.write(self.lifeline, message.encode())
        except OSError:
            self._close_lifeline()

    def _close_lifeline(self) -> None:
        if self.lifeline is not None:
            fd, self.lifeline = self.lifeline, None
            _close_now(fd)  # the watchdog waits for this end of file

    def shutdown(self, wait: float) -> None:
        with self.lock:
            self._close_lifeline()
            watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            try:
                watchdog.wait(wait)
            except subprocess.TimeoutExpired:
                pass  # still stopping a child someone left registered; it ends on its own


def _close_now(fd: int) -> None:
    """Close ``fd`` at once; errors are ignored.

    gevent's ``os.close`` closes a pipe only when its hub next runs, which
    may be seconds away (its next timer), while the other end waits for our
    end of file.  ``os.closerange`` is not patched.
    """
    os.closerange(fd, fd + 1)


def _read_to_end(fd: int) -> bytes:
    """What is written on the pipe ``fd`` until its last write end is closed; closes ``fd``.

    It waits in a selector, which gevent's and eventlet's monkey-patching
    make cooperative: a plain read would stop every greenlet meanwhile.
    """
    data = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                selector.select()
                piece = os.read(fd, 512)
                if not piece:
                    return data
                data += piece
    finally:
        os.close(fd)


def _runnable() -> bool:
    """Whether the watchdog program can be run (our interpreter is known, the file exists)."""
    return bool(sys.executable) and os.path.isfile(WATCHDOG)


def _popen(argv: list[str], cwd: str | None, env: dict[str, str],
           pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """The child process: what it inherits is decided here.

    It leads a new session (and so its own process group, signalled as a
    whole); stdin is /dev/null, stdout and stderr are pipes the parent
    reads, and no other file descriptor is inherited but ``pass_fds``.
    """
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, close_fds=True, pass_fds=pass_fds)


_tether = _Tether()


def spawn(argv: Sequence[str], cwd: str | None, env: dict[str, str],
          stop_timeout: float) -> subprocess.Popen[bytes]:
    """Start a child tied to this process; once it is reaped, call :func:`forget`.

    :param argv: the program and its arguments (looked up on ``env``'s ``PATH``).
    :param cwd: its working directory (None: ours).
    :param env: its whole environment.
    :param stop_timeout: seconds the watchdog waits between SIGTERM and SIGKILL.
    :raises OSError: when the program cannot be run (as :class:`subprocess.Popen` would).
    """
    return _tether.spawn(argv, cwd, env, stop_timeout)


def forget(pid: int) -> None:
    """The child ``pid`` was reaped and its group killed: the watchdog forgets the group."""
    _tether.forget(pid)


def watchdog_pid() -> int | None:
    """The process id of this process's watchdog, if it has started one."""
    watchdog = _tether.watchdog
    return None if watchdog is None else watchdog.pid


def shutdown(wait: float = SHUTDOWN_WAIT) -> None:
    """At exit, once the children are stopped: close the lifeline and reap the watchdog.

    It stops whatever is still registered, as if we had died.
    """
    _tether.shutdown(wait)


def after_fork() -> None:
    """In a forked process: close the parent's lifeline and start with no tether of our own.

    Not in a child the launcher forks: that one is about to run a program,
    with the lifeline among the descriptors it must keep.  (The standard
    library's :class:`subprocess.Popen` forks without running this; gevent's
    forks in Python, which does.)
    """
    global _tether
    if threading.get_ident() == _tether.launcher.ident:
        return
    _tether._close_lifeline()
    _tether = _Tether()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork)
