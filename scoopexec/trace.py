"""The task timeline: recorded in the broker, written as Chrome trace-event JSON.

::

    Broker._send_tasks ---- on_dispatch(w, batch) ---> (now, [broker ids]) per batch
    Broker._on_result ----- on_results(w, ...) ------> one tuple per finished task
    Supervisor.lose_worker  on_lost(task, ...) ------> one tuple per lost attempt
                                                        |
    when the pool stops:  write() -> clock offsets, lanes, parent links --> run.json

The broker already sees everything a timeline needs: when a task was
submitted (``Task.submitted``), when it was handed to a worker, which worker,
its parent task (``Task.parent``, the broker id of the task that submitted
it), how many times it was lost with a worker, and the size of its frames;
a worker's RESULT entry adds when the task started (wall clock, epoch) and
how long it ran.  The recorder keeps one small tuple per task and does all
the arranging when the file is written, so that the broker thread pays
about half a microsecond per task while recording (one call per message of
results), and nothing but one attribute test per message when it is not
(``Broker.trace is None``).

The file is the Chrome trace-event format (JSON object form), which
https://ui.perfetto.dev and chrome://tracing open directly:

* one process row per worker (``worker HOST:PID``), sorted by host; tasks
  that overlap on a worker (a task waiting on sub-tasks, which the worker
  runs meanwhile) are stacked when they nest and put on extra lanes when
  they do not;
* one complete event ("X") per task, named after its function, with the
  task's numbers in ``args``: ids, parent, submit/dispatch/finish times,
  bytes in and out, retries, status;
* flow arrows ("s"/"f") from a parent task to each sub-task it submitted;
* a "pool" row with counters of tasks waiting and running, and an instant
  event for every attempt lost with its worker.

A top-level ``"scoopexec"`` object (ignored by viewers) holds what
``python -m scoopexec report`` needs besides the events: the format version,
the wall-clock origin of the timestamps, and the workers.

Timestamps are microseconds since the first submission.  Start and end
come from each worker's clock and submit/dispatch/finish from the broker's;
on a cluster the recorder estimates each worker's clock offset from the
fact that a task starts after its dispatch and ends before its result
arrives, and shifts that worker's events by it (``clock_offset_us``).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from time import time as _time
from typing import Any, Protocol

from ._version import __version__
from .broker.ledger import MANY

__all__ = ["FORMAT_VERSION", "MAX_TASKS", "TraceRecorder", "check_trace_path", "function_name"]

FORMAT_VERSION = 1
MAX_TASKS = 2_000_000  # tasks kept in one trace; later ones are counted, not recorded
_COUNTER_POINTS = 4000  # at most this many samples of the waiting/running counters

# Status codes of wire/protocol.py, by name (kept here so this module imports nothing heavy).
# 5 and 6 are the trace's own: a raised TaskTimeoutError, WorkerMemoryError (a limit stopped the task).
_STATUS_NAMES = {
    0: "ok", 1: "raised", 2: "failed", 3: "lost", 4: "cancelled", 5: "timed out", 6: "over memory limit",
}  # fmt: skip
_LIMIT_STATUS = {"timed out": 5, "over memory limit": 6}
_LIMIT_KINDS = {
    "scoopexec.errors.TaskTimeoutError": "timed out",
    "scoopexec.errors.WorkerMemoryError": "over memory limit",
}


def limit_kind(meta: Any) -> str:
    """"timed out", "over memory limit" (a limit stopped the task: worker/limits.py) or "" for the
    JSON frame of a raised error (wire/serialize.encode_exception); the broker counts them too."""
    try:
        info = json.loads(bytes(meta))
        return _LIMIT_KINDS.get(str(info.get("type")), "") if isinstance(info, dict) else ""
    except Exception:  # a worker's bytes: whatever they are, they are not one of ours
        return ""


class _TaskLike(Protocol):
    btid: int
    parent: int
    origin: bytes | None
    submitted: float
    attempts: int
    worker: bytes | None

    @property
    def frames(self) -> list[Any]: ...
    @property
    def prev(self) -> tuple[bytes, ...]: ...
    first: Any
    rest: Any
    def function_frame(self) -> Any: ...


class _WorkerLike(Protocol):
    key: bytes
    name: str
    info: dict[str, Any]


def check_trace_path(path: str | os.PathLike[str]) -> str:
    """The trace file's path as a string; ValueError now rather than a lost trace at the end."""
    p = os.fspath(path)
    if not isinstance(p, str) or not p:
        raise ValueError("trace= needs a file name, such as trace='run.json'")
    if os.path.isdir(p):
        example = os.path.join(p, "run.json")
        raise ValueError(f"trace={p!r} is a directory; give a file name such as {example!r}")
    parent = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(parent):
        raise ValueError(f"cannot write the trace to {p!r}: the directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write the trace to {p!r}: the directory {parent!r} is not writable")
    return p


class TraceRecorder:
    """Records every task a broker runs; ``write()`` saves the timeline.

    The ``on_*`` methods are called by the broker, in the broker's thread.
    ``path`` is where ``write()`` puts the file; ``limit`` bounds the tasks
    kept (a trace of millions of tasks is more than a viewer can show).
    """

    def __init__(self, path: str | os.PathLike[str], *, limit: int = MAX_TASKS) -> None:
        self.path = check_trace_path(path)
        self.limit = limit
        self.records: list[tuple[Any, ...]] = []
        self.lost: list[tuple[float, bytes, int, str, bool]] = []
        self.batches: list[tuple[float, list[int]]] = []  # (when, broker ids) per batch dispatched
        self.workers: dict[bytes, tuple[str, str, Any]] = {}  # key -> (name, host, pid)
        self.dropped = 0
        self.created = time.time()
        self.meta: dict[str, Any] = {}
        self.job_events: list[tuple[float, str, str, str]] = []  # (when, scheduler, job id, what)
        self.job_counts: list[tuple[float, dict[str, int]]] = []  # pending / running / draining jobs, workers
        self._names: dict[bytes, str] = {}

    # ------------------------------------------------------------ recording
    def on_dispatch(self, w: _WorkerLike, batch: Iterable[_TaskLike]) -> None:
        """Tasks handed to worker ``w`` now (a retried task's latest attempt wins)."""
        if len(self.records) < self.limit:
            self.batches.append((_time(), [t.btid for t in batch]))
        if w.key not in self.workers:
            self._remember(w)

    def on_results(
        self, w: _WorkerLike, entries: Sequence[tuple[Any, ...]], frames: Sequence[Any], tasks: dict[int, Any]
    ) -> None:
        """A RESULT message from worker ``w``, before the broker hands its results on.

        ``entries`` are its (broker id, status, frames, start, run time)
        entries, ``frames`` the message's frames (payloads from index 1) and
        ``tasks`` the broker's table, which still holds the finished tasks.
        One call per message, not per task: this is the only per-task cost of
        recording, so it is kept to plain local-variable work (about half a
        microsecond a task); everything else happens in write().
        """
        now = _time()
        records = self.records
        room = self.limit - len(records)
        append = records.append
        names = self._names
        key = w.key
        pos = 1
        for btid, status, n, start, run in entries:
            first = pos
            pos += n
            task = tasks.get(btid)
            if task is None or (task.worker != key and key not in task.prev):
                continue  # stale, or from a worker that never had the task: the broker drops it too
            if room <= 0:
                self.dropped += 1
                continue
            room -= 1
            fn, rest = task.first, task.rest  # (Task.frames, without making a list)
            try:
                if rest is MANY:
                    nin = sum(map(len, fn))
                    fn = fn[0]
                else:
                    nin = len(fn) + len(rest)
                nout = len(frames[first]) if n == 1 else sum(map(len, frames[first:pos]))
            except TypeError:  # a pickle.PickleBuffer has no len()
                nin, nout = _nbytes(task.frames), _nbytes(frames[first:pos])
                fn = task.function_frame()
            if type(fn) is not bytes:
                fn = fn.bytes  # zmq.Frame
            name = names.get(fn)
            if name is None:
                name = self._name_of(fn)
            code = status
            if status == 1 and n >= 3:  # a raised error: TaskTimeoutError, WorkerMemoryError?
                code = _LIMIT_STATUS.get(limit_kind(frames[first + 2]), 1)
            append((btid, task.parent, task.origin, name, task.submitted,
                    start, run, now, key, nin, nout, task.attempts, code))  # fmt: skip

    def on_lost(self, task: _TaskLike, w: _WorkerLike, reason: str, given_up: bool) -> None:
        """An attempt of ``task`` was lost with worker ``w`` (``given_up``: no retry left)."""
        if w.key not in self.workers:
            self._remember(w)
        self.lost.append((time.time(), w.key, task.btid, reason, given_up))

    def on_job(self, scheduler: str, job: str, what: str) -> None:
        """A batch job of the pool was submitted, started, drains, ended (deploy/elastic.py)."""
        self.job_events.append((time.time(), scheduler, job, what))

    def on_jobs(self, scheduler: str, jobs: Sequence[dict[str, Any]]) -> None:
        """The pool's batch jobs now (JobPool.status()): counted when the counts change."""
        counts = {"pending": 0, "running": 0, "draining": 0, "workers": 0}
        for j in jobs:
            state = str(j.get("state", ""))
            key = "draining" if state.startswith("draining") else state
            if key in counts:
                counts[key] += 1
            counts["workers"] += int(j.get("workers") or 0)
        if not self.job_counts or self.job_counts[-1][1] != counts:
            self.job_counts.append((time.time(), counts))

    def _remember(self, w: _WorkerLike) -> None:
        self.workers[w.key] = (str(w.name), str(w.info.get("host") or "?"), w.info.get("pid"))

    def _name_of(self, data: bytes) -> str:
        if len(self._names) >= 4096:
            self._names.clear()
        name = self._names[data] = function_name(data)
        return name

    # -------------------------------------------------------------- writing
    def _resolve(self) -> list[tuple[Any, ...]]:
        """The records with their dispatch times, laid out as::

            0 broker id, 1 parent, 2 client key, 3 name, 4 submitted, 5 dispatched,
            6 started (worker clock), 7 run time, 8 result received, 9 worker key,
            10 bytes in, 11 bytes out, 12 retries, 13 status
        """
        when: dict[int, float] = {}
        for t, ids in self.batches:  # in order: a retried task's last dispatch wins
            for b in ids:
                when[b] = t
        return [(*r[:5], min(when.get(r[0], r[7]), r[7]), *r[5:]) for r in self.records]

    def write(self, path: str | None = None) -> str:
        """Write the timeline (atomically: a reader never sees half a file); return its path."""
        target = path or self.path
        doc = self.document()
        directory = os.path.dirname(os.path.abspath(target))
        fd, tmp = tempfile.mkstemp(prefix=".scoopexec-trace-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                _dump(doc, fh)
            os.chmod(tmp, 0o644 & ~_umask())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return target

    def document(self) -> dict[str, Any]:
        """The whole trace as a JSON-ready dict (what write() saves)."""
        # Each task's (last) dispatch time goes in at index 5 (see _resolve).
        recs = self._resolve()
        origin = min((r[4] for r in recs), default=self.created)
        if self.lost:
            origin = min(origin, *(x[0] for x in self.lost))
        if self.job_events:
            origin = min(origin, *(x[0] for x in self.job_events))
        offsets = _clock_offsets(recs)

        def us(t: float) -> float:
            return int((t - origin) * 1e9) / 1000  # Chrome's unit, to the ns (faster than round())

        # Processes: one per worker, sorted by host then name; pid 0 is the pool.
        for r in recs:
            if r[9] not in self.workers:
                self.workers[r[9]] = (r[9].hex(), "?", None)
        order = sorted(self.workers, key=lambda k: (self.workers[k][1], self.workers[k][0]))
        pid_of = {k: i + 1 for i, k in enumerate(order)}

        # Each task's interval on its worker's clock, corrected to the broker's.
        spans: dict[bytes, list[tuple[float, float, int]]] = {k: [] for k in order}
        for i, r in enumerate(recs):
            off = offsets.get(r[9], 0.0)
            s = r[6] + off
            spans[r[9]].append((s, s + r[7], i))
        lane_of: dict[int, int] = {}
        lanes: dict[bytes, int] = {}
        for key, items in spans.items():
            lanes[key] = _assign_lanes(items, lane_of)

        events: list[dict[str, Any]] = []
        events.append(_meta("process_name", 0, 0, name="pool"))
        events.append(_meta("process_sort_index", 0, 0, sort_index=0))
        events.append(_meta("thread_name", 0, 0, name="tasks waiting / running"))
        for key in order:
            wname, host, wpid = self.workers[key]
            pid = pid_of[key]
            events.append(_meta("process_name", pid, 0, name=f"worker {wname}"))
            events.append(_meta("process_sort_index", pid, 0, sort_index=pid))
            events.append(_meta("process_labels", pid, 0, labels=f"host {host}, pid {wpid}"))
            for lane in range(max(1, lanes.get(key, 1))):
                label = "tasks" if lane == 0 else f"tasks (overlap {lane + 1})"
                events.append(_meta("thread_name", pid, lane, name=label))

        where: dict[int, tuple[int, int, float, float]] = {}  # btid -> pid, lane, start, end
        for i, r in enumerate(recs):
            btid, parent, origin_key, name, sub, disp, start, run, done, key = r[:10]
            off = offsets.get(key, 0.0)
            s = start + off
            pid, lane = pid_of[key], lane_of[i]
            where[btid] = (pid, lane, s, s + run)
            wname, host, _ = self.workers[key]
            args: dict[str, Any] = {
                "task": btid,
                "parent": parent,
                "worker": wname,
                "host": host,
                "submitted_us": us(sub),
                "dispatched_us": us(disp),
                "finished_us": us(done),
                "wait_ms": int((s - sub) * 1e6) / 1000,
                "bytes_in": r[10],
                "bytes_out": r[11],
                "retries": r[12],
                "status": _STATUS_NAMES.get(r[13], str(r[13])),
                "client": "local" if origin_key == b"" else origin_key.hex() if origin_key else "?",
            }
            # Both ends truncated to the ns, the same way: a slice nested before stays nested.
            t_ns = int((s - origin) * 1e9)
            end_ns = int((s + run - origin) * 1e9)
            events.append(
                {"name": name, "cat": "task", "ph": "X", "ts": t_ns / 1000, "dur": (end_ns - t_ns) / 1000,
                 "pid": pid, "tid": lane, "args": args}
            )  # fmt: skip

        # Parent -> child arrows, from inside the parent at the child's submission.
        for r in recs:
            btid, parent = r[0], r[1]
            if not parent or parent not in where or btid not in where:
                continue
            ppid, plane, ps, pe = where[parent]
            cpid, clane, cs, _ = where[btid]
            t = min(max(r[4], ps), pe)
            events.append({"name": "submit", "cat": "nested", "ph": "s", "id": btid,
                           "ts": us(t), "pid": ppid, "tid": plane})  # fmt: skip
            events.append({"name": "submit", "cat": "nested", "ph": "f", "bp": "e", "id": btid,
                           "ts": us(cs), "pid": cpid, "tid": clane})  # fmt: skip

        for t, key, btid, reason, given_up in self.lost:
            events.append(
                {"name": "task lost" + (" (given up)" if given_up else ""), "cat": "lost", "ph": "i",
                 "s": "p", "ts": us(t), "pid": pid_of.get(key, 0), "tid": 0,
                 "args": {"task": btid, "reason": reason, "given_up": given_up}}
            )  # fmt: skip

        for t, scheduler, job, what in self.job_events:
            events.append({"name": f"{scheduler} job {job}: {what}", "cat": "jobs", "ph": "i", "s": "p",
                           "ts": us(t), "pid": 0, "tid": 0, "args": {"job": job, "event": what}})  # fmt: skip
        for t, counts in self.job_counts:
            events.append({"name": "jobs", "cat": "jobs", "ph": "C", "ts": us(t), "pid": 0, "tid": 0,
                           "args": counts})  # fmt: skip

        for t, waiting, running in _counters(recs, offsets):
            events.append({"name": "tasks", "cat": "pool", "ph": "C", "ts": us(t), "pid": 0, "tid": 0,
                           "args": {"waiting": waiting, "running": running}})  # fmt: skip

        workers = [
            {
                "pid": pid_of[k],
                "name": self.workers[k][0],
                "host": self.workers[k][1],
                "os_pid": self.workers[k][2],
                "lanes": max(1, lanes.get(k, 1)),
                "clock_offset_us": round(offsets.get(k, 0.0) * 1e6, 1),
            }
            for k in order
        ]
        return {
            "traceEvents": events,
            "displayTimeUnit": "ms",
            "otherData": {
                "tool": f"scoopexec {__version__}",
                "recorded": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(origin)),
                **{k: str(v) for k, v in self.meta.items()},
            },
            "scoopexec": {
                "format": FORMAT_VERSION,
                "version": __version__,
                "origin_epoch": origin,
                "tasks": len(recs),
                "tasks_not_recorded": self.dropped,
                "lost_attempts": len(self.lost),
                "workers": workers,
                **self.meta,
            },
        }


# ------------------------------------------------------------------ helpers
def _nbytes(frames: Iterable[Any]) -> int:
    n = 0
    for f in frames:
        if type(f) is bytes:
            n += len(f)
        else:
            try:
                n += len(f)  # zmq.Frame
            except TypeError:
                n += memoryview(f).nbytes  # pickle.PickleBuffer
    return n


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _meta(kind: str, pid: int, tid: int, **args: Any) -> dict[str, Any]:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": args}


def _dump(doc: dict[str, Any], fh: Any) -> None:
    """JSON with one event per line: diff-able, greppable, and streamed rather than built whole."""
    fh.write('{"traceEvents": [\n')
    events = doc["traceEvents"]
    encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode  # reused: 3x faster
    last = len(events) - 1
    for i, ev in enumerate(events):
        fh.write(encode(ev))
        fh.write(",\n" if i < last else "\n")
    fh.write("],\n")
    rest = {k: v for k, v in doc.items() if k != "traceEvents"}
    fh.write(json.dumps(rest, indent=1)[1:].lstrip("\n"))
    fh.write("\n")


def _clock_offsets(recs: Sequence[tuple[Any, ...]]) -> dict[bytes, float]:
    """Per worker, seconds to add to its clock to agree with the broker's.

    A task cannot start before the broker dispatched it, nor end after its
    result arrived: ``dispatch - start <= offset <= done - end``.  When 0 fits
    (one machine, or synchronised clocks) the offset is 0; otherwise the
    middle of the interval that fits (or its nearest end, if the bounds cross
    because of a clock step during the run).
    """
    lo: dict[bytes, float] = {}
    hi: dict[bytes, float] = {}
    for r in recs:
        key = r[9]
        a = r[5] - r[6]
        b = r[8] - (r[6] + r[7])
        if a > lo.get(key, -math.inf):
            lo[key] = a
        if b < hi.get(key, math.inf):
            hi[key] = b
    out: dict[bytes, float] = {}
    for key, a in lo.items():
        b = hi[key]
        # Tolerate 2 ms of disagreement: the clocks are read in different processes.
        if a <= 0.002 and b >= -0.002:
            continue
        out[key] = (a + b) / 2 if a <= b else a
    return out


def _assign_lanes(items: list[tuple[float, float, int]], lane_of: dict[int, int]) -> int:
    """Put each interval on a lane where it nests inside, or follows, what is there.

    Chrome's viewers draw slices on one row as a stack, which only works when
    they nest; a worker runs tasks concurrently (a parked task and the tasks
    run while it waits), so overlapping tasks that do not nest get extra lanes.
    Returns the number of lanes.
    """
    items.sort(key=lambda x: (x[0], -x[1]))
    stacks: list[list[float]] = []  # per lane: ends of the slices open at the current time
    for s, e, i in items:
        for n, stack in enumerate(stacks):
            while stack and stack[-1] <= s:
                stack.pop()
            if not stack or e <= stack[-1]:
                stack.append(e)
                lane_of[i] = n
                break
        else:
            stacks.append([e])
            lane_of[i] = len(stacks) - 1
    return len(stacks)


def _counters(
    recs: Sequence[tuple[Any, ...]], offsets: dict[bytes, float]
) -> list[tuple[float, int, int]]:
    """Samples of (time, tasks waiting, tasks running), at most about _COUNTER_POINTS of them.

    Changes closer together than the sampling step are merged into one sample
    that shows the largest values of its interval, so that short bursts stay
    visible; the last sample is the final state.
    """
    if not recs:
        return []
    changes: list[tuple[float, int, int]] = []
    for r in recs:
        s = r[6] + offsets.get(r[9], 0.0)
        changes.append((r[4], 1, 0))
        changes.append((s, -1, 1))
        changes.append((s + r[7], 0, -1))
    changes.sort(key=lambda c: c[0])
    t_end = changes[-1][0]
    step = (t_end - changes[0][0]) / _COUNTER_POINTS
    out: list[tuple[float, int, int]] = []
    waiting = running = 0
    bucket: list[Any] = []  # [start, max waiting, max running]
    for i, (t, dw, dr) in enumerate(changes):
        waiting += dw
        running += dr
        if i + 1 < len(changes) and changes[i + 1][0] == t:
            continue  # apply every change of one instant first
        if not bucket or t - bucket[0] >= step:
            if bucket:
                out.append((bucket[0], bucket[1], bucket[2]))
            bucket = [t, waiting, running]
        else:
            bucket[1], bucket[2] = max(bucket[1], waiting), max(bucket[2], running)
    out.append((bucket[0], bucket[1], bucket[2]))
    if out[-1][0] != t_end or out[-1][1:] != (waiting, running):
        out.append((t_end, waiting, running))
    return out


_SKIP_MODULES = ("functools", "copyreg", "builtins", "cloudpickle", "_operator", "operator", "types")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING"}  # fmt: skip


def function_name(data: bytes) -> str:
    """A readable name for a pickled callable, read from its pickle without unpickling it.

    Module-level functions pickle by reference (module and qualified name);
    cloudpickle stores a function by value with its ``__qualname__``;
    ``functools.partial`` and map's chunk wrapper name the function they wrap
    last.  Anything else is ``"task"``.
    """
    if not data:
        return "task"
    try:
        memo: dict[int, Any] = {}
        last: Any = None
        strings: list[str] = []
        refs: list[tuple[str, str]] = []
        qualname = ""
        want_qualname = False
        import pickletools  # stdlib, lazy: 0.45 MB a process that never names a traced task does not need

        for op, arg, _ in pickletools.genops(data):
            name = op.name
            value: Any = None
            if name in _STRING_OPS:
                value = arg
            elif name in ("BINGET", "LONG_BINGET", "GET") and isinstance(arg, int):
                value = memo.get(arg)
            elif name == "MEMOIZE":
                memo[len(memo)] = last
            elif name in ("BINPUT", "LONG_BINPUT", "PUT") and isinstance(arg, int):
                memo[arg] = last
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                refs.append((strings[-2], strings[-1]))
            elif name in ("GLOBAL", "INST") and isinstance(arg, str):
                mod, _, qn = arg.partition(" ")
                refs.append((mod, qn))
            if name not in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):
                last = value
            if isinstance(value, str):
                strings.append(value)
                if want_qualname:
                    qualname, want_qualname = value, False
                elif value == "__qualname__" and not qualname:
                    want_qualname = True
        if qualname:
            return qualname
        for mod, qn in reversed(refs):
            top = mod.split(".")[0]
            if top in _SKIP_MODULES or (mod == "scoopexec.mapping" and qn == "_run_chunk"):
                continue
            return qn
        if refs:
            return refs[-1][1]
    except Exception:
        pass
    return "task"
