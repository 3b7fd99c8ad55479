"""Side-by-side comparison of benchmark runs of two trees (e.g. before and after a change).

    python -m benchmarks.compare_runs BEFORE.json [BEFORE.json ...] -- AFTER.json [AFTER.json ...]

Each JSON is what ``python -m benchmarks --json`` writes.  For every row the table gives, per
side, the median of all rounds of all runs and their range (min-max), then after/before as "how
many times better" (for times and latencies: before / after), and ProcessPoolExecutor's median
on each side, which shows how much the machine itself moved between the runs.
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any


def _load(paths: list[str]) -> list[dict[str, Any]]:
    return [json.load(open(p)) for p in paths]


def _rounds(runs: list[dict[str, Any]], contender: str, key: str) -> list[float]:
    out: list[float] = []
    for run in runs:
        values = run["raw"].get(contender, {}).get(key) or []
        out += [float(v) for v in values if isinstance(v, (int, float))]
    return out


def _fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def table(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    rows = before[0]["rows"]
    lines = [
        "| measure | before: median (min-max) | after: median (min-max) | after vs before | "
        "PPE before | PPE after |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    # Until the import had a row of its own (2026-12-07), the start row counted it too.
    imported = [any(r["key"] == "import" for r in side[0]["rows"]) for side in (before, after)]
    for row in rows:
        key, higher = row["key"], row["higher_is_better"]
        b, a = _rounds(before, "scoopexec", key), _rounds(after, "scoopexec", key)
        if not b or not a or (key == "start" and imported[0] != imported[1]):
            continue
        mb, ma = statistics.median(b), statistics.median(a)
        ratio = (ma / mb if higher else mb / ma) if mb and ma else float("nan")
        pb = _rounds(before, "ProcessPoolExecutor", key)
        pa = _rounds(after, "ProcessPoolExecutor", key)
        ppe_b = _fmt(statistics.median(pb)) if pb else "n/a"
        ppe_a = _fmt(statistics.median(pa)) if pa else "n/a"
        lines.append(
            f"| {row['label']} ({row['unit']}) | {_fmt(mb)} ({_fmt(min(b))}-{_fmt(max(b))}) | "
            f"{_fmt(ma)} ({_fmt(min(a))}-{_fmt(max(a))}) | {ratio:.2f}x | {ppe_b} | {ppe_a} |"
        )
    if imported[0] != imported[1]:
        lines.append("\nstart: not compared (one side's start row counted the import, the other's not)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    cut = argv.index("--")
    print(table(_load(argv[:cut]), _load(argv[cut + 1 :])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
