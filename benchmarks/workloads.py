"""The measurements, as run inside one child process per contender and round.

``run.py`` starts ``python -m benchmarks.run --child NAME --part PART`` for
each contender in turn; the child builds the contender's pool with
``contenders.py``, runs the part's workloads and writes a JSON object
``{"values": {key: number}, "extra": {...}, "errors": {key: text}}``.
A fresh process per contender keeps one library's threads, imports,
garbage-collector hooks or leftovers from touching another's figures.

Parts:
  main     start + first result, shutdown, submit, map (chunksize 1 and
           large), round trip, 64 MiB arrays (first and steady), CPU efficiency and the
           coordinator's CPU meanwhile, nested sub-tasks; then the pool of
           64 idle-waiting workers (for executors)
  memory   map over many items with ``buffersize``: peak RSS of this process
  routing  the broker's routing rate (see routing.py); scoopexec only
"""

from __future__ import annotations

import functools
import gc
import json
import resource
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks.contenders import CONTENDERS, Pool
from benchmarks.tasks import burn, echo, nap, noop, pid

WORKERS = 2

Sizes = dict[str, Any]


# ------------------------------------------------------------------ main part
def start_and_first(factory: Callable[[int], Pool]) -> dict[str, float]:
    """The first import of the pool's module (this process is fresh), then the time from making
    the pool to its first result, then its shutdown: each timed apart."""
    t = time.perf_counter()
    getattr(factory, "load", lambda: None)()
    imported = time.perf_counter() - t
    t = time.perf_counter()
    pool = factory(WORKERS)
    pool.submit(noop, 1).result()
    first = time.perf_counter() - t
    t = time.perf_counter()
    pool.shutdown()
    return {"import": imported, "start": first, "shutdown": time.perf_counter() - t}


def submit_rate(pool: Pool, size: Sizes) -> float:
    n = size["submit"]
    t = time.perf_counter()
    handles = [pool.submit(noop, i) for i in range(n)]
    pool.gather(handles)
    return float(n / (time.perf_counter() - t))


def map1_rate(pool: Pool, size: Sizes) -> float:
    n = size["map"]
    t = time.perf_counter()
    for _ in pool.map(noop, range(n), 1):
        pass
    return float(n / (time.perf_counter() - t))


def map_chunked_rate(pool: Pool, size: Sizes) -> float:
    n = size["map"] * 5
    t = time.perf_counter()
    for _ in pool.map(noop, range(n), max(1, n // (WORKERS * 8))):
        pass
    return float(n / (time.perf_counter() - t))


def round_trip_us(pool: Pool, size: Sizes) -> float:
    times = []
    for i in range(size["rtt"]):
        t = time.perf_counter()
        pool.submit(noop, i).result()
        times.append(time.perf_counter() - t)
    return float(statistics.median(times)) * 1e6


ARRAY_ECHOES = 6  # the first, two more (the other worker's first may be among them), then 3 steady


def array_mb_s(pool: Pool, size: Sizes) -> dict[str, Any]:
    """Float64 arrays to a worker and back (echo); MB/s counts both directions.

    Each echo sends a new array (made before its timer starts), as a program
    sending successive data would.  "array_first" is the pool's first large
    transfer (fresh receive buffers, nothing re-used; the workers have imported
    numpy already, through small arrays); "array" is the steady state: the
    median of the last 3 of 6 echoes.  Every echo's MB/s is kept in the extra.
    """
    import numpy as np

    n = size["array_mib"] * 1024 * 1024 // 8
    pool.gather([pool.submit(echo, np.ones(8)) for _ in range(8)])  # numpy imported on the workers
    rates = []
    for i in range(ARRAY_ECHOES):
        a = np.full(n, float(i + 1))
        t = time.perf_counter()
        out = pool.submit(echo, a).result()
        dt = time.perf_counter() - t
        if out.shape != a.shape or out[-1] != i + 1:
            raise AssertionError("the array came back wrong")
        rates.append(2 * a.nbytes / dt / 1e6)
        del out, a
    return {
        "array_first": rates[0],
        "array": float(statistics.median(rates[-3:])),
        "array_echoes_mb_s": rates,
    }


def cpu_efficiency(pool: Pool, size: Sizes, worker_pids: set[int]) -> tuple[float, float]:
    """(efficiency %, coordinator CPU as % of one core) over CPU-bound tasks."""
    n, cost = size["cpu_tasks"], size["cpu_ms"] / 1000
    c0 = pool.coordinator_cpu(worker_pids)
    t = time.perf_counter()
    for _ in pool.map(burn, [cost] * n, 1):
        pass
    wall = time.perf_counter() - t
    c1 = pool.coordinator_cpu(worker_pids)
    return 100 * (n * cost / WORKERS) / wall, 100 * (c1 - c0) / wall


def nested_ms(pool: Pool, size: Sizes) -> float | None:
    """Median time, measured inside a task, to submit 4 sub-tasks and await them all."""
    fn = pool.nested
    if fn is None:
        return None
    pool.submit(fn, 4).result()  # first use (imports, function export) is not the steady state
    return 1000 * float(statistics.median(pool.submit(fn, 4).result() for _ in range(size["nested_reps"])))


def wide_utilization(factory: Callable[[int], Pool], size: Sizes) -> dict[str, float]:
    """Many workers that sleep in their tasks: utilization = ideal time / actual time."""
    w, n, dur = size["wide_workers"], size["wide_tasks"], size["wide_ms"] / 1000
    pool = factory(w)
    try:
        seen: set[int] = set()
        t = time.perf_counter()
        while len(seen) < w and time.perf_counter() - t < 120:  # every worker up and warm
            seen.update(pool.map(nap, [0.02] * (2 * w), 1))
        t = time.perf_counter()
        pids = list(pool.map(nap, [dur] * n, 1))
        wall = time.perf_counter() - t
    finally:
        pool.shutdown()
    return {"wide": 100 * (n * dur / w) / wall, "wide_workers_used": len(set(pids))}


def run_main(name: str, size: Sizes) -> dict[str, Any]:
    c = CONTENDERS[name]
    factory = c.factory
    assert factory is not None
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def attempt(key: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # one failing workload must not hide the others
            errors[key] = f"{type(exc).__name__}: {exc}"
            extra.setdefault("tracebacks", {})[key] = traceback.format_exc()[-2000:]
            return None

    values.update(attempt("start", lambda: start_and_first(factory)) or {})
    pool = factory(WORKERS)
    try:
        for i in range(20):
            pool.submit(noop, i).result()
        workers = set(pool.gather([pool.submit(pid, i) for i in range(50)]))
        extra["worker_pids"] = sorted(workers)
        for key, fn in [
            ("submit", submit_rate),
            ("map1", map1_rate),
            ("mapchunk", map_chunked_rate),
            ("rtt", round_trip_us),
        ]:
            values[key] = attempt(key, functools.partial(fn, pool, size))
            gc.collect()
        arrays = attempt("array", lambda: array_mb_s(pool, size))
        if arrays is not None:
            values["array_first"], values["array"] = arrays["array_first"], arrays["array"]
            extra["array_echoes_mb_s"] = arrays["array_echoes_mb_s"]
        gc.collect()
        both = attempt("cpu", lambda: cpu_efficiency(pool, size, workers))
        if both is not None:
            values["cpu"], values["broker_cpu"] = both
        values["nested"] = attempt("nested", lambda: nested_ms(pool, size))
    finally:
        pool.shutdown()
    if c.wide and size.get("wide_workers"):
        out = attempt("wide", lambda: wide_utilization(factory, size)) or {}
        values["wide"] = out.get("wide")
        extra["wide_workers_used"] = out.get("wide_workers_used")
    return {"values": {k: v for k, v in values.items() if v is not None}, "extra": extra, "errors": errors}


# ---------------------------------------------------------------- memory part
def run_memory(name: str, size: Sizes) -> dict[str, Any]:
    """Peak RSS of this (fresh) process while mapping over many items with buffersize."""
    c = CONTENDERS[name]
    assert c.factory is not None
    pool = c.factory(WORKERS)
    try:
        pool.submit(noop, 0).result()
        n = size["memory_items"]
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t = time.perf_counter()
        count = 0
        mapping = pool.map_buffered(  # type: ignore[attr-defined]
            noop, range(n), size["memory_chunksize"], size["memory_buffersize"]
        )
        for _ in mapping:
            count += 1
        wall = time.perf_counter() - t
    finally:
        pool.shutdown()
    if count != n:
        raise AssertionError(f"map returned {count} items instead of {n}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "values": {"memory": peak},
        "extra": {"memory_rss_before_mb": rss_before, "memory_items_per_s": n / wall, "memory_s": wall},
        "errors": {},
    }


# --------------------------------------------------------------- routing part
def run_routing(name: str, size: Sizes) -> dict[str, Any]:
    from benchmarks import routing

    out = routing.measure(tasks=size["route_tasks"], batch=size["route_batch"])
    return {
        "values": {"routing": out["rate"]},
        "extra": {
            "routing_capacity": out["capacity"],
            "routing_broker_cpu_us": out["broker_cpu_us_per_task"],
        },
        "errors": {},
    }


PARTS = {"main": run_main, "memory": run_memory, "routing": run_routing}


def child(name: str, part: str, size: Sizes, out_path: str) -> None:
    result = PARTS[part](name, size)
    with open(out_path, "w") as fh:
        json.dump(result, fh)
