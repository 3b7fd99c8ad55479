"""Run joblib's and DEAP's own test-suites on scoopexec, with the smallest possible change.

    python tests/run_upstream_suites.py [joblib] [deap] [cpython] [--sitecustomize] [--keep DIR]

Not part of ``python -m pytest`` (it fetches DEAP's sources and takes minutes).

* **joblib**: ``joblib/test/test_parallel.py`` of the installed joblib, with
  two lines changed: ``import scoopexec`` (which registers the backend) and
  ``"scoop"`` added to ``PROCESS_BACKENDS``.  Every test parametrized over the
  process backends (or over all registered backends) then also runs on
  ``"scoop"``.  Some tests start ``python -c ...`` children that never import
  scoopexec, so the name "scoop" is unknown there (joblib has no plug-in
  discovery); ``--sitecustomize`` puts a ``sitecustomize.py`` doing ``import
  scoopexec`` on those children's path to show they pass once it is imported.
* **CPython** (Python 3.12+, whose ``test.test_concurrent_futures`` is a
  package): its generic executor test classes (ExecutorTest, WaitTests,
  AsCompletedTests, ExecutorShutdownTest, the initializer mixins and
  ExecutorDeadlockTest) with ScoopExecutor as the executor type, given a
  'spawn' context as ProcessPoolExecutor's tests are.  Needs the interpreter's
  ``test`` package (some distributions ship it separately).
* **DEAP**: the ``tests/`` of DEAP's source distribution for the installed
  version (fetched with ``pip download --no-binary``), with a ``conftest.py``
  that registers ``scoop_map`` as every ``Toolbox``'s default ``map`` and fails
  the run if scoop_map was never called.

Prints pytest's summary for each suite and, for joblib, the outcome of the
tests whose id names ``scoop``.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PYTEST_INI = """[pytest]
markers =
    thread_unsafe: joblib's marker
    no_cover: joblib's marker
timeout = 600
"""

DEAP_CONFTEST = '''"""The one change to DEAP's tests: every Toolbox maps with scoop_map."""
import pytest
from deap import base
from scoopexec.integrations import deap as integration

calls = []
_init = base.Toolbox.__init__
_scoop_map = integration.scoop_map


def _counting_scoop_map(*args, **kwargs):
    calls.append(1)
    return _scoop_map(*args, **kwargs)


def _init_with_scoop_map(self):
    _init(self)
    self.register("map", _counting_scoop_map)


base.Toolbox.__init__ = _init_with_scoop_map


def pytest_sessionfinish(session, exitstatus):
    print(f"\\nscoop_map was called {len(calls)} times")
    if not calls:
        session.exitstatus = 1
'''


def _env(extra_path: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *extra_path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _write_suite(suite: str, files: dict[str, str]) -> str:
    """Write ``files`` (name -> text) and the shared pytest.ini into ``suite``; return it."""
    os.makedirs(suite, exist_ok=True)
    for name, text in {**files, "pytest.ini": PYTEST_INI}.items():
        with open(os.path.join(suite, name), "w") as fh:
            fh.write(text)
    return suite


def _pytest(where: str, junit: str, env: dict[str, str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", f"--junitxml={junit}", "."]
    print("$", " ".join(cmd), f"(in {where})", flush=True)
    return subprocess.call(cmd, cwd=where, env=env)


def _outcomes(junit: str) -> dict[str, str]:
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            out[name] = "failed"
        elif "skipped" in kinds:
            out[name] = "skipped"
        else:
            out[name] = "passed"
    return out


def run_joblib(work: str, sitecustomize: bool) -> int:
    import joblib

    src = os.path.join(os.path.dirname(joblib.__file__), "test", "test_parallel.py")
    text = open(src).read()
    old = 'PROCESS_BACKENDS = ["multiprocessing", "loky"]'
    if old not in text or "\nimport joblib\n" not in text:
        print(f"joblib {joblib.__version__}: test_parallel.py lacks the lines to patch", file=sys.stderr)
        return 2
    text = text.replace(old, 'PROCESS_BACKENDS = ["multiprocessing", "loky", "scoop"]')
    text = text.replace("\nimport joblib\n", "\nimport joblib\nimport scoopexec  # registers \"scoop\"\n", 1)
    suite = _write_suite(os.path.join(work, "joblib-suite"), {"test_parallel.py": text})
    extra = []
    if sitecustomize:
        site = os.path.join(work, "site")
        os.makedirs(site)
        with open(os.path.join(site, "sitecustomize.py"), "w") as fh:
            fh.write("import scoopexec\n")
        extra.append(site)
    junit = os.path.join(work, "joblib.xml")
    status = _pytest(suite, junit, _env(extra))
    results = _outcomes(junit)
    mine = {k: v for k, v in results.items() if re.search(r"scoop", k)}
    counts = {kind: sum(1 for v in mine.values() if v == kind) for kind in ("passed", "failed", "skipped")}
    print(f"\njoblib {joblib.__version__}: {len(results)} tests; those naming 'scoop': {counts}")
    for name, outcome in sorted(mine.items()):
        if outcome == "failed":
            print("  failed:", name.replace("\n", "\\n")[:150])
    return status


def run_deap(work: str) -> int:
    from importlib.metadata import version as installed_version

    version = installed_version("deap")
    dl = os.path.join(work, "download")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", f"deap=={version}", "--no-binary", ":all:",
         "--no-deps", "-d", dl],
        check=False,
    )
    archives = glob.glob(os.path.join(dl, "deap-*.tar.gz"))
    if r.returncode != 0 or not archives:
        print(f"could not download DEAP {version}'s source distribution", file=sys.stderr)
        return 2
    with tarfile.open(archives[0]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dl, filter="data")
        else:  # pragma: no cover - Pythons without extraction filters
            tar.extractall(dl)
    (tests,) = glob.glob(os.path.join(dl, "deap-*", "tests"))
    suite = os.path.join(work, "deap-suite")
    shutil.copytree(tests, suite)
    _write_suite(suite, {"conftest.py": DEAP_CONFTEST})
    status = _pytest(suite, os.path.join(work, "deap.xml"), _env([]))
    print(f"\nDEAP {version}: pytest exit status {status}")
    return status


CPYTHON_SUITE = """# Upstream's generic concurrent.futures tests, with ScoopExecutor as the executor.
import multiprocessing

from test.test_concurrent_futures.executor import ExecutorTest
from test.test_concurrent_futures.test_as_completed import AsCompletedTests
from test.test_concurrent_futures.test_deadlock import ExecutorDeadlockTest
from test.test_concurrent_futures.test_init import FailingInitializerMixin, InitializerMixin
from test.test_concurrent_futures.test_shutdown import ExecutorShutdownTest
from test.test_concurrent_futures.test_wait import WaitTests
from test.test_concurrent_futures.util import ExecutorMixin, create_executor_tests, setup_module

from scoopexec import ScoopExecutor


class ScoopSpawnMixin(ExecutorMixin):
    executor_type = ScoopExecutor
    ctx = "spawn"

    def get_context(self):
        return multiprocessing.get_context("spawn")


for tests in (ExecutorTest, WaitTests, AsCompletedTests, ExecutorShutdownTest, InitializerMixin,
              FailingInitializerMixin, ExecutorDeadlockTest):
    create_executor_tests(globals(), tests, executor_mixins=(ScoopSpawnMixin,))
"""


def run_cpython(work: str) -> int:
    try:
        import test.test_concurrent_futures.util  # noqa: F401
    except ImportError:
        print(f"Python {sys.version.split()[0]}: no test.test_concurrent_futures package "
              "(Python 3.12+ with its test package is needed)", file=sys.stderr)
        return 2
    files = {"test_cpython_concurrent_futures.py": CPYTHON_SUITE}
    suite = _write_suite(os.path.join(work, "cpython-suite"), files)
    junit = os.path.join(work, "cpython.xml")
    status = _pytest(suite, junit, _env([]))
    results = _outcomes(junit)
    counts = {kind: sum(1 for v in results.values() if v == kind) for kind in ("passed", "failed", "skipped")}
    print(f"\nCPython {sys.version.split()[0]} concurrent.futures tests on ScoopExecutor: {counts}")
    return status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suites", nargs="*", metavar="{joblib,deap,cpython}", help="default: all three")
    ap.add_argument("--sitecustomize", action="store_true", help="import scoopexec in every child too")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    args = ap.parse_args()
    suites = args.suites or ["joblib", "deap", "cpython"]
    unknown = set(suites) - {"joblib", "deap", "cpython"}
    if unknown:
        ap.error(f"unknown suite(s): {sorted(unknown)}")
    work = args.keep or tempfile.mkdtemp(prefix="scoopexec-upstream-")
    os.makedirs(work, exist_ok=True)
    try:
        status = 0
        if "joblib" in suites:
            status |= run_joblib(work, args.sitecustomize)
        if "deap" in suites:
            status |= run_deap(work)
        if "cpython" in suites:
            status |= run_cpython(work)
        return status
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
