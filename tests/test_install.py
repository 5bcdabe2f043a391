"""docs/install.rst as a user would do it: a wheel built from this checkout, installed into a
fresh virtual environment, serving development.ini with nothing imported from the checkout.

The package index's "WSGIProxy" is the 2008 release, so this is how the project gets
into someone else's environment.  The wheel is built (``pip wheel --no-deps``, with
build isolation: the ``setuptools`` of pyproject.toml's ``build-system``) from a copy of
the files that make the package, so nothing is written into the checkout; the venv gets
the dependencies from the package index through pip.
"""

import os
import shutil
import subprocess
import sys

import pytest

from .client import get_json, request
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

#: What ``pip wheel`` needs of the checkout.
PACKAGE_FILES = ["setup.py", "setup.cfg", "pyproject.toml", "README.txt", "wsgiproxy"]


def run(args, **kwargs):
    """Run a command to its end; its output is shown when it fails."""
    done = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=480, **kwargs)
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, "%s failed (%d):\n%s" % (args, done.returncode, output[-4000:])
    return output


def build_wheel(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in PACKAGE_FILES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    # -v shows the build backend's output, where setuptools prints its deprecation warnings.
    output = run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                  "-w", tmp_path / "dist", source])
    assert "Successfully built wsgiproxy" in output.replace("WSGIProxy", "wsgiproxy"), output
    warnings = [line for line in output.splitlines() if "deprecat" in line.lower()]
    assert warnings == [], "\n".join(warnings)
    wheels = list((tmp_path / "dist").glob("wsgiproxy-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_a_built_wheel_in_a_fresh_venv_serves_development_ini(tmp_path):
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    bin_dir = venv / "bin"
    # The venv's own programs first (spawn runs ``wsgiproxy`` from PATH), and no PYTHONPATH:
    # neither this checkout nor the test's environment may leak in.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = str(bin_dir) + os.pathsep + env.get("PATH", "")
    run([bin_dir / "python", "-m", "pip", "install", "-q", wheel], env=env, cwd=tmp_path)

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

    where = run([bin_dir / "python", "-c", "import wsgiproxy; print(wsgiproxy.__file__)"],
                env=env, cwd=site).strip()
    assert where.startswith(str(venv) + os.sep) and "site-packages" in where, where

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
