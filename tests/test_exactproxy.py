"""proxy_exact_request specifics against real servers on loopback.

The cases every transport shares (methods, paths, bodies, framing, TLS...)
are in test_end_to_end_transports.py, run through ExactProxy.
"""

import http.client
import json
import threading

import pytest
from webob import Request

from wsgiproxy import exactproxy
from wsgiproxy.exactproxy import filter_paste_httpserver_proxy, proxy_exact_request

from .client import JSON, call_wsgi, json_error, through
from .servers import RawServer, WaitressServer, blank


def test_script_name_is_part_of_the_path(echo):
    req = blank("/rest", echo.port)
    req.environ["SCRIPT_NAME"] = "/mount"
    assert req.get_response(proxy_exact_request).json["PATH_INFO"] == "/mount/rest"


def test_inconsistent_raw_uri_is_ignored(echo):
    req = blank("/real", echo.port)
    req.environ["REQUEST_URI"] = "/other"
    assert req.get_response(proxy_exact_request).json["PATH_INFO"] == "/real"


def test_paste_httpserver_proxy_keys(echo):
    app = filter_paste_httpserver_proxy(proxy_exact_request)
    req = Request.blank("/x", headers={"Host": "wanted.example"})
    req.environ["paste.httpserver.proxy.scheme"] = "http"
    req.environ["paste.httpserver.proxy.host"] = "127.0.0.1:%d" % echo.port
    seen = req.get_response(app).json
    assert seen["HTTP_HOST"] == "wanted.example"
    env = {"wsgi.url_scheme": "https", "paste.httpserver.proxy.host": "[::1]"}
    exactproxy.filter_paste_httpserver_proxy_environ(env)
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("::1", "443")


class SlowBody:
    """A backend that sends one piece at a time, each released by the test."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.go = [threading.Event() for _ in pieces]

    def __call__(self, conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for event, piece in zip(self.go, self.pieces):
            assert event.wait(10)
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")


def test_response_streams_as_it_arrives_through_a_real_front_server():
    """Each byte reaches the client before the backend sends the next one."""
    slow = SlowBody([b"a", b"b", b"c"])
    with RawServer(slow) as backend:
        def front(environ, start_response):
            environ["SERVER_NAME"], environ["SERVER_PORT"] = "127.0.0.1", str(backend.port)
            return proxy_exact_request(environ, start_response)
        with WaitressServer(front, send_bytes=1) as server:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            slow.go[0].set()
            conn.request("GET", "/slow")
            res = conn.getresponse()
            received = b""
            for i, expected in enumerate([b"a", b"b", b"c"]):
                received += res.read1(1)  # blocks (10 s at most) until the piece arrives
                assert received.endswith(expected)
                if i + 1 < len(slow.go):
                    slow.go[i + 1].set()
            assert res.read() == b""
            conn.close()


def test_exact_proxy_rejects_unknown_scheme():
    res = through(proxy_exact_request, 1, scheme="gopher", headers=JSON)
    error = json_error(res, 400)
    assert error["type"] == "BadRequest" and "gopher" in error["message"]


def test_blank_environ_gets_a_clean_400():
    """An environ with nothing a WSGI server sets (then with the client's Accept only)."""
    assert call_wsgi(proxy_exact_request, {})[0] == "400 Bad Request"
    status, headers, body = call_wsgi(proxy_exact_request, {"HTTP_ACCEPT": "application/json"})
    assert status == "400 Bad Request"
    assert dict(headers)["Content-Type"] == "application/json"
    assert "cannot proxy to scheme" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize("length", ["-5", "abc", "+5", "1_0", " 5", "٥"])
def test_an_invalid_content_length_is_a_400_and_nothing_is_sent(length):
    """CONTENT_LENGTH that is not plain ASCII digits: int() would take some of them."""
    with RawServer(lambda conn: None) as server:
        req = blank("/", server.port, method="POST", body=b"12345", headers=JSON)
        req.environ["CONTENT_LENGTH"] = length
        res = req.get_response(proxy_exact_request)
        assert json_error(res, 400)["message"] == "invalid Content-Length %r" % length
        assert server.connections == 0
