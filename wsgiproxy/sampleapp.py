"""A sample backend that shows the environ it received: the demo's far end.

HTML by default, JSON when the client's Accept prefers it (or ``?format=json``),
so it doubles as an echo server for tests and for checking a deployment.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from .responses import wants_json

__all__ = ["application", "make_sample_app", "make_demo_user_filter"]


def _shown(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Answer with the request's environ (string-like values; others as their repr)."""
    length = environ.get("CONTENT_LENGTH")
    body = environ["wsgi.input"].read(int(length)) if length and length.isdigit() else b""
    data = {key: _shown(value) for key, value in sorted(environ.items())}
    data["wsgiproxy.sample.body_length"] = len(body)
    data["wsgiproxy.sample.pid"] = os.getpid()  # which process answered
    if "format=json" in environ.get("QUERY_STRING", "") or wants_json(environ):
        out = json.dumps(data, indent=1, sort_keys=True).encode()
        content_type = "application/json"
    else:
        rows = "".join("<tr><th>%s</th><td>%s</td></tr>" % (html.escape(k), html.escape(repr(v)))
                       for k, v in data.items())
        out = ("<!DOCTYPE html><html><head><title>WSGIProxy sample app</title></head><body>"
               "<h1>The environ this backend received</h1><table>%s</table></body></html>"
               % rows).encode("utf-8")
        content_type = "text/html; charset=utf-8"
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(out)))])
    return [out]


def make_sample_app(global_conf: Mapping[str, str] | None = None, **settings: Any) -> Any:
    """Paste app factory for ``egg:WSGIProxy#sample``; takes no options."""
    if settings:
        raise TypeError("the sample app takes no options, got: %s" % ", ".join(sorted(settings)))
    return application


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
