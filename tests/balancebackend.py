"""A backend for the balancer tests (run as a program, not collected).

    python balancebackend.py PORT LOGFILE

Each request is written to LOGFILE as it arrives, one line
``<time> <method> <X-Id header>``, with one ``write()`` on a file opened for
appending (so the line survives a SIGKILL a moment later), then the backend
waits $BACKEND_DELAY seconds and answers $BACKEND_STATUS (default 200) with
``{"port": PORT, "id": ...}``.
"""
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, logfile = int(sys.argv[1]), sys.argv[2]
delay = float(os.environ.get("BACKEND_DELAY", "0"))
status = int(os.environ.get("BACKEND_STATUS", "200"))
log_fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        ident = self.headers.get("X-Id", "-")
        os.write(log_fd, ("%f %s %s\n" % (time.time(), self.command, ident)).encode())
        if delay:
            time.sleep(delay)
        body = json.dumps({"port": port, "id": ident}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = handle_any

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


Server(("127.0.0.1", port), Handler).serve_forever()
