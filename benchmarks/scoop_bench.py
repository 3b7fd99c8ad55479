"""The workloads of run.py for SCOOP 0.7.2, which needs its own launcher.

run.py starts this script as ``python -m scoop -q -n 2 scoop_bench.py
SIZES_JSON OUT_JSON`` and reads the results from OUT_JSON.  With ``-n 2``
SCOOP starts two worker processes, one of which (the "origin") also runs
this script's main program: that is SCOOP's model, not a choice made here.
SCOOP's broker is a thread of the launcher process (``python -m scoop``), so
"broker CPU" is that process's CPU time.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

from scoop import futures

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.tasks import burn, echo, nested_scoop, noop, pid, run_chunk  # noqa: E402

WORKERS = 2


def _launcher_cpu() -> float:
    import psutil

    for p in psutil.Process().parents():
        cmd = p.cmdline()
        if len(cmd) >= 3 and cmd[1:3] == ["-m", "scoop"]:
            return float(sum(p.cpu_times()[:2]))
    return float("nan")


def main() -> None:
    size: dict[str, Any] = json.loads(sys.argv[1])
    out_path = sys.argv[2]
    t_main = time.time()
    futures.submit(noop, 1).result()
    t_first = time.time()
    res: dict[str, Any] = {"t_main": t_main, "t_first": t_first}
    for i in range(20):
        futures.submit(noop, i).result()

    n = size["submit"]
    t = time.perf_counter()
    fs = [futures.submit(noop, i) for i in range(n)]
    for f in fs:
        f.result()
    res["submit"] = n / (time.perf_counter() - t)

    n = size["map"]
    t = time.perf_counter()
    for _ in futures.map(noop, range(n)):
        pass
    res["map1"] = n / (time.perf_counter() - t)

    n = size["map"] * 5
    k = max(1, n // (WORKERS * 8))
    items = list(range(n))
    chunks = [items[i : i + k] for i in range(0, n, k)]
    t = time.perf_counter()
    for _ in futures.map(run_chunk, [noop] * len(chunks), chunks):
        pass
    res["mapchunk"] = n / (time.perf_counter() - t)

    times = []
    here = 0
    me = os.getpid()
    for i in range(size["rtt"]):
        t = time.perf_counter()
        ran_in = futures.submit(pid, i).result()
        times.append(time.perf_counter() - t)
        here += ran_in == me
    res["rtt"] = statistics.median(times) * 1e6
    # SCOOP's origin runs queued tasks itself while it waits: how many never left this process?
    res["rtt_ran_here"] = here / size["rtt"]

    import numpy as np

    # As workloads.array_mb_s: a new array per echo; the first, and the median of the last 3 of 6.
    n = size["array_mib"] * 1024 * 1024 // 8
    list(futures.map(echo, [np.ones(8)] * 8))
    rates = []
    res["array_ran_here"] = 0
    for i in range(6):
        a = np.full(n, float(i + 1))
        t = time.perf_counter()
        b = futures.submit(echo, a).result()
        rates.append(2 * a.nbytes / (time.perf_counter() - t) / 1e6)
        assert b.shape == a.shape and b[-1] == i + 1
        res["array_ran_here"] += b is a  # the very same object: it never left this process
        del a, b
    res["array_first"] = rates[0]
    res["array"] = statistics.median(rates[-3:])
    res["array_echoes_mb_s"] = rates

    n, cost = size["cpu_tasks"], size["cpu_ms"] / 1000
    c0 = _launcher_cpu()
    t = time.perf_counter()
    list(futures.map(burn, [cost] * n))
    wall = time.perf_counter() - t
    res["cpu"] = 100 * (n * cost / WORKERS) / wall
    res["broker_cpu"] = 100 * (_launcher_cpu() - c0) / wall

    futures.submit(nested_scoop, 4).result()  # warm
    res["nested"] = 1000 * statistics.median(
        futures.submit(nested_scoop, 4).result() for _ in range(size["nested_reps"])
    )
    res["t_end"] = time.time()
    with open(out_path, "w") as fh:
        json.dump(res, fh)


if __name__ == "__main__":
    main()
