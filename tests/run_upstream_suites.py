"""Run joblib's, DEAP's and CPython's own test-suites on scoopexec, with the smallest possible change.

    python tests/run_upstream_suites.py [joblib] [deap] [cpython] [--check] [--all-joblib]
                                        [--keep DIR]

Not part of ``python -m pytest`` (it fetches DEAP's sources and takes minutes);
``.ci/run`` runs it with ``--check``.

* **joblib**: ``joblib/test/test_parallel.py`` of the installed joblib, with
  two lines changed: ``import scoopexec`` (which registers the backend) and
  ``"scoop"`` added to ``PROCESS_BACKENDS``.  Every test parametrized over the
  process backends (or over all registered backends) then also runs on
  ``"scoop"``; only those (``-k scoop``) run unless ``--all-joblib`` is given.
  Some tests start ``python -c ...`` children that never import scoopexec: the
  name "scoop" resolves there through the installed ``scoopexec_joblib.pth``
  (setup.py), so scoopexec must be installed (``pip install -e .`` will do).
* **CPython**: the generic executor test classes of the running interpreter's
  own ``test.test_concurrent_futures`` (a module in 3.11, a package from 3.12:
  ExecutorTest, WaitTests, AsCompletedTests, ExecutorShutdownTest, the
  initializer mixins and ExecutorDeadlockTest) with ScoopExecutor as the
  executor type, each class twice, given a 'spawn' context and a 'fork' one, as
  ProcessPoolExecutor's tests are (ScoopExecutorTest, ScoopForkExecutorTest, ...); and its ``test._test_multiprocessing._TestPool`` (the tests of
  ``multiprocessing.Pool`` that build their pools with ``self.Pool``) with
  ``scoopexec.Pool`` as the pool.
  Needs the interpreter's ``test`` package (Debian: libpython3.X-testsuite).
* **DEAP**: the ``tests/`` of DEAP's source distribution for the installed
  version (fetched with ``pip download --no-binary``), with a ``conftest.py``
  that registers ``scoop_map`` as every ``Toolbox``'s default ``map`` and fails
  the run if scoop_map was never called.

``--check`` compares each suite's outcome with tests/upstream_expected.txt: a
section ``[suite version]`` per suite, the version it was measured with (joblib
and DEAP as pinned in .ci/constraints.txt, CPython's major.minor, one section
for each Python that CI runs CPython's tests on), and in it
each test that fails on scoopexec with why.  A test that fails and is not
listed, a listed one that does not fail (the list must stay true), or another
installed version is a problem, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPECTED = os.path.join(ROOT, "tests", "upstream_expected.txt")

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


def _pytest(where: str, junit: str, env: dict[str, str], *extra: str) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", f"--junitxml={junit}",
           *extra, "."]  # fmt: skip
    print("$", " ".join(cmd), f"(in {where})", flush=True)
    return subprocess.call(cmd, cwd=where, env=env)


def test_id(classname: str, name: str) -> str:
    """A test's id as the expected-failure list writes it: ``module::Class::test[params]``, one line."""
    return f"{classname.replace('.', '::')}::{name}".replace("\n", "\\n")


def _outcomes(junit: str) -> dict[str, str]:
    """test id -> "passed", "failed" or "skipped" (an error counts as failed)."""
    out = {}
    if not os.path.exists(junit):
        return out
    for case in ET.parse(junit).getroot().iter("testcase"):
        key = test_id(case.get("classname", ""), case.get("name", ""))
        kinds = {child.tag for child in case}
        if "failure" in kinds or "error" in kinds:
            out[key] = "failed"
        elif "skipped" in kinds:
            out[key] = "skipped"
        else:
            out[key] = "passed"
    return out


class Run:
    """One suite's run: which version, pytest's exit status, the outcome of each test that counts."""

    def __init__(self, suite: str, version: str, status: int, outcomes: dict[str, str]) -> None:
        self.suite, self.version, self.status, self.outcomes = suite, version, status, outcomes

    def counts(self) -> dict[str, int]:
        return {k: sum(1 for v in self.outcomes.values() if v == k) for k in ("passed", "failed", "skipped")}


def read_expected(path: str = EXPECTED) -> dict[str, tuple[str, dict[str, str]]]:
    """suite -> (version, {test id: why it fails}) from the expected-failure list."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    section: dict[str, str] | None = None
    with open(path, encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            m = re.fullmatch(r"\[(\w+) ([\w.]+)\]", line)
            if m:
                section = {}
                # "cpython" is the last section of that suite; "cpython 3.14" that version's own
                out[m.group(1)] = out[f"{m.group(1)} {m.group(2)}"] = (m.group(2), section)
                continue
            test, sep, why = line.partition(" -- ")
            if section is None or not sep or not why.strip():
                raise ValueError(f"{path}:{n}: expected '[suite version]' or 'TEST-ID -- why it fails'")
            section[test.strip()] = why.strip()
    return out


def check(run: Run, expected: dict[str, tuple[str, dict[str, str]]]) -> list[str]:
    """What is wrong with ``run`` against the expected-failure list (nothing: [])."""
    where = os.path.relpath(EXPECTED, ROOT)
    if run.suite not in expected:
        return [f"{run.suite}: no [{run.suite} VERSION] section in {where}"]
    version, failing = expected.get(f"{run.suite} {run.version}", expected[run.suite])
    if version != run.version:
        return [f"{run.suite}: {where} was measured with {version}, this is {run.version}: "
                "install the pinned version (.ci/constraints.txt) or measure the list again"]  # fmt: skip
    # Entries whose reason starts with "flaky:" are glob patterns for upstream tests that judge
    # unseeded random runs against thresholds: they may fail or pass, on any executor.
    flaky = [pat for pat, why in failing.items() if why.lower().startswith("flaky:")]
    failing = {t: why for t, why in failing.items() if t not in flaky}
    problems = []
    if run.status not in (0, 1):
        problems.append(f"{run.suite}: pytest exited with {run.status} (not a test outcome: see its output)")
    if not run.outcomes:
        problems.append(f"{run.suite}: no test ran")
    for test, outcome in sorted(run.outcomes.items()):
        if outcome == "failed" and test not in failing and not any(fnmatch.fnmatchcase(test, p) for p in flaky):
            problems.append(f"{run.suite}: NEW FAILURE {test}")
    for test, why in sorted(failing.items()):
        outcome = run.outcomes.get(test, "not run")
        if outcome != "failed":
            problems.append(f"{run.suite}: listed as failing ({why}) but {outcome.upper()}: {test}; "
                            f"remove it from {where} if that is for good")  # fmt: skip
    return problems


def run_joblib(work: str, everything: bool = False) -> Run:
    import joblib

    src = os.path.join(os.path.dirname(joblib.__file__), "test", "test_parallel.py")
    with open(src) as fh:
        text = fh.read()
    old = 'PROCESS_BACKENDS = ["multiprocessing", "loky"]'
    if old not in text or "\nimport joblib\n" not in text:
        print(f"joblib {joblib.__version__}: test_parallel.py lacks the lines to patch", file=sys.stderr)
        return Run("joblib", joblib.__version__, 2, {})
    text = text.replace(old, 'PROCESS_BACKENDS = ["multiprocessing", "loky", "scoop"]')
    text = text.replace("\nimport joblib\n", "\nimport joblib\nimport scoopexec  # registers \"scoop\"\n", 1)
    suite = _write_suite(os.path.join(work, "joblib-suite"), {"test_parallel.py": text})
    junit = os.path.join(work, "joblib.xml")
    status = _pytest(suite, junit, _env([]), *([] if everything else ["-k", "scoop"]))
    results = _outcomes(junit)
    mine = {k: v for k, v in results.items() if re.search(r"scoop", k)}
    run = Run("joblib", joblib.__version__, status, mine)
    print(f"\njoblib {joblib.__version__}: {len(results)} tests ran; those naming 'scoop': {run.counts()}")
    for name, outcome in sorted(mine.items()):
        if outcome == "failed":
            print("  failed:", name[:150])
    return run


def run_deap(work: str) -> Run:
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
        return Run("deap", version, 2, {})
    with tarfile.open(archives[0]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dl, filter="data")
        else:  # pragma: no cover - Pythons without extraction filters
            tar.extractall(dl)
    (tests,) = glob.glob(os.path.join(dl, "deap-*", "tests"))
    suite = os.path.join(work, "deap-suite")
    shutil.copytree(tests, suite)
    _write_suite(suite, {"conftest.py": DEAP_CONFTEST})
    junit = os.path.join(work, "deap.xml")
    status = _pytest(suite, junit, _env([]))
    run = Run("deap", version, status, _outcomes(junit))
    print(f"\nDEAP {version}: pytest exit status {status}; {run.counts()}")
    return run


CPYTHON_SUITE = """# Upstream's generic concurrent.futures tests, with ScoopExecutor as the executor.
import multiprocessing

try:  # Python 3.12+: a package of modules
    from test.test_concurrent_futures.executor import ExecutorTest
    from test.test_concurrent_futures.test_as_completed import AsCompletedTests
    from test.test_concurrent_futures.test_deadlock import ExecutorDeadlockTest
    from test.test_concurrent_futures.test_init import FailingInitializerMixin, InitializerMixin
    from test.test_concurrent_futures.test_shutdown import ExecutorShutdownTest
    from test.test_concurrent_futures.test_wait import WaitTests
    from test.test_concurrent_futures.util import BaseTestCase, ExecutorMixin
    from test.test_concurrent_futures.util import setup_module as setUpModule
except ImportError:  # Python 3.11: one module
    from test.test_concurrent_futures import (
        AsCompletedTests, BaseTestCase, ExecutorDeadlockTest, ExecutorMixin, ExecutorShutdownTest,
        ExecutorTest, FailingInitializerMixin, InitializerMixin, WaitTests, setUpModule,
    )

from scoopexec import ScoopExecutor


class ScoopSpawnMixin(ExecutorMixin):
    executor_type = ScoopExecutor
    ctx = "spawn"

    def get_context(self):
        return multiprocessing.get_context(self.ctx)

    def create_event(self):  # 3.13+: WaitTests ask for an event that workers can set
        return self.manager.Event()


class ScoopForkMixin(ScoopSpawnMixin):  # as upstream's ProcessPoolForkMixin: workers that inherit
    ctx = "fork"


# What upstream's create_executor_tests() does, here (3.11's puts the classes in its own module):
# ScoopExecutorTest & co with a 'spawn' context, ScoopForkExecutorTest & co with a 'fork' one.
for prefix, mixin in (("Scoop", ScoopSpawnMixin), ("ScoopFork", ScoopForkMixin)):
    for tests in (ExecutorTest, WaitTests, AsCompletedTests, ExecutorShutdownTest, InitializerMixin,
                  FailingInitializerMixin, ExecutorDeadlockTest):
        name = prefix + tests.__name__.removesuffix("Mixin").removesuffix("Tests").removesuffix("Test") + "Test"
        globals()[name] = type(name, (tests, mixin, BaseTestCase), {})
"""


CPYTHON_POOL_SUITE = """# Upstream's tests of multiprocessing.Pool (_TestPool), with scoopexec.Pool as the pool.
import unittest

from test import _test_multiprocessing as upstream

import scoopexec


class ScoopPoolMixin(upstream.ProcessesMixin):
    Pool = staticmethod(scoopexec.Pool)


# The order upstream's install_tests_in_module_dict() gives: the tests, then the mixin.
class ScoopPoolTest(upstream._TestPool, ScoopPoolMixin, unittest.TestCase):
    pass
"""


def run_cpython(work: str) -> Run:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    try:  # (_test_multiprocessing is only looked for: its tests run in another process)
        import test.test_concurrent_futures  # noqa: F401

        if importlib.util.find_spec("test._test_multiprocessing") is None:
            raise ImportError("test._test_multiprocessing")
    except ImportError:
        print(f"Python {sys.version.split()[0]}: no test.test_concurrent_futures or "
              f"test._test_multiprocessing (the interpreter's own test package; Debian: apt-get "
              f"install libpython{version}-testsuite)", file=sys.stderr)  # fmt: skip
        return Run("cpython", version, 2, {})
    # Each in a folder and a pytest run of its own: the concurrent.futures tests took about twice
    # as long (3.11: 200-280 s against 100-120 s) run beside the pool tests' file (not explained).
    status, outcomes = 0, {}
    for folder, name, text in (
        ("cpython-suite", "test_cpython_concurrent_futures.py", CPYTHON_SUITE),
        ("cpython-pool-suite", "test_cpython_multiprocessing_pool.py", CPYTHON_POOL_SUITE),
    ):
        suite = _write_suite(os.path.join(work, folder), {name: text})
        junit = os.path.join(work, f"{folder}.xml")
        status = max(status, _pytest(suite, junit, _env([])))
        outcomes.update(_outcomes(junit))
    run = Run("cpython", version, status, outcomes)
    print(f"\nCPython {sys.version.split()[0]}'s concurrent.futures tests on ScoopExecutor and "
          f"multiprocessing.Pool tests on scoopexec.Pool: {run.counts()}")
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suites", nargs="*", metavar="{joblib,deap,cpython}", help="default: all three")
    ap.add_argument("--check", action="store_true",
                    help=f"compare with {os.path.relpath(EXPECTED, ROOT)}; exit 1 on any difference")
    ap.add_argument("--all-joblib", action="store_true",
                    help="run all of joblib's test_parallel.py, not only the tests on 'scoop'")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    args = ap.parse_args()
    suites = args.suites or ["joblib", "deap", "cpython"]
    unknown = set(suites) - {"joblib", "deap", "cpython"}
    if unknown:
        ap.error(f"unknown suite(s): {sorted(unknown)}")
    expected = read_expected() if args.check else {}
    work = args.keep or tempfile.mkdtemp(prefix="scoopexec-upstream-")
    os.makedirs(work, exist_ok=True)
    try:
        runs = []
        if "joblib" in suites:
            runs.append(run_joblib(work, args.all_joblib))
        if "deap" in suites:
            runs.append(run_deap(work))
        if "cpython" in suites:
            runs.append(run_cpython(work))
        if not args.check:
            return max(r.status for r in runs)
        problems = [p for r in runs for p in check(r, expected)]
        print()
        for r in runs:
            listed = len(expected.get(f"{r.suite} {r.version}", expected.get(r.suite, ("", {})))[1])
            print(f"{r.suite} {r.version}: {r.counts()}, {listed} expected to fail")
        for p in problems:
            print("PROBLEM:", p)
        print("upstream suites:", "as expected" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
