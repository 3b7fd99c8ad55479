"""Where a scoopexec task's time goes: the measurements behind benchmarks/README.md.

    python -m benchmarks.where_time_goes cpu   [--tasks 100000]  # CPU per task, per thread
    python -m benchmarks.where_time_goes split [--n 2000]        # round trip: out / back, vs PPE
    python -m benchmarks.where_time_goes hops  [--n 2000]        # round trip, hop by hop

``cpu`` runs no-op tasks through a 2-worker pool (``submit`` then gather, and
``map`` with chunksize=1) and reads each thread's user+system CPU time from
/proc before and after: CPU microseconds per task for the client's main
thread, its broker thread, the ZeroMQ I/O threads and the workers.  Nothing
is instrumented.

``split`` times sequential round trips of a task that returns the monotonic
clock at the moment it runs (the same clock in every process on Linux), so
each round trip splits into "out" (submit() called -> task starts) and "back"
(task starts -> result() returns) without touching the code.  For
ProcessPoolExecutor it also wraps two methods of its manager thread to time
the hand-offs inside its client.

``hops`` wraps scoopexec's own functions with timestamping shims -- in the
client directly, in the workers by running a task that installs the same
shims there -- and prints the median latency of every hop of a round trip.
Each shim costs about half a microsecond, so the hops add up to a little more
than the uninstrumented round trip.  A shim whose target was renamed fails
loudly (AttributeError) rather than measuring nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import itertools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.tasks import noop  # noqa: E402

_ns = time.perf_counter_ns  # CLOCK_MONOTONIC: comparable across processes


def stamp(_: Any = None) -> int:
    """A task that says when it ran."""
    return _ns()


# --------------------------------------------------------------------- cpu
def _thread_cpu(pids: list[int], names: dict[int, str]) -> dict[tuple[str, str], float]:
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[str, str], float] = {}
    me = os.getpid()
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{pid}/task/{t}/comm") as fh:
                    comm = fh.read().strip()
                with open(f"/proc/{pid}/task/{t}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            tid = int(t)
            role = "client" if pid == me else "workers"
            name = names.get(tid, comm) if pid == me else ("main thread" if tid == pid else comm)
            if name.startswith("python"):
                name = "other Python thread"
            key = (role, name)
            out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu(tasks: int) -> None:
    from scoopexec import ScoopExecutor

    with ScoopExecutor(2) as ex:
        for i in range(200):
            ex.submit(noop, i).result()
        time.sleep(0.3)
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        pids = [os.getpid(), *ex.worker_pids]
        for label in ("submit", "map"):
            before = _thread_cpu(pids, names)
            t = time.perf_counter()
            done = 0
            while done < tasks:
                if label == "submit":
                    fs = [ex.submit(noop, i) for i in range(5000)]
                    for f in fs:
                        f.result()
                    done += 5000
                else:
                    for _ in ex.map(noop, range(20000)):
                        pass
                    done += 20000
            wall = time.perf_counter() - t
            after = _thread_cpu(pids, names)
            print(f"\n{label}: {done:,} no-op tasks, {1e6 * wall / done:.1f} us of wall time per task "
                  f"({done / wall:,.0f}/s)")  # fmt: skip
            rows = sorted(((after[k] - before.get(k, 0.0), k) for k in after), reverse=True)
            total = 0.0
            for used, (role, name) in rows:
                if used > 0:
                    total += used
                    print(f"  {role:8s} {name:22s} {1e6 * used / done:6.1f} us CPU per task")
            print(f"  {'total':31s} {1e6 * total / done:6.1f} us CPU per task")


# ------------------------------------------------------------------- split
def _split(ex: cf.Executor, n: int) -> tuple[float, float, float]:
    for i in range(100):
        ex.submit(stamp, i).result()
    out, back, total = [], [], []
    for i in range(n):
        t0 = _ns()
        ran = ex.submit(stamp, i).result()
        t1 = _ns()
        out.append(ran - t0)
        back.append(t1 - ran)
        total.append(t1 - t0)
    return statistics.median(out) / 1e3, statistics.median(back) / 1e3, statistics.median(total) / 1e3


def _ppe_hops(n: int) -> dict[str, float]:
    import bisect
    import concurrent.futures.process as cfp

    events: list[tuple[str, int]] = []
    mgr: Any = cfp._ExecutorManagerThread
    add0, res0 = mgr.add_call_item_to_queue, mgr.process_result_item

    def add(self: Any, *a: Any) -> Any:
        events.append(("took", _ns()))
        return add0(self, *a)

    def res(self: Any, item: Any) -> Any:
        events.append(("result", _ns()))
        res0(self, item)
        events.append(("set", _ns()))

    mgr.add_call_item_to_queue, mgr.process_result_item = add, res
    try:
        with cf.ProcessPoolExecutor(2) as ex:
            for i in range(100):
                ex.submit(stamp, i).result()
            events.clear()
            rows = []
            for i in range(n):
                t0 = _ns()
                f = ex.submit(stamp, i)
                t_sub = _ns()
                ran = f.result()
                rows.append((t0, t_sub, ran, _ns()))
    finally:
        mgr.add_call_item_to_queue, mgr.process_result_item = add0, res0
    took = [t for k, t in events if k == "took"]
    got = [t for k, t in events if k == "result"]
    done = [t for k, t in events if k == "set"]
    d: dict[str, list[int]] = {k: [] for k in _PPE_HOPS}
    for t0, t_sub, ran, t1 in rows:
        i, j = bisect.bisect_left(took, t0), bisect.bisect_left(got, ran)
        if i >= len(took) or j >= len(got) or took[i] > ran:
            continue
        for k, v in zip(
            _PPE_HOPS,
            (t_sub - t0, took[i] - t0, ran - took[i], got[j] - ran, done[j] - got[j], t1 - done[j], t1 - t0),
            strict=True,
        ):
            d[k].append(v)
    return {k: statistics.median(v) / 1e3 for k, v in d.items() if v}


_PPE_HOPS = [
    "submit() returns",
    "submit() -> manager thread takes the item",
    "manager thread -> task starts in the worker",
    "task starts -> manager thread has the result",
    "manager thread: set_result",
    "set_result -> result() returns",
    "total",
]


def split(n: int) -> None:
    from scoopexec import ScoopExecutor

    print(f"{n} sequential round trips, medians (us): out = submit() -> task starts; back = task starts -> "
          "result() returns")  # fmt: skip
    makers: list[tuple[str, Callable[[], cf.Executor]]] = [
        ("scoopexec", lambda: ScoopExecutor(2)),
        ("PPE", lambda: cf.ProcessPoolExecutor(2)),
    ]
    for name, make in makers:
        with make() as ex:
            o, b, t = _split(ex, n)
        print(f"  {name:10s} out {o:6.1f}  back {b:6.1f}  total {t:6.1f}")
    print("ProcessPoolExecutor, hop by hop (its manager thread's methods wrapped):")
    for k, v in _ppe_hops(n).items():
        print(f"  {k:48s} {v:6.1f}")


# -------------------------------------------------------------------- hops
_events: list[tuple[str, Any, int]] = []


def _shim(
    owner: Any, attr: str, before: Callable[..., None] | None, after: Callable[..., None] | None
) -> None:
    fn = getattr(owner, attr)  # AttributeError if the code moved on: update this tool

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(*args)
        out = fn(*args, **kwargs)
        if after is not None:
            after(out, *args)
        return out

    setattr(owner, attr, wrapper)


def _rec(name: str, key: Any = None) -> None:
    _events.append((name, key, _ns()))


def _install_worker_shims(_: Any = None) -> int:
    """Runs as a task inside a worker: timestamp the worker's side of each task."""
    from scoopexec.wire import protocol as P
    from scoopexec.wire import serialize
    from scoopexec.worker import worker

    if getattr(worker, "_hops_installed", False):
        time.sleep(0.3)
        return os.getpid()
    worker._hops_installed = True  # type: ignore[attr-defined]

    def btid() -> int:
        w = worker.current_worker()
        return w.current.btid if w is not None and w.current is not None else 0

    def received(self: Any, msg: Any) -> None:
        if msg.kind == P.TASKS:
            t = _ns()
            for e in msg.entries:
                _events.append(("W0 worker received TASKS", e[0], t))

    def sent(_out: Any, self: Any, frames: list[Any]) -> None:
        head = frames[0] if isinstance(frames[0], bytes) else bytes(frames[0])
        if P.unpack_header(head)[0] == P.RESULT:
            t = _ns()
            for e in P.entries(P.RESULT, head):
                _events.append(("W6 worker sent RESULT", e[0], t))

    _shim(worker.Worker, "_handle", received, None)
    _shim(type(worker.current_worker().chan), "send", None, sent)  # the channel the outbox sends on
    _shim(serialize, "decode_call", lambda *a: _rec("W1 task starts: unpickle", btid()), None)
    _shim(serialize, "encode_result", lambda *a: _rec("W3 fn returned: pickle result", btid()), None)
    # decode_call's end is the call of fn; encode_result's end is the hand-back to the hub
    _shim(
        worker.Worker,
        "_execute",
        None,
        lambda _o, self, task: _rec("W5 task done, back to the hub", task.btid),
    )
    time.sleep(0.3)  # hold this worker so that the other one gets the twin task
    return os.getpid()


def _collect(_: Any = None) -> tuple[int, list[tuple[str, Any, int]]]:
    time.sleep(0.3)
    return os.getpid(), list(_events)


def _on_every_worker(ex: Any, fn: Callable[[Any], Any], workers: int) -> list[Any]:
    for _ in range(20):
        out = [f.result() for f in [ex.submit(fn, i) for i in range(workers)]]
        pids = {o if isinstance(o, int) else o[0] for o in out}
        if len(pids) == workers:
            return out
    raise RuntimeError("could not reach every worker with one task each")


def hops(n: int) -> None:
    from scoopexec.broker.loop import Broker
    from scoopexec.client.executor import ScoopExecutor
    from scoopexec.client.session import Session
    from scoopexec.wire import protocol as P
    from scoopexec.wire import serialize

    with ScoopExecutor(2) as ex:
        for i in range(100):
            ex.submit(noop, i).result()
        _on_every_worker(ex, _install_worker_shims, 2)
        main = threading.get_ident()

        def on_main(name: str) -> Callable[..., None]:
            return lambda *a: _rec(name) if threading.get_ident() == main else None

        _shim(ScoopExecutor, "submit", on_main("C0 submit() called"), None)
        _shim(serialize, "encode_call", None, lambda *a: on_main("C1 pickled")())
        _shim(
            Session,
            "submit",
            None,
            lambda fut, *a: _rec("C2 future made, queued, broker woken", fut._tid),
        )

        def took(self: Any) -> None:
            local = self.local
            if local is not None and local.client.outbox:
                t = _ns()
                for tid, _body in list(local.client.outbox):
                    _events.append(("B1 broker takes the task", tid, t))

        def tasks_sent(_out: Any, self: Any, w: Any, batch: list[Any]) -> None:
            t = _ns()
            for task in batch:
                _events.append(("B2 broker sent TASKS", (task.btid, task.tid), t))

        def results_in(self: Any, key: bytes, w: Any, msg: Any) -> None:
            t = _ns()
            for e in msg.entries:
                _events.append(("B7 broker received RESULT", e[0], t))

        def delivering(self: Any, msg: Any) -> None:
            for e in msg.entries:
                _rec("B8 deliver: unpickle", e[0])

        def delivered(_out: Any, self: Any, msg: Any) -> None:
            for e in msg.entries:
                _rec("B10 set_result done", e[0])

        _shim(Broker, "_take_local", took, None)
        _shim(Broker, "_send_tasks", None, tasks_sent)
        _shim(Broker, "_on_result", results_in, None)
        _shim(Session, "_on_results", delivering, None)
        _shim(serialize, "decode_outcome", None, lambda *a: _rec("B9 unpickled: set_result"))
        _shim(Session, "_on_results", None, delivered)
        # The tables of message handlers were filled when the pool started: point them at the shims.
        session = ex._session  # type: ignore[attr-defined]
        session.handlers[P.RESULTS] = session._on_results
        session.broker.handlers[P.RESULT] = session.broker._on_result
        time.sleep(0.2)
        _events.clear()
        for i in range(n):
            ex.submit(noop, i).result()
            _rec("C11 result() returned")
        client = list(_events)
        workers = _on_every_worker(ex, _collect, 2)
    _report_hops(client, [ev for _pid, ev in workers], n)


def _report_hops(
    client: list[tuple[str, Any, int]], workers: list[list[tuple[str, Any, int]]], n: int
) -> None:
    per: dict[int, dict[str, int]] = {}  # client task id -> hop -> time
    btid_of: dict[int, int] = {}
    loose: dict[str, int] = {}
    last_tid = 0
    by_btid: dict[int, dict[str, int]] = {}
    for name, key, t in client:
        if name in ("C0 submit() called", "C1 pickled"):
            loose[name] = t
        elif name.startswith("C2"):
            per[key] = {**loose, name: t}
            loose = {}
            last_tid = key
        elif name.startswith("B2"):
            btid_of[key[1]] = key[0]
            per.setdefault(key[1], {})[name] = t
        elif name.startswith("B7"):
            by_btid.setdefault(key, {})[name] = t
        elif name.startswith("B9") or name.startswith("C11"):
            per.setdefault(last_tid, {})[name] = t
        elif key is not None:
            per.setdefault(key, {})[name] = t
    for evs in workers:
        for name, key, t in evs:
            by_btid.setdefault(key, {}).setdefault(name, t)
    rows = []
    for tid, hop in per.items():
        b = btid_of.get(tid)
        if b is not None:
            rows.append({**hop, **by_btid.get(b, {})})
    order = _HOP_ORDER
    complete = [r for r in rows if all(k in r for k in order)]
    total = [(r[order[-1]] - r[order[0]]) / 1e3 for r in complete]
    print(f"{len(complete)} of {n} round trips with every hop; total p50 {statistics.median(total):.1f} us "
          "(each timestamp adds ~0.5 us)")  # fmt: skip
    for first, then in itertools.pairwise(order):
        d = sorted((r[then] - r[first]) / 1e3 for r in complete)
        print(f"  {first:40s} -> {then:40s} p50 {d[len(d) // 2]:7.1f}  p10 {d[len(d) // 10]:7.1f}  "
              f"p90 {d[9 * len(d) // 10]:7.1f}")  # fmt: skip


_HOP_ORDER = [
    "C0 submit() called",
    "C1 pickled",
    "C2 future made, queued, broker woken",
    "B1 broker takes the task",
    "B2 broker sent TASKS",
    "W0 worker received TASKS",
    "W1 task starts: unpickle",
    "W3 fn returned: pickle result",
    "W5 task done, back to the hub",
    "W6 worker sent RESULT",
    "B7 broker received RESULT",
    "B8 deliver: unpickle",
    "B9 unpickled: set_result",
    "B10 set_result done",
    "C11 result() returned",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("what", choices=["cpu", "split", "hops"])
    ap.add_argument("--tasks", type=int, default=100_000, help="tasks per workload for cpu")
    ap.add_argument("--n", type=int, default=2000, help="round trips for split and hops")
    args = ap.parse_args(argv)
    # Run the functions of the imported module, not of __main__: tasks must pickle by
    # reference, and the timestamp lists must be the ones the shims write to.
    from benchmarks import where_time_goes as me  # noqa: PLW0406

    if args.what == "cpu":
        me.cpu(args.tasks)
    elif args.what == "split":
        me.split(args.n)
    else:
        me.hops(args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
