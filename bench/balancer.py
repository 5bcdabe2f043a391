"""The cost of several backends: one href against three, per proxied GET 1 KB.

Starts three copies of ``backend.py`` and, for each tree and each number of
backends (1 and 3), runs a worker that calls ``WSGIProxyApp`` in-process in
a loop.  Two figures:

* user-space instructions per request under callgrind (``--callgrind``,
  needs valgrind): ``(Ir(LARGE) - Ir(SMALL)) / (LARGE - SMALL)``, start-up
  and warm-up cancelled out; repeatable to a few instructions;
* CPU microseconds per request (``time.process_time``), the median of
  ``--rounds`` interleaved rounds; noisy on a shared machine.

A tree without the balancer (before issue 17) runs only the one-backend
case.  Each tree runs with its own checkout first on ``PYTHONPATH`` and the
interpreter of ``--python`` (default: this one)::

    python bench/balancer.py --tree /work/main --tree . [--callgrind] [--rounds 5]
"""

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from instructions import _TOTAL, start_backend

ENVIRON = {
    "REQUEST_METHOD": "GET", "PATH_INFO": "/1k", "RAW_URI": "/1k", "QUERY_STRING": "",
    "SERVER_NAME": "proxy.example", "SERVER_PORT": "80", "HTTP_HOST": "proxy.example",
    "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
    "HTTP_ACCEPT": "text/html", "HTTP_USER_AGENT": "bench",
}


def worker(ports, n, warmup):
    """Run in the tree's interpreter: ``n`` GETs after ``warmup``; prints CPU s/request."""
    from wsgiproxy.app import WSGIProxyApp
    hrefs = ["http://127.0.0.1:%d" % p for p in ports]
    app = WSGIProxyApp(hrefs[0] if len(hrefs) == 1 else hrefs)
    seen = []

    def start_response(status, headers, exc_info=None):
        seen.append(status)

    def one():
        env = dict(ENVIRON)
        env["wsgi.input"] = io.BytesIO(b"")
        body = app(env, start_response)
        size = sum(len(chunk) for chunk in body)
        close = getattr(body, "close", None)
        if close is not None:
            close()
        return size

    for _ in range(warmup):
        if one() != 1024 or not seen[-1].startswith("200"):
            raise SystemExit("bad answer %r" % seen[-1:])
    started = time.process_time()
    for _ in range(n):
        one()
    print((time.process_time() - started) / n)


def run(tree, python, ports, n, warmup, callgrind):
    cmd = [python, os.path.abspath(__file__), "--worker", ",".join(map(str, ports)),
           "--n", str(n), "--warmup", str(warmup)]
    env = dict(os.environ, PYTHONPATH=tree, PYTHONHASHSEED="0")
    if not callgrind:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        return float(out.stdout.split()[-1])
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out_file]
                       + cmd, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=env, timeout=1800)
        with open(out_file) as f:
            return int(_TOTAL.search(f.read()).group(1))


def has_balancer(tree):
    return os.path.exists(os.path.join(tree, "wsgiproxy", "balancer.py"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--small", type=int, default=300)
    ap.add_argument("--large", type=int, default=1500)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--worker")
    args = ap.parse_args(argv)
    if args.worker:
        return worker([int(p) for p in args.worker.split(",")], args.n, args.warmup)
    trees = [os.path.abspath(t) for t in (args.tree or [os.path.dirname(HERE)])]
    backends = [start_backend() for _ in range(3)]
    ports = [port for _, port in backends]
    cases = [(tree, count) for tree in trees for count in (1, 3)
             if count == 1 or has_balancer(tree)]
    try:
        if args.callgrind:
            print("instructions per GET 1 KB (callgrind, user space)")
            for tree, count in cases:
                small, large = (run(tree, args.python, ports[:count], n, args.warmup, True)
                                for n in (args.small, args.large))
                print("  %-40s %d backend%s  %9d" % (tree, count, "s" if count > 1 else " ",
                                                     (large - small) // (args.large - args.small)),
                      flush=True)
        results = {case: [] for case in cases}
        for _ in range(args.rounds):
            for case in cases:
                results[case].append(run(case[0], args.python, ports[:case[1]], args.n,
                                         args.warmup, False))
        print("CPU per GET 1 KB, median of %d interleaved rounds of %d" % (args.rounds, args.n))
        for (tree, count), times in results.items():
            print("  %-40s %d backend%s  %7.1f us  (min %.1f, max %.1f)" % (
                tree, count, "s" if count > 1 else " ", statistics.median(times) * 1e6,
                min(times) * 1e6, max(times) * 1e6))
    finally:
        for proc, _ in backends:
            proc.kill()
            proc.wait()
    return None


if __name__ == "__main__":
    main()
