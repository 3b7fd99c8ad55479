"""Nested joblib, nested executors, DEAP inside joblib and threads, on one pool, for a while.

tests/stress_program.py does the work, in a process of its own so that a hang is caught (it dumps
every thread's stack and exits) and cannot take the test run down with it.  The run lasts about
SCOOPEXEC_STRESS_SECONDS (default 30); set it to 300 or more for a run of minutes:

    SCOOPEXEC_STRESS_SECONDS=600 python -m pytest tests/test_stress.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SECONDS = float(os.environ.get("SCOOPEXEC_STRESS_SECONDS", "30"))
LIMIT = 90.0  # stress_program.ROUND_LIMIT: one round longer than this is a hang


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 4 * LIMIT + 60)
def test_nested_work_of_every_kind_neither_hangs_nor_goes_wrong():
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "stress_program.py"), str(SECONDS)],
        capture_output=True,
        timeout=SECONDS + 3 * LIMIT + 30,  # the program's own watchdog fires before this
        cwd=ROOT,
        env=env,
        check=False,
    )
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err[-6000:]
    summary = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert all(n >= 1 for n in summary["rounds"].values()), summary
    assert summary["seconds"] >= SECONDS
