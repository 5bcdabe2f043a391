"""The benchmark commands shown in docs/benchmarks.rst: every line is accepted by
bench/run.py, and one short run of the script really measures (nothing is timed here)."""
import importlib.util
import json
import os
import shlex
import subprocess
import sys

from .docsnippets import snippet
from .servers import ROOT

RUN_PY = os.path.join(ROOT, "bench", "run.py")


def load_run_module():
    spec = importlib.util.spec_from_file_location("bench_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(RUN_PY))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.dirname(RUN_PY))
    return module


def documented_commands():
    commands = []
    for command in snippet("benchmarks-commands").commands():
        argv = shlex.split(command, comments=True)
        assert argv[:2] == ["python3", "bench/run.py"], command
        commands.append(argv[2:])
    assert len(commands) == 4
    return commands


def test_every_documented_command_line_is_accepted():
    parser = load_run_module().argument_parser()
    for args in documented_commands():
        parsed = parser.parse_args(args)
        assert parsed.results.endswith(os.path.join("bench", "results"))


def test_a_short_run_measures_our_subjects(tmp_path):
    """--only cpu of the documented command, shortened (1 run, no setup, own results dir)."""
    args = ["--quick", "--only", "cpu", "--subjects", "wsgiproxy-exact,wsgiproxy-app",
            "--runs", "1", "--no-setup", "--results", str(tmp_path)]
    proc = subprocess.run([sys.executable, RUN_PY] + args, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "latest.json") as f:
        results = json.load(f)
    for subject in ("wsgiproxy-exact", "wsgiproxy-app"):
        for workload in ("get1k", "post1k", "get64k"):
            figure = results["cpu"][subject][workload]
            assert len(figure["runs"]) == 1 and figure["median"] > 0
    assert "proxy_exact_request" in (tmp_path / "latest.txt").read_text()
