"""The options a command line that runs a pool offers: --trace FILE, --progress, -v, -q."""

from __future__ import annotations

import json

from tests.conftest import run_script

PROGRAM = """
import argparse
from scoopexec import ScoopExecutor
from scoopexec.cli import add_observe_options, apply_observe_options

def square(x):
    return x * x

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    add_observe_options(ap)
    args = ap.parse_args()
    try:
        kwargs = apply_observe_options(args)
    except ValueError as exc:
        ap.error(str(exc))
    with ScoopExecutor(2, **kwargs) as ex:
        print(sum(ex.map(square, range(40))))
"""


def test_trace_progress_and_verbosity_from_the_command_line(tmp_path):
    trace = tmp_path / "run.json"
    r = run_script(PROGRAM, "--trace", str(trace), "--progress", "-v")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == str(sum(x * x for x in range(40)))
    err = r.stderr.decode()
    assert "40/40" in err and "INFO scoopexec: pool" in err and f"recording a timeline to {trace}" in err
    assert json.loads(trace.read_text())["scoopexec"]["tasks"] == 40

    quiet = run_script(PROGRAM, "-q")
    assert quiet.returncode == 0 and quiet.stderr.decode() == ""

    bad = run_script(PROGRAM, "--trace", str(tmp_path / "missing" / "run.json"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr.decode()
