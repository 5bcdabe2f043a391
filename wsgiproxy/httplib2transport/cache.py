"""The shared cache of the httplib2 transport: httplib2's ``FileCache`` behind shared-cache rules.

httplib2 alone is a private, single-user cache; a reverse proxy serves many
users, so every entry passes :func:`_refuse` before it is stored or served.
The rules are listed in :class:`~wsgiproxy.httplib2transport.Httplib2Transport`.
"""

from __future__ import annotations

import email
import logging
import os
import tempfile

import httplib2

from ..abnf import split_comma_list
from .connections import _CE_MARKER

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
    """The cache as one ``Http`` sees it: the shared store behind the shared-cache rules."""

    def __init__(self, store, client_ref):
        self.store = store
        self.client_ref = client_ref

    def _key(self, key):
        return "%s host=%s" % (key, self.client_ref().ctx.host_header.lower())

    def get(self, key):
        ctx = self.client_ref().ctx
        if not ctx.cacheable:
            return None
        value = self.store.get(self._key(key))
        if value is None:
            return None
        why = _refuse(value, ctx, serving=True)
        if why:
            log.debug("not serving %s from the cache: %s", key, why)
            return None
        return value

    def set(self, key, value):
        ctx = self.client_ref().ctx
        if not ctx.cacheable:
            return
        why = _refuse(value, ctx, serving=False)
        try:
            if why:
                log.debug("not caching %s: %s", key, why)
                self.store.delete(self._key(key))
            else:
                self.store.set(self._key(key), value)
        except OSError as exc:
            log.warning("cache directory %s: %s", self.store.cache, exc)

    def delete(self, key):
        try:
            self.store.delete(self._key(key))
        except OSError as exc:
            log.warning("cache directory %s: %s", self.store.cache, exc)


def _cache_control(value):
    directives = {}
    for part in split_comma_list(value or ""):
        name, _, arg = part.partition("=")
        name = name.strip().lower()
        if name:
            directives[name] = arg.strip().strip('"')
    return directives


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
    cc = _cache_control(", ".join(msg.get_all("cache-control") or ()))
    if "private" in cc or "no-store" in cc:
        return "Cache-Control: private or no-store"
    if "s-maxage" in cc and cc.get("s-maxage") != cc.get("max-age"):
        return "s-maxage differs from max-age"
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
