"""Shared fixtures: real pools, and a check that no test leaves a process or a thread behind."""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time

import psutil
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scoopexec import ScoopExecutor  # noqa: E402
from tests import skip_gate  # noqa: E402


def _numpy_without_blas_threads() -> None:
    """Load numpy (tests import it) with one BLAS thread, the environment restored after.

    OpenBLAS starts its threads when numpy loads, for good: the test process would then never
    again run a single thread, and every pool the tests make would take the fallback of
    deploy/clientfork.py (a fresh template) rather than the default, a fork of the client.
    """
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ.setdefault(name, "1")
    try:
        import numpy  # noqa: F401
    except ImportError:
        pass
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_numpy_without_blas_threads()


def pytest_configure(config):
    skip_gate.configure(config)  # under CI=true, a skip not on tests/allowed_skips.txt fails the run


# Seconds for the teardown of a test that failed (see below); tests/test_harness.py sets less.
TEARDOWN_LIMIT = float(os.environ.get("SCOOPEXEC_TEST_TEARDOWN_LIMIT", "60"))


class TeardownTooLong(Exception):
    """A failed test's teardown still ran after TEARDOWN_LIMIT seconds.  (An Exception: pytest
    then runs the test's other finalizers, monkeypatch's undo among them, as it does not for a
    BaseException; were a broad `except Exception` to eat it, faulthandler's backstop ends the run.)"""


_POOLS_BEFORE = pytest.StashKey[set]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    from scoopexec import pools

    item.stash[_POOLS_BEFORE] = set(pools._live)  # the pools that the test did not start
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    # pytest-timeout stops its timer when a test fails (its pytest_exception_interact hook), so a
    # failed test whose fixture then waits for ever (a pool's shutdown(wait=True) behind a task
    # that never ends) would hang the run.  Where no timer is armed, arm one for the teardown:
    # the fixture's wait is interrupted and reported as an error, the pools the test started are
    # aborted, and the run goes on (faulthandler ends it, stacks printed, if even that hangs).
    in_main = threading.current_thread() is threading.main_thread()
    armed = in_main and not signal.getitimer(signal.ITIMER_REAL)[0]
    previous = None
    fired = []
    if armed:

        def expired(signum, frame):
            fired.append(True)
            raise TeardownTooLong(
                f"the teardown of {item.nodeid} still ran after {TEARDOWN_LIMIT} s (the test had failed, "
                "so pytest-timeout no longer bounded it)"
            )

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, TEARDOWN_LIMIT)
        # (after the other finalizers' own bounds: no_process_left_behind waits up to 20 s)
        faulthandler.dump_traceback_later(TEARDOWN_LIMIT + 60, exit=True)
    try:
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if fired:
                from scoopexec import pools

                for session in set(pools._live) - item.stash.get(_POOLS_BEFORE, set()):
                    why = session.abort(f"the teardown of {item.nodeid} took too long")  # (10 s at most)
                    if why:  # (said, for a test that looks at what is left: tests/test_harness.py)
                        print(f"aborting the pool of {item.nodeid}: {why}", file=sys.stderr)
            faulthandler.cancel_dump_traceback_later()


def _children() -> dict[int, psutil.Process]:
    try:
        children = {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}
    for pid in _multiprocessing_helpers():
        children.pop(pid, None)
    return children


def _multiprocessing_helpers() -> list[int]:
    """multiprocessing's own resource tracker, which lives until the interpreter exits.

    From Python 3.14 (forkserver the default start method on Linux) the first multiprocessing
    lock of the process starts it (tqdm makes one for its bars): a helper of the standard library,
    not a process that a test left behind.
    """
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    pid = getattr(getattr(tracker, "_resource_tracker", None), "_pid", None)
    return [pid] if isinstance(pid, int) else []


def _our_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("scoopexec-")}


@pytest.fixture(autouse=True)
def no_process_left_behind():
    before = set(_children())
    threads_before = _our_threads()
    yield
    joblib_backend = sys.modules.get("scoopexec.integrations.joblib_backend")
    if joblib_backend is not None:  # the joblib backend's shared pool lives until exit: end it here
        joblib_backend.shutdown_shared_pool()
    deadline = time.monotonic() + 10
    while True:
        left = {pid: p for pid, p in _children().items() if pid not in before and _alive(p)}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for p in left.values():
        try:
            p.kill()  # only processes this test started, by pid
        except psutil.Error:
            pass
    assert not left, f"processes left behind: {[(p.pid, _cmdline(p)) for p in left.values()]}"
    # A scoopexec thread that outlives its test changes what later tests see: a client running
    # more than one thread no longer forks its template (deploy/clientfork.py), for one.
    deadline = time.monotonic() + 10
    while True:
        threads = {t for t in _our_threads() - threads_before if t.is_alive()}
        if not threads or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not threads, f"threads left behind: {sorted(t.name for t in threads)}"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(p: psutil.Process) -> list[str] | str:
    try:
        return p.cmdline()
    except psutil.Error as exc:
        return repr(exc)


@pytest.fixture
def executor():
    ex = ScoopExecutor(max_workers=2)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True)


@pytest.fixture
def one_worker():
    ex = ScoopExecutor(max_workers=1)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True)


def run_script(code: str, *args: str, timeout: float = 60, cwd: str | None = None, env=None, script_dir=None):
    """Run `code` as a script file in a fresh interpreter; return CompletedProcess."""
    import subprocess
    import tempfile
    import textwrap

    with tempfile.TemporaryDirectory() as tmp:
        d = str(script_dir) if script_dir is not None else tmp
        path = os.path.join(d, "script.py")
        with open(path, "w") as fh:
            fh.write(textwrap.dedent(code))
        e = dict(os.environ)
        e["PYTHONPATH"] = os.pathsep.join([ROOT, e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if env:
            e.update(env)
        return subprocess.run(
            [sys.executable, path, *args],
            capture_output=True,
            timeout=timeout,
            cwd=cwd or d,
            env=e,
        )
