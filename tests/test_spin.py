"""Short busy waits before sleeping in poll() (wire/spin.py): when they happen, when they back off.

The figures they buy are in benchmarks/ (round trip and nested rows), never asserted here.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from scoopexec import ScoopExecutor
from scoopexec.wire import spin as S


class _Link:
    """A socketpair and a real select.poll on one end; ``on_sleep`` runs when the caller is
    about to sleep in it (a poll with a timeout: the busy wait is over by then)."""

    def __init__(self) -> None:
        self.a, self.b = socket.socketpair()
        self.real = select.poll()
        self.real.register(self.a.fileno(), select.POLLIN)
        self.on_sleep = None
        self.calls: list[int] = []

    def poll(self, ms: int):
        self.calls.append(ms)
        if ms != 0 and self.on_sleep is not None:
            self.on_sleep()
        return self.real.poll(ms)

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
def link():
    link = _Link()
    yield link
    link.close()


def test_a_message_already_there_is_caught_without_sleeping(link):
    spin = S.Spin(1.0)
    link.b.send(b"x")
    assert spin.poll(link, -1) == [(link.a.fileno(), select.POLLIN)]
    assert (spin.caught, spin.missed) == (1, 0)
    assert link.calls == [0]  # one look, no sleep


def test_a_message_arriving_during_the_busy_wait_is_caught(link):
    spin = S.Spin(5.0)  # (a long limit: the writer thread is late under load, the wait is not)
    threading.Timer(0.02, link.b.send, args=(b"x",)).start()
    t = time.monotonic()
    ready = spin.poll(link, 10_000)
    assert ready and time.monotonic() - t < 5.0
    assert (spin.caught, spin.missed) == (1, 0)
    assert set(link.calls) == {0}  # it never slept


def test_a_busy_wait_missing_by_far_backs_off_doubling_up_to_the_limit(link):
    spin = S.Spin(0.002)
    spun = []
    for _ in range(200):
        before = spin.missed
        assert spin.poll(link, 5) == []  # nothing comes: each sleep times out
        spun.append(spin.missed - before)
    # busy, then 1 skipped, busy, 2 skipped, busy, 4 skipped, ... never more than MAX_SKIP in a row
    expected = []
    skip = 1
    while len(expected) < 200:
        expected += [1] + [0] * skip
        skip = min(skip * 2, S.MAX_SKIP)
    assert spun == expected[:200]
    assert spin.caught == 0


def test_a_catch_starts_the_back_off_over(link):
    spin = S.Spin(0.002)
    for _ in range(3):  # busy (a miss), skipped, busy (a miss): 2 to skip now
        spin.poll(link, 5)
    assert spin.skip == 2
    link.b.send(b"x")
    spin.poll(link, 5)  # skipped: it sleeps, and the message is there
    link.a.recv(1)
    spin.poll(link, 5)  # skipped
    link.b.send(b"x")
    assert spin.poll(link, 5) and spin.caught == 1 and spin.streak == 0
    link.a.recv(1)
    before = spin.missed
    spin.poll(link, 5)
    assert spin.missed == before + 1 and spin.skip == 1  # back to the first step


def test_a_near_miss_does_not_back_off(link):
    spin = S.Spin(0.002, near=60.0)  # (NEAR is 2 ms: a loaded machine could stretch that much)
    link.on_sleep = lambda: link.b.send(b"x")  # the answer comes just after the busy wait
    for _ in range(5):
        assert spin.poll(link, 1000)
        link.a.recv(1)
    assert spin.missed == 5 and spin.skip == 0  # each time a busy wait again


def test_no_busy_wait_when_off_or_when_the_caller_does_not_wait(link):
    off = S.Spin(0.0)
    assert off.poll(link, 5) == [] and link.calls == [5]
    on = S.Spin(1.0)
    link.calls.clear()
    assert on.poll(link, 0) == [] and link.calls == [0]
    assert (on.caught, on.missed) == (0, 0)


def test_the_busy_wait_never_outlasts_the_callers_timeout(link):
    spin = S.Spin(10.0)
    t = time.monotonic()
    assert spin.poll(link, 30) == []
    assert time.monotonic() - t < 5.0  # 30 ms of busy wait and 30 of sleep, not 10 s
    assert spin.missed == 1


def test_spin_seconds_from_the_environment():
    assert S.spin_seconds({}, cpus=2) == S.DEFAULT_US / 1e6
    assert S.spin_seconds({"SCOOPEXEC_SPIN_US": "50"}, cpus=2) == 50e-6
    assert S.spin_seconds({"SCOOPEXEC_SPIN_US": "0"}, cpus=2) == 0.0
    assert S.spin_seconds({"SCOOPEXEC_SPIN_US": "300"}, cpus=1) == 0.0  # one CPU: never
    for bad in ("fast", "-1", "nan"):
        with pytest.raises(ValueError, match="SCOOPEXEC_SPIN_US"):
            S.spin_seconds({"SCOOPEXEC_SPIN_US": bad}, cpus=2)


def _worker_spins(_):
    from scoopexec.worker import worker

    s = worker._current.spin
    return s.caught + s.missed


def test_round_trips_busy_wait_in_the_client_and_on_the_worker():
    with ScoopExecutor(1) as ex:
        for i in range(300):
            assert ex.submit(abs, -i).result() == i
        leader = ex._session.leader._spin
        assert leader.caught + leader.missed > 0
        assert ex.submit(_worker_spins, 0).result() > 0


_CHILD = """
    import os
    {pin}
    from scoopexec import ScoopExecutor

    def worker_spins(_):
        from scoopexec.worker import worker
        s = worker._current.spin
        return s.caught + s.missed

    if __name__ == "__main__":
        with ScoopExecutor(1) as ex:
            for i in range(200):
                ex.submit(abs, -i).result()
            leader = ex._session.leader._spin
            print(leader.caught + leader.missed, ex.submit(worker_spins, 0).result())
"""


@pytest.mark.parametrize(
    "pin, env",
    [("", {"SCOOPEXEC_SPIN_US": "0"}), ("os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})", {})],
    ids=["SCOOPEXEC_SPIN_US=0", "one-cpu"],
)
def test_no_busy_wait_when_turned_off_or_on_a_single_cpu(pin, env):
    code = textwrap.dedent(_CHILD).format(pin=pin)
    full = {k: v for k, v in os.environ.items() if k != "SCOOPEXEC_SPIN_US"} | env
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=90, env=full, check=False)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["0", "0"]


def test_a_bad_setting_is_refused_by_name():
    env = dict(os.environ, SCOOPEXEC_SPIN_US="fast")
    code = "from scoopexec import ScoopExecutor\nwith ScoopExecutor(1) as ex:\n    ex.submit(abs, -1).result()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, env=env, check=False)
    assert r.returncode != 0
    assert "SCOOPEXEC_SPIN_US must be a number of microseconds, not 'fast'" in r.stderr.decode()
