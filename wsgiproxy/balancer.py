"""Several backends behind one proxy: choosing one, passive health, safe failover.

A :class:`Balancer` holds the state of a proxy's backends (requests in
flight, recent failures, who is out) and sends a finished request
(:data:`~wsgiproxy.forwarding.OutgoingRequest`, the same for every backend)
with :func:`~wsgiproxy.forwarding.send`, trying the next backend when that
is safe.  One balancer is shared by all the threads of a process: its state
changes under one lock, held for a few lines, never while sending.

The rules, nginx's where nginx has one (``upstream``, ``max_fails``,
``fail_timeout``, ``proxy_next_upstream*``):

* a failure is an error or a timeout (always), or an answer whose status
  ``next_upstream`` names (``http_500``...); ``max_fails`` of them within
  ``fail_timeout`` seconds take a backend out for ``fail_timeout`` seconds;
  then one request at a time tries it, and its success brings it back;
* when every backend is out, one is chosen as if none were;
* a request goes to another backend only when ``next_upstream`` names what
  happened and it can be sent again: its body is held (not streamed), and
  the method is idempotent, or no byte of it reached the backend
  (:attr:`~wsgiproxy.errors.BackendError.unsent`), or ``non_idempotent``
  was given (invariant 7);
* retries in flight stay below ``retry_budget`` percent of the requests in
  flight (at least 3 may always run), so that retries cannot multiply an
  outage; a refused retry answers with the failure itself.

A proxy with one backend has no balancer: it sends as it always did.
:class:`~wsgiproxy.spawn.SpawningApplication` gives its balancer a callable
instead of a list: the backends are its running children at each choice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    RequestTooLarge,
    ResponseTooLarge,
    check_number,
)
from .forwarding import send
from .http11 import IDEMPOTENT_METHODS
from .observe import event

if TYPE_CHECKING:
    from .forwarding import OutgoingRequest
    from .transport import Response, Transport

__all__ = ["Backend", "Balancer", "BALANCE_METHODS", "NEXT_UPSTREAM_TOKENS",
           "parse_next_upstream"]

log = logging.getLogger("wsgiproxy.balancer")

#: What sends a request to one backend: ``(transport, scheme, host, port, request)``
#: to ``(response, body)``, as :func:`~wsgiproxy.forwarding.send`.
Sender = Callable[["Transport", str, str, int, "OutgoingRequest"],
                  "tuple[Response, Iterable[bytes]]"]

BALANCE_METHODS = ("round_robin", "least_conn")

#: The answers ``next_upstream`` may name, and those that count as a backend's failure.
_STATUS_TOKENS = {"http_500": 500, "http_502": 502, "http_503": 503, "http_504": 504,
                  "http_429": 429, "http_403": 403, "http_404": 404}
_FAILURE_STATUSES = frozenset([500, 502, 503, 504, 429])

#: Every token of ``next_upstream``.
NEXT_UPSTREAM_TOKENS = frozenset(["error", "timeout", "non_idempotent", "off",
                                  *_STATUS_TOKENS])

#: The minimum number of retries in flight the budget always allows.
RETRY_BUDGET_FLOOR = 3


def parse_next_upstream(value: str | Iterable[str]) -> frozenset[str]:
    """The tokens of a ``next_upstream`` value (a space-separated string, or a list).

    :raises ValueError: for an unknown token, or ``off`` with others.
    """
    tokens = frozenset(value.split() if isinstance(value, str) else value)
    unknown = sorted(tokens - NEXT_UPSTREAM_TOKENS)
    if unknown:
        raise ConfigError("next_upstream", "unknown %s %s (known: %s)" % (
            "tokens" if len(unknown) > 1 else "token", ", ".join(unknown),
            ", ".join(sorted(NEXT_UPSTREAM_TOKENS))))
    if "off" in tokens and len(tokens) > 1:
        raise ConfigError("next_upstream", "off cannot be combined with other tokens")
    return tokens - {"off"}


def _failure_kind(exc: BackendError) -> str | None:
    """``"timeout"``, ``"error"``, or ``None`` for what is not the backend's failure."""
    if isinstance(exc, BackendTimeout):
        return "timeout"
    if isinstance(exc, (RequestTooLarge, ResponseTooLarge)):  # this side's limits
        return None
    return "error"


class Backend:
    """One backend of a :class:`Balancer` and its state (changed under the balancer's lock).

    ``name`` is ``host:port`` (for logs); ``in_flight`` its requests not
    finished yet; ``fails`` the failures since ``failed_since``; ``down_until``
    is 0 while it is in, else when it may be tried again; ``probing`` is set
    while the one request trying it again is under way.
    """

    __slots__ = ("host", "port", "name", "in_flight", "fails", "failed_since", "down_until",
                 "probing", "requests")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.name = "%s:%d" % ("[%s]" % host if ":" in host else host, port)
        self.in_flight = 0
        self.fails = 0
        self.failed_since = 0.0
        self.down_until = 0.0
        self.probing = False
        self.requests = 0  # tries sent to it, for tests and curious operators

    def __repr__(self) -> str:
        state = "out" if self.down_until else "in"
        return "<Backend %s %s, %d in flight>" % (self.name, state, self.in_flight)


class Balancer:
    """Sends each request to one of several backends; fails over when it is safe.

    :param backends: ``(host, port)`` of each backend, at least two; or a
        callable returning the :class:`Backend` objects to choose among now
        (called under ``lock``; an empty list: nothing to send to).
    :param balance: ``"round_robin"`` or ``"least_conn"`` (fewest requests in
        flight, ties in turn).
    :param max_fails: failures within ``fail_timeout`` that take a backend
        out (0: never).
    :param fail_timeout: seconds the failures are counted over, and how long
        a backend stays out.
    :param next_upstream: what sends a request to the next backend
        (:func:`parse_next_upstream`).
    :param next_upstream_tries: tries at most, the first one included (0:
        each backend once).
    :param next_upstream_timeout: seconds after the first try within which
        another may start (0: no limit).
    :param retry_budget: retries in flight, as a percentage of the requests
        in flight, beyond a floor of 3.
    :param clock: seconds, monotonic (tests pass their own).
    :param lock: the lock the state changes under (with a callable
        ``backends``, its owner's, so that the choice and its list agree).
    """

    def __init__(self, backends: Sequence[tuple[str, int]] | Callable[[], Sequence[Backend]],
                 balance: str = "round_robin",
                 max_fails: int = 1, fail_timeout: float = 10.0,
                 next_upstream: str | Iterable[str] = "error timeout",
                 next_upstream_tries: int = 0, next_upstream_timeout: float = 0.0,
                 retry_budget: float = 20.0,
                 clock: Callable[[], float] = time.monotonic,
                 lock: Any = None) -> None:
        if callable(backends):
            self.backends: list[Backend] = []
            self._candidates: Callable[[], Sequence[Backend]] | None = backends
        elif len(backends) < 2:
            raise ValueError("a Balancer needs at least two backends")
        else:
            self.backends = [Backend(host, int(port)) for host, port in backends]
            self._candidates = None
        if balance not in BALANCE_METHODS:
            raise ConfigError("balance", "must be one of %s, not %r"
                              % (", ".join(BALANCE_METHODS), balance))
        self.least_conn = balance == "least_conn"
        self.max_fails = int(max_fails)
        self.fail_timeout = float(fail_timeout)
        self.tries = int(next_upstream_tries)
        self.timeout = float(next_upstream_timeout)
        self.retry_budget = float(retry_budget)
        check_number("max_fails", self.max_fails)
        check_number("fail_timeout", self.fail_timeout, positive=True)
        check_number("next_upstream_tries", self.tries)
        check_number("next_upstream_timeout", self.timeout)
        check_number("retry_budget", self.retry_budget)
        tokens = parse_next_upstream(next_upstream)
        self.on_error = "error" in tokens
        self.on_timeout = "timeout" in tokens
        self.non_idempotent = "non_idempotent" in tokens
        self.retry_statuses = frozenset(_STATUS_TOKENS[t] for t in tokens if t in _STATUS_TOKENS)
        self.failure_statuses = self.retry_statuses & _FAILURE_STATUSES
        self.clock = clock
        self._lock = threading.Lock() if lock is None else lock
        self._next = 0  # where the round starts
        self.in_flight = 0  # requests
        self.retrying = 0  # retries in flight

    def __repr__(self) -> str:
        if self._candidates is not None:
            return "<Balancer over %r>" % self._candidates
        return "<Balancer %s>" % " ".join(b.name for b in self.backends)

    # -- sending ------------------------------------------------------------

    def send(self, transport: Transport, scheme: str, request: OutgoingRequest,
             sender: Sender = send) -> tuple[Response, Iterable[bytes]]:
        """Send ``request`` to a backend, and on to others while that is allowed and safe.

        Returns the response and its WSGI body, as
        :func:`~wsgiproxy.forwarding.send` does (the body must be closed: the
        request counts as in flight until then); raises the last failure.
        ``sender`` sends to one backend (:func:`~wsgiproxy.forwarding.send`;
        an upgrade request's is :func:`~wsgiproxy.forwarding.send_upgrade`
        with its protocols).
        """
        body = request[3]
        resendable = (self.non_idempotent or request[0] in IDEMPOTENT_METHODS,
                      body is None or isinstance(body, (bytes, bytearray)))
        tried: list[Backend] = []
        with self._lock:
            self.in_flight += 1
            backend = self._pick(tried, self.clock(), False)
            if backend is None:  # only with a callable list: it is empty
                self.in_flight -= 1
                raise BackendUnavailable("no backend is running")
        started = self.clock() if self.timeout else 0.0
        retry = False
        try:
            while True:
                tried.append(backend)
                try:
                    response, answer = sender(transport, scheme, backend.host, backend.port,
                                              request)
                except BackendError as exc:
                    kind = _failure_kind(exc)
                    self._attempt_done(backend, retry, kind is not None, exc, True)
                    if (kind is None or not (self.on_error if kind == "error"
                                             else self.on_timeout)
                            or not (resendable[1] and (resendable[0] or exc.unsent))):
                        raise
                    # _attempt_done ended this try's retry already: it no longer counts.
                    following = self._next_try(tried, started, False)
                    if following is None:
                        raise
                    log.debug("%s %s: %s; trying %s", request[0], request[1], exc, following.name)
                except BaseException:
                    self._attempt_done(backend, retry, False, None, True)
                    raise
                else:
                    status = response.status
                    if (status not in self.retry_statuses and not backend.probing
                            and type(answer) is list):
                        # The common case, in one step: an answer, read whole.
                        with self._lock:
                            if retry:
                                self.retrying -= 1
                            backend.in_flight -= 1
                            self.in_flight -= 1
                        return response, answer
                    failed = status in self.failure_statuses
                    following = None
                    if (status in self.retry_statuses and resendable[0] and resendable[1]):
                        following = self._next_try(tried, started, retry)
                    self._attempt_done(backend, retry, failed, status, following is not None)
                    if following is None:
                        if type(answer) is list:  # read whole: the backend is done with it
                            self._release(backend)
                            return response, answer
                        return response, _Releasing(answer, self, backend)
                    response.close()
                    log.debug("%s %s: %s answered %d; trying %s", request[0], request[1],
                             backend.name, status, following.name)
                backend = following
                retry = True
        except BaseException:
            with self._lock:
                self.in_flight -= 1
            raise

    def _next_try(self, tried: list[Backend], started: float, retry: bool) -> Backend | None:
        """The backend for one more try, reserved; ``None`` when no more may be made.

        ``retry``: the try that failed was a retry (still counted in flight,
        it must not count twice against the budget).
        """
        if self.tries and len(tried) >= self.tries:
            return None
        if self._candidates is None and len(tried) >= len(self.backends):
            return None  # (a callable list: _pick finds none left)
        now = self.clock()
        if self.timeout and now - started >= self.timeout:
            return None
        with self._lock:
            budget = max(RETRY_BUDGET_FLOOR, self.in_flight * self.retry_budget / 100.0)
            if self.retrying - retry < budget:
                self.retrying += 1
                return self._pick(tried, now, True)
            retrying = self.retrying
        log.debug("retry budget spent: %d retries in flight", retrying)
        return None

    # -- the state --------------------------------------------------------

    def _pick(self, tried: list[Backend], now: float, retry: bool) -> Backend | None:
        """Choose a backend not in ``tried`` (under the lock) and count it in flight."""
        backends = self.backends if self._candidates is None else self._candidates()
        count = len(backends)
        start = self._next
        chosen = spare = None
        for i in range(count):
            backend = backends[(start + i) % count]
            if tried and backend in tried:
                continue
            if backend.down_until and (backend.down_until > now or backend.probing):
                if spare is None or (self.least_conn and backend.in_flight < spare.in_flight):
                    spare = backend
                continue
            if not self.least_conn:
                chosen = backend
                break
            if chosen is None or backend.in_flight < chosen.in_flight:
                chosen = backend
        if chosen is None:
            chosen = spare  # every one is out: choose as if none were
            if chosen is None:
                if retry:
                    self.retrying -= 1
                return None
        elif chosen.down_until:
            chosen.probing = True  # its time out is over: this request tries it
        self._next = (backends.index(chosen) + 1) % count
        chosen.in_flight += 1
        chosen.requests += 1
        return chosen

    def _attempt_done(self, backend: Backend, retry: bool, failed: bool, what: Any,
                      release: bool) -> None:
        """Record one try's outcome: failure or success, the end of a retry, of the backend's use."""
        went_out = came_back = False
        with self._lock:
            if retry:
                self.retrying -= 1
            if release:
                backend.in_flight -= 1
            now = self.clock()
            if failed:
                if now - backend.failed_since > self.fail_timeout:
                    backend.fails = 0
                    backend.failed_since = now
                backend.fails += 1
                if self.max_fails and (backend.probing or backend.fails >= self.max_fails):
                    went_out = not backend.down_until
                    backend.down_until = now + self.fail_timeout
                backend.probing = False
            elif backend.probing:
                backend.probing = False
                if what is not None:  # an answer: it is back
                    backend.down_until = 0.0
                    backend.fails = 0
                    came_back = True
            fails = backend.fails
        if went_out:
            event("ejection", backend.name)
            log.warning("backend %s taken out for %gs after %d failure%s (last: %s)",
                        backend.name, self.fail_timeout, fails, "" if fails == 1 else "s",
                        what if isinstance(what, BackendError) else "status %s" % what)
        elif came_back:
            log.info("backend %s is back: it answered again", backend.name)

    def _release(self, backend: Backend) -> None:
        """A request is finished: its backend has one fewer in flight."""
        with self._lock:
            backend.in_flight -= 1
            self.in_flight -= 1

    def state(self) -> list[dict[str, Any]]:
        """Each backend's name, requests in flight, recent failures and whether it is out."""
        with self._lock:
            now = self.clock()
            backends = self.backends if self._candidates is None else self._candidates()
            return [{"name": b.name, "in_flight": b.in_flight, "fails": b.fails,
                     "out": bool(b.down_until) and (b.down_until > now or b.probing),
                     "requests": b.requests} for b in backends]


class _Releasing:
    """A streamed WSGI body whose request stays in flight on its backend until ``close()``."""

    __slots__ = ("body", "balancer", "backend")

    def __init__(self, body: Iterable[bytes], balancer: Balancer, backend: Backend) -> None:
        self.body = body
        self.balancer = balancer
        self.backend: Backend | None = backend

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        backend, self.backend = self.backend, None
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            if backend is not None:
                self.balancer._release(backend)
