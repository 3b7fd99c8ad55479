"""Module-level task functions for the joblib, DEAP and SCOOP-compatibility tests."""

from __future__ import annotations

import os
import time

from joblib import Parallel, delayed, parallel_config
from joblib.parallel import get_active_backend


def square(x):
    return x * x


def getpid(_=None):
    return os.getpid()


def slow_square(x, seconds):
    time.sleep(seconds)
    return x * x


def wait_for_file(path, value, limit=60.0):
    """Block (like real work) until ``path`` exists; return ``value``."""
    end = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)
    return value


def mark_and_sleep(directory, i, seconds):
    """Record that item ``i`` started, sleep, then record that it finished."""
    open(os.path.join(directory, f"start-{i}"), "w").close()
    time.sleep(seconds)
    open(os.path.join(directory, f"end-{i}"), "w").close()
    return i


def fail_at_zero(directory, i, seconds):
    if i == 0:
        raise ValueError("item 0 fails")
    return mark_and_sleep(directory, i, seconds)


def fail_soon(seconds):
    time.sleep(seconds)
    raise ValueError("failed on purpose")


def inner_pids(n):
    """A nested Parallel inside a task: what it ran on."""
    backend, _ = get_active_backend()
    pids = Parallel(n_jobs=2)(delayed(getpid)() for _ in range(n))
    return os.getpid(), type(backend).__name__, backend.nesting_level, pids


def inner_sum(n):
    return sum(Parallel(n_jobs=2)(delayed(square)(i) for i in range(n)))


def nested_sum(depth, width):
    """``width`` ** ``depth`` leaves, each level a Parallel call inside a task."""
    if depth == 0:
        return 1
    return sum(Parallel(n_jobs=2)(delayed(nested_sum)(depth - 1, width) for _ in range(width)))


def config_survives_parking(i):
    """Enter a parallel_config, park in a nested Parallel, check the config is still ours."""
    mine = "threading" if i % 2 else "scoop"
    with parallel_config(backend=mine, n_jobs=2):
        Parallel()(delayed(slow_square)(j, 0.01) for j in range(4))
        seen = type(get_active_backend()[0]).__name__
    after = type(get_active_backend()[0]).__name__
    return mine, seen, after


def import_joblib_and_run(n):
    """The first use of joblib in this worker happens inside the task."""
    import joblib

    return joblib.Parallel(n_jobs=2, backend="scoop")(joblib.delayed(square)(i) for i in range(n))


INIT_STATUS = "uninitialized"


def init(x):
    global INIT_STATUS
    INIT_STATUS = x


def get_init_status(_=None):
    return INIT_STATUS


def append_and_count(seen, x):
    """How many items ``seen`` holds once ``x`` is added to it (a list a partial binds)."""
    seen.append(x)
    return len(seen)


def ones(individual):
    return (sum(individual),)


def identity(x):
    return x


def typed_sum(individual):
    return (sum(individual), type(individual).__name__, type(individual[0]).__name__)


def island(args):
    """DEAP's island model in one task: an eaSimple run whose toolbox.map fans out again."""
    import random

    from deap import algorithms

    population, toolbox, seed, generations = args
    random.seed(seed)
    population, _ = algorithms.eaSimple(population, toolbox, 0.5, 0.2, generations, verbose=False)
    return population


def pid_and_const(name):
    from scoopexec import shared

    return os.getpid(), shared.getConst(name)


def get_const(name, timeout):
    from scoopexec import shared

    return shared.getConst(name, timeout=timeout)


def set_const_in_task(_):
    from scoopexec import shared

    shared.setConst(nope=1)


def nested_futures_map(n):
    from scoopexec import futures

    return list(futures.map(square, range(n)))


def futures_map_with_timeout(gate):
    from scoopexec import futures

    try:
        list(futures.map(wait_for_file, [gate], [1], timeout=0.2))
    except futures.TimeoutError:
        return "timeout"
    return "no timeout"


def concat(a, b):
    return a + b


def read_shared(name):
    import scoopexec

    return scoopexec.shared(name)


def inner_reads_shared(name, n):
    """Most of these sub-tasks are submitted from joblib's callbacks, on the worker's hub."""
    return Parallel(n_jobs=2, batch_size=1)(delayed(read_shared)(name) for _ in range(n))


def start_then_get_const(marker, name, timeout):
    """Mark that the task runs, then wait (parked) for a constant set after it started."""
    from scoopexec import shared

    open(marker, "w").close()
    return shared.getConst(name, timeout=timeout)


def pid_and_const_slowly(name):
    time.sleep(0.02)
    return pid_and_const(name)


def count_uses_of_my_backend():
    """How many tasks used this task's nested backend object (1 unless tasks share it)."""
    backend = get_active_backend()[0]
    backend.uses = getattr(backend, "uses", 0) + 1
    Parallel(n_jobs=2)(delayed(slow_square)(1, 0.01) for _ in range(4))
    return backend.uses


def start_a_grandchild(path):
    """Start a process that would outlive this worker; return its pid."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(path, "w") as fh:
        fh.write(str(proc.pid))
    return proc.pid


def init_fails_once(path):
    """An initializer that fails in the first worker to run it (and succeeds ever after)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    raise RuntimeError("the first initializer fails on purpose")


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()
