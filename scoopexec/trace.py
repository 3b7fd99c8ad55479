"""The task timeline: recorded in the broker, written as Chrome trace-event JSON or a binary file.

::

    Broker._send_tasks ---- on_dispatch(w, ..., head) -----> broker id, time: 16 bytes per task
    Broker._on_result ----- on_finished(w, ..., done) -----> one 81-byte binary record per finished
      (after Ledger.finish, which hands over the tasks it accepted)             task
    Supervisor.lose_worker  on_lost(task, ...) ------------> one tuple per lost attempt
                                                        |
    when the pool stops:  write() -> run.trace: the records as kept (tracefile.py), or
                                     run.json: clock offsets, lanes, parent links -> JSON
    trace export run.trace run.json:  from_raw(tracefile.read()) -> the same JSON

The broker already sees everything a timeline needs: when a task was
submitted (``Task.submitted``), when it was handed to a worker, which worker,
its parent task (``Task.parent``, the broker id of the task that submitted
it), how many times it was lost with a worker, and the size of its frames;
a worker's RESULT entry adds when the task started (wall clock, epoch) and
how long it ran.  The recorder keeps one fixed-size binary record per task
(struct; function names, clients and workers as indexes into one table),
about 100 bytes with its dispatch time, so at most ``MAX_TASKS`` of them
(about 220 MB) however long the run; later tasks are counted, not recorded.
It does all the arranging when the file is written, so that the broker
thread pays a few per cent of a tiny task's cost while recording (one call
per message; a message of tiny tasks' results is recorded by a few C loops
over it, TraceRecorder._bulk, and its records laid out for thousands of tasks
at once, tracebulk.Pending), and nothing but one attribute test per message
when it is not (``Broker.trace is None``).

A path ending in ``.json`` gets the Chrome trace-event format (JSON object
form), which https://ui.perfetto.dev and chrome://tracing open directly;
building it costs the client several times what recording did.  Any other
path gets tracefile.py's compact binary file, which ``python -m scoopexec
trace export`` (``from_raw`` then ``write``) turns into that JSON later.
The JSON holds:

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

import heapq
import io
import json
import math
import os
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from operator import itemgetter
from time import time as _time
from typing import Any, Protocol

from . import tracefile
from ._version import __version__
from .broker.ledger import MANY
from .tracebulk import ENTRY_NFRAMES, ENTRY_STATUS, MAX_PENDING, Pending, sizes
from .tracefile import DISPATCH as _DISPATCH
from .tracefile import TASK_RECORD as _RECORD
from .wire import fnframes, serialize
from .wire.protocol import HEADER_SIZE as _HEAD
from .wire.protocol import RESULT_ENTRY as _ENTRY
from .wire.protocol import TASK_ENTRY, TASKS, pack_flat

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


class _SourceLike(Protocol):
    @property
    def parent(self) -> int: ...
    @property
    def origin(self) -> bytes | None: ...
    @property
    def submitted(self) -> float: ...


class _TaskLike(_SourceLike, Protocol):
    btid: int
    worker: bytes | None

    @property
    def src(self) -> _SourceLike: ...
    @property
    def lost(self) -> tuple[tuple[bytes, str], ...] | None: ...
    @property
    def attempts(self) -> int: ...

    @property
    def frames(self) -> list[Any]: ...
    @property
    def prev(self) -> tuple[bytes, ...]: ...
    first: Any
    rest: Any
    def function_frame(self) -> Any: ...


_Entry = tuple[Any, ...]  # a RESULT entry: broker id, status, frames, start, run time


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


_MAX_FN_SENT = 1 << 16  # tasks whose large function frame's size as sent the recorder keeps


def _note_sent(fn_sent: dict[int, int], sent: Sequence[tuple[int, int]]) -> None:
    """Keep what the large function frames of tasks just dispatched took (TraceRecorder.on_dispatch):
    the oldest go beyond _MAX_FN_SENT (a task that left without a result, cancelled, say; one that
    does come then counts its whole frame)."""
    fn_sent.update(sent)
    while len(fn_sent) > _MAX_FN_SENT:
        del fn_sent[next(iter(fn_sent))]


def _large(frame: Any) -> bool:
    """Whether a function frame is one the broker sends whole once a worker (ledger.task_entries)."""
    try:
        return fnframes.worth_a_look(len(frame))
    except TypeError:  # (a pickle.PickleBuffer has no len())
        return False


class TraceRecorder:
    """Records every task a broker runs; ``write()`` saves the timeline.

    The ``on_*`` methods are called by the broker, in the broker's thread.
    ``path`` is where ``write()`` puts the file; ``limit`` bounds the tasks
    kept (a trace of millions of tasks is more than a viewer can show).
    """

    def __init__(self, path: str | os.PathLike[str], *, limit: int = MAX_TASKS) -> None:
        self.path = check_trace_path(path)
        self.limit = limit
        # One fixed-size binary record per task (_RECORD), strings and keys as indexes into
        # _values: about 100 bytes a task with its dispatch, against 220 as tuples of objects.
        self._blocks: list[bytearray] = []  # the records, in blocks laid out by Pending.take
        self._stored = 0  # bytes in _blocks
        self._buf = bytearray()  # and after them, records the per-task loop packed
        self._values: list[Any] = []  # clients' keys, function names, workers' keys, each once
        self._index: dict[Any, int] = {}  # value -> its index in _values
        self._sent: list[bytes | bytearray] = []  # (broker id, when) per dispatch, in order, in blocks
        self.lost: list[tuple[float, bytes, int, str, bool]] = []
        self.workers: dict[bytes, tuple[str, str, Any]] = {}  # key -> (name, host, pid)
        self.dropped = 0
        self.created = time.time()
        self.meta: dict[str, Any] = {}
        self.job_events: list[tuple[float, str, str, str]] = []  # (when, scheduler, job id, what)
        self.job_counts: list[tuple[float, dict[str, int]]] = []  # pending / running / draining jobs, workers
        self._names: dict[bytes, int] = {}  # a function's pickle -> its name's index in _values
        self._later = Pending()  # what on_dispatch and _bulk left to lay out (_settle)
        self._bulk_from = _BULK_FROM  # messages of fewer results go through the per-task loop
        self._fn_sent: dict[int, int] = {}  # broker id -> what its large function frame took (on_dispatch)

    @property
    def recorded(self) -> int:
        """How many tasks are recorded."""
        return (self._stored + len(self._buf)) // _RECORD.size + self._later.pending

    @property
    def records(self) -> list[tuple[Any, ...]]:
        """The records, decoded: (broker id, parent, client key, name, submitted, started, run
        time, result received, worker key, bytes in, bytes out, retries, status) per task."""
        v = self._values
        return [(b, p, v[o], v[n], sub, st, run, now, v[k], nin, nout, a, c)
                for b, p, o, n, sub, st, run, now, k, nin, nout, a, c in self._unpacked()]  # fmt: skip

    def _unpacked(self) -> Iterator[tuple[Any, ...]]:
        """Every record as TASK_RECORD's fields, in order."""
        self._settle()
        return chain.from_iterable(map(_RECORD.iter_unpack, [*self._blocks, self._buf]))

    def _intern(self, value: Any) -> int:
        i = self._index.get(value)
        if i is None:
            i = self._index[value] = len(self._values)
            self._values.append(value)
        return i

    # ------------------------------------------------------------ recording
    def on_dispatch(
        self, w: _WorkerLike, batch: Sequence[_TaskLike], flat: Sequence[int] | None = None,
        head: bytes | None = None, sent: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """Tasks handed to worker ``w`` now (a retried task's latest attempt wins); ``flat``: their
        TASKS entries one after the other (ledger.task_entries), ``head`` the TASKS message's
        header frame packed from them (which the broker passes: kept as it is, their broker ids
        taken out of it later, tracebulk.Pending.take_sent); ``sent``: what their function frames of
        256 KiB and more took as they went, whole or as a head (ledger.task_entries): their bytes in."""
        later = self._later
        if (self._stored + len(self._buf)) // _RECORD.size + later.pending < self.limit:  # (recorded, inline)
            if sent:
                _note_sent(self._fn_sent, sent)
            if head is None:
                if flat is None:
                    flat = [v for t in batch for v in (t.btid, 0, 0, 0)]
                head = pack_flat(TASKS, len(flat) // _TASK_FIELDS, flat)
            if later.add_sent(head, _time()) >= MAX_PENDING:
                self._sent.append(later.take_sent())
        if w.key not in self.workers:
            self._remember(w)

    def on_finished(
        self, w: _WorkerLike, entries: Sequence[_Entry], frames: Sequence[Any], done: Sequence[_TaskLike]
    ) -> None:
        """A RESULT message from worker ``w``, which the broker's ledger has just taken in.

        ``done`` are the tasks it finished (Ledger.finish(finished=)), in the order of
        ``entries``; the others it dropped (stale, or from a worker that did not have the task),
        and so does the timeline.  A message of several results that all come as tiny tasks
        send them goes through _bulk, any other through on_results' loop.
        """
        k = len(entries)
        if k >= self._bulk_from and len(done) == k and self._bulk(w, entries, frames, done):
            return
        self.on_results(w, entries, frames, {t.btid: t for t in done})

    def on_results(
        self, w: _WorkerLike, entries: Sequence[tuple[Any, ...]], frames: Sequence[Any], tasks: dict[int, Any]
    ) -> None:
        """A RESULT message from worker ``w`` (on_finished's loop).

        ``entries`` are its (broker id, status, frames, start, run time)
        entries, ``frames`` the message's frames (payloads from index 1) and
        ``tasks`` its tasks by broker id, each taken out as it is recorded (a
        result repeated in one message is recorded once, as the ledger takes it).
        One call per message, not per task, kept to plain local-variable work
        (on_finished takes the common messages faster); everything else happens
        in write().
        """
        now = _time()
        later = self._later  # (records pending there come first: these go after them, in Pending)
        buf = bytearray() if later.count else self._buf
        room = self.limit - self.recorded
        pack = _RECORD.pack
        names = self._names
        index = self._index
        fn_sent = self._fn_sent
        key = w.key
        kidx = index.get(key)
        if kidx is None:
            kidx = self._intern(key)
        last_origin: Any = _NOTHING
        last_fn: Any = _NOTHING
        oidx = nidx = 0
        pos = 1
        for btid, status, n, start, run in entries:
            first = pos
            pos += n
            task = tasks.pop(btid, None)
            if task is None or (task.worker is not key and task.worker != key and key not in task.prev):
                continue  # stale, or from a worker that never had the task: the broker drops it too
            went = fn_sent.pop(btid, None) if fn_sent else None  # (its large function frame, as it went)
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
            if went is not None:
                nin += went - len(fn)
            if fn is not last_fn:  # (a message's tasks mostly share one frame: no hash of it per task)
                last_fn = fn
                if type(fn) is not bytes:
                    fn = fn.bytes  # zmq.Frame
                known = names.get(fn)
                nidx = self._name_of(fn) if known is None else known
            code = status
            if status == 1 and n >= 3:  # a raised error: TaskTimeoutError, WorkerMemoryError?
                code = _LIMIT_STATUS.get(limit_kind(frames[first + 2]), 1)
            src, lost = task.src, task.lost  # (Task.parent, origin, submitted, attempts: no property calls)
            origin = src.origin
            if origin is not last_origin:
                last_origin = origin
                oidx = index.get(origin, -1)
                if oidx < 0:
                    oidx = self._intern(origin)
            buf += pack(btid, src.parent, oidx, nidx, src.submitted, start, run, now, kidx, nin, nout,
                        len(lost) if lost else 0, code)  # fmt: skip
        if buf and buf is not self._buf and later.add_done(buf) >= MAX_PENDING:
            self._take()

    def _bulk(
        self, w: _WorkerLike, entries: Sequence[_Entry], frames: Sequence[Any], found: Sequence[_TaskLike]
    ) -> bool:
        """on_finished for a message of results of one frame each and one status, for tasks
        ``found`` (one each, in order) of one function frame, two frames each and no lost
        attempt (what tiny tasks send); False, having recorded nothing, for any other message.
        Records from a template per Source, completed by tracebulk.Pending (its docstring)."""
        k = len(entries)
        head = frames[0]
        if not isinstance(head, bytes):
            head = head.bytes  # zmq.Frame
        step = _ENTRY.size
        status = head[_AT_STATUS::step]  # (a column of bytes, one a result: C loops)
        if (
            len(head) != _HEAD + k * step
            or len(frames) != k + 1
            or (self._stored + len(self._buf)) // _RECORD.size + self._later.pending + k > self.limit
            # One frame each: every count's low byte is 1, so each is >= 1, and they add up to
            # the frames there are (protocol.decode checked): each is 1.
            or head[_AT_NFRAMES::step] != b"\x01" * k
            or status != status[:1] * k  # one status (the template's)
            or _ENTRY.unpack_from(head, _HEAD) != entries[0]  # (the entries are the header's)
        ):
            return False
        got = sizes(found, frames)
        if got is None or (self._fn_sent and _large(found[0].first)):  # (its bytes in: as it went)
            return False
        srcs, nin, nout = got
        now = _time()
        key, code, later = w.key, status[0], self._later
        first, src, last = found[0].first, found[0].src, later.last
        if (srcs is None and last[0] is first and last[1] is key and last[2] == code
                and last[3] == src.parent and last[4] == src.origin):  # fmt: skip
            records = (last[5] + _TIMES.pack(src.submitted, 0.0, 0.0, now) + last[6]) * k  # (the last's)
            if later.add(records, head, nin, nout, k) >= MAX_PENDING:
                self._take()
            return True
        kidx = self._index.get(key)
        if kidx is None:
            kidx = self._intern(key)
        fn = first if type(first) is bytes else first.bytes  # (a zmq.Frame's)
        nidx = self._names.get(fn)
        if nidx is None:
            nidx = self._name_of(fn)
        if srcs is None:
            one = self._template(src, nidx, now, kidx, code)
            rest = one[_AT_TIMES + _TIMES.size :]
            later.last = (first, key, code, src.parent, src.origin, one[:_AT_TIMES], rest)
            records = one * k
        else:
            made = {s: self._template(s, nidx, now, kidx, code) for s in dict.fromkeys(srcs)}
            records = b"".join(map(made.__getitem__, srcs))
        if self._later.add(records, head, nin, nout, k) >= MAX_PENDING:
            self._take()
        return True

    def _template(self, src: Any, nidx: int, now: float, kidx: int, code: int) -> bytes:
        """A record of ``src``'s tasks, its per-task fields (Pending's) still 0."""
        oidx = self._intern(src.origin)  # (once a template, not a task)
        return _RECORD.pack(0, src.parent, oidx, nidx, src.submitted, 0.0, 0.0, now, kidx, 0, 0, 0, code)

    def _take(self) -> None:
        """Lay out the records Pending holds, in a block of their own after those before."""
        block = self._later.take()
        if block is not None:
            if self._buf:  # (the per-task loop's records came first)
                self._blocks.append(self._buf)
                self._stored += len(self._buf)
                self._buf = bytearray()
            self._blocks.append(block)
            self._stored += len(block)

    def _settle(self) -> None:
        """Complete what the bulk paths left for later: the last records, the dispatches."""
        self._take()
        if self._later.sent_count:
            self._sent.append(self._later.take_sent())

    def on_lost(self, task: _TaskLike, w: _WorkerLike, reason: str, given_up: bool) -> None:
        """An attempt of ``task`` was lost with worker ``w`` (``given_up``: no retry left)."""
        if given_up:
            self._fn_sent.pop(task.btid, None)
        if w.key not in self.workers:
            self._remember(w)
        self.lost.append((time.time(), w.key, task.btid, reason, given_up))

    def on_job(self, scheduler: str, job: str, what: str) -> None:
        """A batch job of the pool was submitted, started, drains, ended (deploy/elastic.py)."""
        self.job_events.append((time.time(), scheduler, job, what))

    def on_jobs(self, scheduler: str, jobs: Sequence[dict[str, Any]]) -> None:
        """The pool's batch jobs now (JobPool.status()): counted when the counts change."""
        counts = _count_jobs(jobs)
        if not self.job_counts or self.job_counts[-1][1] != counts:
            self.job_counts.append((time.time(), counts))

    def _remember(self, w: _WorkerLike) -> None:
        self.workers[w.key] = (str(w.name), str(w.info.get("host") or "?"), w.info.get("pid"))

    def _name_of(self, data: bytes) -> int:
        """The index in _values of the name of the function pickled in ``data``."""
        if len(self._names) >= 4096:
            self._names.clear()
        i = self._names[data] = self._intern(function_name(data))
        return i

    # -------------------------------------------------------------- writing
    def raw(self) -> tracefile.RawTrace:
        """What the recorder holds, as the binary file stores it (no copy of the records)."""
        self._settle()
        return tracefile.RawTrace(
            self._buf, b"".join(self._sent), self._values, self.workers, self.lost,
            self.job_events, self.job_counts, self.meta, self.dropped, self.created, self.limit,
            list(self._blocks),
        )  # fmt: skip

    @classmethod
    def from_raw(cls, raw: tracefile.RawTrace, path: str = "") -> TraceRecorder:
        """A recorder holding what ``raw`` (a binary file, read back) holds; ``write()`` needs a path
        if ``path`` (not checked here: a file is read from anywhere) is empty."""
        rec = cls.__new__(cls)
        rec.path, rec.limit = path, raw.limit
        rec._index, rec._names = {}, {}  # (for recording more, which a read-back trace does not)
        rec._later, rec._bulk_from, rec._fn_sent = Pending(), _BULK_FROM, {}
        rec._blocks, rec._stored = [], 0
        rec._buf = bytearray().join([*raw.blocks, raw.records])
        rec._sent = [bytearray(raw.sent)]
        rec._values = list(raw.values)
        rec.workers, rec.lost, rec.meta = dict(raw.workers), list(raw.lost), dict(raw.meta)
        rec.job_events, rec.job_counts = list(raw.job_events), list(raw.job_counts)
        rec.dropped, rec.created = raw.dropped, raw.created
        return rec

    def write(self, path: str | None = None, *, binary: bool | None = None) -> str:
        """Write the timeline (atomically: a reader never sees half a file); return its path.

        ``binary`` (default: the file's name does not end in ``.json``) writes
        the compact file of tracefile.py, which costs a fraction of the JSON.
        """
        target = path or self.path
        if binary is None:
            binary = tracefile.is_binary(target)
        directory = os.path.dirname(os.path.abspath(target))
        fd, tmp = tempfile.mkstemp(prefix=".scoopexec-trace-", suffix=".tmp", dir=directory)
        try:
            if binary:
                with os.fdopen(fd, "wb") as bfh:
                    tracefile.write(bfh, self.raw())
            else:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    self._write_to(fh)
            os.chmod(tmp, 0o644 & ~_umask())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return target

    def write_json(self, fh: Any) -> None:
        """Write the Chrome trace-event JSON to the text file ``fh`` (what a ``.json`` trace holds)."""
        self._write_to(fh)

    def document(self) -> dict[str, Any]:
        """The whole trace as a dict: what write() saves, read back."""
        buf = io.StringIO()
        self._write_to(buf)
        doc: dict[str, Any] = json.loads(buf.getvalue())
        return doc

    def _write_to(self, fh: Any) -> None:
        """Write the file's text to ``fh``: one event per line (diff-able, greppable), streamed.

        The events that come per task (its slice, flow arrows, counter samples)
        are written straight from the records with f-strings, without a dict
        per event: numbers as json writes them (``repr``), and every string that
        can hold anything (function, worker, host names) through json's own
        string encoder, once per distinct string.  The few other events go
        through json's encoder.
        """
        # Each task's (last) dispatch time goes in at index 5 (see _resolve).
        recs = _resolve(self._unpacked(), self._sent, self._values)  # (_unpacked settles: _sent too)
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
        off_of = {k: offsets.get(k, 0.0) for k in order}

        # Each task's interval on its worker's clock, corrected to the broker's.
        spans: dict[bytes, list[tuple[float, float, int]]] = {k: [] for k in order}
        for i, r in enumerate(recs):
            s = r[6] + off_of[r[9]]
            spans[r[9]].append((s, s + r[7], i))
        lane_of = [0] * len(recs)
        lanes: dict[bytes, int] = {}
        for key, items in spans.items():
            lanes[key] = _assign_lanes(items, lane_of)

        encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode  # reused: 3x faster
        text = json.encoder.encode_basestring_ascii  # a str as encode() writes it: quoted, escaped
        out = _Lines(fh)
        add = out.add
        add(encode(_meta("process_name", 0, 0, name="pool")))
        add(encode(_meta("process_sort_index", 0, 0, sort_index=0)))
        add(encode(_meta("thread_name", 0, 0, name="tasks waiting / running")))
        for key in order:
            wname, host, wpid = self.workers[key]
            pid = pid_of[key]
            add(encode(_meta("process_name", pid, 0, name=f"worker {wname}")))
            add(encode(_meta("process_sort_index", pid, 0, sort_index=pid)))
            add(encode(_meta("process_labels", pid, 0, labels=f"host {host}, pid {wpid}")))
            for lane in range(max(1, lanes.get(key, 1))):
                label = "tasks" if lane == 0 else f"tasks (overlap {lane + 1})"
                add(encode(_meta("thread_name", pid, lane, name=label)))

        # One complete event ("X") per task, its fields in the order they always had, written by
        # one %-format per task (C does the numbers).  ts and dur are whole ns counted from the
        # origin, both ends truncated the same way (a slice nested before stays nested), written
        # as us with 3 decimals: the exact decimal of k / 1000, which reads back as that float.
        per_worker = {k: (off_of[k], f'"pid":{p},', f'"worker":{text(self.workers[k][0])},'
                          f'"host":{text(self.workers[k][1])},') for k, p in pid_of.items()}  # fmt: skip
        names: dict[str, str] = {}
        statuses = {c: text(label) for c, label in _STATUS_NAMES.items()}
        clients: dict[bytes | None, str] = {b"": '"local"', None: '"?"'}
        linked = {r[1] for r in recs if r[1]}  # tasks that submitted others: their arrows start there
        where: dict[int, tuple[int, int, float, float]] = {}  # btid -> pid, lane, start, end
        lines = out.pending
        line = lines.append
        template = _TASK_EVENT
        for i, r in enumerate(recs):
            btid, parent, origin_key, name, sub, disp, start, run, done, key, nin, nout, retries, code = r
            off, pid_field, who = per_worker[key]
            s = start + off
            lane = lane_of[i]
            if parent or btid in linked:
                where[btid] = (pid_of[key], lane, s, s + run)
            quoted = names.get(name)
            if quoted is None:
                quoted = names[name] = text(name)
            status = statuses.get(code)
            if status is None:
                status = text(str(code))
            client = clients.get(origin_key)
            if client is None:
                client = clients[origin_key] = f'"{origin_key.hex()}"' if origin_key else '"?"'
            t_ns = int((s - origin) * 1e9)
            dur = (int((s + run - origin) * 1e9) - t_ns) / 1000
            line(template % (quoted, t_ns / 1000, dur, pid_field, lane, btid, parent, who,
                             (sub - origin) * 1e6, (disp - origin) * 1e6, (done - origin) * 1e6,
                             (s - sub) * 1e3, nin, nout, retries, status, client))  # fmt: skip
            if len(lines) >= out.BLOCK:
                out.flush()

        th = _thousandths
        # Parent -> child arrows, from inside the parent at the child's submission.
        for r in recs:
            btid, parent = r[0], r[1]
            if not parent or parent not in where or btid not in where:
                continue
            ppid, plane, ps, pe = where[parent]
            cpid, clane, cs, _ = where[btid]
            t = min(max(r[4], ps), pe)
            add(f'{{"name":"submit","cat":"nested","ph":"s","id":{btid},"ts":{th(int((t - origin) * 1e9))},'
                f'"pid":{ppid},"tid":{plane}}}')  # fmt: skip
            add(f'{{"name":"submit","cat":"nested","ph":"f","bp":"e","id":{btid},'
                f'"ts":{th(int((cs - origin) * 1e9))},"pid":{cpid},"tid":{clane}}}')  # fmt: skip

        for t, key, btid, reason, given_up in self.lost:
            add(encode(
                {"name": "task lost" + (" (given up)" if given_up else ""), "cat": "lost", "ph": "i",
                 "s": "p", "ts": us(t), "pid": pid_of.get(key, 0), "tid": 0,
                 "args": {"task": btid, "reason": reason, "given_up": given_up}}
            ))  # fmt: skip

        for t, scheduler, job, what in self.job_events:
            add(encode({"name": f"{scheduler} job {job}: {what}", "cat": "jobs", "ph": "i", "s": "p",
                        "ts": us(t), "pid": 0, "tid": 0, "args": {"job": job, "event": what}}))  # fmt: skip
        for t, counts in self.job_counts:
            add(encode({"name": "jobs", "cat": "jobs", "ph": "C", "ts": us(t), "pid": 0, "tid": 0,
                        "args": counts}))  # fmt: skip

        for t, waiting, running in _counters(recs, offsets):
            add(f'{{"name":"tasks","cat":"pool","ph":"C","ts":{th(int((t - origin) * 1e9))},"pid":0,"tid":0,'
                f'"args":{{"waiting":{waiting},"running":{running}}}}}')  # fmt: skip
        out.close()

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
        rest = {
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
        fh.write(json.dumps(rest, indent=1)[1:].lstrip("\n"))
        fh.write("\n")


# ------------------------------------------------------------------ helpers
_BULK_FROM = 4  # results in a message from which on_finished tries _bulk (fewer: the loop costs less)
# A record's times (submitted, start, run time, result received: at _AT_TIMES), which _bulk packs
# per message into the last template when only they differ (Pending.last).
_AT_STATUS, _AT_NFRAMES = _HEAD + ENTRY_STATUS, _HEAD + ENTRY_NFRAMES  # the first entry's, in a header
_TIMES = struct.Struct("<dddd")
_AT_TIMES = struct.calcsize("<qqII")
_TASK_FIELDS = len(TASK_ENTRY.unpack(bytes(TASK_ENTRY.size)))  # numbers in a TASKS entry, the broker id first


def _resolve(
    records: Iterable[tuple[Any, ...]], sent: list[bytes | bytearray], v: list[Any]
) -> list[tuple[Any, ...]]:
    """The records (TASK_RECORD's fields) with their dispatch times (``sent``: DISPATCH blocks)
    and the values they index (``v``), laid out as::

        0 broker id, 1 parent, 2 client key, 3 name, 4 submitted, 5 dispatched,
        6 started (worker clock), 7 run time, 8 result received, 9 worker key,
        10 bytes in, 11 bytes out, 12 retries, 13 status
    """
    when = dict(_DISPATCH.iter_unpack(b"".join(sent)))  # (a retried task's last dispatch wins)
    return [(b, p, v[o], v[n], sub, min(when.get(b, now), now), st, run, now, v[k], nin, nout, a, c)
            for b, p, o, n, sub, st, run, now, k, nin, nout, a, c in records]  # fmt: skip


def _count_jobs(jobs: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts = {"pending": 0, "running": 0, "draining": 0, "workers": 0}
    for j in jobs:
        state = str(j.get("state", ""))
        key = "draining" if state.startswith("draining") else state
        if key in counts:
            counts[key] += 1
        counts["workers"] += int(j.get("workers") or 0)
    return counts


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


class _Lines:
    """Writes the ``traceEvents`` array of the file: ``add()`` one event's JSON text at a time,
    ``close()`` after the last; written out in blocks of lines, never the whole file in memory."""

    BLOCK = 4096

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.pending: list[str] = []
        self.sep = ""  # before the next block: nothing before the first event
        fh.write('{"traceEvents": [\n')

    def add(self, event: str) -> None:
        pending = self.pending
        pending.append(event)
        if len(pending) >= self.BLOCK:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.fh.write(self.sep + ",\n".join(self.pending))
            self.sep = ",\n"
            self.pending.clear()

    def close(self) -> None:
        self.flush()
        self.fh.write("\n],\n")


_TASK_EVENT = (
    '{"name":%s,"cat":"task","ph":"X","ts":%.3f,"dur":%.3f,%s"tid":%d,"args":{"task":%d,"parent":%d,%s'
    '"submitted_us":%.3f,"dispatched_us":%.3f,"finished_us":%.3f,"wait_ms":%.3f,'
    '"bytes_in":%d,"bytes_out":%d,"retries":%d,"status":%s,"client":%s}}'
)  # one task's complete event (TraceRecorder._write_to)
_NOTHING = object()
_THOUSANDTHS = tuple(f".{n:03d}".rstrip("0") if n else ".0" for n in range(1000))  # ".0", ".001" ... ".999"
_EXACT = 10**15  # |k| below this: k / 1000 has at most 15 significant digits, which repr writes as they are


def _thousandths(k: int) -> str:
    """``repr(k / 1000)``, the JSON number json writes for it, without the float's costly repr.

    A decimal of at most 15 significant digits survives the round trip
    through a float, so the shortest text that reads back as ``k / 1000`` (what
    ``repr`` writes) is that decimal itself, in plain notation at these
    magnitudes (repr switches to an exponent from 1e16 and below 1e-4).
    """
    if 0 <= k < _EXACT:
        q, n = divmod(k, 1000)
        return f"{q}{_THOUSANDTHS[n]}"
    if -_EXACT < k < 0:
        q, n = divmod(-k, 1000)
        return f"-{q}{_THOUSANDTHS[n]}"
    return repr(k / 1000)


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


def _assign_lanes(items: list[tuple[float, float, int]], lane_of: list[int]) -> int:
    """Put each interval on a lane where it nests inside, or follows, what is there.

    Chrome's viewers draw slices on one row as a stack, which only works when
    they nest; a worker runs tasks concurrently (a parked task and the tasks
    run while it waits), so overlapping tasks that do not nest get extra lanes.
    Returns the number of lanes.  Each interval takes the first lane that has
    room, looked for lane by lane while there are few (a run has a handful);
    beyond _LANE_SCAN lanes (a crafted file: thousands of overlaps) _many_lanes
    finds the same lane in a tree, so that the work stays n log n.
    """
    items.sort(key=lambda x: (x[0], -x[1]))
    stacks: list[list[float]] = []  # per lane: ends of the slices open at the current time
    for j, (s, e, i) in enumerate(items):
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
            if len(stacks) > _LANE_SCAN:
                return _many_lanes(items, j + 1, stacks, lane_of)
    return len(stacks)


_LANE_SCAN = 32


def _many_lanes(
    items: list[tuple[float, float, int]], j: int, stacks: list[list[float]], lane_of: list[int]
) -> int:
    """_assign_lanes from ``items[j]`` on, the lanes ``stacks`` so far: the same choice (the first
    lane whose slices still open at the start all end at or after the end), found with a heap
    of the open ends (closed as time passes) and a max-tree of each lane's innermost open end
    (inf for an empty lane), which leads to the first lane with room in log steps."""
    inf = math.inf
    heap = [(end, n) for n, stack in enumerate(stacks) for end in stack]
    heapq.heapify(heap)
    size = 1
    tree: list[float] = []

    def build() -> None:
        nonlocal size, tree
        while size <= len(stacks):
            size *= 2
        tree = [-inf] * (2 * size)
        for n, stack in enumerate(stacks):
            tree[size + n] = stack[-1] if stack else inf
        for node in range(size - 1, 0, -1):
            tree[node] = max(tree[2 * node], tree[2 * node + 1])

    def update(n: int) -> None:
        node = size + n
        tree[node] = stacks[n][-1] if stacks[n] else inf
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2

    build()
    for s, e, i in items[j:]:
        while heap and heap[0][0] <= s:  # slices ended: each is the innermost of its lane
            _, n = heapq.heappop(heap)
            stacks[n].pop()
            update(n)
        if tree[1] >= e:
            node = 1
            while node < size:
                node = 2 * node if tree[2 * node] >= e else 2 * node + 1
            n = node - size
            stacks[n].append(e)
        else:
            n = len(stacks)
            stacks.append([e])
            if n >= size:
                build()
        update(n)
        heapq.heappush(heap, (e, n))
        lane_of[i] = n
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
    add = changes.append
    for r in recs:
        s = r[6] + offsets.get(r[9], 0.0)
        add((r[4], 1, 0))
        add((s, -1, 1))
        add((s + r[7], 0, -1))
    changes.sort(key=itemgetter(0))
    t_end = changes[-1][0]
    step = (t_end - changes[0][0]) / _COUNTER_POINTS
    out: list[tuple[float, int, int]] = []
    waiting = running = 0
    then: list[float | None] = [c[0] for c in changes]  # the time of the next change
    then.append(None)
    del then[0]
    start: float | None = None  # the open sample: when it starts, the largest values in it
    top_w = top_r = 0
    for (t, dw, dr), t_next in zip(changes, then, strict=True):
        waiting += dw
        running += dr
        if t_next == t:
            continue  # apply every change of one instant first
        if start is None or t - start >= step:
            if start is not None:
                out.append((start, top_w, top_r))
            start, top_w, top_r = t, waiting, running
        else:  # (comparisons, not max(): a call per change costs more than the rest of the loop)
            if waiting > top_w:  # noqa: PLR1730
                top_w = waiting
            if running > top_r:  # noqa: PLR1730
                top_r = running
    assert start is not None
    out.append((start, top_w, top_r))
    if out[-1][0] != t_end or out[-1][1:] != (waiting, running):
        out.append((t_end, waiting, running))
    return out


_SKIP_MODULES = ("functools", "copyreg", "builtins", "cloudpickle", "_operator", "operator", "types")
# Around the user's function: a map's chunk runners (and starmap's call), task limits, a seeded call.
_OURS = frozenset((*serialize.RUNNER_MODULES, *serialize.WRAPPER_MODULES))
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
    if data[:1] == b"\x00":  # a large function frame's head (wire/fnframes.py) before the pickle
        data = data[fnframes.HEAD :]
    try:
        data = fnframes.pickle_of(data)  # (a packed frame's large buffers after the pickle)
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
            if top in _SKIP_MODULES or mod in _OURS:
                continue
            return qn
        if refs:
            return refs[-1][1]
    except Exception:
        pass
    return "task"
