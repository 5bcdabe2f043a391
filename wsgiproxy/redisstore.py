"""A :class:`~wsgiproxy.keys.NonceStore` in Redis, shared by every process that verifies.

With several worker processes (``gunicorn -w 4``) or several backend hosts,
each :class:`~wsgiproxy.keys.MemoryNonceStore` remembers only the nonces
its own process saw, so a captured signed request can be replayed once per
process.  :class:`RedisNonceStore` keeps them in one Redis server instead::

    [filter:proxy]
    use = egg:WSGIProxy#main
    secret_file = %(here)s/secret.txt
    nonce_store = redis://127.0.0.1:6379/0

It needs redis-py (``pip install WSGIProxy[redis]``), imported only when a
store is made from a URL, so the rest of WSGIProxy does not depend on it.

The store fails closed: when Redis cannot be reached, times out or answers
with an error, :meth:`~RedisNonceStore.check_and_add` raises
:class:`NonceStoreUnavailable` and the middleware answers ``503`` ("nonce
store unavailable") -- a signed request is never accepted unchecked.  See
``docs/scaleout.rst``.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import NonceStoreUnavailable
from .keys import NonceStore

__all__ = ["URL_SCHEMES", "NonceStoreUnavailable", "RedisNonceStore"]

#: URL schemes understood as a Redis server (those of ``redis.Redis.from_url``).
URL_SCHEMES = ("redis", "rediss", "unix")

#: Query parameters of a store URL read by :class:`RedisNonceStore` itself;
#: all others (``socket_timeout``, ``password``...) go to redis-py.
STORE_PARAMETERS = ("prefix", "clock_skew", "retries")


def _redis_module():
    try:
        import redis
    except ImportError:
        raise ImportError("RedisNonceStore needs redis-py: pip install 'WSGIProxy[redis]'") \
            from None
    return redis


def _display_url(url):
    """The URL without user name, password or query (for logs and messages)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = "[%s]" % host
    netloc = host if parts.port is None else "%s:%d" % (host, parts.port)
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _split_store_parameters(url):
    """``url`` without our own query parameters, and those parameters as a dict."""
    parts = urlsplit(url)
    ours, theirs = {}, []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in STORE_PARAMETERS:
            ours[name] = value
        else:
            theirs.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(theirs))), ours


class RedisNonceStore(NonceStore):
    """Remember nonces in Redis with one atomic ``SET key token NX PX ttl`` each.

    ``url_or_client``
        A Redis URL -- ``redis://[[user]:password@]host[:port][/db]``,
        ``rediss://...`` (TLS) or ``unix:///path/to/redis.sock?db=0`` -- or a
        ready ``redis.Redis`` client (anything with redis-py's ``set`` and
        ``get``).  A URL's query may also set ``prefix``, ``clock_skew`` and
        ``retries`` below, and any redis-py connection option
        (``socket_timeout=0.2``, ``password=...``); in the URL they win over
        the arguments.
    ``prefix`` (``"wsgiproxy:nonce:"``)
        Prepended to every key, which is ``<prefix><key id>:<nonce>``.
        Give each set of servers its own prefix (or database) if several
        share one Redis.
    ``socket_timeout`` (0.5 s), ``socket_connect_timeout`` (as ``socket_timeout``)
        How long one command, and one connection attempt, may take before
        Redis counts as unavailable.  Keep them short: each worker thread
        waits that long per attempt while Redis is down.  Only used with a
        URL; a client brings its own.
    ``retries`` (1)
        Further attempts after a connection error or timeout, at once, on a
        new connection (a pooled connection may have gone stale, e.g. after
        Redis restarted).  A retry cannot turn a new nonce into a "replayed"
        one: the value written is random, and a retry that finds the key
        with its own value counts it as new.
    ``clock_skew`` (30 s)
        Seconds added to how long each nonce is kept.  The expiry is computed
        from this host's clock (Redis's clock does not matter), so
        ``clock_skew`` covers the difference between the clocks of the hosts
        sharing the store.

    Keys expire at ``expires_at`` (the end of the signature window, from
    the middleware) plus ``clock_skew``; Redis drops them itself, so memory
    use follows the request rate times the window.  Every error -- refused
    connection, timeout, an error reply such as ``NOAUTH``, ``READONLY``
    or ``OOM`` -- raises :class:`NonceStoreUnavailable`, which the
    middleware answers with 503: the store fails closed.

    Safe to share between threads, and across ``fork`` (redis-py's
    connection pool opens new connections in a forked process).
    """

    def __init__(self, url_or_client: Any, prefix: str = "wsgiproxy:nonce:", *,
                 socket_timeout: float = 0.5, socket_connect_timeout: float | None = None,
                 retries: int = 1, clock_skew: float = 30,
                 clock: Callable[[], float] = time.time) -> None:
        if isinstance(url_or_client, str):
            url = url_or_client.strip()
            scheme = url.partition("://")[0].lower() if "://" in url else ""
            if scheme not in URL_SCHEMES:
                raise ValueError("a Redis nonce store URL must start with %s, not %r"
                                 % (", ".join(s + "://" for s in URL_SCHEMES),
                                    _display_url(url)))
            url, params = _split_store_parameters(url)
            prefix = params.get("prefix", prefix)
            clock_skew = params.get("clock_skew", clock_skew)
            retries = params.get("retries", retries)
            redis = _redis_module()
            from redis.backoff import NoBackoff
            from redis.retry import Retry
            if socket_connect_timeout is None:
                socket_connect_timeout = socket_timeout
            # redis-py's own retries are off: check_and_add retries itself, in
            # a way that cannot mistake its own earlier write for a replay.
            self.client = redis.Redis.from_url(
                url, socket_timeout=socket_timeout,
                socket_connect_timeout=socket_connect_timeout, retry=Retry(NoBackoff(), 0))
            self._owns_client = True
            self.location = _display_url(url)
        else:
            if not (hasattr(url_or_client, "set") and hasattr(url_or_client, "get")):
                raise TypeError("RedisNonceStore needs a Redis URL or a redis.Redis client, "
                                "not %r" % (url_or_client,))
            self.client = url_or_client
            self._owns_client = False
            self.location = type(url_or_client).__name__
        if not isinstance(prefix, str):
            raise TypeError("prefix must be a str")
        try:
            self.retries = int(retries)
            self.clock_skew = float(clock_skew)
        except (TypeError, ValueError):
            raise ValueError("retries must be an integer and clock_skew a number of seconds, "
                             "not %r and %r" % (retries, clock_skew)) from None
        if self.retries < 0 or self.clock_skew < 0 or not math.isfinite(self.clock_skew):
            raise ValueError("retries and clock_skew must not be negative")
        self.prefix = prefix
        self._clock = clock
        self._errors = _redis_module().exceptions if self._owns_client else None

    def __repr__(self):  # never a password
        return "<RedisNonceStore %s prefix=%r>" % (self.location, self.prefix)

    def key(self, key_id: str, nonce: str) -> str:
        """The Redis key of ``nonce`` signed with ``key_id``."""
        return "%s%s:%s" % (self.prefix, key_id, nonce)

    def _ttl_ms(self, expires_at):
        seconds = float(expires_at) - self._clock() + self.clock_skew
        return max(1000, math.ceil(seconds * 1000))

    def _retryable(self, exc):
        """A connection error or timeout (worth one more try on a new connection)."""
        errors = self._errors
        if errors is None:  # a client we did not make: judge by the names redis-py uses
            return isinstance(exc, (OSError, TimeoutError)) or type(exc).__name__ in (
                "ConnectionError", "TimeoutError", "BusyLoadingError")
        return isinstance(exc, (errors.ConnectionError, errors.TimeoutError, OSError))

    def check_and_add(self, key_id: str, nonce: str, expires_at: float) -> bool:
        """Record ``nonce`` until ``expires_at`` (+ ``clock_skew``); False if it was there.

        Raises :class:`NonceStoreUnavailable` when Redis does not answer.
        """
        key = self.key(key_id, nonce)
        token = secrets.token_hex(16)
        ttl = self._ttl_ms(expires_at)
        failed = None  # the error of an earlier attempt whose outcome is unknown
        for attempt in range(self.retries + 1):
            try:
                if self.client.set(key, token, nx=True, px=ttl):
                    return True
                if failed is None:
                    return False
                # An earlier attempt may have written the key before its
                # answer was lost: then the value is ours, and the nonce new.
                stored = self.client.get(key)
                if isinstance(stored, bytes):
                    stored = stored.decode("ascii", "replace")
                return stored == token
            except Exception as exc:
                if not self._retryable(exc):
                    raise NonceStoreUnavailable("nonce store unavailable: Redis at %s answered "
                                                "%s: %s" % (self.location, type(exc).__name__,
                                                            exc)) from exc
                failed = exc
        raise NonceStoreUnavailable("nonce store unavailable: Redis at %s did not answer "
                                    "(%d attempt%s; %s: %s)"
                                    % (self.location, self.retries + 1,
                                       "" if self.retries == 0 else "s",
                                       type(failed).__name__, failed)) from failed

    def close(self) -> None:
        """Close the connections of a client made from a URL (a given client is left open)."""
        if self._owns_client:
            self.client.close()
