"""A sample backend that explains the request it got: the demo's far end.

The page sets what the backend's server received beside what the application
sees once :class:`~wsgiproxy.middleware.WSGIProxyMiddleware` has rebuilt the
client's request, highlights the keys that differ, gives the signature's key
id and verdict, and says in one line each what the proxy, the middleware and
this app did.  HTML by default, JSON when the client's Accept prefers it (or
``?format=json``): the environ as before, flat, plus ``wsgiproxy.sample.*``
keys, so it doubles as an echo server for tests and for checking a deployment.

What "received" holds: with :func:`make_received_filter` in front of the
middleware, the whole environ as the server made it (``X-WSGIProxy-*``
headers included); without it, the values the middleware kept in
``wsgiproxy.orig`` (host, scheme, client address, paths).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import UnknownOption
from .responses import wants_json

__all__ = ["application", "explain", "make_sample_app", "make_demo_user_filter",
           "make_received_filter"]

#: Where :func:`make_received_filter` keeps the environ's string values, as they arrived.
RECEIVED = "wsgiproxy.sample.received"
_HIDDEN = (RECEIVED, "wsgiproxy.orig")  # shown as the "received" column instead
_PROXY_HEADERS = ("HTTP_X_FORWARDED_", "HTTP_FORWARDED", "HTTP_X_WSGIPROXY_")
_STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
          "th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top;"
          "font-family:monospace;word-break:break-all}thead th{font-family:sans-serif}"
          "tr.rebuilt td,tr.rebuilt th{background:#fff3b0}.absent{color:#999}")


def _shown(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _header_name(key: str) -> str:
    return key[5:].replace("_", "-").title().replace("Wsgiproxy", "WSGIProxy")


def explain(environ: Mapping[str, Any]) -> dict[str, Any]:
    """What the page shows, as plain data: the ``wsgiproxy.sample.*`` keys of the JSON answer.

    :param environ: the environ the application got (after the middleware, if any).
    Returns ``received`` (what the backend's server received: every key when
    :func:`make_received_filter` ran, else the middleware's ``wsgiproxy.orig``),
    ``rebuilt`` (the keys whose value differs: changed, added or removed),
    ``signature`` (``key_id``, ``format``, ``verdict``) and ``parts`` (one
    sentence for each of ``proxy``, ``middleware`` and ``app``).
    """
    orig = environ.get("wsgiproxy.orig")
    snapshot = environ.get(RECEIVED)
    if isinstance(snapshot, dict):
        received = dict(snapshot)
    else:
        received = {k: v for k, v in environ.items() if isinstance(v, str)}
        received.update(orig if isinstance(orig, dict) else {})
    now = {k: v for k, v in environ.items() if isinstance(v, str)}
    rebuilt = sorted(k for k in set(received) | set(now)
                     if received.get(k) != now.get(k) and not k.startswith("wsgiproxy."))

    key_id, fmt = environ.get("wsgiproxy.key_id"), environ.get("wsgiproxy.signature_format")
    if not isinstance(orig, dict):
        verdict = "not checked: no WSGIProxyMiddleware in front of this app"
    elif key_id is not None:
        verdict = "valid: verified with key %s (%s signature)" % (key_id, fmt)
    else:
        verdict = ("unsigned: let through without a signature (its peer is trusted, or "
                   "require_signature = false)")
    headers = sorted(k for k in received if k.startswith(_PROXY_HEADERS))
    if headers:
        proxy = ("a proxy forwarded the request to this backend (Host %s, port %s), adding %s"
                 % (received.get("HTTP_HOST", "?"), received.get("SERVER_PORT", "?"),
                    ", ".join(_header_name(k) for k in headers)))
    else:
        proxy = "no proxy headers arrived: the request came straight from its client"
    if isinstance(orig, dict):
        removed = [k for k in rebuilt if k not in now]
        middleware = ("WSGIProxyMiddleware checked the signature (%s) and rebuilt the client's "
                      "request: %s" % (verdict.split(":")[0],
                                       ", ".join(k for k in rebuilt if k in now) or "nothing"))
        if removed:
            middleware += "; removed %s" % ", ".join(removed)
    else:
        middleware = "no WSGIProxyMiddleware ran: the app sees the request as its server made it"
    app = ("the sample app (process %d) answered with what it sees: the request of %s for "
           "%s://%s%s%s" % (os.getpid(), now.get("REMOTE_ADDR", "?"),
                           now.get("wsgi.url_scheme", "?"), now.get("HTTP_HOST", "?"),
                           now.get("SCRIPT_NAME", ""), now.get("PATH_INFO", "")))
    return {"received": received, "rebuilt": rebuilt,
            "signature": {"key_id": key_id, "format": fmt, "verdict": verdict},
            "parts": {"proxy": proxy, "middleware": middleware, "app": app}}


def _page(environ: Mapping[str, Any], report: dict[str, Any]) -> str:
    e = html.escape
    received, rebuilt = report["received"], set(report["rebuilt"])
    rows = []
    for key in sorted(set(environ) | set(received)):
        if key in _HIDDEN:
            continue
        value = environ.get(key)
        if key in environ and not isinstance(value, str) or key.startswith("wsgiproxy."):
            cells = ["<td colspan=\"2\">%s</td>" % e(_text(value))]  # not a request value
        else:
            cells = [("<td>%s</td>" % e(source[key])) if key in source
                     else '<td class="absent">(absent)</td>' for source in (received, environ)]
        rows.append("<tr%s><th>%s</th>%s</tr>" % (' class="rebuilt"' if key in rebuilt else "",
                                                 e(key), "".join(cells)))
    sig = report["signature"]
    parts = "".join("<li><b>%s</b>: %s</li>" % (e(name), e(line))
                    for name, line in report["parts"].items())
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            "<title>WSGIProxy sample app</title><style>%s</style></head><body>"
            "<h1>What came through the proxy</h1><ul>%s</ul>"
            "<p>Signature: key id <code>%s</code>, format <code>%s</code>: <b>%s</b></p>"
            "<p>Highlighted: the keys the middleware rebuilt (changed, added or removed).  "
            "JSON: <a href=\"?format=json\">?format=json</a>.</p>"
            "<table><thead><tr><th>environ key</th><th>the backend's server received</th>"
            "<th>the app sees (the client's request, rebuilt)</th></tr></thead>"
            "<tbody>%s</tbody></table></body></html>"
            % (_STYLE, parts, e(str(sig["key_id"])), e(str(sig["format"])), e(sig["verdict"]),
               "".join(rows)))


def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Answer with the request's environ and what the proxy and middleware did to it."""
    length = environ.get("CONTENT_LENGTH")
    body = environ["wsgi.input"].read(int(length)) if length and length.isdigit() else b""
    data = {key: _shown(value) for key, value in sorted(environ.items()) if key != RECEIVED}
    data["wsgiproxy.sample.body_length"] = len(body)
    data["wsgiproxy.sample.pid"] = os.getpid()  # which process answered
    report = explain(environ)
    headers = [("X-Content-Type-Options", "nosniff")]
    if "format=json" in environ.get("QUERY_STRING", "") or wants_json(environ):
        data.update(("wsgiproxy.sample." + k, v) for k, v in report.items())
        out = json.dumps(data, indent=1, sort_keys=True).encode()
        content_type = "application/json"
    else:
        shown = {**environ, **{k: v for k, v in data.items() if k.startswith("wsgiproxy.sample")}}
        out = _page(shown, report).encode("utf-8", "backslashreplace")
        content_type = "text/html; charset=utf-8"
        # The page shows client-controlled values: escaped, and no script may run anyway.
        headers.append(("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"))
    start_response("200 OK", [("Content-Type", content_type),
                              ("Content-Length", str(len(out)))] + headers)
    return [out]


def make_sample_app(global_conf: Mapping[str, str] | None = None, **settings: Any) -> Any:
    """Paste app factory for ``egg:WSGIProxy#sample``; takes no options."""
    if settings:
        raise UnknownOption(", ".join(sorted(settings)), "unknown option; the sample app takes none")
    return application


def make_received_filter(global_conf: Mapping[str, str] | None = None) -> Any:
    """Paste filter factory (``use = call:wsgiproxy.sampleapp:make_received_filter``).

    Put in front of the middleware, the filter keeps the environ's string
    values as the server made them in ``wsgiproxy.sample.received``, so the
    sample page can show every header that arrived -- ``X-WSGIProxy-*`` and
    the signature included -- beside the rebuilt request.  A copy per
    request: for the demo only.  Takes no options.
    """
    def wrap(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def received(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            environ[RECEIVED] = {k: v for k, v in environ.items() if isinstance(v, str)}
            return app(environ, start_response)
        return received
    return wrap


def make_demo_user_filter(app: Any, global_conf: dict[str, str] | None = None,
                          user: str = "demo") -> Any:
    """Paste filter ``egg:WSGIProxy#demo_user``: sets REMOTE_USER, as a login would.

    For the demo only: it shows REMOTE_USER travelling through the proxy as a
    signed ``X-WSGIProxy-Str-N`` header.  ``?user=NAME`` overrides ``user``.
    """
    def demo_user(environ, start_response):
        name = user
        for pair in environ.get("QUERY_STRING", "").split("&"):
            if pair.startswith("user=") and pair[5:].isalnum():
                name = pair[5:]
        environ["REMOTE_USER"] = name
        return app(environ, start_response)
    return demo_user
