"""The two small programs that tie spawned processes to their parent; run, never imported.

spawn runs them with its own Python interpreter, isolated from the
environment and the site packages (``python -I -S watchdog.py ...``), so
they use the standard library only.  :mod:`wsgiproxy.spawn.lifeline` is the
parent's side.

``exec PARENT LIFELINE ERRORS SIGNAL GRACE LC_CTYPE -- PROGRAM ARGS...``
    Runs in the new child process, before its program.  It asks Linux for
    ``SIGNAL`` when the parent thread ends (``PR_SET_PDEATHSIG``; ``0``:
    no), writes ``+PGID GRACE`` on the lifeline (file descriptor
    ``LIFELINE``; ``-1``: none) so the watchdog knows the child's process
    group, and closes it.  If the parent (process id ``PARENT``) is already
    gone it stops there; otherwise it execs ``PROGRAM``, which keeps the
    process id: the parent still sees its own child.  If the exec fails,
    its errno is written on file descriptor ``ERRORS`` (closed by a
    successful exec) and the exit code is 127.  What Python's start-up
    changed is undone first: the signals it ignores, and the ``LC_CTYPE``
    it may set (``LC_CTYPE`` is ``-`` when the child's environment has
    none, else ``=VALUE``).

``watch``
    The watchdog.  It reads the lifeline on stdin: ``+PGID GRACE``
    registers a process group, ``-PGID`` forgets it.  End of file means the
    parent is gone, however it ended (the kernel closes a dead process's
    write end): every group still registered gets SIGTERM, and those with a
    live process ``GRACE`` seconds later get SIGKILL.  Then it exits.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence

PR_SET_PDEATHSIG = 1
#: Seconds between two looks at the groups that are being stopped.
TICK = 0.05
#: Exit code when the program cannot be run (as a shell says it).
CANNOT_RUN = 127


# -- exec: the child, before its program ----------------------------------------

def ask_for_parent_death_signal(signum: int) -> None:
    """Linux only: have the kernel send ``signum`` when the thread that forked us ends."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        pass  # the watchdog still ties the child to its parent


def run_child(parent: int, lifeline: int, errors: int, signum: int, grace: str,
              lc_ctype: str, argv: Sequence[str]) -> None:
    """Tie this process to ``parent`` and exec ``argv`` (see the module's docstring)."""
    os.set_inheritable(errors, False)
    if signum:
        ask_for_parent_death_signal(signum)
    if lifeline >= 0:
        try:
            os.write(lifeline, ("+%d %s\n" % (os.getpgrp(), grace)).encode())
        except OSError:
            pass  # no watchdog: the parent starts another and registers us again
        os.close(lifeline)
    if os.getppid() != parent:
        os._exit(1)  # it died while we started: nobody wants the program now
    for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ"):  # Python ignores them; a program must not
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    if lc_ctype == "-":
        os.environ.pop("LC_CTYPE", None)  # set by Python's locale coercion (PEP 538)
    else:
        os.environ["LC_CTYPE"] = lc_ctype[1:]
    try:
        os.execvpe(argv[0], list(argv), os.environ)
    except OSError as exc:
        os.write(errors, str(exc.errno or 0).encode())
    os._exit(CANNOT_RUN)


# -- watch: the watchdog ------------------------------------------------------------

def read_registrations(fd: int) -> dict[int, float]:
    """Read the lifeline until end of file; the process groups registered at that moment."""
    groups: dict[int, float] = {}
    pending = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not data:
            return groups
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            apply(groups, line)


def apply(groups: dict[int, float], line: bytes) -> None:
    """One lifeline message: ``+PGID GRACE`` or ``-PGID``; anything else is ignored."""
    try:
        if line.startswith(b"+"):
            pgid, grace = line[1:].split()
            groups[int(pgid)] = float(grace)
        elif line.startswith(b"-"):
            groups.pop(int(line[1:]), None)
    except ValueError:
        pass


def live_groups(pgids: Iterable[int]) -> set[int]:
    """Which of ``pgids`` still have a live process (a zombie is not one).

    Linux's /proc is read, because a zombie still counts for ``killpg(pgid,
    0)`` and a dead parent's zombies wait for an init process that may never
    reap them.
    """
    wanted = set(pgids)
    if not os.path.isdir("/proc/self"):
        found = set()
        for pgid in wanted:
            try:
                os.killpg(pgid, 0)
                found.add(pgid)
            except ProcessLookupError:
                pass
            except PermissionError:
                found.add(pgid)
        return found
    live: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2:].split()
        except (OSError, ValueError):
            continue  # gone meanwhile
        if fields[0] not in (b"Z", b"X") and int(fields[2]) in wanted:
            live.add(int(fields[2]))
    return live


def _signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_groups(groups: dict[int, float]) -> None:
    """SIGTERM every group, then SIGKILL each one still alive after its grace."""
    start = time.monotonic()
    deadlines = {pgid: start + grace for pgid, grace in groups.items()
                 if _signal_group(pgid, signal.SIGTERM)}
    while deadlines:
        live = live_groups(deadlines)
        now = time.monotonic()
        for pgid, deadline in list(deadlines.items()):
            if pgid not in live:
                del deadlines[pgid]
            elif now >= deadline:
                _signal_group(pgid, signal.SIGKILL)
                del deadlines[pgid]
        if deadlines:
            time.sleep(TICK)


def watch() -> None:
    """Wait for the parent's end on stdin, then stop what it left (see the module's docstring)."""
    groups = read_registrations(0)
    os.close(0)
    if groups:
        _say("the process that started process group%s %s is gone; stopping %s"
             % ("" if len(groups) == 1 else "s", ", ".join(map(str, sorted(groups))),
                "it" if len(groups) == 1 else "them"))
        stop_groups(groups)


def _say(message: str) -> None:
    try:
        sys.stderr.write("wsgiproxy.spawn watchdog (pid %d): %s\n" % (os.getpid(), message))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def main(args: Sequence[str]) -> None:
    """``exec ...`` or ``watch`` (see the module's docstring)."""
    if args[:1] == ["watch"]:
        watch()
    elif args[:1] == ["exec"] and len(args) > 8 and args[7] == "--":
        parent, lifeline, errors, signum = (int(a) for a in args[1:5])
        run_child(parent, lifeline, errors, signum, args[5], args[6], args[8:])
    else:
        sys.exit("usage: watchdog.py exec PARENT LIFELINE ERRORS SIGNAL GRACE LC_CTYPE -- "
                 "PROGRAM [ARGS...] | watchdog.py watch")


if __name__ == "__main__":
    main(sys.argv[1:])
