"""Runaway tasks (issue 15): task_timeout, on real workers with real signals.

A task past its task_timeout gets KeyboardInterrupt; one that will not stop has its
worker process ended and replaced; what else that worker held runs elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import scoopexec
import scoopexec.errors
from scoopexec import ScoopExecutor, TaskTimeoutError


def sleeper(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def interrupted_note(seconds: float, path: str) -> int:
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        raise
    return os.getpid()


def stubborn(seconds: float) -> int:
    """Swallows KeyboardInterrupt and keeps going: only ending its process stops it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.02)
        except KeyboardInterrupt:
            pass
    return os.getpid()


def parked(seconds: float) -> int:
    """Parks its greenlet (an event loop's sleep in a task parks, see worker._TaskSelector)."""
    asyncio.run(asyncio.sleep(seconds))
    return os.getpid()


def test_names_are_public():
    assert scoopexec.TaskTimeoutError is scoopexec.errors.TaskTimeoutError
    assert issubclass(TaskTimeoutError, TimeoutError)
    with pytest.raises(ValueError, match="task_timeout"):
        ScoopExecutor(1, task_timeout=0)
    with pytest.raises(TypeError, match="task_timeout"):
        ScoopExecutor(1, task_timeout="5")


def test_timeout_interrupts_the_task_first(tmp_path):
    note = str(tmp_path / "interrupted")
    with ScoopExecutor(1, task_timeout=0.5) as ex:
        pid = ex.submit(sleeper, 0).result(timeout=60)  # the worker is up
        t0 = time.monotonic()
        fut = ex.submit(interrupted_note, 30, note)
        with pytest.raises(TaskTimeoutError, match=r"interrupted_note.*task_timeout=0.5 s.*Keyboard"):
            fut.result(timeout=60)
        assert time.monotonic() - t0 < 20  # not the task's 30 s
        with open(note) as f:
            assert int(f.read()) == pid  # it saw KeyboardInterrupt, on its worker
        assert ex.submit(sleeper, 0).result(timeout=60) == pid  # that worker lives on
        assert ex.worker_pids == [pid]


def test_parked_task_times_out_too():
    with ScoopExecutor(1, task_timeout=0.5) as ex:
        pid = ex.submit(sleeper, 0).result(timeout=60)
        with pytest.raises(TaskTimeoutError, match="parked"):
            ex.submit(parked, 30).result(timeout=60)
        assert ex.submit(sleeper, 0).result(timeout=60) == pid


def test_stubborn_task_ends_its_worker_which_is_replaced_and_others_rerun():
    # One worker: the parked task and the stubborn one are on the same process.
    with ScoopExecutor(1, max_retries=2) as ex:
        old = ex.submit(sleeper, 0).result(timeout=60)
        other = ex.submit(parked, 2.0)  # parks on that worker for 2 s
        time.sleep(0.3)
        late = list(ex.map(stubborn, [30], task_timeout=0.5, on_timeout="late"))
        assert late == ["late"]
        pid = other.result(timeout=60)  # re-run on the replacement, not failed
        assert pid != old
        assert ex.worker_pids == [pid]  # the pool kept its size
        with pytest.raises(TaskTimeoutError, match="ended"):
            list(ex.map(stubborn, [30], task_timeout=0.5))
        assert len(ex.worker_pids) == 1
        assert ex.status().completed >= 2


def test_map_on_timeout_and_chunks():
    with ScoopExecutor(2) as ex:
        assert list(ex.map(sleeper, [0, 30, 0], task_timeout=0.5, on_timeout=-1))[1] == -1
        out = list(ex.map(sleeper, [0, 30, 0], task_timeout=0.5, on_timeout=-1, chunksize=3))
        assert out[1] == -1 and out[0] > 0 and out[2] > 0  # the chunk's other items went on
        it = ex.map(sleeper, [0, 30], task_timeout=0.5)
        assert next(it) > 0
        with pytest.raises(TaskTimeoutError):
            next(it)


def test_scoop_map_on_timeout():
    from scoopexec import scoop_map

    with ScoopExecutor(2):
        out = scoop_map(sleeper, [0, 30], task_timeout=0.5, on_timeout=-1)
        assert out[0] > 0 and out[1] == -1
        with pytest.raises(TaskTimeoutError):
            scoop_map(sleeper, [0, 30], task_timeout=0.5)
