"""Side-by-side benchmarks: scoopexec and its peers, same workloads, same run.

    python -m benchmarks [--rounds 5] [--quick] [--json out.json] [--markdown out.md]
                         [--only scoopexec,ProcessPoolExecutor] [--skip Ray]

Contenders: scoopexec, ProcessPoolExecutor and loky always; dask.distributed,
Ray and SCOOP 0.7.2 when installed (``pip install '.[bench]'``), each skipped
with a note when not.  Every contender gets 2 workers.

Each round runs every contender once, in a rotated order so that a noisy
neighbour hurts everyone alike, each in a fresh child process (SCOOP through
its own launcher, ``python -m scoop -n 2``).  The tables report medians over
rounds, ratios against ProcessPoolExecutor measured in the same run, and for
each row whether the issue's target is met.  The definitions of the measures
are in ROWS below and in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.contenders import BASE, CONTENDERS, availability, worker_env  # noqa: E402

FULL: dict[str, Any] = {
    "submit": 5000,
    "map": 20000,
    "rtt": 500,
    "array_mib": 64,
    "cpu_tasks": 16,
    "cpu_ms": 250,
    "nested_reps": 50,
    "wide_workers": 64,
    "wide_tasks": 640,
    "wide_ms": 50,
    "route_tasks": 200_000,
    "route_batch": 64,
    "memory_items": 10_000_000,
    "memory_chunksize": 100,
    "memory_buffersize": 64,
}
QUICK: dict[str, Any] = {
    "submit": 300,
    "map": 1000,
    "rtt": 30,
    "array_mib": 4,
    "cpu_tasks": 4,
    "cpu_ms": 20,
    "nested_reps": 5,
    "wide_workers": 4,
    "wide_tasks": 16,
    "wide_ms": 20,
    "route_tasks": 5000,
    "route_batch": 64,
    "memory_items": 20_000,
    "memory_chunksize": 10,
    "memory_buffersize": 16,
}


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    higher: bool  # higher is better
    # "ratio" (scoopexec vs PPE, >= threshold, 1 = as good), "max"/"min" (absolute) or "none" (reported)
    target: str
    threshold: float
    fmt: str = ",.0f"
    goal: str = ""  # the target in the words, when the threshold alone would not say it

    def describe_target(self) -> str:
        if self.goal:
            return self.goal
        if self.target == "none":
            return "reported"
        if self.target == "ratio":
            return f">= {self.threshold:g}x PPE"
        sign = "<=" if self.target == "max" else ">="
        return f"{sign} {self.threshold:g} {self.unit}"


def rows(size: dict[str, Any]) -> list[Row]:
    """The measures, each with its target: issue 17's where it names one (submit, map with
    chunksize=1, round trip, the 64 MiB array, the CPU-bound tasks, start, nested sub-tasks, 64
    sleeping workers), the first wave's for the others."""
    s = size
    return [
        Row("submit", f"submit {s['submit']:,} no-op tasks, then gather", "tasks/s", True, "ratio", 8.0),
        Row("map1", f"map over {s['map']:,} items, chunksize=1", "items/s", True, "ratio", 8.0),
        Row(
            "mapchunk",
            f"map over {5 * s['map']:,} items, chunksize={max(1, 5 * s['map'] // 16):,}",
            "items/s", True, "ratio", 1.0,
        ),
        Row(
            "rtt", "one submit(...).result() round trip, p50", "us", False, "ratio", 1 / 0.6,
            goal="<= 0.6x PPE's time",
        ),
        Row(
            "array_first", f"{s['array_mib']} MiB numpy array to a worker and back, the pool's first",
            "MB/s", True, "none", 0,
        ),
        Row(
            "array", f"{s['array_mib']} MiB numpy array to a worker and back, steady (median of echoes 4-6)",
            "MB/s", True, "ratio", 10.0,
        ),
        Row(
            "cpu", f"{s['cpu_tasks']} x {s['cpu_ms'] / 1000:g} s CPU tasks, efficiency", "%", True,
            "ratio", 1.0, ".1f", goal="wall time <= PPE's (>= 1x)",
        ),
        Row("broker_cpu", "broker / scheduler CPU during those tasks", "% of a core", False, "max", 5, ".1f"),
        Row("import", "import the pool's module (a fresh process's first)", "s", False, "none", 0, ".3f"),
        Row("start", "start pool + first result (top-level import done)", "s", False, "max", 0.2, ".3f"),
        Row("shutdown", "shutdown", "s", False, "max", 0.2, ".3f"),
        Row("nested", "4 nested sub-tasks from a task, p50", "ms", False, "max", 0.5, ".2f"),
        Row("routing", f"broker routing rate, batches of {s['route_batch']}", "tasks/s", True, "min", 50_000),
        Row(
            "wide",
            f"{s['wide_workers']} idle-waiting workers, {s['wide_tasks']} x {s['wide_ms']} ms sleeps: "
            "utilization",
            "%", True, "min", 97, ".1f",
        ),
        Row(
            "memory",
            f"map {s['memory_items']:,} items, buffersize={s['memory_buffersize']}, "
            f"chunksize={s['memory_chunksize']}: peak client RSS",
            "MB", False, "max", 200, ".0f",
        ),
    ]  # fmt: skip


# Why a cell is empty, when it is by nature rather than by failure.
NA: dict[tuple[str, str], str] = {
    ("ProcessPoolExecutor", "nested"): "impossible",
    ("loky", "nested"): "impossible",
    ("ProcessPoolExecutor", "memory"): "n/a (no buffersize before 3.14)",
    ("loky", "memory"): "n/a (no buffersize)",
}
for _n in ("ProcessPoolExecutor", "loky", "dask", "Ray", "SCOOP"):
    NA[(_n, "routing")] = "n/a"  # the measure is of scoopexec's broker
for _n in ("dask", "Ray", "SCOOP"):
    NA[(_n, "memory")] = "n/a"
    NA[(_n, "wide")] = "not run"
NA[("SCOOP", "import")] = "in its start"  # (its start is timed from launching its interpreters)


# ---------------------------------------------------------------- children
def _run_child(cmd: list[str], timeout: float, log_path: str) -> tuple[int | None, float]:
    """Run a child in its own process group; returns (exit code or None on timeout, exit time)."""
    with open(log_path, "ab") as log:
        p = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=worker_env(),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            try:
                rc: int | None = p.wait(timeout)
            except subprocess.TimeoutExpired:
                rc = None
            t_exit = time.time()
        finally:
            # Whatever the child left behind in its process group (a peer's daemons) goes too;
            # also when this process is interrupted (Ctrl-C, or SIGTERM made an exception).
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait()
    return rc, t_exit


def _tail(path: str, n: int = 15) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-n:])
    except OSError:
        return ""


def run_part(
    name: str, part: str, size: dict[str, Any], *, python: str, tmp: str, timeout: float
) -> dict[str, Any]:
    out = os.path.join(tmp, f"{name}-{part}.json")
    log = os.path.join(tmp, f"{name}-{part}.log")
    for p in (out, log):
        if os.path.exists(p):
            os.remove(p)
    cmd = [python, "-m", "benchmarks.run", "--child", name, "--part", part, "--sizes", json.dumps(size)]
    cmd += ["--out", out]
    rc, _ = _run_child(cmd, timeout, log)
    if rc == 0 and os.path.exists(out):
        with open(out) as fh:
            return json.load(fh)  # type: ignore[no-any-return]
    why = "timed out" if rc is None else f"exited with {rc}"
    return {"values": {}, "extra": {}, "errors": {part: f"child {why}: {_tail(log)}"}}


def run_scoop(size: dict[str, Any], *, python: str, tmp: str, timeout: float) -> dict[str, Any]:
    out = os.path.join(tmp, "SCOOP.json")
    log = os.path.join(tmp, "SCOOP.log")
    for p in (out, log):
        if os.path.exists(p):
            os.remove(p)
    script = os.path.join(HERE, "scoop_bench.py")
    cmd = [python, "-m", "scoop", "-q", "-n", "2", script, json.dumps(size), out]
    t0 = time.time()
    rc, t_exit = _run_child(cmd, timeout, log)
    if rc != 0 or not os.path.exists(out):
        why = "timed out" if rc is None else f"exited with {rc}"
        return {"values": {}, "extra": {}, "errors": {"main": f"SCOOP {why}: {_tail(log)}"}}
    with open(out) as fh:
        r = json.load(fh)
    keys = ("submit", "map1", "mapchunk", "rtt", "array_first", "array", "cpu", "broker_cpu", "nested")
    values = {k: r[k] for k in keys}
    # Start: from launching `python -m scoop` (its interpreters start-up included) to the first result.
    values["start"] = r["t_first"] - t0
    values["shutdown"] = t_exit - r["t_end"]
    extra = {k: r[k] for k in ("rtt_ran_here", "array_ran_here", "array_echoes_mb_s")}
    extra["bootstrap_s"] = r["t_main"] - t0
    return {"values": values, "extra": extra, "errors": {}}


# ------------------------------------------------------------------- driver
def run(
    names: list[str],
    rounds: int,
    size: dict[str, Any],
    *,
    python: str,
    skipped: dict[str, str],
    timeout: float,
    progress: bool = True,
) -> dict[str, Any]:
    raw: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    extra: dict[str, dict[str, list[Any]]] = {n: {} for n in names}
    errors: list[str] = []
    tmp = tempfile.mkdtemp(prefix="scoopexec-bench-")

    def record(name: str, res: dict[str, Any], r: int) -> None:
        for k, v in res.get("values", {}).items():
            raw[name].setdefault(k, []).append(v)
        for k, v in res.get("extra", {}).items():
            if k != "tracebacks":
                extra[name].setdefault(k, []).append(v)
        for k, v in res.get("errors", {}).items():
            errors.append(f"round {r + 1}, {name}, {k}: {v}")

    try:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                t = time.perf_counter()
                if name == "SCOOP":
                    record(name, run_scoop(size, python=python, tmp=tmp, timeout=timeout), r)
                else:
                    record(name, run_part(name, "main", size, python=python, tmp=tmp, timeout=timeout), r)
                    if CONTENDERS[name].buffered:
                        record(
                            name, run_part(name, "memory", size, python=python, tmp=tmp, timeout=timeout), r
                        )
                    if name == "scoopexec":
                        record(
                            name, run_part(name, "routing", size, python=python, tmp=tmp, timeout=timeout), r
                        )
                if progress:
                    print(f"round {r + 1}/{rounds}: {name} ({time.perf_counter() - t:.1f} s)",
                          file=sys.stderr, flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {n: {k: statistics.median(v) for k, v in ks.items() if v} for n, ks in raw.items()}
    table = []
    for row in rows(size):
        vals = {n: med[n].get(row.key) for n in names}
        ratio, spread = None, None
        a = vals.get("scoopexec")
        if row.target in ("ratio", "none"):
            ours, base = raw.get("scoopexec", {}).get(row.key), raw.get(BASE, {}).get(row.key)
            ratio, spread = round_ratios(row.higher, ours, base, rounds)
        met = _met(row, vals.get("scoopexec"), ratio)
        ray = vals.get("Ray")
        if row.key == "array" and met and ray is not None and a is not None:
            met = a > ray  # the issue: "i.e. above Ray"
        notes = {n: NA[(n, row.key)] for n in names if vals.get(n) is None and (n, row.key) in NA}
        table.append(
            {
                "key": row.key,
                "label": row.label,
                "unit": row.unit,
                "higher_is_better": row.higher,
                "target": row.describe_target() + (" and above Ray" if row.key == "array" else ""),
                "values": vals,
                "ratio_vs_ppe": ratio,
                "ratio_spread": spread,
                "met": met,
                "notes": notes,
            }
        )
    return {
        "meta": _meta(python, rounds),
        "sizes": size,
        "contenders": names,
        "skipped": skipped,
        "rows": table,
        "raw": raw,
        "extra": extra,
        "errors": errors,
    }


def round_ratios(
    higher: bool, ours: list[float] | None, base: list[float] | None, rounds: int
) -> tuple[float | None, list[float] | None]:
    """scoopexec against PPE: the median of the rounds' ratios (each round measures both, side by
    side) and their (min, max); the ratio of the medians when the rounds do not pair up (a round
    that failed for either: the lists would no longer say which round a value is from).  For
    times, PPE's / scoopexec's: above 1 is better."""
    if not ours or not base:
        return None, None
    if len(ours) == len(base) == rounds and all(ours) and all(base):
        rs = [a / b if higher else b / a for a, b in zip(ours, base, strict=True)]
        return statistics.median(rs), [min(rs), max(rs)]
    a, b = statistics.median(ours), statistics.median(base)
    if not a or not b:
        return None, None
    return (a / b if higher else b / a), None


def _met(row: Row, value: float | None, ratio: float | None) -> bool | None:
    if row.target == "none":
        return None
    if row.target == "ratio":
        return None if ratio is None else ratio >= row.threshold
    if value is None:
        return None
    return value <= row.threshold if row.target == "max" else value >= row.threshold


def _meta(python: str, rounds: int) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            r = subprocess.run(["git", *args], check=False, cwd=ROOT, capture_output=True, text=True)
            return r.stdout.strip()
        except OSError:
            return "?"

    versions = subprocess.run(
        [python, "-c", _VERSIONS], check=False, capture_output=True, text=True, env=worker_env()
    ).stdout.strip()
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or "?"
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": git("rev-parse", "--short", "HEAD")
        + ("+dirty" if git("status", "--porcelain", "-uno") else ""),
        "python": platform.python_version(),
        "machine": f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "load_at_end": load,
        "versions": json.loads(versions) if versions else {},
        "workers": 2,
        "rounds": rounds,
    }


_VERSIONS = """
import json, importlib.metadata as m
out = {}
for d in ("scoopexec", "pyzmq", "loky", "distributed", "ray", "scoop", "numpy", "deap"):
    try:
        out[d] = m.version(d)
    except Exception:
        pass
print(json.dumps(out))
"""


# ------------------------------------------------------------------- output
def markdown(result: dict[str, Any]) -> str:
    names = result["contenders"]
    sc = result["extra"].get("SCOOP", {})
    local = set()  # cells that measured a task run in the calling process (SCOOP's origin)
    if sc.get("rtt_ran_here") and statistics.median(sc["rtt_ran_here"]) > 0.5:
        local.add(("SCOOP", "rtt"))
    if sc.get("array_ran_here") and statistics.median(sc["array_ran_here"]) >= 2:
        local.update({("SCOOP", "array"), ("SCOOP", "array_first")})
    head = "| measure | " + " | ".join(names) + " | scoopexec vs PPE | target | met |"
    lines = [head, "|---|" + "---:|" * len(names) + "---:|---|---|"]
    for row in result["rows"]:
        fmt = next(r.fmt for r in rows(result["sizes"]) if r.key == row["key"])
        cells = []
        for n in names:
            v = row["values"].get(n)
            cell = format(v, fmt) if v is not None else row["notes"].get(n, "-")
            if v is not None and (n, row["key"]) in local:
                cell += " (local)"
            cells.append(cell)
        ratio = f"{row['ratio_vs_ppe']:.2f}x" if row["ratio_vs_ppe"] is not None else ""
        if row["ratio_vs_ppe"] is not None and row.get("ratio_spread"):
            lo, hi = row["ratio_spread"]
            ratio += f" ({lo:.2f}-{hi:.2f})"
        met = {True: "yes", False: "**no**", None: "?"}[row["met"]] if row["target"] != "reported" else ""
        label = f"{row['label']} ({row['unit']})"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} | {row['target']} | {met} |")
    m = result["meta"]
    lines += [
        "",
        f"{m['date']}, commit {m['commit']}, Python {m['python']}, {m['machine']}; 2 workers each; "
        f"median of {m['rounds']} round(s); load average at the end: {m['load_at_end']}.",
        "Ratios are how many times better than ProcessPoolExecutor (for times: PPE's time / scoopexec's): "
        "the median of the rounds' ratios, both measured in each round, (min-max) over rounds.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
    ]
    extra = result["extra"].get("scoopexec", {})
    if extra.get("routing_capacity"):
        cap = statistics.median(extra["routing_capacity"])
        us = statistics.median(extra["routing_broker_cpu_us"])
        lines.append(
            f"Broker routing capacity (tasks per broker CPU-second): {cap:,.0f} "
            f"({us:.1f} us of CPU per task)."
        )
    for n, ex in result["extra"].items():
        if ex.get("wide_workers_used"):
            used = [u for u in ex["wide_workers_used"] if u is not None]
            if used:
                lines.append(f"{n}: distinct workers that ran the sleep tasks: {min(used)}-{max(used)}.")
    if sc.get("rtt_ran_here"):
        lines.append(
            "SCOOP: its origin process is one of its 2 workers and runs queued tasks itself while it "
            f"waits: {100 * statistics.median(sc['rtt_ran_here']):.0f} % of the round-trip tasks and "
            f"{statistics.median(sc['array_ran_here']):.0f} of 6 array echoes never left the calling "
            "process, so those figures (marked local) measure no transfer. Its start time includes its "
            "launcher's interpreter start-up."
        )
    for n, why in result["skipped"].items():
        lines.append(f"Skipped {n}: {why}")
    if result["errors"]:
        lines.append(f"Errors ({len(result['errors'])}; details in the JSON):")
        lines += [f"- {e.splitlines()[0][:200]}" for e in result["errors"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of a few seconds")
    ap.add_argument("--json", help="write the results (medians, raw rounds, errors) here")
    ap.add_argument("--markdown", help="write the Markdown table here too")
    ap.add_argument("--only", help="comma-separated contenders: " + ",".join(CONTENDERS))
    ap.add_argument("--skip", help="comma-separated contenders to leave out")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the children")
    ap.add_argument("--timeout", type=float, help="seconds per child process (default 600, quick 300)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        from benchmarks.workloads import child

        child(args.child, args.part, json.loads(args.sizes), args.out)
        return 0

    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    wanted = list(CONTENDERS)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    if args.skip:
        wanted = [n for n in wanted if n not in {s.strip() for s in args.skip.split(",")}]
    unknown = [n for n in wanted if n not in CONTENDERS]
    if unknown:
        ap.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
    if not wanted:
        ap.error("no contender left to run")
    notes = availability(args.python, wanted)
    names = [n for n in wanted if not notes[n]]
    skipped = {n: notes[n] for n in wanted if notes[n]}
    for n, why in skipped.items():
        print(f"skipping {n}: {why}", file=sys.stderr)
    if not names:
        print("nothing to run", file=sys.stderr)
        return 2
    size = QUICK if args.quick else FULL
    timeout = args.timeout or (300.0 if args.quick else 600.0)
    result = run(names, args.rounds, size, python=args.python, skipped=skipped, timeout=timeout)
    text = markdown(result)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
