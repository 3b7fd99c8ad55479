"""A client waiting for a result stops its OpenBLAS thread pool (deploy/threadlibs.quiet).

Issue 17, DEAP's CMA-ES: after each threaded call, OpenBLAS's pool spins for about 0.1 s
before it sleeps, so a client that runs NumPy between maps spins a core or more through each
map, on the cores its workers need.  A client thread about to wait for a result stops the pool
(as OpenBLAS does itself before a fork); the next threaded call starts it again.  These run a
client script with a two-thread OpenBLAS and count the client's threads from a task that runs
while the client waits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="OpenBLAS pools are read on Linux"
)

_SCRIPT = """
import json, os, sys, threading, time
import numpy
from scoopexec import ScoopExecutor
from scoopexec.deploy import threadlibs


def client_threads(pid):
    time.sleep(0.4)  # the client waits on this task's result meanwhile
    return len(os.listdir(f"/proc/{pid}/task"))


if __name__ == "__main__":
    threadlibs.limit(2, None)  # a pool of one thread besides the caller, whatever the cores
    a = numpy.arange(90000.0).reshape(300, 300) / 90000.0
    with ScoopExecutor(max_workers=1) as ex:
        ex.submit(abs, -1).result()
        other = None
        if sys.argv[1] == "user-thread":  # a user's thread, which could be inside a BLAS call
            stop = threading.Event()
            other = threading.Thread(target=stop.wait)
            other.start()
        if sys.argv[1] == "callback":  # a done-callback (user code) runs on the pool's thread
            entered = threading.Event()

            def slow_callback(_fut):
                entered.set()
                time.sleep(1.5)  # as a BLAS call would take, the GIL released

            ex.submit(abs, -2).add_done_callback(slow_callback)
            assert entered.wait(30)
        reference = a @ a  # a threaded call: the pool runs
        before = len(os.listdir("/proc/self/task"))
        during = ex.submit(client_threads, os.getpid()).result(timeout=60)
        again = a @ a  # starts the pool again if it was stopped
        after = len(os.listdir("/proc/self/task"))
        if other is not None:
            stop.set()
            other.join()
    print(json.dumps({"before": before, "during": during, "after": after,
                      "same": bool((again == reference).all()), "blas": threadlibs.blas_threads()}))
"""


def _run(tmp_path, mode: str, **env_extra: str) -> dict:
    script = tmp_path / "quiet_client.py"
    script.write_text(_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.endswith(("NUM_THREADS", "MAXIMUM_THREADS"))}
    env.pop("SCOOPEXEC_QUIET_BLAS", None)
    env.update(PYTHONPATH=ROOT, **env_extra)
    out = subprocess.run(
        [sys.executable, str(script), mode],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def _openblas() -> None:
    numpy = pytest.importorskip("numpy")
    from scoopexec.deploy import threadlibs

    if threadlibs.blas_threads() is None:
        pytest.skip(f"numpy {numpy.__version__} is not built with an OpenBLAS that can be asked")


def test_a_waiting_client_stops_its_blas_pool_and_the_next_call_starts_it(tmp_path) -> None:
    got = _run(tmp_path, "alone")
    assert got["blas"] == 2, got  # the thread count is the user's, unchanged
    assert got["during"] == got["before"] - 1, got  # the pool's one thread stopped while waiting
    assert got["after"] == got["before"], got  # and back for the next threaded call
    assert got["same"], got  # which computes what it did before


def test_a_user_thread_keeps_the_blas_pool_running(tmp_path) -> None:
    """Another Python thread of the user's could be inside a BLAS call: the pool is left alone."""
    got = _run(tmp_path, "user-thread")
    assert got["during"] == got["before"], got


def test_a_done_callback_running_keeps_the_blas_pool_running(tmp_path) -> None:
    """A done-callback is user code on the pool's own thread: it too could be in a BLAS call."""
    got = _run(tmp_path, "callback")
    assert got["during"] == got["before"], got


def test_scoopexec_quiet_blas_0_leaves_the_pool_running(tmp_path) -> None:
    got = _run(tmp_path, "alone", SCOOPEXEC_QUIET_BLAS="0")
    assert got["during"] == got["before"], got
