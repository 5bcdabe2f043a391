"""A child HTTP server for the spawn and scale-out tests (run as a program, not collected).

    python spawnchild.py PORT PIDDIR

It writes PIDDIR/<its pid> at start and answers with its pid, parent pid,
port, path, headers and $CHILD_ENV as JSON.  GET /hold waits (30 s at most)
until PIDDIR/release (or PIDDIR/<until> for /hold?until=NAME) exists, leaving
PIDDIR/inflight-<pid>-<id> meanwhile; POST /hold?id=ID does the same after
writing PIDDIR/post-<ID>-<pid>, so a test counts where each POST ran;
GET /stream?n=N&delay=S streams N lines.  $CHILD_MODE makes it misbehave:
exit, fail-twice, never (never listens), ignore-term, squat (its port is
taken by another process first), health-file, signed-health (GET /health
answers 403 unless signed with the secret file $CHILD_SECRET_FILE, in the
format $CHILD_SIGNATURE_FORMAT: v1 by default, or rfc9421).
"""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

port, piddir = int(sys.argv[1]), sys.argv[2]
mode = os.environ.get("CHILD_MODE", "serve")
started = time.monotonic()
open(os.path.join(piddir, str(os.getpid())), "w").close()

if mode == "fail-twice" and len([n for n in os.listdir(piddir) if n.isdigit()]) <= 2:
    print("child-boom: failing start", file=sys.stderr, flush=True)
    sys.exit(4)
if mode == "exit":
    print("child-boom: cannot start", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "never":
    print("child-stuck: never listening", file=sys.stderr, flush=True)
    while True:
        time.sleep(60)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "squat" and not os.path.exists(os.path.join(piddir, "squatted")):
    # Someone else takes our port between the parent's check and our bind.
    open(os.path.join(piddir, "squatted"), "w").write(str(port))
    squatter = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', %d)); s.listen(1)\n"
        "open(sys.argv[1], 'w').write('ok')\n"
        "time.sleep(120)\n") % port, os.path.join(piddir, "squatter-ready")],
        start_new_session=True)
    open(os.path.join(piddir, "squatter.pid"), "w").write(str(squatter.pid))
    while not os.path.exists(os.path.join(piddir, "squatter-ready")):
        time.sleep(0.01)

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def hold(self, query):
        open(os.path.join(piddir, "inflight-%d-%s" % (os.getpid(), uuid.uuid4().hex)),
             "w").close()
        release = os.path.join(piddir, query.get("until", ["release"])[0])
        deadline = time.monotonic() + 30
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)

    def do_POST(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        open(os.path.join(piddir, "post-%s-%d" % (query["id"][0], os.getpid())), "w").close()
        if url.path == "/hold":
            self.hold(query)
        body = json.dumps({"pid": os.getpid(), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if mode == "health-file" and not os.path.exists(os.environ["CHILD_HEALTH_FILE"]):
            if url.path == "/health":
                open(os.path.join(piddir, "health-probed"), "w").close()
            self.send_response(503 if url.path == "/health" else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "signed-health" and url.path == "/health":
            from wsgiproxy import protocol
            keys = protocol.SecretKeys(os.environ["CHILD_SECRET_FILE"])
            try:
                if os.environ.get("CHILD_SIGNATURE_FORMAT") == "rfc9421":
                    protocol.verify_request_rfc9421(
                        keys, "GET", self.headers.get("Host"), url.path, url.query,
                        list(self.headers.items()))
                else:
                    protocol.verify_request(
                        keys, self.headers.get("X-WSGIProxy-Signature"), "GET",
                        self.headers.get("Host"), url.path, url.query, list(self.headers.items()))
                status = 200
            except protocol.SignatureError:
                status = 403
            open(os.path.join(piddir, "health-%d" % status), "w").close()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for i in range(int(query["n"][0])):
                self.wfile.write(b"chunk %d\n" % i)
                self.wfile.flush()
                time.sleep(float(query["delay"][0]))
            return
        if url.path == "/hold":  # until the test creates piddir/release
            self.hold(query)
        if url.path == "/redirect":  # to its own absolute URL, port and all
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:%d/target?from=%d" % (port, port))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "path": self.path,
                           "port": port,
                           "headers": dict(self.headers.items()),
                           "env": os.environ.get("CHILD_ENV", "")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 64
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("child-listening on %d" % port, flush=True)
server.serve_forever()
