"""WebSocket backends and fronts for tests/test_websocket.py, run as programs.

* ``python -m tests.wsbackend PORT`` serves :func:`serve` on 127.0.0.1:PORT: a
  `websockets`-package server (its sync API) that echoes messages, closes with
  a code on request, offers one subprotocol, negotiates permessage-deflate, and
  answers plain HTTP (``/plain``, and ``/closes?id=ID``: how session ``ID``'s
  client closed).
* ``tests.wsbackend:signed_backend()`` is a gunicorn app: a Flask-Sock app behind
  WSGIProxyMiddleware (``WSBACKEND_SECRET``: the secret file).  ``/signed/ws?id=ID``
  creates the file ID in ``WSBACKEND_MARKS`` (the handler ran), sends the rebuilt
  environ's identity as JSON, then echoes.
* ``tests.wsbackend:front()`` is a gunicorn app: proxies chosen by the first
  path segment (the path is forwarded whole), their targets from ``WSFRONT_*``
  environment variables (:data:`FRONT_ROUTES`); ``spawn_front()`` is spawn
  running the websockets backend (``WSFRONT_ROOT``: the checkout).
* ``python -m tests.wsbackend --eventlet-front PORT BACKEND_PORT`` serves
  WSGIProxyApp for the backend with eventlet's own WSGI server.
"""

import json
import os
import sys
import threading
from urllib.parse import parse_qs

#: The subprotocol the websockets backend speaks (a client may offer others).
SUBPROTOCOL = "chat.v2"

_closes = {}  # session id: (close code, reason) the client sent, or None
_closes_lock = threading.Lock()


def _session(path):
    query = path.partition("?")[2]
    return parse_qs(query).get("id", [""])[0]


def _handler(ws):
    """One WebSocket session of the websockets backend."""
    from websockets.exceptions import ConnectionClosed

    path = ws.request.path
    route = path.partition("?")[0]
    if route.startswith("/close/"):  # /close/CODE: the backend closes first
        ws.close(int(route[7:]), "backend closes with %s" % route[7:])
        return
    if route == "/headers":  # what arrived, then echo
        ws.send(json.dumps(list(ws.request.headers.raw_items())))
    try:
        for message in ws:
            ws.send(message)
    except ConnectionClosed:
        pass
    finally:
        rcvd = ws.protocol.close_rcvd
        with _closes_lock:
            _closes[_session(path)] = (rcvd.code, rcvd.reason) if rcvd else None


def _process_request(ws, request):
    route = request.path.partition("?")[0]
    if route == "/plain":
        return ws.respond(200, "plain\n")
    if route == "/closes":
        with _closes_lock:
            key = _session(request.path)
            if key not in _closes:
                return ws.respond(404, "no such session closed yet\n")
            return ws.respond(200, json.dumps(_closes[key]))
    if route == "/refuse":
        return ws.respond(403, "refused by the backend\n")
    return None


def serve(port):
    """Serve the websockets backend on 127.0.0.1:``port`` until killed."""
    from websockets.sync.server import serve as ws_serve

    def select_subprotocol(ws, offered):  # none offered: none chosen
        return SUBPROTOCOL if SUBPROTOCOL in offered else None

    with ws_serve(_handler, "127.0.0.1", port, select_subprotocol=select_subprotocol,
                  process_request=_process_request, max_size=None, ping_interval=None,
                  compression="deflate") as server:
        server.serve_forever()


# -- the signed backend (Flask-Sock behind the middleware) ---------------------------

def signed_backend():
    """The Flask-Sock app behind WSGIProxyMiddleware, for gunicorn."""
    from flask import Flask, request
    from flask_sock import Sock

    from wsgiproxy.middleware import WSGIProxyMiddleware

    marks = os.environ["WSBACKEND_MARKS"]
    flask = Flask(__name__)
    sock = Sock(flask)
    flask.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": None}

    @sock.route("/signed/ws")
    def echo(ws):
        env = request.environ
        open(os.path.join(marks, os.path.basename(request.args["id"])), "w").close()
        ws.send(json.dumps({key: env.get(key) for key in (
            "REMOTE_ADDR", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "wsgi.url_scheme",
            "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "wsgiproxy.key_id")}))
        while True:
            ws.send(ws.receive())

    return WSGIProxyMiddleware(flask.wsgi_app, secret_file=os.environ["WSBACKEND_SECRET"])


# -- the fronts ------------------------------------------------------------------------

#: The first path segment: what the front serves there (targets from WSFRONT_* variables).
FRONT_ROUTES = {
    "plain": "WSGIProxyApp for the websockets backend (WSFRONT_BACKEND)",
    "idle": "the same, websocket_idle_timeout=1",
    "slow": "the same, read_timeout=1",
    "victim": "WSGIProxyApp for WSFRONT_VICTIM (a backend the test kills)",
    "raw": "WSGIProxyApp for WSFRONT_RAW (a RawServer of the test)",
    "signed": "WSGIProxyApp(secret_file=WSFRONT_SECRET) for WSFRONT_SIGNED",
    "exact": "proxy_exact_request: the Host header names the backend",
}


def front():
    """The proxies of :data:`FRONT_ROUTES`, for gunicorn; any other path goes to ``plain``."""
    from wsgiproxy.app import WSGIProxyApp
    from wsgiproxy.exactproxy import filter_paste_httpserver_proxy, proxy_exact_request

    def href(variable):
        return "http://127.0.0.1:%s" % os.environ[variable]

    apps = {
        "plain": WSGIProxyApp(href("WSFRONT_BACKEND")),
        "idle": WSGIProxyApp(href("WSFRONT_BACKEND"), websocket_idle_timeout=1),
        "slow": WSGIProxyApp(href("WSFRONT_BACKEND"), read_timeout=1),
        "victim": WSGIProxyApp(href("WSFRONT_VICTIM")),
        "raw": WSGIProxyApp(href("WSFRONT_RAW")),
        "signed": WSGIProxyApp(href("WSFRONT_SIGNED"), secret_file=os.environ["WSFRONT_SECRET"]),
        "exact": filter_paste_httpserver_proxy(proxy_exact_request),
    }

    def dispatch(environ, start_response):
        segment = environ.get("PATH_INFO", "/")[1:].partition("/")[0]
        if segment == "exact":  # as paste.httpserver's forward proxy: Host names the backend
            environ["paste.httpserver.proxy.host"] = environ.get("HTTP_HOST", "")
        return apps.get(segment, apps["plain"])(environ, start_response)
    return dispatch


def spawn_front():
    """SpawningApplication running this module's websockets backend, for gunicorn."""
    from wsgiproxy.spawn import SpawningApplication

    return SpawningApplication([sys.executable, "-m", "tests.wsbackend", "__PORT__"],
                               cwd=os.environ["WSFRONT_ROOT"], handle_signals=False,
                               stop_timeout=2)


def eventlet_front(port, backend_port):
    """eventlet.wsgi (monkey-patched) serving WSGIProxyApp for the backend on ``backend_port``."""
    import eventlet
    eventlet.monkey_patch()
    from eventlet import wsgi

    from wsgiproxy.app import WSGIProxyApp

    app = WSGIProxyApp("http://127.0.0.1:%d" % backend_port)
    wsgi.server(eventlet.listen(("127.0.0.1", port)), app, log_output=False)


if __name__ == "__main__":
    if sys.argv[1] == "--eventlet-front":
        eventlet_front(int(sys.argv[2]), int(sys.argv[3]))
    else:
        serve(int(sys.argv[1]))
