"""Submits of the script's own function, side by side with those of a module's function.

    python -m benchmarks.script_functions [--tasks 5000 --rounds 3 --only scoopexec,ProcessPoolExecutor,loky]

The benchmarks' submit row maps a function of an importable module (benchmarks/tasks.py), which
every library pickles by name.  A user's script more often submits a function it defines itself:
``__main__.step`` here, which calls a helper and reads a constant of the script, as such
functions do; ``__main__.configure``, which has keyword-only defaults and builds a dataclass of
the script whose field has a ``default_factory`` (``Config``); or passes instances of its own
classes (``Params``, a dataclass of the script, here to the module's function).  scoopexec and
loky pickle those by value (cloudpickle: the code, and the globals it reads, so that a worker
sees them as they are at the submit); ProcessPoolExecutor by name (its workers are forks of the
script, or import it).  Each contender runs in a fresh interpreter per round, as this file run as
a script, on 2 warm workers: ``--tasks`` submits of ``step``, then of ``configure``, then of the
module's ``noop``, then of ``noop`` with a ``Params`` argument, each batch gathered.  Printed:
tasks per second (submit to last result), median and spread over rounds, and scoopexec's ratio to
each other contender (scoopexec's rate / theirs, the median of per-round ratios).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import as_script  # noqa: E402
from benchmarks.tasks import noop  # noqa: E402

CONTENDERS = ["scoopexec", "ProcessPoolExecutor", "loky"]
STEPS = [
    "script function", "script function using a dataclass", "module function", "script dataclass argument",
]  # fmt: skip
OFFSET = 3


@dataclasses.dataclass
class Params:
    a: float
    b: int = 2


@dataclasses.dataclass
class Config:
    size: int
    tags: list[str] = dataclasses.field(default_factory=list)


def configure(x: int, *, scale: int = 2) -> int:
    return Config(x * scale).size


def helper(x: int) -> int:
    return x * 2


def step(x: int) -> int:
    return helper(x) + OFFSET


def child(name: str, n: int) -> dict[str, float]:
    """Tasks per second of each step with ``name``'s pool (this process is the script)."""
    ex = as_script.pool(name)
    try:
        for fn, arg in ((step, 1), (configure, 1), (noop, 1), (noop, Params(1.0))):  # warm: each seen once
            [f.result() for f in [ex.submit(fn, arg) for i in range(20)]]
        out = {}
        cases = (
            ("script function", step, int, 2 * (n - 1) + OFFSET),
            ("script function using a dataclass", configure, int, 2 * (n - 1)),
            ("module function", noop, int, None),
            ("script dataclass argument", noop, lambda i: Params(float(i)), Params(float(n - 1))),
        )
        for label, fn, make, want in cases:
            t = time.perf_counter()
            futures = [ex.submit(fn, make(i)) for i in range(n)]
            last = [f.result() for f in futures][-1]
            out[label] = n / (time.perf_counter() - t)
            assert want is None or last == want, (label, last)
    finally:
        ex.shutdown(wait=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(CONTENDERS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.tasks < 1 or a.rounds < 1:
        ap.error("--tasks and --rounds must be >= 1")
    if a.child:
        print(json.dumps(child(a.child, a.tasks)))
        return 0
    names = as_script.contenders(a.only, CONTENDERS, ap.error)
    raw = as_script.run(__file__, names, a.rounds, ["--tasks", str(a.tasks)])
    title = (
        f"{a.tasks} submits, gathered, 2 workers ({a.rounds} rounds; tasks/s: median [spread]; "
        "ratio: scoopexec's rate / the contender's, median of rounds)"
    )
    print(as_script.table(raw, STEPS, title, "function", lambda v: f"{v:,.0f}", lambda o, s: s / o))
    return 0


if __name__ == "__main__":
    sys.exit(main())
