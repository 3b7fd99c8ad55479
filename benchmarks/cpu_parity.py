"""CPU-bound parity with ProcessPoolExecutor, batch by batch, with the hand-out traced.

    python -m benchmarks.cpu_parity --rounds 5 [--tasks 16 --seconds 0.25 --workers 2]

Each round builds a fresh pool of each contender (order alternating from round to
round), maps ``burn`` over ``tasks`` items of ``seconds`` CPU twice ("first batch": the
pool just made, its workers maybe still starting; "second batch": the same pool again)
and records the wall time of each batch.  Each task reports its process and when it
started and ended, so the hand-out can be read: how many tasks each worker ran, and
the idle time of each worker between its tasks (a worker idle while tasks waited
elsewhere is what this is about).  Printed: per round the ratio scoopexec / PPE of each
batch's wall time (1.0 = parity, lower is better) and the split of tasks per worker;
at the end the medians of the ratios.

Where a first batch's extra time goes is printed beside it: ``start`` is, per worker,
the time from the executor's construction to its first task's start and the CPU its
process had used by then (``cpu``: a fresh interpreter's start-up and imports, or a
fork's few milliseconds), and ``client_cpu`` the CPU this process (client and, for
scoopexec, its broker thread) used during the batch.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import time
from collections import Counter
from typing import Any

from scoopexec import ScoopExecutor  # imported before any round, as concurrent.futures is


def burn_where(seconds: float) -> tuple[int, float, float, float]:
    """Burn ``seconds`` of CPU; say which process ran it, when (time.time()), and the CPU
    its process had used before it started."""
    t0 = time.time()
    before = time.process_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return os.getpid(), t0, time.time(), before


def _make(name: str, workers: int) -> Any:
    if name == "scoopexec":
        return ScoopExecutor(max_workers=workers)
    return cf.ProcessPoolExecutor(max_workers=workers)


def batch(ex: Any, n: int, seconds: float, built: float) -> dict[str, Any]:
    """One batch; ``built``: time.time() just before the executor was constructed, from which
    the first batch is timed (a pool may start its workers while it is built, or after)."""
    c = time.process_time()
    t = built if built else time.time()
    out = list(ex.map(burn_where, [seconds] * n))
    wall = time.time() - t
    client_cpu = time.process_time() - c
    per = Counter(p for p, _, _, _ in out)
    first = {p: min((a, cpu) for q, a, _, cpu in out if q == p) for p in per}
    # Per worker: time between the batch's start and its first task, and gaps between tasks.
    gaps = {}
    for p in per:
        runs = sorted((a, b) for q, a, b, _ in out if q == p)
        idle = runs[0][0] - t + sum(max(0.0, runs[i + 1][0] - runs[i][1]) for i in range(len(runs) - 1))
        gaps[p] = round(idle * 1000, 1)
    return {
        "wall": wall,
        "split": sorted(per.values(), reverse=True),
        "idle_ms": sorted(gaps.values()),
        # per worker: ms from construction to its first task here, ms of CPU its process used before
        "start": sorted((round(1000 * (a - t)), round(1000 * cpu)) for a, cpu in first.values()),
        "client_cpu_ms": round(1000 * client_cpu),
    }


def _show(b: dict[str, Any], first: bool) -> str:
    text = f"{b['wall']:.3f}s {b['split']} idle {b['idle_ms']}"
    if first:
        text += " start " + ",".join(f"{a}ms/cpu {c}ms" for a, c in b["start"])
    return text + f" client_cpu {b['client_cpu_ms']}ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=0.25)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    ratios: dict[str, list[float]] = {"first": [], "second": []}
    start_cpu: dict[str, list[int]] = {"scoopexec": [], "PPE": []}
    for r in range(a.rounds):
        names = ["scoopexec", "PPE"] if r % 2 == 0 else ["PPE", "scoopexec"]
        res: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            built = time.time()
            ex = _make(name, a.workers)
            try:
                first = batch(ex, a.tasks, a.seconds, built)
                res[name] = [first, batch(ex, a.tasks, a.seconds, 0.0)]
            finally:
                ex.shutdown()
        for name in names:
            start_cpu[name] += [c for _, c in res[name][0]["start"]]
        for i, key in enumerate(["first", "second"]):
            ratios[key].append(res["scoopexec"][i]["wall"] / res["PPE"][i]["wall"])
        print(
            f"round {r}: first {ratios['first'][-1]:.3f} second {ratios['second'][-1]:.3f}  "
            + "  ".join(
                f"{n}: " + " | ".join(_show(b, i == 0) for i, b in enumerate(res[n]))
                for n in ("scoopexec", "PPE")
            ),
            flush=True,
        )
    print(
        f"median scoopexec/PPE wall: first batch {statistics.median(ratios['first']):.3f}, "
        f"second batch {statistics.median(ratios['second']):.3f} ({a.rounds} rounds; spread first "
        f"{min(ratios['first']):.3f}-{max(ratios['first']):.3f}, second "
        f"{min(ratios['second']):.3f}-{max(ratios['second']):.3f})"
    )
    print(
        "median CPU a worker process used before its first task: "
        + ", ".join(f"{n} {statistics.median(v)} ms" for n, v in start_cpu.items() if v)
    )


if __name__ == "__main__":
    main()
