"""Proxy the exact request an environ describes.

``proxy_exact_request`` connects to ``SERVER_NAME:SERVER_PORT`` over
``wsgi.url_scheme`` and sends the method, path, query, body and every
``HTTP_*`` header, with ``Host`` taken from ``HTTP_HOST`` (the two may
differ).  It adds no ``X-Forwarded-*`` headers; that is
:class:`wsgiproxy.app.WSGIProxyApp`'s job.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from .errors import InvalidRequest, WSGIProxyError
from .forwarding import (
    environ_headers,
    failure_answer,
    outgoing_request,
    relay,
    request_path,
    safe_target,
    send,
    send_upgrade,
)
from .observe import SINKS, Observer, Record
from .protocol import join_host
from .transport import Transport, make_transport
from .upgrade import Tunnels, requested_protocols

__all__ = ["ExactProxy", "proxy_exact_request", "filter_paste_httpserver_proxy",
           "filter_paste_httpserver_proxy_environ"]

_DEFAULT_PORTS = {"http": "80", "https": "443"}


class ExactProxy:
    """A WSGI app that proxies the exact request described by the environ.

    :param transport: a :class:`~wsgiproxy.transport.Transport`; by default
        an :class:`~wsgiproxy.transport.HTTPTransport` built from
        ``transport_options`` (``connect_timeout``, ``read_timeout``,
        ``pool_size``, ``ca_certs``, ``verify``...).
    :param max_tunnels, websocket_idle_timeout: WebSocket (``Upgrade``)
        tunnels, as for :class:`~wsgiproxy.app.WSGIProxyApp`.

    Each request gets a line in the access log (``wsgiproxy.access``, side
    ``exact``), as ``WSGIProxyApp``'s do; in the metrics its backend is
    ``-`` (any host can be one, too many for labels).
    """

    #: The access log and the metrics (:class:`~wsgiproxy.observe.Observer`).
    observer = Observer(side="exact")

    def __init__(self, transport: Transport | str | None = None, max_tunnels: int = 1000,
                 websocket_idle_timeout: float | None = None,
                 **transport_options: Any) -> None:
        self.tunnels = Tunnels(max_tunnels, websocket_idle_timeout)
        self.transport: Transport
        if transport is None or isinstance(transport, str):
            self.transport = make_transport(transport or "http", **transport_options)
        elif transport_options:
            raise TypeError("transport options given with a ready transport: %s"
                            % ", ".join(sorted(transport_options)))
        else:
            self.transport = transport

    def __call__(self, environ: dict[str, Any], start_response: Any,
                 record: Record | None = None) -> Iterable[bytes]:
        """The WSGI application (``record``: see :meth:`WSGIProxyApp.__call__
        <wsgiproxy.app.WSGIProxyApp.__call__>`)."""
        if (record is None and (self.observer.quiet.get(20) is not False or SINKS)
                and (record := self.observer.start(environ)) is not None):
            try:
                body = self(environ, record.start_response(start_response), record)
            except BaseException:
                record.finish()
                raise
            if record.status is not None and record.status.startswith("101"):
                record.finish()
                return body
            return record.body(body)
        scheme = environ.get("wsgi.url_scheme", "http")
        host = environ.get("SERVER_NAME")
        port = environ.get("SERVER_PORT") or _DEFAULT_PORTS.get(scheme)
        try:
            if scheme not in _DEFAULT_PORTS or not host or not port or not port.isdigit():
                raise InvalidRequest("cannot proxy to scheme %r, host %r, port %r"
                                     % (scheme, host, port))
            headers = environ_headers(environ)
            headers.append(("Host", environ.get("HTTP_HOST") or join_host(host, port, scheme)))
            target = request_path(environ) or "/"
            query = environ.get("QUERY_STRING")
            if query:
                target += "?" + safe_target(query)
            request = outgoing_request(environ, target, headers)
            if "HTTP_UPGRADE" in environ and (protocols := requested_protocols(environ)):
                upgrade: Any = functools.partial(send_upgrade, protocols=protocols)
                if record is not None:
                    upgrade = record.sender(upgrade)
                response, body = self.tunnels.open(environ, functools.partial(
                    upgrade, self.transport, scheme, host, port, request))
                if response.status == 101:
                    if record is not None:
                        record.status = response.status_line
                    return self.tunnels.run(environ, start_response, response, body)
            elif record is not None:
                response, body = record.sender(send)(self.transport, scheme, host, port, request)
            else:
                response, body = send(self.transport, scheme, host, port, request)
        except WSGIProxyError as exc:
            return failure_answer(environ, start_response, exc)
        return relay(start_response, response, body)

    def close(self) -> None:
        """Close the pooled connections."""
        self.transport.close()


_default_proxy: ExactProxy | None = None


def proxy_exact_request(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Proxy the request in ``environ`` to ``SERVER_NAME:SERVER_PORT`` (a WSGI app).

    Uses one shared, pooled :class:`ExactProxy`; make your own instance for
    other timeouts or TLS settings.
    """
    global _default_proxy
    proxy = _default_proxy
    if proxy is None:
        proxy = _default_proxy = ExactProxy()
    return proxy(environ, start_response)


def filter_paste_httpserver_proxy_environ(environ: dict[str, Any]) -> None:
    """Map ``paste.httpserver.proxy.scheme/host`` keys to ``wsgi.url_scheme``, SERVER_NAME/PORT."""
    if "paste.httpserver.proxy.scheme" in environ:
        environ["wsgi.url_scheme"] = environ["paste.httpserver.proxy.scheme"]
    if "paste.httpserver.proxy.host" in environ:
        host = environ["paste.httpserver.proxy.host"]
        scheme = environ.get("wsgi.url_scheme", "http")
        if host.startswith("["):  # [::1]:8080
            name, _, port = host[1:].partition("]")
            port = port[1:] if port.startswith(":") else ""
        elif host.count(":") == 1:
            name, _, port = host.partition(":")
        else:
            name, port = host, ""
        environ["SERVER_NAME"] = name
        environ["SERVER_PORT"] = port or _DEFAULT_PORTS.get(scheme, "80")


def filter_paste_httpserver_proxy(app: Any) -> Any:
    """Wrap ``app`` so ``paste.httpserver``'s proxy keys choose the backend.

    This lets ``paste.httpserver`` act as a real forward HTTP proxy around
    :func:`proxy_exact_request`.
    """
    def filter_app(environ, start_response):
        filter_paste_httpserver_proxy_environ(environ)
        return app(environ, start_response)
    return filter_app
