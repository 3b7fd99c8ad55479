"""The program tests/test_stress.py runs: nested work of every kind on one pool, until time is up.

``python tests/stress_program.py SECONDS`` runs rounds of these, in turn, for about SECONDS:

- joblib: Parallel(backend="scoop") whose tasks run Parallel again (two and three levels);
- executors: tasks that submit tasks and wait on them (result(), wait(), as_completed()),
  cancel sub-tasks that are parked on their own sub-tasks, and take a lock in done-callbacks
  that they hold while submitting;
- deap-in-joblib: DEAP's eaSimple inside joblib tasks, its toolbox.map being scoop_map;
- threads: client threads submitting nested work at once.

Every wait is bounded (ROUND_LIMIT); a wrong result, an error, a lost worker or a hang ends it
with a non-zero status and the reason on stderr (a hang: faulthandler prints every thread's stack).
The last line on stdout is a JSON summary.
"""

from __future__ import annotations

import concurrent.futures as cf
import faulthandler
import json
import random
import sys
import threading
import time

from deap import algorithms, base, creator, tools
from joblib import Parallel, delayed, parallel_config

import scoopexec
from scoopexec import ScoopExecutor, scoop_map
from tests import compat_helpers as h

ROUND_LIMIT = 90.0  # s any one round may take before it counts as a hang

creator.create("StressFitness", base.Fitness, weights=(1.0,))
creator.create("StressIndividual", list, fitness=creator.StressFitness)


# ------------------------------------------------------------------ tasks
def ones(individual):
    return (sum(individual),)


def evolve(seed, on_pool):
    """A small eaSimple run; on_pool: its evaluations fan out through scoop_map.

    Each individual with the fitness it was given.  (Not the serial run's population: tasks
    parked on one worker share its module-level random state, as threads would.)
    """
    random.seed(seed)
    tb = base.Toolbox()
    tb.register("bit", random.randint, 0, 1)
    tb.register("individual", tools.initRepeat, creator.StressIndividual, tb.bit, 24)
    tb.register("population", tools.initRepeat, list, tb.individual)
    tb.register("evaluate", ones)
    tb.register("mate", tools.cxTwoPoint)
    tb.register("mutate", tools.mutFlipBit, indpb=0.05)
    tb.register("select", tools.selTournament, tournsize=3)
    tb.register("map", scoop_map if on_pool else map)
    pop = tb.population(n=16)
    pop, log = algorithms.eaSimple(pop, tb, 0.5, 0.2, 3, verbose=False)
    return [(list(ind), ind.fitness.values) for ind in pop], [rec["nevals"] for rec in log]


def fib(n):
    if n < 2:
        return n
    a = scoopexec.submit(fib, n - 1)
    b = scoopexec.submit(fib, n - 2)
    return a.result() + b.result()


def tree(depth, width, how):
    """width ** depth leaves; waits on its children with result(), wait() or as_completed()."""
    if depth == 0:
        return 1
    kids = [scoopexec.submit(tree, depth - 1, width, (how + i) % 3) for i in range(width)]
    if how == 1:
        _, pending = cf.wait(kids, timeout=ROUND_LIMIT)
        assert not pending
    elif how == 2:
        return sum(f.result() for f in cf.as_completed(kids, timeout=ROUND_LIMIT))
    return sum(f.result() for f in kids)


def pause(seconds, value):
    time.sleep(seconds)
    return value


def parked(i):
    """A child that parks on a grandchild of its own."""
    return scoopexec.submit(pause, 0.02, i).result() * 10


def cancel_parked(n):
    """Submit n children that park; cancel every other one while they may be parked."""
    kids = [scoopexec.submit(parked, i) for i in range(n)]
    cf.wait(kids, timeout=0.01)  # parks this task a moment: some children start and park
    for f in kids[::2]:
        f.cancel()
    got = []
    for i, f in enumerate(kids):
        if f.cancelled():
            continue
        got.append((i, f.result(timeout=ROUND_LIMIT)))
    assert all(v == i * 10 for i, v in got), got
    return len(got) + sum(1 for f in kids if f.cancelled())


def callbacks_under_lock(rounds):
    """Submit holding a lock that the done-callbacks take, long enough for the flusher to run."""
    lock = threading.Lock()
    seen = []

    def note(f):
        with lock:
            seen.append(f.result())

    futs = []
    for _ in range(rounds):
        with lock:
            end = time.perf_counter() + 0.004
            while time.perf_counter() < end:
                f = scoopexec.submit(abs, -2)
                f.add_done_callback(note)
                futs.append(f)
                time.sleep(0.0003)
    total = sum(f.result(timeout=ROUND_LIMIT) for f in futs)
    assert total == 2 * len(futs)
    return len(futs)


# ------------------------------------------------------------- scenarios
def joblib_round(ex, k):
    with parallel_config(backend="scoop"):
        n = 3 + k % 5
        out = Parallel(n_jobs=2, timeout=ROUND_LIMIT)(delayed(h.inner_sum)(n + i) for i in range(6))
        assert out == [sum(j * j for j in range(n + i)) for i in range(6)], out
        eights = Parallel(n_jobs=2, timeout=ROUND_LIMIT)(delayed(h.nested_sum)(3, 2) for _ in range(2))
        assert eights == [8, 8]
        pids = Parallel(n_jobs=2, timeout=ROUND_LIMIT)(delayed(h.inner_pids)(4) for _ in range(4))
        assert all(len(p) == 4 for _, _, _, p in pids)


def executors_round(ex, k):
    assert ex.submit(fib, 9 + k % 3).result(timeout=ROUND_LIMIT) == [34, 55, 89][k % 3]
    assert ex.submit(tree, 3, 3, k % 3).result(timeout=ROUND_LIMIT) == 27
    assert ex.submit(cancel_parked, 6).result(timeout=ROUND_LIMIT) == 6
    assert ex.submit(callbacks_under_lock, 5).result(timeout=ROUND_LIMIT) >= 5


def deap_round(ex, k):
    seeds = [k * 4 + i for i in range(4)]
    with parallel_config(backend="scoop"):
        out = Parallel(n_jobs=2, timeout=ROUND_LIMIT)(delayed(evolve)(s, True) for s in seeds)
    assert len(out) == 4
    for pop, nevals in out:
        assert len(pop) == 16 and nevals[0] == 16 and len(nevals) == 4, (pop, nevals)
        for ind, fitness in pop:  # every nested evaluation came back to its own individual
            assert len(ind) == 24 and fitness == (sum(ind),), (ind, fitness)


def threads_round(ex, k):
    errors = []

    def work(i):
        try:
            assert ex.submit(fib, 8).result(timeout=ROUND_LIMIT) == 21
            assert ex.submit(tree, 2, 3, i % 3).result(timeout=ROUND_LIMIT) == 9
            assert list(ex.map(abs, range(-30, 0))) == list(range(30, 0, -1))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ROUND_LIMIT)
        assert not t.is_alive(), "a submitting thread hung"
    if errors:
        raise errors[0]


SCENARIOS = {
    "joblib": joblib_round,
    "executors": executors_round,
    "deap-in-joblib": deap_round,
    "threads": threads_round,
}


def main(seconds: float) -> int:
    # A hang anywhere: every thread's stack on stderr, then exit (status 1).
    faulthandler.dump_traceback_later(seconds + 2 * ROUND_LIMIT, exit=True)
    rounds = dict.fromkeys(SCENARIOS, 0)
    slowest = dict.fromkeys(SCENARIOS, 0.0)
    start = time.monotonic()
    with ScoopExecutor(3) as ex:
        pids = set(ex.worker_pids)
        k = 0
        while True:
            for name, fn in SCENARIOS.items():
                t0 = time.monotonic()
                fn(ex, k)
                rounds[name] += 1
                slowest[name] = max(slowest[name], time.monotonic() - t0)
            k += 1
            if time.monotonic() - start >= seconds:
                break
        lost = pids - set(ex.worker_pids)
        assert not lost, f"worker processes were lost (and replaced) during the run: {sorted(lost)}"
    summary = {
        "seconds": round(time.monotonic() - start, 1),
        "rounds": rounds,
        "slowest_round": {n: round(v, 2) for n, v in slowest.items()},
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 30.0))
