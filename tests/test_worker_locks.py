"""A worker runs no user or library callback while it holds a lock of its own.

The flusher thread of a worker (worker.py) takes sub-task results off the socket while a long task
runs.  It used to set them on their futures holding the worker's lock, so a done-callback that
needed a lock the task held -- joblib's, which takes ``Parallel._lock``, held by the task while it
submits -- waited for the task, and the task waited for the worker's lock to submit: a deadlock.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import pytest

import scoopexec
from scoopexec import ScoopExecutor
from tests.conftest import run_script


def _callbacks_need_the_lock_the_task_submits_under(rounds: int) -> tuple[int, int]:
    """Submit sub-tasks holding a lock that their done-callbacks take; spin so the flusher runs."""
    lock = threading.Lock()
    seen: list[int] = []

    def note(f: cf.Future[int]) -> None:
        with lock:
            seen.append(f.result())

    futs = []
    for _ in range(rounds):
        with lock:
            end = time.perf_counter() + 0.004  # > FLUSH_AFTER: the flusher takes results meanwhile
            while time.perf_counter() < end:
                f = scoopexec.submit(abs, -1)
                f.add_done_callback(note)
                futs.append(f)
                time.sleep(0.0003)  # lets the other worker's results arrive between submissions
    total = sum(f.result() for f in futs)
    deadline = time.monotonic() + 10
    while len(seen) < len(futs) and time.monotonic() < deadline:  # callbacks of the last ones
        time.sleep(0.01)
    return total, len(seen)


@pytest.mark.timeout(120)
def test_a_done_callback_that_takes_a_lock_the_submitting_task_holds_does_not_deadlock():
    with ScoopExecutor(2) as ex:
        for _ in range(3):
            total, seen = ex.submit(_callbacks_need_the_lock_the_task_submits_under, 30).result(timeout=60)
            assert total == seen and total >= 30  # one submission a round, at least


NESTED_PARALLEL_LOOP = """
import sys, time
from joblib import Parallel, delayed, parallel_config
from scoopexec import ScoopExecutor
from tests import compat_helpers as h

if __name__ == "__main__":
    rounds = int(sys.argv[1])
    with ScoopExecutor(2) as ex:
        with parallel_config(backend="scoop"):
            for r in range(rounds):
                out = Parallel(n_jobs=2)(delayed(h.inner_pids)(4) for _ in range(6))
                assert len(out) == 6 and all(len(pids) == 4 for _, _, _, pids in out), out
    print("rounds done", rounds)
"""


@pytest.mark.timeout(200)
def test_nested_parallel_inside_tasks_for_hundreds_of_rounds_does_not_hang():
    # Before the fix this hung within about a hundred rounds (the deadlock above, with
    # joblib's completion callback); the script is killed at the timeout.
    r = run_script(NESTED_PARALLEL_LOOP, "200", timeout=150, cwd=str(_root()))
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert b"rounds done 200" in r.stdout


def _root():
    import pathlib

    return pathlib.Path(__file__).resolve().parent.parent


def _cancel_with_a_callback_that_asks_another_thread():
    """A done-callback of a cancelled sub-task that needs another thread to look at the future.

    cancel() is True only for a task still in the broker's queue.  On a single worker busy with
    this task, sub-tasks wait there; the three submitted first would take any work this worker
    asks for meanwhile (a task that waits may ask with its submissions: test_cancel_contract)."""
    for _ in range(3):
        scoopexec.submit(time.sleep, 0)
    f = scoopexec.submit(time.sleep, 1.0)
    blocked = []

    def ask_elsewhere(fut):
        t = threading.Thread(target=fut.cancelled)  # takes the future's own lock
        t.start()
        t.join(5.0)
        blocked.append(t.is_alive())

    f.add_done_callback(ask_elsewhere)
    assert f.cancel()
    return blocked


@pytest.mark.timeout(60)
def test_cancel_runs_done_callbacks_without_holding_the_futures_lock():
    # One worker: with an idle second one, the broker could hand the sub-task out before the
    # cancel arrives, and cancel() rightly say False (this failed once in CI under load).
    with ScoopExecutor(1) as ex:
        assert ex.submit(_cancel_with_a_callback_that_asks_another_thread).result(timeout=30) == [False]


def _leave_a_late_wake_byte():
    """Interleave another thread's wake-up with the hub the unlucky way, deterministically.

    WakePipe.wake sets the flag, then writes a byte.  Here the flag is set (with work queued
    for the hub, so that it looks at the flag and clears it), and the byte comes 0.3 s later,
    when the hub sleeps in poll again.
    """
    import os as _os

    from scoopexec.worker.worker import current_worker

    w = current_worker()
    pipe = w._wakeup

    def late():
        pipe.pending = True
        w._foreign.append(lambda: None)
        time.sleep(0.3)
        _os.write(pipe._w, b"x")

    threading.Thread(target=late, daemon=True).start()
    time.sleep(0.05)
    return _os.getpid()


@pytest.mark.timeout(60)
def test_a_wake_byte_written_after_the_flag_was_cleared_is_read():
    import psutil

    with ScoopExecutor(1) as ex:
        pid = ex.submit(_leave_a_late_wake_byte).result(timeout=30)
        time.sleep(0.5)  # the byte is written; a hub that does not read it spins in poll()
        p = psutil.Process(pid)
        before = sum(p.cpu_times()[:2])
        time.sleep(2.0)
        used = sum(p.cpu_times()[:2]) - before
        assert used < 0.2, f"the idle worker used {used:.2f} s of CPU in 2 s"
        assert ex.submit(abs, -1).result(timeout=30) == 1
