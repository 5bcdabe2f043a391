"""WebSocket tunnels over TLS on both sides: wss:// to a gunicorn front, https:// to the backend.

A TLS socket cannot be half-closed (its shutdown drops the TLS state), so a
close on either side ends the tunnel at once; these tests check that the
bytes still arrive whole and that a close passes through.
"""

import os
import ssl
import sys
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import serve

from .servers import Gunicorn, free_port

BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FRONT = """\
import os
from wsgiproxy.app import WSGIProxyApp
app = WSGIProxyApp(os.environ["WS_HREF"], ca_certs=os.environ["WS_CA"], read_timeout=2)
"""

pytestmark = pytest.mark.timeout(90)


def _handler(ws):
    for message in ws:
        if message == "bye":
            ws.close(4002, "backend says bye")
            return
        ws.send(message)


@pytest.fixture(scope="module")
def tls_backend(ca):
    """A websockets echo server over TLS; "bye" makes it close with 4002."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    server = serve(_handler, "127.0.0.1", 0, ssl=ctx, max_size=None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.socket.getsockname()[1]
    server.shutdown()
    thread.join(10)


@pytest.fixture(scope="module")
def tls_front(ca, ca_file, tls_backend, tmp_path_factory):
    """gunicorn (gthread) with a certificate, running WSGIProxyApp to the TLS backend."""
    directory = tmp_path_factory.mktemp("wss")
    (directory / "front.py").write_text(FRONT)
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(directory / "front.pem"))
    port = free_port()
    env = dict(os.environ, WS_HREF="https://127.0.0.1:%d" % tls_backend, WS_CA=ca_file,
               PYTHONPATH=os.pathsep.join([str(directory), ROOT]))
    args = [os.path.join(BIN, "gunicorn"), "-k", "gthread", "--threads", "4",
            "--certfile", str(directory / "front.pem"), "--keyfile", str(directory / "front.pem"),
            "-b", "127.0.0.1:%d" % port, "front:app"]
    with Gunicorn(args, directory, env=env):
        yield port


def _client_context(ca):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def test_messages_of_several_mib_both_ways_over_tls(ca, tls_front):
    with connect("wss://127.0.0.1:%d/" % tls_front, ssl=_client_context(ca),
                 max_size=None, open_timeout=20) as ws:
        big = os.urandom(3 * 1024 * 1024)
        ws.send(big)
        assert ws.recv(timeout=30) == big
        ws.send("text after a big binary")
        assert ws.recv(timeout=10) == "text after a big binary"
        # Quiet for longer than the front's read_timeout (2 s): a tunnel is not subject to it.
        time.sleep(2.5)
        assert ws.ping().wait(10)
        ws.send("still here")
        assert ws.recv(timeout=10) == "still here"
        ws.close(4001, "client done")


def test_a_backend_close_reaches_the_client_over_tls(ca, tls_front):
    with connect("wss://127.0.0.1:%d/" % tls_front, ssl=_client_context(ca),
                 open_timeout=20) as ws:
        ws.send("bye")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4002, "backend says bye")
