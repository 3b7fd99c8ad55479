"""Back-to-back long tasks cost their worker one message each (issue 17).

Behaviour, not speed.  A worker running 50 ms tasks holds the next one in hand (the broker
sends it while the last one runs): its result goes out with the request for the one after,
in one message, where main sent two (RESULT at the end of its turn, with no credit since a
task was still granted, then CREDIT as the next task started), each waking the broker (in
the client's process, the bottleneck at 64 workers).  Counted inside the worker: its real
sends.
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


@pytest.mark.timeout(60)
def test_back_to_back_long_tasks_cost_their_worker_one_message_each() -> None:
    # main sent 2 per task (22 for 10).
    with ScoopExecutor(max_workers=1) as ex:
        ex.submit(_sleep, 0.05).result(timeout=60)  # the function known: long
        pid = ex.submit(_count_sends).result(timeout=60)
        assert {f.result(timeout=60) for f in [ex.submit(_sleep, 0.05) for _ in range(N)]} == {pid}
        sent = ex.submit(_sends_so_far).result(timeout=60)
    assert sent <= N + 3, sent
