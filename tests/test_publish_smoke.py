"""`python -m benchmarks.publish` writes a well-formed JSON, Markdown and PNG (tiny sizes, no timing).

scoopexec, ProcessPoolExecutor and the GA's serial reference only (the peers are never
installed by the tests); the 3-host part runs too: it makes network namespaces, which
needs root, as CI and this machine give (tests/test_netns.py relies on the same).  The
test checks that the namespaces and the bridge are gone afterwards (the conftest checks
processes).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cluster_fixtures import need
from tests.conftest import ROOT


def _links_and_spaces() -> set[str]:
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    names = {line.split()[0] for line in spaces.splitlines() if line.strip()}
    names |= {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    return {n for n in names if n.startswith("sxb")}


@pytest.mark.timeout(400)
def test_publish_writes_json_markdown_and_png(tmp_path):
    need("ip")
    before = _links_and_spaces()
    out_json, out_md, out_png = tmp_path / "p.json", tmp_path / "p.md", tmp_path / "p.png"
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.publish", "--quick", "--rounds", "1",
         "--ga-only", "serial,scoopexec,ProcessPoolExecutor", "--timeout", "240",
         "--json", str(out_json), "--markdown", str(out_md), "--png", str(out_png)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=380,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert _links_and_spaces() == before, "network namespaces or links left behind"

    res = json.loads(out_json.read_text())
    assert res["errors"] == [], res["errors"]
    meta = res["meta"]
    for key in ("commit", "date", "machine", "load_at_start", "load_at_end", "versions", "duration_s"):
        assert meta[key], key
    assert "scoopexec" in meta["versions"] and "deap" in meta["versions"]

    g = res["ga"]
    names = ["serial", "scoopexec", "ProcessPoolExecutor"]
    assert g["contenders"] == names
    assert set(g["table"]) == {"0.1", "1", "10"}
    for cost, by_name in g["table"].items():
        assert set(by_name) == set(names), cost
        for fig in by_name.values():
            assert fig["min"] <= fig["median"] <= fig["max"] and fig["median"] > 0
            assert len(fig["rounds"]) == 1
        # every contender ran the same evolution
        runs = [g["raw"][n][cost][0] for n in names]
        assert len({(x["evaluations"], x["best"]) for x in runs}) == 1, runs
        assert all(len(x["gen_times"]) == g["sizes"]["generations"][cost] for x in runs)

    local = res["scaling"]["local"]
    assert local["contenders"] == ["scoopexec", "ProcessPoolExecutor"]
    counts = [str(c) for c in res["scaling"]["sizes"]["counts"]]
    for name in local["contenders"]:
        assert sorted(local["summary"][name]) == sorted(counts)
        for w in counts:
            figs = local["summary"][name][w]
            assert set(figs) >= {"tasks_per_s", "utilisation", "rtt_us", "workers_used"}
            assert local["raw"][name][w]["workers_warm"] == [int(w)]  # every worker ran a task
    net = res["scaling"]["netns"]
    assert net["hosts"] == 3 and set(net["summary"]) == set(net["transports"]) and len(net["transports"]) == 2
    for transport, by_count in net["summary"].items():
        assert sorted(by_count) == [str(3 * k) for k in res["scaling"]["sizes"]["per_host"]], transport
        for figs in by_count.values():
            assert figs["tasks_per_s"]["median"] > 0 and figs["rtt_us"]["median"] > 0

    md = out_md.read_text()
    assert md.startswith("Recorded ") and meta["commit"] in md
    tables = [line for line in md.splitlines() if line.startswith("|")]
    starts = ("| evaluation cost", "| local workers", "| workers")
    heads = [line for line in tables if line.startswith(starts)]
    assert len(heads) == 3, heads
    for line in tables:  # every row of a table has its header's number of cells
        head = next(h for h in reversed(heads) if tables.index(h) <= tables.index(line))
        assert line.count("|") == head.count("|"), line

    import matplotlib.image

    png = out_png.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = matplotlib.image.imread(str(out_png))
    assert img.shape[0] > 400 and img.shape[1] > 800
