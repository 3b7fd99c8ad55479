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
import sys
import time
import warnings

import numpy as np

from benchmarks import as_script

MB = int(os.environ.get("LARGE_GLOBALS_MB", "20"))
DATA = np.arange(MB * 10**6 // 8, dtype=np.float64)
CONTENDERS = ["scoopexec", "ProcessPoolExecutor", "loky"]
STEPS = ["first", "map 200", "20 submits"]


def read(i: int) -> float:
    return float(DATA[i])


def child(name: str) -> dict[str, float]:
    """The three times, in seconds, with ``name``'s pool (this process is the script)."""
    warnings.simplefilter("ignore")  # (scoopexec's LargeFunctionWarning: the point here)
    t = time.perf_counter()
    ex = as_script.pool(name)
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
    names = as_script.contenders(a.only, CONTENDERS, ap.error)
    raw = as_script.run(__file__, names, a.rounds, env={"LARGE_GLOBALS_MB": str(a.mb)})
    title = (
        f"A function of the script reading a {a.mb} MB global, 2 workers ({a.rounds} rounds; "
        "median, [spread]; ratio: the contender's time / scoopexec's, median of rounds)"
    )
    print(as_script.table(raw, STEPS, title, "step", lambda v: f"{v:.3f}", lambda o, s: o / s, " s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
