"""Soak test: the signed path under sustained keep-alive load (not part of the test suite).

    .venv/bin/python bench/soak.py [--seconds 300] [--clients 64]

Starts, on loopback:
  backend  gunicorn (2 gthread workers): WSGIProxyMiddleware(secret) -> sample app
  proxy    gunicorn (1 gthread worker):  WSGIProxyApp(secret, string_keys=REMOTE_USER)
and drives the proxy with N keep-alive client threads for the given time.
Every request carries a unique path that the backend must echo back, so a
response delivered to the wrong client counts as an error.  Samples the
proxy worker's RSS and open fds every few seconds; prints a summary and
writes it to bench/results/soak.json.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("soak: nothing listening on %d" % port)


def worker_pids(master):
    """The pids of a gunicorn master's workers."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def start(args, log):
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--proxy-threads", type=int, default=32)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="wsgiproxy-soak-")
    secret = os.path.join(tmp, "secret.txt")
    with open(secret, "w") as f:
        f.write("soak-secret-%s\n" % os.urandom(8).hex())
    back_port, proxy_port = free_port(), free_port()
    with open(os.path.join(tmp, "backend.ini"), "w") as f:
        f.write("[DEFAULT]\nsecret_file = %s\n\n[pipeline:main]\npipeline = verify sample\n\n"
                "[filter:verify]\nuse = egg:WSGIProxy#main\n\n[app:sample]\n"
                "use = egg:WSGIProxy#sample\n" % secret)
    with open(os.path.join(tmp, "proxy.ini"), "w") as f:
        f.write("[DEFAULT]\nsecret_file = %s\n\n[pipeline:main]\npipeline = user proxy\n\n"
                "[filter:user]\nuse = egg:WSGIProxy#demo_user\nuser = soak\n\n[app:proxy]\n"
                "use = egg:WSGIProxy#main\nhref = http://127.0.0.1:%d\n"
                "string_keys = REMOTE_USER\npool_size = %d\nread_timeout = 30\n"
                % (secret, back_port, args.proxy_threads))
    log = open(os.path.join(tmp, "servers.log"), "w")
    gunicorn = os.path.join(BIN, "gunicorn")
    backend = start([gunicorn, "--paste", os.path.join(tmp, "backend.ini"), "-b",
                     "127.0.0.1:%d" % back_port, "-w", "2", "-k", "gthread", "--threads", "16",
                     "--keep-alive", "30"], log)
    proxy = start([gunicorn, "--paste", os.path.join(tmp, "proxy.ini"), "-b",
                   "127.0.0.1:%d" % proxy_port, "-w", "1", "-k", "gthread", "--threads",
                   str(args.proxy_threads), "--keep-alive", "30"], log)
    try:
        wait_for_port(back_port)
        wait_for_port(proxy_port)
        pid = worker_pids(proxy.pid)[0]
        counts = {"ok": 0, "errors": 0, "wrong": 0}
        errors = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds

        def client(n):
            conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=30)
            i = 0
            while time.monotonic() < stop_at:
                path = "/soak/%d/%d" % (n, i)
                i += 1
                try:
                    conn.request("GET", path, headers={"Accept": "application/json"})
                    res = conn.getresponse()
                    body = json.loads(res.read())
                    good = (res.status == 200 and body.get("PATH_INFO") == path
                            and body.get("REMOTE_USER") == "soak")
                    with lock:
                        counts["ok" if good else "wrong"] += 1
                        if not good and len(errors) < 10:
                            errors.append((path, res.status, str(body)[:200]))
                except Exception as exc:
                    with lock:
                        counts["errors"] += 1
                        if len(errors) < 10:
                            errors.append((path, repr(exc)))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=30)
            conn.close()

        # Warm up, then take the starting point.
        warm = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=30)
        for _ in range(200):
            warm.request("GET", "/warm")
            warm.getresponse().read()
        warm.close()
        samples = [(0.0, rss_kb(pid), fd_count(pid))]
        began = time.monotonic()
        threads = [threading.Thread(target=client, args=(n,), daemon=True)
                   for n in range(args.clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(5)
            samples.append((time.monotonic() - began, rss_kb(pid), fd_count(pid)))
        elapsed = time.monotonic() - began
        # Idle connections settle once the clients are gone.
        time.sleep(2)
        samples.append((time.monotonic() - began, rss_kb(pid), fd_count(pid)))
    finally:
        stop(proxy)
        stop(backend)
        log.close()

    total = counts["ok"] + counts["wrong"] + counts["errors"]
    rss = [s[1] for s in samples]
    mid = samples[len(samples) // 4]  # after the first quarter: the pools are full
    result = {
        "date": time.strftime("%Y-%m-%d"), "seconds": round(elapsed, 1),
        "clients": args.clients, "requests": total, "requests_per_second": round(total / elapsed),
        "errors": counts["errors"], "wrong_responses": counts["wrong"],
        "rss_kb_start": rss[0], "rss_kb_after_first_quarter": mid[1], "rss_kb_end": rss[-1],
        "rss_kb_max": max(rss), "fds_start": samples[0][2], "fds_end": samples[-1][2],
        "fds_after_first_quarter": mid[2], "fds_max": max(s[2] for s in samples),
        "error_examples": errors,
        "machine": "%d cores" % os.cpu_count(),
    }
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "soak.json"), "w") as f:
        json.dump(dict(result, samples=samples), f, indent=1)
    for key, value in result.items():
        print("%-28s %s" % (key, value))
    return 0 if not (counts["errors"] or counts["wrong"]) else 1


if __name__ == "__main__":
    sys.exit(main())
