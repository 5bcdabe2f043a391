"""docs/troubleshooting.rst against the command: every example is run as a user would.

Each ``troubleshooting-NAME-ini`` snippet is written to ``proxy.ini`` in a
fresh directory and the ``troubleshooting-NAME`` console snippet's command
is run there (``wsgiproxy`` is this checkout's); what it prints must be the
snippet's output, line for line, with no traceback, and its exit status the
one the page gives (2 for a configuration error, 1 for a taken address).
"""

import os
import shlex
import socket
import subprocess

import pytest

from .docsnippets import snippet, snippets
from .servers import WSGIPROXY

#: The page's listen port, replaced by a port the test holds (the taken address) or a free one.
PAGE_PORT = "8080"

#: Each example: its proxy.ini, the command and what it prints, the exit status.
CASES = {
    "check": (snippet("troubleshooting-check-ini"), snippet("troubleshooting-check"), 0),
    "timeout": (snippet("troubleshooting-timeout-ini"), snippet("troubleshooting-timeout"), 2),
    "integer": (snippet("troubleshooting-integer-ini"), snippet("troubleshooting-integer"), 2),
    "href": (snippet("troubleshooting-href-ini"), snippet("troubleshooting-href"), 2),
    "option": (snippet("troubleshooting-option-ini"), snippet("troubleshooting-option"), 2),
    "elsewhere": (snippet("troubleshooting-elsewhere-ini"),
                  snippet("troubleshooting-elsewhere"), 2),
    "entry": (snippet("troubleshooting-entry-ini"), snippet("troubleshooting-entry"), 2),
    "balance": (snippet("troubleshooting-balance-ini"), snippet("troubleshooting-balance"), 2),
    "secret": (snippet("troubleshooting-secret-ini"), snippet("troubleshooting-secret"), 2),
    "variable": (snippet("troubleshooting-variable-ini"),
                 snippet("troubleshooting-variable"), 2),
    "spawn": (snippet("troubleshooting-spawn-ini"), snippet("troubleshooting-spawn"), 2),
    "address": (snippet("troubleshooting-address-ini"), snippet("troubleshooting-address"), 1),
}


def console(case):
    return CASES[case][1]


def ini(case):
    return CASES[case][0]


def run(argv, cwd):
    """The command as a user types it, in ``cwd``: (exit status, its lines, stdout and stderr)."""
    if argv[0] == "wsgiproxy":
        argv = [WSGIPROXY] + argv[1:]
    # A generous hang guard: a configuration that wrongly passes would serve forever.
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


def test_every_example_of_the_page_is_run():
    named = {s.name for s in snippets() if s.page == "troubleshooting.rst" and s.name}
    assert named == {s.name for pair in CASES.values() for s in pair[:2]}


@pytest.fixture
def taken_port():
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield str(sock.getsockname()[1])


def prepare(case, tmp_path, port):
    """``proxy.ini`` of ``case`` in ``tmp_path`` (and its secret file), with ``port`` for 8080."""
    (tmp_path / "proxy.ini").write_text(ini(case).text.replace(PAGE_PORT, port))
    secret = tmp_path / "secret.txt"
    secret.write_text("a secret for the troubleshooting page\n")
    os.chmod(secret, 0o600)


@pytest.mark.parametrize("case", CASES)
def test_each_message_is_what_the_command_prints(case, tmp_path, taken_port):
    prepare(case, tmp_path, taken_port)
    [command] = console(case).commands()
    status, lines = run(shlex.split(command), tmp_path)
    expected = [line.replace(PAGE_PORT, taken_port) for line in console(case).output()]
    assert lines == expected
    assert status == CASES[case][2]


@pytest.mark.parametrize("case", [c for c in CASES if c not in ("check", "address", "spawn")])
def test_check_and_serve_print_the_same_line(case, tmp_path, taken_port):
    """What ``serve`` reports, ``check`` reports too (and the other way round)."""
    prepare(case, tmp_path, taken_port)
    [command] = console(case).commands()
    argv = shlex.split(command)
    argv[1] = {"serve": "check", "check": "serve"}[argv[1]]
    status, lines = run(argv, tmp_path)
    assert (status, lines) == (2, console(case).output())


def test_with_traceback_the_error_is_raised(tmp_path, taken_port):
    prepare("timeout", tmp_path, taken_port)
    status, lines = run(["wsgiproxy", "serve", "--traceback", "proxy.ini"], tmp_path)
    assert status == 1 and "Traceback (most recent call last):" in lines
    problem = console("timeout").output()[0].removeprefix("wsgiproxy: ")
    assert lines[-1] == "wsgiproxy.errors.ConfigError: " + problem
    # The error the component raised is the cause, in the traceback above.
    assert 'check_number("read_timeout", self.read_timeout, positive=True)' in "\n".join(lines)
