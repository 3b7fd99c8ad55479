"""SCOOP 0.7.2's own examples, unchanged, under ``python -m scoopexec``.

The examples come from SCOOP's source distribution on PyPI (``pip download
scoop==0.7.2.0 --no-deps --no-binary :all:``), kept in a cache directory
(``$SCOOPEXEC_TEST_CACHE``, else ``~/.cache/scoopexec-tests``) and checked
against its sha256; ``SCOOPEXEC_SCOOP_SDIST=/path/to/scoop-0.7.2.0.tar.gz``
gives one by hand.  Without network and without either, the tests skip.

Every example that needs no network runs with two workers and must exit as
SCOOP meant it to: status 0, no traceback -- except ``except_example.py``,
whose point is an exception (scoopexec's exit status is the script's, 1,
where SCOOP's launcher returned 0).  Left out, with the reason: the two
``url_fetch`` examples (network), ``image_resize.py`` (Python 2: PIL 1's
``import Image`` and ``namedtuple(verbose=)``) and ``tree/dtm-tree.py``
(``deap.dtm``, gone since DEAP 1.0).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SDIST = "scoop-0.7.2.0.tar.gz"
SHA256 = "7658faf751627f5507b6f636794721d89db1771234a36e1378ee6796dd7ee761"

# (example, its arguments); the tree programs read a small tree the fixture makes.
EXAMPLES = [
    ("callback.py", []),
    ("conditional_execution.py", []),
    ("conditional_import.py", []),
    ("deap_ga_evosn.py", []),
    ("deap_ga_onemax.py", []),
    ("except_example.py", []),
    ("full_tree.py", []),
    ("interactive_shell.py", []),
    ("lambda.py", []),
    ("map_as_completed.py", []),
    ("map_doc.py", []),
    ("map_reduce.py", []),
    ("map_scan.py", []),
    ("object.py", []),
    ("pi_calc.py", []),
    ("pi_calc_doc.py", []),
    ("recurse.py", []),
    ("rssDoc.py", []),
    ("shared_example.py", []),
    ("shared_example_doc.py", []),
    ("sorting.py", []),
    ("sum_multiples.py", []),
    ("tree_traversal.py", []),
    ("tree/TreeGen.py", ["--height", "3", "--scale", "0.002", "-f", "generated.txt"]),
    ("tree/scoop_tree.py", ["small.txt"]),
    ("tree/serial-tree.py", ["small.txt"]),
]
LEFT_OUT = {
    "url_fetch.py": "needs the network",
    "url_fetch_doc.py": "needs the network",
    "image_resize.py": "Python 2 only (PIL 1's `import Image`, namedtuple(verbose=))",
    "tree/dtm-tree.py": "needs deap.dtm, removed from DEAP in 1.0",
}
def _cache_dir() -> str:
    base = os.environ.get("SCOOPEXEC_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "scoopexec-tests"
    )
    os.makedirs(base, exist_ok=True)
    return base


def _sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _sdist() -> str:
    given = os.environ.get("SCOOPEXEC_SCOOP_SDIST")
    if given:
        return given
    cache = _cache_dir()
    path = os.path.join(cache, SDIST)
    if not os.path.exists(path):
        r = subprocess.run(
            [sys.executable, "-m", "pip", "download", "scoop==0.7.2.0", "--no-deps", "--no-binary", ":all:",
             "-d", cache, "--quiet"],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        if r.returncode != 0 or not os.path.exists(path):
            pytest.skip(
                f"needs SCOOP's sdist ({SDIST}): pip download failed (no network?); set "
                f"SCOOPEXEC_SCOOP_SDIST to a copy. pip said: {r.stderr.decode()[-300:]}"
            )
    return path


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    path = _sdist()
    digest = _sha256(path)
    assert digest == SHA256, f"{path} is not SCOOP 0.7.2.0's sdist (sha256 {digest})"
    out = tmp_path_factory.mktemp("scoop")
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("scoop-0.7.2.0/examples/")]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(out, members=members, filter="data")
        else:  # pragma: no cover - Pythons before the extraction filters (3.10.11 and older)
            tar.extractall(out, members=members)
    where = out / "scoop-0.7.2.0" / "examples"
    r = subprocess.run(  # a small tree for the tree programs (the default one runs for minutes)
        [sys.executable, "TreeGen.py", "--height", "3", "-m", "2", "-M", "3", "--scale", "0.002", "-f", "small.txt"],
        cwd=where / "tree", capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    return where


def test_every_example_is_run_or_left_out_for_a_reason(examples):
    found = {str(p.relative_to(examples)) for p in examples.rglob("*.py")}
    modules = {"dependency/__init__.py", "dependency/sortingnetwork.py", "tree/Tree.py"}  # imported
    assert found == {name for name, _ in EXAMPLES} | set(LEFT_OUT) | modules


@pytest.mark.parametrize("name, args", EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_scoop_example_runs_unchanged(examples, name, args):
    script = examples / name
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(
        [sys.executable, "-m", "scoopexec", "-n", "2", script.name, *args],
        cwd=script.parent, stdin=subprocess.DEVNULL, capture_output=True, timeout=170, env=env, check=False,
    )  # fmt: skip
    err = r.stderr.decode()
    if name == "except_example.py":
        assert r.returncode == 1 and "Exception: This exception is normal" in err, err
        return
    assert r.returncode == 0, f"{name} exited with {r.returncode}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    if name == "tree_traversal.py":  # SCOOP ignores map's parallelLevel=2; so do we, and say so
        assert "ignores the keyword argument parallelLevel" in err
    if name == "shared_example.py":  # scoop.worker, on workers: b"host:pid"
        assert "Hello World from b'" in r.stdout.decode()
    if name == "tree/scoop_tree.py":  # scoop.SIZE
        assert "cores : 2" in r.stdout.decode()

