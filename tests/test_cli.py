"""The wsgiproxy command run as a user runs it (a subprocess): version, help, log level,
reload, check, a taken address, and a configuration error under gunicorn --paste.

The configuration errors themselves are the examples of docs/troubleshooting.rst,
run by tests/test_docs_troubleshooting.py.
"""

import os
import re
import socket
import subprocess
import time

from wsgiproxy import __version__

from .client import get_json
from .servers import BIN, WSGIPROXY, Served, free_port, wait_until


def run(args, cwd, timeout=60):
    """``wsgiproxy ARGS`` in ``cwd``: (exit status, stdout and stderr); timeout is a hang guard."""
    proc = subprocess.run([WSGIPROXY] + args, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def test_version(tmp_path):
    assert run(["--version"], tmp_path) == (0, "WSGIProxy %s\n" % __version__)


def test_help_has_no_markup(tmp_path):
    for args in (["--help"], ["serve", "--help"], ["check", "--help"]):
        status, out = run(args, tmp_path)
        assert status == 0 and "usage: wsgiproxy" in out
        assert not re.search(r"``|:(class|mod|func|doc):", out), out
    assert "wsgiproxy check CONFIG.ini" in run(["--help"], tmp_path)[1]
    serve_help = run(["serve", "--help"], tmp_path)[1]
    assert "--log-level" in serve_help and "--reload" in serve_help
    assert "--traceback" in serve_help


def test_a_usage_error_is_status_2(tmp_path):
    (tmp_path / "proxy.ini").write_text("[app:main]\nuse = egg:WSGIProxy#sample\n")
    assert run(["serve", "proxy.ini", "novalue"], tmp_path) == (
        2, "wsgiproxy: expected NAME=VALUE, got 'novalue'\n")
    assert run(["check", "nofile.ini"], tmp_path) == (
        2, "wsgiproxy: no such config file: nofile.ini\n")


SAMPLE = """
[app:main]
use = egg:WSGIProxy#sample
[server:main]
use = egg:waitress#main
listen = 127.0.0.1:%d
"""


def test_log_level(tmp_path):
    """--log-level warning hides waitress's INFO line, which is there by default."""
    for level, shown in ((None, True), ("warning", False)):
        port = free_port()
        (tmp_path / "proxy.ini").write_text(SAMPLE % port)
        args = [WSGIPROXY, "serve", "proxy.ini"] + (["--log-level", level] if level else [])
        log = tmp_path / ("%s.log" % level)
        with Served(args, port, log, cwd=tmp_path):
            assert get_json(port, "/?format=json")["PATH_INFO"] == "/"
        assert ("Serving on http://127.0.0.1:%d" % port in log.read_text()) is shown


def test_reload_restarts_on_an_ini_change(tmp_path):
    port = free_port()
    ini = tmp_path / "proxy.ini"
    text = """
[pipeline:main]
pipeline = user sample
[filter:user]
use = egg:WSGIProxy#demo_user
user = %s
[app:sample]
use = egg:WSGIProxy#sample
[server:main]
use = egg:waitress#main
listen = 127.0.0.1:{port}
""".replace("{port}", str(port))
    ini.write_text(text % "before")
    with Served([WSGIPROXY, "serve", "--reload", "proxy.ini"], port, tmp_path / "reload.log",
                cwd=tmp_path) as served:
        first = get_json(port, "/?format=json")
        assert first["REMOTE_USER"] == "before"
        # The server is a child of the monitor that --reload runs.
        assert first["wsgiproxy.sample.pid"] != served.pid
        ini.write_text(text % "after")
        touched = [time.monotonic()]

        def reloaded():
            try:
                return get_json(port, "/?format=json")["REMOTE_USER"] == "after"
            except OSError:
                return False  # between the old server and the new one
            finally:
                # hupper's polling monitor takes the first modification time it sees as
                # the baseline, which may already be the change above; a later
                # modification time is a change it cannot miss.
                if time.monotonic() - touched[0] > 2:
                    touched[0] = time.monotonic()
                    os.utime(ini, (time.time() + 1, time.time() + 1))
        wait_until(reloaded, 30, "the server to restart with the new file")
        assert get_json(port, "/?format=json")["wsgiproxy.sample.pid"] != first[
            "wsgiproxy.sample.pid"]


TWO_SERVERS = """
[app:main]
use = egg:WSGIProxy#main
href = http://127.0.0.1:%(back)d
[server:main]
use = egg:waitress#main
listen = 127.0.0.1:%(front)d
[app:backend]
use = egg:WSGIProxy#sample
[server:backend]
use = egg:waitress#main
listen = 127.0.0.1:%(back)d
"""


def test_a_taken_address_of_a_second_server(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        back = taken.getsockname()[1]
        (tmp_path / "proxy.ini").write_text(TWO_SERVERS % {"back": back, "front": free_port()})
        status, out = run(["serve", "proxy.ini"], tmp_path)
    assert status == 1
    assert out.splitlines()[-1] == (
        "wsgiproxy: proxy.ini [server:backend] listen = 127.0.0.1:%d: cannot listen there: "
        "Address already in use" % back)
    assert "Traceback" not in out


def test_check_says_what_would_be_served_and_serves_nothing(tmp_path):
    front, back = free_port(), free_port()
    (tmp_path / "proxy.ini").write_text(TWO_SERVERS % {"back": back, "front": front})
    status, out = run(["check", "proxy.ini"], tmp_path)
    assert (status, out.splitlines()) == (0, [
        "[server:main] listen = 127.0.0.1:%d" % front,
        "  WSGIProxyApp: forwards to http://127.0.0.1:%d, not signed" % back,
        "[server:backend] listen = 127.0.0.1:%d" % back,
        "  wsgiproxy.sampleapp.application",
        "proxy.ini: configuration OK"])
    for port in (front, back):  # it bound nothing: both are free still
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_check_a_gunicorn_file_and_variables(tmp_path):
    """A file without [server:main] (for gunicorn --paste): its main app is built."""
    (tmp_path / "proxy.ini").write_text("""
[pipeline:main]
pipeline = fix proxy
[filter:fix]
use = egg:WSGIProxy#main
front_proxy_ips = 127.0.0.1
[app:proxy]
use = egg:WSGIProxy#main
href = http://127.0.0.1:%(backend_port)s/shop
""")
    status, out = run(["check", "proxy.ini", "backend_port=9001"], tmp_path)
    assert (status, out.splitlines()) == (0, [
        "app main (no [server:main]: for gunicorn --paste)",
        "  WSGIProxyMiddleware",
        "    WSGIProxyApp: forwards to http://127.0.0.1:9001/shop, not signed",
        "proxy.ini: configuration OK"])


def test_a_filter_error_names_the_filter_section(tmp_path):
    (tmp_path / "proxy.ini").write_text("""
[pipeline:main]
pipeline = fix sample
[filter:fix]
use = egg:WSGIProxy#main
front_proxy_ips = 127.0.0.1
x_forr = 1
[app:sample]
use = egg:WSGIProxy#sample
""")
    line = "wsgiproxy: proxy.ini [filter:fix] x_forr = 1: unknown option; did you mean x_for?"
    assert run(["check", "proxy.ini"], tmp_path) == (2, line + "\n")


def test_gunicorn_paste_shows_the_same_line(tmp_path):
    """Every factory locates its error: gunicorn's traceback ends with the one line."""
    (tmp_path / "proxy.ini").write_text("""
[app:main]
use = egg:WSGIProxy#main
href = http://127.0.0.1:9/
read_timeout = -5
""")
    proc = subprocess.run([os.path.join(BIN, "gunicorn"), "--paste", "proxy.ini",
                           "-b", "127.0.0.1:%d" % free_port()],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert ("wsgiproxy.errors.ConfigError: proxy.ini [app:main] read_timeout = -5: "
            "must be positive, not -5.0") in proc.stderr


def test_more_bad_inputs(tmp_path):
    """Each a line naming the file and section, status 2, no traceback."""
    (tmp_path / "key.pem").write_text("not a PEM key\n")
    os.chmod(tmp_path / "key.pem", 0o600)
    cases = {
        # A distribution that is not installed: PasteDeploy's PackageNotFoundError.
        "[app:main]\nuse = egg:WSGIPrxy#main\n":
            "proxy.ini [app:main] use = egg:WSGIPrxy#main: no distribution WSGIPrxy is "
            "installed; did you mean WSGIProxy?",
        # A file configparser cannot read.
        "[app:main\nuse = egg:WSGIProxy#main\n":
            "proxy.ini: File contains no section headers; file: 'proxy.ini', line: 1; "
            "'[app:main\\n'",
        # A key file's content: the option is found by its value (a path) in the message.
        "[app:main]\nuse = egg:WSGIProxy#main\nhref = http://127.0.0.1:9\n"
        "signature_format = rfc9421\nprivate_key_file = %(here)s/key.pem\n":
            "proxy.ini [app:main] private_key_file = %s: %s holds no PEM private key"
            % (tmp_path / "key.pem", tmp_path / "key.pem"),
        # A password is never shown, not even the malformed one.
        "[app:main]\nuse = egg:WSGIProxy#main\nhref = http://127.0.0.1:9\n"
        "credentials = alice-secret-without-colon\n":
            "proxy.ini [app:main] credentials: credentials item 1 is not user:password or "
            "user:password@domain",
        # Several hrefs that are not the same URL on other hosts.
        "[app:main]\nuse = egg:WSGIProxy#main\nhref = http://127.0.0.1:9/a\n"
        "    http://127.0.0.1:10/b\n":
            "proxy.ini [app:main] href = 'http://127.0.0.1:9/a\\nhttp://127.0.0.1:10/b': the "
            "URLs must differ only in host:port: 'http://127.0.0.1:9/a' and "
            "'http://127.0.0.1:10/b'",
        # spawn's own checks name their option (workers, not start_timeout).
        "[app:main]\nuse = egg:WSGIProxy#spawn\nstart_script = x __PORT__\n"
        "start_timeout = 5\nworkers = 0\n":
            "proxy.ini [app:main] workers = 0: must be positive, not 0",
    }
    for text, line in cases.items():
        (tmp_path / "proxy.ini").write_text(text)
        assert run(["check", "proxy.ini"], tmp_path) == (2, "wsgiproxy: %s\n" % line), text
