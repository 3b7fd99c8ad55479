"""Back-to-back long tasks cost their worker one message and one flusher wake-up each (issue 17).

Behaviour, not speed.  A worker running 50 ms tasks holds the next one in hand (the broker
sends it while the last one runs): its result goes out with the request for the one after
(one message, where main sent two: RESULT, then CREDIT as the next task started), and its
flusher thread, which watches the channel while a known-long task runs (pause.py), keeps
watching from one such task to the next: it wakes for the next task's arrival only (it
was woken at each task's start, looked after 2 ms, woke for the next task and at the
task's end: four).  Counted inside the worker: its real sends, and the voluntary context
switches of its other threads from /proc.  And a sub-task batched by a long task that runs
on without waiting still goes out while it runs: the flusher, watching quietly, is poked.

The two regressions that had this reverted (4fe10ca) have their tests here: a result held
back for the next start waits for no set-up of another client, and a task submitting in a
loop pokes the flusher once per batch, not once per submission.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from scoopexec import ScoopExecutor

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

N = 10  # back-to-back tasks
_sent: list[int] = []


def _sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _count_sends(_: object = None) -> int:
    """In a worker: count the messages it sends to the broker from now on (its real channel)."""
    from scoopexec.worker.worker import current_worker

    w = current_worker()
    assert w is not None
    send = w.chan.send

    def counting(frames: list[object]) -> None:
        _sent.append(1)
        send(frames)

    w.chan.send = counting  # type: ignore[method-assign]
    return os.getpid()


def _sends_so_far(_: object = None) -> int:
    return len(_sent)


def _other_threads_switches(_: object = None) -> int:
    """Voluntary context switches (sleeps that ended) of this worker's threads but the hub's."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == os.getpid():
            continue
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                total += int(f.read().split("\nvoluntary_ctxt_switches:")[1].split()[0])
        except OSError:
            continue  # it ended
    return total


@pytest.mark.timeout(60)
def test_back_to_back_long_tasks_cost_their_worker_one_message_each() -> None:
    # main sent 2 per task (22 for 10).
    with ScoopExecutor(max_workers=1) as ex:
        ex.submit(_sleep, 0.05).result(timeout=60)  # the function known: long
        pid = ex.submit(_count_sends).result(timeout=60)
        assert {f.result(timeout=60) for f in [ex.submit(_sleep, 0.05) for _ in range(N)]} == {pid}
        sent = ex.submit(_sends_so_far).result(timeout=60)
    assert sent <= N + 3, sent


@pytest.mark.timeout(60)
def test_back_to_back_long_tasks_wake_the_flusher_once_each() -> None:
    # main: 3-4 wake-ups of the flusher per task (33-37 for 10); now 1 (the next task arriving),
    # plus a few for the first and last tasks and lock hand-overs under load.
    with ScoopExecutor(max_workers=1) as ex:
        ex.submit(_sleep, 0.05).result(timeout=60)  # the function known: long
        before = ex.submit(_other_threads_switches).result(timeout=60)
        assert len({f.result(timeout=60) for f in [ex.submit(_sleep, 0.05) for _ in range(N)]}) == 1
        woke = ex.submit(_other_threads_switches).result(timeout=60) - before
    assert woke <= 2 * N, woke


def _spin(seconds: float, children: int = 0) -> bool:
    """Run ``seconds`` without waiting; with ``children``, submit that many sub-tasks first
    (batched: sent by the flusher) and run until they are done or 0.5 s passed (half the
    flusher's quiet wait): were they?"""
    import scoopexec

    fs = [scoopexec.submit(_sleep, 0) for _ in range(children)]
    end = time.perf_counter() + (0.5 if children else seconds)
    while time.perf_counter() < end:
        if children and all(f.done() for f in fs):
            return True
    return not children


@pytest.mark.timeout(60)
def test_a_long_task_that_runs_on_still_sends_its_sub_tasks() -> None:
    # The flusher sleeps through back-to-back long tasks; a batched sub-task pokes it (without
    # the poke it went out after 1 s, the flusher's quiet wait, or at the task's end).
    with ScoopExecutor(max_workers=2) as ex:
        for _ in range(2):  # both workers up, the function known: long
            assert all(ex.map(_spin, [0.05] * 2))
        for _ in range(25):  # (without the poke, a run fails when all its children were batched)
            # Two run at once; the third goes to one of them while its first runs, and
            # starts right after it; its children run on the other worker.
            assert list(ex.map(_spin, [0.05, 0.05, 0.05], [0, 0, 3], timeout=60)) == [True] * 3


def _submit_many(n: int) -> int:
    """Run 5 ms (known long: its first slice), submit ``n`` sub-tasks in a loop without waiting
    (batched), then wait for all: how many times the loop asked the flusher to look (set()
    calls of its alarm, and bytes written to its pipe)."""
    import scoopexec
    from scoopexec.worker.worker import current_worker

    w = current_worker()
    assert w is not None
    alarm = w.alarm
    real = alarm.pipe

    class Counting:  # the alarm's pipe, counting the bytes written to it
        fd = real.fd
        writes = 0

        @property
        def pending(self) -> bool:
            return real.pending

        def wake(self) -> None:
            self.writes += not real.pending
            real.wake()

        def drain(self) -> None:
            real.drain()

    end = time.perf_counter() + 0.005
    while time.perf_counter() < end:
        pass
    before, counting = alarm.count, Counting()
    alarm.pipe = counting  # type: ignore[assignment]
    try:
        fs = [scoopexec.submit(_sleep, 0) for _ in range(n)]
    finally:
        alarm.pipe = real
    asked = alarm.count - before + counting.writes
    for f in fs:
        f.result()
    return asked


@pytest.mark.timeout(120)
def test_sub_task_submits_stay_batched_in_a_long_task() -> None:
    # p20a poked the flusher on every batched submit of a known-long task (an Event set(),
    # and a pipe write when it slept): each time it woke and sent what was batched, one or two
    # submissions a message (5,000 in 2,700-4,400 messages where about 1,100 do).  It is now
    # poked once per batch, and only out of its quiet sleep, after which it waits FLUSH_AFTER
    # before sending.  Counted, not timed: how many times the submit loop asked it to look.
    with ScoopExecutor(max_workers=1) as ex:
        for _ in range(3):
            ex.submit(_submit_many, 1).result(timeout=60)  # the function known: long
        asked = ex.submit(_submit_many, 3000).result(timeout=100)
    assert asked <= 300, asked


def _wait_for(path: str, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


_saw: list[bool] = []


def _initializer(flag: str) -> None:
    _saw.append(_wait_for(flag, 8.0))


def _saw_flag(_: object = None) -> list[bool]:
    return list(_saw)


def _long_until(path: str) -> int:
    """Run until ``path`` exists, then 0.5 s more (20 s at most)."""
    _wait_for(path, 20.0)
    time.sleep(0.5)
    return os.getpid()


@pytest.mark.timeout(120)
def test_a_finished_result_does_not_wait_for_another_clients_set_up(tmp_path: object) -> None:
    # Client Y's set-up reaches the worker while client X's task runs there; Y's initializer
    # waits for X's result.  p20a ran it as the task ended, before X's result went out: the
    # initializer waited its 8 s in vain (and X's result came after it).  Now the result goes
    # out before any set-up runs.
    flag, submitted = str(tmp_path) + "/x-result", str(tmp_path) + "/y-submitted"  # type: ignore[operator]
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0") as x:
        x.submit(_sleep, 0).result(timeout=60)  # the worker up
        fa = x.submit(_long_until, submitted)
        fa.add_done_callback(lambda f: open(flag, "w").close())
        with ScoopExecutor(broker=x.endpoint, initializer=_initializer, initargs=(flag,)) as y:
            fc = y.submit(_saw_flag)
            open(submitted, "w").close()
            fa.result(timeout=60)
            assert fc.result(timeout=60) == [True]


def _asked_for_more(seconds: float, wait: bool = False) -> tuple[int, bool]:
    """Run ``seconds``: the credit its worker held for it when it started, and whether the
    worker asked for more while it ran (``wait``: until it did, 5 s at most)."""
    from scoopexec.worker.worker import current_worker

    w = current_worker()
    assert w is not None
    at_start = w.granted
    start = time.monotonic()
    while time.monotonic() - start < max(seconds, 5.0 if wait and not w.granted else 0.0):
        time.sleep(0.005)
    return at_start, w.granted > 0


@pytest.mark.timeout(60)
def test_a_known_long_task_starts_before_its_worker_asks_for_the_next() -> None:
    # An idle worker given a task known to run long (ASK_LATER or more) starts it first and
    # asks for its next task from the flusher, FLUSH_AFTER later; main asked first (a send, and
    # the broker's answer, on the way to the start: 64 workers starting at once on 2 cores
    # queued behind them).  It still asks while the task runs, so the next one is in hand.
    with ScoopExecutor(max_workers=1) as ex:
        for _ in range(3):
            ex.submit(_asked_for_more, 0.03).result(timeout=60)  # the function known: long
        time.sleep(0.2)  # the worker idle
        at_start, asked = ex.submit(_asked_for_more, 0.03, True).result(timeout=60)
    assert (at_start, asked) == (0, True)
