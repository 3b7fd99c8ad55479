"""Instructions per task, counted by valgrind (cachegrind): a figure other jobs cannot disturb.

    python -m benchmarks.instructions                  # this tree, every measure
    python -m benchmarks.instructions --tree OTHER     # another checkout (its own code and benchmarks)
    python -m benchmarks.instructions --only route,rtt --repeat 2

Wall-clock figures on a shared 2-core machine move by 20 % or more with the load (see
layout-comparison.md); the number of machine instructions a process executes per task hardly
moves with it.  Each measure runs twice, with a small and a large number of tasks, and reports
(instructions at the large count - at the small) / (difference in tasks): start-up, imports,
warm-up and shut-down cancel out.  What it does not see: time spent waiting (poll, locks, the
other process), cache misses and system calls' cost, so it complements the benchmarks' timings
and does not replace them.  Needs ``valgrind`` on PATH; under it everything runs ~50x slower,
which changes how messages batch, so single figures vary by a few per cent between repeats.

Measures:

* ``route``: the standalone broker process of benchmarks/routing.py (SUBMIT batches of 64
  pre-pickled no-op tasks from a protocol-level client, RESULT from a protocol-level worker);
* ``submit``, ``rtt``, ``map``: the client process of a ScoopExecutor(2) (which holds the
  embedded broker): submit N no-op tasks then wait for all; N ``submit().result()`` in
  sequence; ``map(noop, range(N))``;
* ``rtt-workers``: the two worker processes during ``rtt``, summed;
* ``nap``, ``nap-workers``: the client, and the two workers, running N tasks of
  ``sleep(0.01)`` submitted at once (the 64-worker row's kind of task: long, idle, back to
  back on each worker): what the machinery costs per long task, wake-ups included.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SIZES = {"route": (5000, 25000), "submit": (1000, 5000), "rtt": (500, 2500), "map": (2000, 10000)}
SIZES["rtt-workers"] = SIZES["rtt"]
SIZES["nap"] = SIZES["nap-workers"] = (40, 200)
VALGRIND = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "-q"]


def client(mode: str, n: int) -> None:
    """The measured client (run as ``python -m benchmarks.instructions client MODE N``)."""
    from benchmarks.tasks import nap, noop
    from scoopexec import ScoopExecutor

    with ScoopExecutor(2) as ex:
        for i in range(50):  # both workers started and warm
            ex.submit(noop, i).result()
        if mode == "submit":
            for f in [ex.submit(noop, i) for i in range(n)]:
                f.result()
        elif mode == "rtt":
            for i in range(n):
                ex.submit(noop, i).result()
        elif mode == "nap":
            for f in [ex.submit(nap, 0.01) for _ in range(n)]:
                f.result()
        elif mode == "map":
            for _ in ex.map(noop, range(n)):
                pass


def _summary(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"{path}: no summary line")


def _count(tree: str, mode: str, n: int, tmp: str) -> int:
    # SCOOPEXEC_WORKER_START=template: valgrind follows fork(), so workers forked from the
    # measured client (deploy/clientfork.py) would run under it, ~50x slower, and keep the
    # client's command line (counted as the client); a template started by exec runs natively.
    env = dict(os.environ, PYTHONPATH=tree, SCOOPEXEC_WORKER_START="template")
    out = os.path.join(tmp, f"{mode}-{n}")
    os.makedirs(out)
    if mode == "route":
        code = (
            "import subprocess, sys\n"
            "real = subprocess.Popen\n"
            "class Popen(real):\n"
            "    def __init__(self, args, *a, **k):\n"
            "        if 'broker' in args:\n"
            f"            args = {VALGRIND!r} + ['--cachegrind-out-file={out}/broker.out'] + list(args)\n"
            "        super().__init__(args, *a, **k)\n"
            "subprocess.Popen = Popen\n"
            "from benchmarks import routing\n"
            f"routing.measure(tasks={n}, timeout=900)\n"
        )
        subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True)
        return _summary(os.path.join(out, "broker.out"))
    workers = mode.endswith("-workers")
    cmd = [*VALGRIND, f"--cachegrind-out-file={out}/%p.out"]
    if workers:
        cmd.append("--trace-children=yes")
    # This file by its path (the other tree may not have it), that tree's scoopexec and tasks.
    cmd += [sys.executable, os.path.abspath(__file__), "client", mode.split("-", maxsplit=1)[0], str(n)]
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    total = 0
    for path in glob.glob(os.path.join(out, "*.out")):
        with open(path) as f:
            head = f.read(4096)
        # Workers started by command say " worker "; those forked from a template (deploy/
        # forkstart.py) keep its command line, which names scoopexec.worker.main: the template
        # itself counts with them, a constant that the difference between two sizes cancels.
        cmd_line = head.split("cmd:", 1)[-1].split("\n", 1)[0] + " "
        is_worker = " worker " in cmd_line or "scoopexec.worker.main" in cmd_line
        if is_worker == workers:
            total += _summary(path)
    return total


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["client"]:
        client(argv[1], int(argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=ROOT, help="the checkout to measure (default: this one)")
    ap.add_argument("--only", default=",".join(SIZES), help="measures, comma-separated")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measure")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    tree = os.path.abspath(args.tree)
    for mode in args.only.split(","):
        small, large = SIZES[mode]
        for _ in range(args.repeat):
            for _attempt in range(3):
                try:
                    with tempfile.TemporaryDirectory(prefix="scoopexec-instr-") as tmp:
                        counts = _count(tree, mode, large, tmp), _count(tree, mode, small, tmp)
                    per_task = (counts[0] - counts[1]) / (large - small)
                    break
                except RuntimeError as e:
                    # A worker killed at shut-down before valgrind wrote its counts: measure again.
                    print(f"{mode}: {e}; measuring again", file=sys.stderr)
            else:
                sys.exit(f"{mode}: no complete measurement in 3 attempts")
            print(f"{mode:12s} {per_task:10,.0f} instructions per task", flush=True)


if __name__ == "__main__":
    main()
