"""What only the httplib2 transport does, against real servers on loopback.

The shared cache, credentials, the upstream proxy, redirects, compression,
the size limits and thread safety.  The cases both transports share are in
test_end_to_end_transports.py.
"""

import base64
import gc
import gzip
import hashlib
import io
import socket
import ssl
import threading
from email.utils import formatdate
from urllib.parse import parse_qs
from urllib.request import parse_http_list, parse_keqv_list

import pytest

from wsgiproxy.exactproxy import ExactProxy
from wsgiproxy.httplib2transport import (
    Httplib2Transport,
    RequestTooLarge,
    parse_credentials,
)
from wsgiproxy.transport import BackendUnavailable

from .client import through
from .servers import OK, RawServer, WaitressServer, blank, scripted

STREAMING_ONLY = "the httplib2 transport buffers whole bodies: %s"
TRANSPORTS = ["http", "httplib2"]


def test_client_certificate_from_options(ca, ca_file, tmp_path):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    client_pem = tmp_path / "client.pem"
    ca.issue_cert("client.example").private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    with RawServer(scripted(OK, OK), ssl_context=ctx) as server:
        with_cert = ExactProxy(transport="httplib2", ca_certs=ca_file, cert_file=str(client_pem))
        assert through(with_cert, server.port, scheme="https").body == b"ok"
        without = ExactProxy(transport="httplib2", ca_certs=ca_file, read_timeout=5)
        assert through(without, server.port, scheme="https").status_int == 502


# == What only the httplib2 transport does =====================================

# -- the shared cache -------------------------------------------------------

def cache_app(environ, start_response):
    """A backend whose caching headers come from the query string; each answer is numbered."""
    q = parse_qs(environ["QUERY_STRING"])
    path = environ["PATH_INFO"]
    with cache_app.lock:
        cache_app.hits.setdefault(path, []).append(environ)
        n = len(cache_app.hits[path])
    headers = [("Content-Type", "text/plain"), ("Date", formatdate(usegmt=True)),
               ("Cache-Control", q.get("cc", ["max-age=600"])[0])]
    headers += [("Vary", v) for v in q.get("vary", [])]
    if "etag" in q:
        headers.append(("ETag", '"v1"'))
        if environ.get("HTTP_IF_NONE_MATCH") == '"v1"':
            headers += [("Set-Cookie", c) for c in q.get("cookie304", [])]
            start_response("304 Not Modified", headers)
            return []
    headers += [("Set-Cookie", c) for c in q.get("cookie", [])]
    body = ("%s user=%s n=%d" % (path, environ.get("HTTP_X_USER"), n)).encode()
    if "gzip" in q and "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Content-Length", str(len(body))))
    start_response("200 OK", headers)
    return [body] if environ["REQUEST_METHOD"] != "HEAD" else []


cache_app.lock = threading.Lock()
cache_app.hits = {}


@pytest.fixture(scope="module")
def cache_backend():
    with WaitressServer(cache_app) as server:
        yield server


@pytest.fixture
def cached(tmp_path):
    p = ExactProxy(transport="httplib2", cache_dir=str(tmp_path / "cache"), read_timeout=5)
    yield p
    p.close()


def hits(path):
    return len(cache_app.hits.get(path, ()))


def test_cache_serves_a_public_response_with_consistent_headers(cached, cache_backend):
    first = through(cached, cache_backend.port, "/pub")
    second = through(cached, cache_backend.port, "/pub")
    assert first.body == second.body == b"/pub user=None n=1"
    assert hits("/pub") == 1
    assert second.status == "200 OK"
    assert second.headers["Content-Type"] == "text/plain"
    assert second.headers["Cache-Control"] == "max-age=600"
    assert second.headers["Content-Length"] == str(len(second.body))
    assert int(second.headers["Age"]) >= 0
    assert "Content-Location" not in second.headers  # httplib2 adds one naming the backend
    assert "Age" not in first.headers


def test_private_response_for_one_user_is_never_served_to_another(cached, cache_backend):
    # Without "private" a shared cache may give alice's answer to bob (no Vary):
    # this is what the rule has to prevent.
    assert through(cached, cache_backend.port, "/shared", headers={"X-User": "alice"}).body \
        == through(cached, cache_backend.port, "/shared", headers={"X-User": "bob"}).body
    for user in ("alice", "bob", "carol", "alice"):
        res = through(cached, cache_backend.port, "/mine?cc=private,%20max-age=600",
                  headers={"X-User": user})
        assert b"user=%s " % user.encode() in res.body
    assert hits("/mine") == 4


def test_requests_with_cookie_or_authorization_bypass_the_cache(cached, cache_backend):
    port = cache_backend.port
    assert through(cached, port, "/creds").body.endswith(b"n=1")  # stored
    for header in ({"Cookie": "session=alice"}, {"Authorization": "Bearer alice"}):
        res = through(cached, port, "/creds", headers=dict(header, **{"X-User": "alice"}))
        assert b"user=alice" in res.body  # not served from the cache
    assert through(cached, port, "/creds").body.endswith(b"n=1")  # and did not replace it
    assert hits("/creds") == 3
    # A response to a request with a cookie is never stored.
    through(cached, port, "/creds2", headers={"Cookie": "session=alice", "X-User": "alice"})
    assert b"user=bob" in through(cached, port, "/creds2", headers={"X-User": "bob"}).body


@pytest.mark.parametrize("query", ["cookie=a%3D1&cookie=b%3D2", "cc=no-store",
                                   "cc=max-age=600,%20s-maxage=0", "vary=*",
                                   "cc=public,%20private=%22Set-Cookie%22,%20max-age=600"])
def test_responses_that_must_not_be_shared_are_not_stored(cached, cache_backend, query):
    path = "/nostore%d" % abs(hash(query))
    for n in (1, 2):
        res = through(cached, cache_backend.port, path + "?" + query)
        assert res.body.endswith(b"n=%d" % n)
    if "cookie" in query:
        assert res.headers.getall("Set-Cookie") == ["a=1", "b=2"]


def test_vary_is_respected(cached, cache_backend):
    port = cache_backend.port
    for user, n in [("alice", 1), ("alice", 1), ("bob", 2), ("bob", 2), ("alice", 3)]:
        res = through(cached, port, "/vary?vary=X-User", headers={"X-User": user})
        assert res.body == b"/vary user=%s n=%d" % (user.encode(), n)


def test_host_header_is_part_of_the_cache_key(cached, cache_backend):
    for host in ("a.example", "b.example", "a.example"):
        through(cached, cache_backend.port, "/vhost", headers={"Host": host})
    assert [e["HTTP_HOST"] for e in cache_app.hits["/vhost"]] == ["a.example", "b.example"]


def test_unsafe_method_invalidates_the_entry(cached, cache_backend):
    port = cache_backend.port
    through(cached, port, "/inv")
    through(cached, port, "/inv", method="POST", body=b"x")
    assert through(cached, port, "/inv").body.endswith(b"n=3")
    assert through(cached, port, "/inv").body.endswith(b"n=3")


def test_head_neither_reads_nor_poisons_the_cache(cached, cache_backend):
    port = cache_backend.port
    assert through(cached, port, "/head", method="HEAD").body == b""
    assert through(cached, port, "/head").body == b"/head user=None n=2"
    assert through(cached, port, "/head").body == b"/head user=None n=2"


def test_conditional_request_goes_to_the_backend_and_its_304_passes(cached, cache_backend):
    port = cache_backend.port
    through(cached, port, "/cond?etag=1")
    res = through(cached, port, "/cond?etag=1", headers={"If-None-Match": '"v1"'})
    assert res.status_int == 304 and res.body == b""
    assert hits("/cond") == 2


def test_stale_entry_is_revalidated_and_304_cookies_stay_separate(cached, cache_backend):
    port = cache_backend.port
    path = "/reval?etag=1&cc=max-age=0&cookie304=x%3D1&cookie304=y%3D2"
    assert through(cached, port, path).body.endswith(b"n=1")
    res = through(cached, port, path)
    assert res.status == "200 OK"
    assert res.body.endswith(b"n=1")  # the cached body, validated by a 304
    assert res.headers["Content-Length"] == str(len(res.body))
    assert res.headers.getall("Set-Cookie") == ["x=1", "y=2"]
    assert cache_app.hits["/reval"][1]["HTTP_IF_NONE_MATCH"] == '"v1"'


def test_only_if_cached_is_answered_by_the_cache_or_forwarded_without_one(cached, cache_backend):
    port = cache_backend.port
    miss = through(cached, port, "/oic", headers={"Cache-Control": "only-if-cached"})
    assert miss.status == "504 Gateway Timeout" and hits("/oic") == 0
    through(cached, port, "/oic")
    hit = through(cached, port, "/oic", headers={"Cache-Control": "only-if-cached"})
    assert hit.status_int == 200 and hit.body.endswith(b"n=1")
    uncached = ExactProxy(transport="httplib2")  # no cache: the backend decides
    assert through(uncached, port, "/oic2", headers={"Cache-Control": "only-if-cached"}
               ).status_int == 200


def test_put_is_sent_without_if_match_from_the_cache(cached, cache_backend):
    port = cache_backend.port
    through(cached, port, "/put?etag=1")
    through(cached, port, "/put?etag=1", method="PUT", body=b"new")
    assert "HTTP_IF_MATCH" not in cache_app.hits["/put"][1]


def test_concurrent_users_never_get_each_others_private_answers(cached, cache_backend):
    errors = []

    def worker(n):
        user = "user%d" % n
        for i in range(10):
            private = through(cached, cache_backend.port, "/cc-private?cc=private,%20max-age=600",
                          headers={"X-User": user})
            public = through(cached, cache_backend.port, "/cc-public")
            if b"user=%s " % user.encode() not in private.body:
                errors.append((user, private.body))
            if not public.body.startswith(b"/cc-public user=None n="):  # whole, never torn
                errors.append((user, public.body))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert hits("/cc-private") == 80
    assert hits("/cc-public") < 80


# -- compression ---------------------------------------------------------------

def test_accept_encoding_is_honoured_and_gzip_passes_through_consistent(cached, cache_backend):
    port = cache_backend.port
    res = through(cached, port, "/gz?gzip=1&vary=Accept-Encoding",
              headers={"Accept-Encoding": "gzip"})
    assert res.headers["Content-Encoding"] == "gzip"
    assert res.headers["Content-Length"] == str(len(res.body))
    assert gzip.decompress(res.body) == b"/gz user=None n=1"
    again = through(cached, port, "/gz?gzip=1&vary=Accept-Encoding", headers={"Accept-Encoding": "gzip"})
    assert (again.body, again.headers["Content-Encoding"]) == (res.body, "gzip")  # from the cache
    assert again.headers["Content-Length"] == str(len(again.body))
    plain = through(cached, port, "/gz?gzip=1&vary=Accept-Encoding")
    assert "Content-Encoding" not in plain.headers
    assert plain.body == b"/gz user=None n=2"
    assert plain.headers["Content-Length"] == str(len(plain.body))
    assert "HTTP_ACCEPT_ENCODING" not in cache_app.hits["/gz"][1]


def test_cached_gzip_is_not_served_to_a_client_that_did_not_accept_it(cached, cache_backend):
    port = cache_backend.port  # this backend forgets Vary: Accept-Encoding
    assert through(cached, port, "/gz2?gzip=1", headers={"Accept-Encoding": "gzip"}
               ).headers["Content-Encoding"] == "gzip"
    plain = through(cached, port, "/gz2?gzip=1", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert plain.body == b"/gz2 user=None n=2"


def test_gzip_without_cache_is_passed_through_not_decompressed(h2proxy):
    body = gzip.compress(b"hello" * 100)
    response = (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
                % len(body) + body)
    with RawServer(scripted(response)) as server:
        res = through(h2proxy, server.port, headers={"Accept-Encoding": "gzip, deflate"})
        assert b"accept-encoding: gzip, deflate" in server.requests[0][0].lower()
    assert res.headerlist == [("Content-Encoding", "gzip"), ("Content-Length", str(len(body)))]
    assert res.body == body


# -- redirects ------------------------------------------------------------------

@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_never_followed(status, tmp_path):
    proxy = ExactProxy(transport="httplib2", cache_dir=str(tmp_path))
    response = (b"HTTP/1.1 %d Moved\r\nLocation: /elsewhere\r\nCache-Control: max-age=600\r\n"
                b"Content-Length: 0\r\n\r\n" % status)
    with RawServer(scripted(response, response, OK)) as server:
        for _ in range(2):
            res = through(proxy, server.port, "/old")
            assert res.status == "%d Moved" % status
            assert res.headers["Location"] == "/elsewhere"
        assert [h.split(b" ")[1] for h, _ in server.requests] == [b"/old", b"/old"]


# -- size limits ------------------------------------------------------------------

@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + (b"190\r\n" + b"x" * 400 + b"\r\n") * 3 + b"0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 1001 + b"<close>",
])
def test_response_larger_than_max_buffered_body_is_502(response):
    proxy = ExactProxy(transport="httplib2", max_buffered_body=1000)
    with RawServer(scripted(response, OK)) as server:
        res = through(proxy, server.port, headers={"Accept": "application/json"})
        assert res.status_int == 502
        message = res.json["error"]["message"]
        assert "max_buffered_body" in message and "1000 bytes" in message
        assert "127.0.0.1:%d" % server.port in message
        assert proxy.transport.idle_connections() == 0
        assert through(proxy, server.port).body == b"ok"


def test_response_of_exactly_max_buffered_body_passes():
    proxy = ExactProxy(transport="httplib2", max_buffered_body=1000)
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"y" * 1000
               + b"\r\n0\r\n\r\n")
    with RawServer(scripted(chunked)) as server:
        assert through(proxy, server.port).body == b"y" * 1000


@pytest.mark.parametrize("chunked", [False, True])
def test_request_body_larger_than_max_request_body_is_413(chunked):
    proxy = ExactProxy(transport="httplib2", max_request_body=1024)
    with RawServer(scripted(OK)) as server:
        req = blank("/up", server.port, method="POST")
        req.environ["wsgi.input"] = io.BytesIO(b"z" * 1025)
        if chunked:
            req.environ.pop("CONTENT_LENGTH", None)
            req.environ["HTTP_TRANSFER_ENCODING"] = "chunked"
            req.environ["wsgi.input_terminated"] = True
        else:
            req.environ["CONTENT_LENGTH"] = "1025"
        res = req.get_response(proxy)
        assert res.status_int == 413
        assert "max_request_body" in res.text
        assert server.connections == 0
    with pytest.raises(RequestTooLarge):
        proxy.transport.request("http", "127.0.0.1", 1, "POST", "/", [("Host", "x")],
                                b"z" * 1025)


# -- retries -------------------------------------------------------------------------

def test_post_is_not_resent_when_the_connection_closes_without_an_answer(h2proxy):
    with RawServer(scripted(OK, None, OK)) as server:
        assert through(h2proxy, server.port).body == b"ok"
        res = through(h2proxy, server.port, method="POST", body=b"once")
        assert res.status_int == 502
        assert "not retried" in res.text
        assert len([h for h, _ in server.requests if h.startswith(b"POST")]) == 1


def test_get_is_retried_once_on_a_new_connection(h2proxy):
    with RawServer(scripted(OK, None, OK)) as server:
        assert through(h2proxy, server.port).body == b"ok"
        assert through(h2proxy, server.port).body == b"ok"
        assert server.connections == 2


# -- credentials ----------------------------------------------------------------------

def basic_app(environ, start_response):
    basic_app.seen.append(environ.get("HTTP_AUTHORIZATION"))
    if environ.get("HTTP_AUTHORIZATION") != "Basic " + base64.b64encode(b"user:p w@x").decode():
        start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="r"'),
                                            ("Content-Length", "6")])
        return [b"denied"]
    start_response("200 OK", [("Cache-Control", "max-age=600"), ("Content-Length", "6")])
    return [b"secret"]


basic_app.seen = []


def test_basic_credentials_answer_the_challenge_and_are_never_cached(tmp_path):
    basic_app.seen.clear()
    with WaitressServer(basic_app) as server:
        domain = "127.0.0.1:%d" % server.port
        proxy = ExactProxy(transport="httplib2", cache_dir=str(tmp_path),
                           credentials=parse_credentials("user:p%%20w%%40x@%s" % domain))
        assert through(proxy, server.port).body == b"secret"
        assert through(proxy, server.port).body == b"secret"
        assert basic_app.seen[:2] == [None, "Basic dXNlcjpwIHdAeA=="]
        assert basic_app.seen[2:] == ["Basic dXNlcjpwIHdAeA=="]  # learned: sent up front
        # Credentials for another host are never sent here; the 401 reaches the client.
        basic_app.seen.clear()
        other = ExactProxy(transport="httplib2",
                           credentials=parse_credentials("user:p%20w%40x@other.example"))
        res = through(other, server.port)
        assert res.status_int == 401 and res.headers["WWW-Authenticate"] == 'Basic realm="r"'
        assert basic_app.seen == [None]


def digest_app(environ, start_response):
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header.startswith("Digest "):
        p = parse_keqv_list(parse_http_list(header[7:]))

        def md5(text):
            return hashlib.md5(text.encode()).hexdigest()
        ha1 = md5("dave:%s:pw" % p["realm"])
        ha2 = md5("%s:%s" % (environ["REQUEST_METHOD"], p["uri"]))
        expected = md5(":".join([ha1, p["nonce"], p["nc"], p["cnonce"], p["qop"], ha2]))
        if p["username"] == "dave" and p["response"] == expected:
            start_response("200 OK", [("Content-Length", "6")])
            return [b"digest"]
    start_response("401 Unauthorized", [
        ("WWW-Authenticate", 'Digest realm="r", nonce="n0nce", qop="auth", algorithm=MD5'),
        ("Content-Length", "0")])
    return []


def test_digest_credentials():
    with WaitressServer(digest_app) as server:
        proxy = ExactProxy(transport="httplib2", credentials=[("dave", "pw")])
        assert through(proxy, server.port, "/d?x=1").body == b"digest"


# -- upstream proxy --------------------------------------------------------------------

def test_upstream_proxy_gets_absolute_form_requests():
    with RawServer(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nvia proxy")) as fwd:
        proxy = ExactProxy(transport="httplib2",
                           proxy_info="http://us%%3Aer:p%%40ss@127.0.0.1:%d" % fwd.port)
        res = through(proxy, 8080, "/p?q=1", host="backend.invalid",
                  headers={"Host": "front.example"})
        assert res.body == b"via proxy"
        head = fwd.requests[0][0].decode("latin-1").split("\r\n")
    assert head[0] == "GET http://backend.invalid:8080/p?q=1 HTTP/1.1"
    assert "Host: front.example" in head
    assert "Proxy-Authorization: Basic %s" % base64.b64encode(b"us:er:p@ss").decode() in head


def test_environment_proxy_is_used_only_when_asked(monkeypatch, echo):
    with RawServer(scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nvia proxy")) as fwd:
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % fwd.port)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        assert through(ExactProxy(transport="httplib2"), echo.port).json["PATH_INFO"] == "/"
        assert fwd.connections == 0
        assert through(ExactProxy(transport="httplib2", proxy_from_env=True), echo.port).body \
            == b"via proxy"
        assert fwd.requests[0][0].startswith(b"GET http://127.0.0.1:%d/ HTTP/1.1" % echo.port)
        bypass = ExactProxy(transport="httplib2", proxy_from_env=True, no_proxy=["127.0.0.1"])
        assert through(bypass, echo.port).json["PATH_INFO"] == "/"
        assert fwd.connections == 1


def test_https_through_the_upstream_proxy_uses_connect(ca_file, tls_server):
    def tunnel(conn):
        head = conn.read_head()
        conn.server.requests.append((head, b""))
        host, _, port = head.split(b" ")[1].decode().rpartition(":")
        upstream = socket.create_connection((host.strip("[]"), int(port)))
        conn.send(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pump(src, dst):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        back = threading.Thread(target=pump, args=(upstream, conn.sock), daemon=True)
        back.start()
        if conn.buf:
            upstream.sendall(conn.buf)
        pump(conn.sock, upstream)
        back.join(5)
        upstream.close()

    with RawServer(tunnel) as fwd:
        proxy = ExactProxy(transport="httplib2", ca_certs=ca_file,
                           proxy_info="http://u:p@127.0.0.1:%d" % fwd.port)
        for _ in range(2):
            assert through(proxy, tls_server.port, scheme="https").body == b"ok"
        proxy.close()
        head = fwd.requests[0][0]
    assert head.startswith(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n" % tls_server.port)
    assert b"Proxy-Authorization: Basic dTpw" in head
    assert fwd.connections == 1 and tls_server.connections == 1


def test_unreachable_or_refusing_upstream_proxy_is_502():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proxy = ExactProxy(transport="httplib2", proxy_info="http://127.0.0.1:%d" % port)
    res = through(proxy, 443, host="backend.invalid", scheme="https")
    assert res.status_int == 502 and "upstream proxy" in res.text
    refusing = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
    with RawServer(scripted(refusing)) as fwd:
        proxy = ExactProxy(transport="httplib2", proxy_info="127.0.0.1:%d" % fwd.port)
        res = through(proxy, 443, host="backend.invalid", scheme="https")
    assert res.status_int == 502 and "refused CONNECT" in res.text and "407" in res.text


def test_connect_timeout_is_separate_from_read_timeout():
    release = threading.Event()

    def mute_proxy(conn):  # accepts, never answers CONNECT
        conn.read_head()
        release.wait(10)
    with RawServer(mute_proxy) as fwd:
        proxy = ExactProxy(transport="httplib2", connect_timeout=0.3, read_timeout=30,
                           proxy_info="http://127.0.0.1:%d" % fwd.port)
        res = through(proxy, 443, host="backend.invalid", scheme="https")
        release.set()
    assert res.status_int == 504
    assert "timed out connecting after 0.3s (upstream proxy http://127.0.0.1:%d)" % fwd.port \
        in res.text


def test_a_dropped_transport_closes_its_connections_without_the_garbage_collector():
    closed = threading.Event()

    def handler(conn):
        conn.read_request()
        conn.send(OK)
        if conn.read_head() is None:  # the client closed the kept-alive connection
            closed.set()
    with RawServer(handler) as server:
        gc.disable()
        try:
            transport = Httplib2Transport()
            response = transport.request("http", "127.0.0.1", server.port, "GET", "/",
                                         [("Host", "x")])
            assert response.body == b"ok" and transport.idle_connections() == 1
            del transport, response
            assert closed.wait(5)
        finally:
            gc.enable()


def test_transport_errors_are_backend_errors():
    transport = Httplib2Transport(connect_timeout=2)
    with pytest.raises(BackendUnavailable, match="unknown host"):
        transport.request("http", "no-such-host.invalid", 80, "GET", "/", [("Host", "x")])
    with RawServer(scripted(OK)) as server:
        response = transport.request("http", "127.0.0.1", server.port, "GET", "/",
                                     [("Host", "x")])
        assert (response.status_line, b"".join(response)) == ("200 OK", b"ok")
        response.close()
