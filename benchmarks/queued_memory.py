"""What a queued task costs in memory, beyond its payload, in the client and in the broker.

    python benchmarks/queued_memory.py [--tasks 1000000] [--mode embedded,standalone] [--tracemalloc]

Both workers are held busy by a task that waits for a file, so every ``ex.submit(noop, i)``
after them stays queued: in the client (its future, its entry in the futures table) and in
the broker (its Task in the ledger, the queue, the frames of the pickled call).  The payload
-- the bytes of each task's frames as sent, pickled function and arguments -- is subtracted; what is
left is the bookkeeping per task, which issue 17 wants under 300 bytes in each of the client
and the broker.

* ``embedded``: ``ScoopExecutor(2)``; the broker is a thread of the client process, so the
  RSS growth of that process is client and broker together.  With ``--tracemalloc`` the
  Python allocations are split by the file that made them (client/..., broker/..., wire/...)
  -- slower, and the RSS then includes tracemalloc's own tables, so it is not reported.
* ``standalone``: ``python -m scoopexec broker`` in its own process and a
  ``ScoopExecutor(broker=..., max_workers=2)``: the client's Python allocations (tracemalloc:
  the client frees what it sent, and the allocator hands that memory to the futures, so its
  RSS says little) and the broker process's RSS growth, apart.

Figures are bytes per task: (RSS after the tasks are queued and taken in by the broker - RSS
before) / tasks - payload per task.  RSS moves by whole pages and the allocator keeps what it
freed earlier, so use 10^5 tasks or more.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import psutil  # noqa: E402

from benchmarks.tasks import noop  # noqa: E402
from scoopexec import ScoopExecutor  # noqa: E402


def hold(path: str, limit: float = 600.0) -> None:
    """Keep a worker busy until ``path`` exists (at most ``limit`` seconds)."""
    end = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.01)


def payload_per_task(n: int) -> float:
    """Bytes of the frames of one task, as sent: its pickled function and its arguments."""
    fn = len(pickle.dumps(noop, 5))
    sample = range(0, n, max(1, n // 1000))
    return fn + sum(len(pickle.dumps(((i,), None), 5)) for i in sample) / len(sample)


def _queued(ex: ScoopExecutor, n: int, timeout: float = 600.0) -> None:
    """Wait until the broker holds the n tasks (embedded: its ledger; remote: the client sent them)."""
    session: Any = ex._session
    end = time.monotonic() + timeout
    broker = getattr(session, "broker", None)
    while time.monotonic() < end:
        if broker is not None:
            if len(broker.ledger.tasks) >= n:
                return
        elif not session.outbox:
            return
        time.sleep(0.05)
    raise TimeoutError("the tasks were not taken in")


def _start_holders(ex: ScoopExecutor, path: str) -> list[Any]:
    held = [ex.submit(hold, path) for _ in range(2)]
    end = time.monotonic() + 60
    while not all(f.running() for f in held) and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.3)  # both workers are in the task
    return held


def embedded(n: int, trace_py: bool) -> dict[str, float]:
    me = psutil.Process()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        release = os.path.join(tmp, "release")
        with ScoopExecutor(2) as ex:
            held = _start_holders(ex, release)
            for i in range(2000):  # warm the allocator's pools and the caches
                ex.submit(noop, i)
            _queued(ex, 2002)
            gc.collect()
            if trace_py:
                tracemalloc.start(1)
                before_snap = tracemalloc.take_snapshot()
            rss0 = me.memory_info().rss
            t = time.perf_counter()
            futs = [ex.submit(noop, i) for i in range(n)]
            _queued(ex, n + 2002)
            out["submit s"] = time.perf_counter() - t
            gc.collect()
            rss1 = me.memory_info().rss
            if trace_py:
                snap = tracemalloc.take_snapshot()
                tracemalloc.stop()
                stats = snap.compare_to(before_snap, "filename")
                groups: dict[str, int] = {}
                for s in stats:
                    name = s.traceback[0].filename
                    rel = name.split("scoopexec" + os.sep, 1)[-1] if "scoopexec" + os.sep in name else name
                    part = rel.split(os.sep)[0] if os.sep in rel else os.path.basename(rel)
                    groups[part] = groups.get(part, 0) + s.size_diff
                total = sum(groups.values())
                out["python bytes/task (all)"] = total / n
                out["  by the file that allocated (payload not subtracted), bytes/task"] = 0.0
                for part, size in sorted(groups.items(), key=lambda kv: -kv[1])[:8]:
                    out[f"  python bytes/task in {part}"] = size / n
            else:
                out["client+broker RSS bytes/task"] = (rss1 - rss0) / n
            open(release, "w").close()
            ex.shutdown(wait=True, cancel_futures=True)
            del futs, held
    return out


def standalone(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        release = os.path.join(tmp, "release")
        endpoint = f"ipc://{tmp}/broker.sock"
        proc = subprocess.Popen([sys.executable, "-m", "scoopexec", "broker", "--bind", endpoint,
                                 "--max-queued", "0", "-q"])  # fmt: skip
        try:
            bproc = psutil.Process(proc.pid)
            for _ in range(500):
                if os.path.exists(endpoint[len("ipc://"):]):
                    break
                time.sleep(0.02)
            with ScoopExecutor(broker=endpoint, max_workers=2) as ex:
                held = _start_holders(ex, release)
                for i in range(2000):
                    ex.submit(noop, i)
                _queued(ex, 0)
                time.sleep(1.0)
                gc.collect()
                b0 = bproc.memory_info().rss
                tracemalloc.start(1)
                py0 = tracemalloc.get_traced_memory()[0]
                futs = [ex.submit(noop, i) for i in range(n)]
                _queued(ex, 0)
                gc.collect()
                py1 = tracemalloc.get_traced_memory()[0]
                tracemalloc.stop()
                # The broker has taken them in once its RSS stays the same for 3 s (it gives
                # back what the burst left free within EVERY = 2 s: broker/memory.py).
                last, same, end = -1, 0, time.monotonic() + 300
                while time.monotonic() < end and same < 3:
                    cur = bproc.memory_info().rss
                    same = same + 1 if cur == last else 0
                    last = cur
                    time.sleep(1.0)
                out["client python bytes/task"] = (py1 - py0) / n
                out["broker RSS bytes/task"] = (bproc.memory_info().rss - b0) / n
                st = ex.status(30)
                out["broker queued"] = float(st.queued) if hasattr(st, "queued") else -1
                open(release, "w").close()
                ex.shutdown(wait=True, cancel_futures=True)
                del futs, held
        finally:
            proc.terminate()
            proc.wait(30)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--mode", default="embedded,standalone")
    ap.add_argument("--tracemalloc", action="store_true", help="embedded: split Python allocations by file")
    args = ap.parse_args(argv)
    pay = payload_per_task(args.tasks)
    print(f"{args.tasks:,} queued ex.submit(noop, i); payload {pay:.1f} bytes/task (subtracted below)")
    for mode in args.mode.split(","):
        figures = embedded(args.tasks, args.tracemalloc) if mode == "embedded" else standalone(args.tasks)
        for k, v in figures.items():
            beyond = v - pay if "bytes/task" in k and not k.startswith(" ") else v
            print(f"{mode}: {k}: {beyond:,.1f}")


if __name__ == "__main__":
    main()
