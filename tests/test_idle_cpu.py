"""The client uses no CPU while nothing moves: a resource-use check, not a speed one.

On a 2-core machine every percent the client's threads burn is taken from the workers.  Issue 18
measured the client's I/O (broker) thread at ~99 % of a core while the workers slept: a wake-up
byte left in its self-pipe made poll return at once for ever (tests/test_wakeup.py pins that race
down deterministically).  These tests measure CPU time (user + system) from /proc, over a window of
about 2 s, with a wide margin: 5 % of a core where a quiet client uses well under 1 %.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from scoopexec import ScoopExecutor
from tests.helpers import sleep_and_return

WINDOW = 2.0
LIMIT = 0.05  # of one core

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu(path: str) -> float:
    """user + system seconds of a process or thread, from its /proc stat file."""
    with open(path) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _share(path: str, window: float = WINDOW) -> float:
    c0, t0 = _cpu(path), time.monotonic()
    time.sleep(window)
    return (_cpu(path) - c0) / (time.monotonic() - t0)


def _broker_thread() -> threading.Thread:
    (t,) = [t for t in threading.enumerate() if t.name == "scoopexec-broker"]
    return t


def _burst(ex: ScoopExecutor) -> None:
    """Submissions from two threads while results flow: many wake-ups of the I/O thread."""

    def submit() -> None:
        fs = [ex.submit(sleep_and_return, 0, i) for i in range(150)]
        assert [f.result(timeout=60) for f in fs] == list(range(150))

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


@pytest.mark.timeout(120)
def test_client_process_is_quiet_while_its_workers_sleep():
    with ScoopExecutor(2) as ex:
        assert ex.submit(sleep_and_return, 0, 1).result(timeout=60) == 1
        for _ in range(2):
            _burst(ex)
            sleeping = [ex.submit(sleep_and_return, WINDOW + 0.8, i) for i in range(2)]
            time.sleep(0.3)  # both are running now
            share = _share("/proc/self/stat")  # every thread of this process
            assert share < LIMIT, f"the client used {share:.0%} of a core while its workers slept"
            assert [f.result(timeout=60) for f in sleeping] == [0, 1]


@pytest.mark.timeout(120)
def test_broker_thread_is_quiet_with_no_tasks():
    with ScoopExecutor(2) as ex:
        _burst(ex)
        tid = _broker_thread().native_id
        share = _share(f"/proc/self/task/{tid}/stat")
        assert share < LIMIT, f"the idle broker thread used {share:.0%} of a core"


@pytest.mark.timeout(120)
def test_a_quiet_pool_wakes_its_broker_a_few_times_a_second():
    """A pool whose workers run long tasks, or none, wakes its broker's thread at the quiet
    tick's pace (broker/loop.py: QUIET_TICK, 4 times a second), not every TICK (20 times).
    Each wake-up cost about 0.25 ms of CPU, taken from the workers on a machine whose cores
    they all use.  Turns of the loop are counted, not time: a slow machine wakes as often."""
    with ScoopExecutor(2) as ex:
        assert ex.submit(sleep_and_return, 0, 1).result(timeout=60) == 1
        broker = ex._session.broker
        for label, running in (("with no task", []), ("while both workers sleep", [3.0, 3.0])):
            fs = [ex.submit(sleep_and_return, s, i) for i, s in enumerate(running)]
            time.sleep(0.5)  # taken in, started; the start-up's quick ticks are over
            turns, t0 = broker.turns, time.monotonic()
            time.sleep(2.0)
            rate = (broker.turns - turns) / (time.monotonic() - t0)
            assert rate <= 10, f"{label}: the broker's loop turned {rate:.1f} times a second"
            assert [f.result(timeout=60) for f in fs] == list(range(len(running)))
