"""Real servers on loopback for the tests: waitress in a thread, and a scripted raw-socket server.

The raw server exists for what no well-behaved server produces: odd framing,
garbage, stalls, early closes.  Each accepted connection runs the test's
``handler(conn)`` in its own thread; ``conn`` reads requests off the socket.
"""

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading

import pytest
import waitress
from waitress import wasyncore
from webob import Request

__all__ = ["WaitressServer", "RawServer", "RawConnection", "echo_app", "serve", "scripted",
           "blank", "OK", "free_port", "wait_for_port", "wait_until", "Process", "send_raw",
           "capture_signed_request", "need", "alive", "parent_of", "children_of", "pid_gone",
           "group_gone", "RedisServer", "GUNICORN_CONF", "ready_workers", "nginx_files",
           "nginx_conf"]


class WaitressServer:
    """A waitress server for ``app`` on a free loopback port, in a daemon thread."""

    def __init__(self, app, host="127.0.0.1", **options):
        options.setdefault("threads", 8)
        options.setdefault("clear_untrusted_proxy_headers", False)
        self.server = waitress.create_server(app, host=host, port=0, **options)
        self.host = host
        self.port = int(self.server.effective_port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "http://%s:%d" % (host, self.port)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        # run() returns once no channel is left.  Close the channels from the
        # server's own thread (through its trigger), let the worker threads
        # finish, and only then close the trigger they use to wake the loop:
        # waitress's own close() closes the trigger first, which races with
        # workers still finishing a response (EBADF in a worker thread).
        server = self.server
        closed = threading.Event()

        def close_channels():
            for channel in list(server._map.values()):
                if channel is server:
                    wasyncore.dispatcher.close(server)
                elif channel is not server.trigger:
                    channel.close()
            closed.set()
        try:
            server.trigger.pull_trigger(close_channels)
            closed.wait(5)
            server.task_dispatcher.shutdown(timeout=5)
            server.trigger.pull_trigger(server.trigger.close)
        except OSError:  # the loop already ended and closed the trigger
            pass
        self.thread.join(5)


def serve(app, **options):
    return WaitressServer(app, **options)


def echo_app(environ, start_response):
    """Answers with the environ's string values (and the body it read) as JSON."""
    body = environ["wsgi.input"].read()
    data = {k: v for k, v in environ.items() if isinstance(v, str)}
    data["body"] = body.decode("latin-1")
    out = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out)))])
    return [out]


class RawConnection:
    """One accepted connection, with helpers to read a request and send bytes."""

    def __init__(self, sock, server):
        self.sock = sock
        self.server = server
        self.buf = b""

    def read_head(self):
        """Read one request's header block (bytes, without the blank line), or None at EOF."""
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head

    def read_exact(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("client closed with %d of %d bytes" % (len(self.buf), n))
            self.buf += data
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_request(self):
        """Read a whole request: ``(head, body)``; understands Content-Length and chunked."""
        head = self.read_head()
        if head is None:
            return None, None
        lower = head.lower()
        body = b""
        if b"transfer-encoding: chunked" in lower:
            while True:
                while b"\r\n" not in self.buf:
                    data = self.sock.recv(65536)
                    if not data:
                        raise EOFError("client closed in the middle of a chunked body")
                    self.buf += data
                line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(line.split(b";")[0], 16)
                if not size:
                    self.read_exact(2)
                    break
                body += self.read_exact(size)
                self.read_exact(2)
        else:
            for line in lower.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    body = self.read_exact(int(line.split(b":")[1]))
        self.server.requests.append((head, body))
        return head, body

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class RawServer:
    """A scripted HTTP server: ``handler(conn)`` is called for each accepted connection.

    ``connections`` counts accepted connections (to see whether the proxy
    reused one); ``requests`` collects ``(head, body)`` read with
    ``conn.read_request()``.
    """

    def __init__(self, handler, host="127.0.0.1", ssl_context=None):
        self.handler = handler
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests = []
        self.errors = []
        self._open = []
        self._handlers = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        # Wake the handlers (shutdown) and let them finish before their fds
        # are closed: a TLS handler blocked in SSL_read would otherwise write
        # its alert into whatever socket reuses the fd number later.
        for conn in list(self._open):
            try:
                socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._handlers:
            thread.join(5)
        for conn in self._open:
            conn.close()
        self._thread.join(5)

    def _accept_loop(self):
        while not self._stop:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    self.errors.append(exc)
                    sock.close()
                    continue
            conn = RawConnection(sock, self)
            self._open.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            thread.start()
            self._handlers.append(thread)  # only started threads: __exit__ joins them

    def _run(self, conn):
        try:
            self.handler(conn)
        except (OSError, EOFError) as exc:
            self.errors.append(exc)
        finally:
            conn.close()


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (for configs that need a fixed number)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(port, host="127.0.0.1", timeout=30.0, process=None):
    """Block until something accepts on ``host:port``; fail if ``process`` exits first."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d"
                               % (process.returncode, port))
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("nothing listening on %s:%d after %gs" % (host, port, timeout))


class Process:
    """A subprocess in its own process group, killed with its children on exit."""

    def __init__(self, args, **kwargs):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.STDOUT)
        self.proc = subprocess.Popen(args, start_new_session=True, **kwargs)

    def __enter__(self):
        return self

    def output(self):
        return self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""

    def __exit__(self, *exc):
        import signal
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except Exception:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def scripted(*responses):
    """A RawServer handler answering each request on a connection with the next response.

    ``None`` closes without answering; a response ending in ``<close>`` closes
    after it; when the list is used up every request gets :data:`OK`.
    """
    lock = threading.Lock()
    queue = list(responses)

    def handler(conn):
        while True:
            head, _ = conn.read_request()
            if head is None:
                return
            with lock:
                answer = queue.pop(0) if queue else OK
            if answer is None:
                return
            conn.send(answer)
            if answer.endswith(b"<close>"):
                return
    return handler


def blank(path, port, host="127.0.0.1", scheme="http", **kw):
    """A webob request aimed (through SERVER_NAME/PORT) at ``host:port``, for the exact proxy."""
    req = Request.blank(path, **kw)
    req.environ["SERVER_NAME"] = host
    req.environ["SERVER_PORT"] = str(port)
    req.environ["wsgi.url_scheme"] = scheme
    return req


def wait_until(predicate, timeout=15.0, what="condition"):
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout``."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out after %gs waiting for %s" % (timeout, what))


def send_raw(port, data, ssl_context=None, server_hostname="127.0.0.1"):
    """Send ``data`` on a new connection to 127.0.0.1:``port`` (over TLS with
    ``ssl_context``) and read the answer to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        sock = raw if ssl_context is None else ssl_context.wrap_socket(
            raw, server_hostname=server_hostname)
        with sock:
            sock.sendall(data)
            out = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return out
                out += chunk


def capture_signed_request(secret_file, path, user="alice"):
    """The exact bytes a signing WSGIProxyApp sends for ``path`` (REMOTE_USER passed as a key),
    caught by a raw server, with ``Connection: close`` added for replaying with send_raw()."""
    import http.client
    from wsgiproxy.app import WSGIProxyApp

    def answer(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 204 No Content\r\n\r\n")

    def with_user(environ, start_response):
        environ["REMOTE_USER"] = user
        return proxy(environ, start_response)

    with RawServer(answer) as raw:
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % raw.port, secret_file=secret_file,
                             string_keys=["REMOTE_USER"])
        with WaitressServer(with_user) as front:
            conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
            conn.request("GET", path, headers={"Host": "www.example.com"})
            conn.getresponse().read()
            conn.close()
        proxy.close()
        head, body = raw.requests[0]
    return head + b"\r\nConnection: close\r\n\r\n" + body


def need(program):
    """The path of an installed program; a missing one fails the test (never skips it)."""
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail("%s is not installed (./dev test installs the Debian package)" % program)
    return path


# -- processes and pids -----------------------------------------------------------

def _stat(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def alive(pid):
    """Running (a zombie waiting for a parent that does not reap it counts as gone)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def parent_of(pid):
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def children_of(pid):
    """Live processes whose parent is ``pid`` (gunicorn's workers, say)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and parent_of(int(name)) == pid and alive(int(name)):
            found.append(int(name))
    return sorted(found)


def pid_gone(pid):
    """No such process (reaped; a zombie still counts as there)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def group_gone(pgid):
    """No process left in the group (a child's own children included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# -- redis, gunicorn and nginx ------------------------------------------------------

class RedisServer:
    """``redis-server`` on 127.0.0.1:<port>, no persistence; stop() and start() again."""

    #: The key prefix ``url`` gives RedisNonceStore.
    prefix = "wsgiproxy:test:"

    def __init__(self, directory, port=None):
        self.directory = str(directory)
        self.port = port or free_port()
        self.process = None
        self.url = "redis://127.0.0.1:%d/0?prefix=%s" % (self.port, self.prefix)

    def start(self):
        log = open(os.path.join(self.directory, "redis.log"), "ab")
        self.process = Process([need("redis-server"), "--port", str(self.port),
                                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", self.directory, "--daemonize", "no"],
                               stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port, process=self.process.proc, timeout=15)
        return self

    def stop(self):
        if self.process is not None:
            self.process.__exit__(None, None, None)
            self.process = None

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


#: A gunicorn config (``.format(ready=DIR)``) whose workers touch DIR/<pid> once they
#: have loaded the app: the tests wait for that, not for the port alone.
GUNICORN_CONF = """
import os

def post_worker_init(worker):  # the worker has loaded the app and is about to serve
    open(os.path.join({ready!r}, str(worker.pid)), "w").close()
"""


def ready_workers(tmp_path, master_pid):
    """The master's live workers that have loaded the app (see GUNICORN_CONF)."""
    ready = {int(name) for name in os.listdir(str(tmp_path / "ready"))}
    return sorted(ready.intersection(children_of(master_pid)))


def nginx_files(prefix, log_format=None):
    """``http {}`` directives that keep nginx's access log and temporary files in
    ``prefix``: the system's directories may not exist or be writable."""
    if log_format:
        lines = ["log_format test '%s';" % log_format, "access_log %s/access.log test;" % prefix]
    else:
        lines = ["access_log %s/access.log;" % prefix]
    lines += ["%s_temp_path %s/%s;" % (kind, prefix, name) for kind, name in (
        ("client_body", "body"), ("proxy", "proxy"), ("fastcgi", "fastcgi"),
        ("uwsgi", "uwsgi"), ("scgi", "scgi"))]
    return "\n".join("    " + line for line in lines)


_NGINX_MAIN = """{user}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 256; }}

http {{
{files}

{http}
}}
"""


def nginx_conf(prefix, http, log_format=None):
    """A whole nginx.conf for ``nginx -p prefix`` around the ``http {}`` body ``http``:
    in the foreground, every file in ``prefix``, as root when the tests run as root."""
    return _NGINX_MAIN.format(user="user root;" if os.geteuid() == 0 else "", prefix=prefix,
                              files=nginx_files(prefix, log_format), http=http.rstrip())
