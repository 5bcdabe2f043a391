"""docs/install.rst as a user would do it: a wheel built from this checkout, installed into a
fresh virtual environment, serving development.ini with nothing imported from the checkout.

The package index's "WSGIProxy" is the 2008 release, so this is how the project gets
into someone else's environment.  The page's commands are run (``python -m build``, with
the ``setuptools`` of pyproject.toml's ``build-system``) in a copy of the files that make
the package, so nothing is written into the checkout; the venvs get the dependencies
from the package index through pip.
"""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

import wsgiproxy

from .client import get_json, request
from .docsnippets import snippet
from .servers import (
    EXAMPLES,
    ROOT,
    Served,
    _command_line,
    children_of,
    free_port,
    pid_gone,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: What building the package needs of the checkout.
PACKAGE_FILES = ["setup.py", "setup.cfg", "pyproject.toml", "README.txt", "wsgiproxy"]


def run(args, **kwargs):
    """Run a command to its end; its output is shown when it fails."""
    done = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=480, **kwargs)
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, "%s failed (%d):\n%s" % (args, done.returncode, output[-4000:])
    return output


def source_copy(tmp_path):
    """A copy of what makes the package (the checkout stays untouched by the build)."""
    source = tmp_path / "wsgiproxy-checkout"
    source.mkdir()
    for name in PACKAGE_FILES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    return source


def fresh_venv(path):
    """A new virtual environment, and the environment to run its programs with: its bin
    first on PATH (spawn runs ``wsgiproxy`` from PATH) and no PYTHONPATH, so neither this
    checkout nor the test's own environment leaks in."""
    run([sys.executable, "-m", "venv", path])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = str(path / "bin") + os.pathsep + env.get("PATH", "")
    return path / "bin", env


def check_installed(s, bin_dir, env, cwd):
    """Run docs/install.rst's check (``s``) with the venv's python: where wsgiproxy is."""
    (command,) = s.commands()
    args = shlex.split(command)
    assert args[0] == "python", args
    version, where = run([bin_dir / "python"] + args[1:], env=env, cwd=cwd).split()
    assert version == wsgiproxy.__version__
    venv = os.path.dirname(str(bin_dir))
    assert where.startswith(venv + os.sep) and "site-packages" in where, where


def test_a_built_wheel_in_a_fresh_venv_serves_development_ini(tmp_path):
    # docs/install.rst's commands, run in a copy of the checkout, pip being the venv's.
    commands = snippet("install-wheel").commands()
    assert commands == ["cd /path/to/wsgiproxy", "python -m build --wheel",
                        "pip install dist/wsgiproxy-*.whl"]
    source = source_copy(tmp_path)
    output = run([sys.executable, "-m", "build", "--wheel"], cwd=source)
    # setuptools prints its deprecation warnings (the license, ...) in the build's output.
    warnings = [line for line in output.splitlines() if "deprecat" in line.lower()]
    assert warnings == [], "\n".join(warnings)
    (wheel,) = (source / "dist").glob("wsgiproxy-*.whl")
    with open(os.path.join(ROOT, "docs", "install.rst")) as f:
        assert "dist/%s[redis]" % wheel.name in f.read()  # the page names this very file
    bin_dir, env = fresh_venv(tmp_path / "venv")
    run([bin_dir / "pip", "install", "-q", wheel.relative_to(source)], env=env, cwd=source)

    site = tmp_path / "site"  # the user's project: the demo's files, the port changed
    (site / "docs" / "examples").mkdir(parents=True)
    for name in ("demo-backend.ini", "demo-secret.txt"):
        shutil.copy(os.path.join(EXAMPLES, name), site / "docs" / "examples" / name)
    (site / "docs" / "examples" / "demo-secret.txt").chmod(0o600)
    port = free_port()
    with open(os.path.join(ROOT, "development.ini")) as f:
        ini = f.read()
    assert "listen = 127.0.0.1:8080\n" in ini
    (site / "development.ini").write_text(ini.replace("127.0.0.1:8080", "127.0.0.1:%d" % port))

    check_installed(snippet("install-check"), bin_dir, env, site)

    with Served([bin_dir / "wsgiproxy", "serve", "development.ini"], port, tmp_path / "serve.log",
                env=env, cwd=site) as served:
        page = request(port, "/some/path?user=alice", timeout=60)
        seen = get_json(port, "/some/path?user=alice&format=json")
        assert seen["wsgiproxy.sample.pid"] in children_of(served.pid)
        child = seen["wsgiproxy.sample.pid"]
        backend = _command_line(child)
    assert page.status == 200, (page, served.output())
    text = page.body.decode()
    assert "<title>WSGIProxy sample app</title>" in text and "<b>valid: verified with key" in text
    assert seen["REMOTE_USER"] == "alice" and seen["HTTP_HOST"] == "127.0.0.1:%d" % port
    assert seen["wsgiproxy.sample.signature"]["verdict"].startswith("valid: ")
    # The backend that spawn started is the venv's wsgiproxy too.
    assert str(bin_dir / "wsgiproxy") in backend, backend
    wait_until(lambda: pid_gone(child), what="the demo's backend to stop with the demo")


def test_installing_from_a_checkout_with_an_extra(tmp_path):
    """docs/install.rst's ``pip install '/path/to/wsgiproxy[redis]'``, into a fresh venv."""
    (command,) = snippet("install-checkout").commands()
    args = shlex.split(command)
    assert args == ["pip", "install", "/path/to/wsgiproxy[redis]"]
    source = source_copy(tmp_path)
    bin_dir, env = fresh_venv(tmp_path / "venv")
    run([bin_dir / "pip", "install", "-q", args[2].replace("/path/to/wsgiproxy", str(source))],
        env=env, cwd=tmp_path)
    check_installed(snippet("install-check"), bin_dir, env, tmp_path)
    run([bin_dir / "python", "-c", "import redis, wsgiproxy.redisstore"], env=env, cwd=tmp_path)
