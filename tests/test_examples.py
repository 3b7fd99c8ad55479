"""Every program in examples/ runs end to end, small, and finds the serial run's answer.

Each example runs its computation on a scoopexec pool, then again serially,
prints ``same answer as the serial run: True|False`` and exits 1 if they
differ.  The optional libraries (scikit-learn, pymoo, nevergrad: the
``examples`` extra, also in ``test``) are checked for first: a missing one
skips its example and says which package to install.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXAMPLES = [
    ("deap_nsga2.py", "deap", ["--generations", "4", "--population", "24", "--cost", "0"]),
    ("pymoo_pool.py", "pymoo", ["--generations", "4", "--population", "20", "--cost", "0"]),
    ("nevergrad_executor.py", "nevergrad", ["--budget", "40", "--dim", "3", "--cost", "0"]),
    ("sklearn_gridsearch.py", "sklearn", ["--samples", "240", "--folds", "3"]),
    ("asyncio_crawl.py", None, ["--sites", "3", "--pages", "30", "--cost", "0.001", "--concurrency", "4"]),
]

PACKAGES = {"sklearn": "scikit-learn", "pymoo": "pymoo", "nevergrad": "nevergrad", "deap": "deap"}


@pytest.mark.slow
@pytest.mark.parametrize(("script", "needs", "args"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_gives_the_serial_answer(script, needs, args, tmp_path):
    if needs is not None and importlib.util.find_spec(needs) is None:
        pytest.skip(f"{script} needs {PACKAGES[needs]}: pip install 'scoopexec[examples]'")
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", script), "--workers", "2", *args],
        capture_output=True,
        timeout=300,
        cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=ROOT),
        check=False,
    )
    out = r.stdout.decode()
    assert r.returncode == 0, f"{script} exited {r.returncode}\n{out}\n{r.stderr.decode()}"
    assert "same answer as the serial run: True" in out.splitlines(), out

