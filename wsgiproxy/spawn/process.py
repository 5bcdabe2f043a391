"""One child process: its command line, starting it, its output, stopping it.

A child runs in a new session, so it leads its own process group and
everything it starts can be signalled with it.  Its stdout and stderr are
read line by line into the log; the last stderr lines are kept for the
message when it fails.  A reaper thread waits for it, so it never lingers as
a zombie.

How a child is created, and tied to our life so that it dies with us
whatever kills us, is :mod:`wsgiproxy.spawn.lifeline`'s job; what belongs
to one child (its pipes, its threads) lives in :class:`Child`.

:func:`listener_owner` reads Linux's ``/proc`` to tell whose socket listens
on a port: the child's, or another process's that took the port first.
"""

from __future__ import annotations

import collections
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO

from ..errors import StartFailed
from . import lifeline

__all__ = [
    "PORT_PLACEHOLDER",
    "STDERR_TAIL",
    "Child",
    "Command",
    "describe_exit",
    "listener_owner",
    "parse_env",
    "split_command",
    "stop_children",
]

#: Replaced by the child's port in ``start_script`` and the ``script_env`` values.
PORT_PLACEHOLDER = "__PORT__"
#: stderr lines kept per child, for the log message when it fails.
STDERR_TAIL = 50


# -- the command --------------------------------------------------------------

def split_command(start_script: str | Iterable[object] | None) -> list[str]:
    """``start_script`` as a list of arguments; a string is split like a shell command line.

    :raises ValueError: when there is no argument at all.
    """
    if isinstance(start_script, str):
        argv = shlex.split(start_script)
    else:
        argv = [str(arg) for arg in (start_script or ())]
    if not argv:
        raise ValueError("start_script is empty")
    return argv


def parse_env(script_env: Mapping[str, object] | Iterable[str] | str | None) -> dict[str, str]:
    """``script_env`` as a dict: a mapping, ``NAME=VALUE`` items, or a string of them.

    A string is split like a shell command line (one or more items per line,
    quotes allowed: ``OPTS="-a -b" DEBUG=1``).
    """
    if not script_env:
        return {}
    if isinstance(script_env, dict):
        return {str(k): str(v) for k, v in script_env.items()}
    items = shlex.split(script_env) if isinstance(script_env, str) else list(script_env)
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError("script_env items must be NAME=VALUE, got %r" % item)
        env[name] = value
    return env


def _find_program(name: str, path: str) -> str:
    """A bare command name not on ``path`` is looked for next to the running Python.

    So ``wsgiproxy`` (or any console script of our virtualenv) works in
    ``start_script`` without the virtualenv being activated.
    """
    if os.sep in name or shutil.which(name, path=path):
        return name
    return shutil.which(name, path=os.path.dirname(sys.executable)) or name


class Command:
    """How to run a child: its arguments and extra environment, ``__PORT__`` still in them.

    :param argv: the arguments (see :func:`split_command`).
    :param cwd: the child's working directory (None: ours).
    :param env: variables added to our environment (see :func:`parse_env`).
    :param stop_timeout: seconds between SIGTERM and SIGKILL when the child
        is stopped because we died (see :mod:`~wsgiproxy.spawn.lifeline`).
    """

    def __init__(self, argv: Sequence[str], cwd: str | None = None,
                 env: Mapping[str, str] | None = None, stop_timeout: float = 10.0) -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.env = dict(env or {})
        self.stop_timeout = stop_timeout

    @property
    def mentions_port(self) -> bool:
        """Whether ``__PORT__`` is in an argument or a variable: the child learns its port."""
        return any(PORT_PLACEHOLDER in s for s in self.argv + list(self.env.values()))

    def resolve(self, port: int) -> tuple[list[str], dict[str, str]]:
        """The arguments and the whole environment of a child that listens on ``port``."""
        text = str(port)
        argv = [arg.replace(PORT_PLACEHOLDER, text) for arg in self.argv]
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update((k, v.replace(PORT_PLACEHOLDER, text)) for k, v in self.env.items())
        argv[0] = _find_program(argv[0], env.get("PATH", os.defpath))
        return argv, env

    def launch(self, slot: int, port: int, log: logging.Logger) -> Child:
        """Start the child of ``slot`` on ``port``; its threads are started by :meth:`Child.watch`.

        :raises StartFailed: when the program cannot be run.
        """
        argv, env = self.resolve(port)
        try:
            proc = lifeline.spawn(argv, self.cwd, env, self.stop_timeout)
        except OSError as exc:
            reason = "cannot run %s: %s" % (exc.filename or argv[0], exc.strerror or exc)
            log.error("spawn[%d]: %s", slot, reason)
            raise StartFailed(reason) from None
        return Child(slot, proc, port, log, argv)


# -- the running child ----------------------------------------------------------

def describe_exit(code: int | None) -> str:
    """How a process ended, from its return code: ``"exited with code 3"``..."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "signal %d" % -code
        return "was killed by %s" % name
    return "exited with code %d" % code


class Child:
    """One child process: its pipes' reader threads and the thread that reaps it.

    :param slot: the index of the supervisor's slot it runs in.
    :param proc: the process, with stdout and stderr pipes.
    :param port: the port it was told to listen on.
    :param log: where its output lines go, at INFO level.
    :param argv: the arguments it was started with, for the log.
    """

    def __init__(self, slot: int, proc: subprocess.Popen[bytes], port: int,
                 log: logging.Logger, argv: Sequence[str] = ()) -> None:
        self.slot = slot
        self.proc = proc
        self.pid = proc.pid
        self.argv = list(argv)
        self.port = port
        self.log = log
        self.label = "spawn[%d] pid %d" % (slot, proc.pid)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self.exited = threading.Event()
        self.stopping = False  # set when we stop it on purpose (idle, close, timeout)
        self.readers: list[threading.Thread] = []
        self.started = time.monotonic()
        self.listener_checked = False

    def watch(self, on_exit: Callable[[Child], object]) -> None:
        """Start reading its output, and reaping it: ``on_exit(child)`` once it has exited."""
        for stream, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr")):
            t = threading.Thread(target=self._read, args=(stream, name),
                                 name="%s %s" % (self.label, name), daemon=True)
            t.start()
            self.readers.append(t)
        threading.Thread(target=self._reap, args=(on_exit,), name=self.label + " reaper",
                         daemon=True).start()

    @property
    def dead(self) -> bool:
        """Whether it has exited (reaped or not)."""
        return self.exited.is_set() or self.proc.returncode is not None

    def _read(self, stream: IO[bytes], name: str) -> None:
        keep = self.stderr_tail if name == "stderr" else None
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if keep is not None:
                    keep.append(line)
                self.log.info("%s %s: %s", self.label, name, line)
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def _reap(self, on_exit: Callable[[Child], object]) -> None:
        self.proc.wait()  # reaps it: no zombie
        self.signal_group(signal.SIGKILL)  # whatever it left behind in its group
        lifeline.forget(self.pid)  # nothing of it is left for the watchdog to stop
        self.exited.set()
        on_exit(self)

    def signal_group(self, signum: int) -> None:
        """Signal the child's process group (it is the leader of a new session)."""
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def stderr_lines(self, wait: float = 1.0) -> list[str]:
        """The last stderr lines, after giving the reader up to ``wait`` s to reach EOF."""
        deadline = time.monotonic() + wait
        for t in self.readers:
            t.join(max(0.0, deadline - time.monotonic()))
        return list(self.stderr_tail)

    def describe_exit(self) -> str:
        """How it ended (see :func:`describe_exit`)."""
        return describe_exit(self.proc.returncode)


def stop_children(children: Iterable[Child], timeout: float, log: logging.Logger) -> None:
    """SIGTERM each child's process group, SIGKILL it after ``timeout`` seconds, and wait."""
    alive = [c for c in children if not c.dead]
    for child in alive:
        child.stopping = True
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in alive:
        if not child.exited.wait(max(0.0, deadline - time.monotonic())):
            log.warning("%s did not stop within %g s of SIGTERM; sending SIGKILL",
                        child.label, timeout)
            child.signal_group(signal.SIGKILL)
    for child in alive:
        if not child.exited.wait(10):
            log.error("%s did not exit after SIGKILL", child.label)


# -- who listens on a port (Linux /proc) -----------------------------------------

def listener_owner(port: int, pgid: int) -> str | None:
    """Whose listening socket is ``port``: ``"ours"`` (a process of group ``pgid``),
    ``"foreign"`` (a process we can see outside it), or None where /proc cannot tell.

    A port that accepts connections is not proof enough: if another process
    took it between our check and the child's bind, the child fails while
    the intruder accepts.  Linux's /proc tells whose socket it is.
    """
    inodes: set[str] = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    next(f)
                    for line in f:
                        fields = line.split()
                        # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                            inodes.add("socket:[%s]" % fields[9])
            except FileNotFoundError:
                pass
        if not inodes:
            return None
        group: list[str] = []
        others: list[str] = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open("/proc/%s/stat" % name) as f:
                        stat = f.read()
                    pgrp = int(stat[stat.rindex(")") + 2:].split()[2])
                except (OSError, ValueError, IndexError):
                    continue  # gone meanwhile
                (group if pgrp == pgid else others).append(name)
        if any(_holds(pid, inodes) for pid in group):
            return "ours"
        if any(_holds(pid, inodes) for pid in others):
            return "foreign"
        return None
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _holds(pid: str, inodes: set[str]) -> bool:
    """Whether process ``pid`` has one of the sockets ``inodes`` open (False if we cannot see)."""
    fd_dir = "/proc/%s/fd" % pid
    try:
        for fd in os.listdir(fd_dir):
            try:
                if os.readlink(os.path.join(fd_dir, fd)) in inodes:
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False
