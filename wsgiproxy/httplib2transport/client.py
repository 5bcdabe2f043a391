"""One ``httplib2.Http`` per request in flight, and what that request needs while it runs.

:class:`_Client` wires an ``Http`` to this package's connection classes and
cache view; :class:`_Exchange` carries one request's state to them (httplib2
offers no other way in); :class:`_Http` closes two of httplib2's gaps.
"""

from __future__ import annotations

import time
import weakref

import httplib2
import httplib2.auth

from ..connection import looks_alive
from ..errors import InvalidRequest
from .cache import _CacheView
from .connections import _BAD_VALUE, _HTTPConnection, _HTTPSConnection

# Request headers httplib2 itself may set that are allowed onto the wire:
# credentials, and the validators of a cache revalidation.  Everything else
# it adds (User-Agent, Accept-Encoding: gzip, If-Match...) is left out, so the
# backend gets the client's request as it was.
_ADDED_BY_HTTPLIB2 = ("authorization", "if-none-match", "if-modified-since")

_SPECIAL_NAMES = {"etag": "ETag", "www-authenticate": "WWW-Authenticate",
                  "content-md5": "Content-MD5", "x-xss-protection": "X-XSS-Protection"}


def _canonical(name):
    special = _SPECIAL_NAMES.get(name)
    if special:
        return special
    return "-".join(part.capitalize() for part in name.split("-"))


class _Exchange:
    """What one request needs while httplib2 runs it (one thread, one ``Http``)."""

    __slots__ = ("accept_encoding", "authority", "cacheable", "failed", "host_header", "lower",
                 "method", "normalized", "phase", "proxy", "request_cc", "request_time",
                 "responses", "sent_authorization", "target", "uri", "wire")
    accept_encoding: str | None
    authority: str
    cacheable: bool
    host_header: str
    lower: dict[str, str]
    method: str
    request_cc: dict[str, list[str | None]]
    request_time: float
    target: str
    uri: str
    wire: list[tuple[str, str]]

    def __init__(self):
        self.normalized = {}
        self.responses = []
        self.phase = "exchange"
        self.failed = None
        self.sent_authorization = False
        self.proxy = None

    def wire_headers(self, h2headers):
        """The client's headers, plus what httplib2 added that may go to the backend."""
        normalized = self.normalized
        extra = []
        for name in _ADDED_BY_HTTPLIB2:
            value = h2headers.get(name)
            if value is not None and value != normalized.get(name):
                if _BAD_VALUE(str(value)):
                    raise InvalidRequest("httplib2 produced an invalid %s header" % name)
                extra.append((name, str(value)))
        names = {name for name, _ in extra}
        self.sent_authorization = "authorization" in self.lower or "authorization" in names
        if not extra:
            return list(self.wire)
        return ([(n, v) for n, v in self.wire if n.lower() not in names]
                + [(_canonical(n), v) for n, v in extra])


class _Client:
    """One ``httplib2.Http`` with its connection classes and cache view; one user at a time."""

    def __init__(self, transport):
        self._transport = weakref.ref(transport)  # the transport holds its idle clients
        self.ctx = None
        # Everything below points back to this client weakly: no reference
        # cycle, so a dropped transport closes its sockets at once, not at
        # the next garbage collection.
        ref = weakref.ref(self)
        cache = transport._cache
        h = _Http(cache=_CacheView(cache, ref) if cache is not None else None,
                  timeout=transport.read_timeout, proxy_info=None)
        h.follow_redirects = False
        h.follow_all_redirects = False
        h.optimistic_concurrency_methods = []
        h.force_exception_to_status_code = False
        h.client_ref = ref
        for user, password, domain in transport.credentials:
            h.add_credentials(user, password, domain)
        self.http = h
        self.classes = {
            "http": type("HTTPConnection", (_HTTPConnection,), {"client_ref": ref}),
            "https": type("HTTPSConnection", (_HTTPSConnection,), {"client_ref": ref}),
        }

    @property
    def transport(self):
        return self._transport()

    def prepare(self):
        """Close connections that went stale while idle; forget closed ones."""
        connections = self.http.connections
        now = time.monotonic()
        for key, conn in list(connections.items()):
            sock = conn.sock
            if sock is not None and (now - conn.idle_since > self.transport.idle_timeout
                                     or not looks_alive(conn)):
                conn.close()
                sock = None
            if sock is None:
                del connections[key]

    def finish(self):
        now = time.monotonic()
        for conn in self.http.connections.values():
            conn.idle_since = now

    def discard(self):
        """Close every connection (never ``Http.close()``: it forgets the credentials)."""
        connections, self.http.connections = self.http.connections, {}
        for conn in connections.values():
            try:
                conn.close()
            except OSError:
                pass

    def open_connections(self):
        return sum(1 for conn in self.http.connections.values() if conn.sock is not None)


class _Http(httplib2.Http):
    client_ref = None

    def _normalize_headers(self, headers):
        # httplib2's own version runs each value through re.sub() as a
        # replacement template (a backslash in a header becomes an escape).
        normalized = {str(name).lower(): str(value) for name, value in headers.items()}
        self.client_ref().ctx.normalized = dict(normalized)
        return normalized

    def _auth_from_challenge(self, host, request_uri, headers, response, content):
        # Basic and digest only: httplib2 would also build a GoogleLogin
        # authorization, which posts the credentials to www.google.com.
        challenges = httplib2.auth._parse_www_authenticate(response, "www-authenticate")
        for cred in self.credentials.iter(host):
            for scheme in ("digest", "basic"):
                if scheme in challenges:
                    yield httplib2.AUTH_SCHEME_CLASSES[scheme](
                        cred, host, request_uri, headers, response, content, self)
