"""A task function of the script that reads a large global: map and submits, side by side.

    python -m benchmarks.large_globals [--mb 20 --rounds 3 --only scoopexec,ProcessPoolExecutor,loky]

The script's own functions travel by value with the globals they read (cloudpickle: scoopexec
and loky), or by name (ProcessPoolExecutor: its workers are forks of the script, or import it).
Each contender runs in a fresh interpreter, as this file run as a script (so its function is
``__main__.read``, which reads ``DATA``, a NumPy array of ``--mb`` MB), on 2 workers: a first
task (the pool's start included), a map of 200 items with ``chunksize=1``, 20 submits, each
gathered.  Printed: the median and spread over rounds of each time, and scoopexec's ratio to
each other contender's (their time / scoopexec's, the median of per-round ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

import numpy as np

MB = int(os.environ.get("LARGE_GLOBALS_MB", "20"))
DATA = np.arange(MB * 10**6 // 8, dtype=np.float64)
CONTENDERS = ["scoopexec", "ProcessPoolExecutor", "loky"]
STEPS = ["first", "map 200", "20 submits"]


def read(i: int) -> float:
    return float(DATA[i])


def _pool(name: str) -> Any:
    if name == "scoopexec":
        from scoopexec import ScoopExecutor

        return ScoopExecutor(max_workers=2)
    if name == "loky":
        import loky

        return loky.get_reusable_executor(max_workers=2)
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(2)


def child(name: str) -> dict[str, float]:
    """The three times, in seconds, with ``name``'s pool (this process is the script)."""
    warnings.simplefilter("ignore")  # (scoopexec's LargeFunctionWarning: the point here)
    t = time.perf_counter()
    ex = _pool(name)
    try:
        assert ex.submit(read, 5).result() == 5.0
        out = {"first": time.perf_counter() - t}
        t = time.perf_counter()
        assert list(ex.map(read, range(200), chunksize=1)) == [float(i) for i in range(200)]
        out["map 200"] = time.perf_counter() - t
        t = time.perf_counter()
        futures = [ex.submit(read, i) for i in range(20)]
        assert [f.result() for f in futures] == [float(i) for i in range(20)]
        out["20 submits"] = time.perf_counter() - t
    finally:
        ex.shutdown(wait=True)
    return out


def run(names: list[str], mb: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    raw: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    env = dict(os.environ, LARGE_GLOBALS_MB=str(mb))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # (the order rotates)
            done = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", name],
                env=env, capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            raw[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{rounds}: {name} {raw[name][-1]}", file=sys.stderr, flush=True)
    return raw


def table(raw: dict[str, list[dict[str, float]]], mb: int) -> str:
    names = list(raw)
    lines = [
        f"A function of the script reading a {mb} MB global, 2 workers ({len(raw[names[0]])} rounds; "
        "median, [spread]; ratio: the contender's time / scoopexec's, median of rounds)",
        "| step | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for step in STEPS:
        cells = []
        for n in names:
            values = [r[step] for r in raw[n]]
            cell = f"{statistics.median(values):.3f} s [{min(values):.3f}-{max(values):.3f}]"
            if n != "scoopexec" and "scoopexec" in raw:
                ratios = [o[step] / s[step] for o, s in zip(raw[n], raw["scoopexec"], strict=True)]
                cell += f", {statistics.median(ratios):.2f}x"
            cells.append(cell)
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(CONTENDERS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child)))
        return 0
    names = [n for n in a.only.split(",") if n]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        ap.error(f"unknown contenders {sorted(unknown)}: choose among {CONTENDERS}")
    if "loky" in names:
        try:
            import loky  # noqa: F401
        except ImportError:
            print("loky is not installed: skipped", file=sys.stderr)
            names.remove("loky")
    print(table(run(names, a.mb, a.rounds), a.mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
