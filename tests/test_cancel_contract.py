"""cancel() returning True means the call will not run (concurrent.futures' contract), for every
future: a sub-task's, submitted from inside a task, and a remote client's.  Real processes; what
ran is told by the files the calls create."""

from __future__ import annotations

import os
import time

import scoopexec
from tests import helpers
from tests.test_nested import _until_both_workers_asked_for_work
from tests.test_standalone import _start_workers, broker  # noqa: F401  (a fixture)

N_REMOTE = 60


def _wait_for(path, limit=30.0):
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def _cancel_sub_tasks(d, n):
    """In a task: one sub-task runs (it waits for a gate), then n more are submitted and all are
    cancelled, the last submitted first; returns cancel()'s answers, the running one's first.

    Each worker holds at most one task it has not started (tasks of 50 ms: no prefetch), so the
    last of n > 2 is still in the broker's queue when its CANCEL arrives: it is dropped.  The
    next ones may not be: while this task waits for an answer, its worker runs what it holds and
    asks for more."""
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
    return [os.path.exists(os.path.join(d, name)) for name in names]


def test_a_sub_tasks_cancel_says_true_only_when_it_will_not_run(executor, tmp_path):
    _until_both_workers_asked_for_work(executor)
    d = str(tmp_path)
    answers, states = executor.submit(_cancel_sub_tasks, d, 6).result(timeout=60)
    ran = _ran_after_the_rest(executor, d, ["running"] + [f"t{i}" for i in range(6)])
    assert answers[0] is False  # it was running: concurrent.futures refuses
    assert answers == states  # cancel() said what the future became
    assert [not r for r in ran] == answers, (answers, ran)
    assert answers[-1] is True  # still queued in the broker: dropped


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


def test_a_task_waiting_for_its_cancels_answer_leaves_its_worker_free(one_worker, tmp_path):
    # The task parks for the broker's answer: its worker reads it, and runs the sub-task it
    # holds meanwhile.  Blocked instead, the worker would not read the answer STARTED (the one
    # it holds) before CANCEL_WAIT: cancel() gives up, False, and the future is still pending.
    # The last submitted waits in the broker's queue (the worker holds at most one task it has
    # not started): dropped.
    d = str(tmp_path)
    answers, answered = one_worker.submit(_cancel_on_one_worker, d, 5).result(timeout=60)
    ran = [os.path.exists(os.path.join(d, f"t{i}")) for i in range(5)]
    assert all(answered), (answers, answered)
    assert answers[-1] is True
    assert [not r for r in ran] == answers, (answers, ran)


def _cancel_in_a_done_callback(d):
    # The callback runs in the worker's hub, which must never wait: cancel() asks the broker
    # and says False at once; the future then follows the answer.
    said = []
    first = scoopexec.submit(helpers.touch, os.path.join(d, "first"))
    second = scoopexec.submit(helpers.touch, os.path.join(d, "second"))
    first.add_done_callback(lambda f: said.append(second.cancel()))
    first.result(timeout=60)
    try:
        second.result(timeout=60)
    except Exception as exc:  # cancelled after all: the broker dropped it
        return said, type(exc).__name__
    return said, "ran"


def test_cancel_in_a_workers_done_callback_does_not_wait(one_worker, tmp_path):
    d = str(tmp_path)
    said, outcome = one_worker.submit(_cancel_in_a_done_callback, d).result(timeout=60)
    assert said == [False]
    ran = os.path.exists(os.path.join(d, "second"))
    assert (outcome == "ran") == ran, (outcome, ran)
