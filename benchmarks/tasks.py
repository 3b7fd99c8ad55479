"""Task functions for the benchmarks.

They live in a module (not in ``__main__``) so that every contender sends
them by reference, the same way, and no contender pays for pickling a
function by value.  Peer libraries are imported inside the functions that
need them, so that importing this module costs nothing on a worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def noop(x: Any = None) -> Any:
    return x


def echo(x: Any) -> Any:
    return x


def pid(_: Any = None) -> int:
    return os.getpid()


def burn(seconds: float) -> int:
    """Keep one core busy for ``seconds`` (wall clock) and return the loop count."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def nap(seconds: float) -> int:
    """An idle-waiting task: sleep, then say which process ran it."""
    time.sleep(seconds)
    return os.getpid()


def run_chunk(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """Apply ``fn`` to a chunk of items (how peers without a chunksize get one)."""
    return [fn(x) for x in items]


# ------------------------------------------------- nested sub-tasks, per library
# Each returns the seconds spent, inside the task, submitting ``n`` no-op
# sub-tasks to the pool it runs in and waiting for all their results.


def nested_scoopexec(n: int) -> float:
    import scoopexec

    t = time.perf_counter()
    futures = [scoopexec.submit(noop, i) for i in range(n)]
    for f in futures:
        f.result()
    return time.perf_counter() - t


def nested_dask(n: int) -> float:
    from distributed import worker_client

    t = time.perf_counter()
    # worker_client() lets this task leave the worker's thread pool while it
    # waits (secede/rejoin): without it, two single-threaded workers deadlock.
    with worker_client() as client:
        futures = [client.submit(noop, i, pure=False) for i in range(n)]
        client.gather(futures)
    return time.perf_counter() - t


_ray_noop: Any = None


def nested_ray(n: int) -> float:
    import ray

    global _ray_noop
    if _ray_noop is None:
        _ray_noop = ray.remote(noop)
    t = time.perf_counter()
    ray.get([_ray_noop.remote(i) for i in range(n)])  # blocking in ray.get releases this task's CPU
    return time.perf_counter() - t


def nested_scoop(n: int) -> float:
    from scoop import futures

    t = time.perf_counter()
    list(futures.map(noop, range(n)))
    return time.perf_counter() - t
