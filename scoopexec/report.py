"""``python -m scoopexec report run.json``: what a recorded timeline says.

Reads a trace written by ``ScoopExecutor(trace=...)`` (or a standalone
broker's ``--trace``), prints a summary, and with ``--png FILE`` draws the
timeline (matplotlib, an optional extra: ``pip install 'scoopexec[plot]'``)::

    run.json: 3,000 tasks on 4 workers (1 host) in 6.21 s
    task time   median 1.93 ms   p99 4.10 ms   sum 7.52 s
    wait        median 0.11 ms   p99 2.80 ms   (submitted -> started)
    overhead    41 us per task   (workers idle while tasks waited: 0.12 s)
    ...

The numbers, defined:

* span: first submission to last result received by the broker;
* task time: a task's run on its worker, start to end (a task that waits on
  sub-tasks includes the wait);
* wait: submission (broker clock) to start (worker clock, corrected);
* busy %: per worker, the time at least one of its tasks was running,
  over the span;
* overhead per task: worker time spent idle while some task was waiting to
  start, summed over workers, divided by the number of tasks: the time the
  pool lost to scheduling and transport rather than to a lack of work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import tracefile
from .trace import TraceRecorder
from .tracefile import MAGIC, TraceError

__all__ = [
    "Summary",
    "TaskSpan",
    "Trace",
    "TraceError",
    "WorkerSummary",
    "format_summary",
    "load",
    "percentile",
    "read_document",
    "render_png",
    "report_main",
    "summarize",
    "trace_main",
]


@dataclass(frozen=True)
class TaskSpan:
    """One task of a trace; times in seconds from the trace's origin (first submission)."""

    task: int
    parent: int
    name: str
    worker: int  # the worker's row (its "pid" in the trace file)
    lane: int
    start: float
    end: float
    submitted: float
    finished: float
    bytes_in: int
    bytes_out: int
    retries: int
    status: str

    @property
    def run(self) -> float:
        """Seconds from start to end."""
        return self.end - self.start

    @property
    def wait(self) -> float:
        """Seconds from submission to start."""
        return self.start - self.submitted


@dataclass
class Trace:
    """A trace file read back: tasks, workers (row -> name and host), counters and metadata."""

    path: str
    tasks: list[TaskSpan]
    workers: dict[int, tuple[str, str]]  # row -> (name, host)
    lanes: dict[int, int]
    counters: list[tuple[float, int, int]]  # (time, waiting, running)
    lost: list[tuple[float, int, str]]  # (time, worker row, reason)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerSummary:
    """One worker's share of the run."""

    name: str
    host: str
    tasks: int
    busy: float  # seconds with at least one task running
    busy_pct: float


@dataclass(frozen=True)
class Summary:
    """The numbers ``report`` prints (seconds, bytes and counts)."""

    tasks: int
    workers: list[WorkerSummary]
    hosts: int
    span: float
    run_median: float
    run_p99: float
    run_total: float
    wait_median: float
    wait_p99: float
    overhead_total: float
    overhead_per_task: float
    bytes_in: int
    bytes_out: int
    retries: int
    tasks_retried: int
    lost_attempts: int
    failed: dict[str, int]
    nested: int
    max_depth: int
    functions: list[tuple[str, int, float, float, float]]  # name, tasks, total, median, p99
    not_recorded: int = 0


def read_document(path: str) -> Any:
    """The Chrome trace-event document of a timeline file, JSON or binary (tracefile.py): the
    decoded JSON, or what ``trace export`` would write for the binary file."""
    data = tracefile.read_bytes(path)
    if data[: len(MAGIC)] == MAGIC or (data and MAGIC.startswith(data)):
        return TraceRecorder.from_raw(tracefile.parse(data, path)).document()
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceError(f"{path} is neither a JSON trace file ({exc}) nor a binary one") from None


def load(path: str) -> Trace:
    """Read a trace file (JSON or binary); TraceError says what is wrong with one that is not a
    scoopexec timeline."""
    doc = read_document(path)
    events = doc.get("traceEvents") if isinstance(doc, dict) else doc if isinstance(doc, list) else None
    if not isinstance(events, list):
        raise TraceError(f"{path} is JSON but not a Chrome trace (no traceEvents)")
    meta = _checked_meta(doc.get("scoopexec", {}) if isinstance(doc, dict) else {}, path)
    names: dict[int, str] = {}
    lanes: dict[int, int] = {}
    tasks: list[TaskSpan] = []
    counters: list[tuple[float, int, int]] = []
    lost: list[tuple[float, int, str]] = []
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            continue
        try:
            _read_event(ev, names, lanes, tasks, counters, lost)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise TraceError(f"{path}: event {i} of traceEvents is damaged ({why})") from None
    if not tasks and not meta:
        raise TraceError(f"{path} has no scoopexec tasks (was it written by ScoopExecutor(trace=...)?)")
    workers: dict[int, tuple[str, str]] = {}
    for w in meta.get("workers", ()):
        if isinstance(w, dict) and "pid" in w:
            workers[w["pid"]] = (str(w.get("name", "?")), str(w.get("host", "?")))
    for pid in {t.worker for t in tasks} | set(names):
        if pid and pid not in workers:
            name = names.get(pid, f"worker {pid}").removeprefix("worker ")
            workers[pid] = (name, name.rsplit(":", 1)[0] if ":" in name else "?")
    for pid in workers:
        lanes.setdefault(pid, 1)
    tasks.sort(key=lambda t: (t.start, t.task))
    return Trace(path, tasks, workers, lanes, sorted(counters), sorted(lost), dict(meta))


def _checked_meta(meta: Any, path: str) -> dict[str, Any]:
    """The file's "scoopexec" object, with what load() and the summary read from it checked:
    TraceError naming the field, not a ValueError from deep inside (a file can say anything)."""
    if not isinstance(meta, dict):
        raise TraceError(f"{path}: its 'scoopexec' part is a {type(meta).__name__}, not an object")
    where = f"{path}: in its 'scoopexec' part,"
    count = meta.get("tasks_not_recorded", 0)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise TraceError(f"{where} 'tasks_not_recorded' is {count!r}, not a count of tasks")
    workers = meta.get("workers", [])
    if not isinstance(workers, list):
        raise TraceError(f"{where} 'workers' is a {type(workers).__name__}, not a list")
    for w in workers:
        pid = w.get("pid") if isinstance(w, dict) else None
        if isinstance(w, dict) and "pid" in w and (isinstance(pid, bool) or not isinstance(pid, int)):
            raise TraceError(f"{where} a worker's 'pid' (its row) is {pid!r}, not a whole number")
    argv = meta.get("argv")
    if argv is not None and not isinstance(argv, list):
        raise TraceError(f"{where} 'argv' is a {type(argv).__name__}, not a list")
    return meta


def _read_event(
    ev: dict[str, Any],
    names: dict[int, str],
    lanes: dict[int, int],
    tasks: list[TaskSpan],
    counters: list[tuple[float, int, int]],
    lost: list[tuple[float, int, str]],
) -> None:
    """One event of the file into what load() collects (a task, a worker's name, a sample, a loss)."""
    ph = ev.get("ph")
    if ph == "X" and ev.get("cat") == "task":
        a = ev.get("args") or {}
        start = float(ev["ts"]) / 1e6
        end = start + float(ev.get("dur", 0)) / 1e6
        pid, tid = int(ev.get("pid", 0)), int(ev.get("tid", 0))
        lanes[pid] = max(lanes.get(pid, 1), tid + 1)
        tasks.append(
            TaskSpan(
                task=int(a.get("task", 0)),
                parent=int(a.get("parent", 0)),
                name=str(ev.get("name", "task")),
                worker=pid,
                lane=tid,
                start=start,
                end=end,
                submitted=_seconds(a.get("submitted_us"), start),
                finished=_seconds(a.get("finished_us"), end),
                bytes_in=int(a.get("bytes_in", 0)),
                bytes_out=int(a.get("bytes_out", 0)),
                retries=int(a.get("retries", 0)),
                status=str(a.get("status", "ok")),
            )
        )
    elif ph == "M" and ev.get("name") == "process_name":
        names[int(ev.get("pid", 0))] = str((ev.get("args") or {}).get("name", ""))
    elif ph == "C" and ev.get("cat") == "pool":
        a = ev.get("args") or {}
        counters.append((float(ev["ts"]) / 1e6, int(a.get("waiting", 0)), int(a.get("running", 0))))
    elif ph == "i" and ev.get("cat") == "lost":
        reason = str((ev.get("args") or {}).get("reason", ""))
        lost.append((float(ev["ts"]) / 1e6, int(ev.get("pid", 0)), reason))


def _seconds(us: Any, default: float) -> float:
    return float(us) / 1e6 if isinstance(us, (int, float)) else default


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted ``values``, by the nearest-rank method (0 if empty)."""
    if not values:
        return 0.0
    k = max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))
    return values[k]


def _union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for s, e in sorted(intervals):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _length(intervals: Iterable[tuple[float, float]]) -> float:
    return sum(e - s for s, e in intervals)


def _intersection(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total length of the overlap of two sorted, disjoint interval lists."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        s = max(a[i][0], b[j][0])
        e = min(a[i][1], b[j][1])
        if e > s:
            total += e - s
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _gaps(busy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(busy[k][1], busy[k + 1][0]) for k in range(len(busy) - 1)]


def summarize(trace: Trace) -> Summary:
    """Compute the summary numbers of a trace (see the module docstring for definitions)."""
    tasks = trace.tasks
    n = len(tasks)
    if tasks:
        first = min(t.submitted for t in tasks)
        last = max(max(t.finished, t.end) for t in tasks)
        span = max(0.0, last - first)
    else:
        span = 0.0
    runs = sorted(t.run for t in tasks)
    waits = sorted(max(0.0, t.wait) for t in tasks)
    waiting = _union((t.submitted, t.start) for t in tasks)

    per_worker: dict[int, list[TaskSpan]] = {pid: [] for pid in trace.workers}
    for t in tasks:
        per_worker.setdefault(t.worker, []).append(t)
    workers: list[WorkerSummary] = []
    overhead = 0.0
    for pid, ts in sorted(per_worker.items()):
        busy = _union((t.start, t.end) for t in ts)
        busy_time = _length(busy)
        overhead += _intersection(_gaps(busy), waiting)
        name, host = trace.workers.get(pid, (f"worker {pid}", "?"))
        pct = 100.0 * busy_time / span if span else 0.0
        workers.append(WorkerSummary(name, host, len(ts), busy_time, pct))

    failed: dict[str, int] = {}
    for t in tasks:
        if t.status != "ok":
            failed[t.status] = failed.get(t.status, 0) + 1

    by_id = {t.task: t for t in tasks}
    depth_memo: dict[int, int] = {}

    def depth(t: TaskSpan) -> int:
        chain = []
        cur: TaskSpan | None = t
        while cur is not None and cur.task not in depth_memo:
            chain.append(cur)
            cur = by_id.get(cur.parent) if cur.parent else None
            if len(chain) > len(by_id):  # a cycle would be a corrupt file: stop
                break
        d = depth_memo.get(cur.task, 0) if cur is not None else 0
        for c in reversed(chain):
            d = d + 1 if c.parent in by_id else 0
            depth_memo[c.task] = d
        return depth_memo[t.task]

    max_depth = max((depth(t) for t in tasks), default=0)

    groups: dict[str, list[float]] = {}
    for t in tasks:
        groups.setdefault(t.name, []).append(t.run)
    functions = []
    for name, rs in groups.items():
        rs.sort()
        functions.append((name, len(rs), sum(rs), percentile(rs, 50), percentile(rs, 99)))
    functions.sort(key=lambda f: -f[2])

    return Summary(
        tasks=n,
        workers=workers,
        hosts=len({w.host for w in workers}),
        span=span,
        run_median=percentile(runs, 50),
        run_p99=percentile(runs, 99),
        run_total=sum(runs),
        wait_median=percentile(waits, 50),
        wait_p99=percentile(waits, 99),
        overhead_total=overhead,
        overhead_per_task=overhead / n if n else 0.0,
        bytes_in=sum(t.bytes_in for t in tasks),
        bytes_out=sum(t.bytes_out for t in tasks),
        retries=sum(t.retries for t in tasks),
        tasks_retried=sum(1 for t in tasks if t.retries),
        lost_attempts=len(trace.lost),
        failed=failed,
        nested=sum(1 for t in tasks if t.parent),
        max_depth=max_depth,
        functions=functions,
        not_recorded=int(trace.meta.get("tasks_not_recorded", 0) or 0),
    )


def _t(seconds: float) -> str:
    """A duration with a unit that suits it."""
    if seconds >= 100:
        return f"{seconds:,.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} us"


def _b(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def format_summary(s: Summary, path: str = "", meta: dict[str, Any] | None = None) -> str:
    """The summary as ``report`` prints it."""
    meta = meta or {}
    nw = len(s.workers)
    lines = [
        f"{path + ': ' if path else ''}{s.tasks:,} task{'s' if s.tasks != 1 else ''} on {nw} "
        f"worker{'s' if nw != 1 else ''} ({s.hosts} host{'s' if s.hosts != 1 else ''}) in {_t(s.span)}"
        " (first submission to last result)",
    ]
    if meta.get("argv"):
        lines.append(f"program     {' '.join(str(a) for a in meta['argv'])}")
    if s.not_recorded:
        lines.append(f"note        {s.not_recorded:,} later tasks were not recorded (trace size limit)")
    if s.tasks:
        lines += [
            f"task time   median {_t(s.run_median)}   p99 {_t(s.run_p99)}   sum {_t(s.run_total)}",
            f"wait        median {_t(s.wait_median)}   p99 {_t(s.wait_p99)}   (submitted -> started)",
            f"overhead    {_t(s.overhead_per_task)} per task   (workers idle while tasks waited: "
            f"{_t(s.overhead_total)} in all)",
            f"data        {_b(s.bytes_in)} in, {_b(s.bytes_out)} out "
            f"({_b(s.bytes_in / s.tasks)} and {_b(s.bytes_out / s.tasks)} per task)",
        ]
    lines.append(
        f"retries     {s.retries} ({s.tasks_retried} task(s) re-run after losing a worker; "
        f"{s.lost_attempts} attempt(s) lost)"
    )
    if s.failed:
        lines.append("failures    " + ", ".join(f"{n} {k}" for k, n in sorted(s.failed.items())))
    if s.nested:
        lines.append(f"nesting     {s.nested:,} sub-tasks, up to {s.max_depth} level(s) deep")
    if s.workers:
        lines.append("")
        rows = [("WORKER", "HOST", "TASKS", "BUSY", "BUSY %")]
        for w in s.workers:
            rows.append((w.name, w.host, f"{w.tasks:,}", _t(w.busy), f"{w.busy_pct:.1f}"))
        lines += _table(rows, right={2, 3, 4})
    if s.functions:
        lines.append("")
        rows = [("FUNCTION", "TASKS", "SUM", "MEDIAN", "P99")]
        for name, count, total, med, p99 in s.functions[:15]:
            rows.append((name, f"{count:,}", _t(total), _t(med), _t(p99)))
        if len(s.functions) > 15:
            rows.append((f"... {len(s.functions) - 15} more", "", "", "", ""))
        lines += _table(rows, right={1, 2, 3, 4})
    return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        out.append("  ".join(cells).rstrip())
    return out


def render_png(trace: Trace, path: str, *, title: str = "", width: float = 12.0) -> None:
    """Draw the timeline: a row per worker (and overlap lane), a bar per task, and the queue below.

    Needs matplotlib (``pip install 'scoopexec[plot]'``); raises ImportError
    with that advice when it is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise ImportError(
            "drawing the timeline needs matplotlib: pip install 'scoopexec[plot]' (or matplotlib)"
        ) from exc

    s = summarize(trace)
    rows: dict[tuple[int, int], int] = {}
    labels: list[str] = []
    pids = sorted(trace.workers, key=lambda p: (trace.workers[p][1], trace.workers[p][0]))
    for pid in pids:
        for lane in range(trace.lanes.get(pid, 1)):
            rows[(pid, lane)] = len(rows)
            labels.append(trace.workers[pid][0] if lane == 0 else "")
    nrows = max(1, len(rows))

    names = [f[0] for f in s.functions]
    palette = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    color = {n: palette[i % 10] for i, n in enumerate(names[:10])}
    other = (0.6, 0.6, 0.6)

    height = min(14.0, 2.2 + 0.32 * nrows) + 1.6
    fig, (ax, axq) = plt.subplots(
        2, 1, figsize=(width, height), sharex=True,
        gridspec_kw={"height_ratios": [max(2.0, 0.32 * nrows), 1.4]},
    )  # fmt: skip
    bars: dict[tuple[int, str, bool], list[tuple[float, float]]] = {}
    for t in trace.tasks:
        key = (rows.get((t.worker, t.lane), 0), t.name, t.status != "ok")
        bars.setdefault(key, []).append((t.start, max(t.run, 1e-9)))
    # Thin white edges keep back-to-back tasks apart, while there are few enough to see.
    dense = len(trace.tasks) > 3000 * max(1, len(pids))
    for (row, name, bad), spans in bars.items():
        ax.broken_barh(
            spans, (row - 0.4, 0.8), facecolors=color.get(name, other),
            edgecolors="red" if bad else ("none" if dense else "white"),
            linewidth=1.2 if bad else (0 if dense else 0.4),
        )  # fmt: skip
    # Parent -> sub-task links, while there are few enough to follow.
    by_id = {t.task: t for t in trace.tasks}
    links = [(by_id[t.parent], t) for t in trace.tasks if t.parent in by_id]
    if 0 < len(links) <= 400:
        for p, c in links:
            y0 = rows.get((p.worker, p.lane), 0)
            y1 = rows.get((c.worker, c.lane), 0)
            x0 = min(max(c.submitted, p.start), p.end)
            ax.plot([x0, c.start], [y0, y1], color="black", alpha=0.25, linewidth=0.6)
    for when, pid, _ in trace.lost:
        ax.plot([when], [rows.get((pid, 0), 0)], marker="x", color="red", markersize=8)
    ax.set_yticks(range(nrows))
    ax.set_yticklabels(labels or ["(no workers)"], fontsize=8)
    ax.set_ylim(nrows - 0.5, -0.5)
    ax.set_ylabel("worker")
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=color[n], label=n) for n in names[:10]]
    if len(names) > 10:
        handles.append(Patch(color=other, label="other"))
    if any(t.status != "ok" for t in trace.tasks):
        handles.append(Patch(facecolor="white", edgecolor="red", label="failed"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.85)
    busy = sum(w.busy for w in s.workers) / (s.span * len(s.workers)) * 100 if s.span and s.workers else 0.0
    ax.set_title(
        title or f"{os.path.basename(trace.path)}: {s.tasks:,} tasks on {len(s.workers)} workers in "
        f"{_t(s.span)}; workers busy {busy:.0f} %, task time median {_t(s.run_median)}",
        fontsize=10,
    )

    if trace.counters:
        xs = [c[0] for c in trace.counters]
        axq.step(xs, [c[2] for c in trace.counters], where="post", label="running", color="tab:green")
        axq.step(xs, [c[1] for c in trace.counters], where="post", label="waiting", color="tab:orange")
        axq.legend(loc="upper right", fontsize=8)
    axq.set_ylabel("tasks")
    axq.set_xlabel("seconds since the first submission")
    axq.grid(alpha=0.3)
    axq.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_main(argv: list[str]) -> int:
    """``python -m scoopexec report FILE [--png OUT] [--json]``."""
    ap = argparse.ArgumentParser(
        prog="python -m scoopexec report",
        description="Summarise a timeline recorded with ScoopExecutor(trace=FILE) or --trace FILE: tasks, "
        "per-worker busy %, task time (median, p99), wait and overhead per task; optionally draw it.",
    )
    ap.add_argument("trace", help="the trace file (JSON, Chrome trace-event format, or binary)")
    ap.add_argument("--png", metavar="OUT", help="also draw the timeline to this PNG file (needs matplotlib)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--title", default="", help="title of the picture")
    ap.add_argument("--width", type=float, default=12.0, help="width of the picture in inches (default 12)")
    args = ap.parse_args(argv)
    try:
        trace = load(args.trace)
    except TraceError as exc:
        print(f"scoopexec report: {exc}", file=sys.stderr)
        return 1
    summary = summarize(trace)
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(summary), indent=1))
    else:
        print(format_summary(summary, args.trace, trace.meta))
    if args.png:
        try:
            render_png(trace, args.png, title=args.title, width=args.width)
        except ImportError as exc:
            print(f"scoopexec report: {exc}", file=sys.stderr)
            return 2
        print(f"\ntimeline drawn to {args.png}", file=sys.stderr if args.json else sys.stdout)
    return 0


def trace_main(argv: list[str]) -> int:
    """``python -m scoopexec trace export IN OUT.json`` (and ``trace report IN ...``: ``report``)."""
    ap = argparse.ArgumentParser(
        prog="python -m scoopexec trace",
        description="Work with a timeline file: ScoopExecutor(trace=FILE) writes the compact binary "
        "format for a FILE not ending in .json, the Chrome/Perfetto JSON for one that does.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ex = sub.add_parser(
        "export",
        help="write a timeline (binary or JSON) as Chrome/Perfetto JSON",
        description="Write the timeline IN (binary or JSON) as the Chrome trace-event JSON "
        "that ScoopExecutor(trace='OUT.json') would have written; open it in ui.perfetto.dev.",
    )
    ex.add_argument("input", metavar="IN")
    ex.add_argument("output", metavar="OUT", help="the JSON file to write ('-': standard output)")
    sub.add_parser("report", help="summarise it: the same as `python -m scoopexec report`", add_help=False)
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    args = ap.parse_args(argv)
    try:
        with open(args.input, "rb") as fh:
            head = fh.read(len(MAGIC))
    except OSError as exc:
        print(f"scoopexec trace: {args.input}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        if head == MAGIC or (head and MAGIC.startswith(head)):
            rec = TraceRecorder.from_raw(tracefile.read(args.input))
            if args.output == "-":
                rec.write_json(sys.stdout)
                return 0
            path = rec.write(args.output, binary=False)
        else:  # already JSON: checked and copied as it is
            load(args.input)
            if args.output == "-":
                with open(args.input, encoding="utf-8") as fh:
                    sys.stdout.write(fh.read())
                return 0
            path = shutil.copyfile(args.input, args.output)
    except TraceError as exc:
        print(f"scoopexec trace: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # (the reader of standard output went away: __main__ ends quietly)
    except OSError as exc:
        print(f"scoopexec trace: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{path}: {os.path.getsize(path):,} bytes of JSON", file=sys.stderr)
    return 0
