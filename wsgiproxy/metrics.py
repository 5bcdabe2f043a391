"""Prometheus metrics of the proxies, the middleware and spawn (``pip install WSGIProxy[metrics]``).

Nothing is counted until :func:`enable` runs (the ``metrics = true`` option,
or loading ``egg:WSGIProxy#metrics``): before that, a request pays one check
of an empty list (:data:`wsgiproxy.observe.SINKS`).  Every family is named
``wsgiproxy_...``; docs/operations.rst lists them.

Under a server with several worker processes (``gunicorn -w N``), set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the server starts:
``prometheus_client`` then keeps each process's values in files there, and
:func:`metrics_app` adds them up whichever worker answers the scrape.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any

from . import observe

__all__ = ["Metrics", "enable", "metrics_app"]

_METHODS = frozenset(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
_lock = threading.Lock()
_metrics: Metrics | None = None


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ValueError("metrics need the prometheus-client package: pip install "
                         "'WSGIProxy[metrics]' (or prometheus-client)") from None
    return prometheus_client


class Metrics:
    """The metric families, and what fills them: :meth:`record` (one per request) and
    :meth:`event` (ejections, refusals, spawn, tunnels).

    :param registry: where the families are registered (prometheus-client's default one).
    """

    def __init__(self, registry: Any = None) -> None:
        prom = _prometheus()
        kw = {} if registry is None else {"registry": registry}
        self.requests = prom.Counter(
            "wsgiproxy_requests", "Requests answered, by side (proxy or backend), backend "
            "host:port, method (other for uncommon ones) and status class",
            ["side", "backend", "method", "status"], **kw)
        self.connect = prom.Histogram(
            "wsgiproxy_upstream_connect_seconds", "Time to open a new backend connection "
            "(TLS included); pooled connections are not counted", ["backend"], **kw)
        self.first_byte = prom.Histogram(
            "wsgiproxy_upstream_first_byte_seconds", "Time from the request's arrival to the "
            "backend's answer (head and first body bytes)", ["backend"], **kw)
        self.total = prom.Histogram(
            "wsgiproxy_request_duration_seconds", "Time from the request's arrival until its "
            "answer was sent (the body closed)", ["side", "backend"], **kw)
        self.retries = prom.Counter(
            "wsgiproxy_retries", "Requests sent again to another backend, by the backend "
            "that answered in the end", ["backend"], **kw)
        self.ejections = prom.Counter(
            "wsgiproxy_backend_ejections", "Backends taken out after failures (max_fails)",
            ["backend"], **kw)
        self.refusals = prom.Counter(
            "wsgiproxy_signature_refusals", "Requests the middleware refused, by reason "
            "(missing, bad signature, expired, replayed, ...)", ["reason"], **kw)
        self.spawn = prom.Counter(
            "wsgiproxy_spawn_children", "Spawned children: started, crashed (exited "
            "unexpectedly), restarted (started again after a crash)", ["event"], **kw)
        self.tunnels = prom.Gauge(
            "wsgiproxy_tunnels_open", "WebSocket (Upgrade) tunnels open", [],
            multiprocess_mode="livesum", **kw)
        self.pool = prom.Gauge(
            "wsgiproxy_pool_idle_connections", "Idle keep-alive backend connections in the "
            "pool, as of the latest request", ["backend"], multiprocess_mode="livesum", **kw)
        self.pool_open = prom.Gauge(
            "wsgiproxy_pool_open_connections", "Backend connections open (idle or in use), "
            "as of the latest request", ["backend"], multiprocess_mode="livesum", **kw)

    def record(self, record: observe.Record, fields: dict[str, Any]) -> None:
        """Count one finished request (:meth:`wsgiproxy.observe.Record.finish` calls it)."""
        side = fields["side"]
        backend = fields["backend"] if side != "exact" else "-"  # any host: not a label
        method = fields["method"] if fields["method"] in _METHODS else "other"
        status = fields["status"]
        status_class = status[0] + "xx" if status[:1].isdigit() else "none"
        self.requests.labels(side, backend, method, status_class).inc()
        if record.connect is not None:
            self.connect.labels(backend).observe(record.connect)
        if record.backend is not None and record.first_byte is not None:
            self.first_byte.labels(backend).observe(record.first_byte)
            if record.attempts > 1:
                self.retries.labels(backend).inc(record.attempts - 1)
        if record.duration is not None:
            self.total.labels(side, backend).observe(record.duration)
        if record.idle is not None:
            self.pool.labels(backend).set(record.idle)
        if record.open is not None:
            self.pool_open.labels(backend).set(record.open)

    def event(self, name: str, label: str) -> None:
        """Count a rare event (:func:`wsgiproxy.observe.event`)."""
        if name == "ejection":
            self.ejections.labels(label).inc()
        elif name == "refusal":
            self.refusals.labels(label).inc()
        elif name == "spawn":
            self.spawn.labels(label).inc()
        elif name == "tunnel":
            self.tunnels.inc(1 if label == "open" else -1)


def enable() -> Metrics:
    """Start counting, in this process (once; later calls return the same :class:`Metrics`).

    :raises ValueError: when prometheus-client is not installed.
    """
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics()
            observe.SINKS.append(_metrics)
        return _metrics


def metrics_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A WSGI app answering every request with the metrics, in Prometheus' text format.

    With ``PROMETHEUS_MULTIPROC_DIR`` set, the values of every process that
    wrote there (``gunicorn -w N``: all the workers).
    """
    prom = _prometheus()
    from prometheus_client import multiprocess
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = prom.REGISTRY
    data = prom.generate_latest(registry)
    start_response("200 OK", [("Content-Type", prom.CONTENT_TYPE_LATEST),
                              ("Content-Length", str(len(data)))])
    return [data]
