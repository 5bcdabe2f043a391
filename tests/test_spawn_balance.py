# ruff: noqa: F811 -- the fixtures imported from test_spawn are the tests' parameters
"""SpawningApplication(workers=N) balances over its running children with the Balancer.

Real child processes (tests/spawnchild.py): round-robin splits evenly,
least_conn avoids a child held busy, a child killed with SIGKILL under GETs
fails no GET (they go on to another running child), and POSTs under the same
kill never run twice.  The fixtures are tests/test_spawn.py's.
"""

import collections
import os
import signal
import threading

from .client import request
from .servers import pid_gone, wait_until
from .test_spawn import child_script, get_json, in_flight, spawn  # noqa: F401 -- fixtures


def start_children(app, server, piddir, n, until):
    """Make ``n`` children run: ``n`` concurrent requests held until ``PIDDIR/until``.

    Returns the threads' answers (filled in once released).
    """
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(
        get_json(server, "/hold?until=%s" % until)["pid"])) for _ in range(n)]
    for t in threads:
        t.start()
    wait_until(lambda: len(app.ports) == n and len(in_flight(piddir)) == n, 30,
               "%d children running, each with a request" % n)
    return threads, answers


def release(piddir, name, threads):
    open(os.path.join(piddir, name), "w").close()
    for t in threads:
        t.join(30)


def test_round_robin_splits_evenly_over_running_children(spawn, piddir):
    app, server = spawn(workers=3, balance="round_robin")
    threads, _ = start_children(app, server, piddir, 3, "go")
    release(piddir, "go", threads)
    seen = collections.Counter(get_json(server, "/")["pid"] for _ in range(30))
    assert sorted(seen) == sorted(app.pids) and len(seen) == 3
    assert set(seen.values()) == {10}, seen
    # The server closes each body after the client has it: all end out of flight.
    wait_until(lambda: app._supervisor.balancer.in_flight == 0, 10, "no request in flight")


def test_least_conn_avoids_a_child_held_busy(spawn, piddir):
    app, server = spawn(workers=3)  # least_conn: spawn's default
    threads, _ = start_children(app, server, piddir, 3, "go")
    release(piddir, "go", threads)
    busy = []
    holder = threading.Thread(target=lambda: busy.append(
        get_json(server, "/hold?until=done")["pid"]))
    holder.start()
    wait_until(lambda: len(in_flight(piddir)) == 4, 10, "the held request in a child")
    held = in_flight(piddir)
    held_pid = next(pid for pid in set(held) if held.count(pid) == 2)
    seen = collections.Counter(get_json(server, "/")["pid"] for _ in range(20))
    assert held_pid not in seen and len(seen) == 2, (held_pid, seen)
    assert min(seen.values()) >= 5  # in turn among the two idle ones
    release(piddir, "done", [holder])
    assert busy == [held_pid]


def test_sigkill_under_gets_fails_no_get(spawn, piddir):
    app, server = spawn(workers=3)
    threads, answers = start_children(app, server, piddir, 3, "go")
    more, more_answers = [], []
    for _ in range(3):  # two GETs in flight on each child
        t = threading.Thread(target=lambda: more_answers.append(
            get_json(server, "/hold?until=go")["pid"]))
        t.start()
        more.append(t)
    wait_until(lambda: len(in_flight(piddir)) == 6, 20, "six GETs in the children")
    victim = in_flight(piddir)[0]
    assert in_flight(piddir).count(victim) == 2
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: pid_gone(victim) and victim not in app.pids, 10, "the victim reaped")
    # Its two GETs went on to the running children: eight holds seen, six alive.
    wait_until(lambda: len(in_flight(piddir)) == 8, 20, "the victim's GETs sent again")
    release(piddir, "go", threads + more)
    pids = answers + more_answers  # get_json asserted 200 for each
    assert len(pids) == 6 and victim not in pids
    # Later requests go to the two left (least_conn) or start a third one.
    assert get_json(server, "/")["pid"] != victim


def test_sigkill_under_posts_runs_no_post_twice(spawn, piddir):
    app, server = spawn(workers=3)
    threads, _ = start_children(app, server, piddir, 3, "warm")
    release(piddir, "warm", threads)
    answers = {}

    def post(ident):
        answer = request(server.port, "/hold?until=go&id=%s" % ident, method="POST",
                         body=b"pay 10 euros", timeout=40)
        answers[ident] = answer.status

    posts = [threading.Thread(target=post, args=("p%d" % i,)) for i in range(6)]
    for t in posts:
        t.start()
    wait_until(lambda: len(in_flight(piddir)) == 6 + 3, 20, "six POSTs in the children")
    ran = [name.split("-") for name in os.listdir(piddir) if name.startswith("post-")]
    victim = int(ran[0][2])
    on_victim = {ident for _, ident, pid in ran if int(pid) == victim}
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: pid_gone(victim), 10, "the victim gone")
    release(piddir, "go", posts)
    ran = [name.split("-")[1] for name in os.listdir(piddir) if name.startswith("post-")]
    assert sorted(ran) == sorted(set(ran)) == sorted(answers), "a POST ran twice"
    # Those that may have run on the victim were not sent again: the client got 502.
    assert {i for i, status in answers.items() if status == 502} == on_victim
    assert all(status == 200 for i, status in answers.items() if i not in on_victim)


def test_ini_options_reach_the_balancer_over_the_children():
    from wsgiproxy.wsgiapp import make_spawn
    app = make_spawn({}, start_script="fake-server __PORT__", handle_signals="false",
                     balance="round_robin", max_fails="3", fail_timeout="7",
                     next_upstream="error timeout http_503", next_upstream_tries="2",
                     next_upstream_timeout="5", retry_budget="50")
    try:
        balancer = app._supervisor.balancer
        assert app._proxy.balancer is balancer and not balancer.least_conn
        assert (balancer.max_fails, balancer.fail_timeout, balancer.tries, balancer.timeout,
                balancer.retry_budget) == (3, 7.0, 2, 5.0, 50.0)
        assert balancer.retry_statuses == {503} and balancer.state() == []  # none running
    finally:
        app.close()
    default = make_spawn({}, start_script="fake-server __PORT__", handle_signals="false")
    assert default._supervisor.balancer.least_conn
    default.close()
    for name, value in (("balance", "random"), ("next_upstream", "sometimes"),
                        ("max_fails", "-1")):
        try:
            make_spawn({}, start_script="fake-server __PORT__", handle_signals="false",
                       **{name: value})
        except ValueError as exc:
            assert name in str(exc)
        else:
            raise AssertionError("%s = %s was accepted" % (name, value))
