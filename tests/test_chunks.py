"""Chunks (``map(chunksize=N)`` and ``chunksize="auto"``): each item runs once, and a chunk
reports what each of its items did, even when one raised, timed out, or ended its worker."""

from __future__ import annotations

import functools
import os
import time

import pytest

from scoopexec import ScoopExecutor, TaskTimeoutError
from tests.helpers import ignore_interrupts


def runs(d: str) -> list[str]:
    """The items that ran, one entry per run (in the order they started)."""
    return [name.split("-")[0] for name in sorted(os.listdir(d), key=lambda n: int(n.split("-")[1]))]


def noted(x: int, d: str, bad: int = 2, sleep: float = 0.0) -> int:
    """Leaves a file in ``d`` for each run; item ``bad`` raises (or, with ``sleep``, sleeps that long)."""
    with open(os.path.join(d, f"{x}-{time.monotonic_ns()}"), "w"):
        pass
    if x == bad:
        if sleep:
            time.sleep(sleep)
        else:
            raise ValueError(f"item {x} is bad")
    return x * 10


def test_an_item_that_raises_in_a_chunk_runs_once_and_the_items_before_it_are_kept(tmp_path):
    d = str(tmp_path)
    with ScoopExecutor(1) as ex:
        it = ex.map(functools.partial(noted, d=d), range(5), chunksize=5)
        assert [next(it), next(it)] == [0, 10]
        with pytest.raises(ValueError, match="item 2 is bad"):
            next(it)
    assert runs(d) == ["0", "1", "2"]  # not run again to find which item raised


def slow_after(x: int, d: str) -> int:
    with open(os.path.join(d, f"{x}-{time.monotonic_ns()}"), "w"):
        pass
    if x == 1:
        raise ValueError("item 1 is bad")
    time.sleep(0.25)
    return x


@pytest.mark.timeout(120)
@pytest.mark.parametrize("unordered", [False, True])
def test_a_chunked_map_whose_error_was_caught_cancels_its_other_chunks(tmp_path, unordered):
    # The error's traceback held the frame that held the map's generator: its cancel of the
    # chunks not started waited for the garbage collector, and the caller's next task waited
    # behind the whole map (79 of 80 items ran, 9 s).
    d = str(tmp_path)
    with ScoopExecutor(2) as ex:
        with pytest.raises(ValueError, match="item 1 is bad"):
            list(ex.map(functools.partial(slow_after, d=d), range(80), chunksize=4, unordered=unordered))
        assert ex.submit(abs, -1).result(timeout=60) == 1
        ran = len(runs(d))
    assert ran < 40, ran


def test_a_timed_out_item_in_a_chunk_without_on_timeout_runs_its_limit_once(tmp_path):
    d = str(tmp_path)
    with ScoopExecutor(1) as ex:
        it = ex.map(functools.partial(noted, d=d, bad=1, sleep=30), range(3), chunksize=3, task_timeout=0.5)
        assert next(it) == 0
        with pytest.raises(TaskTimeoutError, match="noted"):
            next(it)
    assert runs(d) == ["0", "1"]


def stubborn_on(x: int, d: str, bad: int = 1) -> tuple[int, int]:
    """(x, pid), leaving a file in ``d`` per run; item ``bad`` swallows its KeyboardInterrupt for 30 s
    (only ending its process stops it)."""
    with open(os.path.join(d, f"{x}-{time.monotonic_ns()}"), "w"):
        pass
    if x == bad:
        ignore_interrupts(30)
    return x, os.getpid()


@pytest.mark.parametrize("chunksize", [4, "auto"])
def test_a_chunk_whose_worker_was_ended_keeps_the_items_that_finished(tmp_path, chunksize):
    from scoopexec import autochunk

    d = str(tmp_path)
    fn = functools.partial(stubborn_on, d=d)
    autochunk.remember_cost(fn, 1e-6)  # "auto": one chunk of the 4 items at once, as a later generation's
    with ScoopExecutor(1) as ex:
        first = ex.submit(os.getpid).result(timeout=60)
        out = list(ex.map(fn, range(4), chunksize=chunksize, task_timeout=0.5, on_timeout="late"))
        assert out[1] == "late"  # only the item that timed out
        assert out[0] == (0, first)  # finished before its worker was ended: kept, not run again
        assert [o[0] for o in out[2:]] == [2, 3]
        assert all(o[1] != first for o in out[2:])  # run on the replacement
    assert runs(d) == ["0", "1", "2", "3"]  # each item ran once


def test_a_chunk_whose_worker_was_ended_without_on_timeout_raises_at_that_item(tmp_path):
    d = str(tmp_path)
    with ScoopExecutor(1) as ex:
        it = ex.map(functools.partial(stubborn_on, d=d), range(4), chunksize=4, task_timeout=0.5)
        assert next(it)[0] == 0
        with pytest.raises(TaskTimeoutError, match=r"stubborn_on.*ended"):
            next(it)
    assert runs(d) == ["0", "1"]


def stubborn_first(x: int) -> int:
    if x == 0:
        ignore_interrupts(30)
    return x


def test_automatic_chunk_sizes_count_a_chunk_whose_worker_was_ended_as_long():
    from scoopexec import autochunk

    with ScoopExecutor(1) as ex:
        assert list(ex.map(stubborn_first, range(4), chunksize="auto", task_timeout=0.5, on_timeout=-1)) == [
            -1, 1, 2, 3,
        ]  # fmt: skip
    cost = autochunk.known_cost(stubborn_first)
    assert cost is not None and cost >= 0.5 / 4, cost  # not free: at least its time limit
