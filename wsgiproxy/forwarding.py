"""Forward one WSGI request through a transport and stream the answer back.

The one home of the steps every proxying part shares (``proxy_exact_request``,
:class:`~wsgiproxy.app.WSGIProxyApp`, spawn): turning the environ into
headers and a body, calling the transport, mapping its failures to 4xx/5xx
answers, and handing the streaming response to the WSGI server.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, unquote_to_bytes

from .errors import BackendError, InvalidRequest, RequestBodyError, WSGIProxyError
from .responses import error_answer
from .transport import NON_NOMINATING_TOKENS, UNFORWARDED_REQUEST_HEADERS, connection_tokens

if TYPE_CHECKING:
    from .transport import HTTPTransport, Response, ResponseCheck, Transport

__all__ = ["EnvironHeaders", "environ_headers", "request_body", "request_path",
           "OutgoingRequest", "outgoing_request", "send", "send_upgrade", "relay",
           "failure_answer",
           "quote_path", "safe_target", "StreamedBody"]

Environ = dict[str, Any]

log = logging.getLogger("wsgiproxy")

# Keys that are not forwarded as headers: Host is chosen by the caller, and the
# CGI CONTENT_* variables are authoritative over any HTTP_CONTENT_* duplicates.
DEFAULT_SKIP = frozenset(["HTTP_HOST", "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"])

_PATH_SAFE = "/:@!$&'()*+,;=~"
_TARGET_SAFE = "!#$%&'()*+,-./:;=?@[]^_`{|}~"
INLINE_BODY_MAX = 65536  # request bodies up to this size are read first (and can be retried)
_KEYS_MAX = 4096  # environ keys an EnvironHeaders remembers...
_KEY_LENGTH_MAX = 100  # ...if they are no longer than this (real ones are short)


class EnvironHeaders:
    """Picks a request's end-to-end headers out of an environ, as ``(name, value)`` pairs.

    Calling it returns the headers of one environ: every ``HTTP_*`` key but
    those in ``skip`` or starting with one of ``skip_prefixes``, as
    ``X-Forwarded-For``-style names, then ``Content-Type``.  Hop-by-hop
    headers, and those the client's ``Connection`` header names, are left
    out here already (the transport would drop them anyway; doing it here
    keeps its common case cheap).

    It is on every request's path, so it remembers what each environ key it
    has seen is (a header name, or nothing); the memory is bounded, so a
    client sending made-up header names cannot grow it.
    """

    __slots__ = ("skip", "skip_prefixes", "_names")

    def __init__(self, skip: Iterable[str] = DEFAULT_SKIP,
                 skip_prefixes: Iterable[str] = ()) -> None:
        self.skip = frozenset(skip)
        self.skip_prefixes = tuple(skip_prefixes)
        self._names: dict[str, str | None] = {"CONTENT_TYPE": None}  # added at the end, under its own name

    def _name(self, key: str) -> str | None:
        """The header name of an environ key, or ``None`` if it is not forwarded."""
        name = None
        if key[:5] == "HTTP_" and key not in self.skip and not key.startswith(self.skip_prefixes):
            name = key[5:].replace("_", "-").title()
            if name.lower() in UNFORWARDED_REQUEST_HEADERS:
                name = None
            elif name.startswith("Sec-Websocket-"):  # RFC 6455's spelling
                name = "Sec-WebSocket-" + name[14:]
        if len(self._names) < _KEYS_MAX and len(key) <= _KEY_LENGTH_MAX:
            self._names[key] = name
        return name

    def __call__(self, environ: Environ) -> list[tuple[str, str]]:
        names = self._names
        try:
            headers = [(name, value) for key, value in environ.items() if (name := names[key])]
        except KeyError:  # a key not seen before
            name_of = self._name
            headers = [(name, value) for key, value in environ.items()
                       if (name := names[key] if key in names else name_of(key))]
        connection = environ.get("HTTP_CONNECTION")
        if connection and connection.lower() not in NON_NOMINATING_TOKENS:
            nominated = connection_tokens(connection) - NON_NOMINATING_TOKENS
            if nominated:
                headers = [h for h in headers if h[0].lower() not in nominated]
        content_type = environ.get("CONTENT_TYPE")
        if content_type:
            headers.append(("Content-Type", content_type))
        return headers


#: The headers of an environ, but Host: what ``proxy_exact_request`` forwards.
environ_headers = EnvironHeaders()


def request_body(environ: Environ, inline_max: int = INLINE_BODY_MAX) -> tuple[Any, int | None]:
    """``(body, length)`` for the transport: ``None``, bytes, or the input stream.

    Bodies up to ``inline_max`` bytes (:data:`INLINE_BODY_MAX` by default)
    are read whole (cheap, and a stale keep-alive connection can then be
    retried); larger ones and bodies without a length (chunked,
    ``wsgi.input_terminated``) stream.
    """
    text = environ.get("CONTENT_LENGTH")
    if text:
        if not (text.isdigit() and text.isascii()):  # int() would take "-5", "+5", "1_0"
            raise InvalidRequest("invalid Content-Length %r" % text[:40])
        length = int(text)
        if not length:
            return None, 0
        stream = environ["wsgi.input"]
        if length <= inline_max:
            try:
                data = stream.read(length)
            except Exception as exc:
                raise RequestBodyError("reading the request body failed: %s" % exc) from exc
            if len(data) != length:
                raise RequestBodyError("request body ended after %d of %d bytes"
                                       % (len(data), length))
            return data, length
        return stream, length
    if environ.get("HTTP_TRANSFER_ENCODING") and environ.get("wsgi.input_terminated"):
        return environ["wsgi.input"], None
    return None, 0


_PLAIN_PATH = re.compile(r"[A-Za-z0-9_.~/-]*\Z").match  # needs no escaping


def quote_path(path: str) -> str:
    """Percent-encode a WSGI path (latin-1 "bytes in a str") for a request line."""
    if _PLAIN_PATH(path):
        return path
    return quote(path.encode("latin-1"), safe=_PATH_SAFE)


def safe_target(target: str) -> str:
    """Escape what may not stand in a request line (spaces, controls, non-ASCII); keep ``%``."""
    if target.isascii() and target.isprintable() and " " not in target:
        return target
    return quote(target.encode("latin-1", "replace"), safe=_TARGET_SAFE)


def request_path(environ: Environ, include_script_name: bool = True) -> str:
    """The request's path as sent on the wire: ``SCRIPT_NAME + PATH_INFO`` (or
    ``PATH_INFO`` alone) percent-encoded; may be empty.

    When the server passes the raw request target (``RAW_URI`` from gunicorn,
    ``REQUEST_URI`` from others) and it decodes to the same path, it is used as
    it is, so encoded characters such as ``%2F`` survive.
    """
    script_name = environ.get("SCRIPT_NAME", "")
    path_info = environ.get("PATH_INFO", "")
    path = script_name + path_info if include_script_name else path_info
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        raw_path = raw.partition("?")[0]
        if raw_path[:1] != "/":  # absolute-form: http://host/path
            _, sep, rest = raw_path.partition("://")
            raw_path = "/" + rest.partition("/")[2] if sep else ""
        if script_name and not include_script_name:  # drop SCRIPT_NAME's own spelling
            prefix = quote_path(script_name)
            raw_path = raw_path[len(prefix):] if raw_path.startswith(prefix) else None
        if raw_path is not None and (raw_path == path or (
                "%" in raw_path
                and unquote_to_bytes(raw_path) == path.encode("latin-1", "replace"))):
            return safe_target(raw_path)
    return quote_path(path)


#: A finished request, ready for any backend: ``(method, target, headers, body,
#: body_length)``, the last arguments of :meth:`Transport.request
#: <wsgiproxy.transport.Transport.request>` in its order.  Built whole (headers,
#: body, signature) before it is sent: nothing is added on the way.  ``body`` is
#: ``None``, bytes, or the input stream (``body_length`` ``None`` for a stream
#: without a length: sent chunked).  A plain tuple: a class of its own costs
#: 2,000 instructions a request more (bench/instructions.py).
OutgoingRequest = tuple[str, str, list[tuple[str, str]], Any, "int | None"]


def outgoing_request(environ: Environ, target: str, headers: list[tuple[str, str]],
                     inline_body_max: int = INLINE_BODY_MAX) -> OutgoingRequest:
    """The request an environ asks for, with ``target`` and ``headers``.

    Reads the body as :func:`request_body` does; raises
    :class:`~wsgiproxy.errors.InvalidRequest` or
    :class:`~wsgiproxy.errors.RequestBodyError` for a bad one.
    """
    body, length = request_body(environ, inline_body_max)
    return (environ.get("REQUEST_METHOD") or "GET", target, headers, body, length)


def send(transport: Transport, scheme: str, host: str, port: int | str,
         request: OutgoingRequest,
         check: ResponseCheck | None = None) -> tuple[Response, Iterable[bytes]]:
    """Send ``request`` to ``scheme://host:port``; return the response and its WSGI body.

    A streamed body's first piece is fetched here, before anything is
    answered (a WSGI server sends nothing before it anyway), so a backend
    that fails before its first body byte still gets a clean 502/504: every
    :class:`~wsgiproxy.errors.WSGIProxyError` is raised before the answer starts.

    :param check: a :data:`~wsgiproxy.transport.ResponseCheck` for a transport
        whose ``checks_responses`` is true (the caller makes sure).
    """
    method, target, headers, body, length = request
    if check is None:
        response = transport.request(scheme, host, port, method, target, headers, body, length)
    else:
        response = cast("HTTPTransport", transport).request(
            scheme, host, port, method, target, headers, body, length, check)
    body = response.body
    if body is not None:
        return response, [body] if body else []
    return response, _streamed_body(response)


def send_upgrade(transport: Transport, scheme: str, host: str, port: int | str,
                 request: OutgoingRequest, protocols: str) -> tuple[Response, Iterable[bytes]]:
    """:func:`send` for a request that asks to switch to ``protocols`` (``Upgrade``).

    A ``101`` answer's body is its :class:`~wsgiproxy.tunnel.Tunnel` (closing it
    closes the backend connection); any other answer is returned as
    :func:`send` returns it.
    """
    method, target, headers, body, length = request
    response = transport.open_tunnel(scheme, host, port, method, target, headers, protocols,
                                     body, length)
    if response.status == 101:
        return response, response.tunnel  # type: ignore[attr-defined]
    body = response.body
    if body is not None:
        return response, [body] if body else []
    return response, _streamed_body(response)


def _streamed_body(response: Response) -> StreamedBody:
    """The body of a response still being received, its first piece fetched already."""
    chunks = iter(response)
    try:
        first = next(chunks, b"")
    except BaseException:
        response.close()
        raise
    return StreamedBody(first, chunks, response)


def relay(start_response: Any, response: Response, body: Iterable[bytes],
          headers: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
    """Start the answer with the backend's status and ``headers`` (its own by default).

    A failure of the body after this point is raised by the body, so the WSGI
    server aborts the connection rather than send a silently short body.
    """
    try:
        start_response(response.status_line, response.headers if headers is None else headers)
    except BaseException:
        close = getattr(body, "close", None)  # a balancer's body also ends the request
        (close or response.close)()
        raise
    return body


def failure_answer(environ: Environ, start_response: Any,
                   error: WSGIProxyError) -> Iterable[bytes]:
    """Log a failed forwarding and answer it: the one error exit of the proxies."""
    method = environ.get("REQUEST_METHOD") or "GET"
    path = environ.get("PATH_INFO", "")
    if isinstance(error, BackendError):
        log.warning("%s %s: %s", method, path, error)
    elif error.status >= 500:
        log.error("%s %s: %s", method, path, error)
    else:
        log.info("%s %s: refused: %s", method, path, error)
    return error_answer(environ, start_response, error)


class StreamedBody:
    """The WSGI body of a streamed response: the first piece, then the rest as it comes.

    ``close()`` (called by the WSGI server, also when the client went away)
    discards a backend connection that was not read to the end.
    """

    __slots__ = ("first", "chunks", "response")

    def __init__(self, first: bytes, chunks: Iterator[bytes], response: Response) -> None:
        self.first = first
        self.chunks = chunks
        self.response = response

    def __iter__(self) -> Iterator[bytes]:
        if self.first:
            yield self.first
        self.first = b""
        yield from self.chunks

    def close(self) -> None:
        self.response.close()
