#!/usr/bin/env python3
"""Benchmark WSGIProxy against its peers.  One command:

    python3 bench/run.py [--quick] [--only cpu,rps,stream,ttfb]
                         [--subjects NAME,...] [--profile]

It sets up what it needs (Debian wrk and nginx with apt-get if missing; one
virtualenv per peer in bench/.venvs/), starts the loopback backend, measures
the four figures, prints a table, and writes bench/results/latest.json,
latest.txt and benchmarks.png (plus time-stamped copies).  See README.txt.

This script uses only the stdlib; every subject runs in a subprocess from
its own virtualenv (WSGIProxy2 installs the same ``wsgiproxy`` import name as
this project).  Every process it starts is in its own process group and is
stopped on every exit path.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import re
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENVS = os.path.join(HERE, ".venvs")
RESULTS = os.path.join(HERE, "results")
LOGS = os.path.join(RESULTS, "logs")
PROJECT_VENV = os.path.join(ROOT, ".venv")

sys.path.insert(0, HERE)
import subjects as S

LOOPBACK = "127.0.0.1"
GIB = 1 << 30
MIB = 1 << 20

# Peer virtualenvs: what each one installs (gunicorn is added, pinned to the
# project's version, to the ones that serve a subject).
VENV_SPECS = {
    "paste": ["Paste"],
    "wsgiproxy2": ["WSGIProxy2", "urllib3", "WebOb"],
    "werkzeug": ["Werkzeug"],
    "tools": ["httptools", "matplotlib"],
}
SERVING_VENVS = ("paste", "wsgiproxy2", "werkzeug")
VERSION_PACKAGES = ["Paste", "WSGIProxy2", "urllib3", "WebOb", "Werkzeug", "gunicorn",
                    "httptools", "matplotlib", "WSGIProxy"]

TARGETS = {
    "cpu_app_get1k_us": 60.0,
    "cpu_app_signed_get1k_us": 70.0,
    "cpu_exact_get1k_us": 60.0,
    "rps_vs_best_peer": 1.5,
    "rss_growth_mib": 32.0,
    "throughput_vs_nginx": 0.70,
    "ttfb_ms": 100.0,
}

# ---------------------------------------------------------------- utilities


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def free_port():
    s = socket.socket()
    s.bind((LOOPBACK, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=20.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class Processes:
    """Every child in its own process group; stop() kills the whole group."""

    def __init__(self):
        self.procs = []

    def start(self, argv, log_name=None, **kw):
        if log_name:
            os.makedirs(LOGS, exist_ok=True)
            out = open(os.path.join(LOGS, log_name), "wb")
            kw.setdefault("stdout", out)
            kw.setdefault("stderr", subprocess.STDOUT)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        if log_name:
            out.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc, timeout=8.0):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of the group (workers, threads' children)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        for proc in list(reversed(self.procs)):
            self.stop(proc)


PROCS = Processes()


def _on_signal(signum, frame):
    raise SystemExit("interrupted by signal %d" % signum)


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open("/proc/%s/stat" % d) as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                            out.append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
        return out


def proc_status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def set_affinity(pid, cpus):
    """Pin every thread of process *pid* (threads it starts later inherit it)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/%d/task" % pid)]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass


def reset_hwm(pid):
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- setup


def venv_of(name):
    for table in (S.SUBJECTS, S.SERVED_REFS, S.FLOORS):
        if name in table:
            return table[name][0]
    raise KeyError(name)


def venv_python(key):
    if key == "project":
        return os.path.join(PROJECT_VENV, "bin", "python")
    return os.path.join(VENVS, key, "bin", "python")


def project_gunicorn_version():
    try:
        out = subprocess.run([venv_python("project"), "-c",
                              "import importlib.metadata as m; print(m.version('gunicorn'))"],
                             capture_output=True, text=True, timeout=60, cwd=RESULTS)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def ensure_debian(packages):
    """apt-get install the (binary -> package) pairs that are missing."""
    missing = [pkg for binary, pkg in packages if not shutil.which(binary)
               and not os.path.exists(os.path.join("/usr/sbin", binary))]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit("need root to apt-get install %s" % " ".join(missing))
    log("apt-get install %s" % " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    os.makedirs(LOGS, exist_ok=True)
    with open(os.path.join(LOGS, "apt.log"), "ab") as out:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600,
                       stdout=out, stderr=subprocess.STDOUT)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
                       check=True, env=env, timeout=900, stdout=out, stderr=subprocess.STDOUT)
    # Debian starts nginx as a service on install: we only want the binary.
    if "nginx" in missing or "nginx-light" in missing:
        subprocess.run(["sh", "-c", ("service nginx stop >/dev/null 2>&1 || "
                                     "nginx -s quit >/dev/null 2>&1 || true")], timeout=60)


def ensure_venvs(needed):
    gver = project_gunicorn_version()
    os.makedirs(VENVS, exist_ok=True)
    for key in needed:
        if key == "project":
            if not os.path.exists(venv_python("project")):
                raise SystemExit("the project's virtualenv %s is missing; create it with the "
                                 "README's commands first" % PROJECT_VENV)
            continue
        spec = list(VENV_SPECS[key])
        if key in SERVING_VENVS:
            spec.append("gunicorn==%s" % gver if gver else "gunicorn")
        path = os.path.join(VENVS, key)
        stamp = os.path.join(path, ".bench-installed")
        want = "\n".join(spec)
        if os.path.exists(stamp) and open(stamp).read() == want:
            continue
        log("setting up virtualenv %s: %s" % (path, " ".join(spec)))
        if not os.path.exists(venv_python(key)):
            subprocess.run([sys.executable, "-m", "venv", path], check=True, timeout=300)
        subprocess.run([venv_python(key), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check"] + spec,
                       check=True, timeout=1800, cwd=RESULTS)
        with open(stamp, "w") as f:
            f.write(want)


def package_versions(key):
    code = ("import importlib.metadata as m, json\nout={}\n"
            "for p in %r:\n"
            "    try: out[p]=m.version(p)\n"
            "    except Exception: pass\nprint(json.dumps(out))" % VERSION_PACKAGES)
    try:
        out = subprocess.run([venv_python(key), "-c", code], capture_output=True, text=True,
                             timeout=60, cwd=RESULTS, env=clean_env())
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as exc:
        return {"error": str(exc)}


def probe_subjects(names, secret_file):
    """Which subjects can be built?  {name: None or the reason it can't}."""
    by_venv = {}
    for name in names:
        by_venv.setdefault(S.SUBJECTS[name][0], []).append(name)
    result = {}
    for key, group in by_venv.items():
        code = (
            "import sys, json\nsys.path.insert(0, %r)\nimport subjects\nout = {}\n"
            "for n in %r:\n"
            "    try:\n"
            "        subjects.make_app(n, '127.0.0.1', 9, secret_file=%r)\n"
            "        out[n] = None\n"
            "    except Exception as e:\n"
            "        out[n] = '%%s: %%s' %% (type(e).__name__, e)\n"
            "print(json.dumps(out))\n" % (HERE, group, secret_file))
        try:
            out = subprocess.run([venv_python(key), "-c", code], capture_output=True, text=True,
                                 timeout=120, cwd=RESULTS, env=clean_env())
            result.update(json.loads(out.stdout.strip().splitlines()[-1]))
        except Exception as exc:
            for n in group:
                result[n] = "probe failed: %s" % exc
    return result


# ---------------------------------------------------------------- servers


def start_backend():
    proc = PROCS.start([sys.executable, os.path.join(HERE, "backend.py"), "--port", "0"],
                       stdout=subprocess.PIPE, stderr=open(os.path.join(LOGS, "backend.log"), "wb"),
                       cwd=RESULTS, env=clean_env())
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("PORT "):
        raise SystemExit("backend did not start: %r" % line)
    port = int(line.split()[1])
    if not wait_port(port):
        raise SystemExit("backend not listening")
    return proc, port


class Server:
    """A subject served by gunicorn (gthread, one worker, 4 threads), or nginx."""

    def __init__(self, name, backend_port, secret_file=None, threads=4):
        self.name = name
        self.port = free_port()
        self.proc = None
        self.backend_port = backend_port
        self.secret_file = secret_file
        self.threads = threads
        self.tmpdir = None

    def start(self):
        if self.name == "nginx":
            self._start_nginx()
        else:
            self._start_gunicorn()
        if not wait_port(self.port, proc=self.proc):
            raise RuntimeError("%s did not start (see %s)" % (self.name, self.log_path))
        for _ in range(100):  # the worker process
            if self.worker_pid():
                break
            time.sleep(0.05)
        return self

    @property
    def log_path(self):
        return os.path.join(LOGS, "server-%s.log" % self.name)

    def _start_gunicorn(self):
        venv = venv_of(self.name)
        argv = [venv_python(venv), "-m", "gunicorn", "-k", "gthread", "--threads", str(self.threads),
                "-w", "1", "-b", "%s:%d" % (LOOPBACK, self.port), "--timeout", "600",
                "--graceful-timeout", "3", "--keep-alive", "5", "--backlog", "1024",
                "--log-level", "warning", "--chdir", HERE, "wsgi_subject:app"]
        env = clean_env({"BENCH_SUBJECT": self.name,
                         "BENCH_BACKEND": "%s:%d" % (LOOPBACK, self.backend_port),
                         "BENCH_SECRET_FILE": self.secret_file or ""})
        self.proc = PROCS.start(argv, log_name=os.path.basename(self.log_path), cwd=HERE, env=env)

    def _start_nginx(self):
        self.tmpdir = tempfile.mkdtemp(prefix="bench-nginx-")
        conf = NGINX_CONF % {"tmp": self.tmpdir, "port": self.port,
                             "backend": "%s:%d" % (LOOPBACK, self.backend_port)}
        path = os.path.join(self.tmpdir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = PROCS.start([nginx, "-p", self.tmpdir, "-c", path, "-e",
                                 os.path.join(self.tmpdir, "error.log")],
                                log_name=os.path.basename(self.log_path), cwd=self.tmpdir)

    def worker_pid(self):
        kids = children(self.proc.pid) if self.proc else []
        return kids[0] if kids else None

    def check(self):
        """One GET /1k through the server; raises if the answer is wrong."""
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=15)
        try:
            conn.request("GET", "/1k")
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or len(body) != 1024:
                raise RuntimeError("GET /1k through %s: %d, %d bytes: %r"
                                   % (self.name, r.status, len(body), body[:300]))
        finally:
            conn.close()

    def stop(self):
        if self.proc is not None:
            PROCS.stop(self.proc)
            self.proc = None
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def log_tail(self, n=15):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


class Direct(Server):
    """The backend itself, no proxy: the ceiling of the client/backend pair."""

    def __init__(self, backend_port):
        super().__init__("direct", backend_port)
        self.port = backend_port

    def start(self):
        return self

    def worker_pid(self):
        return None

    def stop(self):
        pass


# nginx: one worker (like the one gunicorn worker), keep-alive upstream, no
# request or response buffering to disk (bounded memory, streams at once).
NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid %(tmp)s/nginx.pid;
error_log %(tmp)s/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %(tmp)s/client_body;
    proxy_temp_path %(tmp)s/proxy;
    fastcgi_temp_path %(tmp)s/fastcgi;
    uwsgi_temp_path %(tmp)s/uwsgi;
    scgi_temp_path %(tmp)s/scgi;
    upstream backend {
        server %(backend)s;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:%(port)d;
        client_max_body_size 0;
        client_body_buffer_size 256k;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_buffer_size 256k;
            proxy_buffers 4 256k;
            proxy_busy_buffers_size 512k;
            proxy_read_timeout 120s;
        }
    }
}
"""

# ---------------------------------------------------------------- figure 1: CPU


def figure_cpu(names, backend, backend_port, cfg, secret_file, notes):
    log("figure 1: CPU per request in-process (%d rounds x %d requests, %d warm-up%s)"
        % (cfg["runs"], cfg["cpu_n"], cfg["cpu_warmup"],
           ", proxy and backend pinned to CPU 0" if cfg["cpu_pin"] == "same" else ""))
    if cfg["cpu_pin"] == "same":
        set_affinity(backend.pid, {0})
    try:
        return _figure_cpu(names, backend_port, cfg, secret_file, notes)
    finally:
        set_affinity(backend.pid, set(range(os.cpu_count() or 1)))


def _figure_cpu(names, backend_port, cfg, secret_file, notes):
    raw = {n: {w: [] for w in S.WORKLOADS} for n in names}
    errors = {}
    user_sys = {n: {w: [] for w in S.WORKLOADS} for n in names}
    active = list(names)
    for rnd in range(cfg["runs"]):
        order = active[rnd % len(active):] + active[:rnd % len(active)] if active else []
        for name in order:
            venv = venv_of(name)
            argv = [venv_python(venv), os.path.join(HERE, "cpu_worker.py"), "--subject", name,
                    "--backend", "%s:%d" % (LOOPBACK, backend_port), "--n", str(cfg["cpu_n"]),
                    "--warmup", str(cfg["cpu_warmup"])]
            if secret_file:
                argv += ["--secret-file", secret_file]
            if cfg["cpu_pin"] == "same":
                argv += ["--cpu", "0"]
            proc = PROCS.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=RESULTS, env=clean_env())
            try:
                out, err = proc.communicate(timeout=900)
            except subprocess.TimeoutExpired:
                PROCS.stop(proc)
                errors[name] = "timed out"
                continue
            PROCS.stop(proc)
            try:
                data = json.loads(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError):
                errors[name] = "worker failed: %s" % err.decode(errors="replace")[-500:]
                continue
            if "missing" in data:
                errors[name] = "not available: %s" % data["missing"]
                continue
            parts = []
            for wl, res in data["results"].items():
                if "error" in res:
                    errors.setdefault(name, {})
                    if isinstance(errors[name], dict):
                        errors[name][wl] = res["error"]
                    continue
                raw[name][wl].append(res["cpu_us"])
                user_sys[name][wl].append((res["user_us"], res["sys_us"]))
                parts.append("%s %.0f" % (wl, res["cpu_us"]))
            log("  round %d %-22s %s" % (rnd + 1, name, "  ".join(parts) or errors.get(name)))
        active = [n for n in active if not isinstance(errors.get(n), str)]
    result = {}
    for name in names:
        entry = {}
        for wl in S.WORKLOADS:
            s = summary(raw[name][wl])
            if s:
                us = user_sys[name][wl]
                s["user_us_median"] = statistics.median(u for u, _ in us)
                s["sys_us_median"] = statistics.median(v for _, v in us)
                entry[wl] = s
            else:
                err = errors.get(name)
                entry[wl] = {"error": err if isinstance(err, str) else (err or {}).get(wl, "no data")}
        result[name] = entry
    paste = result.get("paste", {})
    for name, entry in result.items():
        for wl, s in entry.items():
            p = paste.get(wl)
            if "median" in s and p and "median" in p:
                s["ratio_to_paste"] = s["median"] / p["median"]
    for name, err in errors.items():
        notes.append("cpu %s: %s" % (name, err))
    return result


# ---------------------------------------------------------------- figure 2: requests/s

WRK_RE = re.compile(r"Requests/sec:\s+([\d.]+)")


def run_wrk(port, seconds, connections):
    argv = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds, "--timeout", "10s"]
    for k, v in S.BROWSER_HEADERS:
        argv += ["-H", "%s: %s" % (k, v)]
    argv.append("http://%s:%d/1k" % (LOOPBACK, port))
    proc = PROCS.start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=RESULTS)
    try:
        out, _ = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        PROCS.stop(proc)
        return None, "wrk timed out"
    PROCS.stop(proc)
    text = out.decode(errors="replace")
    m = WRK_RE.search(text)
    problems = []
    m2 = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m2:
        problems.append("%s non-2xx responses" % m2.group(1))
    m3 = re.search(r"Socket errors:[^\n]*", text)
    if m3:
        problems.append(m3.group(0).strip())
    return (float(m.group(1)) if m else None), ("; ".join(problems) or (None if m else text[-300:]))


def figure_rps(names, backend_port, cfg, secret_file, notes):
    log("figure 2: requests/s, gunicorn gthread 1 worker x 4 threads, wrk -t1 -c%d, "
        "%d runs x %d s" % (cfg["wrk_connections"], cfg["runs"], cfg["wrk_seconds"]))
    servers = {}
    result = {}
    try:
        for name in names:
            srv = Server(name, backend_port, secret_file)
            try:
                srv.start()
                srv.check()
                servers[name] = srv
            except Exception as exc:
                result[name] = {"error": "%s; log: %s" % (exc, srv.log_tail(5).strip())}
                notes.append("rps %s: %s" % (name, exc))
                srv.stop()
        for name, srv in servers.items():  # warm-up
            run_wrk(srv.port, cfg["wrk_warmup"], cfg["wrk_connections"])
        runs = {n: [] for n in servers}
        problems = {n: [] for n in servers}
        for rnd in range(cfg["runs"]):
            for name, srv in servers.items():
                rps, problem = run_wrk(srv.port, cfg["wrk_seconds"], cfg["wrk_connections"])
                runs[name].append(rps)
                if problem:
                    problems[name].append(problem)
                log("  round %d %-22s %s%s" % (rnd + 1, name, "%.0f req/s" % rps if rps else "-",
                                               " (%s)" % problem if problem else ""))
        for name in servers:
            s = summary(runs[name])
            result[name] = s or {"error": "; ".join(problems[name]) or "no data"}
            if s and problems[name]:
                s["problems"] = sorted(set(problems[name]))
                notes.append("rps %s: %s" % (name, "; ".join(sorted(set(problems[name])))))
    finally:
        for srv in servers.values():
            srv.stop()
    peers = [p for p in S.PEERS if "median" in result.get(p, {})]
    best = max(peers, key=lambda p: result[p]["median"]) if peers else None
    for name, s in result.items():
        if "median" in s:
            s["ratio_to"] = {p: s["median"] / result[p]["median"] for p in peers}
            if best:
                s["ratio_to_best_peer"] = s["median"] / result[best]["median"]
    return result, best


# ---------------------------------------------------------------- figure 3: streaming


class RSSWatch(threading.Thread):
    """Samples the proxy process's VmRSS; kills it past the cap."""

    def __init__(self, pid, cap_kb, interval=0.02):
        super().__init__(daemon=True)
        self.pid = pid
        self.cap_kb = cap_kb
        self.interval = interval
        self.baseline = proc_status_kb(pid, "VmRSS")
        self.peak = self.baseline
        self.killed = False
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            try:
                rss = proc_status_kb(self.pid, "VmRSS")
            except OSError:
                return
            if rss and rss > self.peak:
                self.peak = rss
            if rss and rss - self.baseline > self.cap_kb:
                self.killed = True
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except OSError:
                    pass
                return
            self.stop_event.wait(self.interval)

    def finish(self):
        self.stop_event.set()
        self.join(5)
        try:
            hwm = proc_status_kb(self.pid, "VmHWM")
            if hwm and hwm > self.peak:
                self.peak = hwm
        except OSError:
            pass
        return (self.peak - self.baseline) / 1024.0


def stream_download(port, nbytes, deadline_s):
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    buf = bytearray(1 << 20)
    t0 = time.perf_counter()
    try:
        conn.request("GET", "/stream?bytes=%d" % nbytes)
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError("status %d: %r" % (r.status, r.read(300)))
        got = 0
        limit = t0 + deadline_s
        while True:
            n = r.readinto(buf)
            if not n:
                break
            got += n
            if time.perf_counter() > limit:
                raise RuntimeError("gave up after %.0f s (%d bytes)" % (deadline_s, got))
        elapsed = time.perf_counter() - t0
        if got != nbytes:
            raise RuntimeError("received %d of %d bytes" % (got, nbytes))
        return elapsed
    finally:
        conn.close()


def stream_upload(port, nbytes, deadline_s):
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
    chunk = memoryview(b"u" * (1 << 20))
    t0 = time.perf_counter()
    try:
        conn.putrequest("PUT", "/upload")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(nbytes))
        conn.endheaders()
        left = nbytes
        limit = t0 + deadline_s
        sendall = conn.sock.sendall
        while left:
            k = min(left, len(chunk))
            sendall(chunk[:k])
            left -= k
            if time.perf_counter() > limit:
                raise RuntimeError("gave up after %.0f s" % deadline_s)
        r = conn.getresponse()
        body = r.read()
        elapsed = time.perf_counter() - t0
        if r.status != 200:
            raise RuntimeError("status %d: %r" % (r.status, body[:300]))
        if body.strip() != str(nbytes).encode():
            raise RuntimeError("backend received %r of %d bytes" % (body[:50], nbytes))
        return elapsed
    finally:
        conn.close()


def measure_stream(srv, direction, nbytes, cap_kb, deadline_s):
    pid = srv.worker_pid()
    if srv.name == "direct":
        fn = stream_download if direction == "download" else stream_upload
        try:
            return fn(srv.port, nbytes, deadline_s), None, None
        except Exception as exc:
            return None, None, "%s: %s" % (type(exc).__name__, exc)
    if not pid:
        raise RuntimeError("no worker process")
    reset_hwm(pid)
    watch = RSSWatch(pid, cap_kb)
    watch.start()
    try:
        fn = stream_download if direction == "download" else stream_upload
        try:
            elapsed = fn(srv.port, nbytes, deadline_s)
            error = None
        except Exception as exc:
            elapsed = None
            error = "%s: %s" % (type(exc).__name__, exc)
    finally:
        growth = watch.finish()
    if watch.killed:
        error = "aborted: proxy RSS grew past %d MiB (killed)" % (cap_kb // 1024)
    return elapsed, growth, error


def ttfb_once(port, pieces, delay, timeout=15.0):
    path = "/slow?pieces=%d&delay=%s" % (pieces, delay)
    req = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (LOOPBACK, port)]
    req += ["%s: %s" % kv for kv in S.BROWSER_HEADERS]
    req += ["Connection: close", "", ""]
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        t0 = time.perf_counter()
        sock.sendall("\r\n".join(req).encode("latin-1"))
        buf = b""
        head_t = first_t = None
        head_len = None
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            data = sock.recv(65536)
            now = time.perf_counter()
            if not data:
                break
            buf += data
            if head_len is None:
                i = buf.find(b"\r\n\r\n")
                if i >= 0:
                    head_len = i + 4
                    head_t = now
            if head_len is not None and first_t is None and len(buf) > head_len:
                first_t = now
        total = time.perf_counter() - t0
        status = buf.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            raise RuntimeError("bad response %r" % buf[:200])
        if first_t is None:
            raise RuntimeError("no body received")
        return (first_t - t0) * 1000, (head_t - t0) * 1000, total * 1000
    finally:
        sock.close()


def figure_stream_ttfb(names, backend_port, cfg, secret_file, notes, do_stream, do_ttfb):
    stream = {}
    ttfb = {}
    nbytes = cfg["stream_bytes"]
    cap_kb = cfg["rss_cap_mib"] * 1024
    if do_stream:
        log("figure 3: streaming %d MiB down and up, %d runs, RSS of the proxy process"
            % (nbytes // MIB, cfg["runs"]))
    if do_ttfb:
        log("figure 4: time to first byte of /slow (%d pieces, %.2f s apart), %d runs"
            % (cfg["slow_pieces"], cfg["slow_delay"], cfg["runs"]))
    for name in ["direct"] + list(names):
        srv = Direct(backend_port) if name == "direct" else Server(name, backend_port, secret_file)
        try:
            try:
                srv.start()
                srv.check()
            except Exception as exc:
                err = {"error": "%s; log: %s" % (exc, srv.log_tail(5).strip())}
                if do_stream:
                    stream[name] = {"download": err, "upload": err}
                if do_ttfb and name not in S.SERVED_REFS:
                    ttfb[name] = err
                notes.append("stream/ttfb %s: %s" % (name, exc))
                continue
            if do_stream:
                entry = {}
                for direction in ("download", "upload"):
                    speeds, growths, errors = [], [], []
                    for rnd in range(cfg["runs"]):
                        elapsed, growth, error = measure_stream(srv, direction, nbytes, cap_kb,
                                                                cfg["stream_deadline"])
                        growths.append(growth)
                        if error:
                            errors.append(error)
                            log("  %-22s %-8s run %d: %s (RSS +%s MiB)"
                                % (name, direction, rnd + 1, error,
                                   "-" if growth is None else "%.0f" % growth))
                            # a failure is not going to get better: stop here
                            for _ in range(50 if srv.proc else 0):
                                if srv.worker_pid() and srv.proc.poll() is None:
                                    break
                                time.sleep(0.1)
                            break
                        speeds.append(nbytes / MIB / elapsed)
                        log("  %-22s %-8s run %d: %.0f MiB/s, RSS +%s MiB"
                            % (name, direction, rnd + 1, speeds[-1],
                               "-" if growth is None else "%.1f" % growth))
                    e = {"mib_per_s": summary(speeds), "rss_growth_mib": summary(growths)}
                    if errors:
                        e["error"] = errors[0]
                        notes.append("stream %s %s: %s" % (name, direction, errors[0]))
                    entry[direction] = e
                stream[name] = entry
            if do_ttfb and name not in S.SERVED_REFS:
                firsts, heads, totals, errors = [], [], [], []
                for rnd in range(cfg["runs"]):
                    try:
                        f, h, t = ttfb_once(srv.port, cfg["slow_pieces"], cfg["slow_delay"])
                        firsts.append(f)
                        heads.append(h)
                        totals.append(t)
                    except Exception as exc:
                        errors.append("%s: %s" % (type(exc).__name__, exc))
                e = {"ttfb_ms": summary(firsts), "headers_ms": summary(heads),
                     "total_ms": summary(totals)}
                if errors:
                    e["error"] = errors[0]
                    notes.append("ttfb %s: %s" % (name, errors[0]))
                ttfb[name] = e
                if firsts:
                    log("  %-22s TTFB %.1f ms (whole response %.0f ms)"
                        % (name, e["ttfb_ms"]["median"], e["total_ms"]["median"]))
        finally:
            srv.stop()
    nginx = stream.get("nginx", {})
    for name, entry in stream.items():
        for direction, e in entry.items():
            ref = (nginx.get(direction) or {}).get("mib_per_s")
            if e.get("mib_per_s") and ref:
                e["ratio_to_nginx"] = e["mib_per_s"]["median"] / ref["median"]
    return stream, ttfb


# ---------------------------------------------------------------- report


def fmt(s, spec="%.0f"):
    if not s:
        return "-"
    if "median" not in s:
        return "n/a"
    return (spec + " (" + spec + "–" + spec + ")") % (s["median"], s["min"], s["max"])


def label(name):
    if name == "nginx":
        return "nginx proxy_pass"
    if name == "direct":
        return "direct to backend (no proxy)"
    return (S.SUBJECTS.get(name) or S.SERVED_REFS.get(name) or S.FLOORS.get(name))[1]


def table(headers, rows):
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


def short_error(s, n=45):
    s = s.get("error", "") if isinstance(s, dict) else str(s)
    return "FAILED: " + (s if len(s) <= n else s[:n - 3] + "...")


def report(res):
    out = []
    meta = res["meta"]
    out.append("WSGIProxy benchmarks, %s, %s; %s cores (%s), Python %s%s" % (
        meta["date"], meta["host"], meta["cores"], meta["cpu"], meta["python"],
        ", QUICK MODE (fewer/shorter runs; not for publication)" if meta["quick"] else ""))
    out.append("Each figure: median (min–max) of %d runs. 1-min load average: %s." % (
        meta["params"]["runs"], ", ".join("%s %s" % kv for kv in meta.get("loadavg", {}).items())))
    checks = res["targets"]

    if "cpu" in res:
        out.append("")
        out.append("1. CPU µs per proxied request, in-process (process_time over %d requests "
                   "after %d warm-up%s); ratio = subject / paste.proxy"
                   % (meta["params"]["cpu_n"], meta["params"]["cpu_warmup"],
                      "; proxy and backend pinned to CPU 0"
                      if meta["params"].get("cpu_pin") == "same" else "; not pinned"))
        rows = []
        for name, entry in res["cpu"].items():
            row = [label(name)]
            for wl in S.WORKLOADS:
                s = entry[wl]
                if "median" in s:
                    row.append(fmt(s))
                    row.append("%.2f" % s["ratio_to_paste"] if "ratio_to_paste" in s else "-")
                else:
                    row += [short_error(s), ""]
            rows.append(row)
        out.append(table(["subject", "GET 1 KB", "×paste", "POST 1 KB", "×paste",
                          "GET 64 KB", "×paste"], rows))
        out.append("GET 1 KB split into user / system CPU µs (medians; system time is the "
                   "kernel's loopback TCP work, the same floor for everyone):")
        split = []
        for name, entry in res["cpu"].items():
            s = entry.get("get1k", {})
            if "user_us_median" in s:
                split.append("%s %.0f/%.0f" % (name, s["user_us_median"], s["sys_us_median"]))
        out.append("  " + ", ".join(split))
    if "rps" in res:
        out.append("")
        out.append("2. Requests/s, GET 1 KB, gunicorn gthread (1 worker, 4 threads), "
                   "wrk -t1 -c%d, %d s per run" % (meta["params"]["wrk_connections"],
                                                   meta["params"]["wrk_seconds"]))
        rows = []
        peers = [p for p in S.PEERS if "median" in res["rps"].get(p, {})]
        for name, s in res["rps"].items():
            if "median" in s:
                ratios = " ".join("%.2f" % s["ratio_to"][p] for p in peers)
                rows.append([label(name), fmt(s), ratios])
            else:
                rows.append([label(name), short_error(s), ""])
        out.append(table(["subject", "req/s", "ratio to " + ", ".join(peers)], rows))
        if res.get("rps_best_peer"):
            out.append("best peer: %s" % label(res["rps_best_peer"]))
    if "stream" in res:
        out.append("")
        out.append("3. Streaming %d MiB through gunicorn gthread (nginx: proxy_pass, "
                   "no buffering); MiB/s and the proxy process's peak RSS growth (MiB)"
                   % (meta["params"]["stream_bytes"] // MIB))
        rows = []
        for name, entry in res["stream"].items():
            row = [label(name)]
            for d in ("download", "upload"):
                e = entry.get(d, {})
                if e.get("mib_per_s"):
                    row.append(fmt(e["mib_per_s"]))
                    row.append("%.0f%%" % (100 * e["ratio_to_nginx"]) if "ratio_to_nginx" in e else "-")
                else:
                    row += [short_error(e), ""]
                row.append(fmt(e.get("rss_growth_mib"), "%.1f"))
            rows.append(row)
        out.append(table(["subject", "down MiB/s", "%nginx", "down RSS+", "up MiB/s",
                          "%nginx", "up RSS+"], rows))
    if "ttfb" in res:
        out.append("")
        p = meta["params"]
        out.append("4. Time to first byte, GET /slow: the backend sends its head and first "
                   "byte at once, then %d more bytes %.2f s apart (ms)"
                   % (p["slow_pieces"] - 1, p["slow_delay"]))
        rows = []
        for name, e in res["ttfb"].items():
            if e.get("ttfb_ms"):
                rows.append([label(name), fmt(e["ttfb_ms"], "%.1f"), fmt(e["total_ms"])])
            else:
                rows.append([label(name), short_error(e), ""])
        out.append(table(["subject", "first byte ms", "whole response ms"], rows))
    if checks:
        out.append("")
        out.append("Targets")
        for c in checks:
            out.append("  [%s] %s: %s" % ("ok" if c["ok"] else "MISS" if c["ok"] is False else "?",
                                          c["what"], c["value"]))
    if res["notes"]:
        out.append("")
        out.append("Notes")
        for n in res["notes"]:
            out.append("  - " + n)
    return "\n".join(out)


def evaluate_targets(res):
    checks = []

    def add(what, value, ok):
        checks.append({"what": what, "value": value, "ok": ok})

    cpu = res.get("cpu", {})
    for name, key, what in (
            ("wsgiproxy-app", "cpu_app_get1k_us", "CPU GET 1 KB, WSGIProxyApp (forwarding headers)"),
            ("wsgiproxy-app-signed", "cpu_app_signed_get1k_us", "CPU GET 1 KB, WSGIProxyApp signed"),
            ("wsgiproxy-exact", "cpu_exact_get1k_us", "CPU GET 1 KB, proxy_exact_request")):
        s = cpu.get(name, {}).get("get1k")
        if s is None:
            continue
        t = TARGETS[key]
        if "median" in s:
            add("%s ≤ %.0f µs" % (what, t), "%.0f µs" % s["median"], s["median"] <= t)
        else:
            add("%s ≤ %.0f µs" % (what, t), short_error(s), None)
    rps = res.get("rps", {})
    for name in S.OURS:
        s = rps.get(name)
        if s is None:
            continue
        if "ratio_to_best_peer" in s:
            add("req/s of %s ≥ %.1f× best peer" % (label(name), TARGETS["rps_vs_best_peer"]),
                "%.2f×" % s["ratio_to_best_peer"], s["ratio_to_best_peer"] >= TARGETS["rps_vs_best_peer"])
    stream = res.get("stream", {})
    for name in S.OURS:
        entry = stream.get(name)
        if not entry:
            continue
        for d in ("download", "upload"):
            e = entry.get(d, {})
            g = e.get("rss_growth_mib")
            if g:
                add("%s %s: peak RSS growth ≤ %.0f MiB (worst run)" % (label(name), d, TARGETS["rss_growth_mib"]),
                    "%.1f MiB" % g["max"], g["max"] <= TARGETS["rss_growth_mib"] and not e.get("error"))
            if "ratio_to_nginx" in e:
                add("%s %s: throughput ≥ %.0f%% of nginx" % (label(name), d, 100 * TARGETS["throughput_vs_nginx"]),
                    "%.0f%%" % (100 * e["ratio_to_nginx"]), e["ratio_to_nginx"] >= TARGETS["throughput_vs_nginx"])
            elif e.get("error"):
                add("%s %s streaming" % (label(name), d), short_error(e), False)
    ttfb = res.get("ttfb", {})
    for name in S.OURS:
        e = ttfb.get(name)
        if e and e.get("ttfb_ms"):
            add("%s: first byte ≤ %.0f ms" % (label(name), TARGETS["ttfb_ms"]),
                "%.1f ms" % e["ttfb_ms"]["median"], e["ttfb_ms"]["median"] <= TARGETS["ttfb_ms"])
    return checks


def make_chart(json_path, png_path):
    python = venv_python("tools")
    if not os.path.exists(python):  # --no-setup on a machine that never made it
        return "chart skipped: %s is missing (run once without --no-setup)" % python
    argv = [python, os.path.join(HERE, "chart.py"), json_path, png_path]
    proc = PROCS.start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=RESULTS,
                       env=clean_env({"MPLBACKEND": "Agg"}))
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        PROCS.stop(proc)
        return "chart timed out"
    PROCS.stop(proc)
    if proc.returncode:
        return "chart failed: %s" % out.decode(errors="replace")[-500:]
    return None


# ---------------------------------------------------------------- main


def argument_parser():
    """The command line of this script (docs/benchmarks.rst shows it; tests/test_bench_doc.py checks it)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 short runs of everything, 64 MiB streams (a couple of minutes)")
    ap.add_argument("--only", default="cpu,rps,stream,ttfb",
                    help="comma-separated figures: cpu, rps, stream, ttfb")
    ap.add_argument("--subjects", default="",
                    help="comma-separated subset of subjects (default: all); "
                         "names: %s, nginx, %s" % (", ".join(list(S.SUBJECTS) + list(S.SERVED_REFS)),
                                                   ", ".join(S.FLOORS)))
    ap.add_argument("--runs", type=int, help="override the number of runs")
    ap.add_argument("--profile", action="store_true",
                    help="also write a cProfile summary of our 1 KB GET loop to bench/results/")
    ap.add_argument("--no-setup", action="store_true", help="skip apt-get / pip checks")
    ap.add_argument("--cpu-pin", choices=("same", "none"), default="same",
                    help="CPU figure: pin the proxy process and the backend to CPU 0 (default; "
                         "no cross-CPU wake-ups, far steadier), or leave them to the scheduler")
    ap.add_argument("--results", default=RESULTS,
                    help="directory for the results, logs and chart (default: bench/results)")
    return ap


def main(argv=None):
    global RESULTS, LOGS
    ap = argument_parser()
    args = ap.parse_args(argv)
    RESULTS = os.path.abspath(args.results)
    LOGS = os.path.join(RESULTS, "logs")

    only = {x.strip() for x in args.only.split(",") if x.strip()}
    bad = only - {"cpu", "rps", "stream", "ttfb"}
    if bad:
        ap.error("unknown figure(s): %s" % ", ".join(sorted(bad)))
    cfg = dict(runs=5, cpu_n=5000, cpu_warmup=500, wrk_seconds=10, wrk_warmup=3,
               wrk_connections=8, stream_bytes=GIB, stream_deadline=600, rss_cap_mib=6144,
               slow_pieces=5, slow_delay=0.2)
    if args.quick:
        cfg.update(runs=3, cpu_n=1000, cpu_warmup=200, wrk_seconds=2, wrk_warmup=1,
                   stream_bytes=64 * MIB, stream_deadline=120)
    if args.runs:
        cfg["runs"] = args.runs
    cfg["cpu_pin"] = args.cpu_pin

    all_names = list(S.SUBJECTS) + list(S.SERVED_REFS) + ["nginx"] + list(S.FLOORS)
    chosen = [x.strip() for x in args.subjects.split(",") if x.strip()] or all_names
    unknown = set(chosen) - set(all_names)
    if unknown:
        ap.error("unknown subject(s): %s" % ", ".join(sorted(unknown)))

    os.makedirs(LOGS, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    started = time.monotonic()
    notes = []
    secret_dir = tempfile.mkdtemp(prefix="bench-secret-")
    try:
        if not args.no_setup:
            deb = []
            if "rps" in only:
                deb.append(("wrk", "wrk"))
            if only & {"rps", "stream", "ttfb"} and "nginx" in chosen:
                deb.append(("nginx", "nginx-light"))
            ensure_debian(deb)
            needed = {"tools"} | {venv_of(n) for n in chosen if n != "nginx"}
            ensure_venvs(sorted(needed))
        secret_file = os.path.join(secret_dir, "secret")
        with open(secret_file, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        os.chmod(secret_file, 0o600)

        wsgi_names = [n for n in chosen if n in S.SUBJECTS]
        availability = probe_subjects(wsgi_names, secret_file)
        for name, why in availability.items():
            if why:
                msg = "subject %s skipped: %s" % (name, why)
                log(msg)
                notes.append(msg)
        wsgi_ok = [n for n in wsgi_names if not availability.get(n)]
        floors = [n for n in chosen if n in S.FLOORS]
        refs = [n for n in chosen if n in S.SERVED_REFS]
        served = wsgi_ok + refs + (["nginx"] if "nginx" in chosen else [])

        versions = {key: package_versions(key)
                    for key in sorted({S.SUBJECTS[n][0] for n in wsgi_names} | {"tools"})}
        cpu_model = "?"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu_model = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        nginx_version = None
        if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"):
            try:
                nginx_version = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-v"],
                                               capture_output=True, text=True, timeout=10).stderr.strip()
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:
            commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                    capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            commit = None
        res = {"meta": {
            "wsgiproxy_commit": commit,
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "host": platform.node(), "cores": os.cpu_count(), "cpu": cpu_model,
            "kernel": platform.release(), "python": platform.python_version(),
            "quick": args.quick, "params": cfg, "figures": sorted(only),
            "versions": versions, "nginx": nginx_version,
            "wrk": "wrk -t1 -c%d" % cfg["wrk_connections"],
        }, "subjects": {n: label(n) for n in chosen + ["direct"]}, "notes": notes}

        backend, backend_port = start_backend()
        log("backend on %s:%d" % (LOOPBACK, backend_port))
        load = res["meta"]["loadavg"] = {"start": loadavg()}
        if "cpu" in only and (wsgi_ok or floors):
            res["cpu"] = figure_cpu(wsgi_ok + floors, backend, backend_port, cfg, secret_file, notes)
            load["after_cpu"] = loadavg()
        if "rps" in only and served:
            res["rps"], res["rps_best_peer"] = figure_rps(served, backend_port, cfg, secret_file, notes)
            load["after_rps"] = loadavg()
        if only & {"stream", "ttfb"} and served:
            stream, ttfb = figure_stream_ttfb(served, backend_port, cfg, secret_file, notes,
                                              "stream" in only, "ttfb" in only)
            if "stream" in only:
                res["stream"] = stream
            if "ttfb" in only:
                res["ttfb"] = ttfb
            load["after_stream_ttfb"] = loadavg()
        if args.profile:
            for name in [n for n in S.OURS if n in wsgi_ok]:
                path = os.path.join(RESULTS, "profile-%s.txt" % name)
                argv = [venv_python("project"), os.path.join(HERE, "cpu_worker.py"),
                        "--subject", name, "--backend", "%s:%d" % (LOOPBACK, backend_port),
                        "--n", str(cfg["cpu_n"]), "--warmup", str(cfg["cpu_warmup"]),
                        "--workloads", "get1k", "--secret-file", secret_file, "--profile", path]
                if cfg["cpu_pin"] == "same":
                    argv += ["--cpu", "0"]
                    set_affinity(backend.pid, {0})
                proc = PROCS.start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   cwd=RESULTS, env=clean_env())
                try:
                    proc.communicate(timeout=600)
                finally:
                    PROCS.stop(proc)
                    set_affinity(backend.pid, set(range(os.cpu_count() or 1)))
                log("profile of %s GET 1 KB: %s" % (name, path))
        PROCS.stop(backend)

        res["targets"] = evaluate_targets(res)
        res["meta"]["duration_s"] = round(time.monotonic() - started, 1)
        text = report(res)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        os.makedirs(RESULTS, exist_ok=True)
        json_path = os.path.join(RESULTS, "results-%s.json" % stamp)
        with open(json_path, "w") as f:
            json.dump(res, f, indent=1, ensure_ascii=False)
        shutil.copyfile(json_path, os.path.join(RESULTS, "latest.json"))
        with open(os.path.join(RESULTS, "latest.txt"), "w") as f:
            f.write(text + "\n")
        png = os.path.join(RESULTS, "benchmarks.png")
        problem = make_chart(json_path, png)
        if problem:
            log(problem)
        else:
            shutil.copyfile(png, os.path.join(RESULTS, "benchmarks-%s.png" % stamp))
        print(text)
        print("\nwritten: %s, %s, %s (%.0f s)" % (json_path, os.path.join(RESULTS, "latest.txt"),
                                                png, res["meta"]["duration_s"]))
    finally:
        PROCS.stop_all()
        shutil.rmtree(secret_dir, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        PROCS.stop_all()
        sys.exit(130)
