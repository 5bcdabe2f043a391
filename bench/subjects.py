"""The subjects of the benchmark, built the same way in every process.

Imported by cpu_worker.py (in-process CPU figure) and wsgi_subject.py (the
gunicorn app), each running in the subject's own virtualenv; so this module
imports nothing but the stdlib at import time and imports the subject's
library only inside make_app().
"""
import io
import sys

# name -> (virtualenv key, human label).  "project" is /work/main/.venv.
SUBJECTS = {
    "wsgiproxy-exact": ("project", "WSGIProxy proxy_exact_request"),
    "wsgiproxy-app": ("project", "WSGIProxy WSGIProxyApp (X-Forwarded-*)"),
    "wsgiproxy-app-signed": ("project", "WSGIProxy WSGIProxyApp (signed)"),
    "paste": ("paste", "paste.proxy.Proxy"),
    "wsgiproxy2-httplib": ("wsgiproxy2", "WSGIProxy2 HostProxy (httplib)"),
    "wsgiproxy2-urllib3": ("wsgiproxy2", "WSGIProxy2 HostProxy (urllib3)"),
    "werkzeug": ("werkzeug", "Werkzeug ProxyMiddleware"),
}
# Reference floors for the CPU figure only (not WSGI apps).
FLOORS = {
    "floor-httpclient": ("tools", "floor: keep-alive http.client loop"),
    "floor-httptools": ("tools", "floor: raw socket + httptools"),
}
# Served references (requests/s and streaming only): the server's own ceiling.
SERVED_REFS = {
    "gunicorn-bare": ("project", "bare WSGI app on gunicorn (no proxy)"),
}
OURS = ("wsgiproxy-exact", "wsgiproxy-app", "wsgiproxy-app-signed")
PEERS = ("paste", "wsgiproxy2-httplib", "wsgiproxy2-urllib3", "werkzeug")

# A realistic browser-ish set of request headers, identical for every subject
# (in-process as HTTP_* keys, and sent by wrk with -H under gunicorn).
BROWSER_HEADERS = [
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
    ("Accept-Language", "en-US,en;q=0.5"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Referer", "http://localhost:8080/index.html"),
    ("Cookie", "sessionid=8c2f6b5e1d4a4f0b9e3a7c6d5b4a3f2e; csrftoken=Zm9vYmFyYmF6cXV4cXV1eA; theme=dark"),
    ("Upgrade-Insecure-Requests", "1"),
    ("Sec-Fetch-Dest", "document"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-Site", "same-origin"),
    ("Cache-Control", "max-age=0"),
]
FRONT_HOST = "localhost:8080"  # the Host the client used to reach the proxy

WORKLOADS = {
    # name: (method, path, request body size, expected response body size)
    "get1k": ("GET", "/1k", 0, 1024),
    "post1k": ("POST", "/echo-len", 1024, 1024),
    "get64k": ("GET", "/64k", 0, 65536),
}
POST_BODY = b"a=" + b"b" * 1022


def header_key(name):
    return "HTTP_" + name.upper().replace("-", "_")


def base_environ(backend_host, backend_port):
    """The environ every subject gets: gunicorn-like, with the backend as
    SERVER_NAME:SERVER_PORT (that is where proxy_exact_request sends it)."""
    env = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/1k",
        "QUERY_STRING": "",
        "RAW_URI": "/1k",
        "SERVER_NAME": backend_host,
        "SERVER_PORT": str(backend_port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "54321",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "HTTP_HOST": FRONT_HOST,
        "HTTP_CONNECTION": "keep-alive",
    }
    for name, value in BROWSER_HEADERS:
        env[header_key(name)] = value
    return env


def workload_environ(base, workload):
    method, path, body_len, _ = WORKLOADS[workload]
    env = dict(base)
    env["REQUEST_METHOD"] = method
    env["PATH_INFO"] = path
    env["RAW_URI"] = path
    if body_len:
        env["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
        env["CONTENT_LENGTH"] = str(body_len)
    return env


class MissingSubject(Exception):
    """The subject's code is not importable (e.g. not written yet)."""


def make_app(name, backend_host, backend_port, secret_file=None, under_server=False,
             options=None):
    """Return the WSGI app of subject *name* proxying to the backend.

    under_server: the app runs behind a real WSGI server, whose environ has
    the server's own SERVER_NAME/PORT; proxy_exact_request is then wrapped to
    point SERVER_NAME/SERVER_PORT at the backend (two dict stores).
    options: extra keyword arguments for WSGIProxyApp (longlived.py: max_tunnels).
    """
    options = options or {}
    href = "http://%s:%d" % (backend_host, backend_port)
    if name == "gunicorn-bare":
        return bare_app
    try:
        if name == "wsgiproxy-exact":
            from wsgiproxy.exactproxy import proxy_exact_request
            if not under_server:
                return proxy_exact_request
            port = str(backend_port)

            def exact(environ, start_response):
                environ["SERVER_NAME"] = backend_host
                environ["SERVER_PORT"] = port
                return proxy_exact_request(environ, start_response)
            return exact
        if name == "wsgiproxy-app":
            from wsgiproxy.app import WSGIProxyApp
            return WSGIProxyApp(href, **options)
        if name == "wsgiproxy-app-signed":
            from wsgiproxy.app import WSGIProxyApp
            if not secret_file:
                raise MissingSubject("no secret file given")
            return WSGIProxyApp(href, secret_file=secret_file, **options)
        if name == "paste":
            from paste.proxy import Proxy  # type: ignore[import-untyped]
            return Proxy(href)
        if name == "wsgiproxy2-httplib":
            from wsgiproxy import HostProxy
            return HostProxy(href, client="httplib")
        if name == "wsgiproxy2-urllib3":
            from wsgiproxy import HostProxy
            return HostProxy(href, client="urllib3")
        if name == "werkzeug":
            from werkzeug.middleware.http_proxy import ProxyMiddleware

            def not_found(environ, start_response):
                start_response("404 Not Found", [("Content-Length", "0")])
                return [b""]
            # ProxyMiddleware turns every prefix key K into "/K.strip('/')/", so a
            # "/" key becomes "//" and no prefix can cover the whole site; do
            # what its __call__ does once a prefix matched: proxy_to(opts, ...).
            mw = ProxyMiddleware(not_found, {"/all/": {"target": href}})
            opts = mw.targets["/all/"]
            proxy_to = mw.proxy_to

            def werkzeug_proxy(environ, start_response):
                return proxy_to(opts, environ["PATH_INFO"], "/")(environ, start_response)
            return werkzeug_proxy
    except (ImportError, AttributeError) as exc:
        raise MissingSubject("%s: %s: %s" % (name, type(exc).__name__, exc)) from exc
    raise ValueError("unknown subject %r" % name)


BARE_READ = 4 << 20
BARE_CHUNK = b"z" * (256 * 1024)
BARE_1K = b"x" * 1024


def bare_app(environ, start_response):
    """No proxy: answers like the backend, to show what the WSGI server itself
    can carry (GET /1k; GET /stream?bytes=N yields 256 KiB pieces; PUT
    /upload reads wsgi.input 4 MiB at a time)."""
    path = environ.get("PATH_INFO", "")
    if path == "/stream":
        n = int(environ.get("QUERY_STRING", "").partition("bytes=")[2].split("&")[0] or 0)
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(n))])

        def gen(left=n):
            size = len(BARE_CHUNK)
            while left >= size:
                yield BARE_CHUNK
                left -= size
            if left:
                yield BARE_CHUNK[:left]
        return gen()
    if path == "/upload":
        read = environ["wsgi.input"].read
        total = 0
        while True:
            data = read(BARE_READ)
            if not data:
                break
            total += len(data)
        body = str(total).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", "1024")])
    return [BARE_1K]
