"""docs/websockets.rst, run: its nginx equivalent carries a WebSocket like WSGIProxy does.

The page's ``.ini`` snippet is loaded by tests/test_docs_snippets.py; the
tunnels themselves are tests/test_websocket.py's.  Here the page's nginx
configuration runs with the Debian nginx, its ports moved to free ones, in
front of the same websockets backend, so the comparison the page draws
stands on a configuration that works.
"""

import os
import subprocess
import sys

import pytest
from websockets.sync.client import connect

from .docsnippets import snippet
from .servers import Served, free_port, need, nginx_conf, nginx_process, wait_for_port
from .wsbackend import SUBPROTOCOL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(60)


def test_the_nginx_equivalent_carries_a_websocket(tmp_path):
    backend_port, nginx_port = free_port(), free_port()
    text = snippet("websockets-nginx").text
    assert "listen 127.0.0.1:8000;" in text and "proxy_pass http://127.0.0.1:8081;" in text
    text = text.replace("127.0.0.1:8000", "127.0.0.1:%d" % nginx_port)
    text = text.replace("127.0.0.1:8081", "127.0.0.1:%d" % backend_port)
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(tmp_path, text))
    check = subprocess.run([need("nginx"), "-t", "-q", "-p", str(tmp_path), "-c", str(conf)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    env = dict(os.environ, PYTHONPATH=ROOT)
    with Served([sys.executable, "-m", "tests.wsbackend", str(backend_port)], backend_port,
                tmp_path / "backend.log", env=env, cwd=ROOT), \
            nginx_process(tmp_path, conf):
        wait_for_port(nginx_port)
        with connect("ws://127.0.0.1:%d/echo" % nginx_port, subprotocols=[SUBPROTOCOL],
                     max_size=None, proxy=None, open_timeout=10) as ws:
            assert ws.subprotocol == SUBPROTOCOL
            ws.send(b"\x02" * 2 ** 20)
            assert ws.recv(timeout=10) == b"\x02" * 2 ** 20
