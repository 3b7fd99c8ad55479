"""Nevergrad on a scoopexec pool: ``optimizer.minimize(f, executor=ex)``.

    python examples/nevergrad_executor.py [--workers N] [--budget B] [--dim D] [--cost SECONDS]

Nevergrad's ``minimize`` takes any ``concurrent.futures``-style executor and
keeps ``num_workers`` evaluations in flight; a ``ScoopExecutor`` runs them on
its workers.  The objective is the shifted Rastrigin function, minimised by
CMA-ES in batch mode: each batch of
``num_workers`` candidates is asked for, evaluated in parallel, and told.  The
run is then repeated with Nevergrad's own sequential executor from the same
seed; both must recommend the same point with the same loss.  Exits 1 if not.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import nevergrad as ng
import numpy as np

from scoopexec import ScoopExecutor

SHIFT = 0.7


def rastrigin(x: np.ndarray, cost: float = 0.0) -> float:
    """Shifted Rastrigin (minimum 0 at x = SHIFT); ``cost`` s of CPU stand in for a simulation."""
    end = time.perf_counter() + cost
    while time.perf_counter() < end:
        pass
    z = np.asarray(x) - SHIFT
    return float(10 * len(z) + np.sum(z * z - 10 * np.cos(2 * math.pi * z)))


class Objective:
    """rastrigin with its cost bound: a picklable callable (Nevergrad calls f(*args))."""

    def __init__(self, cost: float) -> None:
        self.cost = cost

    def __call__(self, x: np.ndarray) -> float:
        return rastrigin(x, self.cost)


def optimise(executor, dim: int, budget: int, workers: int, seed: int, cost: float):
    """Minimise with ``executor`` (None: Nevergrad's sequential one); the point recommended, its loss."""
    param = ng.p.Array(shape=(dim,)).set_bounds(-5.12, 5.12)
    param.random_state = np.random.RandomState(seed)
    # CMA-ES with a population a whole number of batches: it updates once per population, from the
    # candidates sorted by loss, so the order in which a batch's results come back does not matter.
    cma = ng.families.ParametrizedCMA(popsize=workers * max(2, 12 // workers))
    opt = cma(parametrization=param, budget=budget, num_workers=workers)
    with warnings.catch_warnings():
        # Nevergrad advises against num_workers > 1 without an executor (the serial run), and its
        # polling timer complains at the end of a batch-mode run: neither concerns the answer.
        warnings.simplefilter("ignore", ng.errors.InefficientSettingsWarning)
        warnings.filterwarnings("ignore", "Ignoring since timer")
        rec = opt.minimize(Objective(cost), executor=executor, batch_mode=True)
    return rec.value, rastrigin(rec.value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4, help="evaluations in flight, and worker processes")
    ap.add_argument("--budget", type=int, default=600)
    ap.add_argument("--dim", type=int, default=4)
    ap.add_argument("--cost", type=float, default=0.002, help="CPU seconds per evaluation")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()

    t0 = time.perf_counter()
    with ScoopExecutor(max_workers=args.workers) as ex:
        # Start the workers first (each imports this script, and so Nevergrad): minimize() polls
        # its futures at a tenth of the evaluation time it measured in its first batches.
        list(ex.map(time.sleep, [0.05] * 2 * args.workers))
        x, loss = optimise(ex, args.dim, args.budget, args.workers, args.seed, args.cost)
    parallel_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    xs, loss_s = optimise(None, args.dim, args.budget, args.workers, args.seed, args.cost)
    serial_s = time.perf_counter() - t0

    print(f"recommended x = {np.round(x, 4).tolist()}, loss {loss:.6g} (optimum 0 at {SHIFT})")
    print(f"{args.budget} evaluations on {args.workers} workers: {parallel_s:.2f} s "
          f"(pool start included); serial: {serial_s:.2f} s")
    same = bool(np.array_equal(x, xs)) and loss == loss_s
    print(f"same answer as the serial run: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
