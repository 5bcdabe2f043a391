"""Instructions per proxied request, counted by callgrind: a repeatable CPU figure.

Timings on a shared 2-core VM swing by 10-30 % between runs; instruction
counts of the same code on the same input do not.  This runs
``cpu_worker.py`` under ``valgrind --tool=callgrind`` twice per subject
(``--n SMALL`` and ``--n LARGE``, the same warm-up) and prints
``(Ir(LARGE) - Ir(SMALL)) / (LARGE - SMALL)``: user-space instructions of
the proxy process per request, start-up and warm-up cancelled out.

To compare two versions of the package in one run, give each a checkout
with its own virtualenv (``--tree DIR``, repeatable; DIR/.venv must have
that checkout installed)::

    python3 bench/instructions.py --tree . --tree ../old-checkout

Needs valgrind (``apt-get install valgrind``).  Subjects and workloads are
those of ``cpu_worker.py`` (default: the three WSGIProxy subjects, GET 1 KB).
"""

import argparse
import os
import re
import select
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SUBJECTS = ("wsgiproxy-exact", "wsgiproxy-app", "wsgiproxy-app-signed")
_TOTAL = re.compile(r"^summary:\s+(\d+)", re.MULTILINE)


def start_backend():
    """The benchmark backend on a free loopback port: (process, port)."""
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "backend.py"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit("backend did not start: %r" % line)
    return proc, int(line.split()[1])


def count(tree, subject, port, n, warmup, workload, secret_file):
    """Total user-space instructions of one cpu_worker run under callgrind."""
    python = os.path.join(tree, ".venv", "bin", "python")
    worker = os.path.join(tree, "bench", "cpu_worker.py")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
               python, worker, "--subject", subject, "--backend", "127.0.0.1:%d" % port,
               "--n", str(n), "--warmup", str(warmup), "--workloads", workload,
               "--secret-file", secret_file]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["PYTHONHASHSEED"] = "0"
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=env, timeout=1800)
        with open(out) as f:
            match = _TOTAL.search(f.read())
    if not match:
        raise SystemExit("no callgrind summary for %s in %s" % (subject, tree))
    return int(match.group(1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", help="a checkout with its own .venv "
                    "(repeatable; default: this one)")
    ap.add_argument("--subjects", default=",".join(SUBJECTS))
    ap.add_argument("--workload", default="get1k")
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--large", type=int, default=2500)
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args(argv)
    trees = [os.path.abspath(t) for t in (args.tree or [os.path.dirname(HERE)])]
    backend, port = start_backend()
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".secret") as secret:
            secret.write("instructions-benchmark-secret-0123456789\n")
            secret.flush()
            os.chmod(secret.name, 0o600)
            print("instructions per request (%s, callgrind, user space)" % args.workload)
            for subject in args.subjects.split(","):
                row = []
                for tree in trees:
                    small, large = (count(tree, subject, port, n, args.warmup, args.workload,
                                          secret.name) for n in (args.small, args.large))
                    row.append((large - small) // (args.large - args.small))
                cells = "  ".join("%9d" % ir for ir in row)
                ratio = "  (%.3f x the first)" % (row[-1] / row[0]) if len(row) > 1 else ""
                print("  %-22s %s%s" % (subject, cells, ratio), flush=True)
            print("trees: %s" % ", ".join(trees))
    finally:
        backend.kill()
        backend.wait()


if __name__ == "__main__":
    main()
