"""WebSocket (any ``Upgrade``) through WSGI: the client's socket, the tunnel limit, the request's end.

WSGI has no way to switch protocols, but several servers hand the client's
socket to the application: gunicorn (``gunicorn.socket``, every worker
class), Werkzeug's development server (``werkzeug.socket``) and eventlet's
own server (``eventlet.input``).  There the proxy forwards the upgrade
request like any other (headers, keys, signature), and when the backend
answers ``101`` it writes that answer to the client's socket as it came and
relays bytes both ways (:class:`~wsgiproxy.tunnel.Tunnel`) until either
side closes; then it ends the request so that the server writes nothing
more and closes the connection.

Where the server gives no socket (waitress, mod_wsgi), an upgrade request is
answered ``501`` and nothing is sent to the backend; ``Upgrade: h2c`` alone
is the exception: it is optional (the client goes on in HTTP/1.1 when it is
not taken up), so it is dropped, as before.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from .errors import TooManyTunnels, UpgradeNotSupported, check_number
from .http11 import upgrade_protocols
from .observe import event

__all__ = ["SERVERS_WITH_SOCKETS", "Tunnels", "client_socket", "requested_protocols"]

log = logging.getLogger("wsgiproxy")

Environ = dict[str, Any]

#: The servers that hand the client's socket over, as the 501's message names them.
SERVERS_WITH_SOCKETS = ("gunicorn (gthread, gevent or eventlet workers), "
                        "Werkzeug's development server, eventlet.wsgi")


def _end_gunicorn(start_response: Any) -> Iterable[bytes]:
    # Every gunicorn worker closes the connection, writing nothing, when the
    # application raises StopIteration (what Flask-Sock and others rely on).
    raise StopIteration


def _end_eventlet(start_response: Any) -> Iterable[bytes]:
    wsgi = sys.modules.get("eventlet.wsgi")
    local = getattr(wsgi, "WSGI_LOCAL", None)
    if local is not None:
        local.already_handled = True  # eventlet.wsgi then closes without writing
    return getattr(wsgi, "ALREADY_HANDLED", None) or []


def _end_werkzeug(start_response: Any) -> Iterable[bytes]:
    # Werkzeug writes the status it is given on the socket, shut down by
    # now: it sees a dropped connection and closes it, quietly.
    start_response("101 Switching Protocols", [])
    return []


def client_socket(environ: Environ) -> tuple[Any, Callable[[Any], Iterable[bytes]]] | None:
    """The client's socket the server hands over, and what ends the request after a tunnel.

    ``None`` when the server hands over no socket.  The second item is
    called with ``start_response`` after the tunnel, and its result returned
    by the application (it may raise ``StopIteration`` instead, which
    gunicorn takes as "close").
    """
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        return sock, _end_gunicorn
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        return sock, _end_werkzeug
    stream = environ.get("eventlet.input")
    if stream is not None and hasattr(stream, "get_socket"):
        return stream.get_socket(), _end_eventlet
    return None


def requested_protocols(environ: Environ) -> str | None:
    """The protocols the request asks to switch to (``Upgrade``), or ``None`` for an ordinary request.

    ``Upgrade: h2c`` from a server that hands over no socket is dropped:
    the client goes on in HTTP/1.1.

    :raises InvalidRequest: for a malformed ``Upgrade`` header.
    """
    version = environ.get("SERVER_PROTOCOL", "")
    if "eventlet.input" in environ:  # eventlet.wsgi says HTTP/1.0 whatever the request said
        version = "HTTP/1.1"
    protocols = upgrade_protocols(environ.get("HTTP_UPGRADE"), environ.get("HTTP_CONNECTION"),
                                  version)
    if protocols is not None and protocols.lower() == "h2c" and client_socket(environ) is None:
        return None
    return protocols


class Tunnels:
    """The tunnels of one proxy: how many may be open at once, how long one may be idle.

    :param max_tunnels: tunnels open at once in this process, at most; past
        it an upgrade request gets 503.  0 turns tunnelling off (501).
    :param idle_timeout: seconds a tunnel may pass no byte either way before
        it is closed (``None``: no limit; the transport's ``read_timeout``
        does not apply to tunnels).
    """

    def __init__(self, max_tunnels: int = 1000, idle_timeout: float | None = None) -> None:
        self.max_tunnels = int(max_tunnels)
        self.idle_timeout = float(idle_timeout) if idle_timeout else None
        check_number("max_tunnels", self.max_tunnels)
        if self.idle_timeout is not None:
            check_number("websocket_idle_timeout", self.idle_timeout)
        self.open_count = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "<Tunnels %d of %d open>" % (self.open_count, self.max_tunnels)

    def open(self, environ: Environ, opener: Callable[[], tuple[Any, Iterable[bytes]]]
             ) -> tuple[Any, Iterable[bytes]]:
        """Send an upgrade request with ``opener()`` if a tunnel could follow it.

        ``opener`` sends the request and returns ``(response, body)``.  A
        ``101`` answer holds a place among ``max_tunnels`` until
        :meth:`run` ends it; any other answer is ordinary.

        :raises UpgradeNotSupported: (501) when the server hands over no
            socket, or tunnels are off; nothing is sent then.
        :raises TooManyTunnels: (503) when ``max_tunnels`` are open.
        """
        if not self.max_tunnels:
            raise UpgradeNotSupported("tunnels (WebSocket) are turned off here (max_tunnels = 0)")
        if client_socket(environ) is None:
            raise UpgradeNotSupported(
                "this WSGI server (%s) does not hand the connection to the application, so "
                "an Upgrade (WebSocket) request cannot be proxied here; servers that do: %s"
                % (environ.get("SERVER_SOFTWARE") or "unknown", SERVERS_WITH_SOCKETS))
        with self._lock:
            if self.open_count >= self.max_tunnels:
                raise TooManyTunnels("%d tunnels are open, the most this process allows "
                                     "(max_tunnels)" % self.max_tunnels)
            self.open_count += 1
        event("tunnel", "open")
        try:
            response, body = opener()
        except BaseException:
            self._done()
            raise
        if response.status != 101:
            self._done()
        return response, body

    def run(self, environ: Environ, start_response: Any, response: Any,
            body: Iterable[bytes]) -> Iterable[bytes]:
        """Relay the switched connection of ``response`` (a ``101``) to the client until it ends.

        Returns what the WSGI application returns then (or raises
        ``StopIteration`` under gunicorn, which closes the connection).
        """
        handover = client_socket(environ)
        assert handover is not None  # open() checked
        sock, end = handover
        try:
            up, down = response.tunnel.relay(sock, self.idle_timeout)
            log.debug("%s %s: tunnel closed after %d bytes up, %d down",
                      environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", ""), up, down)
        finally:
            self._done()
            close = getattr(body, "close", None)  # a balancer's body ends the request
            if close is not None:
                close()
        return end(start_response)

    def _done(self) -> None:
        with self._lock:
            self.open_count -= 1
        event("tunnel", "closed")
