"""What the proxies and the middleware observe of each request: access log lines, request ids.

One :class:`Observer` per proxy (or middleware) decides, once per request,
whether anything observes it (:meth:`Observer.start`): the ``wsgiproxy.access``
logger enabled for INFO, or metrics.  When nothing does, the request costs a
method call and ``isEnabledFor``; otherwise a :class:`Record` collects the
client, method, target, status, bytes sent, the backend, attempts and the
connect / first-byte / total times, and is written when the response body is
closed (a stream: when it ends).

:class:`RequestIds` keeps a trusted sender's ``X-Request-ID`` or makes one,
and can return it to the client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .keys import new_request_id
from .protocol import REQUEST_ID, TrustedNetworks, check_request_id, environ_key
from .transport import HTTPTransport, connect_timing

__all__ = ["ACCESS_LOG", "DEFAULT_FORMAT", "FIELDS", "SINKS", "Observer", "Record", "RequestIds",
           "check_format", "event"]

#: The access log: one INFO line per request.
ACCESS_LOG = logging.getLogger("wsgiproxy.access")
#: The fields an ``access_log_format`` can name (``{name}``); ``-`` when unknown.
FIELDS = ("client", "method", "target", "status", "bytes", "backend", "attempts",
          "connect_ms", "first_byte_ms", "total_ms", "request_id", "side")
#: The default ``access_log_format`` (``str.format`` style: ``%`` would clash with the
#: ``%(here)s`` interpolation of ``.ini`` files).
DEFAULT_FORMAT = ('{side} {client} "{method} {target}" {status} {bytes} backend={backend} '
                  'attempts={attempts} connect_ms={connect_ms} first_byte_ms={first_byte_ms} '
                  'total_ms={total_ms} request_id={request_id}')
#: The environ key holding the request id (both sides).
REQUEST_ID_KEY = "wsgiproxy.request_id"
_REQUEST_ID_ENVIRON = environ_key(REQUEST_ID)
_REQUEST_ID_LOWER = REQUEST_ID.lower()
_INFO = logging.INFO
StartResponse = Callable[..., Any]
#: Where finished records and events go besides the log: the metrics once
#: :func:`wsgiproxy.metrics.enable` ran (objects with ``record()`` and ``event()``).
SINKS: list[Any] = []


def event(name: str, label: str = "") -> None:
    """A rare event for the metrics: ``ejection`` (label: the backend), ``refusal``
    (the reason), ``spawn`` (``started``, ``crashed``, ``restarted``), ``tunnel``
    (``open``, ``closed``).  Nothing happens while metrics are off."""
    for sink in SINKS:
        sink.event(name, label)


def check_format(text: str) -> str:
    """``text`` if it formats the access log's fields (``{client}``...), else ``ValueError``."""
    try:
        text.format_map(dict.fromkeys(FIELDS, "-"))
    except KeyError as exc:
        raise ValueError("access_log_format names an unknown field %s (known: %s)"
                         % (exc, ", ".join(FIELDS))) from None
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        raise ValueError("access_log_format must name fields as {client}, {status}...: %s"
                         % exc) from None
    return text


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else "%.1f" % (seconds * 1000.0)


class Observer:
    """The access log (and the metrics) of one proxy or middleware.

    :param access_log: write a line per request to ``wsgiproxy.access`` (at INFO:
        it appears only where logging lets that logger's INFO through).
    :param access_log_format: a ``str.format`` string over :data:`FIELDS` (``{client}``...).
    :param side: ``proxy`` or ``backend``: the ``side`` field.
    :param ids: the request ids of the same proxy or middleware (kept here, so
        that the one holds a single attribute for both), or None.

    The metrics (:data:`SINKS`) see every request once they are enabled.
    """

    def __init__(self, access_log: bool = True, access_log_format: str | None = None,
                 side: str = "proxy", ids: RequestIds | None = None) -> None:
        #: The request ids (:class:`RequestIds`), or ``None``: off.
        self.ids = ids
        self.log = ACCESS_LOG if access_log else None
        self.format = check_format(access_log_format or DEFAULT_FORMAT)
        self.side = side
        #: ``quiet.get(logging.INFO) is False`` (a C call, no Python frame): the log surely
        #: wants nothing now.  The logger's own cache of ``isEnabledFor`` (cleared by
        #: logging whenever a level changes), or a constant when the log is off; any
        #: other answer only means :meth:`start` must look.
        self.quiet: dict[int, bool] = {_INFO: False}
        if self.log is not None:
            cache = getattr(self.log, "_cache", None)
            self.quiet = cache if isinstance(cache, dict) else {}

    def start(self, environ: dict[str, Any]) -> Record | None:
        """A :class:`Record` for this request, or ``None`` when nothing observes it now."""
        if (self.log is None or not self.log.isEnabledFor(_INFO)) and not SINKS:
            return None
        return Record(self, environ)


class Record:
    """One request as observed: filled while it is forwarded, written by :meth:`finish`."""

    __slots__ = ("observer", "environ", "started", "status", "bytes", "backend", "attempts",
                 "connect", "first_byte", "duration", "idle", "open", "pool", "finished")

    def __init__(self, observer: Observer, environ: dict[str, Any]) -> None:
        self.observer = observer
        self.environ = environ
        self.started = time.monotonic()
        self.status: str | None = None
        self.bytes = 0
        self.backend: str | None = None
        self.attempts = 0
        self.connect: float | None = None
        self.first_byte: float | None = None
        self.duration: float | None = None
        #: Idle pooled connections to the backend, once finished (for the metrics).
        self.idle: int | None = None
        self.open: int | None = None
        self.pool: tuple[Any, tuple[str, str, int]] | None = None  # (transport, pool key)
        self.finished = False

    def start_response(self, start_response: StartResponse) -> StartResponse:
        """``start_response``, noting the status it is given."""
        def observed(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            self.status = status
            if self.first_byte is None:
                self.first_byte = time.monotonic() - self.started
            return start_response(status, headers, exc_info)
        return observed

    def sender(self, base: Callable[..., Any]) -> Callable[..., Any]:
        """``base`` (a :func:`~wsgiproxy.forwarding.send` of one try), noting each try's
        backend, the connect time of a new connection and the time to the answer's head."""
        def observed(transport: Any, scheme: str, host: str, port: Any, *args: Any,
                     **kwargs: Any) -> Any:
            self.attempts += 1
            self.backend = "%s:%s" % ("[%s]" % host if ":" in host else host, port)
            connect_timing.seconds = None
            self.pool = (transport, (scheme, host.strip("[]"), port))
            try:
                return base(transport, scheme, host, port, *args, **kwargs)
            finally:
                self.connect = getattr(connect_timing, "seconds", None)
                self.first_byte = time.monotonic() - self.started
        return observed

    def body(self, body: Iterable[bytes]) -> ObservedBody:
        """The response body, counted; closing it writes the record."""
        return ObservedBody(body, self)

    def fields(self) -> dict[str, Any]:
        """The :data:`FIELDS` of this request."""
        environ = self.environ
        query = environ.get("QUERY_STRING")
        target = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) or "/"
        return {
            "side": self.observer.side,
            "client": environ.get("REMOTE_ADDR") or "-",
            "method": environ.get("REQUEST_METHOD") or "-",
            "target": target + "?" + query if query else target,
            "status": self.status.split(" ", 1)[0] if self.status else "-",
            "bytes": self.bytes,
            "backend": self.backend or "-",
            "attempts": self.attempts if self.backend else "-",
            "connect_ms": _ms(self.connect),
            "first_byte_ms": _ms(self.first_byte),
            "total_ms": _ms(self.duration),
            "request_id": environ.get(REQUEST_ID_KEY) or "-",
        }

    def finish(self) -> None:
        """Write the access log line (and the metrics), once."""
        if self.finished:
            return
        self.finished = True
        self.duration = time.monotonic() - self.started
        observer = self.observer
        fields = self.fields()
        if observer.log is not None and observer.log.isEnabledFor(_INFO):
            observer.log.info("%s", observer.format.format_map(fields), extra={"access": fields})
        if SINKS:
            if self.pool is not None and isinstance(self.pool[0], HTTPTransport):
                scheme, host, port = self.pool[1]
                key = (scheme, host, int(port))
                self.idle = self.pool[0].idle_connections(key)
                self.open = self.pool[0].open_connections(key)
            for sink in SINKS:
                sink.record(self, fields)


class ObservedBody:
    """A response body that counts what it yields and finishes its record when closed."""

    __slots__ = ("body", "record")

    def __init__(self, body: Iterable[bytes], record: Record) -> None:
        self.body = body
        self.record = record

    def __iter__(self) -> Iterator[bytes]:
        record = self.record
        for chunk in self.body:
            record.bytes += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.record.finish()


class RequestIds:
    """Request ids: kept from a trusted sender, made otherwise, optionally returned.

    :param trusted: whose ``X-Request-ID`` is kept (a test of ``REMOTE_ADDR``, e.g.
        :class:`~wsgiproxy.protocol.TrustedNetworks`), or None: nobody's.
    :param respond: also send ``X-Request-ID`` back to the client.
    """

    def __init__(self, trusted: TrustedNetworks | None = None, respond: bool = False) -> None:
        self.trusted = trusted
        self.respond = respond

    def incoming(self, environ: dict[str, Any]) -> str | None:
        """The request's own ``X-Request-ID`` if its peer is trusted and it is well formed."""
        value = environ.get(_REQUEST_ID_ENVIRON)
        if value is None or self.trusted is None or environ.get("REMOTE_ADDR") not in self.trusted:
            return None
        return check_request_id(value.strip(" \t"))

    @staticmethod
    def assign(environ: dict[str, Any], request_id: str | None) -> str:
        """Put ``request_id`` (a new one for None) in the environ; return it."""
        if request_id is None:
            request_id = new_request_id()
        environ[REQUEST_ID_KEY] = request_id
        return request_id

    @staticmethod
    def start_response(environ: dict[str, Any], start_response: StartResponse) -> StartResponse:
        """``start_response`` adding ``X-Request-ID`` (the environ's) to the answer."""
        def with_id(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            request_id = environ.get(REQUEST_ID_KEY)
            if request_id:
                headers = [h for h in headers if h[0].lower() != _REQUEST_ID_LOWER]
                headers.append((REQUEST_ID, request_id))
            return start_response(status, headers, exc_info)
        return with_id
