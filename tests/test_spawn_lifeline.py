"""No process that spawn started outlives the process that started it (wsgiproxy.spawn.lifeline).

The parent is killed with SIGKILL -- ``wsgiproxy serve``, a gunicorn gthread
worker, a small script -- while its children (shells with children and
grandchildren of their own) serve or start; then the tests wait, with a
deadline, until no process of the tree they recorded before the kill is
alive: by pid, and by session and process group, scanned in /proc.  A
zombie is not alive: here, as in many containers, process 1 never reaps the
orphans it inherits.
"""

import functools
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from webob import Request

from wsgiproxy.spawn import SpawningApplication, lifeline

from .client import request
from .servers import (
    BIN,
    WSGIPROXY,
    Gunicorn,
    Process,
    Served,
    alive,
    free_port,
    holders,
    parent_of,
    pids_in,
    wait_until,
    watchdog_of,
)

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spawnchild.py")
#: The child's program: a shell that keeps running, with the HTTP server and two
#: sleepers (one the other's child) below it -- none of them tied to us by Linux.
SHELL = "(sleep 600 & sleep 600) & %s %s __PORT__ %s; wait"


# -- processes, from /proc ---------------------------------------------------------

def processes():
    """Every process: pid -> (state, ppid, process group, session)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            table[int(name)] = (fields[0], int(fields[1]), int(fields[2]), int(fields[3]))
    return table


def live(state):
    return state not in ("Z", "X")


class Tree:
    """The live descendants of ``root`` now, and the sessions and groups they are in."""

    def __init__(self, root):
        table = processes()
        self.pids = set()
        frontier = [root]
        while frontier:
            parent = frontier.pop()
            for pid, (state, ppid, _, _) in table.items():
                if ppid == parent and live(state) and pid not in self.pids:
                    self.pids.add(pid)
                    frontier.append(pid)
        _, _, root_group, root_session = table[root]
        self.groups = {table[p][2] for p in self.pids} - {root_group}
        self.sessions = {table[p][3] for p in self.pids} - {root_session}

    def remove(self, other, *pids):
        """Leave out ``other`` (a subtree) and ``pids``."""
        self.pids -= other.pids | set(pids)
        self.groups -= other.groups
        self.sessions -= other.sessions

    def survivors(self):
        """Live processes of the tree, or of its sessions or groups (a newcomer counts)."""
        return sorted(pid for pid, (state, _, group, session) in processes().items()
                      if live(state) and (pid in self.pids or group in self.groups
                                          or session in self.sessions))


def wait_gone(tree, what, timeout=20):
    """Seconds until nothing of ``tree`` is alive (fails after ``timeout``)."""
    start = time.monotonic()
    wait_until(lambda: not tree.survivors(), timeout, what)
    return time.monotonic() - start


def lifeline_holders(watchdog):
    """Processes with the watchdog's lifeline (its stdin pipe) open, either end."""
    return set(holders({os.readlink("/proc/%d/fd/0" % watchdog)}))


# -- requests ------------------------------------------------------------------------

def get(port, path="/"):
    return request(port, path, accept="application/json", timeout=60)


def at_once(port, n, path="/"):
    """``n`` requests sent together, each in a thread; the threads (joined by the caller)
    append their :class:`~tests.client.Answer` or exception to the returned list."""
    results = []

    def one():
        try:
            results.append(get(port, path))
        except Exception as exc:  # the parent may be killed under it
            results.append(exc)
    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, results


def in_flight(piddir):
    return [name for name in os.listdir(piddir) if name.startswith("inflight-")]


def shell_script(piddir):
    return "sh -c %s" % shlex.quote(SHELL % (sys.executable, CHILD, piddir))


def spawn_ini(piddir, mode, extra=""):
    return textwrap.dedent("""
        [app:main]
        use = egg:WSGIProxy#spawn
        start_script = {script}
        script_env = CHILD_MODE={mode}
        workers = 2
        start_timeout = 60
        stop_timeout = 2
        """).format(script=shell_script(piddir), mode=mode) + extra


# -- kill -9 of the process that spawned ---------------------------------------------------

@pytest.mark.parametrize("when", ["serving", "starting"])
def test_kill_9_of_wsgiproxy_serve_leaves_nothing(tmp_path, piddir, when):
    port = free_port()
    (tmp_path / "spawn.ini").write_text(spawn_ini(piddir, "serve" if when == "serving" else "never",
                                                 textwrap.dedent("""
        [server:main]
        use = egg:waitress#main
        listen = 127.0.0.1:%d
        threads = 8
        """ % port)))
    with Served([WSGIPROXY, "serve", tmp_path / "spawn.ini"], port, tmp_path / "serve.log") as serve:
        # Six requests at once: both children start together.
        threads, results = at_once(port, 6, "/hold" if when == "serving" else "/")
        if when == "serving":
            # The children answer /hold only when piddir/release exists: all six stay in flight.
            wait_until(lambda: len(in_flight(piddir)) == 6, 60, "six requests in flight")
        else:
            # Each start (the shell and its three) waits for a server that never listens.
            wait_until(lambda: len(pids_in(piddir)) == 2, 60, "two servers started")
        wait_until(lambda: len(Tree(serve.pid).pids) >= 9, 30, "two complete trees")
        tree = Tree(serve.pid)
        assert watchdog_of(serve.pid) in tree.pids
        assert len(tree.sessions) == 3  # the two children's, and the watchdog's
        os.kill(serve.pid, signal.SIGKILL)
        assert serve.process.proc.wait(10) == -signal.SIGKILL
        took = wait_gone(tree, "the spawned processes to be gone")
        for t in threads:
            t.join(30)
        assert all(isinstance(r, Exception) for r in results), results
    print("wsgiproxy serve, %s: %d processes gone %.3f s after kill -9"
          % (when, len(tree.pids), took))


def test_kill_9_of_a_gunicorn_gthread_worker_leaves_nothing(tmp_path, piddir):
    (tmp_path / "spawn.ini").write_text(spawn_ini(piddir, "serve"))
    args = [os.path.join(BIN, "gunicorn"), "--paste", tmp_path / "spawn.ini",
            "-b", "127.0.0.1:%d" % free_port(), "-w", "1", "-k", "gthread", "--threads", "8"]
    with Gunicorn(args, tmp_path) as gunicorn:
        [worker] = gunicorn.ready_workers()
        # Eight requests at once through the worker's threads start both children.
        threads, results = at_once(gunicorn.port, 8)
        for t in threads:
            t.join(60)
        assert all(r.status == 200 for r in results), results
        old = {r.json()["pid"] for r in results}
        assert len(old) == 2
        wait_until(lambda: len(Tree(worker).pids) >= 9, 30, "two complete trees")
        tree = Tree(worker)
        assert watchdog_of(worker) in tree.pids
        os.kill(worker, signal.SIGKILL)
        took = wait_gone(tree, "the worker's spawned processes to be gone")
        # gunicorn replaces the worker, which starts children of its own.
        [fresh] = wait_until(lambda: [w for w in gunicorn.ready_workers() if w != worker], 30,
                             "a new worker")
        answer = get(gunicorn.port)
        assert answer.status == 200, answer
        seen = answer.json()
        assert seen["pid"] not in old and seen["pid"] not in tree.pids
        assert parent_of(seen["ppid"]) == fresh  # the server's shell is the new worker's child
        after = Tree(fresh)
        assert watchdog_of(fresh) in after.pids
        gunicorn.stop()  # the ordinary way down
        wait_gone(after, "the new worker's spawned processes to be gone")
    print("gunicorn gthread worker: %d processes gone %.3f s after kill -9" % (len(tree.pids), took))


# -- the parts: the watchdog alone, a new watchdog, a fork ------------------------------------

PARENT = r'''
"""python parent.py CONFIG: start children as CONFIG says, print them, then wait to be killed."""
import json, os, signal, sys
from webob import Request
from wsgiproxy.spawn import SpawningApplication, lifeline

config = json.loads(sys.argv[1])
if not config["pdeathsig"]:
    lifeline.PDEATHSIG = None  # the lifeline alone
role, apps, children = "parent", [], []
for step in config["steps"]:
    if step == "kill-watchdog":
        os.kill(lifeline.watchdog_pid(), signal.SIGKILL)
        lifeline._tether.watchdog.wait(10)
    elif step == "fork":
        if os.fork() == 0:  # the same app, in the forked process: children of its own
            role, children = "fork", [Request.blank("/").get_response(apps[0]).json["ppid"]]
    else:
        app = SpawningApplication(["sh", "-c", config["script"]],
                                  script_env={"CHILD_MODE": step}, handle_signals=False,
                                  stop_timeout=config["stop_timeout"])
        apps.append(app)
        children.append(Request.blank("/").get_response(app).json["ppid"])  # the shell
print(json.dumps({"role": role, "pid": os.getpid(), "children": children,
                  "watchdog": lifeline.watchdog_pid()}), flush=True)
while True:
    signal.pause()
'''


class Parent:
    """``PARENT`` run with ``steps``; ``report[role]`` once every process has printed its line."""

    def __init__(self, tmp_path, piddir, steps, pdeathsig=True, stop_timeout=2.0):
        (tmp_path / "parent.py").write_text(PARENT)
        config = {"steps": steps, "pdeathsig": pdeathsig, "stop_timeout": stop_timeout,
                  "script": SHELL % (sys.executable, CHILD, piddir)}
        self.stderr_path = tmp_path / "parent.stderr"
        self.stderr = open(self.stderr_path, "wb")
        self.process = Process([sys.executable, str(tmp_path / "parent.py"), json.dumps(config)],
                               stderr=self.stderr)
        try:
            self.report = self._read_reports(1 + steps.count("fork"))
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _read_reports(self, count, timeout=60):
        """``{role: report}`` once ``count`` processes have printed theirs."""
        reports, pending = {}, b""
        fd, deadline = self.process.proc.stdout.fileno(), time.monotonic() + timeout
        while len(reports) < count:
            if b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                info = json.loads(line)
                reports[info["role"]] = info
                continue
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            data = os.read(fd, 65536) if ready else b""
            assert data, "%d of %d reports; stderr:\n%s" % (
                len(reports), count, self.stderr_path.read_text())
            pending += data
        return reports

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.__exit__(*exc)
        self.stderr.close()


def test_the_lifeline_alone_stops_children_grandchildren_and_the_stubborn(tmp_path, piddir):
    # Without the parent-death signal, the watchdog does it all: SIGTERM to each
    # group, and SIGKILL after stop_timeout to the child that ignores SIGTERM.
    with Parent(tmp_path, piddir, ["serve", "ignore-term"], pdeathsig=False,
                stop_timeout=1.5) as parent:
        info = parent.report["parent"]
        wait_until(lambda: len(Tree(info["pid"]).pids) >= 9, 30, "two complete trees")
        tree = Tree(info["pid"])
        stubborn = [pid for pid in pids_in(piddir)
                    if parent_of(pid) == info["children"][1]]
        start = time.monotonic()
        os.kill(info["pid"], signal.SIGKILL)
        took = wait_gone(tree, "the spawned processes to be gone")
        assert time.monotonic() - start >= 1.5  # the stubborn server lasted until SIGKILL
        assert stubborn and not any(alive(pid) for pid in stubborn)
    assert b"stopping them" in (tmp_path / "parent.stderr").read_bytes()
    print("lifeline alone: %d processes gone %.3f s after kill -9 (grace 1.5 s)"
          % (len(tree.pids), took))


def test_a_new_watchdog_learns_the_children_that_live(tmp_path, piddir):
    with Parent(tmp_path, piddir, ["serve", "kill-watchdog", "serve"], pdeathsig=False) as parent:
        info = parent.report["parent"]
        wait_until(lambda: len(Tree(info["pid"]).pids) >= 9, 30, "two complete trees")
        tree = Tree(info["pid"])
        assert watchdog_of(info["pid"]) == info["watchdog"]
        os.kill(info["pid"], signal.SIGKILL)
        wait_gone(tree, "the spawned processes to be gone")  # the first child's too


def test_a_forked_process_ties_its_children_to_itself(tmp_path, piddir):
    with Parent(tmp_path, piddir, ["serve", "fork"], pdeathsig=False) as parent:
        first, forked = parent.report["parent"], parent.report["fork"]
        assert forked["watchdog"] not in (None, first["watchdog"])
        assert parent_of(forked["children"][0]) == forked["pid"]
        assert lifeline_holders(first["watchdog"]) == {first["pid"], first["watchdog"]}
        assert lifeline_holders(forked["watchdog"]) == {forked["pid"], forked["watchdog"]}
        wait_until(lambda: len(Tree(forked["pid"]).pids) >= 5, 30, "the fork's tree")
        theirs = Tree(forked["pid"])
        ours = Tree(first["pid"])
        ours.remove(theirs, forked["pid"])
        # The parent dies: its children go, the fork's (tied to the fork alone) stay.
        os.kill(first["pid"], signal.SIGKILL)
        wait_gone(ours, "the parent's spawned processes to be gone")
        assert sorted(theirs.pids) == theirs.survivors()
        os.kill(forked["pid"], signal.SIGKILL)
        wait_gone(theirs, "the fork's spawned processes to be gone")


# -- in this process ---------------------------------------------------------------------------

def test_a_child_started_by_a_thread_that_ends_lives_on(piddir):
    # Linux's parent-death signal comes when the *thread* that forked a child
    # ends; a request thread may end long before the process.
    app = SpawningApplication([sys.executable, CHILD, "__PORT__", piddir],
                              handle_signals=False, stop_timeout=5)
    try:
        answers = []
        thread = threading.Thread(
            target=lambda: answers.append(Request.blank("/").get_response(app).json))
        thread.start()
        thread.join(30)
        wait_until(lambda: not os.path.exists("/proc/self/task/%d" % thread.native_id), 10,
                   "the thread to be gone")
        [first] = answers
        # Had the thread forked it, the child would have SIGTERM pending by now.
        again = Request.blank("/").get_response(app)
        assert again.status_int == 200 and again.json["pid"] == first["pid"]
        assert app.pids == [first["pid"]] and alive(first["pid"])
    finally:
        app.close()


def test_the_lifeline_reaches_no_child(piddir):
    app = SpawningApplication(["sh", "-c", SHELL % (sys.executable, CHILD, piddir)],
                              handle_signals=False, stop_timeout=5)
    try:
        assert Request.blank("/").get_response(app).status_int == 200
        watchdog = lifeline.watchdog_pid()
        [child] = app.pids
        wait_until(lambda: len(Tree(child).pids) >= 3, 30, "the child's tree")
        # Ours is the write end, the watchdog's the read end; neither the child nor
        # its children (nor anyone else) has either.
        assert lifeline_holders(watchdog) == {os.getpid(), watchdog}
    finally:
        app.close()


def started_alike(start, cwd, env):
    """What a program started by ``start(argv, cwd, env)`` finds at its start: its
    signal dispositions and mask, umask, environment, parent, group, session, files."""
    seen = {}
    for argv in (["cat", "/proc/self/status", "/proc/self/environ"], ["ls", "/proc/self/fd"],
                 ["cat", "/proc/self/stat"]):
        proc = start(argv, cwd, env)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            lifeline.forget(proc.pid)  # the plain ones were never registered: ignored
        assert (proc.returncode, err) == (0, b""), err
        seen[argv[-1]] = out
        if argv[-1] == "/proc/self/stat":
            fields = out[out.rindex(b")") + 2:].split()
            seen["parent, group, session"] = (int(fields[1]), int(fields[2]) == proc.pid,
                                              int(fields[3]) == proc.pid)
    status, _, environ = seen.pop("/proc/self/environ").rpartition(b"\n")
    seen["status"] = [line for line in status.splitlines()
                      if line.split(b":")[0] in (b"SigBlk", b"SigIgn", b"SigCgt", b"Umask")]
    seen["environ"] = sorted(environ.split(b"\0"))
    del seen["/proc/self/stat"]
    return seen


def plain_popen(argv, cwd, env):
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, close_fds=True)


@pytest.mark.parametrize("locale", [{}, {"LC_CTYPE": "C", "LANG": "C"}])
def test_the_tie_changes_nothing_the_program_sees(tmp_path, locale):
    # The tie is a Python program that execs the child's: what Python changes
    # at start-up (ignored signals, LC_CTYPE) must not reach the child.
    env = dict({"PATH": os.environ["PATH"], "FOO": "a b"}, **locale)
    tied = started_alike(functools.partial(lifeline.spawn, stop_timeout=5), str(tmp_path), env)
    assert tied == started_alike(plain_popen, str(tmp_path), env)
    assert tied["parent, group, session"] == (os.getpid(), True, True)
    assert len(tied["status"]) == 4 and b"FOO=a b" in tied["environ"]


@pytest.mark.parametrize("program, reason", [("/nonexistent/server", "No such file or directory"),
                                             ("not-executable", "Permission denied")])
def test_a_program_that_cannot_run_is_reported(tmp_path, program, reason):
    if not program.startswith("/"):
        (tmp_path / program).write_text("#!/bin/sh\n")
        program = str(tmp_path / program)
    app = SpawningApplication([program, "__PORT__"], handle_signals=False)
    try:
        res = Request.blank("/", accept="application/json").get_response(app)
        assert res.status_int == 503
        assert "cannot run %s: %s" % (program, reason) in res.json["error"]["message"]
        assert app.pids == []
    finally:
        app.close()
