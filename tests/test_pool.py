"""scoopexec.Pool against multiprocessing.Pool's contract, and ScoopExecutor.starmap.

The first group follows what CPython's own pool tests check
(Lib/test/_test_multiprocessing.py, _TestPool, _TestPoolWorkerErrors,
_TestPoolWorkerLifetime, test_pool_initializer), in our words and on our Pool;
the differences the module docstring of scoopexec/pool.py lists are asserted as
such.  Real worker processes throughout.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import gc
import itertools
import logging
import multiprocessing
import multiprocessing.pool
import operator
import os
import pickle
import threading
import time
import weakref

import pytest

from scoopexec import BrokenScoopExecutor, Pool, ScoopExecutor, SerializationError
from scoopexec.pool import AsyncResult
from tests import helpers
from tests.conftest import run_script


def sqr(x, wait=0.0):
    time.sleep(wait)
    return x * x


def identity(x):
    return x


def raise_runtime_error():
    raise RuntimeError(123)  # the line test_remote_traceback looks for


def raise_key_error():
    raise KeyError("key")


def fail_on(x, bad, wait=0.0):
    if x == bad:
        raise ValueError(f"item {x}")
    time.sleep(wait)
    return x


def wait_for_file(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


def unpicklable_result():
    return threading.Lock()


class SayWhen(ValueError):
    pass


def failing_input(total, when):
    """Yield 0, 1, ... total-1, but raise SayWhen instead of yielding ``when`` (-1: at once)."""
    if when == -1:
        raise SayWhen("said when")
    for i in range(total):
        if i == when:
            raise SayWhen("said when")
        yield i


class Counted:
    alive = 0

    def __new__(cls):
        cls.alive += 1
        return object.__new__(cls)

    def __del__(self):
        type(self).alive -= 1


@pytest.fixture(scope="module")
def pool():
    p = Pool(2)
    try:
        yield p
    finally:
        p.terminate()
        p.join()


# ------------------------------------------------------------ _TestPool
def test_apply(pool):
    assert pool.apply(sqr, (5,)) == 25
    assert pool.apply(sqr, (), {"x": 3}) == 9
    # keyword names the Pool itself uses internally must reach the function untouched
    assert pool.apply(helpers.capture, (1,), {"single": 2, "kwargs": 3}) == ((1,), {"single": 2, "kwargs": 3})


def test_map_and_starmap_match_the_builtins(pool):
    assert pool.map(sqr, range(10)) == [x * x for x in range(10)]
    assert pool.map(sqr, list(range(100)), chunksize=20) == [x * x for x in range(100)]
    pairs = list(zip(range(10), range(9, -1, -1), strict=True))
    assert pool.starmap(operator.mul, pairs) == list(itertools.starmap(operator.mul, pairs))
    pairs = list(zip(range(100), range(99, -1, -1), strict=True))
    assert pool.starmap(operator.mul, pairs, chunksize=20) == list(itertools.starmap(operator.mul, pairs))
    expected = list(itertools.starmap(operator.mul, pairs))
    assert pool.starmap_async(operator.mul, pairs).get(timeout=60) == expected
    assert pool.map_async(sqr, range(10)).get(timeout=60) == [x * x for x in range(10)]
    assert pool.map(sqr, (x for x in range(7)), 3) == [x * x for x in range(7)]


def test_map_async_callbacks_run_before_wait_returns(pool):
    seen = []
    pool.map_async(int, ["1"], callback=seen.append, error_callback=seen.append).wait(timeout=60)
    assert seen == [[1]]
    pool.map_async(int, ["a"], callback=seen.append, error_callback=seen.append).wait(timeout=60)
    assert len(seen) == 2 and isinstance(seen[1], ValueError)


def test_an_unpicklable_argument_fails_its_call_instead_of_hanging(pool):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(SerializationError) as info:  # a pickle.PicklingError
        pool.map(sqr, [Unpicklable()] * 10)
    assert isinstance(info.value, pickle.PicklingError)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert pool.map(sqr, [3]) == [9]  # the pool goes on


def test_empty_inputs(pool):
    assert pool.map(sqr, []) == []
    assert list(pool.imap(sqr, [])) == []
    assert list(pool.imap_unordered(sqr, [])) == []
    assert list(pool.imap(sqr, iter([]))) == []
    assert pool.map_async(sqr, []).get(timeout=10) == []
    assert pool.map_async(sqr, [], chunksize=1).get(timeout=10) == []
    seen = []
    pool.map_async(sqr, [], callback=seen.append).wait(10)
    assert seen == [[]]  # multiprocessing does not call it for an empty input; we do


def test_map_reports_errors_of_its_input(pool):
    for _ in range(2):  # and again: the pool is not left in a bad state
        with pytest.raises(SayWhen):
            pool.map(sqr, failing_input(1, -1), 1)
    with pytest.raises(SayWhen):
        pool.map(sqr, failing_input(10, 3), 1)

    class LengthButNoItems:
        def __iter__(self):
            return self

        def __next__(self):
            raise SayWhen

        def __len__(self):
            return 1

    for _ in range(2):
        with pytest.raises(SayWhen):
            pool.map(sqr, LengthButNoItems(), 1)


def test_get_waits_for_the_result(pool):
    res = pool.apply_async(sqr, (7, 0.3))
    t0 = time.monotonic()
    assert res.get(timeout=60) == 49
    assert time.monotonic() - t0 >= 0.25
    assert res.ready() and res.successful()


def test_get_times_out_with_multiprocessings_timeout_error(pool, tmp_path):
    gate = str(tmp_path / "gate")
    late = pool.apply_async(wait_for_file, (gate,))
    t0 = time.monotonic()
    with pytest.raises(multiprocessing.TimeoutError):
        late.get(timeout=0.2)
    assert time.monotonic() - t0 >= 0.15
    assert not late.ready()
    with pytest.raises(ValueError, match="not ready"):
        late.successful()
    late.wait(0.05)
    assert not late.ready()
    open(gate, "w").close()
    assert late.get(timeout=60) is True
    assert late.successful()


def test_imap(pool):
    assert list(pool.imap(sqr, range(10))) == [x * x for x in range(10)]
    it = pool.imap(sqr, range(10))
    for i in range(10):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)
    it = pool.imap(sqr, list(range(1000)), chunksize=100)
    for i in range(1000):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)


def test_imap_reports_input_errors_where_they_happen(pool):
    for _ in range(2):
        it = pool.imap(sqr, failing_input(1, -1), 1)
        with pytest.raises(SayWhen):
            next(it)
    it = pool.imap(sqr, failing_input(10, 3), 1)
    assert [next(it) for _ in range(3)] == [0, 1, 4]
    with pytest.raises(SayWhen):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    # With chunks, the error comes where the chunk that could not be read would have started.
    it = pool.imap(sqr, failing_input(20, 7), 2)
    assert [next(it) for _ in range(6)] == [x * x for x in range(6)]
    with pytest.raises(SayWhen):
        next(it)
    it = pool.imap(sqr, failing_input(20, 7), 4)
    assert [next(it) for _ in range(4)] == [x * x for x in range(4)]
    with pytest.raises(SayWhen):
        next(it)


def test_imap_unordered(pool):
    assert sorted(pool.imap_unordered(sqr, range(10))) == [x * x for x in range(10)]
    assert sorted(pool.imap_unordered(sqr, list(range(1000)), chunksize=100)) == [x * x for x in range(1000)]


def test_imap_unordered_reports_input_errors(pool):
    for _ in range(2):
        it = pool.imap_unordered(sqr, failing_input(1, -1), 1)
        with pytest.raises(SayWhen):
            next(it)
    for total, when, chunksize in ((10, 3, 1), (20, 7, 2)):
        expected = [x * x for x in range(total)]
        it = pool.imap_unordered(sqr, failing_input(total, when), chunksize)
        with pytest.raises(SayWhen):
            for _ in range(total):
                value = next(it)
                expected.remove(value)  # each value at most once


def test_imap_task_errors_come_at_their_place_and_iteration_goes_on(pool):
    it = pool.imap(functools.partial(fail_on, bad=2), range(4), 1)
    assert next(it) == 0 and next(it) == 1
    with pytest.raises(ValueError, match="item 2"):
        next(it)
    assert list(it) == [3]
    # A chunk fails as a whole (as in multiprocessing); the chunks after it still come.
    it = pool.imap(functools.partial(fail_on, bad=2), range(6), 2)
    assert next(it) == 0 and next(it) == 1
    with pytest.raises(ValueError, match="item 2"):
        next(it)
    assert list(it) == [4, 5]


def test_imap_next_times_out(pool, tmp_path):
    it = pool.imap(sqr, [2], 1)
    assert it.next(timeout=60) == 4
    from_thread = pool.imap(sqr, iter([1]))  # an iterator: read by a feeder thread
    assert from_thread.next(timeout=60) == 1
    gate = str(tmp_path / "gate")
    it = pool.imap(wait_for_file, [gate])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.1)
    open(gate, "w").close()
    assert it.next(timeout=60) is True
    with pytest.raises(StopIteration):
        it.next(timeout=60)


def test_imap_returns_before_its_input_is_read(pool):
    gate = threading.Event()

    def items():
        yield 1
        gate.wait(30)
        yield 2

    t0 = time.monotonic()
    it = pool.imap(sqr, items())
    assert time.monotonic() - t0 < 5
    assert next(it) == 1
    gate.set()
    assert list(it) == [4]


def test_processes_is_checked_and_honoured():
    for bad in (-1, 0):
        with pytest.raises(ValueError, match="at least 1"):
            Pool(bad)
    with pytest.raises(TypeError):
        Pool(1.5)
    p = Pool(3)
    try:
        assert len(p.executor.worker_pids) == 3
        assert p.map(sqr, range(6)) == [x * x for x in range(6)]
    finally:
        p.close()
        p.join()


def test_terminate_stops_at_once_and_fails_what_is_pending():
    p = Pool(2)
    result = p.map_async(time.sleep, [60] * 10_000, chunksize=1)
    single = p.apply_async(time.sleep, (60,))
    time.sleep(0.3)
    t0 = time.monotonic()
    p.terminate()
    p.join()
    assert time.monotonic() - t0 < 30
    with pytest.raises(BrokenScoopExecutor):
        result.get(timeout=10)
    with pytest.raises(BrokenScoopExecutor):
        single.get(timeout=10)
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply_async(sqr, (1,))


def test_context_manager_terminates_and_pool_refuses_work_after():
    expected = [x * x for x in range(10)]
    with Pool(2) as p:
        assert p.map_async(sqr, range(10)).get(timeout=60) == expected
    p.join()
    for call in (
        lambda: p.map_async(sqr, [1]),
        lambda: p.map(sqr, [1]),
        lambda: p.apply(sqr, (1,)),
        lambda: p.imap(sqr, [1]),
        lambda: p.imap_unordered(sqr, [1]),
        lambda: p.starmap(operator.mul, [(1, 2)]),
    ):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    with pytest.raises(ValueError):  # entering a pool that is not running (bpo-35477)
        with p:
            pass


def test_close_waits_for_the_work_then_join_returns():
    p = Pool(2)
    results = [p.apply_async(sqr, (i, 0.1)) for i in range(6)]
    it = p.imap(sqr, (i for i in range(5)))
    p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply_async(sqr, (1,))
    p.join()
    assert all(r.ready() for r in results)
    assert [r.get(0) for r in results] == [i * i for i in range(6)]
    assert list(it) == [i * i for i in range(5)]
    assert p.executor._shutdown


def test_join_needs_close_or_terminate_first(pool):
    with pytest.raises(ValueError, match="still running"):
        pool.join()


def test_remote_traceback_is_the_cause_as_in_multiprocessing():
    with Pool(1) as p:
        with pytest.raises(RuntimeError) as info:
            p.apply(raise_runtime_error)
        exc = info.value
        assert type(exc) is RuntimeError and exc.args == (123,)
        cause = exc.__cause__
        assert type(cause) is multiprocessing.pool.RemoteTraceback
        assert "raise RuntimeError(123)  # the line test_remote_traceback looks for" in cause.tb
        # An error of the input itself is raised as it is, not as a remote error.
        with pytest.raises(SayWhen) as info2:
            p.map(sqr, failing_input(1, -1), 1)
        assert info2.value.__cause__ is None
    p.join()


def test_map_waits_for_every_chunk_before_raising():
    with Pool(2) as p:
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="item 0"):
            p.starmap(fail_on, [(0, 0), (1, 0, 0.6)], 1)
        assert time.monotonic() - t0 >= 0.5  # the slow item finished before map raised
        p.close()
        p.join()


def test_arguments_and_results_are_not_kept_alive(pool):
    objs = [Counted() for _ in range(10)]
    refs = [weakref.ref(o) for o in objs]
    back = pool.map(identity, objs)
    assert len(back) == 10
    del objs, back
    gc.collect()
    deadline = time.monotonic() + 5
    while any(r() is not None for r in refs) and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
    assert {r() for r in refs} == {None}
    assert Counted.alive == 0


def test_an_unclosed_running_pool_warns_when_collected():
    p = Pool(1)
    assert p.apply(sqr, (2,)) == 4
    ex = p.executor
    with pytest.warns(ResourceWarning, match=r"unclosed running multiprocessing pool <scoopexec\.Pool"):
        del p
        gc.collect()
    ex.shutdown(wait=True)


def test_results_of_a_dropped_pool_still_arrive():
    with pytest.warns(ResourceWarning, match=r"unclosed running multiprocessing pool <scoopexec\.Pool"):
        result = Pool(1).map_async(sqr, range(5), 1)
        gc.collect()
    assert result.get(timeout=60) == [x * x for x in range(5)]


def test_async_result_is_generic():
    assert AsyncResult[int].__origin__ is AsyncResult


# ------------------------------------------------ _TestPoolWorkerErrors
def test_error_callback_gets_the_exception():
    got = []
    with Pool(2) as p:
        res = p.apply_async(raise_key_error, error_callback=got.append)
        with pytest.raises(KeyError):
            res.get(timeout=60)
        assert len(got) == 1 and isinstance(got[0], KeyError)
        assert not res.successful()
        p.close()
        p.join()


def test_an_unpicklable_result_fails_its_call_and_the_pool_goes_on():
    with Pool(2) as p:
        for _ in range(20):
            got = []
            res = p.apply_async(unpicklable_result, error_callback=got.append)
            with pytest.raises(SerializationError, match="cannot be pickled"):
                res.get(timeout=60)
            assert isinstance(got[0], SerializationError)
        assert p.apply(sqr, (4,)) == 16
        p.close()
        p.join()


# --------------------------------------------- _TestPoolWorkerLifetime
@pytest.mark.parametrize("value", [0, -1, 0.5, "12", True])
def test_maxtasksperchild_is_checked(value):
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(3, maxtasksperchild=value)


def test_maxtasksperchild_replaces_workers_and_close_join_completes():
    p = Pool(2, maxtasksperchild=1)  # the executor's max_tasks_per_child: no warning
    results = [p.apply_async(sqr, (i, 0.3)) for i in range(6)]
    pids = [p.apply_async(helpers.getpid) for _ in range(4)]
    p.close()
    p.join()
    assert [r.get(0) for r in results] == [i * i for i in range(6)]
    assert len({r.get(0) for r in pids}) == 4  # each worker process ran one task


def test_an_unclosed_pool_in_a_script_does_not_block_exit():
    r = run_script(
        """
        import time
        from scoopexec import Pool

        class Problem:
            def __init__(self):
                self.pool = Pool(processes=1)

        def test():
            global problem
            problem = Problem()
            print(problem.pool.map(float, tuple(range(10)))[-1])

        if __name__ == "__main__":
            test()
        """,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "9.0"


# -------------------------------------------------- test_pool_initializer
def test_initializer_runs_in_every_worker():
    with pytest.raises(TypeError, match="callable"):
        Pool(initializer=1)
    p = Pool(2, helpers.init, ("set by the Pool",))
    try:
        assert set(p.map(_init_status, range(8), 1)) == {"set by the Pool"}
    finally:
        p.close()
        p.join()


def _init_status(_):
    return helpers.get_init_status()


# ------------------------------------------------ beyond multiprocessing
def test_callbacks_run_on_the_pools_thread_and_a_failing_one_is_logged(pool, caplog):
    where = []
    pool.apply_async(sqr, (3,), callback=lambda v: where.append(threading.current_thread().name)).wait(60)
    assert where == ["scoopexec-pool-results"]

    def bad(_):
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="scoopexec"):
        res = pool.apply_async(sqr, (3,), callback=bad)
        assert res.get(timeout=60) == 9
    assert any("callback" in r.getMessage() for r in caplog.records)


def test_a_slow_callback_does_not_stall_the_workers(pool):
    gate = threading.Event()
    first = pool.apply_async(sqr, (1,), callback=lambda _: gate.wait(30))
    # While the callback blocks the Pool's thread, the executor still runs tasks.
    assert pool.executor.submit(sqr, 5).result(timeout=30) == 25
    assert not first.ready()
    gate.set()
    assert first.get(timeout=30) == 1


def test_chunksize_is_checked(pool):
    for call in (pool.map, pool.imap, pool.imap_unordered, pool.map_async):
        with pytest.raises(ValueError, match=r"1\+"):
            call(sqr, [1], 0)
        with pytest.raises(TypeError):
            call(sqr, [1], 1.5)


def test_pool_on_an_existing_executor(tmp_path):
    gate = str(tmp_path / "gate")
    with ScoopExecutor(max_workers=2) as ex:
        p = Pool(executor=ex)
        assert p.map(sqr, range(5)) == [x * x for x in range(5)]
        p.close()
        p.join()
        assert ex.submit(sqr, 3).result(timeout=30) == 9  # still running
        p2 = Pool(executor=ex)
        blockers = [p2.apply_async(wait_for_file, (gate,)) for _ in range(2)]
        queued = p2.apply_async(sqr, (2,))
        p2.terminate()  # the blockers cannot have finished: the gate is closed
        p2.join()
        with pytest.raises(BrokenScoopExecutor):
            queued.get(timeout=10)
        for b in blockers:
            with pytest.raises(BrokenScoopExecutor):
                b.get(timeout=10)
        open(gate, "w").close()  # let the tasks still running on the executor end
        assert ex.submit(sqr, 4).result(timeout=30) == 16
        with pytest.raises(ValueError, match="executor"):
            Pool(2, executor=ex)


def test_a_pool_does_not_travel_to_tasks(pool):
    with pytest.raises(NotImplementedError, match="cannot be passed to a task"):
        pickle.dumps(pool)


def test_executor_starmap(executor):
    pairs = [(i, i + 1) for i in range(20)]
    expected = list(itertools.starmap(operator.mul, pairs))
    assert list(executor.starmap(operator.mul, pairs)) == expected
    assert list(executor.starmap(operator.mul, iter(pairs), chunksize=6)) == expected
    assert sorted(executor.starmap(operator.mul, pairs, unordered=True, buffersize=3)) == sorted(expected)
    it = executor.starmap(fail_on, [(0, 1), (1, 1), (2, 1)], chunksize=2)
    assert next(it) == 0
    with pytest.raises(ValueError, match="item 1"):
        next(it)
    with pytest.raises(cf.TimeoutError):
        list(executor.starmap(time.sleep, [(2,)], timeout=0.2))


def _handlers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "scoopexec-pool-results"]


@pytest.mark.parametrize("how", ["with", "terminate", "close"])
def test_the_handler_thread_ends_without_join(pool, how):
    # As multiprocessing's: a Pool left by `with` (terminate()), or closed and done, keeps no thread
    # (one left behind also keeps the next executor of the process from forking its template).
    before = set(_handlers())
    p = Pool(executor=pool.executor)
    (mine,) = set(_handlers()) - before
    if how == "with":
        with p:
            assert p.map(sqr, [1, 2, 3]) == [1, 4, 9]
    elif how == "terminate":
        slow = p.apply_async(time.sleep, (5,))
        p.terminate()
        with pytest.raises(BrokenScoopExecutor):
            slow.get(timeout=10)
    else:
        result = p.map_async(sqr, [1, 2, 3], chunksize=1)
        p.close()
        assert result.get(timeout=60) == [1, 4, 9]
    mine.join(10)
    assert not mine.is_alive()


def _slow_items(n, gap):
    for i in range(n):
        time.sleep(gap)
        yield i


@pytest.mark.parametrize("how", ["close", "terminate"])
def test_a_map_still_reading_its_input_when_the_pool_closes_is_refused_not_lost(pool, how):
    # map_async passed its check, then read a lazy input while another thread closed the Pool, whose
    # handler thread then ended with no job pending: the map must be refused, not left unfinished.
    p = Pool(executor=pool.executor)
    box: dict = {}

    def user():
        try:
            box["result"] = p.map_async(sqr, _slow_items(3, 0.2))
        except ValueError as exc:
            box["error"] = exc

    t = threading.Thread(target=user)
    t.start()
    time.sleep(0.1)
    getattr(p, how)()
    t.join(30)
    if "result" in box:  # (the map got in first: it completes)
        assert box["result"].get(timeout=30) == [0, 1, 4]
    else:
        assert "Pool not running" in str(box["error"])
    joined = threading.Thread(target=p.join, daemon=True)
    joined.start()
    joined.join(30)
    assert not joined.is_alive()


# From a review of Pool against multiprocessing.Pool, side by side (each failed before its fix).


def add(a, b=0):
    return a + b


@pytest.mark.timeout(60)
def test_arguments_that_are_no_iterable_or_mapping_fail_the_result_and_join_still_returns():
    # multiprocessing's worker raises the TypeError of func(*args, **kwds): get() raises it and
    # error_callback gets it.  The call raised here, leaving its result registered as pending:
    # close(); join() then waited for it forever.
    seen = []
    pool = Pool(2)
    r1 = pool.apply_async(add, 5, error_callback=seen.append)  # meant (5,)
    r2 = pool.apply_async(add, (1,), [("b", 2)])
    r3 = pool.starmap_async(add, [(1, 2), 1])
    r4 = pool.apply_async(add, (1,), {"b": 2})
    with pytest.raises(TypeError, match=r"add\(\) argument after \* must be an iterable, not int"):
        r1.get(timeout=30)
    with pytest.raises(TypeError, match=r"add\(\) argument after \*\* must be a mapping, not list"):
        r2.get(timeout=30)
    with pytest.raises(TypeError, match="argument after"):
        r3.get(timeout=30)
    assert r4.get(timeout=30) == 3
    assert not r1.successful()
    pool.close()
    joined = threading.Thread(target=pool.join, daemon=True)
    joined.start()
    joined.join(30)
    assert not joined.is_alive(), "join() hung on a result that could never complete"
    assert len(seen) == 1 and isinstance(seen[0], TypeError)


def test_numpy_integers_are_taken_for_processes_and_chunksize():
    np = pytest.importorskip("numpy")
    with Pool(np.int64(2)) as pool:
        assert pool.map(sqr, range(6), chunksize=np.int64(2)) == [0, 1, 4, 9, 16, 25]
        assert list(pool.imap(sqr, range(4), np.int32(3))) == [0, 1, 4, 9]
    with pytest.raises(TypeError, match="processes must be an integer, not str"):
        Pool("2")
    with pytest.raises(TypeError, match="chunksize must be an integer, not float"):
        with Pool(1) as pool:
            pool.map(sqr, range(3), chunksize=2.0)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("how", ["running", "closed"])
def test_a_pool_left_running_is_terminated_at_exit_not_waited_for(how):
    # multiprocessing terminates its pools at interpreter exit; a scoopexec.Pool's executor
    # waited for every pending task, as a ScoopExecutor (ProcessPoolExecutor) does: a script that
    # ended with 20 one-second tasks pending took 10 s to exit, one that gave up on a long task
    # with get(timeout=) never did.
    started = time.monotonic()
    out = run_script(
        """
        import sys, time
        from scoopexec import Pool

        if __name__ == "__main__":
            pool = Pool(2)
            print(*pool.executor.worker_pids, flush=True)
            rs = [pool.apply_async(time.sleep, (1,)) for _ in range(20)]
            r = pool.apply_async(time.sleep, (600,))
            if sys.argv[1] == "closed":
                pool.close()  # and no join(): terminated at exit too, as multiprocessing's
        """,
        how,
        timeout=150,
    )
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert took < 30, took
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(helpers.running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(helpers.running(p) for p in pids)


def process_name(_=None):
    import logging as _logging

    record = _logging.LogRecord("x", _logging.INFO, __file__, 1, "m", None, None)
    return multiprocessing.current_process().name, record.processName, os.getpid()


def test_a_task_sees_which_worker_it_runs_in_by_process_name():
    # multiprocessing's workers are "ForkPoolWorker-N", ProcessPoolExecutor's "ForkProcess-N":
    # logging's %(processName)s tells them apart.  A forked scoopexec worker said "MainProcess",
    # the client's name.
    with Pool(2) as pool:
        seen = pool.map(process_name, range(8), chunksize=1)
    for name, logged, pid in seen:
        assert name == logged == f"ScoopWorker-{pid}"
    assert multiprocessing.current_process().name == "MainProcess"


def test_the_pools_processes_under_multiprocessings_private_name():
    # Code written for multiprocessing.Pool reads pool._pool for its workers' pids (CPython's
    # test_make_pool: its len()).
    pool = Pool(3)
    try:
        procs = pool._pool
        assert len(procs) == 3 and all(p.is_alive() for p in procs)
        reused = pool._pool[0]
        reused._started = b"0"  # as if its pid now named a process started at another time
        assert not reused.is_alive()
        seen = {pid: name for name, _, pid in pool.map(process_name, range(30), chunksize=1)}
        assert set(seen) <= {p.pid for p in procs}
        assert all(seen[p.pid] == p.name for p in procs if p.pid in seen)
    finally:
        pool.terminate()
        pool.join()
    assert not any(p.is_alive() for p in procs)


def test_the_pools_processes_end_as_multiprocessings_do_and_are_replaced():
    # What code written for multiprocessing.Pool does to pool._pool besides reading pids: look at
    # exitcode (a worker that died), join() it, terminate() or kill() it.
    with Pool(2) as pool:
        first, second = pool._pool
        assert first.exitcode is None and "started" in repr(first)
        first.join(0.05)  # (still running: returns at the timeout)
        assert first.is_alive()
        first.join(-1)  # (at once, as multiprocessing's)
        first.terminate()
        first.join(30)
        second.kill()
        second.join(30)
        assert (first.exitcode, second.exitcode) == (-15, -9)  # -N: signal N, as multiprocessing says
        assert not first.is_alive() and not second.is_alive() and "exitcode=-9" in repr(second)
        second.kill()  # ended already: nothing happens
        pids = {pid for _, _, pid in pool.map(process_name, range(20), chunksize=1)}
        assert pids and not pids & {first.pid, second.pid}  # replaced, and the map ran
        assert {p.pid for p in pool._pool} >= pids


def test_an_item_that_cannot_be_pickled_in_a_chunk_is_named_as_map_names_it():
    # Pool's and amap's chunks name the item (its index in the whole map) and the function, as
    # ScoopExecutor.map does; they named the chunk runner's argument, or the user's parameter.
    import asyncio

    lock = threading.Lock()
    items = [1, 2, 3, 4, lock, 6]
    said = r"cannot send item 4 \(a _thread.lock\) of map\(.*identity, \.\.\.\)"
    with Pool(1) as p:
        with pytest.raises(SerializationError, match=said):
            p.map(identity, items, chunksize=2)
        with pytest.raises(SerializationError, match=said):
            list(p.imap(identity, items, chunksize=2))
        assert p.map(identity, range(6), chunksize=2) == list(range(6))  # (the pool goes on)
    with ScoopExecutor(1, task_timeout=60) as ex:

        async def amap():
            return [r async for r in ex.amap(identity, items, chunksize=2)]

        with pytest.raises(SerializationError, match=said):
            asyncio.run(amap())


def test_a_pools_task_timeout_limits_each_call_of_a_chunk_not_the_chunk():
    # "a call running longer than task_timeout": three calls of 0.4 s in a chunk, limit 1 s.
    with Pool(1, task_timeout=1) as p:
        assert p.map(sqr, [2, 3, 4, 5, 6, 7], chunksize=3) == [4, 9, 16, 25, 36, 49]  # (a warm-up)
        t = time.monotonic()
        assert p.map(functools.partial(sqr, wait=0.4), [1, 2, 3], chunksize=3) == [1, 4, 9]
        assert list(p.imap(functools.partial(sqr, wait=0.4), [1, 2, 3], chunksize=3)) == [1, 4, 9]
        assert time.monotonic() - t >= 2.4  # (they ran: not a timing of ours)
        with pytest.raises(TimeoutError, match="task_timeout=1"):
            p.map(functools.partial(sqr, wait=3), [1, 2], chunksize=2)


class _CountingExecutor(ScoopExecutor):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_a_pool_on_an_executor_that_overrides_submit_submits_through_it():
    # Pool's chunks went to the executor pickled already, past an overridden submit().
    with _CountingExecutor(2) as ex:
        p = Pool(executor=ex)
        assert p.map(operator.neg, range(10), chunksize=3) == [-i for i in range(10)]
        assert ex.submitted == 4
        assert list(p.imap(operator.neg, range(4), chunksize=2)) == [0, -1, -2, -3]
        assert ex.submitted == 6
        p.close()
        p.join()
