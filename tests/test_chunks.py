"""Chunks (``map(chunksize=N)`` and ``chunksize="auto"``): each item runs once, and a chunk
reports what each of its items did, even when one raised, timed out, or ended its worker."""

from __future__ import annotations

import functools
import os
import time

import pytest

from scoopexec import ScoopExecutor, TaskTimeoutError


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


def test_a_timed_out_item_in_a_chunk_without_on_timeout_runs_its_limit_once(tmp_path):
    d = str(tmp_path)
    with ScoopExecutor(1) as ex:
        it = ex.map(functools.partial(noted, d=d, bad=1, sleep=30), range(3), chunksize=3, task_timeout=0.5)
        assert next(it) == 0
        with pytest.raises(TaskTimeoutError, match="noted"):
            next(it)
    assert runs(d) == ["0", "1"]
