"""Rebuilding the original environ from the forwarded headers a request's row believes.

:class:`Rewriter` holds the rewriting options of one middleware (the forced
values and the ProxyFix-style counts) and :meth:`Rewriter.rebuild` applies
them, in the order ``docs/middleware.rst`` gives ("What is rewritten, in
order").  :class:`Identity` collects the new values so that nothing is
written to the environ until every header has been checked.  Parsing lives
in :mod:`wsgiproxy.protocol`; errors are :class:`~wsgiproxy.errors.ProtocolError`
(a 400) naming the header.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ProtocolError
from ..protocol import (
    FORWARDED,
    FORWARDED_FOR,
    FORWARDED_HOST,
    FORWARDED_PORT,
    FORWARDED_PREFIX,
    FORWARDED_PROTO,
    FORWARDED_SCHEME,
    FORWARDED_SCRIPT_NAME,
    FORWARDED_SERVER,
    HEADER_PREFIX,
    KEY_KINDS,
    PROTOCOL_VERSION,
    SCRIPT_NAME_HEADER,
    TRAVERSAL_PATH,
    VERSION_HEADER,
    decode_key_header,
    decode_path_header,
    default_port,
    environ_key,
    join_host,
    key_header_kind,
    nth_from_right,
    parse_forwarded,
    parse_node,
    split_host,
)
from .trust import Belief, Pickles

__all__ = ["ORIG_KEYS", "Identity", "Rewriter", "header", "protocol_keys"]

T = TypeVar("T")

_PROTOCOL_PREFIX = environ_key(HEADER_PREFIX)  # "HTTP_X_WSGIPROXY_"
_VERSION_KEY = environ_key(VERSION_HEADER)
_FORWARDED_KEY = environ_key(FORWARDED)
_FOR_KEY = environ_key(FORWARDED_FOR)
_PROTO_KEY = environ_key(FORWARDED_PROTO)
_HOST_KEY = environ_key(FORWARDED_HOST)
_PORT_KEY = environ_key(FORWARDED_PORT)
_PREFIX_KEY = environ_key(FORWARDED_PREFIX)
_SCHEME_KEY = environ_key(FORWARDED_SCHEME)
_SERVER_KEY = environ_key(FORWARDED_SERVER)
_TRAVERSAL_KEY = environ_key(TRAVERSAL_PATH)
_FORWARDED_SCRIPT_NAME_KEY = environ_key(FORWARDED_SCRIPT_NAME)
_SCRIPT_NAME_KEY = environ_key(SCRIPT_NAME_HEADER)

_SCHEMES = ("http", "https")
_RESERVED_KEY_PREFIXES = ("wsgi.", "wsgiproxy.", _PROTOCOL_PREFIX)
_KIND_ORDER = {kind: i for i, kind in enumerate(KEY_KINDS)}
#: The environ keys whose values before the rewrite are kept in ``wsgiproxy.orig``.
ORIG_KEYS = ("REMOTE_ADDR", "REMOTE_PORT", "REMOTE_HOST", "wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT",
             "SCRIPT_NAME", "PATH_INFO")
#: The ``x_*`` counts and ``forwarded``: how many proxies append to each header.
COUNTS = ("x_for", "x_proto", "x_host", "x_port", "x_prefix", "forwarded")


def header(environ: dict[str, Any], key: str) -> str | None:
    """A header's value stripped of whitespace, or None when absent or empty (empty = absent)."""
    value = environ.get(key)
    if not isinstance(value, str):
        return None
    value = value.strip(" \t")
    return value or None


def protocol_keys(environ: dict[str, Any]) -> list[str]:
    """The environ keys of the request's ``X-WSGIProxy-*`` headers."""
    return [k for k in environ if isinstance(k, str) and k.startswith(_PROTOCOL_PREFIX)]


def _check_scheme(value: str, header: str) -> str:
    scheme = value.strip(" \t").lower()
    if scheme not in _SCHEMES:
        raise ProtocolError("%s must be http or https, not %r" % (header, value[:40]))
    return scheme


def _check_port(value: Any, what: str) -> str:
    text = str(value).strip(" \t")
    if not text.isdigit() or not text.isascii() or not 0 < int(text) <= 65535:
        raise ProtocolError("%s must be a port number, not %r" % (what, text[:40]))
    return str(int(text))


def _path_prefix(value: str, header: str) -> str:
    """A path-prefix header (X-Forwarded-Prefix, -Script-Name...) as SCRIPT_NAME: decoded, no
    trailing slash, and starting with '/' unless empty."""
    path = decode_path_header(value, header).rstrip("/")
    if path and not path.startswith("/"):
        raise ProtocolError("%s gives %r, which does not start with /" % (header, path[:200]))
    return path


def _named(header: str, func: Callable[..., T], *args: Any) -> T:
    """Call a protocol parser and prefix its error with the header it came from."""
    try:
        return func(*args)
    except ProtocolError as exc:
        message = str(exc)
        if message.startswith(header + ":"):
            raise
        raise ProtocolError("%s: %s" % (header, message)) from None


def _config_path(value: Any, name: str, allow_empty: bool) -> str | None:
    if value is None:
        return None
    value = str(value).rstrip("/")
    if value and not value.startswith("/"):
        raise ValueError("%s must start with /, not %r" % (name, value))
    if not value and not allow_empty:
        raise ValueError("%s must not be empty or /" % name)
    return value


class Identity:
    """The request identity being rebuilt; written to the environ only once all checks pass."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.scheme = environ.get("wsgi.url_scheme") or "http"
        self.host = environ.get("HTTP_HOST")
        self.server_name = environ.get("SERVER_NAME")
        self.server_port = environ.get("SERVER_PORT")
        self.remote_addr = environ.get("REMOTE_ADDR")
        self.remote_port: str | None = None
        self.client_set = False  # REMOTE_ADDR replaced: REMOTE_PORT and REMOTE_HOST follow it
        self.script_name = environ.get("SCRIPT_NAME") or ""
        self.path_info = environ.get("PATH_INFO") or ""
        self.host_set = False
        self.port_set = False  # HTTP_HOST's port comes from set_port: rebuilt by write()

    def set_host(self, value: str, header: str) -> None:
        """``host[:port]`` from ``header``: HTTP_HOST, SERVER_NAME and SERVER_PORT."""
        name, port = _named(header, split_host, value)
        self.host = value.strip(" \t")
        self.server_name = name
        self.server_port = None if port is None else str(port)
        self.host_set = True
        self.port_set = False

    def host_name(self) -> str:
        """The host name, without its port."""
        if self.host:
            return _named("Host", split_host, self.host)[0]
        return self.server_name or "localhost"

    def set_port(self, port: str) -> None:
        """The port from X-Forwarded-Port or the ``port`` option: SERVER_PORT, and the port
        of HTTP_HOST -- left out there by write() when it is the default of the final scheme."""
        self.server_port = port
        self.port_set = True

    def set_client(self, value: str, header: str) -> None:
        """The client's ``address[:port]`` (a node) from ``header``."""
        self.remote_addr, port = _named(header, parse_node, value)
        self.remote_port = port if port is not None and port.isdigit() else None
        self.client_set = True

    def write(self, environ: dict[str, Any]) -> None:
        """Put the rebuilt values into ``environ``."""
        if self.host_set and self.server_port is None:
            self.server_port = str(default_port(self.scheme))
        if self.port_set and self.host:
            self.host = join_host(self.host_name(), self.server_port, self.scheme)
        values = {"wsgi.url_scheme": self.scheme, "HTTP_HOST": self.host,
                  "SERVER_NAME": self.server_name, "SERVER_PORT": self.server_port,
                  "REMOTE_ADDR": self.remote_addr, "REMOTE_PORT": self.remote_port,
                  "SCRIPT_NAME": self.script_name, "PATH_INFO": self.path_info}
        for key, value in values.items():
            if value is not None:
                environ[key] = value
        if self.client_set:
            # The proxy's connection said nothing about the client: its port goes (or
            # becomes the believed one) and a REMOTE_HOST names the client's address.
            if self.remote_port is None:
                environ.pop("REMOTE_PORT", None)
            if "REMOTE_HOST" in environ:
                environ["REMOTE_HOST"] = self.remote_addr


class Rewriter:
    """The rewriting options of one middleware, checked once; see :meth:`rebuild`.

    :param prefix: force ``SCRIPT_NAME``.
    :param pop_prefix: move this leading part of ``PATH_INFO`` to ``SCRIPT_NAME``.
    :param scheme: force ``wsgi.url_scheme``.
    :param host: force the host and port from ``name[:port]``.
    :param domain: force the host name.
    :param port: force the port.
    :param x_for: proxies appending to ``X-Forwarded-For`` (and so on for the
        other ``x_*`` counts); ``forwarded`` above 0 reads ``Forwarded`` instead
        of the first four.

    Raises ``ValueError`` naming the option for a bad value or combination.
    """

    def __init__(self, prefix: str | None = None, pop_prefix: str | None = None,
                 scheme: str | None = None, host: str | None = None,
                 domain: str | None = None, port: int | str | None = None, *,
                 x_for: int = 1, x_proto: int = 1, x_host: int = 0, x_port: int = 0,
                 x_prefix: int = 0, forwarded: int = 0) -> None:
        if prefix is not None and pop_prefix is not None:
            raise ValueError("prefix and pop_prefix exclude each other: prefix sets SCRIPT_NAME, "
                             "pop_prefix moves part of PATH_INFO into it")
        self.prefix = _config_path(prefix, "prefix", allow_empty=True)
        self.pop_prefix = _config_path(pop_prefix, "pop_prefix", allow_empty=False)
        self.scheme = None
        if scheme is not None:
            if str(scheme).lower() not in _SCHEMES:
                raise ValueError("scheme must be http or https, not %r" % (scheme,))
            self.scheme = str(scheme).lower()
        if host is not None and (domain is not None or port is not None):
            raise ValueError("host excludes domain and port: give host = name:port, or "
                             "domain and/or port")
        self.host = None
        if host is not None:
            try:
                self.host = split_host(str(host))
            except ProtocolError:
                raise ValueError("host must be name[:port], not %r" % (host,)) from None
        self.domain = None
        if domain is not None:
            try:
                name, domain_port = split_host(str(domain))
            except ProtocolError:
                domain_port = True
            if domain_port is not None:
                raise ValueError("domain must be a host name without a port, not %r" % (domain,))
            self.domain = name
        self.port = None
        if port is not None:
            try:
                self.port = _check_port(port, "port")
            except ProtocolError:
                raise ValueError("port must be a number from 1 to 65535, not %r" % (port,)) \
                    from None
        counts = {"x_for": x_for, "x_proto": x_proto, "x_host": x_host, "x_port": x_port,
                  "x_prefix": x_prefix, "forwarded": forwarded}
        for name in COUNTS:
            value = counts[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError("%s must be a whole number of trusted proxies (0 or more), "
                                 "not %r" % (name, value))
        self.x_for, self.x_proto, self.x_host = x_for, x_proto, x_host
        self.x_port, self.x_prefix, self.forwarded = x_port, x_prefix, forwarded

    def rebuild(self, environ: dict[str, Any], belief: Belief, keys_found: list[str],
                key_id: str | None) -> None:
        """Rewrite ``environ`` in place with what ``belief`` lets through; raise
        :class:`~wsgiproxy.errors.ProtocolError` (and change nothing) for a bad header.

        :param keys_found: the request's ``X-WSGIProxy-*`` environ keys (all removed).
        :param key_id: the id of the key that verified the signature, or None.
        """
        state = Identity(environ)
        keys: dict[str, Any] = {}
        if belief.identity:
            version = header(environ, _VERSION_KEY)
            if version is not None and version != PROTOCOL_VERSION:
                raise ProtocolError("X-WSGIProxy-Version %r is not supported (this side speaks %s)"
                                    % (version[:20], PROTOCOL_VERSION))
        if belief.front:
            self._apply_front_proxies(environ, state)
        if belief.identity:
            self._apply_wsgiproxy(environ, state)
            self._apply_traversal(environ, state)
        if belief.front:
            self._apply_forwarded_prefix(environ, state)
        if belief.identity:
            self._apply_script_name(environ, state)
        if belief.keys:
            keys = self._decode_keys(environ, keys_found,
                                     belief.pickles is Pickles.UNPICKLED)
        self._apply_forced(state)

        orig = {k: environ[k] for k in ORIG_KEYS if k in environ}
        state.write(environ)
        for k in keys_found:
            environ.pop(k, None)
        environ.update(keys)
        environ["wsgiproxy.orig"] = orig
        environ["wsgiproxy.key_id"] = key_id

    # -- the steps, in order ---------------------------------------------------------

    def _apply_front_proxies(self, environ: dict[str, Any], state: Identity) -> None:
        """X-Forwarded-* (or Forwarded) from proxies in front, counted from the right."""
        if self.forwarded:
            raw = header(environ, _FORWARDED_KEY)
            elements = _named(FORWARDED, parse_forwarded, raw) if raw else []
            if len(elements) >= self.forwarded:
                element = elements[-self.forwarded]
                if "for" in element:
                    state.set_client(element["for"], FORWARDED + " for")
                if "proto" in element:
                    state.scheme = _check_scheme(element["proto"], FORWARDED + " proto")
                if "host" in element:
                    state.set_host(element["host"], FORWARDED + " host")
            return
        value = nth_from_right(header(environ, _FOR_KEY), self.x_for)
        if value:
            state.set_client(value, FORWARDED_FOR)
        value = nth_from_right(header(environ, _PROTO_KEY), self.x_proto)
        if value:
            state.scheme = _check_scheme(value, FORWARDED_PROTO)
        value = nth_from_right(header(environ, _HOST_KEY), self.x_host)
        if value:
            state.set_host(value, FORWARDED_HOST)
        value = nth_from_right(header(environ, _PORT_KEY), self.x_port)
        if value:
            state.set_port(_check_port(value, FORWARDED_PORT))

    @staticmethod
    def _apply_wsgiproxy(environ: dict[str, Any], state: Identity) -> None:
        """The headers WSGIProxyApp sends: the original scheme and host."""
        value = header(environ, _SCHEME_KEY)
        if value:
            state.scheme = _check_scheme(value, FORWARDED_SCHEME)
        value = header(environ, _SERVER_KEY)
        if value:
            state.set_host(value, FORWARDED_SERVER)

    @staticmethod
    def _apply_traversal(environ: dict[str, Any], state: Identity) -> None:
        """X-Traversal-Path comes off the physical path: PATH_INFO is the original one."""
        value = header(environ, _TRAVERSAL_KEY)
        traversal = decode_path_header(value, TRAVERSAL_PATH).rstrip("/") if value else ""
        if traversal:
            if not traversal.startswith("/"):
                traversal = "/" + traversal  # the original sender left the slash out
            full = (environ.get("SCRIPT_NAME") or "") + (environ.get("PATH_INFO") or "")
            if not (full == traversal or full.startswith(traversal + "/")):
                raise ProtocolError("The header %s gives %r but the request path is "
                                    "%r (it should start with %s)"
                                    % (TRAVERSAL_PATH, traversal[:200], full[:200],
                                       TRAVERSAL_PATH))
            state.script_name = ""
            state.path_info = full[len(traversal):]

    def _apply_forwarded_prefix(self, environ: dict[str, Any], state: Identity) -> None:
        """X-Forwarded-Prefix (a front-proxy header, counted by x_prefix) sets SCRIPT_NAME."""
        value = nth_from_right(header(environ, _PREFIX_KEY), self.x_prefix)
        if value:
            state.script_name = _path_prefix(value, FORWARDED_PREFIX)

    @staticmethod
    def _apply_script_name(environ: dict[str, Any], state: Identity) -> None:
        """WSGIProxy's prefix headers: the SCRIPT_NAME the client saw."""
        value = header(environ, _FORWARDED_SCRIPT_NAME_KEY)
        if value:
            state.script_name = _path_prefix(value, FORWARDED_SCRIPT_NAME)
        value = header(environ, _SCRIPT_NAME_KEY)
        if value:
            state.script_name = _path_prefix(value, SCRIPT_NAME_HEADER) + state.script_name

    @staticmethod
    def _decode_keys(environ: dict[str, Any], keys_found: list[str],
                     allow_pickle: bool) -> dict[str, Any]:
        """The key headers as ``{environ key: value}``, in Str/Unicode/Json/Pickle order."""
        found = []
        for k in keys_found:
            kind = key_header_kind(k)
            if kind is not None and header(environ, k) is not None:
                found.append((_KIND_ORDER[kind], k))
        found.sort()
        keys: dict[str, Any] = {}
        for _, k in found:
            name_of = HEADER_PREFIX + k[len(_PROTOCOL_PREFIX):].replace("_", "-").title()
            name, value = _named(name_of, decode_key_header, k, environ[k], allow_pickle)
            if name.startswith(_RESERVED_KEY_PREFIXES):
                raise ProtocolError("%s names the reserved environ key %r"
                                    % (name_of, name[:100]))
            if name in keys:
                raise ProtocolError("environ key %r is sent twice" % name[:100])
            keys[name] = value
        return keys

    def _apply_forced(self, state: Identity) -> None:
        """The configured values: they win over anything a header said."""
        if self.scheme is not None:
            state.scheme = self.scheme
        if self.host is not None:
            name, port = self.host
            port = default_port(state.scheme) if port is None else port
            state.host = join_host(name, port, state.scheme)
            state.server_name, state.server_port = name, str(port)
        if self.port is not None:
            if not state.host:  # no Host header: make one, as for the other forced values
                state.host = join_host(self.domain or state.host_name())
            state.set_port(self.port)
        if self.domain is not None:
            server_port = state.server_port or str(default_port(state.scheme))
            state.server_name = self.domain
            state.host = join_host(self.domain, server_port, state.scheme)
        if self.prefix is not None:
            state.script_name = self.prefix
        elif self.pop_prefix is not None:
            pop, path = self.pop_prefix, state.path_info
            if path == pop or path.startswith(pop + "/"):
                state.script_name += pop
                state.path_info = path[len(pop):]
            else:
                raise ProtocolError("It was expected that all requests would start with the path "
                                    "%r, but got a request with %r" % (pop, path[:200]))
