"""concurrent.futures.wait / as_completed on ScoopExecutor futures (modelled on CPython's tests)."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING

import pytest

from tests.helpers import mul, sleep_and_raise, wait_for_file


def make_future(state=PENDING, exception=None, result=None):
    f = cf.Future()
    f._state = state
    f._exception = exception
    f._result = result
    return f


CANCELLED_FUTURE = make_future(state=CANCELLED)
CANCELLED_AND_NOTIFIED_FUTURE = make_future(state=CANCELLED_AND_NOTIFIED)
EXCEPTION_FUTURE = make_future(state=FINISHED, exception=OSError())
SUCCESSFUL_FUTURE = make_future(state=FINISHED, result=42)


def test_first_completed(executor):
    f1 = executor.submit(mul, 21, 2)
    f2 = executor.submit(time.sleep, 1.5)
    done, not_done = cf.wait([CANCELLED_FUTURE, f1, f2], return_when=cf.FIRST_COMPLETED)
    assert done == {f1}
    assert not_done == {CANCELLED_FUTURE, f2}


def test_first_completed_some_already_completed(executor):
    f1 = executor.submit(time.sleep, 1.5)
    done, not_done = cf.wait(
        [CANCELLED_AND_NOTIFIED_FUTURE, SUCCESSFUL_FUTURE, f1], return_when=cf.FIRST_COMPLETED
    )
    assert done == {CANCELLED_AND_NOTIFIED_FUTURE, SUCCESSFUL_FUTURE}
    assert not_done == {f1}


def test_first_exception(executor):
    f1 = executor.submit(mul, 2, 21)
    f2 = executor.submit(sleep_and_raise, 1.5)  # f1 has long finished when it fails
    f3 = executor.submit(time.sleep, 3)
    done, not_done = cf.wait([f1, f2, f3], return_when=cf.FIRST_EXCEPTION)
    assert done == {f1, f2}
    assert not_done == {f3}


def test_first_exception_some_already_complete(executor):
    f1 = executor.submit(divmod, 21, 0)
    f2 = executor.submit(time.sleep, 1.5)
    done, not_done = cf.wait(
        [SUCCESSFUL_FUTURE, CANCELLED_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, f1, f2],
        return_when=cf.FIRST_EXCEPTION,
    )
    assert done == {SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, f1}
    assert not_done == {CANCELLED_FUTURE, f2}


def test_first_exception_one_already_failed(executor):
    f1 = executor.submit(time.sleep, 2)
    done, not_done = cf.wait([EXCEPTION_FUTURE, f1], return_when=cf.FIRST_EXCEPTION)
    assert done == {EXCEPTION_FUTURE}
    assert not_done == {f1}


def test_all_completed(executor):
    f1 = executor.submit(divmod, 2, 0)
    f2 = executor.submit(mul, 2, 21)
    done, not_done = cf.wait(
        [SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, f1, f2],
        return_when=cf.ALL_COMPLETED,
    )
    assert done == {SUCCESSFUL_FUTURE, CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, f1, f2}
    assert not_done == set()


def test_timeout(executor):
    short = executor.submit(time.sleep, 0.1)
    long = executor.submit(time.sleep, 3)
    done, not_done = cf.wait(
        [CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, short, long],
        timeout=1.5,
        return_when=cf.ALL_COMPLETED,
    )
    assert done == {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, short}
    assert not_done == {long}


def test_as_completed_no_timeout(executor):
    f1 = executor.submit(pow, 2, 3)
    fs = {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, f1}
    assert set(cf.as_completed(fs)) == fs


def test_as_completed_timeout(executor):
    slow = executor.submit(time.sleep, 3)
    completed = set()
    with pytest.raises(cf.TimeoutError):
        for f in cf.as_completed([CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE, slow], timeout=0.5):
            completed.add(f)
    assert completed == {CANCELLED_AND_NOTIFIED_FUTURE, EXCEPTION_FUTURE, SUCCESSFUL_FUTURE}


def test_as_completed_duplicates(executor):
    f = executor.submit(pow, 2, 2)
    assert len(list(cf.as_completed([f, f]))) == 1


def test_as_completed_many(executor):
    fs = [executor.submit(abs, -i) for i in range(500)]
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=60)) == list(range(500))


def test_callbacks_run(executor):
    seen = []
    fut = executor.submit(mul, 3, 4)
    fut.add_done_callback(lambda f: seen.append(f.result()))
    fut.result()
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [12]


def test_cancelled_future_is_notified_to_waiters(tmp_path):
    from scoopexec import ScoopExecutor

    gate = tmp_path / "gate"
    with ScoopExecutor(max_workers=1) as ex:
        blocker = ex.submit(wait_for_file, str(gate))
        deadline = time.monotonic() + 60
        while not blocker.running():
            assert time.monotonic() < deadline, "the blocking task never started"
            time.sleep(0.01)
        # The only worker is busy until the gate opens: the next task stays queued.
        queued = ex.submit(abs, -1)
        try:
            assert queued.cancel(), "a task queued behind a busy worker must be cancellable"
            done, not_done = cf.wait([queued], timeout=10)
            assert done == {queued} and not not_done
            assert queued.cancelled()
        finally:
            gate.touch()
        assert blocker.result(timeout=60) is None


def test_waiters_arriving_as_results_settle_are_all_woken(executor):
    # A result settles a future that nobody waits on without making its condition (client/
    # future.py, _quiet_finish); a waiter arriving at that moment makes one under the same lock,
    # so it sees either the result or the notification: never neither (it would wait for ever).
    # Three threads wait on futures while their results arrive: result() newest first, wait()
    # on every third, as_completed() on every other.
    for _ in range(4):
        futs = [executor.submit(abs, -i) for i in range(400)]
        out: dict[str, object] = {}

        def by_result(futs=futs, out=out):
            out["result"] = [f.result(timeout=60) for f in reversed(futs)]

        def by_wait(futs=futs, out=out):
            out["wait"] = len(cf.wait(futs[::3], timeout=60).done)

        def by_completed(futs=futs, out=out):
            out["as_completed"] = sum(1 for _ in cf.as_completed(futs[1::2], timeout=60))

        threads = [threading.Thread(target=t) for t in (by_result, by_wait, by_completed)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert out == {"result": list(range(399, -1, -1)), "wait": 134, "as_completed": 200}


def test_a_waiter_arriving_while_a_batch_of_results_settles_is_notified():
    # settle_all unpickles a batch's usual results first and finishes their futures together
    # under the module's lock; a waiter that arrives in between (made the future's condition)
    # must still be notified (its callback run).
    import pickle

    from scoopexec.client.future import ScoopFuture, settle_all
    from scoopexec.wire import protocol as P

    futs = {tid: ScoopFuture(None, tid, "f") for tid in (1, 2, 3)}
    table = dict(futs)
    seen: list[tuple[int, object]] = []

    def items():
        yield 1, P.OK, [pickle.dumps("one")]
        # A waiter comes for future 1, whose result is in hand but not yet set.
        futs[1].add_done_callback(lambda f: seen.append((1, f.result())))
        assert not futs[1].done()
        yield 2, P.OK, [pickle.dumps("two")]
        yield 4, P.OK, [pickle.dumps("nobody's")]  # a result nobody waits for
        yield 3, *raised()

    assert settle_all(table, items(), cancels_dropped=True) == (1, 0)
    assert seen == [(1, "one")] and not table
    assert [futs[1].result(0), futs[2].result(0)] == ["one", "two"]
    assert isinstance(futs[3].exception(0), ValueError)


def raised() -> tuple[int, list[object]]:
    """A result message's status and frames for a task that raised ValueError."""
    from scoopexec.wire import serialize

    try:
        raise ValueError("three")
    except ValueError as exc:
        return serialize.encode_exception(exc, "tb")


class _CancelledWhileUnpickled:
    """A result whose unpickling fails after its future was cancelled (ex.cancel() from another
    thread while the client's I/O thread unpickles it)."""

    futs: dict = {}

    def __reduce__(self):
        return (_cancel_then_fail, ())


def _cancel_then_fail():
    from scoopexec.client.future import cancel_running

    cancel_running(_CancelledWhileUnpickled.futs[1])
    raise ValueError("cannot unpickle")


def test_a_batch_settles_whole_when_a_failing_result_was_cancelled_meanwhile():
    # settle_all used to raise InvalidStateError here: the rest of the batch was never settled,
    # and the futures before it, out of the table with their result in hand, never finished.
    import pickle

    from scoopexec.client.future import ScoopFuture, settle_all
    from scoopexec.wire import protocol as P

    futs = {tid: ScoopFuture(None, tid, "f") for tid in (1, 2, 3)}
    _CancelledWhileUnpickled.futs = futs
    table = dict(futs)
    items = [
        (3, P.OK, [pickle.dumps("three")]),
        (1, P.OK, [pickle.dumps(_CancelledWhileUnpickled())]),
        (2, P.OK, [pickle.dumps("two")]),
    ]
    assert settle_all(table, items, cancels_dropped=True) == (0, 0)
    assert not table
    assert futs[1].cancelled()
    assert futs[3].result(timeout=5) == "three" and futs[2].result(timeout=5) == "two"
