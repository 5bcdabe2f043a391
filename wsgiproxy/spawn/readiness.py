"""Starting a child until it is ready: its port, port probes, the health probe.

A child is ready when its port accepts connections and the listening socket
is its own (or, where /proc cannot tell, nobody else's), and -- with
``health_path`` -- when ``GET health_path`` answers 2xx or 3xx.  The health
probe goes through a :class:`~wsgiproxy.app.WSGIProxyApp` with the
children's own options, so it is signed like every request.  A child that
exits before it is ready because another process took its port is started
again on another one.
"""

from __future__ import annotations

import functools
import io
import logging
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..app import WSGIProxyApp
from ..errors import ShuttingDown, StartFailed
from ..transport import Transport
from .process import Child, Command, listener_owner

__all__ = ["LOOPBACK", "Registry", "Starter", "accepts", "free_port", "port_taken"]

LOOPBACK = "127.0.0.1"
#: How many other ports are tried when a child could not bind the one it was given.
PORT_ATTEMPTS = 5
#: Seconds a child must stay alive before a port it does not listen on itself
#: (but a process outside its group does) is taken as its own.
FOREIGN_LISTENER_GRACE = 3.0
_PROBE_INTERVAL = 0.05
_PROBE_TIMEOUT = 2.0  # seconds a health probe may take
# How a wait for readiness ends.
READY, EXITED, TIMEOUT, CLOSED = "ready", "exited", "timeout", "closed"
log = logging.getLogger("wsgiproxy.spawn")


# -- ports ----------------------------------------------------------------------

def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_taken(port: int) -> bool:
    """True when something else listens on ``port`` (a TIME_WAIT leftover does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def accepts(port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``port`` succeeds within ``timeout`` seconds."""
    try:
        socket.create_connection((LOOPBACK, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _listener_is_childs(child: Child) -> bool:
    """Whether the socket on ``child.port`` may be taken as the child's.

    A socket we can see belongs to a process outside the child's group counts
    only once the child has lived a while: a child may legitimately hand the
    port to a helper (Docker's, for one).
    """
    owner = listener_owner(child.port, child.pid)
    if owner == "foreign" and time.monotonic() - child.started < FOREIGN_LISTENER_GRACE:
        return False
    child.listener_checked = True  # once is enough, e.g. while health_path fails
    return True


# -- the health probe -------------------------------------------------------------

def _probe_proxy(href: str, proxy_options: Mapping[str, Any]) -> WSGIProxyApp:
    """A WSGIProxyApp for health probes: the children's options, short timeouts, no pool."""
    options = dict(proxy_options)
    if not isinstance(options.get("transport"), Transport):
        options.update(connect_timeout=_PROBE_TIMEOUT, read_timeout=_PROBE_TIMEOUT,
                       pool_size=0)
    return WSGIProxyApp(href, **options)


def _healthy(probe_proxy: WSGIProxyApp, href: str, path: str) -> bool:
    """Does ``GET path`` through ``probe_proxy`` answer 2xx or 3xx?

    The probe goes through the same proxy code and options as requests do, so
    it is signed alike: a child behind a middleware that requires signatures
    answers it.
    """
    path_info, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path_info,
        "QUERY_STRING": query, "SERVER_NAME": LOOPBACK, "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": LOOPBACK, "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    status = []
    try:
        body = probe_proxy(environ, lambda s, headers, exc_info=None: status.append(s))
        try:
            for _ in body:
                pass
        finally:
            if hasattr(body, "close"):
                body.close()
    except Exception as exc:  # noqa: BLE001 -- a probe that fails: the child is not ready yet
        log.debug("health probe of %s failed: %s", href, exc)
        return False
    return bool(status) and 200 <= int(status[-1][:3]) < 400


# -- one start ----------------------------------------------------------------------

class Registry(Protocol):
    """Where a starting child is registered (the supervisor), so that closing finds it."""

    @property
    def closed(self) -> bool:
        """True once the children are being stopped for good."""

    def adopt(self, launch: Callable[[], Child]) -> Child:
        """``launch()`` unless closed, register the child, and start watching it."""


class Starter:
    """Starts the child of a slot and waits until it is ready.

    :param command: what to run.
    :param proxy_options: the options of the children's :class:`~wsgiproxy.app.WSGIProxyApp`
        (its health probes use them too).
    :param spawned_port: the first slot's fixed port; None: a free port each start.
    :param start_timeout: seconds a start may take.
    :param health_path: the path probed for readiness; None: accepting connections is enough.
    :param stop: stops children (SIGTERM, SIGKILL after a while) and waits for them.
    :param log: where lifecycle events go.
    """

    def __init__(self, command: Command, proxy_options: Mapping[str, Any],
                 spawned_port: int | None, start_timeout: float, health_path: str | None,
                 stop: Callable[[Sequence[Child]], None], log: logging.Logger) -> None:
        self.command = command
        self.proxy_options = dict(proxy_options)
        self.spawned_port = spawned_port
        self.start_timeout = start_timeout
        self.health_path = health_path
        self.stop = stop
        self.log = log

    def __call__(self, index: int, registry: Registry) -> Child:
        """Start the child of slot ``index``; returns it once it is ready.

        :raises StartFailed: it could not be run, exited, or was not ready in time.
        :raises ShuttingDown: the registry was closed meanwhile.
        """
        deadline = time.monotonic() + self.start_timeout
        attempts = 0
        while True:
            port = (self.spawned_port + index) if self.spawned_port else free_port()
            href = "http://%s:%d" % (LOOPBACK, port)
            child = registry.adopt(functools.partial(self.command.launch, index, port, self.log))
            outcome = self._wait_ready(child, href, deadline, registry)
            if outcome == READY:
                self.log.info("%s: ready on port %d", child.label, port)
                return child
            if outcome == CLOSED:
                self.stop([child])
                raise ShuttingDown()
            if outcome == EXITED:
                lines = child.stderr_lines()
                if (not self.spawned_port and attempts < PORT_ATTEMPTS and port_taken(port)
                        and time.monotonic() < deadline):
                    attempts += 1
                    self.log.warning("%s %s; port %d is taken by another process, "
                                     "trying another port", child.label,
                                     child.describe_exit(), port)
                    continue
                reason = "it %s before it was ready on port %d" % (child.describe_exit(), port)
            else:
                what = ("answer GET %s with 2xx/3xx" % self.health_path if self.health_path
                        else "accept connections on port %d" % port)
                reason = "it did not %s within %g s" % (what, self.start_timeout)
                self.stop([child])
                lines = child.stderr_lines()
            self.log.error("%s: start failed: %s; last stderr lines:\n%s", child.label, reason,
                           "\n".join(lines) if lines else "(none)")
            raise StartFailed(reason)

    def _wait_ready(self, child: Child, href: str, deadline: float, registry: Registry) -> str:
        """READY, EXITED, TIMEOUT or CLOSED."""
        probe_proxy: WSGIProxyApp | None = None
        healthy: Callable[[], bool] | None = None
        if self.health_path:
            probe_proxy = _probe_proxy(href, self.proxy_options)
            healthy = functools.partial(_healthy, probe_proxy, href, self.health_path)
        try:
            while True:
                if child.dead:
                    return EXITED
                if registry.closed:
                    return CLOSED
                left = deadline - time.monotonic()
                if left <= 0:
                    return TIMEOUT
                probe = min(2.0, max(0.05, left))
                # The port might be someone else's (taken between our check and
                # the child's bind, and the child is about to fail).
                if (accepts(child.port, probe)
                        and (child.listener_checked or _listener_is_childs(child))
                        and (healthy is None or healthy())):
                    return EXITED if child.dead else READY
                child.exited.wait(min(_PROBE_INTERVAL, max(0.0, deadline - time.monotonic())))
        finally:
            if probe_proxy is not None:
                probe_proxy.close()
