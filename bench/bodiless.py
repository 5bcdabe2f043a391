"""What the no-reuse rule after bodiless answers costs: HEAD and 304 loops, before vs after.

    .venv/bin/python bench/bodiless.py --tree /path/to/old/checkout --tree . [--n 3000] [--rounds 5]

Each ``--tree`` is a directory holding a ``wsgiproxy`` package; its worker
runs with that directory first on ``PYTHONPATH`` (the interpreter is this
one: run it with the project's ``.venv/bin/python``).  A worker calls
``WSGIProxyApp(href)`` in-process, one request at a time with keep-alive to
the benchmark backend (``backend.py``, a well-behaved server), for each
workload:

  head    HEAD /1k      200, Content-Length: 1024, no body
  304     GET /304      304 with an ETag and no Content-Length
  304-cl  GET /304-cl   304 with Content-Length: 1024
  get1k   GET /1k       200 with a 1 KB body (the control)
  mix     8 GET /1k, 1 HEAD /1k, 1 GET /304, in turn

and prints, per workload, the proxy process's CPU time per request
(``time.process_time``: user + system), requests/s (wall clock) and the
backend connections opened per request.  Rounds interleave the trees; the
table shows the median, min and max over rounds.  The worker and the backend
are pinned to CPU 0 where ``os.sched_setaffinity`` exists (see README.txt:
it steadies the CPU figure on a small VM).  Nothing here is part of the
test suite.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import subjects
from instructions import start_backend

HEAD_1K = ("HEAD", "/1k", {}, "200", 0)
NOT_MODIFIED = ("GET", "/304", {"HTTP_IF_NONE_MATCH": '"b1"'}, "304", 0)
NOT_MODIFIED_CL = ("GET", "/304-cl", {"HTTP_IF_NONE_MATCH": '"b1"'}, "304", 0)
GET_1K = ("GET", "/1k", {}, "200", 1024)
# name: the requests a loop cycles through, each (method, path, extra environ,
# expected status, expected body length)
WORKLOADS = {
    "head": [HEAD_1K],
    "304": [NOT_MODIFIED],
    "304-cl": [NOT_MODIFIED_CL],
    "get1k": [GET_1K],
    "mix": [GET_1K] * 8 + [HEAD_1K, NOT_MODIFIED],
}


def pin(pid=0):
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, {0})


def accepted(port):
    """Connections the backend has accepted so far."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/stats")
    count = int(conn.getresponse().read())
    conn.close()
    return count - 1  # this one


def worker(port, n, warmup):
    """One process, one tree: every workload, as JSON on stdout."""
    import io

    from wsgiproxy.app import WSGIProxyApp
    pin()
    app = WSGIProxyApp("http://127.0.0.1:%d" % port)
    base = subjects.base_environ("127.0.0.1", port)
    out = {}
    status = [None]

    def start_response(s, headers, exc_info=None):
        status[0] = s

    def one(env0, expected, length):
        env = env0.copy()
        env["wsgi.input"] = io.BytesIO(b"")
        it = app(env, start_response)
        got = 0
        try:
            for chunk in it:
                got += len(chunk)
        finally:
            if hasattr(it, "close"):
                it.close()
        if warming and (not status[0].startswith(expected) or got != length):
            raise SystemExit("%s: got %s and %d bytes, expected %s and %d"
                             % (name, status[0], got, expected, length))

    for name, specs in WORKLOADS.items():
        cycle = [(dict(base, REQUEST_METHOD=method, PATH_INFO=path, RAW_URI=path, **extra),
                  expected, length) for method, path, extra, expected, length in specs]
        cycle = (cycle * (n // len(cycle) + 1))[:n]
        warming = True
        for request in cycle[:warmup]:
            one(*request)
        warming = False
        before = accepted(port)
        cpu, wall = time.process_time(), time.perf_counter()
        for request in cycle:
            one(*request)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        out[name] = {"cpu_us": cpu / n * 1e6, "rps": n / wall,
                     "connects": (accepted(port) - before) / n}
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="append", help="a directory holding a wsgiproxy package")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # the backend's port
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.n, args.warmup)
    trees = [os.path.abspath(t) for t in args.tree or ["."]]
    backend, port = start_backend()
    pin(backend.pid)
    results = {tree: [] for tree in trees}
    try:
        for r in range(args.rounds):
            for tree in trees:
                env = dict(os.environ, PYTHONPATH=tree, PYTHONHASHSEED="0")
                done = subprocess.run(
                    [sys.executable, __file__, "--worker", str(port), "--n", str(args.n),
                     "--warmup", str(args.warmup)],
                    env=env, capture_output=True, text=True, timeout=600)
                if done.returncode:
                    raise SystemExit("worker for %s failed:\n%s" % (tree, done.stderr[-2000:]))
                results[tree].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print("round %d of %d done" % (r + 1, args.rounds), file=sys.stderr)
    finally:
        backend.kill()
        backend.wait()
    print("%-8s %-40s %22s %22s %9s" % ("workload", "tree", "CPU us/req med [min-max]",
                                       "req/s med [min-max]", "conn/req"))
    for name in WORKLOADS:
        for tree in trees:
            runs = [run[name] for run in results[tree]]
            cpu = sorted(run["cpu_us"] for run in runs)
            rps = sorted(run["rps"] for run in runs)
            print("%-8s %-40s %8.1f [%5.1f-%5.1f] %8.0f [%5.0f-%5.0f] %9.2f" % (
                name, tree[-40:], statistics.median(cpu), cpu[0], cpu[-1],
                statistics.median(rps), rps[0], rps[-1],
                statistics.median(run["connects"] for run in runs)))


if __name__ == "__main__":
    main()
