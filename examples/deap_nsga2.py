"""NSGA-II with DEAP on a scoopexec pool: the ZDT1 two-objective benchmark.

    python examples/deap_nsga2.py [--workers N] [--generations G] [--population P] [--cost SECONDS]

The evolutionary loop is the textbook NSGA-II (non-dominated sorting and
crowding distance for selection, simulated binary crossover, polynomial
mutation).  The only line that distributes it is
``toolbox.register("map", scoop_map)``: every generation's evaluations run on
the pool's workers.  The run is then repeated with the built-in ``map`` from
the same seed, and the two final Pareto fronts are compared: they must be the
same, value for value.  Exits 1 if they are not.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time

from deap import base, creator, tools

from scoopexec import ScoopExecutor, scoop_map

N_VARS = 12
LOW, UP = 0.0, 1.0

creator.create("FitnessZDT", base.Fitness, weights=(-1.0, -1.0))
creator.create("Solution", list, fitness=creator.FitnessZDT)


def zdt1(x: list[float], cost: float = 0.0) -> tuple[float, float]:
    """Both objectives of ZDT1 (minimised); ``cost`` seconds of CPU stand in for a real model."""
    end = time.perf_counter() + cost
    while time.perf_counter() < end:
        pass
    g = 1.0 + 9.0 * sum(x[1:]) / (len(x) - 1)
    f1 = x[0]
    return f1, g * (1.0 - math.sqrt(f1 / g))


def make_toolbox(cost: float, map_fn) -> base.Toolbox:
    tb = base.Toolbox()
    tb.register("attr", random.uniform, LOW, UP)
    tb.register("solution", tools.initRepeat, creator.Solution, tb.attr, N_VARS)
    tb.register("population", tools.initRepeat, list, tb.solution)
    tb.register("evaluate", zdt1, cost=cost)
    tb.register("mate", tools.cxSimulatedBinaryBounded, low=LOW, up=UP, eta=20.0)
    tb.register("mutate", tools.mutPolynomialBounded, low=LOW, up=UP, eta=20.0, indpb=1.0 / N_VARS)
    tb.register("select", tools.selNSGA2)
    tb.register("map", map_fn)
    return tb


def nsga2(tb: base.Toolbox, population: int, generations: int, seed: int) -> list[tuple[float, float]]:
    """Run NSGA-II; return the objectives of the final first front, sorted."""
    random.seed(seed)
    pop = tb.population(n=population)
    for ind, fit in zip(pop, tb.map(tb.evaluate, pop), strict=True):
        ind.fitness.values = fit
    pop = tb.select(pop, len(pop))  # assigns the crowding distances
    for _ in range(generations):
        offspring = [tb.clone(ind) for ind in tools.selTournamentDCD(pop, len(pop))]
        for a, b in zip(offspring[::2], offspring[1::2], strict=True):
            if random.random() <= 0.9:
                tb.mate(a, b)
            tb.mutate(a)
            tb.mutate(b)
            del a.fitness.values, b.fitness.values
        fresh = [ind for ind in offspring if not ind.fitness.valid]
        for ind, fit in zip(fresh, tb.map(tb.evaluate, fresh), strict=True):
            ind.fitness.values = fit
        pop = tb.select(pop + offspring, population)
    front = tools.sortNondominated(pop, len(pop), first_front_only=True)[0]
    return sorted(ind.fitness.values for ind in front)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    ap.add_argument("--generations", type=int, default=40)
    ap.add_argument("--population", type=int, default=100, help="a multiple of 4 (selTournamentDCD)")
    ap.add_argument("--cost", type=float, default=0.001, help="CPU seconds per evaluation")
    ap.add_argument("--seed", type=int, default=64)
    args = ap.parse_args()
    if args.population % 4:
        ap.error("--population must be a multiple of 4")

    t0 = time.perf_counter()
    with ScoopExecutor(max_workers=args.workers) as ex:
        front = nsga2(make_toolbox(args.cost, scoop_map), args.population, args.generations, args.seed)
        workers = len(ex.worker_pids)
    parallel_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    serial = nsga2(make_toolbox(args.cost, map), args.population, args.generations, args.seed)
    serial_s = time.perf_counter() - t0

    print(f"first front: {len(front)} solutions; f1 from {front[0][0]:.4f} to {front[-1][0]:.4f}")
    print(f"on {workers} workers: {parallel_s:.2f} s (pool start included); serial: {serial_s:.2f} s")
    same = front == serial
    print(f"same answer as the serial run: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
