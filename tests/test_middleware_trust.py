"""WSGIProxyMiddleware's two kinds of trust: trust_ips (WSGIProxyApp) and front_proxy_ips (nginx).

Who is believed for what, against the table in code
(wsgiproxy.middleware.trust.BELIEVED) and the tables of docs/middleware.rst and
docs/security.rst.
"""

import http.client
import json
import logging
from pathlib import Path

import docutils.core
import docutils.nodes
import pytest
from webob import Request

from wsgiproxy.middleware import WSGIProxyMiddleware
from wsgiproxy.middleware.trust import BELIEVED, Peer, Pickles
from wsgiproxy.wsgiapp import make_middleware

from .client import Bomb
from .middleware_helpers import (
    KEYS,
    NGINX,
    STRANGER,
    WSGIPROXY,
    Recorder,
    Server,
    blank,
    call,
    check_refused,
    error_message,
    make,
    pickle_headers,
    signed,
)
from .servers import WaitressServer

#: A client's request as a plain reverse proxy passes it on: its X-Forwarded-For
#: value appended, and the client's own WSGIProxy headers left in.
BOTH_FAMILIES = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9",
                 "X-WSGIProxy-Str-0": "REMOTE_USER admin"}


def outcome(mw, app, peer, signed_request=False, tampered=False):
    """What the app was made to believe: "all", "front", "nothing", or the 403 reason.

    ``tampered``: the signed request is changed after signing.
    """
    if signed_request:
        req = signed(headers=list(BOTH_FAMILIES.items()), remote_addr=peer)
        if tampered:
            req.query_string = "changed"
    else:
        req = blank(headers=dict(BOTH_FAMILIES), remote_addr=peer)
    req.headers["Accept"] = "application/json"
    app.environ = None
    resp = req.get_response(mw)
    if resp.status_int == 403:
        assert app.environ is None
        message = resp.json["error"]["message"]
        assert message.startswith("X-WSGIProxy-Signature: "), message
        return "403 " + message.split(": ")[1].split(" (")[0]
    assert resp.status_int == 200, resp.text
    env = app.environ
    assert not [k for k in env if k.startswith("HTTP_X_WSGIPROXY")]
    front = env["REMOTE_ADDR"] == "203.0.113.9"
    identity = env.get("REMOTE_USER") == "admin"
    if not front:
        assert env["REMOTE_ADDR"] == peer
    return {(True, True): "all", (True, False): "front", (False, False): "nothing"}[
        (front, identity)]


@pytest.mark.parametrize("options, peer, signed_request, expected", [
    # Nothing configured: loopback is trusted like trust_ips (with a warning).
    ({}, "127.0.0.1", False, "all"),
    ({}, STRANGER, False, "nothing"),
    # trust_ips: WSGIProxyApp hosts, believed for everything.
    ({"trust_ips": WSGIPROXY}, WSGIPROXY, False, "all"),
    ({"trust_ips": WSGIPROXY}, "127.0.0.1", False, "nothing"),  # no loopback default
    ({"trust_ips": WSGIPROXY}, NGINX, False, "nothing"),
    # front_proxy_ips: nginx & co, believed for X-Forwarded-* only.
    ({"front_proxy_ips": NGINX}, NGINX, False, "front"),
    ({"front_proxy_ips": NGINX}, "127.0.0.1", False, "nothing"),  # no loopback default
    ({"front_proxy_ips": NGINX}, WSGIPROXY, False, "nothing"),
    ({"front_proxy_ips": "*"}, STRANGER, False, "front"),
    ({"trust_ips": WSGIPROXY, "front_proxy_ips": NGINX}, WSGIPROXY, False, "all"),
    ({"trust_ips": WSGIPROXY, "front_proxy_ips": NGINX}, NGINX, False, "front"),
    ({"trust_ips": WSGIPROXY, "front_proxy_ips": NGINX}, STRANGER, False, "nothing"),
    ({"trust_ips": "10.0.0.0/24", "front_proxy_ips": NGINX}, NGINX, False, "all"),  # in both
    # A secret: unsigned requests refused unless from trust_ips...
    ({"secret_file": KEYS}, "127.0.0.1", False, "403 missing"),
    ({"secret_file": KEYS, "trust_ips": WSGIPROXY}, WSGIPROXY, False, "all"),
    ({"secret_file": KEYS, "trust_ips": WSGIPROXY}, NGINX, False, "403 missing"),
    # ... or served, with require_signature = false.
    ({"secret_file": KEYS, "require_signature": False}, "127.0.0.1", False, "nothing"),
    ({"secret_file": KEYS, "require_signature": False, "front_proxy_ips": NGINX}, NGINX,
     False, "front"),
    ({"secret_file": KEYS, "require_signature": False, "front_proxy_ips": NGINX,
      "trust_ips": WSGIPROXY}, WSGIPROXY, False, "all"),
    ({"secret_file": KEYS, "require_signature": False, "front_proxy_ips": NGINX}, STRANGER,
     False, "nothing"),
    # A valid signature is believed for everything, whoever the peer is.
    ({"secret_file": KEYS}, STRANGER, True, "all"),
    ({"secret_file": KEYS, "require_signature": False, "front_proxy_ips": NGINX}, NGINX,
     True, "all"),
    ({"secret_file": KEYS, "require_signature": False, "front_proxy_ips": NGINX}, STRANGER,
     True, "all"),
])
def test_who_is_believed_for_what(options, peer, signed_request, expected):
    app, mw = make(**options)
    assert outcome(mw, app, peer, signed_request) == expected


def test_bad_signature_is_refused_from_every_kind_of_peer():
    app, mw = make(secret_file=KEYS, require_signature=False, trust_ips=WSGIPROXY,
                   front_proxy_ips=NGINX)
    for peer in (WSGIPROXY, NGINX, STRANGER):
        req = signed(headers=list(BOTH_FAMILIES.items()), remote_addr=peer)
        req.query_string = "changed"
        check_refused(mw, req, "bad signature")
    assert app.calls == 0


def test_front_proxy_peer_cannot_set_wsgiproxy_identity():
    """The hole front_proxy_ips closes: nginx passes these on from the client unchanged."""
    app, mw = make(front_proxy_ips=NGINX, x_host=1, x_port=1, x_prefix=1)
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9", "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "shop.example", "X-Forwarded-Port": "8443",
               "X-Forwarded-Prefix": "/shop",
               # what the client added, and nginx passed on:
               "X-WSGIProxy-Str-0": "REMOTE_USER admin", "X-WSGIProxy-Version": "1",
               "X-WSGIProxy-Json-0": 'identity {"groups": ["admin"]}',
               "X-WSGIProxy-Unicode-0": "name b64w6k=",
               "X-Forwarded-Server": "evil.example", "X-Forwarded-Scheme": "http",
               "X-Forwarded-Script-Name": "/evil", "X-Script-Name": "/evil",
               "X-Traversal-Path": "/backend"}
    resp = call(mw, "/backend/a", headers=headers, remote_addr=NGINX)
    assert resp.status_int == 200, resp.text
    env = app.environ
    assert Request(env).url == "https://shop.example:8443/shop/backend/a"
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    for key in ("REMOTE_USER", "identity", "name"):
        assert key not in env
    assert not [k for k in env if k.startswith("HTTP_X_WSGIPROXY")]
    assert env["wsgiproxy.key_id"] is None
    # Ignored means not even checked: malformed WSGIProxy headers are no 400 either.
    resp = call(mw, "/a", remote_addr=NGINX, headers={
        "X-WSGIProxy-Version": "99", "X-WSGIProxy-Json-0": "K {", "X-Traversal-Path": "/nope",
        "X-Forwarded-Server": "bad host/x", "X-Forwarded-For": "203.0.113.9"})
    assert resp.status_int == 200 and app.environ["REMOTE_ADDR"] == "203.0.113.9"
    # The front-proxy headers are still checked.
    resp = call(mw, remote_addr=NGINX, headers={"X-Forwarded-Proto": "javascript"})
    assert resp.status_int == 400
    # ... and the same request from a trust_ips peer is believed entirely.
    app, mw = make(trust_ips=WSGIPROXY, x_host=1, x_port=1, x_prefix=1)
    resp = call(mw, "/backend/a", headers=headers, remote_addr=WSGIPROXY)
    assert resp.status_int == 200, resp.text
    env = app.environ
    assert (env["REMOTE_USER"], env["identity"], env["name"]) == \
        ("admin", {"groups": ["admin"]}, "\xe9")
    assert Request(env).url == "http://evil.example/evil/evil/a"


def test_front_proxy_peer_with_forwarded_header():
    app, mw = make(front_proxy_ips="2001:db8::/64", forwarded=1)
    call(mw, "/a", remote_addr="2001:db8::5", headers={
        "Forwarded": 'for=6.6.6.6, for="[2001:db8::a]:51000";proto=https;host=shop.example',
        "X-Forwarded-For": "7.7.7.7", "X-Forwarded-Server": "evil.example",
        "X-WSGIProxy-Str-0": "REMOTE_USER admin"})
    env = app.environ
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::a", "51000")
    assert (env["wsgi.url_scheme"], env["HTTP_HOST"]) == ("https", "shop.example")
    assert "REMOTE_USER" not in env


def test_front_proxy_peer_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned"
    headers = pickle_headers(Bomb(str(target)))
    for options in ({"front_proxy_ips": NGINX},
                    {"front_proxy_ips": NGINX, "trust_ips": WSGIPROXY,
                     "allow_pickle_from_trusted_ips": True},
                    {"front_proxy_ips": NGINX, "secret_file": KEYS,
                     "require_signature": False}):
        app, mw = make(**options)
        resp = call(mw, headers=headers, remote_addr=NGINX, accept="application/json")
        assert resp.status_int == 403, options
        assert "Pickle" in resp.json["error"]["message"] and app.calls == 0
    assert not target.exists()
    with pytest.raises(ValueError, match="needs trust_ips"):
        WSGIProxyMiddleware(Recorder(), front_proxy_ips=NGINX, allow_pickle_from_trusted_ips=True)


def test_front_proxy_ips_configuration(caplog):
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.middleware"):
        _, mw = make(front_proxy_ips="10.0.0.5, 10.1.0.0/16  2001:db8::/32")
    assert caplog.text == ""  # no loopback default, no warning
    assert "10.1.2.3" in mw.front_proxies and "2001:db8::9" in mw.front_proxies
    assert "127.0.0.1" not in mw.trusted and not mw.trusted
    _, mw = make(front_proxy_ips=["10.0.0.5", "fd00::1"])
    assert "::ffff:10.0.0.5" in mw.front_proxies and "[fd00::1]" in mw.front_proxies
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.middleware"):
        make(front_proxy_ips="*")
    assert "front_proxy_ips = *" in caplog.text
    with pytest.raises(ValueError, match="trusted address"):
        WSGIProxyMiddleware(Recorder(), front_proxy_ips="nginx.internal")
    # With a secret, unsigned requests from a front proxy would all be refused:
    # that is a configuration error, said at startup.
    for options in ({}, {"require_signature": True}):
        with pytest.raises(ValueError, match="require_signature"):
            WSGIProxyMiddleware(Recorder(), secret_file=KEYS, front_proxy_ips=NGINX, **options)
    WSGIProxyMiddleware(Recorder(), secret_file=KEYS, front_proxy_ips=NGINX,
                        require_signature=False)
    with pytest.raises(TypeError):  # keyword-only: positional arguments keep their places
        WSGIProxyMiddleware(Recorder(), None, None, None, None, None, None, None, None, 1, 1, 0,
                            0, 0, NGINX)


def test_paste_filter_factory_forwarded_as_count_or_switch():
    assert make_middleware(Recorder(), {}, forwarded="2").forwarded == 2
    assert make_middleware(Recorder(), {}, forwarded="true").forwarded == 1
    assert make_middleware(Recorder(), {}, forwarded="off").forwarded == 0
    with pytest.raises(ValueError, match="forwarded"):
        make_middleware(Recorder(), {}, forwarded="sometimes")


def test_paste_filter_factory_front_proxy_ips():
    mw = make_middleware(Recorder(), {"trust_ips": "10.0.0.1"},
                         front_proxy_ips="192.0.2.0/24,  2001:db8::/32 10.1.0.0/16",
                         x_host="1")
    assert "192.0.2.9" in mw.front_proxies and "2001:db8::1" in mw.front_proxies
    assert "10.1.2.3" in mw.front_proxies and "10.0.0.1" not in mw.front_proxies
    assert "10.0.0.1" in mw.trusted and mw.x_host == 1
    mw = make_middleware(Recorder(), {"front_proxy_ips": "10.0.0.9"})
    assert not mw.front_proxies  # not read from [DEFAULT]
    with pytest.raises(ValueError, match="front_proxy_ips"):
        make_middleware(Recorder(), {}, front_proxy_ips="10.0.0.5/99")


class NginxLike:
    """A plain reverse proxy on a real server, as nginx with ``proxy_set_header
    X-Forwarded-For $proxy_add_x_forwarded_for`` and ``X-Forwarded-Proto``: every
    other header of the client's request goes on unchanged."""

    def __init__(self, backend_port):
        from wsgiproxy.exactproxy import ExactProxy
        self.proxy = ExactProxy()
        self.backend_port = backend_port

    def __call__(self, environ, start_response):
        environ = dict(environ)
        before = environ.get("HTTP_X_FORWARDED_FOR")
        environ["HTTP_X_FORWARDED_FOR"] = (before + ", " if before else "") + \
            environ["REMOTE_ADDR"]
        environ["HTTP_X_FORWARDED_PROTO"] = "https"  # as if it ended TLS
        environ["SERVER_NAME"], environ["SERVER_PORT"] = "127.0.0.1", str(self.backend_port)
        return self.proxy(environ, start_response)


def from_client(port, path, headers):
    """GET from the client address 127.0.0.2: (status, environ the backend app saw)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=("127.0.0.2", 0))
    try:
        conn.request("GET", path, headers=dict(headers, Accept="application/json"))
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if resp.status == 200 else data
    finally:
        conn.close()


def test_http_client_behind_front_proxy_cannot_choose_its_user():
    """client -> nginx-like proxy -> backend: front_proxy_ips keeps the client's
    X-WSGIProxy-* and X-Forwarded-Server out; trust_ips (the old advice) did not."""
    forged = {"Host": "shop.example", "X-WSGIProxy-Str-0": "REMOTE_USER admin",
              "X-Forwarded-Server": "evil.example", "X-Forwarded-For": "6.6.6.6"}
    backend = Server(WSGIProxyMiddleware(Recorder(), front_proxy_ips="127.0.0.1"))
    try:
        with WaitressServer(NginxLike(backend.port)) as nginx:
            status, env = from_client(nginx.port, "/account", forged)
    finally:
        backend.close()
    assert status == 200, env
    assert "REMOTE_USER" not in env
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("127.0.0.2", "https")
    assert env["HTTP_HOST"] == "shop.example"
    # trust_ips is for WSGIProxyApp peers: behind a plain proxy the client is believed.
    backend = Server(WSGIProxyMiddleware(Recorder(), trust_ips="127.0.0.1"))
    try:
        with WaitressServer(NginxLike(backend.port)) as nginx:
            status, env = from_client(nginx.port, "/account", forged)
    finally:
        backend.close()
    assert (env["REMOTE_USER"], env["HTTP_HOST"]) == ("admin", "evil.example")


def test_http_wsgiproxyapp_peer_in_trust_ips_is_believed_for_everything():
    """client -> WSGIProxyApp (unsigned) -> backend with trust_ips: the proxy's own
    REMOTE_USER, host and scheme arrive; what the client forged does not."""
    from wsgiproxy.app import WSGIProxyApp
    backend = Server(WSGIProxyMiddleware(Recorder(), trust_ips="127.0.0.1"))
    try:
        proxy = WSGIProxyApp(backend.waitress.url, string_keys=["REMOTE_USER"])

        def logged_in(environ, start_response):
            environ["REMOTE_USER"] = "alice"
            return proxy(environ, start_response)
        with WaitressServer(logged_in, url_scheme="https") as front:
            status, env = from_client(front.port, "/account", {
                "Host": "shop.example", "X-WSGIProxy-Str-1": "REMOTE_USER admin",
                "X-WSGIProxy-Json-0": 'role "admin"', "X-Forwarded-Server": "evil.example"})
    finally:
        backend.close()
    assert status == 200, env
    assert env["REMOTE_USER"] == "alice" and "role" not in env
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"], env["HTTP_HOST"]) == \
        ("127.0.0.2", "https", "shop.example")


# -- the table in code (trust.BELIEVED), and the tables of the docs ----------------------

#: For each kind of peer: options, and a peer address and signing that make a request of it.
KINDS = {
    Peer.SIGNED: ({"secret_file": KEYS, "trust_ips": WSGIPROXY}, STRANGER, True),
    Peer.TRUST_IPS: ({"trust_ips": WSGIPROXY}, WSGIPROXY, False),
    Peer.LOOPBACK: ({}, "127.0.0.1", False),
    Peer.FRONT_PROXY: ({"front_proxy_ips": NGINX, "trust_ips": WSGIPROXY}, NGINX, False),
    Peer.OTHER: ({"front_proxy_ips": NGINX, "trust_ips": WSGIPROXY}, STRANGER, False),
}


def promised(row):
    """The outcome() a row of the table promises."""
    if row.needs_signature:
        return "403 missing"
    believed = (row.identity, row.keys, row.front)
    return {(True, True, True): "all", (False, False, True): "front",
            (False, False, False): "nothing"}[believed]


@pytest.mark.parametrize("peer", list(Peer), ids=lambda peer: peer.name)
def test_each_kind_of_peer_gets_its_row_of_the_table(peer):
    options, addr, signed_request = KINDS[peer]
    app, mw = make(**options)
    assert mw.trust.peer(addr, signed_request) is peer
    row = mw.trust.decide(addr, signed_request)
    assert row[:2] + row[3:4] == BELIEVED[peer][:2] + BELIEVED[peer][3:4]
    assert outcome(mw, app, addr, signed_request) == promised(row)


@pytest.mark.parametrize("peer", list(Peer), ids=lambda peer: peer.name)
def test_pickles_follow_the_table(peer):
    options, addr, signed_request = KINDS[peer]
    headers = list(pickle_headers([1, {2}]).items())
    for allow in (False, True):
        if allow and not options.get("trust_ips"):
            with pytest.raises(ValueError, match="needs trust_ips"):
                make(allow_pickle_from_trusted_ips=allow, **options)
            continue
        app, mw = make(allow_pickle_from_trusted_ips=allow, **options)
        pickles = BELIEVED[peer].pickles
        unpickled = pickles is Pickles.UNPICKLED or (pickles is Pickles.OPT_IN and allow)
        if signed_request:
            req = signed(headers=headers, remote_addr=addr, accept="application/json")
        else:
            req = blank(headers=dict(headers), remote_addr=addr, accept="application/json")
        resp = req.get_response(mw)
        if unpickled:
            assert resp.status_int == 200 and app.environ["payload"] == [1, {2}], (allow, resp)
        else:
            assert "Pickle" in error_message(resp, 403) and app.calls == 0, allow


DOCS = Path(__file__).resolve().parent.parent / "docs"
EVERY_PEER = (WSGIPROXY, NGINX, STRANGER, "127.0.0.1")


def docs_table(page, title):
    """The body rows of the list-table ``title`` of ``docs/page``, as lists of cell texts."""
    lines = (DOCS / page).read_text().splitlines()
    start = lines.index(".. list-table:: " + title)
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" ")):
        end += 1
    tree = docutils.core.publish_doctree("\n".join(lines[start:end]),
                                         settings_overrides={"report_level": 5})
    rows = [[" ".join(entry.astext().split()) for entry in row.children]
            for row in tree.findall(docutils.nodes.row)]
    return rows[1:]


def docs_options(configuration):
    """The options a "configuration" cell describes (with addresses for the lists it implies)."""
    if configuration.startswith("none of"):
        return {}
    lists = {"trust_ips": WSGIPROXY, "front_proxy_ips": NGINX}
    if configuration == "no secret_file":
        return lists
    if configuration == "secret_file, require_signature = false":
        return dict(lists, secret_file=KEYS, require_signature=False)
    assert configuration == "secret_file", configuration
    return {"secret_file": KEYS, "trust_ips": WSGIPROXY}


def docs_request(request):
    """The peers and the signing a "request" cell describes: (peers, signed, tampered)."""
    if request in ("validly signed", "valid signature"):
        return EVERY_PEER, True, False
    if request in ("badly signed", "bad signature"):
        return EVERY_PEER, True, True
    peer = request.removeprefix("unsigned, ")
    return {"peer in trust_ips": (WSGIPROXY,), "peer in front_proxy_ips": (NGINX,),
            "other peer": (STRANGER,), "loopback peer": ("127.0.0.1",)}[peer], False, False


def docs_result(result):
    """The outcome() a "result" cell describes."""
    for start, expected in (("trusted", "all"), ("403 with the reason", "403 bad signature"),
                            ("403 missing", "403 missing"), ("front-proxy headers only", "front"),
                            ("served, forwarded headers ignored", "nothing")):
        if result.startswith(start):
            return expected
    raise AssertionError("a result the test does not know: %r" % result)


@pytest.mark.parametrize("page", ["middleware.rst", "security.rst"])
def test_the_docs_tables_are_what_the_middleware_does(page):
    """Each row of the page's table, from each peer it names: the outcome it says, the
    row of BELIEVED that promises it, and every kind of peer covered."""
    rows = docs_table(page, "Who is believed")
    kinds = set()
    for configuration, request, result in rows:
        options = docs_options(configuration)
        peers, signed_request, tampered = docs_request(request)
        expected = docs_result(result)
        for peer in peers:
            app, mw = make(**options)
            where = (page, configuration, request, peer)
            assert outcome(mw, app, peer, signed_request, tampered) == expected, where
            if tampered:
                continue
            kinds.add(mw.trust.peer(peer, signed_request))
            assert promised(mw.trust.decide(peer, signed_request)) == expected, where
            if "no pickles" in result:
                req = blank(headers=pickle_headers([1]), remote_addr=peer,
                            accept="application/json")
                assert "Pickle" in error_message(req.get_response(mw), 403), where
    assert kinds == set(Peer), page
