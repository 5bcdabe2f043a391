"""Forward one WSGI request through a transport and stream the answer back.

The one home of the steps every proxying part shares (``proxy_exact_request``,
:class:`~wsgiproxy.app.WSGIProxyApp`, spawn): turning the environ into
headers and a body, calling the transport, mapping its failures to 4xx/5xx
answers, and handing the streaming response to the WSGI server.
"""

import logging
import re
from urllib.parse import quote, unquote_to_bytes

from .responses import error_response
from .transport import (NON_NOMINATING_TOKENS, UNFORWARDED_REQUEST_HEADERS, BackendError,
                        InvalidRequest, RequestBodyError, connection_tokens)

__all__ = ["EnvironHeaders", "environ_headers", "request_body", "request_path", "forward",
           "quote_path", "safe_target"]

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

    def __init__(self, skip=DEFAULT_SKIP, skip_prefixes=()):
        self.skip = frozenset(skip)
        self.skip_prefixes = tuple(skip_prefixes)
        self._names = {"CONTENT_TYPE": None}  # added at the end, under its own name

    def _name(self, key):
        """The header name of an environ key, or ``None`` if it is not forwarded."""
        name = None
        if key[:5] == "HTTP_" and key not in self.skip and not key.startswith(self.skip_prefixes):
            name = key[5:].replace("_", "-").title()
            if name.lower() in UNFORWARDED_REQUEST_HEADERS:
                name = None
        if len(self._names) < _KEYS_MAX and len(key) <= _KEY_LENGTH_MAX:
            self._names[key] = name
        return name

    def __call__(self, environ):
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


def request_body(environ, inline_max=INLINE_BODY_MAX):
    """``(body, length)`` for the transport: ``None``, bytes, or the input stream.

    Bodies up to ``inline_max`` bytes (:data:`INLINE_BODY_MAX` by default)
    are read whole (cheap, and a stale keep-alive connection can then be
    retried); larger ones and bodies without a length (chunked,
    ``wsgi.input_terminated``) stream.
    """
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            raise InvalidRequest("invalid Content-Length %r" % length[:40]) from None
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


def quote_path(path):
    """Percent-encode a WSGI path (latin-1 "bytes in a str") for a request line."""
    if _PLAIN_PATH(path):
        return path
    return quote(path.encode("latin-1"), safe=_PATH_SAFE)


def safe_target(target):
    """Escape what may not stand in a request line (spaces, controls, non-ASCII); keep ``%``."""
    if target.isascii() and target.isprintable() and " " not in target:
        return target
    return quote(target.encode("latin-1", "replace"), safe=_TARGET_SAFE)


def request_path(environ, include_script_name=True):
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


def forward(transport, environ, start_response, scheme, host, port, target,
            headers, response_headers=None, before_send=None, inline_body_max=INLINE_BODY_MAX):
    """Send the request to ``scheme://host:port`` and return the WSGI response.

    ``response_headers``, if given, maps the backend's header list to the one
    the client gets (Location rewriting).  ``before_send(method, target,
    headers, body)`` may add headers once the body is known (signing).  Failures before the response
    starts become error answers (400 for a bad request, 502/504 for the
    backend); a failure in the middle of a body is raised, so the WSGI server
    aborts the connection rather than send a silently short body.
    """
    method = environ.get("REQUEST_METHOD") or "GET"
    try:
        body, length = request_body(environ, inline_body_max)
        if before_send is not None:
            before_send(method, target, headers, body)
        response = transport.request(scheme, host, port, method, target, headers, body, length)
    except BackendError as exc:
        log.warning("%s %s: %s", method, target, exc)
        return error_response(environ, start_response, exc.status, str(exc))
    except (InvalidRequest, RequestBodyError) as exc:
        log.info("%s %s: bad request: %s", method, target, exc)
        return error_response(environ, start_response, exc.status, str(exc))
    body = response.body
    if body is None:
        # Streaming: wait for the first piece before starting the response
        # (a WSGI server sends nothing before it anyway), so a backend that
        # fails before its first body byte still gets a clean 502/504.
        chunks = iter(response)
        try:
            first = next(chunks, b"")
        except BackendError as exc:
            response.close()
            log.warning("%s %s: %s", method, target, exc)
            return error_response(environ, start_response, exc.status, str(exc))
    out_headers = response.headers
    if response_headers is not None:
        out_headers = response_headers(out_headers)
    try:
        start_response(response.status_line, out_headers)
    except BaseException:
        response.close()
        raise
    if body is not None:
        return [body] if body else []
    return StreamedBody(first, chunks, response)


class StreamedBody:
    """The WSGI body of a streamed response: the first piece, then the rest as it comes.

    ``close()`` (called by the WSGI server, also when the client went away)
    discards a backend connection that was not read to the end.
    """

    __slots__ = ("first", "chunks", "response")

    def __init__(self, first, chunks, response):
        self.first = first
        self.chunks = chunks
        self.response = response

    def __iter__(self):
        if self.first:
            yield self.first
        self.first = None
        yield from self.chunks

    def close(self):
        self.response.close()
