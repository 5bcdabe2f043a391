"""The client side of the tests: requests to servers on loopback, and reading their answers.

* :func:`request` (http.client) and :func:`send_raw` (bytes on a socket) ask a
  server on 127.0.0.1; :func:`parse_answer` reads a raw answer; both give an
  :class:`Answer`.  :func:`read_to_eof` reads a socket to its end.
* :func:`through` asks a proxy object directly (a webob request aimed at a port);
  :func:`call_wsgi` calls any WSGI application with a bare environ.
* :func:`json_error` checks an error answer of ours in JSON (ask for it with
  ``Accept: application/json``, :data:`JSON`) and returns its fields, so that
  tests compare fields, not text inside an HTML page.
"""

import http.client
import io
import json
import socket
from typing import NamedTuple

from .servers import blank

__all__ = [
    "JSON",
    "Answer",
    "add_header",
    "call_wsgi",
    "get_json",
    "json_error",
    "parse_answer",
    "read_to_eof",
    "request",
    "send_raw",
    "through",
]

#: Headers asking for JSON answers (error answers of ours included).
JSON = {"Accept": "application/json"}


class Answer(NamedTuple):
    """An HTTP answer: status, headers (case-insensitive; ``get_all`` for repeated ones), body."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(port, path="/", method="GET", headers=None, body=None, *, accept=None,
            chunked=False, source=None, tls=None, timeout=20):
    """One request to 127.0.0.1:``port`` on a new connection: an :class:`Answer`.

    :param accept: an ``Accept`` value, added unless ``headers`` has one.
    :param chunked: send ``body`` (an iterable of bytes) with chunked framing.
    :param source: the client's source address (any of 127.0.0.0/8).
    :param tls: an :class:`ssl.SSLContext`: HTTPS.
    """
    headers = dict(headers or {})
    if accept and not any(name.lower() == "accept" for name in headers):
        headers["Accept"] = accept
    source_address = (source, 0) if source else None
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                          source_address=source_address)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls,
                                           source_address=source_address)
    try:
        conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
        res = conn.getresponse()
        return Answer(res.status, res.headers, res.read())
    finally:
        conn.close()


def get_json(port, path="/", headers=None, **kwargs):
    """GET ``path`` asking for JSON; the answer must be a 200: its decoded body."""
    answer = request(port, path, headers=headers, accept="application/json", **kwargs)
    assert answer.status == 200, answer
    return answer.json()


def send_raw(port, data, ssl_context=None, server_hostname="127.0.0.1", shutdown=False):
    """Send ``data`` on a new connection to 127.0.0.1:``port`` (over TLS with
    ``ssl_context``) and read the answer to EOF.  With ``shutdown``, the sending side
    is closed after ``data``, so that the server sees the end of the request."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        sock = raw if ssl_context is None else ssl_context.wrap_socket(
            raw, server_hostname=server_hostname)
        with sock:
            sock.sendall(data)
            if shutdown:
                sock.shutdown(socket.SHUT_WR)
            return read_to_eof(sock)


def read_to_eof(sock):
    """Read ``sock`` until the peer closes (its timeout is the hang guard): what came."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


class _Received:
    """What http.client reads a response from: bytes already received."""

    def __init__(self, data):
        self.data = data

    def makefile(self, mode):
        return io.BytesIO(self.data)


def parse_answer(data):
    """The first answer in ``data`` (raw HTTP/1.1, as :func:`send_raw` returns it)."""
    res = http.client.HTTPResponse(_Received(data))
    res.begin()
    return Answer(res.status, res.headers, res.read())


def add_header(raw_request, name, value):
    """A raw request with the header ``name: value`` added at the end of its head."""
    assert b"\r\n\r\n" in raw_request, raw_request[:200]
    return raw_request.replace(b"\r\n\r\n", b"\r\n%s: %s\r\n\r\n" % (
        name.encode("latin-1"), value.encode("latin-1")), 1)


def json_error(answer, status=None):
    """The fields of a JSON error answer of ours, ``{"code", "type", "message"}``, checked:
    JSON, of that shape, ``code`` equal to the status (and to ``status`` when given).

    ``answer`` is an :class:`Answer`, a webob response, or raw bytes (see :func:`parse_answer`).
    """
    if isinstance(answer, bytes):
        answer = parse_answer(answer)
    if isinstance(answer, Answer):
        code, content_type, body = answer.status, answer.headers.get("Content-Type", ""), \
            answer.body
    else:
        code, content_type, body = answer.status_int, answer.content_type, answer.body
    assert content_type.startswith("application/json"), (code, content_type, body[:300])
    error = json.loads(body)["error"]
    assert sorted(error) == ["code", "message", "type"], error
    assert error["code"] == code, (code, error)
    if status is not None:
        assert code == status, (status, error)
    return error


def through(proxy, port, path="/", **kwargs):
    """The answer of ``proxy`` (an exact proxy, which sends a request where SERVER_NAME and
    SERVER_PORT say) to a webob request aimed at 127.0.0.1:``port``; ``host``, ``scheme``,
    ``method``, ``headers``... as for :func:`tests.servers.blank`."""
    return blank(path, port, **kwargs).get_response(proxy)


def call_wsgi(app, environ):
    """Call a WSGI ``app`` with ``environ`` as a server would: ``(status, headers, body)``."""
    started = []

    def start_response(status, headers, exc_info=None):
        started.append((status, headers))

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    assert len(started) == 1, started
    status, headers = started[0]
    return status, headers, body


class Bomb:
    """A hostile pickle: unpickling it creates a file, the proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
