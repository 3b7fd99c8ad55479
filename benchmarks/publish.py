"""One command for the published figures: the GA, the scaling curves, a JSON, a PNG and a table.

    python -m benchmarks.publish --rounds 3                 # ~10-12 min on 2 quiet cores
    python -m benchmarks.publish --rounds 3 --with-table    # + the main table (~17 min more)
    python -m benchmarks.publish --quick --rounds 1         # tiny sizes, a smoke test (~1 min)

Runs, one after the other, the end-to-end DEAP GA (``ga.py``: serial, scoopexec,
ProcessPoolExecutor, loky, dask, Ray, SCOOP; evaluations of 0.1, 1 and 10 ms), the
local scaling curves (``scaling.py``: 1 to 64 workers, scoopexec and
ProcessPoolExecutor), the 3-host curves in network namespaces over TCP with CURVE
against ipc (``--no-netns`` leaves them out; they need root), and with
``--with-table`` the main side-by-side table of ``run.py``.  Peers that are not
installed are skipped with a note (``pip install '.[bench]'``).

Writes:

- ``--json`` (benchmarks/published.json): commit, date, machine, the load average at
  the start and at the end, versions, sizes, every round's raw values, medians and
  spreads, and every error;
- ``--png`` (docs/benchmarks.png): the GA's generations per second per contender and
  evaluation cost, and the scaling curves (throughput, utilisation, round trip; TCP
  hosts against ipc);
- ``--markdown`` (benchmarks/published.md): the tables, medians with the min-max over
  rounds, a fragment the README includes.

Expected duration of the default (``--rounds 3``, no ``--with-table``) on 2 quiet cores:
the GA ~7 min (a round: serial ~25 s, ProcessPoolExecutor, loky and scoopexec ~15 s each,
Ray ~20 s and dask and SCOOP ~30 s each, start-ups included), the local curves ~2 min (a
round: ~20 s per contender, most of it starting 127 workers), the 3 hosts ~1.5 min (one
round took 22 s here for the 6 configurations): about 10-12 min.  ``--rounds``,
``--generations`` (e.g. ``0.1=20,1=10,10=5``) and ``--counts`` enlarge it; every figure
is a median over rounds with its spread.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import ga, scaling  # noqa: E402
from benchmarks import run as table  # noqa: E402
from benchmarks.contenders import availability  # noqa: E402

DEFAULTS = {
    "json": os.path.join(HERE, "published.json"),
    "markdown": os.path.join(HERE, "published.md"),
    "png": os.path.join(ROOT, "docs", "benchmarks.png"),
}


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def publish(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.time()
    load_start = _load()
    result: dict[str, Any] = {"skipped": {}}
    wanted = [n for n in ga.GA_CONTENDERS if not args.ga_only or n in args.ga_only.split(",")]
    peers = [n for n in wanted if n not in ("serial", "scoopexec")]
    if args.with_table:
        peers = [n for n in table.CONTENDERS if n != "scoopexec"]
    notes = availability(args.python, peers)
    ga_names = [n for n in wanted if not notes.get(n)]
    result["skipped"].update({n: why for n, why in notes.items() if why})
    for n, why in result["skipped"].items():
        print(f"skipping {n}: {why}", file=sys.stderr)
    size = ga.sizes(quick=args.quick, generations=args.generations)
    result["ga"] = ga.run(ga_names, args.rounds, size, python=args.python, timeout=args.timeout)
    parts = ["local"] + ([] if args.no_netns else ["netns"])
    ssize = scaling.sizes(quick=args.quick, counts=args.counts, per_host=args.per_host)
    result["scaling"] = scaling.run(
        parts, args.rounds, ssize, names=args.scaling_contenders.split(","), python=args.python,
        timeout=args.timeout,
    )  # fmt: skip
    if args.with_table:
        tnames = [n for n in table.CONTENDERS if n not in result["skipped"]]
        result["table"] = table.run(
            tnames, args.rounds, table.QUICK if args.quick else table.FULL, python=args.python,
            skipped={}, timeout=args.timeout,
        )  # fmt: skip
    meta = table._meta(args.python, args.rounds)
    meta["load_at_start"] = load_start
    meta["duration_s"] = round(time.time() - t0, 1)
    meta["command"] = " ".join(["python -m benchmarks.publish", *sys.argv[1:]])
    result["meta"] = meta
    result["errors"] = [*result["ga"]["errors"], *result["scaling"]["errors"]]
    if "table" in result:
        result["errors"] += result["table"]["errors"]
    return result


# ------------------------------------------------------------------ markdown
def markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    gsize = result["ga"]["sizes"]
    lines = [
        f"Recorded {m['date']} at commit {m['commit']} by `{m['command']}` ({m['duration_s'] / 60:.1f} min): "
        f"Python {m['python']}, {m['machine']}; load average {m['load_at_start']} at the start, "
        f"{m['load_at_end']} at the end. Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f". Every cell: median of {m['rounds']} round(s), (min-max) over rounds.",
        "",
        f"**DEAP GA, generations per second** (population {gsize['population']:,}, "
        f"{gsize['genome']}-bit OneMax, about 60 % of the population evaluated per generation; "
        "2 workers; ratio to the built-in map's median):",
        "",
        ga.markdown(result["ga"]),
        "",
        "Generations timed per cost: "
        + ", ".join(f"{c} ms: {n}" for c, n in gsize["generations"].items())
        + ". ProcessPoolExecutor and loky map with chunksize = len // 8; dask: client.map + gather; "
        "Ray: remote + get; SCOOP: futures.map; scoopexec: scoop_map (automatic chunking).",
    ]
    sc = result["scaling"]
    if "local" in sc or "netns" in sc:
        lines += [
            "",
            "**Scaling** (local: a pool of N workers on this machine; hosts: a standalone broker and "
            "3 groups of workers, in 3 network namespaces over TCP with CURVE, or on this host over ipc):",
            "",
            scaling.markdown(sc),
        ]
    if "table" in result:
        lines += [
            "",
            "**Side by side, 2 workers each** (`python -m benchmarks`):",
            "",
            table.markdown(result["table"]),
        ]
    for n, why in result["skipped"].items():
        lines.append(f"\nSkipped {n}: {why}")
    if result["errors"]:
        lines += ["", f"Errors ({len(result['errors'])}; details in the JSON):"]
        lines += [f"- {e.splitlines()[0][:200]}" for e in result["errors"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------- plot
def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    m = result["meta"]
    fig.suptitle(
        f"scoopexec {m['versions'].get('scoopexec', '?')} at {m['commit']}, {m['date']}; "
        f"{m['machine']}; median of {m['rounds']} round(s), bars: min-max",
        fontsize=10,
    )
    _plot_ga(axes[0][0], result["ga"])
    sc = result["scaling"]
    local = sc.get("local")
    for ax, key, title, ylabel, log in (
        (axes[0][1], "tasks_per_s", "local: tiny tasks", "tasks / s", True),
        (axes[0][2], "utilisation", "local: sleep(0.05) tasks", "utilisation %", False),
        (axes[1][0], "rtt_us", "local: round trip, p50", "us", True),
    ):
        if local:
            _curves(ax, local["summary"], key, log)
        ax.set(title=title, xlabel="workers", ylabel=ylabel)
    net = sc.get("netns")
    for ax, key, title, ylabel in (
        (axes[1][1], "tasks_per_s", "3 hosts (TCP+CURVE) vs ipc: tiny tasks", "tasks / s"),
        (axes[1][2], "rtt_us", "3 hosts (TCP+CURVE) vs ipc: round trip, p50", "us"),
    ):
        if net:
            _curves(ax, net["summary"], key, True)
        else:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=title, xlabel="workers (3 groups)", ylabel=ylabel)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_ga(ax: Any, g: dict[str, Any]) -> None:
    costs = list(g["sizes"]["generations"])
    names = g["contenders"]
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for j, c in enumerate(costs):
            f = g["table"].get(c, {}).get(n)
            if f:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(f["median"])
                lo.append(f["median"] - f["min"])
                hi.append(f["max"] - f["median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], label=n, capsize=2)
    ax.set_xticks(range(len(costs)), [f"{c} ms" for c in costs])
    ax.set_yscale("log")
    ax.set(title=f"DEAP GA, population {g['sizes']['population']:,}", xlabel="evaluation cost",
           ylabel="generations / s")  # fmt: skip
    ax.legend(fontsize=7)


def _curves(ax: Any, summary: dict[str, Any], key: str, log: bool) -> None:
    ticks: set[int] = set()
    for series, by_count in summary.items():
        ws = sorted(int(w) for w in by_count if key in by_count[w])
        if not ws:
            continue
        ticks.update(ws)
        med = [by_count[str(w)][key]["median"] for w in ws]
        lo = [med[i] - by_count[str(w)][key]["min"] for i, w in enumerate(ws)]
        hi = [by_count[str(w)][key]["max"] - med[i] for i, w in enumerate(ws)]
        ax.errorbar(ws, med, yerr=[lo, hi], marker="o", capsize=2, label=series)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(w) for w in sorted(ticks)])
    ax.minorticks_off()
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    ap.add_argument(
        "--with-table", action="store_true", help="also run the main table (python -m benchmarks)"
    )
    ap.add_argument("--no-netns", action="store_true", help="leave out the 3 hosts in network namespaces")
    ap.add_argument("--ga-only", help="GA contenders to run (default: all installed)")
    ap.add_argument("--generations", help="GA generations per cost, e.g. 0.1=20,1=10,10=5")
    ap.add_argument("--scaling-contenders", default=",".join(scaling.LOCAL_CONTENDERS))
    ap.add_argument("--counts", help="local worker counts (default 1,2,4,8,16,32,64)")
    ap.add_argument("--per-host", help="workers per namespace host (default 1,2,4)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the children")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    ap.add_argument("--json", default=DEFAULTS["json"])
    ap.add_argument("--markdown", default=DEFAULTS["markdown"])
    ap.add_argument("--png", default=DEFAULTS["png"])
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    unknown = set((args.ga_only or "").split(",")) - set(ga.GA_CONTENDERS) - {""}
    if unknown:
        ap.error(f"--ga-only: unknown {', '.join(sorted(unknown))}; known: {', '.join(ga.GA_CONTENDERS)}")
    # SIGTERM ends the run like Ctrl-C: the children's process groups and the namespaces go too.
    signal.signal(signal.SIGTERM, scaling.raise_exit)
    result = publish(args)
    text = markdown(result)
    print(text)
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    with open(args.markdown, "w") as fh:
        fh.write(text + "\n")
    plot(result, args.png)
    print(f"wrote {args.json}, {args.markdown}, {args.png} in {result['meta']['duration_s']:.0f} s",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
