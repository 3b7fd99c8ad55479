"""What recording a timeline costs the broker, without the noise of a live pool.

    python benchmarks/trace_replay.py [--tasks 64] [--rounds 100 400]   # needs valgrind; about a minute

trace_overhead.py ``--instructions`` counts a whole client process, whose
instruction count moves by a few per cent from run to run with how the pool
happened to batch (under valgrind the client runs some 50 times slower than
its workers), more than the recorder costs.  This replays what the broker
does for tiny tasks on a real Ledger, the same messages every run: a SUBMIT
of ``--tasks`` tasks, their dispatch in one TASKS message (TraceRecorder.on_dispatch
with its header, as Broker._send_tasks calls it), a RESULT message of them
decoded as the broker decodes it, Ledger.finish collecting the tasks finished,
TraceRecorder.on_finished.  Valgrind counts the process at two numbers of
rounds and the difference is divided by the tasks between them, so start-up
cancels; the counts repeat to within a few instructions a task.  Modes: "off"
(no recorder, no list of finished tasks: the broker's path with trace off),
"rec" (recording, no file) and "binary" (recording, then the file written).
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scoopexec.broker import scheduling  # noqa: E402
from scoopexec.broker.ledger import Ledger, task_entries  # noqa: E402
from scoopexec.trace import TraceRecorder  # noqa: E402
from scoopexec.wire import protocol as P  # noqa: E402

MODES = ("off", "rec", "binary")


def replay(mode: str, rounds: int, k: int, path: str) -> None:
    """``rounds`` rounds of ``k`` tiny tasks through the broker's books, recorded unless "off"."""
    ledger = Ledger(3)
    client = ledger.add_client(b"C", {"role": "client"}, [b"{}", b""])
    worker = ledger.add_worker(b"W" * 5, {"name": "w", "pid": 1, "host": "h"})
    fn = pickle.dumps(os.getpid)  # a function pickled by reference, as a module's function is
    rec = TraceRecorder(path) if mode != "off" else None
    result = pickle.dumps(None)
    tid = 0
    for r in range(rounds):
        ledger.submit(b"C", [((tid + i, 0, 2), [fn, pickle.dumps((tid + i,))]) for i in range(k)], client)
        tid += k
        ledger.grant(worker, k)
        batch: list = []
        for w, batch in scheduling.dispatch(ledger, lambda tasks: ()):
            frames: list = [b""]
            flat = task_entries(batch, frames)
            frames[0] = P.pack_flat(P.TASKS, len(batch), flat)
            if rec is not None:
                rec.on_dispatch(w, batch, flat, frames[0])
        entries = [(t.btid, P.OK, 1, 1.7e9 + r, 1e-5) for t in batch]
        msg = P.decode([P.pack(P.RESULT, entries, k), *[result] * len(entries)])
        done: list | None = None if rec is None else []
        ledger.finish(worker, msg.parts(), {}, done)
        if rec is not None:
            rec.on_finished(worker, msg.entries, msg.frames, done or [])
    if mode == "binary" and rec is not None:
        rec.write()
    if ledger.tasks:
        raise RuntimeError(f"{len(ledger.tasks)} tasks were not finished: the replay is wrong")


def count(mode: str, rounds: int, k: int) -> int:
    """Instructions valgrind counts in a process replaying ``rounds`` rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        cg = os.path.join(tmp, "cg.out")
        subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "-q", f"--cachegrind-out-file={cg}",
             sys.executable, os.path.abspath(__file__), "replay", mode, str(rounds), str(k),
             os.path.join(tmp, "run.trace")],
            check=True, stdout=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        with open(cg) as f:
            return next(int(line.split()[1]) for line in f if line.startswith("summary:"))


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["replay"]:
        replay(argv[1], int(argv[2]), int(argv[3]), argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=64, help="tasks a message (a worker's credit: 64)")
    ap.add_argument("--rounds", type=int, nargs=2, default=(100, 400), help="the two numbers of rounds")
    args = ap.parse_args(argv)
    small, large = args.rounds
    tasks = (large - small) * args.tasks
    per = {mode: (count(mode, large, args.tasks) - count(mode, small, args.tasks)) / tasks for mode in MODES}
    off = per["off"]
    print(f"Broker's books, {args.tasks}-task messages, instructions per task counted by valgrind: "
          f"trace off {off:,.0f}; recording +{per['rec'] - off:,.0f}; recording and writing the binary "
          f"file +{per['binary'] - off:,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
