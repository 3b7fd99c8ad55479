"""A worker running one long task sleeps with it: no thread of its own wakes on a clock (issue 17).

Behaviour, not speed.  The worker's threads are counted from outside, in /proc (voluntary
context switches: each is a sleep that ended, a wake-up), from before a task that sleeps
for one second is submitted until its result is back: receiving the task, the task's own
sleep and sending the result.  The flusher thread, which keeps a worker responsive while
a task runs long, sleeps on events (flush.py): none comes, so it must not wake.  It used to
wake at the start of every task and look after 2 ms: five wake-ups a task, on 64 workers
the CPU of ~0.1 ms per 50 ms task and as many GIL hand-overs.

Over ZeroMQ, ZeroMQ's I/O thread also wakes for each message and for the heartbeats
(pings both ways): those are allowed, at the heartbeat's period, and no more; the
worker's own threads still must not wake.
"""

from __future__ import annotations

import math
import os
import sys
import time

import pytest

from scoopexec import ScoopExecutor

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

TASK = 1.0  # s the task sleeps
# The hub: woken by the task's message, the task's own sleep; one more for a GIL or lock
# hand-over under load.  The other threads: none.  (Before: 2 + 5 for the flusher.)
HUB = 3
# ZeroMQ's I/O thread: a wake-up for each of the two messages, with one spare each, and up to
# four per heartbeat period the task spans (both ends ping: our ping out and its pong in, its
# ping in and our pong out), and one period more (the phase is arbitrary).  Seen: 10-15.
PER_MESSAGE = 2
PER_HEARTBEAT = 4


def _pid(_: object = None) -> int:
    return os.getpid()


def _sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _switches(pid: int) -> dict[str, int]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                text = f.read()
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue  # it ended
        out[f"{tid}:{name}"] = int(text.split("\nvoluntary_ctxt_switches:")[1].split()[0])
    return out


def _wakeups_during_one_long_task(ex: ScoopExecutor) -> dict[str, int]:
    pid = ex.submit(_pid).result(timeout=60)
    assert ex.submit(_sleep, 0.05).result(timeout=60) == pid  # warm, the function known
    time.sleep(0.2)  # whatever followed that task is over
    before = _switches(pid)
    assert ex.submit(_sleep, TASK).result(timeout=60) == pid
    after = _switches(pid)
    return {k: v - before.get(k, 0) for k, v in after.items()}


@pytest.mark.timeout(60)
def test_a_worker_on_a_local_link_wakes_only_for_its_task() -> None:
    with ScoopExecutor(max_workers=1) as ex:
        woke = _wakeups_during_one_long_task(ex)
    assert len(woke) >= 2, f"the worker's threads are seen (hub and flusher): {woke}"
    assert sum(woke.values()) <= HUB, woke


@pytest.mark.timeout(60)
def test_a_worker_over_zeromq_wakes_only_for_its_task_and_heartbeats(monkeypatch) -> None:
    heartbeat = 0.25
    monkeypatch.setenv("SCOOPEXEC_LOCAL_TRANSPORT", "zmq")
    with ScoopExecutor(max_workers=1, heartbeat=heartbeat, heartbeat_timeout=5.0) as ex:
        woke = _wakeups_during_one_long_task(ex)
    io = sum(v for k, v in woke.items() if "ZMQbg" in k)
    assert io, f"ZeroMQ's I/O thread is seen: {woke}"
    periods = math.ceil(TASK / heartbeat) + 1
    assert io <= 2 * PER_MESSAGE + PER_HEARTBEAT * periods, woke
    # The flusher looks once in a slice that runs long (a ZeroMQ descriptor signals changes only).
    assert sum(woke.values()) - io <= HUB + 1, woke


_sent: list[int] = []


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


@pytest.mark.timeout(60)
def test_back_to_back_long_tasks_cost_their_worker_one_message_each() -> None:
    # The result of one task goes with its worker's request for the next, in one message,
    # when the next one is in hand already (main sent two: RESULT, then CREDIT as the next
    # one started).
    n = 10
    with ScoopExecutor(max_workers=1) as ex:
        ex.submit(_sleep, 0.05).result(timeout=60)  # the function known: long
        pid = ex.submit(_count_sends).result(timeout=60)
        assert {f.result(timeout=60) for f in [ex.submit(_sleep, 0.05) for _ in range(n)]} == {pid}
        sent = ex.submit(_sends_so_far).result(timeout=60)
    assert sent <= n + 3, sent
