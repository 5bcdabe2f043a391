"""In-process CPU cost of one subject (figure 1).  Run by run.py in the
subject's own virtualenv; prints one JSON object on the last line of stdout.

For each workload: a warm-up (whose responses are checked), then N requests
in a loop that calls the WSGI app directly with a fresh copy of the same
prepared environ and drains the response iterable; the figure is the
process's CPU time (time.process_time: user + system, all threads) divided
by N.  The backend runs in another process.

  python cpu_worker.py --subject NAME --backend 127.0.0.1:PORT [--n 5000]
                       [--warmup 500] [--workloads get1k,post1k,get64k]
                       [--secret-file PATH] [--profile OUT.txt]
"""
import argparse
import io
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import subjects

WALL_LIMIT = 180.0  # seconds per workload run, a safety bound


def wsgi_request_fn(app, base, workload):
    method, path, body_len, expected = subjects.WORKLOADS[workload]
    env0 = subjects.workload_environ(base, workload)
    body = subjects.POST_BODY if body_len else b""
    BytesIO = io.BytesIO
    status = [None]

    def start_response(s, headers, exc_info=None):
        status[0] = s

    def one():
        env = env0.copy()
        env["wsgi.input"] = BytesIO(body)
        it = app(env, start_response)
        n = 0
        try:
            for chunk in it:
                n += len(chunk)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        return n

    def check():
        n = one()
        if not (status[0] or "").startswith("200") or n != expected:
            raise RuntimeError("bad response: status %r, %d bytes (expected 200, %d)"
                               % (status[0], n, expected))
    return one, check, expected


def request_headers(host_header):
    hdrs = [("Host", host_header)] + list(subjects.BROWSER_HEADERS) + [("Connection", "keep-alive")]
    return hdrs


def httpclient_request_fn(host, port, workload):
    import http.client
    method, path, body_len, expected = subjects.WORKLOADS[workload]
    conn = http.client.HTTPConnection(host, port)
    headers = dict(request_headers("%s:%d" % (host, port)))
    headers.pop("Host")
    body = subjects.POST_BODY if body_len else None
    if body:
        headers["Content-Type"] = "application/x-www-form-urlencoded"

    def one():
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        return len(data)

    def check():
        n = one()
        if n != expected:
            raise RuntimeError("bad response length %d" % n)
    return one, check, expected


def httptools_request_fn(host, port, workload):
    import socket

    import httptools  # type: ignore[import-not-found]  # in bench/.venvs only
    method, path, body_len, expected = subjects.WORKLOADS[workload]
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lines = ["%s %s HTTP/1.1" % (method, path)]
    for k, v in request_headers("%s:%d" % (host, port)):
        lines.append("%s: %s" % (k, v))
    body = subjects.POST_BODY if body_len else b""
    if body:
        lines.append("Content-Type: application/x-www-form-urlencoded")
        lines.append("Content-Length: %d" % len(body))
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    class Proto:
        __slots__ = ("done", "headers", "n")

        def __init__(self):
            self.done = False
            self.n = 0
            self.headers = []

        def on_header(self, name, value):
            self.headers.append((name, value))

        def on_body(self, data):
            self.n += len(data)

        def on_message_complete(self):
            self.done = True

    proto = Proto()
    parser = httptools.HttpResponseParser(proto)
    recv = sock.recv
    sendall = sock.sendall
    feed = parser.feed_data

    def one():
        proto.done = False
        proto.n = 0
        proto.headers = []
        sendall(request)
        while not proto.done:
            data = recv(262144)
            if not data:
                raise ConnectionError("backend closed")
            feed(data)
        return proto.n

    def check():
        n = one()
        if n != expected or parser.get_status_code() != 200:
            raise RuntimeError("bad response length %d" % n)
    return one, check, expected


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", required=True)
    ap.add_argument("--backend", required=True, help="HOST:PORT")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--workloads", default="get1k,post1k,get64k")
    ap.add_argument("--secret-file")
    ap.add_argument("--profile", help="write a cProfile summary of the get1k loop here")
    ap.add_argument("--cpu", type=int, help="pin this process to that CPU")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    host, port = args.backend.rsplit(":", 1)
    port = int(port)
    out = {"subject": args.subject, "python": sys.version.split()[0], "results": {}}

    app = None
    if args.subject in subjects.SUBJECTS:
        try:
            app = subjects.make_app(args.subject, host, port, secret_file=args.secret_file)
        except subjects.MissingSubject as exc:
            out["missing"] = str(exc)
            print(json.dumps(out))
            return
        base = subjects.base_environ(host, port)

    for wl in args.workloads.split(","):
        try:
            if app is not None:
                one, check, expected = wsgi_request_fn(app, base, wl)
            elif args.subject == "floor-httpclient":
                one, check, expected = httpclient_request_fn(host, port, wl)
            elif args.subject == "floor-httptools":
                one, check, expected = httptools_request_fn(host, port, wl)
            else:
                raise SystemExit("unknown subject %r" % args.subject)
            for _ in range(max(1, args.warmup // 50)):
                check()
            for _ in range(args.warmup):
                one()
            if args.profile and wl == "get1k":
                import cProfile
                import pstats
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(args.n):
                    one()
                prof.disable()
                s = io.StringIO()
                st = pstats.Stats(prof, stream=s)
                st.sort_stats("tottime").print_stats(30)
                s.write("\n\n==== sorted by cumulative ====\n")
                st.sort_stats("cumulative").print_stats(30)
                with open(args.profile, "w") as f:
                    f.write(s.getvalue())
            total = 0
            done = 0
            deadline = time.perf_counter() + WALL_LIMIT
            w0 = time.perf_counter()
            t0 = os.times()
            c0 = time.process_time()
            while done < args.n:
                k = min(100, args.n - done)
                for _ in range(k):
                    total += one()
                done += k
                if time.perf_counter() > deadline:
                    break
            c1 = time.process_time()
            t1 = os.times()
            w1 = time.perf_counter()
            if total != done * expected:
                raise RuntimeError("got %d bytes, expected %d" % (total, done * expected))
            out["results"][wl] = {
                "cpu_us": (c1 - c0) / done * 1e6,
                "wall_us": (w1 - w0) / done * 1e6,
                "user_us": (t1.user - t0.user) / done * 1e6,
                "sys_us": (t1.system - t0.system) / done * 1e6,
                "requests": done,
            }
        except Exception as exc:  # record, go on with the next workload
            out["results"][wl] = {"error": "%s: %s" % (type(exc).__name__, exc)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
