"""REMOTE_PORT and REMOTE_HOST follow the REMOTE_ADDR the middleware rebuilds (issue 20)."""

from .middleware_helpers import call, make


def _peer(port="40000", host="10.0.0.1"):
    return {"REMOTE_PORT": port, "REMOTE_HOST": host}


def test_port_from_trusted_forwarded_for():
    app, mw = make(trust_ips="10.0.0.1", forwarded=1)
    call(mw, remote_addr="10.0.0.1", environ=_peer(),
         headers={"Forwarded": 'for="[2001:db8::a]:51000"'})
    env = app.environ
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["REMOTE_HOST"]) == \
        ("2001:db8::a", "51000", "2001:db8::a")
    assert env["wsgiproxy.orig"]["REMOTE_PORT"] == "40000"
    assert env["wsgiproxy.orig"]["REMOTE_HOST"] == "10.0.0.1"


def test_proxy_port_removed_when_the_client_has_none():
    app, mw = make(trust_ips="10.0.0.1")
    call(mw, remote_addr="10.0.0.1", environ=_peer(), headers={"X-Forwarded-For": "203.0.113.9"})
    env = app.environ
    assert env["REMOTE_ADDR"] == "203.0.113.9"
    assert "REMOTE_PORT" not in env  # the proxy's own port would be a lie
    assert env["REMOTE_HOST"] == "203.0.113.9"


def test_untouched_without_a_believed_client():
    app, mw = make(trust_ips="10.0.0.1")
    call(mw, remote_addr="192.0.2.66", environ=_peer(host="192.0.2.66"),
         headers={"X-Forwarded-For": "203.0.113.9"})  # not a trusted peer: not believed
    env = app.environ
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"], env["REMOTE_HOST"]) == \
        ("192.0.2.66", "40000", "192.0.2.66")


def test_no_remote_host_is_not_invented():
    app, mw = make(trust_ips="10.0.0.1")
    call(mw, remote_addr="10.0.0.1", headers={"X-Forwarded-For": "203.0.113.9:5000"})
    assert app.environ["REMOTE_PORT"] == "5000"
    assert "REMOTE_HOST" not in app.environ
