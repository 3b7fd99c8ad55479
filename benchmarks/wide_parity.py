"""64 warm workers on sleeping tasks: utilisation, same round against ProcessPoolExecutor.

    python -m benchmarks.wide_parity --rounds 3 [--workers 64 --tasks 640 --ms 50]

As the benchmarks' "64 workers" row (every worker up and warm, then ``tasks`` tasks of
``sleep(ms)``: utilisation = (tasks x ms / workers) / wall), plus where the rest goes:
each task says when it started and ended, so the time is split into the hand-out of the
first tasks (batch start to each worker's first start), the gaps between a worker's
tasks (result sent -> next task started), and the tail (last task's end -> all results
in the client); and what the batch cost the machine, load-independent: wake-ups (voluntary
context switches of every thread of the workers and the client) and CPU time, per task.
``ceiling`` is the utilisation the tasks themselves allow (``ms`` over their mean run time:
``sleep()`` overshoots by a few hundred microseconds on a busy VM), with no hand-out, gap,
tail or imbalance at all; ``run_ms_median`` is a task's median run time.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import time
from typing import Any


def nap_where(seconds: float) -> tuple[int, float, float]:
    t0 = time.time()
    time.sleep(seconds)
    return os.getpid(), t0, time.time()


def _cost(pids: set[int]) -> dict[str, tuple[int, float]]:
    """Wake-ups (voluntary context switches) and CPU seconds (schedstat, ns-exact) of, apart:
    the workers' main threads (hub and tasks), the workers' other threads (a scoopexec worker's
    flusher, stdin and watchdog threads), and this process (client, and scoopexec's broker)."""
    out = {"worker_main": [0, 0.0], "worker_threads": [0, 0.0], "client": [0, 0.0]}
    for pid in [*pids, os.getpid()]:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            role = "client" if pid == os.getpid() else "worker_main" if int(tid) == pid else "worker_threads"
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    switches = int(f.read().split("voluntary_ctxt_switches:")[1].split()[0])
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    ns = int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                continue
            out[role][0] += switches
            out[role][1] += ns / 1e9
    return {k: (int(v[0]), float(v[1])) for k, v in out.items()}


def _make(name: str, workers: int) -> Any:
    if name == "scoopexec":
        from scoopexec import ScoopExecutor

        return ScoopExecutor(max_workers=workers)
    return cf.ProcessPoolExecutor(max_workers=workers)


def one(name: str, w: int, n: int, dur: float) -> dict[str, float]:
    ex = _make(name, w)
    try:
        seen: set[int] = set()
        t = time.time()
        while len(seen) < w and time.time() - t < 120:
            seen.update(p for p, _, _ in ex.map(nap_where, [0.02] * (2 * w)))
        time.sleep(0.2)
        c0 = _cost(seen)
        t = time.time()
        out = list(ex.map(nap_where, [dur] * n))
        wall = time.time() - t
        c1 = _cost(seen)
    finally:
        ex.shutdown()
    by: dict[int, list[tuple[float, float]]] = {}
    for p, a, b in out:
        by.setdefault(p, []).append((a, b))
    first = [min(r)[0] - t for r in by.values()]
    gaps = [
        runs[i + 1][0] - runs[i][1] for runs in (sorted(r) for r in by.values()) for i in range(len(runs) - 1)
    ]
    last_end = max(b for _, _, b in out)
    # What the tasks themselves took (sleep() overshoots on a busy VM): the utilisation that
    # workers with no hand-out, gaps, tail or imbalance at all would reach.
    mean_run = statistics.fmean(b - a for _, a, b in out)
    return {
        "util": 100 * (n * dur / w) / wall,
        "wall": wall,
        "used": len(by),
        "first_ms_median": 1000 * statistics.median(first),
        "first_ms_max": 1000 * max(first),
        "gap_ms_median": 1000 * statistics.median(gaps) if gaps else 0.0,
        "gap_ms_p90": 1000 * sorted(gaps)[int(0.9 * len(gaps))] if gaps else 0.0,
        "tail_ms": 1000 * (t + wall - last_end),
        "run_ms_median": 1000 * statistics.median(b - a for _, a, b in out),
        "ceiling": 100 * dur / mean_run,
        "wakeups_per_task": sum(c1[k][0] - c0[k][0] for k in c1) / n,
        "cpu_ms_per_task": 1000 * sum(c1[k][1] - c0[k][1] for k in c1) / n,
        **{f"wakeups_{k}": (c1[k][0] - c0[k][0]) / n for k in c1},
        **{f"cpu_ms_{k}": 1000 * (c1[k][1] - c0[k][1]) / n for k in c1},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--tasks", type=int, default=640)
    ap.add_argument("--ms", type=float, default=50)
    ap.add_argument("--only", default="scoopexec,PPE")
    a = ap.parse_args()
    names = a.only.split(",")
    ratios = []
    seen: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(a.rounds):
        res = {}
        for name in names if r % 2 == 0 else names[::-1]:
            res[name] = one(name, a.workers, a.tasks, a.ms / 1000)
            seen[name].append(res[name])
            one_decimal = ("util", "used", "ceiling")
            figures = " ".join(
                f"{k} {v:.1f}" if k in one_decimal else f"{k} {v:.3g}" for k, v in res[name].items()
            )
            print(f"round {r} {name:10s} {figures}", flush=True)
        if len(res) == 2:
            ratios.append(res["scoopexec"]["util"] / res["PPE"]["util"])
    for name, rows in seen.items():
        util, ceiling = (statistics.median(row[k] for row in rows) for k in ("util", "ceiling"))
        print(f"{name}: median utilisation {util:.1f} %, ceiling {ceiling:.1f} % (the tasks' run times)")
    if ratios:
        print(f"median utilisation scoopexec / PPE: {statistics.median(ratios):.3f} ({a.rounds} rounds)")


if __name__ == "__main__":
    main()
