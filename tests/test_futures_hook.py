"""``from concurrent.futures import ScoopExecutor`` where scoopexec is installed (_scoopexec_joblib.py).

The standard library's executors are found in concurrent.futures; code written for one of them
often looks its name up there, CPython's own tests among it (their ``python -c`` children run
``from concurrent.futures import {executor_type.__name__}``).  The installed .pth hook makes the
name resolve there, importing scoopexec only when it is looked up.
"""

from __future__ import annotations

import pytest

from tests.helpers import run_installed

pytestmark = pytest.mark.timeout(120)


def test_concurrent_futures_gives_scoopexecutor_without_importing_scoopexec_first(tmp_path):
    r = run_installed(
        """
        import sys
        import asyncio  # (imports concurrent.futures)
        import concurrent.futures as cf
        assert "scoopexec" not in sys.modules, "importing concurrent.futures imported scoopexec"
        assert "ScoopExecutor" not in cf.__all__ and "ScoopExecutor" not in vars(cf)
        from concurrent.futures import ScoopExecutor, ProcessPoolExecutor  # (the stdlib's lazy names too)
        import scoopexec
        assert ScoopExecutor is scoopexec.ScoopExecutor and ProcessPoolExecutor.__module__ == "concurrent.futures.process"
        try:
            cf.NoSuchExecutor
        except AttributeError as e:
            print(e)

        def square(x):
            return x * x

        if __name__ == "__main__":
            with ScoopExecutor(2) as ex:
                print(sum(ex.map(square, range(10))))
        """,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().splitlines() == ["module 'concurrent.futures' has no attribute 'NoSuchExecutor'", "285"]


def test_an_executor_left_running_at_exit_finishes_its_task_as_the_stdlibs_do(tmp_path):
    # CPython's test_interpreter_shutdown, on the name found through the hook: the task's output
    # is there, nothing on stderr.
    r = run_installed(
        """
        from concurrent.futures import ScoopExecutor
        import time

        def sleep_and_print(t, msg):
            time.sleep(t)
            print(msg, flush=True)

        if __name__ == "__main__":
            t = ScoopExecutor(3)
            t.submit(sleep_and_print, 0.5, "apple")
        """,
        tmp_path,
    )
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, b"apple", b"")


def test_the_futures_hook_can_be_turned_off(tmp_path):
    pytest.importorskip("joblib")
    r = run_installed(
        """
        import sys
        try:
            from concurrent.futures import ScoopExecutor
        except ImportError as e:
            print("ImportError")
        import joblib
        print("scoop" in joblib.parallel.BACKENDS)  # (the other hook stays)
        """,
        tmp_path,
        SCOOPEXEC_NO_FUTURES_HOOK="1",
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["ImportError", "True"]


def test_a_look_before_the_import_and_a_broken_scoopexec_leave_concurrent_futures_working(tmp_path):
    # importlib.util.find_spec() asks the finders without importing: the hook must wait for the
    # import itself.  And where scoopexec cannot be imported, hasattr() says False (no raise).
    r = run_installed(
        """
        import importlib.util, sys
        assert importlib.util.find_spec("concurrent.futures") is not None
        sys.modules["scoopexec"] = None  # (an import of it now fails, as a broken install's would)
        import concurrent.futures as cf
        print(hasattr(cf, "ScoopExecutor"), cf.ThreadPoolExecutor.__name__)
        del sys.modules["scoopexec"]
        from concurrent.futures import ScoopExecutor
        print(ScoopExecutor.__name__)
        """,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["False", "ThreadPoolExecutor", "ScoopExecutor"]
