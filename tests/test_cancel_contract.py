"""cancel() returning True means the call will not run (concurrent.futures' contract), for every
future: a sub-task's, submitted from inside a task (or from a thread a task started), and a
remote client's.  Such a future asks its broker (CANCEL with CONFIRM, client/future.py Answer).
Real processes; what ran is told by the files the calls create."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import time

import pytest

import scoopexec
from scoopexec.client import future
from scoopexec.client.future import CANCEL_WAIT
from scoopexec.errors import BrokenScoopExecutor
from tests import helpers
from tests.test_nested import _until_both_workers_asked_for_work
from tests.test_standalone import _start_workers, broker  # noqa: F401  (a fixture)

N_REMOTE = 60


def _wait_for(path, limit=30.0):
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def _exists(d, names):
    return [os.path.exists(os.path.join(d, name)) for name in names]


# ------------------------------------------------------------------ sub-tasks


def _cancel_sub_tasks(d, n):
    """In a task: one sub-task runs (it waits for a gate), then n more are submitted and all are
    cancelled, the last submitted first; returns cancel()'s answers, the running one's first.

    Each worker holds at most one task it has not started (tasks of 50 ms: no prefetch), so the
    last of n > 2 is still in the broker's queue when its CANCEL arrives: it is dropped."""
    gate = os.path.join(d, "gate")
    running = scoopexec.submit(helpers.touch_then_wait, os.path.join(d, "running"), gate)
    _wait_for(os.path.join(d, "running"))
    queued = [scoopexec.submit(helpers.touch, os.path.join(d, f"t{i}")) for i in range(n)]
    answers = [f.cancel() for f in reversed(queued)][::-1]
    answers.insert(0, running.cancel())
    states = [f.cancelled() for f in [running, *queued]]
    open(gate, "w").close()
    for f in [running, *queued]:
        if not f.cancelled():
            f.result(timeout=60)
    return answers, states


def _ran_after_the_rest(ex, d, names):
    """Which of ``names`` (files in d) exist, once what was queued before has had its turn."""
    _until_both_workers_asked_for_work(ex)  # later tasks: a cancelled one still queued runs first
    time.sleep(0.2)
    return _exists(d, names)


def test_a_sub_tasks_cancel_says_true_only_when_it_will_not_run(executor, tmp_path):
    _until_both_workers_asked_for_work(executor)
    d = str(tmp_path)
    answers, states = executor.submit(_cancel_sub_tasks, d, 6).result(timeout=60)
    ran = _ran_after_the_rest(executor, d, ["running"] + [f"t{i}" for i in range(6)])
    assert answers[0] is False  # it was running: concurrent.futures refuses
    assert answers == states  # cancel() said what the future became
    assert [not r for r in ran] == answers, (answers, ran)
    assert answers[-1] is True  # still queued in the broker: dropped


def _cancel_on_one_worker(d, n):
    futs = [scoopexec.submit(helpers.touch, os.path.join(d, f"t{i}")) for i in range(n)]
    answers, answered = [], []
    for f in reversed(futs):
        answers.insert(0, f.cancel())
        answered.insert(0, f.cancelled() or f.running() or f.done())  # False: it gave up waiting
    for f in futs:
        if not f.cancelled():
            f.result(timeout=60)
    return answers, answered


def test_a_task_waiting_for_its_cancels_answer_gets_it_on_a_single_worker(one_worker, tmp_path):
    # The task blocks its worker's thread; the flusher reads the answers meanwhile (STARTED for
    # the sub-task this worker holds, RESULTS CANCELLED for those still in the broker's queue).
    d = str(tmp_path)
    answers, answered = one_worker.submit(_cancel_on_one_worker, d, 5).result(timeout=60)
    ran = _exists(d, [f"t{i}" for i in range(5)])
    assert all(answered), (answers, answered)
    assert answers[-1] is True
    assert [not r for r in ran] == answers, (answers, ran)


def _cancel_with_a_long_task_queued(d):
    """A CPU-bound sub-task reaches this (single) worker's queue, then another one is cancelled."""
    long = scoopexec.submit(helpers.stamp_then_spin, os.path.join(d, "long"), 3.0)
    time.sleep(0.5)  # the broker sends it here meanwhile (this worker asked for one with the submission)
    queued = scoopexec.submit(helpers.touch, os.path.join(d, "queued"))
    t0 = time.time()
    said = queued.cancel()
    t1 = time.time()
    long.result(timeout=60)
    return said, t0, t1


def test_a_cancel_waiting_in_a_task_starts_nothing_meanwhile(one_worker, tmp_path):
    # Parked for the answer (as for a result), the task let its hub start the queued 3 s task:
    # cancel() returned once that had run.  Blocked, nothing starts until the answer.
    d = str(tmp_path)
    said, t0, t1 = one_worker.submit(_cancel_with_a_long_task_queued, d).result(timeout=60)
    assert t1 - t0 < 2.0, f"cancel() took {t1 - t0:.2f} s"
    with open(os.path.join(d, "long")) as f:
        assert float(f.read()) >= t1 - 0.01  # the long task started after cancel() returned
    assert said is not os.path.exists(os.path.join(d, "queued")), said


def _cancel_from_a_thread(d, n):
    """A thread this task starts submits n sub-tasks and cancels them, the last first; the task
    blocks in join() meanwhile (its worker's hub does not run)."""
    out = {}

    def work():
        futs = [scoopexec.submit(helpers.touch, os.path.join(d, f"t{i}")) for i in range(n)]
        t0 = time.monotonic()
        out["answers"] = [f.cancel() for f in reversed(futs)][::-1]
        out["took"] = time.monotonic() - t0
        out["futs"] = futs

    th = threading.Thread(target=work)
    th.start()
    th.join(60)
    futs = out["futs"]
    states = [f.cancelled() for f in futs]
    for f in futs:
        if not f.cancelled():
            f.result(timeout=60)
    return out["answers"], states, out["took"]


def test_a_cancel_from_a_tasks_thread_is_answered(one_worker, tmp_path):
    d = str(tmp_path)
    answers, states, took = one_worker.submit(_cancel_from_a_thread, d, 3).result(timeout=60)
    assert took < 3.0, f"3 cancel() took {took:.2f} s"
    assert answers == states
    ran = _exists(d, ["t0", "t1", "t2"])
    one_worker.submit(abs, 1).result(timeout=60)  # (a cancelled task still queued would run first)
    assert [not r for r in ran] == answers == [not r for r in _exists(d, ["t0", "t1", "t2"])], (answers, ran)
    assert answers[-1] is True  # still in the broker's queue: the worker holds one task at most


def _cancel_in_a_done_callback(d):
    # The callback runs in the worker's hub (or its flusher), which must never wait: cancel()
    # asks the broker and says False at once; the future then follows the answer.
    said = []
    first = scoopexec.submit(helpers.touch, os.path.join(d, "first"))
    second = scoopexec.submit(helpers.touch, os.path.join(d, "second"))
    first.add_done_callback(lambda f: said.append(second.cancel()))
    first.result(timeout=60)
    try:
        second.result(timeout=60)
    except cf.CancelledError:  # cancelled after all: the broker dropped it
        return said, "cancelled"
    return said, "ran"


def test_cancel_in_a_workers_done_callback_does_not_wait(one_worker, tmp_path):
    d = str(tmp_path)
    t0 = time.monotonic()
    said, outcome = one_worker.submit(_cancel_in_a_done_callback, d).result(timeout=60)
    assert time.monotonic() - t0 < CANCEL_WAIT
    assert said == [False]
    ran = os.path.exists(os.path.join(d, "second"))
    assert (outcome == "ran") == ran, (outcome, ran)


# ------------------------------------------------------------ remote clients


def test_a_remote_clients_cancel_says_true_only_when_it_will_not_run(broker, tmp_path):  # noqa: F811
    addr, _ = broker
    workers = _start_workers(addr, 2)
    d = str(tmp_path)
    try:
        with scoopexec.ScoopExecutor(broker=addr) as ex:
            _until_both_workers_asked_for_work(ex)
            gate = os.path.join(d, "gate")
            running = ex.submit(helpers.touch_then_wait, os.path.join(d, "running"), gate)
            _wait_for(os.path.join(d, "running"))
            answers = [running.cancel()]
            # Each cancelled after a little longer: the broker may have sent it to the idle worker,
            # which may have run it, before the client heard so (STARTED).
            futs = []
            for i in range(N_REMOTE):
                futs.append(ex.submit(helpers.touch, os.path.join(d, f"t{i}")))
                time.sleep(i * 0.0001)
                answers.append(futs[-1].cancel())
                assert futs[-1].cancelled() or futs[-1].running() or futs[-1].done()  # answered
            assert answers == [f.cancelled() for f in [running, *futs]]
            open(gate, "w").close()
            for f in [running, *futs]:
                if not f.cancelled():
                    f.result(timeout=60)
            ran = _ran_after_the_rest(ex, d, ["running"] + [f"t{i}" for i in range(N_REMOTE)])
    finally:
        workers.terminate()
        workers.wait(10)
    assert answers[0] is False
    assert [not r for r in ran] == answers, (answers, ran)


def test_two_threads_cancelling_one_remote_future_get_one_answer(broker, tmp_path):  # noqa: F811
    # The second cancel() of a future whose answer is awaited waits for it too (it used to see
    # the future still pending and say False, while the first said True).
    addr, _ = broker
    workers = _start_workers(addr, 1)
    d = str(tmp_path)
    n = 20
    try:
        with scoopexec.ScoopExecutor(broker=addr) as ex, cf.ThreadPoolExecutor(2) as threads:
            gate = os.path.join(d, "gate")
            busy = ex.submit(helpers.touch_then_wait, os.path.join(d, "busy"), gate)
            _wait_for(os.path.join(d, "busy"))
            futs = [ex.submit(helpers.touch, os.path.join(d, f"t{i}")) for i in range(n)]
            pairs = []
            for f in reversed(futs):
                both = threading.Barrier(2)

                def cancel(f=f, both=both):
                    both.wait(10)
                    return f.cancel()

                pairs.append(tuple(x.result(timeout=30) for x in [threads.submit(cancel) for _ in range(2)]))
            pairs.reverse()
            open(gate, "w").close()
            busy.result(timeout=60)
            for f in futs:
                if not f.cancelled():
                    f.result(timeout=60)
            ex.submit(abs, 1).result(timeout=60)
            ran = _exists(d, [f"t{i}" for i in range(n)])
    finally:
        workers.terminate()
        workers.wait(10)
    assert all(a == b for a, b in pairs), pairs
    assert [not r for r in ran] == [a for a, _ in pairs], (pairs, ran)
    assert pairs[-1] == (True, True)  # still in the broker's queue


def _hung(broker_proc):
    """Stop the broker process (SIGSTOP): it answers nothing, its connections stay open."""
    os.kill(broker_proc.pid, signal.SIGSTOP)


def _end(broker_proc):
    os.kill(broker_proc.pid, signal.SIGKILL)  # (a stopped process ends on SIGKILL)
    broker_proc.wait(10)


def test_a_lost_broker_releases_a_waiting_cancel(broker):  # noqa: F811
    # broken() releases the answers cancel() waits for: False (the future failed with the
    # session's error: done, so not cancellable), well before CANCEL_WAIT.
    addr, proc = broker
    ex = scoopexec.ScoopExecutor(broker=addr, heartbeat=0.2, heartbeat_timeout=0.6)
    try:
        futs = [ex.submit(abs, -i) for i in range(3)]  # no worker: they stay queued
        ex._session.sync(5.0)
        _hung(proc)
        t0 = time.monotonic()
        said = futs[0].cancel()
        took = time.monotonic() - t0
        assert said is False
        assert took < CANCEL_WAIT - 1.0, f"cancel() took {took:.2f} s"
        assert isinstance(futs[0].exception(timeout=0), BrokenScoopExecutor)  # BrokerLostError
    finally:
        _end(proc)
        ex.shutdown(wait=True)


@pytest.mark.parametrize("how", ["cancel_queued", "abort", "terminate"])
def test_bulk_cancels_with_a_hung_broker_ask_once(broker, how, monkeypatch):  # noqa: F811
    # shutdown(cancel_futures=True), leaving `with` on an error and terminate_workers() cancel with
    # cancel_queued(): one request for all the futures, one wait (CANCEL_WAIT, 1 s here) for a hung
    # broker, not one per future.  abort() (Ctrl-C in `with`) and Pool.terminate() do not wait:
    # nobody reads the answers, the futures fail.  The session does not break meanwhile (its
    # heartbeat_timeout is 5 s).
    monkeypatch.setattr(future, "CANCEL_WAIT", 1.0)
    addr, proc = broker
    ex = scoopexec.ScoopExecutor(broker=addr)
    try:
        if how == "terminate":
            pool = scoopexec.Pool(executor=ex)
            results = [pool.apply_async(abs, (-i,)) for i in range(4)]
        else:
            futs = [ex.submit(abs, -i) for i in range(4)]  # no worker: they stay queued
        ex._session.sync(5.0)
        _hung(proc)
        t0 = time.monotonic()
        if how == "terminate":
            pool.terminate()
            pool.join()  # (its handler thread: a later test's client must be single-threaded)
        elif how == "abort":
            ex.abort("test")
        else:
            assert ex._session.cancel_queued() == 0  # (no answer came)
        took = time.monotonic() - t0
        if how == "cancel_queued":
            assert 0.9 < took < 2.5, f"{how} took {took:.2f} s"
            assert not any(f.done() for f in futs)
        else:
            assert took < 0.9, f"{how} took {took:.2f} s"
        if how == "abort":
            for f in futs:  # none said cancelled: the broker did not answer
                assert isinstance(f.exception(timeout=0), BrokenScoopExecutor)
        if how == "terminate":
            with pytest.raises(BrokenScoopExecutor, match="terminated"):
                results[0].get(timeout=10)
    finally:
        _end(proc)
        ex.abort("the test is over")


@pytest.mark.parametrize("how", ["map", "autochunk", "on_timeout", "asyncio"])
def test_a_hung_broker_does_not_stretch_a_timeout(broker, how):  # noqa: F811
    # A map's timeout, and asyncio's wait_for (it cancels on the event loop's thread), cancel what
    # has not come; that must not wait CANCEL_WAIT for a broker that answers nothing.
    addr, proc = broker
    ex = scoopexec.ScoopExecutor(broker=addr)  # no worker: every task stays queued
    try:
        ex.submit(abs, 1)
        ex._session.sync(5.0)
        _hung(proc)
        t0 = time.monotonic()
        if how == "asyncio":
            import asyncio

            async def wait_briefly():
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.wrap_future(ex.submit(abs, -1)), 0.3)

            asyncio.run(wait_briefly())
        else:
            options = {"chunksize": 1 if how == "map" else "auto"}
            if how == "on_timeout":  # (its futures are stand-ins for the tasks': mapping._Substitute)
                options = {"on_timeout": None}
            with pytest.raises(cf.TimeoutError):
                list(ex.map(abs, range(4), timeout=0.3, **options))
        took = time.monotonic() - t0
        assert took < CANCEL_WAIT - 2.0, f"{how} took {took:.2f} s"
    finally:
        _end(proc)
        ex.abort("the test is over")
