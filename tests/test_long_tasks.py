"""A task that runs long must not hold back what its worker already has: results, output, queued tasks.

These tests are about order, not speed: each long task waits for a file that the test creates only
after it has seen what must not be held back; if it were held back, the test would time out.
"""

from __future__ import annotations

import time

import pytest

from scoopexec import ScoopExecutor
from tests.helpers import print_then_wait, sleep_and_return, wait_for_file


def _warm(ex, n=50):
    # The function is now known to be fast on every worker: no prediction helps any more.
    assert list(ex.map(wait_for_file, [None] * n, range(n))) == list(range(n))


@pytest.mark.timeout(60)
def test_earlier_result_is_not_held_behind_a_long_call_of_the_same_function(tmp_path, one_worker):
    _warm(one_worker)
    gate = tmp_path / "gate"
    fast = one_worker.submit(wait_for_file, None, "fast")
    slow = one_worker.submit(wait_for_file, str(gate), "slow")
    assert fast.result(timeout=30) == "fast"
    assert not slow.done()
    gate.touch()
    assert slow.result(timeout=30) == "slow"


@pytest.mark.timeout(60)
def test_map_timeout_after_items_that_finished_with_a_warm_function(one_worker, tmp_path):
    _warm(one_worker)
    gate = tmp_path / "gate"
    it = one_worker.map(wait_for_file, [None, None, str(gate)], [1, 2, 3], timeout=5)
    assert next(it) == 1
    assert next(it) == 2
    gate.touch()
    assert next(it) == 3


@pytest.mark.timeout(60)
def test_prints_of_a_long_task_arrive_while_it_runs(one_worker, tmp_path, capsys):
    gate = tmp_path / "gate"
    fut = one_worker.submit(print_then_wait, str(gate))
    deadline = time.monotonic() + 30
    seen = ""
    while "started" not in seen:
        assert time.monotonic() < deadline, "the task's print was held back until it ends"
        time.sleep(0.02)
        seen += capsys.readouterr().out
    gate.touch()
    assert fut.result(timeout=30) == "done"


@pytest.mark.timeout(90)
def test_tasks_queued_behind_a_long_one_are_handed_to_an_idle_worker(tmp_path):
    gate = tmp_path / "gate"
    with ScoopExecutor(2) as ex:
        _warm(ex, 200)
        slow = ex.submit(wait_for_file, str(gate), "slow")
        quick = [ex.submit(wait_for_file, None, i) for i in range(40)]
        assert [f.result(timeout=30) for f in quick] == list(range(40))
        assert not slow.done()
        gate.touch()
        assert slow.result(timeout=30) == "slow"


@pytest.mark.timeout(60)
def test_a_task_that_arrives_while_a_long_one_runs_starts_when_it_ends(one_worker, tmp_path):
    # The worker's flusher reads what the broker sends during a long task and keeps it for later;
    # the worker must then run it without waiting for yet another message.
    # Tasks of ~10 ms: the worker now asks for its next task before it starts one.
    assert list(one_worker.map(sleep_and_return, [0.01] * 5, range(5))) == list(range(5))
    gate = tmp_path / "gate"
    slow = one_worker.submit(wait_for_file, str(gate), "slow")
    time.sleep(0.3)  # the slow task is running: what follows arrives during it
    quick = one_worker.submit(wait_for_file, None, "quick")
    time.sleep(0.3)
    gate.touch()
    assert slow.result(timeout=30) == "slow"
    assert quick.result(timeout=30) == "quick"


@pytest.mark.timeout(60)
def test_tasks_held_behind_a_long_one_go_to_a_worker_that_becomes_idle(tmp_path):
    # Both workers busy: each keeps the next task in hand.  When one becomes idle, the broker
    # asks the other for the task it holds, which must not wait for the long one to end.
    gate, short_gate = tmp_path / "gate", tmp_path / "short"
    with ScoopExecutor(2) as ex:
        assert list(ex.map(sleep_and_return, [0.01] * 20, range(20))) == list(range(20))
        slow = ex.submit(wait_for_file, str(gate), "slow")
        short = ex.submit(wait_for_file, str(short_gate), "short")
        time.sleep(0.3)
        held = [ex.submit(wait_for_file, None, i) for i in range(2)]
        time.sleep(0.3)
        short_gate.touch()  # one worker is free now; the held tasks must reach it
        assert [f.result(timeout=30) for f in held] == [0, 1]
        assert not slow.done()
        gate.touch()
        assert slow.result(timeout=30) == "slow"
        assert short.result(timeout=30) == "short"


@pytest.mark.timeout(60)
def test_short_tasks_are_sent_once_not_handed_back_at_every_start():
    # A worker holds a few tasks behind a task known to run well under a millisecond (what it
    # asks for: a round trip's worth).  It used to hand them back to the broker at the start of
    # every task of 0.1 ms or more, and get them again with its next request: each task of
    # 0.5 ms was sent twice (of 0.2 ms, four times), and 2 workers lost a sixth of their time.
    # Counted by the broker: every task sent to a worker (a RECALL at the end may move one or
    # two again).
    with ScoopExecutor(2) as ex:
        assert list(ex.map(sleep_and_return, [0.0005] * 50, range(50))) == list(range(50))  # its cost known
        ledger = ex._session.broker.ledger
        before = sum(w.sent for w in ledger.workers.values())
        assert list(ex.map(sleep_and_return, [0.0005] * 300, range(300))) == list(range(300))
        sent = sum(w.sent for w in ledger.workers.values()) - before
    assert 300 <= sent <= 320, f"300 tasks were sent to workers {sent} times"
