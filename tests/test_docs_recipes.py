"""docs/quickstart.rst, run as a reader would: the two commands and the three recipes.

Each recipe's ``.ini`` is taken from the page (its literalinclude, which must
be the file in docs/examples/), written to a temporary copy of
docs/examples/ with its fixed ports (8080, 8081) changed to free ones, and
served with ``wsgiproxy serve`` in a subprocess, as the page says.  Real
HTTP requests then check what the page claims.  ``./dev demo`` is run for
real: it needs port 8080, and the test fails, saying so, when another process
has that port (it never talks to a stranger there).  ``./dev test`` is the
command running this suite, so its snippet is checked against .ci/run and
README.txt instead.
"""

import json
import logging
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess

from wsgiproxy import protocol

from .client import get_json, json_error, parse_answer, request, send_raw
from .docsnippets import snippet
from .servers import (
    EXAMPLES,
    ROOT,
    WSGIPROXY,
    Served,
    WaitressServer,
    capture_signed_request,
    children_of,
    echo_app,
    free_port,
    group_gone,
    listeners,
    parent_of,
    pid_gone,
    wait_until,
    watchdog_of,
)

#: The fixed port of ./dev demo (development.ini): checked, never assumed free.
DEMO_PORT = 8080


# -- helpers ------------------------------------------------------------------

def recipe_text(s, file_name):
    """The text the page shows in literalinclude ``s``: it must be docs/examples/``file_name``."""
    assert s.directive == "literalinclude", s
    with open(os.path.join(EXAMPLES, file_name), encoding="utf-8") as f:
        assert s.text == f.read(), "%s shows something else than %s" % (s.where, file_name)
    return s.text


def with_ports(text, ports):
    """``text`` with ``127.0.0.1:OLD`` changed to ``127.0.0.1:NEW`` for each ``{OLD: NEW}``."""
    for old, new in ports.items():
        pattern = re.compile(r"(?<=127\.0\.0\.1:)%d\b" % old)
        text, count = pattern.subn(str(new), text)
        assert count, "the recipe no longer names 127.0.0.1:%d" % old
    return text


def examples_copy(tmp_path, texts):
    """A copy of docs/examples/ (secrets included) with ``{file name: text}`` written into it."""
    folder = tmp_path / "examples"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def serve(tmp_path, args, port, env=None):
    """``wsgiproxy serve ARGS...`` on ``port`` (servers.Served), its output in tmp_path."""
    log = tmp_path / ("serve-%d.log" % port)
    return Served([WSGIPROXY, "serve", *args], port, log, env=dict(os.environ, **(env or {})))


def console_commands(s):
    """The command lines of console snippet ``s``."""
    assert s.language == "console", s
    return s.commands()


# -- recipe 1: one path to another server -----------------------------------

def api_backend(environ, start_response):
    """The "other server" of recipe 1: redirects /v1/login, else shows what it received."""
    if environ["PATH_INFO"] == "/v1/login":
        start_response("302 Found", [("Location", "http://%s/v1/welcome" % environ["HTTP_HOST"]),
                                     ("Content-Length", "0")])
        return [b""]
    return echo_app(environ, start_response)


def test_recipe_api_forwards_one_path(tmp_path):
    front = free_port()
    with WaitressServer(api_backend) as backend:
        text = with_ports(recipe_text(snippet("quickstart-recipe-api"), "recipe-api.ini"),
                          {8080: front, 8081: backend.port})
        folder = examples_copy(tmp_path, {"recipe-api.ini": text})
        with serve(tmp_path, [folder / "recipe-api.ini"], front) as served:
            seen = get_json(front, "/api/items?page=2", {"Host": "www.example.com"})
            login = request(front, "/api/login", headers={"Host": "www.example.com"})
            site = get_json(front, "/about", {"Host": "www.example.com"})
    # /api/items went to href's path on the other server, with the original request's identity.
    assert seen["PATH_INFO"] == "/v1/items" and seen["QUERY_STRING"] == "page=2"
    assert seen["HTTP_HOST"] == "127.0.0.1:%d" % backend.port
    assert seen["HTTP_X_FORWARDED_SERVER"] == "www.example.com"
    assert seen["HTTP_X_FORWARDED_SCRIPT_NAME"] == "/api"
    assert seen["HTTP_X_FORWARDED_SCHEME"] == "http"
    assert seen["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert "HTTP_X_WSGIPROXY_SIGNATURE" not in seen  # nothing is signed in this recipe
    # Its redirect points back through /api on the front.
    assert login.status == 302
    assert login.headers["Location"] == "http://www.example.com/api/welcome"
    # Every other path is your app, in the front process itself.
    assert site["PATH_INFO"] == "/about" and site["SCRIPT_NAME"] == ""
    assert site["wsgiproxy.sample.pid"] == served.pid


# -- recipe 2: Flask behind the proxy, signed ---------------------------------

def flask_backend_texts():
    """Recipe 2's backend files as the page shows them (recipe 3 starts the same backend)."""
    return {
        "recipe-flask-backend.ini": recipe_text(snippet("quickstart-recipe-flask-backend"),
                                                "recipe-flask-backend.ini"),
        "recipe_flask_app.py": recipe_text(snippet("quickstart-recipe-flask-app"),
                                           "recipe_flask_app.py"),
    }


def test_recipe_flask_signed_backend(tmp_path):
    front, back = free_port(), free_port()
    texts = flask_backend_texts()
    front_ini = recipe_text(snippet("quickstart-recipe-flask-front"), "recipe-flask-front.ini")
    texts["recipe-flask-front.ini"] = with_ports(front_ini, {8080: front, 8081: back})
    folder = examples_copy(tmp_path, texts)
    secret_file = str(folder / "recipe-secret.txt")
    documented = json.loads(snippet("quickstart-recipe-flask-output").text)
    refused = json.loads(snippet("quickstart-recipe-flask-refused").text)

    # As the page says: PYTHONPATH=docs/examples wsgiproxy serve ...backend.ini http_port=8081
    with serve(tmp_path, [folder / "recipe-flask-backend.ini", "http_port=%d" % back], back,
               env={"PYTHONPATH": str(folder)}) as backend:
        with serve(tmp_path, [folder / "recipe-flask-front.ini"], front):
            # The page's request, as a browser at 127.0.0.1:8080 sends it.
            answer = get_json(front, "/shop/whoami?user=alice", {"Host": "127.0.0.1:8080"})
            other = get_json(front, "/shop/whoami?user=bob", {"Host": "www.example.com"})
        assert answer.pop("pid") == backend.pid
        assert answer == documented
        assert other["link"] == "http://www.example.com/shop/whoami"
        assert other["user"] == "bob" and other["script_root"] == "/shop"

        # Straight to the backend, unsigned, claiming to be admin: refused as documented.
        forged = protocol.encode_key_headers({"REMOTE_USER": "admin"}, ["REMOTE_USER"])
        answer = request(back, "/whoami", headers=forged, accept="application/json")
        assert answer.status == 403 and json_error(answer) == refused["error"]
        assert answer.json() == refused

        # A signed request with the user changed on the way: the signature no longer matches.
        signed = capture_signed_request(secret_file, "/whoami", user="alice")
        name, value = protocol.encode_key_headers({"REMOTE_USER": "alice"}, ["REMOTE_USER"])[0]
        _, mallory = protocol.encode_key_headers({"REMOTE_USER": "mallory"}, ["REMOTE_USER"])[0]
        line = ("%s: %s" % (name, value)).encode()
        assert signed.count(line) == 1
        tampered = signed.replace(line, ("%s: %s" % (name, mallory)).encode())
        assert "bad signature" in json_error(send_raw(back, tampered), 403)["message"]
        # The untouched request is served once; sent again, it is a replay.
        answer = parse_answer(send_raw(back, signed))
        assert answer.status == 200
        seen = answer.json()
        assert seen["user"] == "alice" and seen["host"] == "www.example.com"
        assert "replayed" in json_error(send_raw(back, signed), 403)["message"]


# -- recipe 3: backends started on demand -------------------------------------

def test_recipe_spawn_starts_backend_on_first_request(tmp_path):
    front = free_port()
    texts = flask_backend_texts()
    spawn_ini = recipe_text(snippet("quickstart-recipe-spawn"), "recipe-spawn.ini")
    texts["recipe-spawn.ini"] = with_ports(spawn_ini, {8080: front})
    folder = examples_copy(tmp_path, texts)
    with serve(tmp_path, [folder / "recipe-spawn.ini"], front) as served:
        assert children_of(served.pid) == []  # nothing runs before the first request
        first = get_json(front, "/whoami?user=alice", {"Host": "shop.example"})
        child = first["pid"]
        # The answer came from the child it started (and a watchdog ties the child to it).
        assert children_of(served.pid) == sorted([child, watchdog_of(served.pid)])
        assert first["user"] == "alice" and first["host"] == "shop.example"
        assert first["link"] == "http://shop.example/whoami"
        again = get_json(front, "/whoami?user=bob")
        assert again["pid"] == child and again["user"] == "bob"
        assert children_of(served.pid) == sorted([child, watchdog_of(served.pid)])
        # The child listens on loopback, but only the proxy's signed requests get in.
        with open("/proc/%d/cmdline" % child, "rb") as f:
            argv = f.read().decode().split("\0")
        child_port = int(next(a for a in argv if a.startswith("http_port=")).split("=")[1])
        assert request(child_port, "/whoami").status == 403
    # Stopping the server (SIGTERM) stopped the child and its whole process group.
    wait_until(lambda: pid_gone(child) and group_gone(child), what="the spawned backend to stop")
    assert not listeners(child_port)


# -- "From Python" -----------------------------------------------------------

def test_python_snippet_calls_a_backend(tmp_path, capsys):
    with WaitressServer(api_backend) as backend:
        namespace = snippet("quickstart-python").run(replacements={
            "127.0.0.1:8081/": "127.0.0.1:%d/" % backend.port})
        namespace["api"].close()
    response = namespace["response"]
    assert response.status_int == 200
    assert response.json["PATH_INFO"] == "/v1/items"
    assert response.json["QUERY_STRING"] == "page=2"
    assert namespace["api"].transport.read_timeout == 30.0
    assert capsys.readouterr().out.startswith("200 OK {")


# -- the two commands ------------------------------------------------------------

def fake_venv(tmp_path):
    """A venv for ``./dev demo`` that is already set up: our wsgiproxy, and a stamp newer
    than setup.py.  Its python refuses to run, so the demo cannot install anything."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\necho \"dev demo ran $0 $*: it must not install anything\" >&2\n"
                      "exit 97\n")
    python.chmod(0o755)
    os.symlink(WSGIPROXY, venv / "bin" / "wsgiproxy")
    stamp = venv / ".installed"
    stamp.touch()
    newer = os.stat(os.path.join(ROOT, "setup.py")).st_mtime + 1
    os.utime(stamp, (max(newer, stamp.stat().st_mtime),) * 2)
    return venv


def test_dev_demo_serves_the_sample_page(tmp_path):
    """``./dev demo`` for real, with WSGIPROXY_VENV set to a venv it takes as set up.

    It needs port 8080: the test fails, saying so, when another process listens there,
    and talks to the port only once the demo it started is the listener.
    """
    commands = console_commands(snippet("quickstart-demo"))
    assert commands == ["./dev demo"]
    env = dict(os.environ, WSGIPROXY_VENV=str(fake_venv(tmp_path)))
    with Served(shlex.split(commands[0]), DEMO_PORT, tmp_path / "demo.log", env=env, cwd=ROOT,
                fixed=True) as demo:
        page = request(DEMO_PORT, "/some/path?user=alice",
                       headers={"Host": "127.0.0.1:%d" % DEMO_PORT})
        child = get_json(DEMO_PORT, "/?format=json")["wsgiproxy.sample.pid"]
        assert parent_of(child) == demo.pid  # the backend of the demo this test started
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    text = page.body.decode()
    assert "<title>WSGIProxy sample app</title>" in text
    # What arrived beside what the app sees; the keys the middleware rebuilt highlighted.
    assert ('<tr class="rebuilt"><th>REMOTE_USER</th><td class="absent">(absent)</td>'
            "<td>alice</td></tr>") in text
    assert "<tr><th>PATH_INFO</th><td>/some/path</td><td>/some/path</td></tr>" in text
    assert re.search(r'<tr class="rebuilt"><th>HTTP_HOST</th><td>127\.0\.0\.1[:0-9]*</td>'
                     r"<td>127\.0\.0\.1:%d</td></tr>" % DEMO_PORT, text)
    assert "<tr><th>HTTP_X_FORWARDED_SERVER</th>" in text
    # The signed header that carried REMOTE_USER arrived, and the middleware removed it.
    assert ('<tr class="rebuilt"><th>HTTP_X_WSGIPROXY_STR_0</th><td>REMOTE_USER alice</td>'
            '<td class="absent">(absent)</td></tr>') in text
    assert re.search(r"Signature: key id <code>([0-9a-f]{16})</code>, format <code>v1</code>: "
                     r"<b>valid: verified with key \1 \(v1 signature\)</b>", text)
    for part in ("proxy", "middleware", "app"):
        assert "<li><b>%s</b>: " % part in text
    assert demo.process.proc.returncode == -signal.SIGTERM
    wait_until(lambda: pid_gone(child), what="the demo's backend to stop with it")


def test_making_your_own_secret_file_is_private_from_the_start(tmp_path, caplog):
    """The quickstart's command, under the usual umask 022: the file is 0600, loads silently."""
    (command,) = console_commands(snippet("quickstart-make-secret"))
    done = subprocess.run(["sh", "-ec", "umask 022\n" + command], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "secret.txt"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with caplog.at_level(logging.WARNING, logger="wsgiproxy.protocol"):
        keys = protocol.SecretKeys(str(path))
    assert len(keys.signing_key()[1]) == 43 and not caplog.records


def test_dev_test_is_what_ci_and_readme_run():
    commands = console_commands(snippet("quickstart-test"))
    assert commands == ["./dev test"]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-1] == "exec " + commands[0]
    with open(os.path.join(ROOT, "dev")) as f:
        dev = f.read()
    branch = dev[dev.index("\ntest)"):]
    branch = branch[:branch.index(";;")]
    assert "sphinx-build\" -W" in branch and "-m pytest \"$@\"" in branch
    # README.txt lists the same two commands, in the same order.
    with open(os.path.join(ROOT, "README.txt")) as f:
        readme = f.read()
    listed = re.findall(r"^ {4}(\./dev \w+)\s", readme, re.MULTILINE)
    assert listed == console_commands(snippet("quickstart-demo")) + commands
