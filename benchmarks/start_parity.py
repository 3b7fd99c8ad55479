"""Time from building a pool to its last worker's first task, and the CPU its processes used.

    python -m benchmarks.start_parity [--workers 2 --rounds 9]

Same rounds, order rotating: scoopexec with its workers forked from a template that is a fork
of the client (the default when it runs one thread, deploy/clientfork.py), from a template that
is a fresh interpreter (SCOOPEXEC_WORKER_START=template, deploy/forkstart.py), scoopexec with
every worker a fresh interpreter (SCOOPEXEC_WORKER_START=spawn), and ProcessPoolExecutor.
Each round builds a pool, maps one 0.1 s nap per worker, and shuts it down; printed per
contender: the median (and spread) of the time from construction to the last worker's first
task, and the CPU time of the child processes (RUSAGE_CHILDREN: a pool's whole life, start-up,
task and exit), which load does not change much.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor


def nap_where(_: object) -> tuple[int, float]:
    t = time.time()
    time.sleep(0.1)
    return os.getpid(), t


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one(mode: str, workers: int) -> tuple[float, int, float]:
    from scoopexec import ScoopExecutor

    if mode in ("spawn", "template"):
        os.environ["SCOOPEXEC_WORKER_START"] = mode
    else:
        os.environ.pop("SCOOPEXEC_WORKER_START", None)
    c0 = _children_cpu()
    t0 = time.time()
    ex = ProcessPoolExecutor(workers) if mode == "PPE" else ScoopExecutor(max_workers=workers)
    firsts: dict[int, float] = {}
    for pid, t in ex.map(nap_where, range(workers)):
        firsts[pid] = min(t, firsts.get(pid, t))
    ex.shutdown()
    return 1000 * (max(firsts.values()) - t0), len(firsts), 1000 * (_children_cpu() - c0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args()
    modes = ["fork", "template", "spawn", "PPE"]
    res: dict[str, list[tuple[float, int, float]]] = {m: [] for m in modes}
    for r in range(a.rounds):
        for m in modes[r % len(modes) :] + modes[: r % len(modes)]:
            res[m].append(one(m, a.workers))
    for m in modes:
        v = res[m]
        first = [x[0] for x in v]
        print(
            f"{m:8s} {a.workers} workers: last worker's first task {statistics.median(first):.0f} ms "
            f"(spread {min(first):.0f}-{max(first):.0f}), workers used {min(x[1] for x in v)}-"
            f"{max(x[1] for x in v)}, CPU of child processes {statistics.median([x[2] for x in v]):.0f} ms "
            f"({a.rounds} rounds)"
        )


if __name__ == "__main__":
    main()
