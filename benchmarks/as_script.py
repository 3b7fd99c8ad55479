"""Benchmarks whose contenders each run a file as a script (``__main__``), in a fresh interpreter.

The script's own functions and globals are what such a benchmark measures (how each library
sends them), so a contender cannot run in the parent: each round runs the benchmark's file again
with ``--child NAME`` (and what else it asks), which prints one JSON object, its figures, as its
last line.  Used by large_globals.py and script_functions.py.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Raw = dict[str, list[dict[str, float]]]


def contenders(only: str, known: Sequence[str], error: Callable[[str], object]) -> list[str]:
    """The contenders of ``--only`` (comma-separated): ``error`` for an unknown one, and loky left
    out with a note when it is not installed."""
    names = [n for n in only.split(",") if n]
    unknown = set(names) - set(known)
    if unknown:
        error(f"unknown contenders {sorted(unknown)}: choose among {list(known)}")
    if "loky" in names:
        try:
            import loky  # noqa: F401
        except ImportError:
            print("loky is not installed: skipped", file=sys.stderr)
            names.remove("loky")
    return names


def pool(name: str, workers: int = 2) -> Any:
    """A pool of ``workers`` of the contender ``name`` (scoopexec, ProcessPoolExecutor or loky)."""
    if name == "scoopexec":
        from scoopexec import ScoopExecutor

        return ScoopExecutor(max_workers=workers)
    if name == "loky":
        import loky

        return loky.get_reusable_executor(max_workers=workers)
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers)


def run(
    script: str, names: list[str], rounds: int, args: Sequence[str] = (), env: dict[str, str] | None = None
) -> Raw:
    """Each contender's figures, round by round: ``script --child NAME *args`` in a fresh
    interpreter each time, the order of the contenders rotating from round to round."""
    raw: Raw = {n: [] for n in names}
    environ = dict(os.environ, **(env or {}))
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, environ.get("PYTHONPATH", "")) if p)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            done = subprocess.run(
                [sys.executable, os.path.abspath(script), "--child", name, *args],
                env=environ, capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            raw[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{rounds}: {name} {raw[name][-1]}", file=sys.stderr, flush=True)
    return raw


def table(
    raw: Raw,
    steps: Sequence[str],
    title: str,
    label: str,
    cell: Callable[[float], str],
    better: Callable[[float, float], float],
    unit: str = "",
) -> str:
    """A Markdown table: a row per step, a column per contender, each cell the median (and
    ``unit``) and the spread over rounds (``cell`` formats a figure), and beside the others' the
    median over rounds of ``better(theirs, scoopexec's)``."""
    names = list(raw)
    lines = [title, f"| {label} | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for step in steps:
        cells = []
        for n in names:
            values = [r[step] for r in raw[n]]
            text = f"{cell(statistics.median(values))}{unit} [{cell(min(values))}-{cell(max(values))}]"
            if n != "scoopexec" and "scoopexec" in raw:
                ratios = [better(o[step], s[step]) for o, s in zip(raw[n], raw["scoopexec"], strict=True)]
                text += f", {statistics.median(ratios):.2f}x"
            cells.append(text)
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
