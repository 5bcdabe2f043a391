"""The upstream HTTP proxy of the httplib2 transport: its URL, and the ``CONNECT`` tunnel."""

from __future__ import annotations

import base64
import re
import socket
from typing import Any
from urllib.parse import unquote, urlsplit

import httplib2

from ..errors import BackendUnavailable, BadBackendResponse
from ..http11 import MAX_HEAD

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})").match


class _Proxy:
    """An upstream HTTP proxy: ``http://[user:password@]host[:port]``."""

    def __init__(self, url: str | httplib2.ProxyInfo) -> None:
        if isinstance(url, httplib2.ProxyInfo):
            info: Any = url  # (its attributes are missing from types-httplib2)
            if info.proxy_type != 3:  # socks.PROXY_TYPE_HTTP
                raise ValueError("only HTTP upstream proxies are supported, not SOCKS")
            host, port, user, password = (info.proxy_host, int(info.proxy_port),
                                          info.proxy_user, info.proxy_pass)
        else:
            parts = urlsplit(url if "://" in url else "http://" + url)
            if parts.scheme != "http":
                raise ValueError("proxy_info: only http:// upstream proxies are supported, "
                                 "not %r" % parts.scheme)
            if not parts.hostname:
                raise ValueError("proxy_info: no host in the proxy URL")
            host, port = parts.hostname, parts.port or 80
            user = unquote(parts.username) if parts.username is not None else None
            password = unquote(parts.password or "")
        self.host, self.port = host, port
        self.url = "http://%s:%d" % ("[%s]" % host if ":" in host else host, port)
        self.authorization = None
        if user is not None:
            token = base64.b64encode(("%s:%s" % (user, password or "")).encode("utf-8"))
            self.authorization = "Basic " + token.decode("ascii")

    def __repr__(self) -> str:  # without the credentials
        return "<upstream proxy %s>" % self.url


def _tunnel(sock: socket.socket, proxy: _Proxy, host: str, port: int) -> None:
    """Ask the upstream proxy for a tunnel to ``host:port`` (HTTP ``CONNECT``)."""
    hostport = "%s:%d" % ("[%s]" % host if ":" in host else host, port)
    lines = ["CONNECT %s HTTP/1.1" % hostport, "Host: %s" % hostport]
    if proxy.authorization:
        lines.append("Proxy-Authorization: %s" % proxy.authorization)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(4096)
        if not data:
            raise BackendUnavailable("upstream proxy %s closed the connection instead of "
                                     "answering CONNECT" % proxy.url)
        buf += data
        if len(buf) > MAX_HEAD:
            raise BadBackendResponse("upstream proxy %s sent an oversized CONNECT answer"
                                     % proxy.url)
    head, _, rest = buf.partition(b"\r\n\r\n")
    match = _STATUS_LINE(head)
    if match is None or not 200 <= int(match.group(1)) < 300:
        first = head.split(b"\r\n", 1)[0].decode("latin-1")
        raise BackendUnavailable("upstream proxy %s refused CONNECT to %s: %r"
                                 % (proxy.url, hostport, first[:80]))
    if rest:
        raise BadBackendResponse("upstream proxy %s sent data before the TLS handshake"
                                 % proxy.url)
