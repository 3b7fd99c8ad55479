"""An end-to-end evolutionary run: a DEAP GA in generations per second, on every contender.

    python -m benchmarks.ga [--rounds 3] [--quick] [--only scoopexec,serial] [--json ga.json]

The GA (issue 17): a population of 1,000 bit strings of length 100 (OneMax), an
``eaSimple``-like loop (tournament selection of size 3, two-point crossover with
probability 0.5, bit-flip mutation with probability 0.2, only the changed
individuals evaluated: about 600 evaluations a generation), and an evaluation
that burns a fixed amount of its thread's CPU time (a busy loop on
``time.thread_time``, not a sleep) before it returns the number of ones.  Three
evaluation costs, 0.1 ms, 1 ms and 10 ms, run for 10, 5 and 3 timed generations
by default.

Each contender maps the evaluations the way its users would, with 2 workers:

- ``serial``: the built-in ``map`` (DEAP's default);
- ``scoopexec``: ``toolbox.register("map", scoop_map)`` inside ``with ScoopExecutor(2)``,
  its default (automatic) chunking;
- ``ProcessPoolExecutor`` and ``loky``: ``ex.map(f, xs, chunksize=max(1, len(xs) // 8))``
  (4 chunks per worker, multiprocessing.Pool's own rule for its default chunk size);
- ``dask``: ``client.gather(client.map(f, xs, pure=False))`` on a ``LocalCluster`` of 2
  single-threaded worker processes (``pure=False``: dask would otherwise skip identical
  individuals, doing less work than the others);
- ``Ray``: ``ray.get([ray.remote(f).remote(x) for x in xs])``;
- ``SCOOP`` 0.7.2: ``toolbox.register("map", futures.map)`` under ``python -m scoop -n 2``.

Every contender runs in a fresh child process per round, in an order rotated from
round to round.  The pool is started and warm (every worker has run a task) before
the run; the initial population is evaluated untimed, by the same map, with the
zero-cost twin of the evaluation (same fitness values), so that the 10 ms
evaluations do not spend 10 s before the first timed generation; the first timed
generation therefore includes whatever a library learns or warms up on first use
of the real evaluation (scoopexec's chunk size).  The random draws all happen in
the parent, from one private generator with one seed (DEAP's operators included:
``_drawing_from``), and the fitness values do not depend on the contender, so
every contender runs exactly the same evolution: the best fitness and the number
of evaluations are recorded and must agree.  Figures: generations per second
(timed generations / their wall time); the JSON keeps every generation's time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from deap import base, creator, tools  # noqa: E402

WORKERS = 2
GA_CONTENDERS = ("serial", "scoopexec", "ProcessPoolExecutor", "loky", "dask", "Ray", "SCOOP")
# evaluation cost (ms) -> timed generations
FULL: dict[str, Any] = {"population": 1000, "genome": 100, "generations": {"0.1": 10, "1": 5, "10": 3}}
QUICK: dict[str, Any] = {"population": 60, "genome": 20, "generations": {"0.1": 2, "1": 2, "10": 1}}
CXPB, MUTPB, SEED = 0.5, 0.2, 17

if not hasattr(creator, "BenchFitness"):
    creator.create("BenchFitness", base.Fitness, weights=(1.0,))
    creator.create("BenchIndividual", list, fitness=creator.BenchFitness)


def _burn_cpu(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


# One module-level function per cost, so that every library sends it by reference.
def evaluate_free(ind: list[int]) -> tuple[int]:
    return (sum(ind),)


def evaluate_0_1ms(ind: list[int]) -> tuple[int]:
    _burn_cpu(0.0001)
    return (sum(ind),)


def evaluate_1ms(ind: list[int]) -> tuple[int]:
    _burn_cpu(0.001)
    return (sum(ind),)


def evaluate_10ms(ind: list[int]) -> tuple[int]:
    _burn_cpu(0.01)
    return (sum(ind),)


EVALUATE: dict[str, Callable[[list[int]], tuple[int]]] = {
    "0.1": evaluate_0_1ms,
    "1": evaluate_1ms,
    "10": evaluate_10ms,
}


def noop(x: Any = None) -> Any:
    return x


def _apply(fn: Callable[[Any], Any], x: Any) -> Any:
    return fn(x)


MapFn = Callable[..., Iterable[Any]]


def evolve(mapper: MapFn, cost: str, size: dict[str, Any]) -> dict[str, Any]:
    """One GA run with ``toolbox.map = mapper``; the per-generation wall times and the outcome."""
    rng = random.Random(SEED)
    with _drawing_from(rng):
        toolbox = base.Toolbox()
        toolbox.register("bit", rng.randint, 0, 1)
        toolbox.register("individual", tools.initRepeat, creator.BenchIndividual, toolbox.bit, size["genome"])
        toolbox.register("population", tools.initRepeat, list, toolbox.individual)
        toolbox.register("mate", tools.cxTwoPoint)
        toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
        toolbox.register("select", tools.selTournament, tournsize=3)
        toolbox.register("map", mapper)
        pop = toolbox.population(n=size["population"])
        for ind, fit in zip(pop, toolbox.map(evaluate_free, pop), strict=True):  # untimed
            ind.fitness.values = fit
        toolbox.register("evaluate", EVALUATE[cost])
        gen_times = []
        evaluations = 0
        for gen in range(size["generations"][cost]):
            t = time.perf_counter()
            rng.seed(SEED * 1000 + gen)
            offspring = toolbox.select(pop, len(pop))
            offspring = _vary(toolbox, offspring, rng)
            invalid = [ind for ind in offspring if not ind.fitness.valid]
            for ind, fit in zip(invalid, toolbox.map(toolbox.evaluate, invalid), strict=True):
                ind.fitness.values = fit
            pop[:] = offspring
            gen_times.append(time.perf_counter() - t)
            evaluations += len(invalid)
        best = max(ind.fitness.values[0] for ind in pop)
    return {
        "gens_per_s": len(gen_times) / sum(gen_times),
        "gen_times": gen_times,
        "evaluations": evaluations,
        "best": best,
    }


@contextlib.contextmanager
def _drawing_from(rng: random.Random) -> Iterator[None]:
    """DEAP's operators draw from the module ``random`` that their modules imported: make them
    draw from ``rng`` for the run.  Every draw of the evolution then comes from one private
    generator, which no library's thread in this process can advance: dask's scheduler, which
    a LocalCluster runs in the client's process, picks workers with ``random`` while the GA
    selects and varies, and re-seeding the shared generator every generation did not keep
    dask's evolutions equal to the others'."""
    from deap.tools import crossover, mutation, selection

    modules = (crossover, mutation, selection)
    saved = [m.random for m in modules]
    for m in modules:
        m.random = rng
    try:
        yield
    finally:
        for m, was in zip(modules, saved, strict=True):
            m.random = was


def _vary(toolbox: base.Toolbox, population: list[Any], rng: random.Random) -> list[Any]:
    """DEAP's varAnd, written out: clone, crossover pairs with CXPB, mutate with MUTPB."""
    offspring = [toolbox.clone(ind) for ind in population]
    for i in range(1, len(offspring), 2):
        if rng.random() < CXPB:
            offspring[i - 1], offspring[i] = toolbox.mate(offspring[i - 1], offspring[i])
            del offspring[i - 1].fitness.values, offspring[i].fitness.values
    for i in range(len(offspring)):
        if rng.random() < MUTPB:
            (offspring[i],) = toolbox.mutate(offspring[i])
            del offspring[i].fitness.values
    return offspring


def run_all_costs(mapper: MapFn, size: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"costs": {}, "errors": {}}
    for cost in size["generations"]:
        try:
            out["costs"][cost] = evolve(mapper, cost, size)
        except Exception as exc:  # one failing cost must not hide the others
            out["errors"][cost] = f"{type(exc).__name__}: {exc}"
    return out


# ------------------------------------------------------------- contenders' maps
def _chunked(ex: Any) -> MapFn:
    def mapper(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        items = list(items)
        return list(ex.map(fn, items, chunksize=max(1, len(items) // (4 * WORKERS))))

    return mapper


def child(name: str, size: dict[str, Any]) -> dict[str, Any]:
    """Run the GA at every cost with ``name``'s map, in this (fresh) process."""
    if name == "serial":
        return run_all_costs(map, size)
    if name == "scoopexec":
        from scoopexec import ScoopExecutor, scoop_map

        with ScoopExecutor(WORKERS) as ex:
            list(ex.map(noop, range(8 * WORKERS)))
            return run_all_costs(scoop_map, size)
    if name in ("ProcessPoolExecutor", "loky"):
        if name == "loky":
            import loky

            pool: Any = loky.ProcessPoolExecutor(WORKERS)
        else:
            import concurrent.futures as cf

            pool = cf.ProcessPoolExecutor(WORKERS)
        with pool:
            list(pool.map(noop, range(8 * WORKERS)))
            return run_all_costs(_chunked(pool), size)
    if name == "dask":
        from benchmarks.contenders import DaskPool

        dpool = DaskPool(WORKERS)
        try:
            client = dpool.client
            client.gather(client.map(noop, range(8 * WORKERS), pure=False))

            def dask_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
                return list(client.gather(client.map(fn, list(items), pure=False)))

            return run_all_costs(dask_map, size)
        finally:
            dpool.shutdown()
    if name == "Ray":
        from benchmarks.contenders import RayPool

        rpool = RayPool(WORKERS)
        try:
            import ray

            ray.get([ray.remote(noop).remote(i) for i in range(8 * WORKERS)])
            # DEAP's toolbox.evaluate is a functools.partial, which ray.remote refuses: one remote
            # function applies whatever it is given, as a Ray user's DEAP map would.
            apply = ray.remote(_apply)

            def ray_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
                ref = ray.put(fn)
                return list(ray.get([apply.remote(ref, x) for x in items]))

            return run_all_costs(ray_map, size)
        finally:
            rpool.shutdown()
    raise ValueError(f"unknown GA contender {name!r}; known: {', '.join(GA_CONTENDERS)}")


# ------------------------------------------------------------------- driver
def run(
    names: list[str], rounds: int, size: dict[str, Any], *, python: str, timeout: float,
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Every contender once per round, rotated; raw per-round figures and medians per cost."""
    from benchmarks.run import _run_child, _tail

    raw: dict[str, dict[str, list[dict[str, Any]]]] = {n: {} for n in names}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="scoopexec-ga-") as tmp:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                t = time.perf_counter()
                out, log = os.path.join(tmp, f"{name}.json"), os.path.join(tmp, f"{name}.log")
                for p in (out, log):
                    if os.path.exists(p):
                        os.remove(p)
                if name == "SCOOP":
                    script = os.path.join(HERE, "ga_scoop.py")
                    cmd = [python, "-m", "scoop", "-q", "-n", str(WORKERS), script, json.dumps(size), out]
                else:
                    cmd = [python, "-m", "benchmarks.ga", "--child", name, "--sizes", json.dumps(size)]
                    cmd += ["--out", out]
                rc, _ = _run_child(cmd, timeout, log)
                if rc == 0 and os.path.exists(out):
                    with open(out) as fh:
                        res = json.load(fh)
                else:
                    why = "timed out" if rc is None else f"exited with {rc}"
                    res = {"costs": {}, "errors": {"all": f"child {why}: {_tail(log)}"}}
                for cost, fig in res["costs"].items():
                    raw[name].setdefault(cost, []).append(fig)
                errors += [f"round {r + 1}, {name}, {k}: {v}" for k, v in res["errors"].items()]
                if progress:
                    print(f"GA round {r + 1}/{rounds}: {name} ({time.perf_counter() - t:.1f} s)",
                          file=sys.stderr, flush=True)  # fmt: skip
    return summarise(names, raw, errors, size)


def summarise(
    names: list[str], raw: dict[str, dict[str, list[dict[str, Any]]]], errors: list[str], size: dict[str, Any]
) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    outcomes = set()
    for name in names:
        for cost, figs in raw[name].items():
            g = [f["gens_per_s"] for f in figs]
            table.setdefault(cost, {})[name] = {
                "median": statistics.median(g),
                "min": min(g),
                "max": max(g),
                "rounds": g,
            }
            outcomes.update((cost, f["evaluations"], f["best"]) for f in figs)
    for by_name in table.values():
        serial = by_name.get("serial")
        for fig in by_name.values():
            fig["vs_serial"] = fig["median"] / serial["median"] if serial else None
    # Every contender ran the same evolution: one (evaluations, best) per cost.
    same = all(len({(e, b) for c, e, b in outcomes if c == cost}) == 1 for cost in table)
    if not same:
        errors.append(f"the contenders' evolutions differ (evaluations, best): {_differing(names, raw)}")
    return {"sizes": size, "contenders": names, "table": table, "raw": raw, "errors": errors}


def _differing(names: list[str], raw: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """Which contenders' (evaluations, best) differ from the reference's (serial, else the first)."""
    ref = "serial" if "serial" in names else names[0]
    said = []
    for name in names:
        for cost, figs in raw[name].items():
            want = {(f["evaluations"], f["best"]) for f in raw[ref].get(cost, [])}
            got = [(f["evaluations"], f["best"]) for f in figs]
            if name != ref and set(got) != want:
                said.append(f"{name} at {cost} ms: {got} ({ref}: {sorted(want)})")
    return "; ".join(said) or "the reference's own rounds differ"


def markdown(result: dict[str, Any]) -> str:
    names = result["contenders"]
    size = result["sizes"]
    lines = [
        "| evaluation cost | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for cost in size["generations"]:
        cells = []
        for n in names:
            fig = result["table"].get(cost, {}).get(n)
            if fig is None:
                cells.append("-")
                continue
            cell = f"{fig['median']:.3g} ({fig['min']:.3g}-{fig['max']:.3g})"
            if fig.get("vs_serial") and n != "serial":
                cell += f", {fig['vs_serial']:.2f}x"
            cells.append(cell)
        lines.append(f"| {cost} ms | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--only", help="comma-separated: " + ",".join(GA_CONTENDERS))
    ap.add_argument("--generations", help="timed generations per cost, e.g. 0.1=20,1=10,10=5")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = child(args.child, json.loads(args.sizes))
        with open(args.out, "w") as fh:
            json.dump(res, fh)
        return 0
    size = sizes(quick=args.quick, generations=args.generations)
    names = [n for n in (args.only.split(",") if args.only else GA_CONTENDERS) if n]
    bad = [n for n in names if n not in GA_CONTENDERS]
    if bad:
        ap.error(f"unknown contender(s) {', '.join(bad)}; known: {', '.join(GA_CONTENDERS)}")
    result = run(names, args.rounds, size, python=args.python, timeout=args.timeout)
    print(markdown(result))
    for e in result["errors"]:
        print("error:", e.splitlines()[0][:300], file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


def sizes(*, quick: bool = False, generations: str | None = None) -> dict[str, Any]:
    """The GA's sizes; ``generations`` "0.1=20,1=10" overrides the timed generations per cost."""
    size = json.loads(json.dumps(QUICK if quick else FULL))
    for part in filter(None, (generations or "").split(",")):
        cost, _, n = part.partition("=")
        if cost.strip() not in EVALUATE or not n.strip().isdigit() or int(n) < 1:
            raise SystemExit(f"--generations: expected COST=N with COST in {', '.join(EVALUATE)}: {part!r}")
        size["generations"][cost.strip()] = int(n)
    return dict(size)


if __name__ == "__main__":
    # Run as benchmarks.ga, not __main__, so that the evaluations travel by reference to a module
    # every worker can import (dask's scheduler failed to load a graph holding __main__'s functions).
    import importlib

    sys.exit(importlib.import_module("benchmarks.ga").main())
