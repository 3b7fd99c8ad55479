"""DEAP: scoop_map distributes eaSimple & co, nested maps, creator classes, clear pickling errors."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
from deap import algorithms, base, creator, tools

import scoopexec
from scoopexec import SerializationError, scoop_map
from scoopexec.wire import serialize
from tests import compat_helpers as h
from tests.conftest import run_script


@pytest.fixture
def onemax_classes():
    creator.create("TFitnessMax", base.Fitness, weights=(1.0,))
    creator.create("TIndividual", list, fitness=creator.TFitnessMax)
    yield creator.TIndividual
    del creator.TIndividual
    del creator.TFitnessMax


def _toolbox(individual_cls, n_bits=30):
    tb = base.Toolbox()
    tb.register("bit", random.randint, 0, 1)
    tb.register("individual", tools.initRepeat, individual_cls, tb.bit, n_bits)
    tb.register("population", tools.initRepeat, list, tb.individual)
    tb.register("evaluate", h.ones)
    tb.register("mate", tools.cxTwoPoint)
    tb.register("mutate", tools.mutFlipBit, indpb=0.05)
    tb.register("select", tools.selTournament, tournsize=3)
    return tb


def test_exported_from_the_package_and_the_integration():
    from scoopexec.integrations.deap import scoop_map as from_integrations

    assert scoopexec.scoop_map is from_integrations is scoop_map


def test_scoop_map_is_an_ordered_list_on_the_active_executor(executor):
    with executor:
        out = scoop_map(h.getpid, range(40))
        assert isinstance(out, list) and set(out) <= set(executor.worker_pids)
        assert scoop_map(h.square, range(50)) == [i * i for i in range(50)]
        assert scoop_map(pow, [2, 3, 4], [3, 2, 1]) == [8, 9, 4]
        assert scoop_map(h.square, range(100), chunksize=7) == [i * i for i in range(100)]
        assert scoop_map(h.square, []) == []


def test_scoop_map_raises_the_task_error_with_its_traceback(executor):
    with executor, pytest.raises(ValueError, match="failed on purpose") as info:
        scoop_map(h.fail_soon, [0, 0])
    assert "fail_soon" in str(info.value.__cause__)


@pytest.mark.parametrize("algorithm", ["eaSimple", "eaMuPlusLambda", "eaMuCommaLambda"])
def test_algorithms_give_the_serial_result(executor, onemax_classes, algorithm):
    def run(map_fn):
        random.seed(11)
        tb = _toolbox(onemax_classes)
        tb.register("map", map_fn)
        pop = tb.population(n=30)
        if algorithm == "eaSimple":
            pop, log = algorithms.eaSimple(pop, tb, 0.5, 0.2, 6, verbose=False)
        else:
            fn = getattr(algorithms, algorithm)
            pop, log = fn(pop, tb, mu=30, lambda_=40, cxpb=0.5, mutpb=0.2, ngen=6, verbose=False)
        return [list(ind) for ind in pop], [rec["nevals"] for rec in log]

    serial = run(map)
    with executor:
        distributed = run(scoop_map)
    assert distributed == serial


def test_results_keep_the_clients_creator_classes(executor, onemax_classes):
    """DEAP re-creates creator classes on unpickling; ours keep the client's class identity."""
    tb = _toolbox(onemax_classes)
    pop = tb.population(n=10)
    with executor:
        back = scoop_map(h.island, [(pop, tb, 1, 2)])[0]
        assert type(back[0]) is creator.TIndividual is onemax_classes
        again = scoop_map(h.island, [(back, tb, 2, 2)])[0]  # the toolbox still pickles
        assert type(again[0]) is onemax_classes


def test_individuals_of_numpy_floats_come_back_with_their_values_and_types(executor, onemax_classes):
    """Individuals made from an array's rows (as DEAP's cma module makes them) travel packed
    (serialize.PACK_MIN): each evaluation sees a TIndividual of numpy.float64, as the built-in map
    does, and the fitness values are the same objects' values."""
    np = pytest.importorskip("numpy")
    pop = [onemax_classes(row) for row in np.random.default_rng(3).standard_normal((50, 30))]
    with executor:
        got = scoop_map(h.typed_sum, pop)
    assert got == list(map(h.typed_sum, pop))
    assert {r[1:] for r in got} == {("TIndividual", "float64")}


@pytest.fixture
def array_classes():
    creator.create("TArrayFitness", base.Fitness, weights=(-1.0,))
    creator.create("TArrayIndividual", np.ndarray, fitness=creator.TArrayFitness)
    yield creator.TArrayIndividual
    del creator.TArrayIndividual
    del creator.TArrayFitness


@pytest.mark.parametrize(
    "values",
    [
        np.arange(30, dtype=np.float64) / 7,
        np.arange(12, dtype=np.int32).reshape(3, 4),
        np.array([True, False, True]),
        np.arange(5, dtype=np.float32)[::2],  # not contiguous
        np.array([1 + 2j, 3j]),
        np.array([], dtype=np.int64),  # empty: DEAP's way (list() makes it float64)
        np.array(["a", "bc"]),  # another kind: DEAP's way
    ],
)
def test_individuals_over_numpy_arrays_travel_as_deaps_own_reduction_rebuilds_them(array_classes, values):
    # DEAP reduces such an individual to list(individual): every element a NumPy scalar of its
    # own to pickle (eda/emna with scoop_map took 2.9x the built-in map's time). They travel as
    # their bytes now, and come back as DEAP's own reduction makes them.
    ind = array_classes(values)
    ind.fitness.values = (2.5,)
    ours = serialize.loads(serialize.dumps([ind], compact=True))[0]
    theirs = pickle.loads(pickle.dumps(ind))
    for got in (ours, theirs):
        assert type(got) is array_classes and got.fitness.values == (2.5,)
        assert got.fitness is not ind.fitness and got.flags.writeable and got.flags.c_contiguous
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert ours.tobytes() == theirs.tobytes()


def test_an_individual_over_a_numpy_array_travels_as_its_bytes(array_classes):
    ind = array_classes(np.arange(1000, dtype=np.float64))
    data = serialize.dumps([ind], compact=True)[0]
    assert len(data) < ind.nbytes + 1000  # (a scalar each: 13 bytes an element)
    assert np.array_equal(serialize.loads([data])[0], ind)


class _OwnReduction(creator._numpy_array if hasattr(creator, "_numpy_array") else np.ndarray):
    """A base of its own over DEAP's array class, whose __reduce_ex__ is its own to keep."""

    def __reduce_ex__(self, protocol):
        return _rebuilt_own, (self.tobytes(),)


def _rebuilt_own(raw):
    obj = np.frombuffer(raw).copy().view(creator.TOwnIndividual)
    obj.rebuilt_by = "its own reduction"
    return obj


def test_an_individual_class_with_its_own_reduce_ex_keeps_it():
    creator.create("TOwnIndividual", _OwnReduction)
    try:
        ind = creator.TOwnIndividual([1.0, 2.0])
        back = serialize.loads(serialize.dumps([ind], compact=True))[0]
        assert back.rebuilt_by == "its own reduction" and list(back) == [1.0, 2.0]
    finally:
        del creator.TOwnIndividual


def test_a_population_of_numpy_individuals_is_evaluated_as_by_the_built_in_map(executor, array_classes):
    pop = [array_classes(row) for row in np.random.default_rng(5).standard_normal((200, 30))]
    with executor:
        got = scoop_map(h.typed_sum, pop)
        back = scoop_map(h.identity, pop[:20])
    assert got == list(map(h.typed_sum, pop))
    assert all(type(b) is array_classes and np.array_equal(b, p) for b, p in zip(back, pop[:20], strict=True))


def test_island_model_nested_maps_on_one_worker(one_worker, onemax_classes):
    tb = _toolbox(onemax_classes)
    tb.register("map", scoop_map)  # inside each island task, map fans out again
    random.seed(5)
    islands = [tb.population(n=20) for _ in range(4)]
    with one_worker:
        for epoch in range(2):
            islands = scoop_map(h.island, [(isl, tb, 10 * epoch + i, 3) for i, isl in enumerate(islands)])
            tools.migRing(islands, 2, tools.selBest)
    assert all(len(isl) == 20 and all(ind.fitness.valid for ind in isl) for isl in islands)


def _counting_evaluator():
    """A function pickled by value (a closure) whose every unpickled copy has its own list: each
    call says whether it is its copy's first."""
    calls = []

    def evaluate(x):
        calls.append(x)
        return len(calls) == 1

    return evaluate


@pytest.mark.parametrize("chunksize", [1, 10, "auto"])
def test_a_toolbox_function_is_unpickled_once_per_worker_not_once_per_task(executor, chunksize):
    # DEAP's register() wraps every function in a functools.partial (named after its alias):
    # unpickled again for each task, it rebuilt everything the function reads by value (a
    # script's 2.4 MB data set made gp/spambase 3.5x slower than the built-in map).
    tb = base.Toolbox()
    tb.register("evaluate", _counting_evaluator())
    with executor:
        firsts = scoop_map(tb.evaluate, range(200), chunksize=chunksize)
        assert len(firsts) == 200 and 1 <= sum(firsts) <= len(executor.worker_pids)
    assert serialize.describe(tb.evaluate) == f"partial({__name__}._counting_evaluator.<locals>.evaluate)"


def test_a_partial_that_binds_a_list_is_unpickled_for_every_task(executor):
    # What a task may change stays its own, as with any other executor.
    tb = base.Toolbox()
    tb.register("evaluate", h.append_and_count, [])
    with executor:
        assert scoop_map(tb.evaluate, range(60), chunksize=1) == [1] * 60


def test_unpicklable_toolbox_attribute_is_named(executor, onemax_classes):
    tb = _toolbox(onemax_classes)
    with open(os.devnull, "w") as fh:
        tb.register("log", fh.write)  # a bound method of an open file: not picklable
        pop = tb.population(n=4)
        with executor, pytest.raises(SerializationError, match=r"toolbox\.log") as info:
            scoop_map(h.island, [(pop, tb, 1, 1)])
    assert "toolbox.log.__self__ (an _io.TextIOWrapper)" in str(info.value)
    # ... and it is the standard pickle module's error too, as ProcessPoolExecutor's map raises it
    assert isinstance(info.value, TypeError)


def test_unpicklable_function_attribute_is_named(executor):
    import threading

    class Evaluator:
        def __init__(self):
            self.lock = threading.Lock()

        def __call__(self, x):
            return x

    tb = base.Toolbox()
    tb.register("evaluate", Evaluator())
    with executor, pytest.raises(SerializationError, match=r"toolbox\.evaluate.*\.lock.*lock"):
        scoop_map(tb.evaluate, [1, 2])


def test_default_pool_when_nothing_is_active():
    r = run_script(
        """
        import os
        from scoopexec import scoop_map

        def pid(_):
            return os.getpid()

        if __name__ == "__main__":
            pids = set(scoop_map(pid, range(30)))
            print(len(pids) >= 1 and os.getpid() not in pids)
        """
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "True"


def test_creator_at_top_level_and_inside_main():
    r = run_script(
        """
        import random
        from deap import algorithms, base, creator, tools
        from scoopexec import ScoopExecutor, scoop_map

        creator.create("FitnessMax", base.Fitness, weights=(1.0,))
        creator.create("Individual", list, fitness=creator.FitnessMax)

        def ones(ind):
            return (sum(ind),)

        def evolve(individual_cls):
            random.seed(3)
            tb = base.Toolbox()
            tb.register("individual", tools.initRepeat, individual_cls, lambda: random.randint(0, 1), 20)
            tb.register("population", tools.initRepeat, list, tb.individual)
            tb.register("evaluate", ones)
            tb.register("mate", tools.cxTwoPoint)
            tb.register("mutate", tools.mutFlipBit, indpb=0.05)
            tb.register("select", tools.selTournament, tournsize=3)
            tb.register("map", scoop_map)
            pop, _ = algorithms.eaSimple(tb.population(n=20), tb, 0.5, 0.2, 4, verbose=False)
            return type(pop[0]).__name__, max(ind.fitness.values[0] for ind in pop)

        def main():
            creator.create("FitnessMin", base.Fitness, weights=(-1.0,))
            creator.create("LocalIndividual", list, fitness=creator.FitnessMin)
            with ScoopExecutor(2):
                print(*evolve(creator.Individual))
                print(*evolve(creator.LocalIndividual))

        if __name__ == "__main__":
            main()
        """,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr.decode()
    top, local = r.stdout.decode().splitlines()
    assert top.startswith("Individual ") and local.startswith("LocalIndividual ")


def test_creator_class_pickles_reuse_an_identical_class(onemax_classes):
    ind = onemax_classes([1, 0, 1])
    ind.fitness.values = (2.0,)
    copy = pickle.loads(pickle.dumps(ind))
    assert type(copy) is onemax_classes and copy.fitness.values == (2.0,)
    assert creator.TIndividual is onemax_classes  # not re-bound by unpickling


def test_pickles_stay_loadable_without_scoopexec(tmp_path, onemax_classes):
    """A checkpoint written by a scoopexec program loads where scoopexec is not installed."""
    import subprocess
    import sys

    ind = onemax_classes([1, 1, 0])
    ind.fitness.values = (2.0,)
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(pickle.dumps([ind]))
    assert b"scoopexec" not in path.read_bytes()
    code = (
        "import pickle, sys; pop = pickle.load(open(sys.argv[1], 'rb'));"
        "assert 'scoopexec' not in sys.modules; print(type(pop[0]).__name__, pop[0].fitness.values)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, check=False, timeout=60, env=env,
        cwd=str(tmp_path),
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "TIndividual (2.0,)"
