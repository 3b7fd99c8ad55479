"""What recording a timeline costs: tiny-task throughput with and without ``trace=``.

    python benchmarks/trace_overhead.py [--pairs 60] [--block 2000] [--pools 5] [--workers 2]
    python benchmarks/trace_overhead.py --instructions     # valgrind's count, which load does not move

Two measurements, because on a shared machine wall-clock throughput varies
from one second to the next by more than tracing costs:

* **toggled**: one pool with ``trace=``, whose recorder is switched off and
  on (``Broker.trace``, the attribute the broker tests) between blocks of
  ``--block`` tiny tasks; each "on" block is compared with the "off" block
  right before or after it, and the result is the median of those ratios.
  Neighbouring blocks share the same machine conditions, so noise from
  other processes largely cancels.  The client process's CPU time per task
  (all its threads: the submitting thread and the broker thread, where
  recording happens) is reported too; with tiny tasks that process is what
  bounds throughput.
* **fresh pools**: ``--pools`` rounds of a fresh pool without ``trace=`` and
  a fresh pool with it, in alternating order: the whole feature, end to end,
  including the cost of writing the file at shutdown (timed separately).

Both write the compact binary file (``trace="run.trace"``, the cheap one);
``--json`` writes the Chrome JSON (``trace="run.json"``) instead.
``--instructions`` counts both formats, and prints the bytes per task of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.tasks import noop  # noqa: E402
from scoopexec import ScoopExecutor  # noqa: E402


def run_submit(ex: ScoopExecutor, n: int) -> None:
    fs = [ex.submit(noop, i) for i in range(n)]
    for f in fs:
        f.result()


def run_map(ex: ScoopExecutor, n: int) -> None:
    for _ in ex.map(noop, range(n)):
        pass


WORKLOADS: dict[str, Callable[[ScoopExecutor, int], None]] = {
    "submit": run_submit,
    "map chunksize=1": run_map,
}


def timed(fn: Callable[[ScoopExecutor, int], None], ex: ScoopExecutor, n: int) -> tuple[float, float]:
    """(tasks/s, client CPU us per task)."""
    t, c = time.perf_counter(), time.process_time()
    fn(ex, n)
    return n / (time.perf_counter() - t), (time.process_time() - c) / n * 1e6


def toggled(pairs: int, block: int, workers: int, path: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with ScoopExecutor(workers, trace=path) as ex:
        broker = ex._session.broker  # type: ignore[attr-defined]
        recorder = broker.trace
        for _ in range(500):
            ex.submit(noop).result()  # warm up
        for name, fn in WORKLOADS.items():
            rate_ratio: list[float] = []
            cpu_ratio: list[float] = []
            rates: dict[bool, list[float]] = {True: [], False: []}
            cpus: dict[bool, list[float]] = {True: [], False: []}
            for p in range(pairs):
                got = {}
                for on in ((False, True) if p % 2 == 0 else (True, False)):
                    broker.trace = recorder if on else None
                    got[on] = timed(fn, ex, block)
                    rates[on].append(got[on][0])
                    cpus[on].append(got[on][1])
                rate_ratio.append(got[True][0] / got[False][0])
                cpu_ratio.append(got[True][1] / got[False][1])
            out[name] = {
                "tasks/s off": statistics.median(rates[False]),
                "tasks/s on": statistics.median(rates[True]),
                "rate ratio": statistics.median(rate_ratio),
                "cpu off": statistics.median(cpus[False]),
                "cpu on": statistics.median(cpus[True]),
                "cpu ratio": statistics.median(cpu_ratio),
            }
            print(f"toggled {name}: done", file=sys.stderr, flush=True)
        broker.trace = recorder
    return out


def fresh_pools(rounds: int, n: int, workers: int, path: str) -> tuple[dict[str, float], float, int]:
    """Median traced / untraced throughput per workload, shutdown time with the trace, file size."""
    ratios: dict[str, list[float]] = {k: [] for k in WORKLOADS}
    stops: list[float] = []
    for r in range(rounds):
        got: dict[bool, dict[str, float]] = {}
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            ex = ScoopExecutor(workers, trace=path if on else None)
            try:
                for _ in range(200):
                    ex.submit(noop).result()
                got[on] = {k: timed(fn, ex, n)[0] for k, fn in WORKLOADS.items()}
            finally:
                t = time.perf_counter()
                ex.shutdown(wait=True)
                if on:
                    stops.append(time.perf_counter() - t)
        for k in WORKLOADS:
            ratios[k].append(got[True][k] / got[False][k])
        print(f"fresh pools: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    medians = {k: statistics.median(v) for k, v in ratios.items()}
    return medians, statistics.median(stops), os.path.getsize(path)


def client(mode: str, n: int, path: str) -> None:
    """What ``--instructions`` counts: a pool (mode "off": not traced; "rec": traced, the file not
    written; "on": traced, writing ``path``, whose name chooses the format), n no-op tasks submitted
    then waited for."""
    with ScoopExecutor(2, trace=path if mode != "off" else None) as ex:
        for i in range(50):
            ex.submit(noop, i).result()
        for f in [ex.submit(noop, i) for i in range(n)]:
            f.result()
        if mode == "rec":
            ex._session.trace = None  # type: ignore[attr-defined]  # (what the pool writes at its end)


# Valgrind follows fork(): workers forked from the measured client (deploy/clientfork.py) would
# run under it too, ~50x slower (which changes how the client batches) and write to its output
# file.  A fresh template is started by exec, which valgrind does not follow: workers run natively.
UNFORKED = dict(os.environ, SCOOPEXEC_WORKER_START="template")


def instructions(small: int, large: int) -> tuple[dict[str, float], dict[str, float]]:
    """Instructions per task of the client process (submitting thread and broker thread), counted
    by valgrind with and without trace=, as benchmarks/instructions.py counts them: (count at
    ``large`` tasks - count at ``small``) / (large - small), so that start-up cancels out and what
    remains of writing the file at shut-down is its cost per task.  Modes: "off", "rec" (recording,
    no file), "binary" (run.trace), "json" (run.json).  Also returns each format's bytes per task,
    by the same difference."""
    out: dict[str, float] = {}
    size: dict[str, float] = {}
    for mode, name in (("off", ""), ("rec", "run.trace"), ("binary", "run.trace"), ("json", "run.json")):
        counts, sizes = [], []
        for n in (large, small):
            with tempfile.TemporaryDirectory() as tmp:
                cg = os.path.join(tmp, "cg.out")
                path = os.path.join(tmp, name or "run.trace")
                run = mode if mode in ("off", "rec") else "on"
                subprocess.run(
                    ["valgrind", "--tool=cachegrind", "--cache-sim=no", "-q", f"--cachegrind-out-file={cg}",
                     sys.executable, os.path.abspath(__file__), "client", run, str(n), path],
                    check=True, stdout=subprocess.DEVNULL, cwd=ROOT, env=UNFORKED,
                )  # fmt: skip
                with open(cg) as f:
                    counts.append(next(int(line.split()[1]) for line in f if line.startswith("summary:")))
                if os.path.exists(path):
                    sizes.append(os.path.getsize(path))
        out[mode] = (counts[0] - counts[1]) / (large - small)
        if len(sizes) == 2:
            size[mode] = (sizes[0] - sizes[1]) / (large - small)
        print(f"instructions: {mode} done", file=sys.stderr, flush=True)
    return out, size


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["client"]:
        client(argv[1], int(argv[2]), argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=60, help="off/on block pairs per workload (toggled)")
    ap.add_argument("--block", type=int, default=2000, help="tasks per block (toggled)")
    ap.add_argument("--pools", type=int, default=5, help="rounds of fresh pools (0: skip)")
    ap.add_argument("--tasks", type=int, default=20000, help="tasks per workload (fresh pools)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="trace to run.json (default: run.trace, binary)")
    ap.add_argument("--instructions", action="store_true",
                    help="only count instructions per task with valgrind (needs valgrind; minutes)")
    args = ap.parse_args(argv)
    if args.instructions:
        got, size = instructions(1000, 5000)
        off = got["off"]
        print(f"Client process (ScoopExecutor(2), 4,000 no-op tasks submitted then waited for), "
              f"instructions per task counted by valgrind: trace off {off:,.0f}; recording "
              f"{got['rec']:,.0f} ({got['rec'] / off:.3f}x); recording and writing the binary file "
              f"(trace='run.trace') {got['binary']:,.0f} ({got['binary'] / off:.3f}x), "
              f"{size['binary']:.0f} bytes a task; recording and writing the JSON (trace='run.json') "
              f"{got['json']:,.0f} ({got['json'] / off:.3f}x), {size['json']:.0f} bytes a task")  # fmt: skip
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run.json" if args.json else "run.trace")
        tog = toggled(args.pairs, args.block, args.workers, path)
        print(f"Recording on and off in one pool ({args.workers} workers), median of {args.pairs} "
              f"neighbouring pairs of {args.block}-task blocks:\n")  # fmt: skip
        print("| workload | tasks/s off | tasks/s on | on / off "
              "| client CPU off | client CPU on | on / off |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for k, v in tog.items():
            print(
                f"| {k} | {v['tasks/s off']:,.0f} | {v['tasks/s on']:,.0f} | {v['rate ratio']:.3f} | "
                f"{v['cpu off']:.1f} us | {v['cpu on']:.1f} us | {v['cpu ratio']:.3f} |"
            )
        if args.pools:
            ratios, stop, size = fresh_pools(args.pools, args.tasks, args.workers, path)
            each = ", ".join(f"{k} {r:.3f}" for k, r in ratios.items())
            print(f"\nFresh pools without and with trace=, median of {args.pools} rounds of "
                  f"{args.tasks:,} tasks per workload: {each} (traced / untraced throughput); "
                  f"shutdown writing the trace {stop:.2f} s, file {size / 1e6:.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
