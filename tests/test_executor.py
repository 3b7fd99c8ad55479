"""The Executor contract, as CPython's test_concurrent_futures states it, for ScoopExecutor."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import gc
import itertools
import threading
import time
import weakref

import pytest

from scoopexec import ScoopExecutor, SerializationError
from tests import helpers
from tests.helpers import capture, mul


def test_is_a_concurrent_futures_executor(executor):
    assert isinstance(executor, cf.Executor)
    fut = executor.submit(pow, 2, 8)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=30) == 256


def test_submit_keyword(executor):
    assert executor.submit(mul, 2, y=8).result() == 16
    assert executor.submit(capture, 1, self=2, fn=3).result() == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)
    with pytest.raises(TypeError):
        executor.submit(arg=1)


def test_map(executor):
    assert list(executor.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == list(
        map(pow, range(10), range(10))
    )


def test_map_exception_surfaces_at_its_item(executor):
    it = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(it) == (0, 1)
    assert next(it) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_exception_in_chunk_keeps_earlier_items(executor):
    it = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5], chunksize=4)
    assert next(it) == (0, 1)
    assert next(it) == (0, 1)
    with pytest.raises(ZeroDivisionError) as info:
        next(it)
    assert "divmod" in str(info.value.__cause__) or "ZeroDivisionError" in str(info.value.__cause__)


def test_map_timeout(executor):
    results = []
    with pytest.raises(cf.TimeoutError):
        for r in executor.map(time.sleep, [0, 0, 3], timeout=1.5):
            results.append(r)
    assert results == [None, None]


def test_map_is_lazy_in_results_and_eager_in_submission(executor, tmp_path):
    it = executor.map(helpers.rendezvous, [str(tmp_path)] * 2, ["a", "b"], [2] * 2)
    # Both items were submitted at once and run side by side on the two workers
    # (each waits for the other), before anyone asked the iterator for a result.
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2:
        assert time.monotonic() < deadline, f"map() did not submit both items: {list(tmp_path.iterdir())}"
        time.sleep(0.01)
    assert list(it) == ["a", "b"]


def test_map_unordered(executor):
    out = list(executor.map(helpers.sleep_and_return, [0.6, 0.0, 0.0], ["slow", "a", "b"], unordered=True))
    assert sorted(out) == ["a", "b", "slow"]
    assert out[-1] == "slow"


def test_map_unordered_buffered(executor):
    out = list(executor.map(abs, range(-50, 0), unordered=True, buffersize=4))
    assert sorted(out) == list(range(1, 51))


def test_map_buffersize_validation(executor):
    for bad in ("foo", 2.0):
        with pytest.raises(TypeError, match="buffersize must be an integer or None"):
            executor.map(str, [1, 2, 3], buffersize=bad)
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"buffersize must be None or > 0"):
            executor.map(str, [1, 2, 3], buffersize=bad)
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(str, [1], chunksize=0)


def test_map_buffersize_on_infinite_iterable(executor):
    res = executor.map(str, itertools.count(), buffersize=2)
    assert next(res, None) == "0"
    assert next(res, None) == "1"
    assert next(res, None) == "2"


def test_map_buffersize_on_multiple_infinite_iterables(executor):
    res = executor.map(sum, zip(itertools.count(), itertools.count()), buffersize=2)
    assert next(res, None) == 0
    assert next(res, None) == 2
    assert next(res, None) == 4


def test_map_buffersize_on_empty_and_missing_iterables(executor):
    assert next(executor.map(str, [], buffersize=2), None) is None
    assert next(executor.map(str, buffersize=2), None) is None


def test_map_buffersize_bounds_items_in_flight(executor):
    consumed = []

    def source():
        for i in range(100):
            consumed.append(i)
            yield i

    it = executor.map(abs, source(), buffersize=5)
    assert len(consumed) == 5
    assert next(it) == 0
    assert len(consumed) == 6
    assert list(it) == list(range(1, 100))


def test_map_buffersize_with_chunks(executor):
    assert list(executor.map(abs, range(-30, 0), chunksize=4, buffersize=2)) == list(range(30, 0, -1))


def test_shutdown_race_many_small_tasks():
    ex = ScoopExecutor(max_workers=2)
    ex.map(str, [2] * 3)
    ex.shutdown()


def test_no_stale_references(executor):
    obj = helpers.MyObject()
    collected = threading.Event()
    ref = weakref.ref(obj, lambda _: collected.set())  # noqa: F841
    executor.submit(obj.my_method)
    del obj
    assert collected.wait(timeout=10), "the client kept a reference to the task's arguments"


def test_results_not_kept(executor):
    fut = executor.submit(helpers.make_dummy_object, 0)
    obj = fut.result()
    wr = weakref.ref(obj)
    del obj, fut
    gc.collect()
    assert wr() is None


def test_free_reference_in_map(executor):
    for obj in executor.map(helpers.make_dummy_object, range(10)):
        wr = weakref.ref(obj)
        del obj
        gc.collect()
        assert wr() is None


def test_max_workers_must_be_positive():
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            ScoopExecutor(max_workers=number)
    with pytest.raises(TypeError):
        ScoopExecutor(max_workers=1.5)  # type: ignore[arg-type]


def test_remote_exception_has_remote_traceback_as_cause(executor):
    fut = executor.submit(helpers.raise_value_error, "nope")
    with pytest.raises(ValueError, match="nope") as info:
        fut.result()
    cause = info.value.__cause__
    assert type(cause).__name__ == "_RemoteTraceback"
    assert "raise ValueError(msg)  # the line tests look for" in cause.tb
    assert "On worker" in cause.tb
    assert "_execute" not in cause.tb


def test_exception_method(executor):
    fut = executor.submit(helpers.raise_value_error)
    assert isinstance(fut.exception(timeout=30), ValueError)
    assert executor.submit(abs, -1).exception(timeout=30) is None


def test_lambdas_closures_and_main_functions(executor):
    k = 10
    assert executor.submit(lambda x: x + k, 5).result() == 15

    def local(x):
        return x * k

    assert list(executor.map(local, [1, 2])) == [10, 20]


def test_unpicklable_argument_fails_that_future(executor):
    fut = executor.submit(abs, threading.Lock())
    with pytest.raises(SerializationError, match="arguments") as info:
        fut.result()
    assert info.value.__cause__ is not None
    assert executor.submit(abs, -3).result() == 3


def test_unpicklable_function_fails_that_future(executor):
    lock = threading.Lock()
    fut = executor.submit(lambda: lock)
    with pytest.raises(SerializationError, match="function"):
        fut.result()
    assert executor.submit(abs, -4).result() == 4


def test_unpicklable_result_fails_that_future(executor):
    fut = executor.submit(threading.Lock)
    with pytest.raises(SerializationError, match="cannot be pickled"):
        fut.result()
    assert executor.submit(abs, -5).result() == 5


def test_futures_run_concurrently(executor, tmp_path):
    # Each task waits until the other has started: only two workers at once can finish them.
    fs = [executor.submit(helpers.rendezvous, str(tmp_path), name, 2) for name in "ab"]
    assert [f.result(timeout=60) for f in fs] == ["a", "b"]


def test_running_state(executor):
    fut = executor.submit(time.sleep, 0.5)
    deadline = time.monotonic() + 10
    while not fut.running() and not fut.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fut.running() or fut.done()
    assert not fut.cancel()  # running futures cannot be cancelled
    fut.result()


def test_cancel_pending_future():
    with ScoopExecutor(max_workers=1) as ex:
        blocker = ex.submit(time.sleep, 1.0)
        futs = [ex.submit(abs, -i) for i in range(20)]
        cancelled = [f for f in futs if f.cancel()]
        assert cancelled, "futures queued behind a busy worker should be cancellable"
        for f in cancelled:
            assert f.cancelled()
            with pytest.raises(cf.CancelledError):
                f.result()
        done, _ = cf.wait(futs, timeout=30)
        assert len(done) == 20
        blocker.result()


def test_a_task_cancelled_while_queued_never_runs(tmp_path):
    # Before handing tasks to a worker the embedded broker asks the client, a batch at a time
    # (Session.started_all), which it still wants: a future cancelled meanwhile has its task
    # dropped, never run, and every other task runs once.
    gate, opened = tmp_path / "gate", tmp_path / "open"
    opened.touch()
    with ScoopExecutor(max_workers=1) as ex:
        blocker = ex.submit(helpers.wait_for_file, str(gate))
        deadline = time.monotonic() + 60
        while not blocker.running():
            assert time.monotonic() < deadline, "the blocking task never started"
            time.sleep(0.01)
        futs = [ex.submit(helpers.touch_then_wait, str(tmp_path / f"ran{i}"), str(opened)) for i in range(40)]
        cancelled = {i for i, f in enumerate(futs[::2]) if f.cancel()}  # every other one, if still queued
        cancelled = {2 * i for i in cancelled}
        assert cancelled, "tasks queued behind a busy worker should be cancellable"
        gate.touch()
        assert blocker.result(timeout=60) is None
        for i, f in enumerate(futs):
            if i not in cancelled:
                f.result(timeout=60)
    ran = sorted(int(p.name[3:]) for p in tmp_path.glob("ran*"))
    assert ran == [i for i in range(40) if i not in cancelled]


def test_threads_submitting_concurrently(executor):
    results = {}

    def client(k):
        results[k] = sum(f.result() for f in [executor.submit(mul, k, i) for i in range(200)])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: k * sum(range(200)) for k in range(4)}


def test_large_numpy_array_round_trip(executor):
    np = pytest.importorskip("numpy")
    a = np.arange(8 * 1024 * 1024, dtype=np.float64)  # 64 MiB
    out = executor.submit(np.negative, a).result()
    assert out.flags.writeable
    assert out[12345] == -12345.0 and out.shape == a.shape
    out[0] = 1.0  # usable as a normal array


def test_repr_and_properties(executor):
    assert "ScoopExecutor" in repr(executor)
    assert len(executor.worker_pids) == 2
    assert executor.pool_id


class _CountingExecutor(ScoopExecutor):
    """A subclass that overrides submit, as one that bounds or counts what it runs does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def submit(self, fn, /, *args, **kwargs):
        self.calls.append(len(args[0]) if isinstance(fn, functools.partial) else 1)
        return super().submit(fn, *args, **kwargs)


def test_map_gives_each_task_to_an_overridden_submit():
    # Executor.map hands every task to submit() (ProcessPoolExecutor's chunks too), and a subclass
    # that bounds, counts or tags what it runs relies on that.  Our map hands its tasks over
    # pickled already, past submit(): for a subclass that overrides submit it now goes through it.
    with _CountingExecutor(2) as ex:
        assert list(ex.map(mul, range(10), range(10))) == [i * i for i in range(10)]
        assert ex.calls == [1] * 10
        ex.calls.clear()
        assert list(ex.map(mul, range(10), range(10), chunksize=4)) == [i * i for i in range(10)]
        assert ex.calls == [4, 4, 2]  # the chunks, each a task
        ex.calls.clear()
        assert list(ex.map(abs, range(-50, 50), chunksize="auto")) == [abs(i) for i in range(-50, 50)]
        assert sum(ex.calls) == 100
        ex.calls.clear()
        assert list(ex.map(mul, range(6), range(6), seed=3, buffersize=2)) == [i * i for i in range(6)]
        assert ex.calls == [1] * 6


class _WrappedExecutor(ScoopExecutor):
    calls = 0

    @functools.wraps(ScoopExecutor.submit)  # (copies our module's name onto it)
    def submit(self, fn, /, *args, **kwargs):
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


class _ReExported(ScoopExecutor):
    submit = ScoopExecutor.submit  # (ours: the fast path)


def test_an_override_decorated_with_functools_wraps_is_still_an_override():
    with _WrappedExecutor(1) as ex:
        assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
        assert ex.calls == 3
    assert _ReExported._submit_is_ours(_ReExported.__new__(_ReExported))


def test_map_honours_a_submit_set_on_the_instance(executor):
    calls = []
    own = executor.submit

    def counting(fn, /, *args, **kwargs):
        calls.append(fn)
        return own(fn, *args, **kwargs)

    executor.submit = counting
    try:
        assert list(executor.map(mul, range(5), range(5))) == [0, 1, 4, 9, 16]
    finally:
        del executor.submit
    assert calls == [mul] * 5
    assert executor._submit_is_ours()  # and back on the fast path
