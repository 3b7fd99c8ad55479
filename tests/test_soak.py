"""A soak: 200,000 small tasks while workers are killed at random, every result exactly once."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from scoopexec import ScoopExecutor
from tests.helpers import mul


@pytest.mark.timeout(600)
def test_200k_tasks_with_workers_killed_every_second():
    n = 200_000
    rng = random.Random(1234)
    kills = []
    stop = threading.Event()
    with ScoopExecutor(2, max_retries=25) as ex:

        def killer():
            while not stop.wait(1.0):
                # Workers that have joined the pool: one killed while it starts is a start-up
                # failure, and three of those in a row rightly give up (a loaded machine can take
                # more than a second to start one, so a killer that picks any pid hits them).
                pids = [w.pid for w in ex.status(timeout=30).workers if w.pid]
                if pids:
                    pid = rng.choice(pids)
                    try:
                        os.kill(pid, signal.SIGKILL)
                        kills.append(pid)
                    except ProcessLookupError:
                        pass

        t = threading.Thread(target=killer)
        t.start()
        try:
            start = time.monotonic()
            out = list(ex.map(mul, range(n), [3] * n))
            took = time.monotonic() - start
        finally:
            stop.set()
            t.join()
        assert out == [3 * i for i in range(n)]
        assert ex._session.unmatched == 0  # no result reached the client twice
        print(f"\n{n} tasks in {took:.1f} s with {len(kills)} workers killed")
        assert kills, "the soak must actually kill workers"
        assert ex.submit(abs, -1).result(timeout=60) == 1
