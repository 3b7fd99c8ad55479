"""DEAP's own example programs, serial against ``scoop_map`` (issue 17, "cheap evaluations").

Runs each example's ``main()`` unchanged except for ``toolbox.map``: the built-in map, then
``scoop_map`` with automatic chunking (its default), then ``scoop_map`` with one evaluation per
task (``chunksize=1``, as before automatic chunking), on a pool of ``--workers`` local workers
started beforehand (its start is not timed).  Each (example, mode) runs in a fresh process, in
an order rotated from round to round; the figures are wall times of ``main()`` and, per round,
their ratios to the built-in map's time in that round; the summary gives the medians of those
ratios.  Speed is reported, never asserted.

DEAP's examples are not installed with DEAP: point ``--examples`` at the ``examples`` folder of a
DEAP checkout (``git clone https://github.com/DEAP/deap``)::

    python -m benchmarks.deap_examples --examples ~/deap/examples --rounds 3
    python -m benchmarks.deap_examples --examples ~/deap/examples --cost 0.001   # + 1 ms per evaluation

``--cost S`` adds S seconds of busy work to every evaluation (the example's own result is kept),
to see where parallel evaluation starts to pay.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

EXAMPLES = ("gp/symbreg.py", "es/cma_minfct.py")
MODES = ("builtin", "auto", "chunksize=1")


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _costly(evaluate: Any, seconds: float, *args: Any, **kwargs: Any) -> Any:
    _busy(seconds)
    return evaluate(*args, **kwargs)


def child(path: str, mode: str, workers: int, cost: float) -> float:
    """Run one example's main() with ``toolbox.map`` set for ``mode``; its wall time."""
    # Imported as a module from its folder (the workers' too: they start there), so that main()
    # does not run on import and its functions travel by reference, as a script's do (workers
    # import a script as __mp_main__); DEAP >= 1.4 sends its creator classes by value.
    folder, name = os.path.split(os.path.abspath(path))
    os.chdir(folder)
    sys.path.insert(0, folder)
    ns = vars(importlib.import_module(os.path.splitext(name)[0]))
    toolbox = ns["toolbox"]
    if cost > 0:
        toolbox.register("evaluate", functools.partial(_costly, toolbox.evaluate, cost))
    quiet = contextlib.redirect_stdout(io.StringIO())
    if mode == "builtin":
        with quiet:
            start = time.perf_counter()
            ns["main"]()
            return time.perf_counter() - start
    from scoopexec import ScoopExecutor, scoop_map

    chunk: dict[str, Any] = {} if mode == "auto" else {"chunksize": 1}
    toolbox.register("map", functools.partial(scoop_map, **chunk))
    with ScoopExecutor(max_workers=workers) as ex:
        list(ex.map(abs, range(4 * workers)))  # the workers are up
        with quiet:
            start = time.perf_counter()
            ns["main"]()
            return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", default=os.environ.get("DEAP_EXAMPLES", "deap/examples"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cost", type=float, default=0.0, help="seconds of busy work added per evaluation")
    ap.add_argument("--only", default=",".join(EXAMPLES))
    ap.add_argument("--modes", default=",".join(MODES), help="builtin (always run), auto, chunksize=1")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.workers, args.cost)))
        return 0
    examples = [e for e in args.only.split(",") if e]
    for e in examples:
        if not os.path.isfile(os.path.join(args.examples, e)):
            ap.error(f"{e} not found under --examples {args.examples} (a DEAP checkout's examples folder)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    modes_run = ("builtin", *[m for m in MODES[1:] if m in args.modes.split(",")])
    times: dict[str, dict[str, list[float]]] = {e: {m: [] for m in modes_run} for e in examples}
    for r in range(args.rounds):
        for e in examples:
            modes = modes_run[r % len(modes_run) :] + modes_run[: r % len(modes_run)]
            for mode in modes:
                cmd = [sys.executable, "-m", "benchmarks.deap_examples", "--child",
                       os.path.join(args.examples, e), mode, "--workers", str(args.workers),
                       "--cost", str(args.cost)]  # fmt: skip
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900, env=env)
                times[e][mode].append(float(out.stdout.strip().splitlines()[-1]))
            row = times[e]
            ratios = " ".join(f"{m} {row[m][-1] / row['builtin'][-1]:.2f}x" for m in modes_run[1:])
            print(f"round {r + 1} {e}: builtin {row['builtin'][-1]:.2f} s; {ratios}", flush=True)
    summary: dict[str, Any] = {}
    for e in examples:
        row = times[e]
        ratios = {m: [a / b for a, b in zip(row[m], row["builtin"], strict=True)] for m in modes_run[1:]}
        med = {m: statistics.median(r) for m, r in ratios.items()}
        worst = {m: max(r) for m, r in ratios.items()}
        summary[e] = {"seconds": row, "median_ratio_to_builtin": med, "worst_ratio_to_builtin": worst}
        print(f"{e} ({args.workers} workers, +{args.cost * 1000:g} ms per evaluation): builtin median "
              f"{statistics.median(row['builtin']):.2f} s; time / builtin's, "
              f"median (worst) of {args.rounds} rounds: "
              + ", ".join(f"{m} {v:.2f}x ({worst[m]:.2f}x)" for m, v in med.items()))  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"workers": args.workers, "cost": args.cost, "examples": summary}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
