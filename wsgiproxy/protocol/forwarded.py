"""Forwarded headers, client addresses and hosts (sans-IO).

RFC 7239 ``Forwarded`` parsing and formatting, the comma lists of
``X-Forwarded-*`` (read the Werkzeug ProxyFix way, from the right), client
addresses (``for=`` nodes), trusted networks and ``host[:port]`` values.
Every comma list is split with quoted strings respected.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..abnf import TOKEN, is_token, split_comma_list
from ..converters import aslist
from ..errors import ProtocolError
from .headers import CTL_RE

__all__ = [
    "LOOPBACK", "TrustedNetworks", "default_port", "format_forwarded", "forwarded_node",
    "join_host", "nth_from_right", "parse_forwarded", "parse_node", "split_host",
]


_FWD_NAME_RE = re.compile(TOKEN)
# Unquoted values are a token plus ':' '[' ']' -- so not abnf.TOKEN: proxies
# emit for=192.0.2.1:80 and for=[2001:db8::1] unquoted although RFC 7239 says
# to quote them.
_FWD_VALUE_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z:\[\]-]+")
_FWD_QUOTED_RE = re.compile(
    r'"((?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*)"')
_FWD_UNESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_OBF_RE = re.compile(r"_[A-Za-z0-9._-]+\Z")
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")
# True when every quoted string in the value ends (the quoted-string of abnf.split_comma_list).
_QUOTES_CLOSE = re.compile(r'(?:[^"]|"(?:[^"\\]|\\.)*")*\Z', re.DOTALL).match


def _skip_ows(value: str, pos: int) -> int:
    while pos < len(value) and value[pos] in " \t":
        pos += 1
    return pos


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """Parse an RFC 7239 ``Forwarded`` header into a list of dicts, one per hop, oldest first.

    Parameter names are lower-cased; quoted-string values are unescaped.
    Empty elements are skipped.  Raises :class:`ProtocolError` for unterminated
    quotes, a missing ``=``, a parameter repeated within one element, or stray
    characters.
    """
    if not isinstance(value, str):
        raise ProtocolError("Forwarded must be a str")
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    pos, end = 0, len(value)
    while True:
        pos = _skip_ows(value, pos)
        if pos >= end:
            break
        char = value[pos]
        if char == ",":
            if element:
                elements.append(element)
            element = {}
            pos += 1
            continue
        if char == ";":
            pos += 1
            continue
        match = _FWD_NAME_RE.match(value, pos)
        if not match:
            raise ProtocolError("Forwarded: expected a parameter name at character %d" % pos)
        name = match.group().lower()
        pos = match.end()
        if pos >= end or value[pos] != "=":
            raise ProtocolError("Forwarded: expected '=' after %r" % name)
        pos += 1
        if pos < end and value[pos] == '"':
            match = _FWD_QUOTED_RE.match(value, pos)
            if not match:
                raise ProtocolError("Forwarded: unterminated or invalid quoted string for %r"
                                    % name)
            param = _FWD_UNESCAPE_RE.sub(r"\1", match.group(1))
        else:
            match = _FWD_VALUE_RE.match(value, pos)
            if not match:
                raise ProtocolError("Forwarded: missing or invalid value for %r" % name)
            param = match.group()
        pos = match.end()
        if name in element:
            raise ProtocolError("Forwarded: parameter %r appears twice in one element" % name)
        element[name] = param
        pos = _skip_ows(value, pos)
        if pos < end and value[pos] not in ",;":
            raise ProtocolError("Forwarded: unexpected character at position %d" % pos)
    if element:
        elements.append(element)
    return elements


def _format_forwarded_value(value: object) -> str:
    if not isinstance(value, str):
        value = str(value)
    if is_token(value):
        return value
    if CTL_RE.search(value):
        raise ProtocolError("a Forwarded value must not contain control characters")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ProtocolError("a Forwarded value must be ISO-8859-1") from None
    return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')


ForwardedElement = Mapping[str, Any] | Iterable[tuple[str, Any]]


def format_forwarded(elements: Iterable[ForwardedElement]) -> str:
    """Format hops (mappings of parameter -> value, ``None`` skipped) as a ``Forwarded`` value.

    Values that are not tokens (IPv6 nodes, ports) are quoted; control
    characters raise :class:`ProtocolError`.
    """
    parts = []
    for element in elements:
        items = element.items() if hasattr(element, "items") else element
        pairs = []
        for name, value in items:
            if value is None:
                continue
            if not isinstance(name, str) or not is_token(name):
                raise ProtocolError("Forwarded parameter name %r is not a token" % (name,))
            pairs.append("%s=%s" % (name.lower(), _format_forwarded_value(value)))
        if pairs:
            parts.append(";".join(pairs))
    return ", ".join(parts)


def forwarded_node(address: str | None, port: int | str | None = None) -> str:
    """A ``for=``/``by=`` node: ``192.0.2.1``, ``[2001:db8::1]:8080``, ``unknown``, ``_hidden``."""
    if address is None or address == "":
        name = "unknown"
    elif address == "unknown" or _OBF_RE.match(address):
        name = address
    else:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            raise ValueError("%r is not an IP address, 'unknown' or an obfuscated node"
                             % (address,)) from None
        name = "[%s]" % ip if ip.version == 6 else str(ip)
    if port is not None and port != "":
        port = str(port)
        if not (_PORT_RE.match(port) and int(port) <= 65535) and not _OBF_RE.match(port):
            raise ValueError("%r is not a port" % (port,))
        name += ":" + port
    return name


def parse_node(value: str) -> tuple[str, str | None]:
    """Parse a client address as found in ``for=`` or ``X-Forwarded-For``: ``(address, port)``.

    Accepts ``192.0.2.1``, ``192.0.2.1:80``, ``[2001:db8::1]``,
    ``[2001:db8::1]:80``, a bare ``2001:db8::1``, ``unknown`` and obfuscated
    ``_name`` nodes.  IP addresses come back normalised without brackets;
    ``port`` is a str or ``None``.  Raises :class:`ProtocolError` otherwise.
    """
    if not isinstance(value, str):
        raise ProtocolError("a node must be a str")
    text = value.strip(" \t")
    port = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ProtocolError("node %r has an unclosed '['" % text[:60])
        name, rest = text[1:close], text[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ProtocolError("node %r has stray characters after ']'" % text[:60])
            port = rest[1:]
        try:
            name = str(ipaddress.IPv6Address(name))
        except ValueError:
            raise ProtocolError("node %r is not a valid IPv6 address" % text[:60]) from None
    elif text.count(":") > 1:
        try:
            name = str(ipaddress.IPv6Address(text))
        except ValueError:
            raise ProtocolError("node %r is not a valid IPv6 address" % text[:60]) from None
    else:
        name, colon, port = text.partition(":")
        if not colon:
            port = None
        if name.lower() == "unknown":
            name = "unknown"
        elif not _OBF_RE.match(name):
            try:
                name = str(ipaddress.IPv4Address(name))
            except ValueError:
                raise ProtocolError("node %r is not an IP address, 'unknown' or an obfuscated "
                                    "identifier" % text[:60]) from None
    if port is not None and not ((_PORT_RE.match(port) and int(port) <= 65535)
                                 or _OBF_RE.match(port)):
        raise ProtocolError("node %r has an invalid port" % text[:60])
    return name, port


def nth_from_right(value: str | None, n: int) -> str | None:
    """The ``n``-th item from the right of a comma list, or ``None`` if it has fewer than ``n``.

    Werkzeug ProxyFix semantics: each trusted proxy appends one value, so the
    ``n``-th from the right is the one written by the outermost of ``n``
    trusted proxies; anything further left was written by the client.  ``n``
    of 0 (or an empty value) gives ``None``.  A comma inside a quoted string
    does not split (``"a, b"`` is one item, quotes kept).
    """
    if not n or not value:
        return None
    if '"' in value and not _QUOTES_CLOSE(value):
        # A quote that never closes protects no comma: else a client could
        # open one and swallow the values trusted proxies append after its
        # own, moving a value of its choice into their place.
        items = [item for item in (part.strip(" \t") for part in value.split(",")) if item]
    else:
        items = split_comma_list(value)
    if len(items) < n:
        return None
    return items[-n]


def _strip_brackets(text: str) -> str:
    if text.startswith("[") and "]" in text:
        inner, _, rest = text[1:].partition("]")
        return inner + rest
    return text


class TrustedNetworks:
    """A set of IP addresses and CIDR ranges (IPv4 and IPv6); ``"*"`` means every address.

    ``spec`` is a string or list of strings, items separated by commas or
    whitespace.  ``addr in networks`` never raises: anything that is not an
    IP address is not in the set.  ``[::1]`` brackets, zone ids and
    IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``) are understood.
    """

    def __init__(self, spec: str | Iterable[str] | TrustedNetworks | None = None) -> None:
        self.everything = False
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        if isinstance(spec, TrustedNetworks):
            self.everything, self.networks = spec.everything, list(spec.networks)
            return
        for item in self._items(spec):
            if item == "*":
                self.everything = True
                continue
            try:
                network = ipaddress.ip_network(_strip_brackets(item), strict=False)
            except ValueError:
                raise ValueError("trusted address %r is not an IP address or CIDR range"
                                 % (item,)) from None
            if network not in self.networks:
                self.networks.append(network)

    @staticmethod
    def _items(spec: str | Iterable[str] | None) -> list[str]:
        if spec is None:
            return []
        if isinstance(spec, str):
            spec = [spec]
        items: list[str] = []
        for part in spec:
            if not isinstance(part, str):
                raise TypeError("trusted addresses must be strings, not %r" % (part,))
            items.extend(aslist(part))
        return items

    def __contains__(self, addr: object) -> bool:
        if self.everything:
            return True
        if not isinstance(addr, str) or not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(_strip_brackets(addr.strip()))
        except ValueError:
            return False
        candidates = [ip]
        if ip.version == 6 and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(candidate.version == network.version and candidate in network
                   for candidate in candidates for network in self.networks)

    def __bool__(self) -> bool:
        return self.everything or bool(self.networks)

    def __repr__(self) -> str:
        if self.everything:
            return "TrustedNetworks('*')"
        return "TrustedNetworks(%r)" % " ".join(str(n) for n in self.networks)


#: Loopback peers: the default trust when neither a secret nor trusted addresses are configured.
LOOPBACK = TrustedNetworks("127.0.0.0/8 ::1")

_REG_NAME_RE = re.compile(r"[A-Za-z0-9._~%-]+\Z")


def split_host(value: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` into ``(host, port)``; IPv6 hosts keep their brackets.

    ``example.com:8080`` -> ``("example.com", 8080)``, ``[2001:db8::a]`` ->
    ``("[2001:db8::a]", None)``.  Brackets are kept so that ``host + ":" +
    port`` stays a valid authority.  Raises :class:`ProtocolError` for
    anything else (bad characters, bad port, bad IPv6, userinfo...).
    """
    if not isinstance(value, str):
        raise ProtocolError("a host must be a str")
    text = value.strip(" \t")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ProtocolError("host %r has an unclosed '['" % text[:100])
        host, rest = text[:close + 1], text[close + 1:]
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner.replace("%25", "%"))
        except ValueError:
            raise ProtocolError("host %r is not a valid IPv6 literal" % text[:100]) from None
        if rest and not rest.startswith(":"):
            raise ProtocolError("host %r has stray characters after ']'" % text[:100])
        port = rest[1:] if rest else ""
    else:
        host, _, port = text.partition(":")
        if not host or not _REG_NAME_RE.match(host):
            raise ProtocolError("host %r is not a valid host name" % text[:100])
    if port == "":
        return host, None
    if not _PORT_RE.match(port) or int(port) > 65535:
        raise ProtocolError("host %r has an invalid port" % text[:100])
    return host, int(port)


def default_port(scheme: str | None) -> int:
    """443 for https, 80 for anything else."""
    return 443 if scheme == "https" else 80


def join_host(host: str, port: int | str | None = None, scheme: str | None = None) -> str:
    """``host[:port]``, bracketing a bare IPv6 address; the port is left out when it is
    the default for ``scheme`` (so URLs built from it look like the ones clients typed)."""
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host
    if port is None or port == "":
        return host
    if scheme is not None and str(port) == str(default_port(scheme)):
        return host
    return "%s:%s" % (host, port)
