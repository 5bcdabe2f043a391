"""Where the CPU of a signed request goes (the floor behind the "signed" target).

Runs in the project's virtualenv, in one process pinned to CPU 0 with the
backend (like figure 1 of run.py), and measures the in-process CPU time of a
1 KB GET for four variants of the same WSGIProxyApp, interleaved round by
round so that machine noise hits them alike:

  unsigned     WSGIProxyApp(href)
  signed       WSGIProxyApp(href, secret_file=...)
  signed, HMAC free
               the same, with protocol.signature._hmac replaced by a constant: what the
               rest of signing (canonical form, nonce, header) costs
  signed, signing free
               protocol.sign_request replaced by a constant header value: the
               signed request's path without any signing work

The differences give the cost of HMAC-SHA256 (OpenSSL, through hmac) and of
the Python part of signing in the same conditions as the benchmark.

  .venv/bin/python bench/signing_cost.py [--rounds 9] [--n 3000]
"""
import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cpu_worker
import subjects

VARIANTS = ("unsigned", "signed", "signed, HMAC free", "signed, signing free")
FIXED_SIGNATURE = ("v1 kid=0000000000000000, ts=1700000000, nonce=" + "0" * 32
                   + ", body=-, headers=x-forwarded-for;x-forwarded-scheme;x-forwarded-server;"
                   "x-wsgiproxy-version, sig=" + "A" * 43)


def start_backend():
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "backend.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit("the backend did not start: %r" % line)
    os.sched_setaffinity(proc.pid, {0})
    return proc, int(line.split()[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--n", type=int, default=3000, help="timed requests per variant and round")
    args = ap.parse_args()
    from wsgiproxy import protocol
    from wsgiproxy.protocol import signature

    os.sched_setaffinity(0, {0})
    backend, port = start_backend()
    secret_dir = tempfile.mkdtemp(prefix="bench-secret-")
    secret_file = os.path.join(secret_dir, "secret")
    with open(secret_file, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    real_hmac, real_sign = signature._hmac, protocol.sign_request
    try:
        base = subjects.base_environ("127.0.0.1", port)
        loops = {}
        for variant in VARIANTS:
            name = "wsgiproxy-app" if variant == "unsigned" else "wsgiproxy-app-signed"
            app = subjects.make_app(name, "127.0.0.1", port, secret_file=secret_file)
            one, check, _ = cpu_worker.wsgi_request_fn(app, base, "get1k")
            check()
            loops[variant] = one
        cpu = {variant: [] for variant in VARIANTS}
        for _ in range(args.rounds):
            for variant, one in loops.items():
                signature._hmac = (lambda secret, canonical: "A" * 43) \
                    if variant == "signed, HMAC free" else real_hmac
                protocol.sign_request = (lambda *a, **k: FIXED_SIGNATURE) \
                    if variant == "signed, signing free" else real_sign
                for _ in range(300):
                    one()
                start = time.process_time()
                for _ in range(args.n):
                    one()
                cpu[variant].append((time.process_time() - start) / args.n * 1e6)
    finally:
        signature._hmac, protocol.sign_request = real_hmac, real_sign
        backend.kill()
        backend.wait()
        os.unlink(secret_file)
        os.rmdir(secret_dir)

    med = {variant: statistics.median(values) for variant, values in cpu.items()}
    print("CPU us per 1 KB GET, in-process, pinned to CPU 0; median (min-max) of %d rounds "
          "x %d requests" % (args.rounds, args.n))
    for variant in VARIANTS:
        values = cpu[variant]
        print("  %-22s %6.1f  (%.1f-%.1f)" % (variant, med[variant], min(values), max(values)))
    print("signing in all:              %5.1f us" % (med["signed"] - med["signed, signing free"]))
    print("  HMAC-SHA256:               %5.1f us" % (med["signed"] - med["signed, HMAC free"]))
    print("  the rest (canonical form, nonce, header): %.1f us"
          % (med["signed, HMAC free"] - med["signed, signing free"]))


if __name__ == "__main__":
    main()
