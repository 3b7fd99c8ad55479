"""A program written for SCOOP, run unchanged by scoopexec: DEAP's island model.

    python -m scoopexec -n 4 examples/scoop_islands.py [--islands 4] [--epochs 4] [--seed 3]

(With SCOOP itself it was ``python -m scoop -n 4 ...``.)  Nothing here knows
about scoopexec: ``from scoop import futures`` resolves to scoopexec's
SCOOP-compatible API under the launcher.  The creator classes are made at
module level, as SCOOP required; the toolbox's map is ``futures.map``; and the
maps nest: each island's whole ``eaSimple`` run is one task, and inside it
``toolbox.map`` fans the island's evaluations out again.  Between epochs the
best individuals migrate around the ring of islands.

Prints one line per epoch (the best fitness of each island) and exits with
status 0 when the best individual of the last epoch is at least as good as
the best of the first, 1 otherwise.
"""

import argparse
import random
import sys

from deap import algorithms, base, creator, tools
from scoop import futures

N_BITS = 60

creator.create("FitnessMax", base.Fitness, weights=(1.0,))
creator.create("Individual", list, fitness=creator.FitnessMax)


def ones(individual):
    return (sum(individual),)


toolbox = base.Toolbox()
toolbox.register("bit", random.randint, 0, 1)
toolbox.register("individual", tools.initRepeat, creator.Individual, toolbox.bit, N_BITS)
toolbox.register("population", tools.initRepeat, list, toolbox.individual)
toolbox.register("evaluate", ones)
toolbox.register("mate", tools.cxTwoPoint)
toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
toolbox.register("select", tools.selTournament, tournsize=3)
toolbox.register("map", futures.map)


def evolve(island, seed, generations):
    """One epoch of one island: a task, whose evaluations are tasks too."""
    random.seed(seed)
    island, _ = algorithms.eaSimple(
        island, toolbox, cxpb=0.5, mutpb=0.2, ngen=generations, verbose=False
    )
    return island


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--islands", type=int, default=4)
    ap.add_argument("--population", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()

    random.seed(args.seed)
    islands = [toolbox.population(n=args.population) for _ in range(args.islands)]
    best_per_epoch = []
    for epoch in range(args.epochs):
        seeds = [random.randrange(2**31) for _ in islands]
        islands = list(futures.map(evolve, islands, seeds, [args.generations] * len(islands)))
        tools.migRing(islands, 3, tools.selBest)
        bests = [max(ind.fitness.values[0] for ind in island) for island in islands]
        best_per_epoch.append(max(bests))
        print(f"epoch {epoch}: best per island {bests}")
    return 0 if best_per_epoch[-1] >= best_per_epoch[0] else 1


if __name__ == "__main__":
    sys.exit(main())
