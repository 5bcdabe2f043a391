"""The balancer's rules, with a scripted transport and a clock of the test's own.

What may be sent again (invariant 7), the tries and their bounds, passive
health (out, one try again, back), the configuration; the same rules against
real backend processes are in tests/test_balancer_processes.py.
"""

import io
import logging
import socket
import threading

import pytest
from paste.deploy import loadapp  # type: ignore[import-untyped]

from wsgiproxy.app import WSGIProxyApp
from wsgiproxy.balancer import Balancer, parse_next_upstream
from wsgiproxy.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadBackendResponse,
    RequestBodyError,
)
from wsgiproxy.httplib2transport import Httplib2Transport
from wsgiproxy.transport import HTTPTransport, Response, Transport

from .client import call_wsgi
from .docsnippets import snippet
from .servers import free_port

A, B, C = ("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Scripted(Transport):
    """Answers from ``script[(host, port)]``: a status, or an exception to raise."""

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.sent = []

    def request(self, scheme, host, port, method, target, headers, body=None, body_length=None):
        self.sent.append((host, port))
        what = self.script.get((host, port), 200)
        if callable(what):
            what = what()
        if isinstance(what, BaseException):
            raise what
        return Response(what, "X", [("Content-Length", "2")], b"ok")


def refused():
    return BackendUnavailable("connection refused", "x", unsent=True)


def lost():
    return BadBackendResponse("backend closed the connection in the middle of the headers", "x")


def request(method="GET", body=None):
    return (method, "/", [("Host", "a")], body, None if body is None else len(body))


def balancer(script, backends=(A, B, C), **options):
    clock = options.pop("clock", None) or Clock()
    return Balancer(list(backends), clock=clock, **options), Scripted(script), clock


def answer(bal, transport, req):
    response, body = bal.send(transport, "http", req)
    data = b"".join(body)
    if hasattr(body, "close"):
        body.close()
    return response.status, data


# -- what is sent again ---------------------------------------------------------

def test_a_get_that_failed_goes_to_the_next_backend():
    bal, transport, _ = balancer({A: lost()})
    assert answer(bal, transport, request()) == (200, b"ok")
    assert transport.sent == [A, B]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_request_that_may_have_run_is_never_resent(method):
    bal, transport, _ = balancer({A: lost()})
    with pytest.raises(BadBackendResponse):
        bal.send(transport, "http", request(method, b"pay"))
    assert transport.sent == [A]
    bal, transport, _ = balancer({A: BackendTimeout("timed out", "x")})
    with pytest.raises(BackendTimeout):
        bal.send(transport, "http", request(method, b"pay"))
    assert transport.sent == [A]


def test_a_post_that_never_reached_the_backend_goes_to_the_next():
    bal, transport, _ = balancer({A: refused()})
    assert answer(bal, transport, request("POST", b"pay")) == (200, b"ok")
    assert transport.sent == [A, B]


def test_non_idempotent_resends_what_may_have_run():
    bal, transport, _ = balancer({A: lost()}, next_upstream="error timeout non_idempotent")
    assert answer(bal, transport, request("POST", b"pay")) == (200, b"ok")
    assert transport.sent == [A, B]


@pytest.mark.parametrize("failure", [refused, lost])
def test_a_streamed_body_is_never_resent(failure):
    bal, transport, _ = balancer({A: failure()}, next_upstream="error non_idempotent")
    stream = ("PUT", "/", [], io.BytesIO(b"x" * 100), 100)
    with pytest.raises(BackendError):
        bal.send(transport, "http", stream)
    assert transport.sent == [A]


def test_what_next_upstream_leaves_out_is_not_retried():
    bal, transport, _ = balancer({A: BackendTimeout("timed out", "x")}, next_upstream="error")
    with pytest.raises(BackendTimeout):
        bal.send(transport, "http", request())
    bal, transport, _ = balancer({A: lost()}, next_upstream="off")
    with pytest.raises(BadBackendResponse):
        bal.send(transport, "http", request())
    assert transport.sent == [A]


def test_the_clients_own_failures_are_neither_retried_nor_counted():
    bal, transport, _ = balancer({A: RequestBodyError("the body ended early")})
    with pytest.raises(RequestBodyError):
        bal.send(transport, "http", request())
    assert transport.sent == [A]
    assert [b["out"] for b in bal.state()] == [False, False, False]
    assert bal.in_flight == 0 and [b["in_flight"] for b in bal.state()] == [0, 0, 0]


def test_statuses_named_go_on_and_the_last_answer_is_the_clients():
    bal, transport, _ = balancer({A: 503, B: 503, C: 503}, next_upstream="http_503")
    assert answer(bal, transport, request()) == (503, b"ok")
    assert transport.sent == [A, B, C]
    # A POST's 503 is answered as it is: it may have run.
    bal, transport, _ = balancer({A: 503}, next_upstream="http_503")
    assert answer(bal, transport, request("POST", b"pay"))[0] == 503
    assert transport.sent == [A]


def test_statuses_not_named_are_answered():
    bal, transport, _ = balancer({A: 500})
    assert answer(bal, transport, request())[0] == 500
    assert transport.sent == [A]
    assert [b["out"] for b in bal.state()] == [False, False, False]  # not a failure either


# -- how many tries -------------------------------------------------------------

def test_each_backend_once_by_default_and_the_last_failure_answers():
    bal, transport, _ = balancer({A: lost(), B: refused(), C: BackendTimeout("slow", "x")})
    with pytest.raises(BackendTimeout):
        bal.send(transport, "http", request())
    assert transport.sent == [A, B, C]


def test_next_upstream_tries_counts_the_first():
    bal, transport, _ = balancer({A: lost(), B: lost()}, next_upstream_tries=2)
    with pytest.raises(BadBackendResponse):
        bal.send(transport, "http", request())
    assert transport.sent == [A, B]


def test_next_upstream_timeout_bounds_the_tries():
    clock = Clock()

    def slow_failure():
        clock.now += 3
        return lost()

    bal, transport, _ = balancer({A: slow_failure, B: slow_failure}, clock=clock,
                                 next_upstream_timeout=5)
    with pytest.raises(BadBackendResponse):
        bal.send(transport, "http", request())
    assert transport.sent == [A, B]  # B started 3 s after A; C would start after 6


def test_the_retry_budget_has_a_floor_of_three():
    bal, transport, _ = balancer({A: lost()})
    bal.retrying = 3  # three other requests are retrying
    bal.in_flight = 10  # 20 % of 11 is 2.2: the floor of 3 is full
    with pytest.raises(BadBackendResponse):
        bal.send(transport, "http", request())
    assert transport.sent == [A]
    bal.retrying = 2
    assert answer(bal, transport, request())[0] == 200
    assert bal.retrying == 2 and bal.in_flight == 10


def test_a_retry_that_failed_is_not_counted_twice_against_the_budget():
    """After a failed retry the next one needs room in the budget like any other: the failed
    one no longer counts, and must not be subtracted a second time."""
    bal, transport, _ = balancer({A: lost()})
    bal.retrying = 2  # two other requests are retrying
    bal.in_flight = 10  # 20 % of 11 is 2.2: the budget is the floor, 3

    def another_request_starts_retrying():
        bal.retrying += 1  # now three others: the budget is full
        return lost()

    transport.script[B] = another_request_starts_retrying
    with pytest.raises(BadBackendResponse):
        bal.send(transport, "http", request())
    assert transport.sent == [A, B]  # not C
    assert bal.retrying == 3 and bal.in_flight == 10


# -- passive health ---------------------------------------------------------------

def test_a_failed_backend_is_out_for_fail_timeout_then_one_request_tries_it(caplog):
    caplog.set_level(logging.INFO, logger="wsgiproxy.balancer")
    script = {B: lost()}
    bal, transport, clock = balancer(script, fail_timeout=10)
    for _ in range(6):
        answer(bal, transport, request())
    assert transport.sent == [A, B, C, A, C, A, C]
    assert [r.getMessage() for r in caplog.records] == [
        ("backend 10.0.0.2:2 taken out for 10s after 1 failure (last: x: backend closed the "
         "connection in the middle of the headers)")]
    clock.now += 10.5
    del script[B]
    transport.sent.clear()
    answer(bal, transport, request())  # A's turn, as the round goes on
    answer(bal, transport, request())  # B, tried again: it answers
    answer(bal, transport, request())
    assert transport.sent == [A, B, C]
    assert caplog.records[-1].getMessage() == "backend 10.0.0.2:2 is back: it answered again"
    assert len(caplog.records) == 2


def test_only_one_request_tries_a_backend_again():
    script = {B: lost()}
    bal, transport, clock = balancer(script, backends=(A, B), fail_timeout=10)
    answer(bal, transport, request())
    answer(bal, transport, request())  # B fails, A answers
    clock.now += 11
    backend = bal._pick([], clock(), False)
    assert backend.name == "10.0.0.2:2" and backend.probing  # the one try again
    assert bal._pick([], clock(), False).name == "10.0.0.1:1"
    assert bal._pick([], clock(), False).name == "10.0.0.1:1"


def test_max_fails_counts_within_fail_timeout():
    script = {A: lost()}
    bal, transport, clock = balancer(script, backends=(A, B), max_fails=2, fail_timeout=10)
    answer(bal, transport, request())  # A fails, B answers
    clock.now += 11  # that failure is forgotten
    answer(bal, transport, request())  # A fails again: 1 within 10 s
    assert [b["out"] for b in bal.state()] == [False, False]
    clock.now += 9
    answer(bal, transport, request())  # A: 2 within 10 s
    assert [b["out"] for b in bal.state()] == [True, False]
    assert transport.sent == [A, B] * 3


def test_max_fails_0_never_takes_a_backend_out():
    bal, transport, _ = balancer({A: lost()}, backends=(A, B), max_fails=0)
    for _ in range(4):
        answer(bal, transport, request())
    assert transport.sent == [A, B] * 4


def test_when_every_backend_is_out_one_is_tried_anyway():
    script = {A: lost(), B: lost()}
    bal, transport, _ = balancer(script, backends=(A, B))
    with pytest.raises(BadBackendResponse):
        bal.send(transport, "http", request())
    assert [b["out"] for b in bal.state()] == [True, True]
    del script[A], script[B]
    assert answer(bal, transport, request()) == (200, b"ok")


def test_least_conn_takes_the_backend_with_fewest_in_flight_and_rotates_ties():
    bal, _, _ = balancer({}, balance="least_conn")
    first = bal._pick([], 0.0, False)
    second = bal._pick([], 0.0, False)
    third = bal._pick([], 0.0, False)
    assert [first.name, second.name, third.name] == ["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:3"]
    bal._release(first)
    bal._release(third)
    assert bal._pick([], 0.0, False) is first  # B still has one
    assert bal._pick([], 0.0, False) is third


# -- configuration ------------------------------------------------------------------

@pytest.mark.parametrize("hrefs", [
    ["http://a:1/app", "https://b:1/app"],
    ["http://a:1/app", "http://b:1/other"],
    ["http://a:1/app?x=1", "http://b:1/app"],
])
def test_hrefs_may_differ_only_in_host_and_port(hrefs):
    with pytest.raises(ValueError, match="differ only in host:port"):
        WSGIProxyApp(hrefs)


@pytest.mark.parametrize("options, message", [
    ({"next_upstream": "error http_418"}, "unknown token http_418"),
    ({"next_upstream": "off error"}, "off cannot be combined"),
    ({"balance": "random"}, "balance: must be one of"),
    ({"fail_timeout": 0}, "fail_timeout: must be positive, not 0.0"),
    ({"retry_budget": -1}, "retry_budget: must be 0 or more, not -1.0"),
])
def test_bad_options_fail_at_construction(options, message):
    with pytest.raises(ValueError, match=message):
        WSGIProxyApp(["http://a:1", "http://b:2"], **options)


def test_parse_next_upstream():
    assert parse_next_upstream("error  timeout\nhttp_503") == {"error", "timeout", "http_503"}
    assert parse_next_upstream("off") == frozenset()


def test_one_backend_has_no_balancer_and_fails_as_before():
    port = free_port()
    proxy = WSGIProxyApp("http://127.0.0.1:%d" % port, next_upstream="error http_503")
    assert proxy.balancer is None and proxy.href == "http://127.0.0.1:%d" % port
    status, _, body = call_wsgi(proxy, {"REQUEST_METHOD": "GET", "PATH_INFO": "/",
                                        "SERVER_NAME": "s", "SERVER_PORT": "80",
                                        "wsgi.input": io.BytesIO()})
    assert status.startswith("502") and b"connection refused" in body


def test_ini_takes_several_hrefs_and_every_option(tmp_path):
    ini = tmp_path / "proxy.ini"
    ini.write_text("""[app:main]
use = egg:WSGIProxy#main
href = http://127.0.0.1:9001/app
       http://127.0.0.1:9002/app
balance = least_conn
max_fails = 3
fail_timeout = 2.5
next_upstream = error timeout http_503
next_upstream_tries = 2
next_upstream_timeout = 4
retry_budget = 50
""")
    proxy = loadapp("config:" + str(ini))
    try:
        bal = proxy.balancer
        assert [b.name for b in bal.backends] == ["127.0.0.1:9001", "127.0.0.1:9002"]
        assert proxy.href == "http://127.0.0.1:9001/app http://127.0.0.1:9002/app"
        assert (bal.least_conn, bal.max_fails, bal.fail_timeout, bal.tries, bal.timeout,
                bal.retry_budget) == (True, 3, 2.5, 2, 4.0, 50.0)
        assert bal.retry_statuses == {503}
    finally:
        proxy.close()


def test_locations_naming_any_backend_are_rewritten():
    proxy = WSGIProxyApp(["http://a:1/app", "http://b:2/app"])
    headers = [("Location", "http://b:2/app/x"), ("Location", "http://c:3/app/x")]
    assert proxy._rewrite_locations("https", "www.example.com", "/shop", headers) == [
        ("Location", "https://www.example.com/shop/x"), ("Location", "http://c:3/app/x")]


# -- what the transports say: did any byte reach the backend? -----------------------

@pytest.mark.parametrize("make", [HTTPTransport, Httplib2Transport])
def test_a_refused_connection_is_unsent(make):
    transport = make()
    with pytest.raises(BackendUnavailable) as caught:
        transport.request("http", "127.0.0.1", free_port(), "POST", "/", [("Host", "x")], b"pay")
    assert caught.value.unsent


@pytest.mark.parametrize("make", [HTTPTransport, Httplib2Transport])
def test_a_connection_closed_after_the_request_is_not_unsent(make):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        def serve():
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        transport = make()
        with pytest.raises(BackendError) as caught:
            transport.request("http", "127.0.0.1", port, "POST", "/", [("Host", "x")], b"pay")
        thread.join(10)
    assert not caught.value.unsent


def test_the_pages_ini_and_python_examples_make_the_same_balancer(tmp_path):
    (tmp_path / "backends.ini").write_text(snippet("backends-ini").text)
    from_ini = loadapp("config:" + str(tmp_path / "backends.ini"))
    from_python = snippet("backends-python").run()["proxy"]
    try:
        assert from_ini.hrefs == from_python.hrefs and len(from_ini.hrefs) == 3
        one, other = from_ini.balancer, from_python.balancer
        for attr in ("least_conn", "max_fails", "fail_timeout", "tries", "timeout",
                     "retry_budget", "on_error", "on_timeout", "non_idempotent",
                     "retry_statuses"):
            assert getattr(one, attr) == getattr(other, attr), attr
        assert [b.name for b in one.backends] == [b.name for b in other.backends]
    finally:
        from_ini.close()
        from_python.close()
