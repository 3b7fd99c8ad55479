"""Side-by-side benchmarks: scoopexec and its peers, same workloads, same run.

    python benchmarks/run.py [--rounds 5] [--quick] [--json out.json] [--only scoopexec,ppe]

Contenders are created fresh for each round and run in alternating order, so
that a noisy neighbour hurts everyone alike; results are medians over rounds,
and ratios are against ProcessPoolExecutor measured in the same run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.tasks import burn, echo, noop  # noqa: E402

WORKERS = 2


def contenders() -> dict[str, Callable[[], cf.Executor]]:
    from scoopexec import ScoopExecutor

    out: dict[str, Callable[[], cf.Executor]] = {
        "scoopexec": lambda: ScoopExecutor(WORKERS),
        "ProcessPoolExecutor": lambda: cf.ProcessPoolExecutor(WORKERS),
    }
    try:
        import loky

        out["loky"] = lambda: loky.ProcessPoolExecutor(WORKERS)
    except ImportError:
        pass
    return out


# ---------------------------------------------------------------- workloads
def submit_throughput(ex: cf.Executor, size: dict[str, int]) -> float:
    n = size["submit"]
    t = time.perf_counter()
    fs = [ex.submit(noop, i) for i in range(n)]
    for f in fs:
        f.result()
    return n / (time.perf_counter() - t)


def map_chunk1(ex: cf.Executor, size: dict[str, int]) -> float:
    n = size["map"]
    t = time.perf_counter()
    for _ in ex.map(noop, range(n)):
        pass
    return n / (time.perf_counter() - t)


def map_chunked(ex: cf.Executor, size: dict[str, int]) -> float:
    n = size["map"] * 5
    t = time.perf_counter()
    for _ in ex.map(noop, range(n), chunksize=max(1, n // (WORKERS * 8))):
        pass
    return n / (time.perf_counter() - t)


def round_trip_us(ex: cf.Executor, size: dict[str, int]) -> float:
    times = []
    for i in range(size["rtt"]):
        t = time.perf_counter()
        ex.submit(noop, i).result()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def array_mb_s(ex: cf.Executor, size: dict[str, int]) -> float:
    import numpy as np

    a = np.ones(size["array_mib"] * 1024 * 1024 // 8)
    best = []
    for _ in range(3):
        t = time.perf_counter()
        out = ex.submit(echo, a).result()
        best.append(time.perf_counter() - t)
        assert out.shape == a.shape
    # to the worker and back: 2 x the bytes
    return 2 * a.nbytes / min(best) / 1e6


def cpu_efficiency(ex: cf.Executor, size: dict[str, int]) -> float:
    n, cost = size["cpu_tasks"], size["cpu_ms"] / 1000
    t = time.perf_counter()
    list(ex.map(burn, [cost] * n))
    ideal = n * cost / WORKERS
    return 100 * ideal / (time.perf_counter() - t)


WORKLOADS: dict[str, tuple[Callable[[cf.Executor, dict[str, int]], float], str, bool]] = {
    "submit": (submit_throughput, "tasks/s", True),
    "map chunksize=1": (map_chunk1, "items/s", True),
    "map large chunks": (map_chunked, "items/s", True),
    "round trip p50": (round_trip_us, "us", False),
    "64 MiB array there and back": (array_mb_s, "MB/s", True),
    "CPU-bound efficiency": (cpu_efficiency, "%", True),
}

FULL = {"submit": 5000, "map": 20000, "rtt": 500, "array_mib": 64, "cpu_tasks": 16, "cpu_ms": 250}
QUICK = {"submit": 300, "map": 1000, "rtt": 30, "array_mib": 4, "cpu_tasks": 4, "cpu_ms": 20}


def start_and_first_result(factory: Callable[[], cf.Executor]) -> tuple[float, float]:
    t = time.perf_counter()
    ex = factory()
    ex.submit(noop, 1).result()
    first = time.perf_counter() - t
    t = time.perf_counter()
    ex.shutdown(wait=True)
    return first, time.perf_counter() - t


def run(rounds: int, size: dict[str, int], only: list[str] | None) -> dict[str, Any]:
    cands = contenders()
    if only:
        cands = {k: v for k, v in cands.items() if k in only}
    raw: dict[str, dict[str, list[float]]] = {c: {w: [] for w in WORKLOADS} for c in cands}
    for c in cands:
        raw[c]["start + first result (s)"] = []
        raw[c]["shutdown (s)"] = []
    order = list(cands)
    for r in range(rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:
            first, stop = start_and_first_result(cands[name])
            raw[name]["start + first result (s)"].append(first)
            raw[name]["shutdown (s)"].append(stop)
            ex = cands[name]()
            try:
                for _ in range(20):
                    ex.submit(noop).result()  # warm up
                for w, (fn, _, _) in WORKLOADS.items():
                    raw[name][w].append(fn(ex, size))
            finally:
                ex.shutdown(wait=True)
            print(f"round {r + 1}/{rounds}: {name} done", file=sys.stderr, flush=True)
    med = {c: {w: statistics.median(v) for w, v in ws.items() if v} for c, ws in raw.items()}
    return {"medians": med, "raw": raw, "size": size, "rounds": rounds, "meta": _meta()}


def _meta() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "workers": WORKERS,
    }


def markdown(result: dict[str, Any]) -> str:
    med = result["medians"]
    names = list(med)
    base = "ProcessPoolExecutor"
    units = {w: (u, hi) for w, (_, u, hi) in WORKLOADS.items()}
    units["start + first result (s)"] = ("s", False)
    units["shutdown (s)"] = ("s", False)
    head = "| measure | " + " | ".join(names) + " | scoopexec / PPE |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for w, (unit, higher) in units.items():
        cells = []
        for n in names:
            v = med[n].get(w)
            cells.append("-" if v is None else _fmt(v, unit))
        ratio = ""
        if base in med and "scoopexec" in med and med[base].get(w):
            a, b = med["scoopexec"][w], med[base][w]
            ratio = f"{(a / b if higher else b / a):.2f}x" + (" (higher is better)" if False else "")
        lines.append(f"| {w} ({unit}) | " + " | ".join(cells) + f" | {ratio} |")
    m = result["meta"]
    lines.append("")
    lines.append(
        f"{m['date']}, commit {m['commit']}, Python {m['python']}, {m['machine']}, "
        f"{m['workers']} workers, median of {result['rounds']} rounds. Ratios > 1 mean scoopexec is better "
        "(for times and latency the ratio is PPE / scoopexec)."
    )
    return "\n".join(lines)


def _fmt(v: float, unit: str) -> str:
    if unit in ("s",):
        return f"{v:.3f}"
    if unit in ("%",):
        return f"{v:.1f}"
    return f"{v:,.0f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--json", help="write raw results and medians here")
    ap.add_argument("--only", help="comma-separated contender names")
    args = ap.parse_args(argv)
    result = run(args.rounds, QUICK if args.quick else FULL, args.only.split(",") if args.only else None)
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
