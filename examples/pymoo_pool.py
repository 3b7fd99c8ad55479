"""pymoo on a scoopexec pool: ``StarmapParallelization(pool.starmap)`` with ``scoopexec.Pool``.

    python examples/pymoo_pool.py [--workers N] [--generations G] [--population P] [--cost SECONDS]

pymoo evaluates an ``ElementwiseProblem`` one solution at a time, through the
problem's ``elementwise_runner``; ``StarmapParallelization`` takes any
``starmap`` -- written for ``multiprocessing.Pool.starmap``, and here given
``scoopexec.Pool``'s, so the evaluations run on scoopexec workers (on other
hosts too, with ``Pool(hosts=[...])``).  The problem is a constrained
two-objective one (Binh and Korn's), solved with NSGA-II; the same run is then
repeated serially from the same seed and the two sets of objectives compared.
Exits 1 if they differ.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.problem import ElementwiseProblem
from pymoo.optimize import minimize

try:
    from pymoo.parallelization import StarmapParallelization
except ImportError:  # pymoo < 0.6.2
    from pymoo.core.problem import StarmapParallelization

import scoopexec


class BinhKorn(ElementwiseProblem):
    """Two objectives, two constraints, two variables; ``cost`` s of CPU per evaluation."""

    def __init__(self, cost: float = 0.0, **kwargs):
        bounds = {"xl": np.array([0.0, 0.0]), "xu": np.array([5.0, 3.0])}
        super().__init__(n_var=2, n_obj=2, n_ieq_constr=2, **bounds, **kwargs)
        self.cost = cost

    def _evaluate(self, x, out, *args, **kwargs):
        end = time.perf_counter() + self.cost
        while time.perf_counter() < end:
            pass
        out["F"] = [4 * x[0] ** 2 + 4 * x[1] ** 2, (x[0] - 5) ** 2 + (x[1] - 5) ** 2]
        out["G"] = [(x[0] - 5) ** 2 + x[1] ** 2 - 25, 7.7 - (x[0] - 8) ** 2 - (x[1] + 3) ** 2]


def solve(problem: ElementwiseProblem, population: int, generations: int, seed: int) -> np.ndarray:
    res = minimize(problem, NSGA2(pop_size=population), ("n_gen", generations), seed=seed, verbose=False)
    return res.F[np.lexsort(res.F.T[::-1])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    ap.add_argument("--generations", type=int, default=40)
    ap.add_argument("--population", type=int, default=60)
    ap.add_argument("--cost", type=float, default=0.001, help="CPU seconds per evaluation")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    t0 = time.perf_counter()
    with scoopexec.Pool(args.workers) as pool:
        runner = StarmapParallelization(pool.starmap)
        problem = BinhKorn(args.cost, elementwise_runner=runner)
        front = solve(problem, args.population, args.generations, args.seed)
        workers = len(pool.executor.worker_pids)
    pool.join()
    parallel_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    serial = solve(BinhKorn(args.cost), args.population, args.generations, args.seed)
    serial_s = time.perf_counter() - t0

    print(f"Pareto front: {len(front)} points; f1 from {front[0, 0]:.3f} to {front[-1, 0]:.3f}")
    print(f"on {workers} workers: {parallel_s:.2f} s (pool start included); serial: {serial_s:.2f} s")
    same = front.shape == serial.shape and bool(np.array_equal(front, serial))
    print(f"same answer as the serial run: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
