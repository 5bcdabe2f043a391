"""Error answers for clients: HTML through :mod:`webob.exc`, or JSON when Accept prefers it.

Every WSGI entry point of WSGIProxy answers a :class:`~wsgiproxy.errors.WSGIProxyError`
through :func:`error_answer`, so a client always gets the same clear shape::

    {"error": {"code": 502, "type": "BadGateway", "message": "..."}}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from webob import exc as webob_exc
from webob.acceptparse import create_accept_header

if TYPE_CHECKING:
    from .errors import WSGIProxyError

__all__ = ["error_answer", "error_response", "wants_json"]

_OFFERS = ["text/html", "application/json"]


def wants_json(environ: dict[str, Any]) -> bool:
    """True when the client's Accept header prefers application/json to text/html."""
    accept = environ.get("HTTP_ACCEPT")
    if not accept or "json" not in accept:
        return False
    try:
        offers = create_accept_header(accept).acceptable_offers(_OFFERS)
    except Exception:  # noqa: BLE001 - an unparseable Accept header is no reason to fail
        return False
    return bool(offers) and offers[0][0] == "application/json"


def error_response(environ: dict[str, Any], start_response: Any, code: int, message: str,
                   headers: Sequence[tuple[str, str]] = ()) -> Iterable[bytes]:
    """Answer with status ``code`` and a human-readable ``message``; returns the WSGI body.

    :param headers: extra response headers such as ``Retry-After`` or ``Allow``.

    Any environ is answered, even a blank one: webob needs a method.
    """
    if not isinstance(environ.get("REQUEST_METHOD"), str):
        environ = dict(environ, REQUEST_METHOD="GET")
    exc_class = webob_exc.status_map[code]
    if wants_json(environ):
        kind = exc_class.__name__.removeprefix("HTTP")
        body = json.dumps({"error": {"code": code, "type": kind, "message": message}}).encode()
        start_response("%d %s" % (code, exc_class.title), [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ] + list(headers))
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]
    return exc_class(detail=message, headers=list(headers))(environ, start_response)


def error_answer(environ: dict[str, Any], start_response: Any,
                 error: WSGIProxyError) -> Iterable[bytes]:
    """The answer to ``error``: its status, its message and its extra headers."""
    return error_response(environ, start_response, error.status, str(error), error.headers)
