"""The benchmark entry point runs and writes a well-formed table and JSON (tiny sizes, no timing)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CONTENDERS = ["scoopexec", "ProcessPoolExecutor"]


@pytest.mark.timeout(300)
def test_quick_run_writes_markdown_and_json(tmp_path):
    out_json = tmp_path / "bench.json"
    out_md = tmp_path / "bench.md"
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--rounds", "1", "--only", ",".join(CONTENDERS),
         "--json", str(out_json), "--markdown", str(out_md), "--timeout", "240"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]

    result = json.loads(out_json.read_text())
    assert result["contenders"] == CONTENDERS
    assert result["errors"] == [], result["errors"]
    assert result["meta"]["rounds"] == 1 and result["meta"]["python"]
    keys = [row["key"] for row in result["rows"]]
    for key in ("submit", "map1", "mapchunk", "rtt", "array_first", "array", "cpu", "broker_cpu", "import", "start",
                "shutdown", "nested", "routing", "wide", "memory"):  # fmt: skip
        assert key in keys
    by_key = {row["key"]: row for row in result["rows"]}
    for row in result["rows"]:
        assert row["target"] and row["met"] in (True, False, None)
        value = row["values"]["scoopexec"]
        assert isinstance(value, (int, float)) and value >= 0, (row["key"], value)
    for key in ("submit", "map1", "mapchunk", "rtt", "array_first", "array", "cpu", "import", "start", "shutdown",
                "wide"):  # fmt: skip
        assert by_key[key]["values"]["ProcessPoolExecutor"] > 0, key
    for key in ("submit", "map1", "mapchunk", "rtt", "array"):
        assert by_key[key]["ratio_vs_ppe"] > 0 and by_key[key]["met"] is not None, key
    assert by_key["nested"]["values"]["ProcessPoolExecutor"] is None
    assert by_key["nested"]["notes"]["ProcessPoolExecutor"] == "impossible"
    assert result["raw"]["scoopexec"]["submit"] and len(result["raw"]["scoopexec"]["submit"]) == 1
    # the first large transfer is reported beside the steady state, never hidden in a best-of
    assert by_key["array_first"]["target"] == "reported" and by_key["array_first"]["met"] is None
    for name in CONTENDERS:
        (echoes,) = result["extra"][name]["array_echoes_mb_s"]
        assert len(echoes) == 6 and echoes[0] == result["raw"][name]["array_first"][0]

    table = out_md.read_text()
    assert table == r.stdout
    lines = table.splitlines()
    assert lines[0].startswith("| measure | scoopexec | ProcessPoolExecutor |")
    body = [line for line in lines if line.startswith("| ") and not line.startswith("| measure")]
    assert len(body) == len(result["rows"])
    assert all(line.count("|") == lines[0].count("|") for line in body)


def test_unknown_contender_is_a_clear_error():
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "nosuchpool"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "unknown contender(s) nosuchpool" in r.stderr


def test_compare_runs_leaves_out_the_start_row_across_the_import_split():
    # Until the import had a row of its own, the start row counted it: not the same measure.
    from benchmarks.compare_runs import table

    def run(keys):
        rows = [{"key": k, "label": k, "unit": "s", "higher_is_better": False} for k in keys]
        return {"rows": rows, "raw": {"scoopexec": {k: [0.1] for k in keys}}}

    old, new = run(["start", "shutdown"]), run(["import", "start", "shutdown"])
    split = table([old], [new])
    assert "| start (s)" not in split and "| shutdown (s)" in split and "start: not compared" in split
    same = table([new], [new])
    assert "| start (s)" in same and "not compared" not in same


def test_the_ratio_is_the_median_of_the_rounds_ratios():
    # The measure: each round runs both side by side, and its ratio counts; not the
    # ratio of the medians, which can pair one round's scoopexec with another round's PPE.
    from benchmarks.run import round_ratios

    ours, ppe = [100.0, 300.0, 200.0], [100.0, 50.0, 200.0]  # rounds' ratios: 1, 6, 1
    assert round_ratios(True, ours, ppe, 3) == (1.0, [1.0, 6.0])  # (the medians' ratio: 2)
    assert round_ratios(False, ours, ppe, 3) == (1.0, [1 / 6, 1.0])  # times: PPE's / ours
    # a round missing for either: they no longer pair up, so the medians' ratio, no spread
    assert round_ratios(True, [100.0, 300.0], ppe, 3) == (200.0 / 100.0, None)
    assert round_ratios(True, [], ppe, 3) == (None, None)


AS_SCRIPT = {  # benchmarks/as_script.py's: module, its arguments, its rows
    "large_globals": (["--mb", "1"], ["first", "map 200", "20 submits"]),
    "script_functions": (
        ["--tasks", "50"],
        [
            "script function", "script function using a dataclass", "module function",
            "script dataclass argument",
        ],  # fmt: skip
    ),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", AS_SCRIPT)
def test_each_benchmark_run_as_a_script_runs_every_step_on_each_contender(name):
    args, steps = AS_SCRIPT[name]
    r = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args, "--rounds", "1", "--only", ",".join(CONTENDERS)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and " [" in line]
    assert [row.split(" | ")[0] for row in rows] == [f"| {step}" for step in steps], r.stdout
    assert all(row.count(" [") == len(CONTENDERS) and row.rstrip().endswith("x |") for row in rows), r.stdout
