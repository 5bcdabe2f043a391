"""What the tests serve, on loopback: servers in threads, backend applications, programs.

* :class:`WaitressServer` runs a WSGI application in a thread; :class:`RawServer`
  runs a scripted raw-socket server for what no well-behaved server produces
  (odd framing, garbage, stalls, early closes): each accepted connection runs the
  test's ``handler(conn)`` in its own thread, and ``conn`` reads requests off the
  socket (:func:`scripted` makes such a handler from a list of answers).
* :func:`echo_app` is the backend that answers with what it received;
  :func:`with_environ` sets environ keys (a logged-in user) in front of an app.
* :class:`Process` runs a program in its own process group; :class:`Served`,
  :class:`Gunicorn`, :func:`nginx_process` and :class:`RedisServer` are the
  programs the tests start, and the ``pid`` helpers follow them.
* A fixed port (the demo's 8080) is checked with :func:`require_free_port` and
  :func:`wait_for_listener`: the test says so when another process has it, and
  never talks to a stranger.

The client side (requests, raw sends, reading answers) is in tests/client.py.
"""

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import waitress  # type: ignore[import-untyped]
from waitress import wasyncore
from webob import Request

__all__ = [
    "BIN",
    "EXAMPLES",
    "OK",
    "ROOT",
    "TEST_SECRET",
    "WSGIPROXY",
    "Gunicorn",
    "Process",
    "RawConnection",
    "RawServer",
    "RedisServer",
    "Served",
    "WaitressServer",
    "alive",
    "blank",
    "capture_signed_request",
    "children_of",
    "counted",
    "echo_app",
    "free_port",
    "group_gone",
    "holders",
    "listeners",
    "need",
    "nginx_conf",
    "nginx_files",
    "nginx_process",
    "parent_of",
    "pid_gone",
    "pids_in",
    "require_free_port",
    "scripted",
    "wait_for_listener",
    "wait_for_port",
    "wait_until",
    "watchdog_of",
    "with_environ",
    "write_secret",
]

#: The checkout, the virtualenv's programs, and the docs' example files.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
EXAMPLES = os.path.join(ROOT, "docs", "examples")
WSGIPROXY = os.path.join(BIN, "wsgiproxy")

#: The shared secret of :func:`write_secret` (and the ``secret_file`` fixture).
TEST_SECRET = "a-test-secret-of-some-length-0123456789"


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


def echo_app(environ, start_response):
    """Answers with what it received, as JSON: the environ (``wsgi.*`` objects left out,
    other values that JSON has no type for as their ``repr``) and the body it read."""
    body = environ["wsgi.input"].read() if "wsgi.input" in environ else b""
    data = {k: v for k, v in environ.items() if not k.startswith("wsgi.") or isinstance(v, str)}
    data["body"] = body.decode("latin-1")
    out = json.dumps(data, default=repr).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out)))])
    return [out]


def counted(app, counts, name):
    """``app``, counting its calls in ``counts[name]`` (one dict for several backends)."""
    lock = threading.Lock()

    def wrapped(environ, start_response):
        with lock:
            counts[name] = counts.get(name, 0) + 1
        return app(environ, start_response)
    return wrapped


def with_environ(app, **values):
    """``app`` called with ``values`` set in the environ first (``REMOTE_USER`` after a login,
    say); keys that are not Python names go in as ``**{"myapp.roles": ...}``."""
    def wrapped(environ, start_response):
        environ.update(values)
        return app(environ, start_response)
    return wrapped


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


# -- waiting -------------------------------------------------------------------------

def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (for configs that need a fixed number)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(port, host="127.0.0.1", timeout=30.0, process=None):
    """Block until something accepts on ``host:port``; fail if ``process`` exits first.

    For a port of our own choosing (:func:`free_port`); a fixed one is waited for
    with :func:`wait_for_listener`, which also checks who listens.
    """
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


def wait_until(predicate, timeout=15.0, what="condition"):
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out after %gs waiting for %s" % (timeout, what))


# -- secrets and signed requests -----------------------------------------------------

def write_secret(directory, secret=TEST_SECRET, name="secret.txt"):
    """A secret file (one secret) in ``directory``; returns its path."""
    path = os.path.join(str(directory), name)
    with open(path, "w") as f:
        f.write(secret + "\n")
    return path


def capture_signed_request(secret_file, path, user="alice"):
    """The exact bytes a signing WSGIProxyApp sends for ``path`` (REMOTE_USER passed as a
    key), caught by a raw server, for replaying with ``client.send_raw()``.

    ``Connection: close`` and ``Accept: application/json`` are added after the head (the
    signature covers neither), so an error answer to the replay is JSON
    (``client.json_error()``).
    """
    from wsgiproxy.app import WSGIProxyApp

    from .client import request

    def answer(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 204 No Content\r\n\r\n")

    with RawServer(answer) as raw:
        proxy = WSGIProxyApp("http://127.0.0.1:%d" % raw.port, secret_file=secret_file,
                             string_keys=["REMOTE_USER"])
        with WaitressServer(with_environ(proxy, REMOTE_USER=user)) as front:
            request(front.port, path, headers={"Host": "www.example.com"}, timeout=10)
        proxy.close()
        head, body = raw.requests[0]
    return head + b"\r\nConnection: close\r\nAccept: application/json\r\n\r\n" + body


# -- programs ------------------------------------------------------------------------

def need(program):
    """The path of an installed program; a missing one fails the test (never skips it)."""
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail("%s is not installed (./dev test installs the Debian package)" % program)
    return path


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
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except Exception:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _read_tail(path, size=3000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-size:]
    except OSError as exc:
        return "(%s)" % exc


class Served:
    """A program serving on 127.0.0.1:``port``, in its own process group, its output in
    the file ``log``; entered once it listens, else the test fails showing that output.

    ``args`` is the whole command (``[WSGIPROXY, "serve", "x.ini"]``, ``["./dev", "demo"]``).
    ``fixed``: ``port`` is a fixed number (the demo's 8080), not one the test chose; the
    test fails, saying so, when another process has it, before starting or while waiting,
    and it is entered only once its own process group listens there.
    """

    host = "127.0.0.1"

    def __init__(self, args, port, log, env=None, cwd=None, fixed=False):
        self.args = [str(arg) for arg in args]
        self.port = port
        self.log = str(log)
        self.env = env
        self.cwd = cwd
        self.fixed = fixed
        self.process = None

    @property
    def pid(self):
        return self.process.proc.pid

    def __enter__(self):
        what = " ".join(self.args)
        if self.fixed:
            require_free_port(self.port, what)
        with open(self.log, "ab") as out:
            self.process = Process(self.args, stdout=out, stderr=subprocess.STDOUT,
                                   env=self.env, cwd=self.cwd)
        try:
            self._wait()
        except BaseException as exc:
            self.process.__exit__(None, None, None)
            if isinstance(exc, (AssertionError, RuntimeError, TimeoutError)):
                pytest.fail("%s: %s; its output:\n%s" % (what, exc, self.output()))
            raise
        return self

    def _wait(self):
        if self.fixed:
            wait_for_listener(self.port, self.process.proc)
        else:
            wait_for_port(self.port, self.host, process=self.process.proc)

    def __exit__(self, *exc):
        self.process.__exit__(*exc)

    def output(self):
        return _read_tail(self.log)


#: A gunicorn config (``.format(ready=DIR)``) whose workers touch DIR/<pid> once they
#: have loaded the app: :class:`Gunicorn` waits for that, not for the port alone.
GUNICORN_CONF = """
import os

def post_worker_init(worker):  # the worker has loaded the app and is about to serve
    open(os.path.join({ready!r}, str(worker.pid)), "w").close()
"""


class Gunicorn(Served):
    """A gunicorn command line (``-b HOST:PORT`` in it) run as given (a :class:`Served`);
    entered once it listens and every worker (``-w``) has loaded the application.

    GUNICORN_CMD_ARGS, which leaves the command line as written, adds an access log
    (``pid status request``: :meth:`access_log`) and :data:`GUNICORN_CONF`, whose hook
    marks each worker that has loaded the app in ``directory``/ready.  Its output goes
    to ``directory``/``label``.log.
    """

    def __init__(self, args, directory, label="gunicorn", env=None, cwd=None):
        args = [str(arg) for arg in args]
        host, _, port = args[args.index("-b") + 1].rpartition(":")
        self.workers = int(args[args.index("-w") + 1]) if "-w" in args else 1
        self.ready = directory / "ready"
        self.conf = directory / "gunicorn_conf.py"
        self.access = directory / (label + ".access")
        env = dict(env if env is not None else os.environ, GUNICORN_CMD_ARGS=" ".join(
            shlex.quote(arg) for arg in ("--config", str(self.conf), "--access-logfile",
                                         str(self.access), "--access-logformat",
                                         "%(p)s %(s)s %(r)s")))
        super().__init__(args, int(port), directory / (label + ".log"), env=env, cwd=cwd)
        self.host = host

    def __enter__(self):
        self.ready.mkdir(exist_ok=True)
        self.conf.write_text(GUNICORN_CONF.format(ready=str(self.ready)))
        return super().__enter__()

    def _wait(self):
        super()._wait()
        wait_until(lambda: self._running() and len(self.ready_workers()) == self.workers,
                   30, "%d workers to load the application" % self.workers)

    def _running(self):
        if self.process.proc.poll() is not None:
            raise RuntimeError("exited with status %s" % self.process.proc.returncode)
        return True

    def ready_workers(self):
        """The master's live workers that have loaded the app."""
        ready = {int(name) for name in os.listdir(str(self.ready))}
        return sorted(ready.intersection(children_of(self.pid)))

    def access_log(self):
        """``[(worker pid, status, request line)]``."""
        if not self.access.exists():
            return []
        out = []
        for line in self.access.read_text().splitlines():
            pid, status, request = line.split(" ", 2)
            out.append((int(pid.strip("<>")), int(status), request))
        return out

    def stop(self, timeout=30):
        """SIGTERM to the master, as on a shutdown; returns once it has exited."""
        os.kill(self.pid, signal.SIGTERM)
        self.process.proc.wait(timeout)

    def kill(self):
        """The host dies: SIGKILL to the whole process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.proc.wait(10)


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


def nginx_process(prefix, conf, *options):
    """The Debian nginx with configuration file ``conf``, every file in ``prefix``
    (errors in error.log, its output in stdout.log), more command line ``options``."""
    with open(str(prefix / "stdout.log"), "ab") as out:
        return Process([need("nginx"), "-p", str(prefix), "-c", str(conf),
                        "-e", str(prefix / "error.log"), *options],
                       stdout=out, stderr=subprocess.STDOUT)


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
        with open(os.path.join(self.directory, "redis.log"), "ab") as log:
            self.process = Process([need("redis-server"), "--port", str(self.port),
                                    "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                    "--dir", self.directory, "--daemonize", "no"],
                                   stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, process=self.process.proc, timeout=15)
        return self

    def stop(self):
        if self.process is not None:
            self.process.__exit__(None, None, None)
            self.process = None

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def keys(self, pattern):
        """The keys matching ``pattern`` (``prefix + "*"``: the nonces a store wrote)."""
        client = self.client()
        try:
            return client.keys(pattern)
        finally:
            client.close()


# -- processes and pids ------------------------------------------------------------

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


def watchdog_of(pid):
    """The spawn watchdog (``watchdog.py watch``) that process ``pid`` started, or None."""
    for child in children_of(pid):
        try:
            with open("/proc/%d/cmdline" % child, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[-2] == b"watch" and argv[-3].endswith(b"watchdog.py"):
            return child
    return None


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


def pids_in(directory):
    """The pids written as file names into ``directory`` (spawnchild.py's piddir), sorted."""
    return sorted(int(name) for name in os.listdir(str(directory)) if name.isdigit())


# -- fixed ports ---------------------------------------------------------------------

def _listening_sockets(port):
    """``socket:[inode]`` of the TCP sockets listening on ``port``, any local address."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                found.add("socket:[%s]" % fields[9])
    return found


def _command_line(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())
    except OSError:
        return "?"


def holders(links):
    """``{pid: the links it has open}`` of the visible processes with a file descriptor
    on one of ``links`` (``/proc/PID/fd`` targets: ``socket:[123]``, ``pipe:[456]``)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir("/proc/%s/fd" % name)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink("/proc/%s/fd/%s" % (name, fd))
            except OSError:
                continue
            if link in links:
                found.setdefault(int(name), set()).add(link)
    return found


def listeners(port):
    """Who listens on TCP ``port``: ``{pid: command line}``.  A listening socket no
    visible process holds (another user's) is there as ``{None: "..."}``."""
    sockets = _listening_sockets(port)
    if not sockets:
        return {}
    held = holders(sockets)
    found = {pid: _command_line(pid) for pid in held}
    seen = set().union(*held.values())
    if sockets - seen:
        found[None] = "a process this user cannot see"
    return found


def _describe(found):
    return ", ".join("%s (%s)" % ("pid %d" % pid if pid else "unknown", command)
                     for pid, command in sorted(found.items(), key=lambda i: i[0] or 0))


def require_free_port(port, who):
    """Fail the test, saying why, when something listens on the fixed ``port`` that
    ``who`` needs (rather than talk to whatever it is)."""
    taken = listeners(port)
    if taken:
        pytest.fail("port %d is taken by %s; %s needs it: stop that process and run this "
                    "test again" % (port, _describe(taken), who), pytrace=False)


def _group_of(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def wait_for_listener(port, process, timeout=30.0):
    """Block until ``process`` (a Popen leading its own process group) or one of its group
    listens on the fixed ``port``; nothing is connected to before that.

    Fails the test when another process listens there; RuntimeError when ``process``
    exits first, TimeoutError after ``timeout``.  Returns the listening pids.
    """
    deadline = time.monotonic() + timeout
    while True:
        exited = process.poll() is not None
        found = listeners(port)
        ours = sorted(pid for pid in found if pid is not None and _group_of(pid) == process.pid)
        strangers = {pid: command for pid, command in found.items() if pid not in ours}
        if strangers:
            pytest.fail("port %d is taken by %s, not by the process the test started (pid %d)"
                        % (port, _describe(strangers), process.pid), pytrace=False)
        if ours:
            return ours
        if exited:
            raise RuntimeError("process exited with %s before listening on %d"
                               % (process.returncode, port))
        if time.monotonic() > deadline:
            raise TimeoutError("nothing listening on port %d after %gs" % (port, timeout))
        time.sleep(0.05)
