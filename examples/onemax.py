"""OneMax with DEAP, distributed over local worker processes by scoopexec.

    python examples/onemax.py [--workers N] [--generations G] [--population P] [--cost SECONDS]
                              [--trace run.json] [--no-progress]

The only change from DEAP's serial example is the line that registers the
map: ``toolbox.register("map", scoop_map)``.  scoop_map runs on the pool of
the ``with ScoopExecutor(...)`` block (here only to choose ``--workers``;
without one it starts a pool with a worker per CPU).  Each evaluation burns ``--cost``
seconds of CPU to stand in for a real simulation, so that the speed-up over
a serial run is visible.  Prints a progress bar for each generation's
evaluations and DEAP's per-generation statistics, and at the end the
measured speed-up against the serial time of the same evaluations.  With
``--trace run.json`` it records the timeline of every evaluation
(``python -m scoopexec report run.json --png timeline.png`` draws it).
"""

from __future__ import annotations

import argparse
import random
import time

from deap import algorithms, base, creator, tools

from scoopexec import ScoopExecutor, scoop_map

N_BITS = 100

creator.create("FitnessMax", base.Fitness, weights=(1.0,))
creator.create("Individual", list, fitness=creator.FitnessMax)


def burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def evaluate(individual, cost=0.0):
    if cost:
        burn(cost)
    return (sum(individual),)


def make_toolbox(cost: float) -> base.Toolbox:
    tb = base.Toolbox()
    tb.register("attr_bool", random.randint, 0, 1)
    tb.register("individual", tools.initRepeat, creator.Individual, tb.attr_bool, N_BITS)
    tb.register("population", tools.initRepeat, list, tb.individual)
    tb.register("evaluate", evaluate, cost=cost)
    tb.register("mate", tools.cxTwoPoint)
    tb.register("mutate", tools.mutFlipBit, indpb=0.05)
    tb.register("select", tools.selTournament, tournsize=3)
    tb.register("map", scoop_map)  # <- the one line that distributes the run
    return tb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    ap.add_argument("--generations", type=int, default=15)
    ap.add_argument("--population", type=int, default=200)
    ap.add_argument("--cost", type=float, default=0.002, help="CPU seconds per evaluation")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--trace", metavar="FILE", help="record the timeline of every evaluation to FILE")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar for each generation")
    args = ap.parse_args()

    random.seed(args.seed)
    toolbox = make_toolbox(args.cost)
    stats = tools.Statistics(lambda ind: ind.fitness.values)
    stats.register("max", max)
    stats.register("avg", lambda vals: sum(v[0] for v in vals) / len(vals))

    t0 = time.perf_counter()
    with ScoopExecutor(max_workers=args.workers, trace=args.trace, progress=not args.no_progress) as ex:
        started = time.perf_counter() - t0
        pop = toolbox.population(n=args.population)
        hof = tools.HallOfFame(1)
        t1 = time.perf_counter()
        pop, logbook = algorithms.eaSimple(
            pop, toolbox, cxpb=0.5, mutpb=0.2, ngen=args.generations, stats=stats, halloffame=hof,
            verbose=True,
        )
        run = time.perf_counter() - t1
        workers = len(ex.worker_pids)
    evaluations = sum(rec["nevals"] for rec in logbook)
    serial = evaluations * args.cost
    print(f"\nbest individual: {sum(hof[0])} ones of {N_BITS}")
    print(f"{evaluations} evaluations on {workers} workers in {run:.2f} s (pool start {started:.2f} s)")
    if args.cost:
        print(f"serial CPU time of the evaluations: {serial:.2f} s -> speed-up {serial / run:.2f}x")
    if args.trace:
        print(f"timeline: {args.trace} (python -m scoopexec report {args.trace} --png timeline.png)")


if __name__ == "__main__":
    main()
