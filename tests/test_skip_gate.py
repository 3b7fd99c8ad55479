"""The CI gate on skipped tests (tests/skip_gate.py): a skip whose reason is not allowed fails the run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import skip_gate
from tests.conftest import ROOT

CONFTEST = """
from tests import skip_gate
skip_gate.ALLOW_LIST = {allow!r}

def pytest_configure(config):
    skip_gate.configure(config)
"""

TESTS = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip({reason!r})
"""


def _run(tmp_path, reason: str, allow: str, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "allow.txt").write_text(allow)
    (tmp_path / "conftest.py").write_text(CONFTEST.format(allow=str(tmp_path / "allow.txt")))
    (tmp_path / "test_x.py").write_text(TESTS.format(reason=reason))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "SCOOPEXEC_STRICT_SKIPS")}
    env["PYTHONPATH"] = ROOT
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:timeout", str(tmp_path)],
        capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=120, check=False,
    )


def test_a_skip_not_on_the_list_fails_a_ci_run(tmp_path):
    r = _run(tmp_path, "needs a GPU", "^links are -- why\n", ci=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "skips NOT allowed in CI" in r.stdout and "needs a GPU" in r.stdout


def test_a_skip_on_the_list_passes_and_is_listed_with_why(tmp_path):
    r = _run(tmp_path, "needs a GPU", "GPU -- none on CI machines\n", ci=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[allowed: none on CI machines]" in r.stdout


def test_outside_ci_a_skip_is_only_a_skip(tmp_path):
    r = _run(tmp_path, "needs a GPU", "", ci=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 skipped" in r.stdout


def test_every_entry_must_say_why(tmp_path):
    path = tmp_path / "allow.txt"
    path.write_text("# comment\n\nneeds root\n")
    with pytest.raises(ValueError, match="REGEX -- why"):
        skip_gate.load_allow_list(str(path))


def test_the_committed_list_loads_and_is_short():
    entries = skip_gate.load_allow_list()
    assert 0 < len(entries) <= 10
    assert all(e.why for e in entries)
