#!/usr/bin/env python3
"""Long-lived connections through one gevent worker (issue 18).

    .venv/bin/python bench/longlived.py [--n 1000] [--n 10000]
        [--scenario streams|websocket|both] [--subjects NAME,...] [--runs 3]

What it measures, for each N, scenario and subject (a fresh server per run):

* streams: N slow streams (SSE-like: 10 chunked pieces of 256 bytes, 0.5 s
  apart, from the backend) arriving evenly over 2 s, so that all N are open
  at once, through ONE worker: ``gunicorn -k gevent -w 1 --worker-connections
  2N+200`` serving the subject (nginx: one worker process).  A stream counts
  as "ok" when every byte arrived intact (each piece names its stream) and
  streamed: its first and last pieces arrived at least half the backend's
  4.5 s apart; "buffered" when intact but all within 0.45 s (the proxy waited
  for the whole answer, or for a big read), "bunched" in between (late
  pieces caught up: an overloaded worker).
* websocket: N WebSocket echo sessions, arriving the same way, each sending
  10 masked text messages 0.5 s apart through the proxy, checking every
  echo, then closing (close frame both ways, then the proxy must close the
  connection).  "ok" = 101 with the right Sec-WebSocket-Accept and
  subprotocol, every echo intact, the close completed.
* meanwhile, from a separate process, a plain GET /1k on a new connection
  through the same worker every 100 ms: its p50/p99/max latency.
* the worker process: RSS before the run, peak (VmRSS sampled every 50 ms
  and VmHWM after clear_refs), growth = peak - before, growth per session,
  RSS left at the end, CPU seconds (utime+stime), the busiest 1-s CPU share,
  open fds (peak), and the worker's log (Too many open files, tracebacks).

The backend, the load client (one asyncio loop holding all N sessions) and
the prober are longlived_io.py (stdlib only, not WSGIProxy code); "direct"
runs the client against the backend itself, the ceiling of that pair.  The
script raises RLIMIT_NOFILE to the hard limit for itself and every child
(nginx gets worker_rlimit_nofile); a proxied session needs two fds in the
worker, so the hard limit bounds what one worker can hold.

WSGIProxyApp runs with its defaults, except max_tunnels (default 1,000),
raised to N for N > 1,000 WebSocket sessions: the worker is measured, not
the cap.  The peers run from run.py's virtualenvs (bench/.venvs/), to which
this script adds gevent (the project's version) and packaging.

Prints tables (median (min-max) of --runs runs; a subject none of whose
sessions completed gets no further runs) and writes
bench/results/longlived-STAMP.json, longlived-latest.json and .txt.
--py-spy PATH also samples each worker with py-spy and writes a self/total
table per run (results/longlived-profile-*.txt); --gunicorn-arg passes an
argument to every gunicorn (e.g. --gunicorn-arg=--config=hooks.py for an
experiment).
"""
import argparse
import datetime
import json
import os
import platform
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import longlived_io as lio
import run as R  # the shared harness: processes, virtualenvs, /proc readers, tables
import subjects as S

IO = os.path.join(HERE, "longlived_io.py")
ROOT = R.ROOT
SCENARIOS = ("streams", "websocket")
PEERS = ("paste", "wsgiproxy2-httplib", "wsgiproxy2-urllib3", "werkzeug")
DEFAULT_SUBJECTS = ("direct", "wsgiproxy-app") + PEERS + ("nginx",)
KNOWN = ("direct", "nginx") + tuple(S.SUBJECTS)
TARGETS = {"total_s": 30.0, "rss_growth_mib": 250.0, "get_p50_ms": 100.0, "get_max_ms": 1000.0}
TARGET_N = 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOG_SIGNS = ("Too many open files", "Traceback", "WORKER TIMEOUT", "Error handling request",
             "worker_connections are not enough", "MemoryError")


def log(msg):
    R.log(msg)


# ---------------------------------------------------------------- fronts (the subjects)


class Front:
    """One subject listening on loopback: a gevent gunicorn worker, nginx, or nothing."""

    def __init__(self, name, backend_port, n, options):
        self.name = name
        self.backend_port = backend_port
        self.n = n
        self.options = options
        self.port = backend_port if name == "direct" else R.free_port()
        self.proc = None
        self.tmpdir = None
        self.log_path = os.path.join(R.LOGS, "longlived-%s.log" % name)

    def start(self):
        if self.name == "direct":
            return self
        if self.name == "nginx":
            self._start_nginx()
        else:
            self._start_gunicorn()
        if not R.wait_port(self.port, proc=self.proc):
            raise RuntimeError("%s did not start: %s" % (self.name, self.log_tail(8)))
        for _ in range(100):
            if self.worker_pid():
                break
            time.sleep(0.05)
        return self

    def _start_gunicorn(self):
        venv = R.venv_of(self.name)
        argv = [R.venv_python(venv), "-m", "gunicorn", "-k", "gevent", "-w", "1",
                "--worker-connections", str(2 * self.n + 200),
                "-b", "%s:%d" % (R.LOOPBACK, self.port), "--backlog", "4096",
                "--timeout", "120", "--graceful-timeout", "3", "--keep-alive", "5",
                "--log-level", "warning", "--chdir", HERE] + self.options.pop("gunicorn", [])
        argv.append("wsgi_subject:app")
        extra = {"BENCH_SUBJECT": self.name,
                 "BENCH_BACKEND": "%s:%d" % (R.LOOPBACK, self.backend_port),
                 "BENCH_OPTIONS": json.dumps(self.options)}
        if venv == "project":  # measure this checkout, not whatever the venv installed
            extra["PYTHONPATH"] = ROOT
        self.proc = R.PROCS.start(argv, log_name=os.path.basename(self.log_path), cwd=HERE,
                                  env=R.clean_env(extra))

    def _start_nginx(self):
        self.tmpdir = tempfile.mkdtemp(prefix="bench-nginx-")
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        conf = NGINX_CONF % {"tmp": self.tmpdir, "port": self.port, "nofile": nofile,
                             "connections": max(1024, nofile - 64),
                             "backend": "%s:%d" % (R.LOOPBACK, self.backend_port)}
        path = os.path.join(self.tmpdir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = R.PROCS.start([nginx, "-p", self.tmpdir, "-c", path, "-e",
                                   os.path.join(self.tmpdir, "error.log")],
                                  log_name=os.path.basename(self.log_path), cwd=self.tmpdir)

    def worker_pid(self):
        kids = R.children(self.proc.pid) if self.proc else []
        return kids[0] if kids else None

    def log_text(self):
        paths = [self.log_path]
        if self.tmpdir:
            paths.append(os.path.join(self.tmpdir, "error.log"))
        text = ""
        for p in paths:
            try:
                with open(p, errors="replace") as f:
                    text += f.read()
            except OSError:
                pass
        return text

    def log_tail(self, n=15):
        return "".join(self.log_text().splitlines(True)[-n:])

    def stop(self):
        if self.proc is not None:
            R.PROCS.stop(self.proc)
            self.proc = None
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


# nginx: one worker process, no response buffering, WebSocket upgrade as the
# nginx documentation shows it, keep-alive upstream for plain requests.
NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile %(nofile)d;
daemon off;
master_process on;
pid %(tmp)s/nginx.pid;
error_log %(tmp)s/error.log warn;
events { worker_connections %(connections)d; }
http {
    access_log off;
    client_body_temp_path %(tmp)s/client_body;
    proxy_temp_path %(tmp)s/proxy;
    fastcgi_temp_path %(tmp)s/fastcgi;
    uwsgi_temp_path %(tmp)s/uwsgi;
    scgi_temp_path %(tmp)s/scgi;
    map $http_upgrade $connection_upgrade { default upgrade; '' ''; }
    upstream backend {
        server %(backend)s;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:%(port)d backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 120s;
        }
    }
}
"""

# ---------------------------------------------------------------- the worker's resources


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class WorkerWatch(threading.Thread):
    """Samples a worker process: VmRSS every 50 ms, CPU and open fds every 0.5 s."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        R.reset_hwm(pid)
        self.rss_before = R.proc_status_kb(pid, "VmRSS")
        self.cpu_before = cpu_seconds(pid)
        self.peak = self.rss_before
        self.fds_peak = fd_count(pid)
        self.busiest = 0.0
        self.gone = False
        self.stop_event = threading.Event()

    def run(self):
        last_t, last_cpu, tick = time.monotonic(), self.cpu_before, 0
        while not self.stop_event.wait(0.05):
            try:
                self.peak = max(self.peak, R.proc_status_kb(self.pid, "VmRSS") or 0)
                tick += 1
                if tick % 10 == 0:
                    self.fds_peak = max(self.fds_peak, fd_count(self.pid))
                    now, cpu = time.monotonic(), cpu_seconds(self.pid)
                    if now - last_t >= 1.0:
                        self.busiest = max(self.busiest, (cpu - last_cpu) / (now - last_t))
                        last_t, last_cpu = now, cpu
            except (OSError, TypeError):
                self.gone = True
                return

    def finish(self):
        self.stop_event.set()
        self.join(5)
        out = {"rss_before_mib": self.rss_before / 1024.0, "fds_peak": self.fds_peak,
               "cpu_busiest_pct": 100.0 * self.busiest, "worker_died": self.gone}
        try:
            self.peak = max(self.peak, R.proc_status_kb(self.pid, "VmHWM") or 0)
            out["rss_after_mib"] = R.proc_status_kb(self.pid, "VmRSS") / 1024.0
            out["cpu_s"] = cpu_seconds(self.pid) - self.cpu_before
        except (OSError, TypeError):
            out["worker_died"] = True
        out["rss_peak_mib"] = self.peak / 1024.0
        out["rss_growth_mib"] = (self.peak - self.rss_before) / 1024.0
        return out


# ---------------------------------------------------------------- load processes


def start_backend():
    proc = R.PROCS.start([sys.executable, IO, "backend"], stdout=subprocess.PIPE,
                         stderr=open(os.path.join(R.LOGS, "longlived-backend.log"), "wb"),
                         cwd=HERE)
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("PORT "):
        raise SystemExit("backend did not start: %r" % line)
    return proc, int(line.split()[1])


def start_prober(port):
    proc = R.PROCS.start([sys.executable, IO, "probe", "--port", str(port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=HERE)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready or proc.stdout.readline().strip() != b"READY":
        R.PROCS.stop(proc)
        raise RuntimeError("the GET prober did not start")
    return proc


def stop_prober(proc):
    proc.stdin.close()  # the prober's signal to finish and report
    try:
        proc.wait(30)
        return json.loads(proc.stdout.read().decode().strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return {"error": "the prober did not report"}
    finally:
        R.PROCS.stop(proc)


def run_client(scenario, port, n, cfg):
    argv = [sys.executable, IO, scenario, "--port", str(port), "--n", str(n),
            "--ramp", str(cfg.ramp), "--pieces", str(cfg.pieces), "--delay", str(cfg.delay),
            "--size", str(cfg.size), "--deadline", str(cfg.deadline)]
    proc = R.PROCS.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE)
    try:
        out, err = proc.communicate(timeout=cfg.deadline + 60)
    except subprocess.TimeoutExpired:
        return {"error": "the client did not finish"}
    finally:
        R.PROCS.stop(proc)
    try:
        return json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "client failed: %s" % err.decode(errors="replace")[-400:]}


def start_py_spy(py_spy, pid):
    """py-spy sampling the worker (100 Hz, without pausing it) until stop_py_spy."""
    out = tempfile.mktemp(prefix="longlived-spy-", suffix=".txt")
    proc = R.PROCS.start([py_spy, "record", "--nonblocking", "-r", "100", "-f", "raw",
                          "-p", str(pid), "-o", out], log_name="longlived-py-spy.log")
    proc.output = out
    return proc


def stop_py_spy(proc, tag, top=25):
    """Stop py-spy; write its collapsed stacks and a self/total table to results/;
    returns the table's path."""
    try:
        os.kill(proc.pid, signal.SIGINT)  # py-spy writes its file on SIGINT
        proc.wait(60)
    except (OSError, subprocess.TimeoutExpired):
        pass
    R.PROCS.stop(proc)
    self_n, total_n, samples = {}, {}, 0
    try:
        with open(proc.output) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack:
                    continue
                frames, n = stack.split(";"), int(count)
                samples += n
                self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
                for frame in set(frames):
                    total_n[frame] = total_n.get(frame, 0) + n
        raw = os.path.join(R.RESULTS, "longlived-profile-%s.stacks" % tag)
        shutil.move(proc.output, raw)
    except (OSError, ValueError) as exc:
        return "py-spy gave nothing: %s" % exc
    path = os.path.join(R.RESULTS, "longlived-profile-%s.txt" % tag)
    with open(path, "w") as f:
        f.write("py-spy, %d samples at 100 Hz of the worker (%s); collapsed stacks: %s\n"
                % (samples, tag, raw))
        for title, table in (("self", self_n), ("total (self + callees)", total_n)):
            f.write("\n%% of samples, %s:\n" % title)
            for frame, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
                f.write("%6.1f%%  %s\n" % (100.0 * n / max(samples, 1), frame))
    return path


# ---------------------------------------------------------------- one measurement


def measure(name, scenario, n, backend_port, cfg):
    """One run: a fresh front, the prober, the N sessions; returns the record."""
    options = subject_options(name, scenario, n)
    if cfg.gunicorn_arg:
        options["gunicorn"] = list(cfg.gunicorn_arg)
    front = Front(name, backend_port, n, options)
    try:
        front.start()
        check = run_check(front.port)
        if check:
            return {"error": "GET /1k before the run: %s; log: %s" % (check, front.log_tail(5))}
        pid = front.worker_pid()
        watch = WorkerWatch(pid) if pid else None
        if watch:
            watch.start()
        spy = start_py_spy(cfg.py_spy, pid) if cfg.py_spy and pid else None
        prober = start_prober(front.port)
        t0 = time.monotonic()
        client = run_client(scenario, front.port, n, cfg)
        wall = time.monotonic() - t0
        probe = stop_prober(prober)
        rec = {"client": client, "get": probe, "wall_s": wall}
        if spy:
            rec["profile"] = stop_py_spy(spy, "%s-%s-%d" % (name, scenario, n))
        if watch:
            rec["worker"] = watch.finish()
            rec["worker"]["replaced"] = front.worker_pid() not in (pid, None)
            if n:
                rec["worker"]["kib_per_session"] = rec["worker"]["rss_growth_mib"] * 1024 / n
        text = front.log_text()
        rec["log_signs"] = {s: text.count(s) for s in LOG_SIGNS if s in text}
        if rec["log_signs"]:
            rec["log_tail"] = front.log_tail(6)
        return rec
    except Exception as exc:
        return {"error": "%s: %s; log: %s" % (type(exc).__name__, exc, front.log_tail(5))}
    finally:
        front.stop()


def run_check(port):
    try:
        lio.get_1k(port, 15)
        return None
    except Exception as exc:
        return "%s: %s" % (type(exc).__name__, exc)


def subject_options(name, scenario, n):
    """Extra WSGIProxyApp arguments: its defaults, but max_tunnels (default 1,000) raised
    to N for N WebSocket sessions, so that the worker, not the cap, is what is measured."""
    if scenario == "websocket" and name.startswith("wsgiproxy-app") and n > 1000:
        return {"max_tunnels": n}
    return {}


# ---------------------------------------------------------------- summary and report


def med(records, *path):
    values = []
    for rec in records:
        v = rec
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values.append(v)
    return R.summary(values)


def summarize(records):
    good = [r for r in records if "error" not in r and "error" not in r.get("client", {})]
    out = {"runs": len(records), "errors": [r.get("error") or r["client"].get("error")
                                            for r in records if r not in good]}
    if not good:
        return out
    for key, path in (("ok", ("client", "ok")), ("held", ("client", "held_max")),
                      ("total_s", ("client", "total_s")),
                      ("first_p50_ms", ("client", "first_ms", "p50")),
                      ("rtt_p99_ms", ("client", "rtt_ms", "p99")),
                      ("close_p99_ms", ("client", "close_ms", "p99")),
                      ("get_p50_ms", ("get", "latency_ms", "p50")),
                      ("get_p99_ms", ("get", "latency_ms", "p99")),
                      ("get_max_ms", ("get", "latency_ms", "max")),
                      ("rss_before_mib", ("worker", "rss_before_mib")),
                      ("rss_peak_mib", ("worker", "rss_peak_mib")),
                      ("rss_growth_mib", ("worker", "rss_growth_mib")),
                      ("rss_after_mib", ("worker", "rss_after_mib")),
                      ("kib_per_session", ("worker", "kib_per_session")),
                      ("cpu_s", ("worker", "cpu_s")),
                      ("cpu_busiest_pct", ("worker", "cpu_busiest_pct")),
                      ("fds_peak", ("worker", "fds_peak"))):
        s = med(good, *path)
        if s:
            out[key] = s
    outcomes = {}
    for r in good:
        for k, v in r["client"]["outcomes"].items():
            outcomes.setdefault(k, []).append(v)
    out["outcomes"] = {k: R.statistics.median(v + [0] * (len(good) - len(v)))
                       for k, v in sorted(outcomes.items(), key=lambda kv: -sum(kv[1]))}
    out["examples"] = {}
    for r in good:
        for k, v in r["client"].get("examples", {}).items():
            out["examples"].setdefault(k, v)
    out["get_errors"] = sum(sum(r["get"].get("errors", {}).values()) + ("error" in r["get"])
                            for r in good)
    signs = {}
    for r in good:
        for k, v in r.get("log_signs", {}).items():
            signs[k] = signs.get(k, 0) + v
    out["log_signs"] = signs
    out["worker_died"] = any(r.get("worker", {}).get("worker_died") or
                             r.get("worker", {}).get("replaced") for r in good)
    return out


def fmt(s, spec="%.0f"):
    if not s:
        return "-"
    if s["min"] == s["max"]:
        return spec % s["median"]
    return (spec + " (" + spec + "–" + spec + ")") % (s["median"], s["min"], s["max"])


def what_happened(summary, n):
    """The outcomes in a few words: '1000 ok', '1000 buffered', '12 ok, 988 status 502'..."""
    if "outcomes" not in summary:
        return R.short_error({"error": "; ".join(str(e) for e in summary["errors"])}, 70)
    parts = ["%g %s" % (v, k) for k, v in summary["outcomes"].items() if v]
    if summary.get("worker_died"):
        parts.append("WORKER DIED/REPLACED")
    if summary.get("log_signs"):
        parts.append("log: " + ", ".join("%s x%d" % kv for kv in summary["log_signs"].items()))
    return "; ".join(parts)


def label(name):
    if name == "direct":
        return "direct to backend (no proxy)"
    if name == "nginx":
        return "nginx proxy_pass"
    return S.SUBJECTS[name][1]


def report(res):
    meta = res["meta"]
    p = meta["params"]
    out = ["Long-lived connections through one worker, %s, %s, %s cores, Python %s; "
           "RLIMIT_NOFILE %s" % (meta["date"], meta["host"], meta["cores"], meta["python"],
                                 meta["nofile"]),
           "median (min–max) of %d runs; sessions arrive over %.1f s, %d pieces of %d bytes "
           "%.1f s apart; plain GET /1k every 100 ms meanwhile" % (
               p["runs"], p["ramp"], p["pieces"], p["size"], p["delay"]),
           ("open at once: sessions whose answer (stream head / 101) the client had and that "
            "had not ended yet, at the busiest moment; RSS+: worker's peak RSS - RSS before; "
            "CPU% 1s: the worker's busiest second")]
    for entry in res["results"].values():
        scenario, n = entry["scenario"], entry["n"]
        unit = "streams" if scenario == "streams" else "sessions"
        out.append("")
        out.append("%s, N = %d (gunicorn -k gevent -w 1; nginx: 1 worker process)"
                   % ("Slow streams (SSE-like)" if scenario == "streams"
                      else "WebSocket echo sessions", n))
        rows1, rows2 = [], []
        for name, s in entry["subjects"].items():
            if "ok" not in s:
                rows1.append([label(name), what_happened(s, n), "", "", "", ""])
                continue
            lat = "first_p50_ms" if scenario == "streams" else "rtt_p99_ms"
            rows1.append([label(name), fmt(s["ok"]), fmt(s.get("held")), fmt(s.get("total_s"), "%.1f"),
                          fmt(s.get(lat), "%.1f"), what_happened(s, n)])
            rows2.append([label(name), fmt(s.get("rss_before_mib"), "%.0f"),
                          fmt(s.get("rss_growth_mib"), "%.1f"), fmt(s.get("kib_per_session"), "%.1f"),
                          fmt(s.get("rss_after_mib"), "%.0f"), fmt(s.get("cpu_s"), "%.1f"),
                          fmt(s.get("cpu_busiest_pct")),
                          fmt(s.get("fds_peak")), fmt(s.get("get_p50_ms"), "%.1f"),
                          fmt(s.get("get_p99_ms"), "%.0f"), fmt(s.get("get_max_ms"), "%.0f"),
                          str(s.get("get_errors", 0))])
        out.append(R.table(["subject", "ok of %d" % n, "open at once", "total s",
                            "1st piece p50 ms" if scenario == "streams" else "echo p99 ms",
                            "what happened (sessions per outcome, median run)"], rows1))
        out.append("")
        out.append(R.table(["subject", "RSS MiB", "RSS+ MiB", "KiB/" + unit[:-1],
                            "RSS end", "CPU s", "CPU% 1s", "fds", "GET p50 ms", "p99", "max",
                            "GET errors"], rows2))
    if res["targets"]:
        out.append("")
        out.append("Targets (issue 18, N = %d streams through WSGIProxyApp)" % TARGET_N)
        for c in res["targets"]:
            out.append("  [%s] %s: %s" % ("ok" if c["ok"] else "MISS", c["what"], c["value"]))
    if res["notes"]:
        out.append("")
        out.append("Notes")
        out.extend("  - " + n for n in res["notes"])
    return "\n".join(out)


def evaluate_targets(res):
    entry = res["results"].get("streams-%d" % TARGET_N, {}).get("subjects", {})
    s = entry.get("wsgiproxy-app")
    if not s or "ok" not in s:
        return []
    checks = []

    def add(what, value, ok):
        checks.append({"what": what, "value": value, "ok": ok})

    add("all %d streams intact and streamed (worst run)" % TARGET_N,
        "%d" % s["ok"]["min"], s["ok"]["min"] == TARGET_N)
    add("within %.0f s (worst run)" % TARGETS["total_s"], "%.1f s" % s["total_s"]["max"],
        s["total_s"]["max"] <= TARGETS["total_s"])
    g = s.get("rss_growth_mib")
    if g:
        add("worker RSS growth <= %.0f MB (worst run)" % TARGETS["rss_growth_mib"],
            "%.1f MiB" % g["max"], g["max"] * 1.048576 <= TARGETS["rss_growth_mib"])
    if s.get("get_p50_ms"):
        add("plain GET median < %.0f ms (worst run)" % TARGETS["get_p50_ms"],
            "%.1f ms" % s["get_p50_ms"]["max"], s["get_p50_ms"]["max"] < TARGETS["get_p50_ms"])
        add("plain GET never > %.0f ms" % TARGETS["get_max_ms"],
            "%.0f ms, %d errors" % (s["get_max_ms"]["max"], s["get_errors"]),
            s["get_max_ms"]["max"] <= TARGETS["get_max_ms"] and not s["get_errors"])
    return checks


# ---------------------------------------------------------------- setup and main


def ensure_peer_venvs(names):
    """run.py's peer virtualenvs, plus what gunicorn's gevent worker needs (gevent at the
    project's version, packaging) where a peer serves."""
    keys = sorted({R.venv_of(n) for n in names if n in S.SUBJECTS} - {"project"})
    R.ensure_venvs(keys)
    version = subprocess.run([R.venv_python("project"), "-c",
                              "import importlib.metadata as m; print(m.version('gevent'))"],
                             capture_output=True, text=True, timeout=60).stdout.strip()
    for key in keys:
        has = subprocess.run([R.venv_python(key), "-c", "import gunicorn.workers.ggevent"],
                             capture_output=True, timeout=60).returncode == 0
        if not has:
            spec = ["gevent==%s" % version if version else "gevent", "packaging"]
            log("pip install %s into %s" % (" ".join(spec), key))
            subprocess.run([R.venv_python(key), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check"] + spec,
                           check=True, timeout=1800, cwd=R.RESULTS)


def argument_parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, action="append",
                    help="concurrent sessions (repeat for several; default 1000)")
    ap.add_argument("--scenario", choices=("streams", "websocket", "both"), default="both")
    ap.add_argument("--subjects", default=",".join(DEFAULT_SUBJECTS),
                    help="comma-separated, from: %s" % ", ".join(KNOWN))
    ap.add_argument("--runs", type=int, default=3, help="runs per subject (medians)")
    ap.add_argument("--ramp", type=float, default=2.0, help="seconds over which sessions arrive")
    ap.add_argument("--pieces", type=int, default=10, help="pieces per stream / messages")
    ap.add_argument("--delay", type=float, default=0.5, help="seconds between pieces")
    ap.add_argument("--size", type=int, default=256, help="bytes per piece / message")
    ap.add_argument("--deadline", type=float, default=60.0,
                    help="seconds a run may take before its sessions count as failed")
    ap.add_argument("--py-spy", metavar="PATH",
                    help="profile each worker with this py-spy binary (results/longlived-profile-*)")
    ap.add_argument("--gunicorn-arg", action="append", metavar="ARG",
                    help="an extra argument for every gunicorn front (repeat; e.g. -c=conf.py)")
    ap.add_argument("--no-setup", action="store_true", help="skip the virtualenv checks")
    ap.add_argument("--results", default=R.RESULTS, help="directory for the results")
    return ap


def main(argv=None):
    ap = argument_parser()
    cfg = ap.parse_args(argv)
    ns = cfg.n or [1000]
    scenarios = SCENARIOS if cfg.scenario == "both" else (cfg.scenario,)
    names = [x.strip() for x in cfg.subjects.split(",") if x.strip()]
    unknown = set(names) - set(KNOWN)
    if unknown:
        ap.error("unknown subject(s): %s" % ", ".join(sorted(unknown)))
    R.RESULTS = os.path.abspath(cfg.results)
    R.LOGS = os.path.join(R.RESULTS, "logs")
    os.makedirs(R.LOGS, exist_ok=True)
    signal.signal(signal.SIGTERM, R._on_signal)
    signal.signal(signal.SIGHUP, R._on_signal)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    notes = []
    if hard < 2 * max(ns) + 100:
        notes.append("RLIMIT_NOFILE hard limit %d (cannot be raised here): a proxy worker "
                     "needs 2 fds per session, so at most ~%d proxied sessions per worker"
                     % (hard, (hard - 100) // 2))
    try:
        if not cfg.no_setup:
            ensure_peer_venvs(names)
        wsgi = [n for n in names if n in S.SUBJECTS]
        for name, why in R.probe_subjects(wsgi, None).items():
            if why:
                notes.append("subject %s skipped: %s" % (name, why))
                names.remove(name)
        res = {"meta": {
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "host": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "nofile": "%d (hard %d)" % (hard, hard),
            "params": {"runs": cfg.runs, "ramp": cfg.ramp, "pieces": cfg.pieces,
                       "delay": cfg.delay, "size": cfg.size, "deadline": cfg.deadline,
                       "n": ns, "scenarios": list(scenarios), "subjects": names},
            "commit": subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                     capture_output=True, text=True).stdout.strip(),
            "versions": {k: R.package_versions(k) for k in
                         sorted({R.venv_of(n) for n in names if n in S.SUBJECTS})},
            "loadavg_start": R.loadavg(),
        }, "results": {}, "notes": notes, "runs": {}}
        backend, backend_port = start_backend()
        log("backend on %s:%d; RLIMIT_NOFILE %d" % (R.LOOPBACK, backend_port, hard))
        for n in ns:
            for scenario in scenarios:
                key = "%s-%d" % (scenario, n)
                records = {name: [] for name in names}
                active = list(names)
                for rnd in range(cfg.runs):
                    order = active[rnd % len(active):] + active[:rnd % len(active)] if active else []
                    for name in order:
                        rec = measure(name, scenario, n, backend_port, cfg)
                        records[name].append(rec)
                        log("%s N=%d run %d %-20s %s" % (scenario, n, rnd + 1, name, one_line(rec)))
                        done = rec.get("client", {}).get("outcomes", {})
                        if not (done.get("ok") or done.get("buffered") or done.get("bunched")):
                            active.remove(name)  # nothing completed: another run will not differ
                res["runs"][key] = records
                res["results"][key] = entry = {"scenario": scenario, "n": n, "subjects": {
                    name: summarize(recs) for name, recs in records.items()}}
                for name, s in entry["subjects"].items():
                    for kind, example in s.get("examples", {}).items():
                        notes.append("%s N=%d %s, %s: %s" % (scenario, n, name, kind, example))
        R.PROCS.stop(backend)
        res["meta"]["loadavg_end"] = R.loadavg()
        res["targets"] = evaluate_targets(res)
        text = report(res)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = os.path.join(R.RESULTS, "longlived-%s.json" % stamp)
        with open(path, "w") as f:
            json.dump(res, f, indent=1, ensure_ascii=False)
        shutil.copyfile(path, os.path.join(R.RESULTS, "longlived-latest.json"))
        with open(os.path.join(R.RESULTS, "longlived-latest.txt"), "w") as f:
            f.write(text + "\n")
        print(text)
        print("\nwritten: %s, longlived-latest.txt" % path)
    finally:
        R.PROCS.stop_all()


def one_line(rec):
    if "error" in rec:
        return "FAILED: %s" % rec["error"][:200]
    c, w, g = rec["client"], rec.get("worker", {}), rec["get"].get("latency_ms") or {}
    if "error" in c:
        return "FAILED: %s" % c["error"][:200]
    return ("%s; total %.1f s; RSS +%.1f MiB; CPU %.1f s; GET p50 %.1f max %.0f ms%s"
            % (", ".join("%d %s" % (v, k) for k, v in c["outcomes"].items()),
               c["total_s"] or 0, w.get("rss_growth_mib", 0), w.get("cpu_s", 0),
               g.get("p50", 0), g.get("max", 0),
               "; log: %s" % rec["log_signs"] if rec.get("log_signs") else ""))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        R.PROCS.stop_all()
        sys.exit(130)
