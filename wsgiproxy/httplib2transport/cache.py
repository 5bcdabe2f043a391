"""The shared cache of the httplib2 transport: httplib2's ``FileCache`` behind shared-cache rules.

httplib2 alone is a private, single-user cache; a reverse proxy serves many
users, so every entry passes :func:`_refuse` before it is stored or served.
The rules are listed in :class:`~wsgiproxy.httplib2transport.Httplib2Transport`.
"""

from __future__ import annotations

import email
import email.message
import json
import logging
import os
import tempfile
import time
from typing import TYPE_CHECKING

import httplib2
from httplib2.iri2uri import iri2uri

from ..abnf import split_comma_list
from ..http11 import HOP_BY_HOP
from .connections import _CE_MARKER
from .freshness import cache_directives, normalized_field, vary_names

if TYPE_CHECKING:
    from .client import _Exchange

#: The header under which an entry keeps when it was fetched and the request
#: values of the fields its ``Vary`` names.  Not a token, so no backend can
#: send it.
_META = "wsgiproxy(entry)"

# Fields of a 304 that do not replace the stored ones.
_NOT_UPDATED = frozenset(["content-length", "content-encoding", "set-cookie",
                          "transfer-encoding", "content-range"])

log = logging.getLogger("wsgiproxy.httplib2transport")


class _AtomicFileCache(httplib2.FileCache):
    """httplib2's FileCache, but a reader never sees a half-written entry."""

    def set(self, key, value):
        path = os.path.join(self.cache, self.safe(key))
        fd, tmp = tempfile.mkstemp(dir=self.cache, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(value)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def delete(self, key):
        try:
            os.remove(os.path.join(self.cache, self.safe(key)))
        except FileNotFoundError:
            pass


class _CacheView:
    """The cache as one ``Http`` sees it: writes go through the shared-cache rules, reads find nothing.

    httplib2 never reads the cache: its freshness and ``Vary`` logic is a
    private cache's (and it crashes on some dates), so the transport looks
    entries up itself (:meth:`SharedCache.lookup`) and asks httplib2 only
    for what the backend says.  httplib2 still stores the 200s it receives
    (``set``) and removes the entry of a URL an unsafe method was sent to
    (``delete``).
    """

    def __init__(self, cache, client_ref):
        self.cache = cache
        self.client_ref = client_ref

    def get(self, key):
        return None

    def set(self, key, value):
        ctx = self.client_ref().ctx
        if ctx.cacheable:
            self.cache.put(ctx, value, time.time())

    def delete(self, key):
        self.cache.delete(self.cache.key(self.client_ref().ctx, key))


class Entry:
    """One stored response: its headers (lower-case names), body, and when it was fetched."""

    __slots__ = ("content", "headers", "request_time", "response_time", "vary")

    def __init__(self, headers: email.message.Message, content: bytes, request_time: float,
                 response_time: float, vary: dict[str, str | None]) -> None:
        self.headers = headers
        self.content = content
        self.request_time = request_time
        self.response_time = response_time
        self.vary = vary

    def matches(self, request_headers: dict[str, str]) -> bool:
        """Do the request's values of the fields ``Vary`` names equal those it was stored for?"""
        names = vary_names(self.headers.get("vary"))
        if names is None:
            return False
        return all(name in self.vary and normalized_field(request_headers.get(name))
                   == normalized_field(self.vary[name]) for name in names)

    def serialized(self) -> bytes:
        """The bytes of the entry in httplib2's ``FileCache`` format, with our record of it."""
        lines = ["status: %s" % self.headers.get("status", "200")]
        lines += ["%s: %s" % (name, value) for name, value in self.headers.items()
                  if name.lower() not in ("status", _META)]
        lines.append("%s: %s" % (_META, json.dumps({
            "request_time": self.request_time, "response_time": self.response_time,
            "vary": self.vary})))
        return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + self.content


class SharedCache:
    """The store (httplib2's ``FileCache`` format) behind the shared-cache rules.

    Every error inside is logged and the entry dropped: the request then goes
    to the backend as if nothing was stored.
    """

    def __init__(self, store: _AtomicFileCache) -> None:
        self.store = store

    @staticmethod
    def key(ctx: _Exchange, uri: str | None = None) -> str:
        """The key of the request's URL (or ``uri``) and ``Host`` header."""
        if uri is None:
            uri = httplib2.urlnorm(iri2uri(ctx.uri))[3]
        return "%s host=%s" % (uri, ctx.host_header.lower())

    def lookup(self, ctx: _Exchange) -> Entry | None:
        """The stored response this request may be answered with (fresh or not), or ``None``."""
        key = self.key(ctx)
        try:
            value = self.store.get(key)
            if value is None:
                return None
            why = _refuse(value, ctx, serving=True)
            if why:
                log.debug("not serving %s from the cache: %s", ctx.uri, why)
                return None
            entry = _parse(value)
            return entry if entry.matches(ctx.lower) else None
        except Exception as exc:  # noqa: BLE001 -- a broken entry: the backend answers instead
            log.warning("dropping the cache entry of %s: %s: %s", ctx.uri, type(exc).__name__, exc)
            self.delete(key)
            return None

    def put(self, ctx: _Exchange, value: bytes, now: float) -> None:
        """Store a response httplib2 received (``value`` in its format), or remove the old one."""
        key = self.key(ctx)
        try:
            why = _refuse(value, ctx, serving=False)
            if why:
                log.debug("not caching %s: %s", ctx.uri, why)
                self.delete(key)
                return
            head, _, content = value.partition(b"\r\n\r\n")
            headers = email.message_from_string(head.decode("ascii"))
            names = vary_names(headers.get("vary")) or []
            entry = Entry(headers, content, ctx.request_time, now,
                          {name: ctx.lower.get(name) for name in names})
            self.store.set(key, entry.serialized())
        except Exception as exc:  # noqa: BLE001 -- a cache error never fails the request
            log.warning("not caching %s: %s: %s", ctx.uri, type(exc).__name__, exc)
            self.delete(key)

    def refresh(self, ctx: _Exchange, entry: Entry, fields: list[tuple[str, str]], now: float) -> Entry:
        """The stored response updated by a 304's header fields (RFC 9111 section 4.3.4); stored again.

        Raises whatever goes wrong (the caller drops the entry and asks again).
        """
        headers = email.message_from_string(entry.serialized().partition(b"\r\n\r\n")[0]
                                            .decode("latin-1"))
        del headers[_META]
        del headers["age"]  # the stored age is replaced by the 304's (or none)
        updates: dict[str, list[str]] = {}
        for name, value in fields:
            lname = name.lower()
            if lname not in _NOT_UPDATED and lname not in HOP_BY_HOP:
                updates.setdefault(lname, []).append(value)
        for name, values in updates.items():
            del headers[name]
            headers[name] = ", ".join(values)
        names = vary_names(headers.get("vary")) or []
        fresh = Entry(headers, entry.content, ctx.request_time, now,
                      {name: ctx.lower.get(name) for name in names})
        self.put(ctx, fresh.serialized(), now)
        return fresh

    def delete(self, key: str) -> None:
        try:
            self.store.delete(key)
        except OSError as exc:
            log.warning("cache directory %s: %s", self.store.cache, exc)


def _parse(value: bytes) -> Entry:
    head, _, content = value.partition(b"\r\n\r\n")
    headers = email.message_from_string(head.decode("ascii"))
    meta = json.loads(headers[_META])  # KeyError/TypeError: an entry without our record
    vary = meta["vary"]
    if not isinstance(vary, dict):
        raise TypeError("a malformed record")
    return Entry(headers, content, float(meta["request_time"]), float(meta["response_time"]),
                 vary)


def _refuse(value, ctx, serving):
    """Why a cache entry may not be stored (or served), or ``None`` when it may."""
    head, sep, content = value.partition(b"\r\n\r\n")
    if not sep:
        return "no header block"
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return "non-ASCII headers"
    msg = email.message_from_string(text)
    if msg.get("status") not in ("200", "203"):
        return "status %s" % msg.get("status")
    if not serving and ctx.sent_authorization:
        return "the request carried credentials"
    if not serving and ctx.method != "GET":  # (ctx.cacheable implies GET: a second guard)
        return "not a GET"
    for field in msg.values():
        if field.startswith("=?"):
            return "an encoded header"
    if "set-cookie" in msg:
        return "Set-Cookie"
    if "-x-permanent-redirect-url" in msg:
        return "a redirect"
    if not serving and "no-store" in ctx.request_cc:
        return "the request said no-store"
    # CDN-Cache-Control (RFC 9213) and Surrogate-Control may only restrict here.
    for name in ("cache-control", "cdn-cache-control", "surrogate-control"):
        cc = cache_directives(", ".join(msg.get_all(name) or ()))
        if "private" in cc or "no-store" in cc:
            return "%s: private or no-store" % name
    if "*" in split_comma_list(",".join(msg.get_all("vary") or ())):
        return "Vary: *"
    length = msg.get("content-length")
    if length is not None and length.strip() != str(len(content)):
        return "Content-Length does not match the body"
    coding = msg.get(_CE_MARKER)
    if serving and coding and not _accepts(ctx.accept_encoding, coding):
        return "the client does not accept Content-Encoding %s" % coding
    return None


def _accepts(accept_encoding, coding):
    """Does an Accept-Encoding value (``None``: no header, identity only) allow ``coding``?"""
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return True
    if not accept_encoding:
        return False
    aliases = {"x-gzip": "gzip", "x-compress": "compress"}
    coding = aliases.get(coding, coding)
    star = None
    for item in split_comma_list(accept_encoding):
        name, _, params = item.partition(";")
        name = aliases.get(name.strip().lower(), name.strip().lower())
        q = 1.0
        for param in params.split(";"):
            key, _, val = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        if name == coding:
            return q > 0
        if name == "*":
            star = q > 0
    return bool(star)
