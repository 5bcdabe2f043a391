"""SpawningApplication: start backend processes on demand and forward requests to them.

A :class:`SpawningApplication` is a WSGI app that owns one or more child
processes (any program that speaks HTTP on a loopback port).  The first
request starts a child; requests are then forwarded by one
:class:`~wsgiproxy.app.WSGIProxyApp` whose :class:`~wsgiproxy.balancer.Balancer`
chooses among the running children -- the one proxy implementation and the
one balancer, so the children see the same ``X-Forwarded-*`` headers, keys
and signature as any backend behind ``egg:WSGIProxy#main``, and a request
fails over from one child to another by the same rules.  The children are supervised: stopped
when idle, started again after a crash (with back-off when they keep failing
to start), and stopped with their whole process group at exit, on SIGTERM
or on :meth:`SpawningApplication.close`; and they die with the process that
started them, however it dies.
"""

# The package, from the bottom up:
#   watchdog.py    run, not imported: ties a new child to us, and stops what we leave
#   lifeline.py    starting children tied to our life: launcher thread, watchdog, lifeline
#   process.py     one child process: command, start, output, stop, /proc
#   readiness.py   starting a child until it is ready: ports and probes
#   supervisor.py  the slots and their states; exit, SIGTERM and fork
#   __init__.py    SpawningApplication, the WSGI face

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ..app import WSGIProxyApp
from ..errors import ConfigError, WSGIProxyError, check_number
from ..responses import error_answer
from .process import PORT_PLACEHOLDER, Command, parse_env, split_command, stop_children
from .readiness import LOOPBACK, Starter
from .supervisor import Supervisor, register

__all__ = ["SpawningApplication"]

#: The options of the balancer over the children, not of the WSGIProxyApp.
BALANCE_OPTIONS = ("balance", "max_fails", "fail_timeout", "next_upstream",
                   "next_upstream_tries", "next_upstream_timeout", "retry_budget")


class SpawningApplication:
    """A WSGI app that starts a backend process on the first request and forwards to it.

    :param start_script: the command that runs the backend in the foreground,
        as a list of arguments or a string split like a shell command line
        (:func:`shlex.split`; no shell is involved).  Every ``__PORT__`` in
        it is replaced by the port the child must listen on, on 127.0.0.1.
        Any program works, not only Python.  A bare command name is looked
        up on ``PATH``, then next to the running Python (so the console
        scripts of our virtualenv work without activating it).  To use shell
        features, say so:
        ``sh -c 'exec myserver --port __PORT__ 2>&1'``.
    :param cwd: the child's working directory (default: ours).
    :param script_env: environment variables added to ours for the child: a
        dict, a list of ``NAME=VALUE`` strings, or a string of them
        (``A=1 B="two words"``).  ``__PORT__`` is replaced in the values too.
        ``PYTHONUNBUFFERED=1`` is set unless given, so Python children log
        line by line.
    :param spawned_port: the port for the child; by default a free loopback
        port is picked for each start (and another one tried if the child
        could not bind it).  With ``workers > 1`` the children get
        consecutive ports from this one.
    :param idle_shutdown: stop a child after this many seconds without a
        request (``None`` or 0: never).  A request in flight -- until its
        response has been sent to the end -- keeps the child alive.
    :param logger: a :class:`logging.Logger` or a logger name; default
        ``wsgiproxy.spawn``.  The children's stdout and stderr lines are
        logged to it at INFO level, and their lifecycle events.
    :param start_timeout: seconds a start may take before the child is
        considered failed (it is stopped, and requests get 503).
    :param health_path: if given, a child is ready only when ``GET
        health_path`` answers 2xx or 3xx; otherwise when it accepts TCP
        connections.
    :param stop_timeout: seconds between SIGTERM and SIGKILL when stopping
        (also when the watchdog stops the children because this process died).
    :param workers: how many children at most.  A child is started when
        every running one has more requests in flight than it (so the first
        request starts one, and the load starts more); otherwise the
        balancer chooses among the running children (:doc:`backends`).
    :param balance: as for :class:`~wsgiproxy.app.WSGIProxyApp`, but
        ``"least_conn"`` by default (the choice before it was an option);
        ``max_fails``, ``fail_timeout``, ``next_upstream``,
        ``next_upstream_tries``, ``next_upstream_timeout`` and
        ``retry_budget`` too, over the running children.
    :param restart_backoff: seconds to wait before starting again a child
        that failed to start; doubled after each further failure in a row,
        up to ``max_backoff``.  0 turns back-off off.
    :param max_backoff: the longest wait between failed starts.
    :param handle_signals: stop the children on SIGTERM (then chain to the
        previous handler; the default action terminates the process).  Only
        possible when the app is created in the main thread.  With
        ``False`` the children are still stopped at a normal interpreter
        exit.
    :param options: everything else goes to the :class:`~wsgiproxy.app.WSGIProxyApp`
        that forwards to the children (``secret_file``, ``string_keys``...,
        ``preserve_host``, ``forwarded``, ``read_timeout``,
        ``connect_timeout``, ``pool_size``, ``transport``...); only ``href``
        is chosen here.
    """

    def __init__(self, start_script: str | Iterable[object],
                 cwd: str | None = None,
                 script_env: Mapping[str, object] | Iterable[str] | str | None = None,
                 spawned_port: int | None = None, idle_shutdown: float | None = None,
                 logger: logging.Logger | str | None = None, start_timeout: float = 30.0,
                 health_path: str | None = None, stop_timeout: float = 10.0, workers: int = 1,
                 restart_backoff: float = 1.0, max_backoff: float = 60.0,
                 handle_signals: bool = True, balance: str = "least_conn",
                 **options: Any) -> None:
        argv = split_command(start_script)
        if "href" in options:
            raise TypeError("SpawningApplication chooses href itself (the child's port)")
        self.stop_timeout = float(stop_timeout)
        self.command = Command(argv, cwd, parse_env(script_env), self.stop_timeout)
        self.argv, self.cwd, self.script_env = self.command.argv, cwd, self.command.env
        if spawned_port is None and not self.command.mentions_port:
            raise ValueError("start_script (or a script_env value) must contain %s so the "
                             "child knows its port, or give spawned_port"
                             % PORT_PLACEHOLDER)
        self.spawned_port = int(spawned_port) if spawned_port else None
        self.idle_shutdown = float(idle_shutdown) if idle_shutdown else None
        self.start_timeout = float(start_timeout)
        self.health_path = health_path or None
        if self.health_path and not self.health_path.startswith("/"):
            raise ValueError("health_path must start with '/': %r" % health_path)
        self.workers = int(workers)
        self.restart_backoff = float(restart_backoff)
        self.max_backoff = float(max_backoff)
        check_number("start_timeout", self.start_timeout, positive=True)
        check_number("stop_timeout", self.stop_timeout)
        check_number("workers", self.workers, positive=True)
        check_number("restart_backoff", self.restart_backoff)
        if self.max_backoff < self.restart_backoff:
            raise ConfigError("max_backoff", "must be restart_backoff (%s) or more, not %s"
                              % (self.restart_backoff, self.max_backoff))
        if self.idle_shutdown is not None:
            check_number("idle_shutdown", self.idle_shutdown)
        if isinstance(logger, str):
            logger = logging.getLogger(logger)
        self.log = logger or logging.getLogger("wsgiproxy.spawn")
        balance_options = {name: options.pop(name) for name in BALANCE_OPTIONS[1:]
                           if name in options}
        balance_options["balance"] = balance
        self.proxy_options = options
        # The one proxy for every child: its Host is 127.0.0.1 (the port changes).
        self._proxy = WSGIProxyApp("http://%s" % LOOPBACK, **options)
        self._proxy.location_any_port = True
        self.handle_signals = bool(handle_signals)
        stop = functools.partial(stop_children, timeout=self.stop_timeout, log=self.log)
        starter = Starter(self.command, options, self.spawned_port, self.start_timeout,
                          self.health_path, stop, self.log)
        self._supervisor = Supervisor(
            self.workers, starter, stop, start_timeout=self.start_timeout,
            stop_timeout=self.stop_timeout, idle_shutdown=self.idle_shutdown,
            restart_backoff=self.restart_backoff, max_backoff=self.max_backoff, log=self.log,
            balance_options=balance_options)
        self._proxy.balancer = self._supervisor.balancer
        register(self._supervisor, self.handle_signals)

    def __repr__(self) -> str:
        return "<SpawningApplication %s (%d worker%s)>" % (
            " ".join(self.argv), self.workers, "" if self.workers == 1 else "s")

    @property
    def pids(self) -> list[int]:
        """Process ids of the children that are running or starting, in slot order."""
        return self._supervisor.pids

    @property
    def ports(self) -> list[int]:
        """Ports of the children that are ready, in slot order."""
        return self._supervisor.ports

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        supervisor = self._supervisor
        proxy = self._proxy
        try:
            slot = supervisor.choose()
            if slot is not None:  # the load needs this child: start it, or wait for it
                try:
                    supervisor.acquire(slot)
                finally:
                    supervisor.release(slot)
        except WSGIProxyError as exc:  # the one place an error becomes an answer
            return error_answer(environ, start_response, exc)
        if proxy.balancer is not supervisor.balancer:  # a new one after fork
            proxy.balancer = supervisor.balancer
        # The balancer chooses among the running children, counting the request in
        # the one it sends to until the body is closed.
        return proxy(environ, start_response)

    def close(self) -> None:
        """Stop every child (SIGTERM to its group, SIGKILL after ``stop_timeout``) and wait.

        Later requests are answered 503.  Called at interpreter exit and,
        with ``handle_signals``, on SIGTERM.
        """
        self._supervisor.close()
        self._proxy.close()
