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
        self.send_at_look = 0  # > 0: a message arrives just before that look (a poll(0))
        self.calls: list[int] = []

    def poll(self, ms: int):
        self.calls.append(ms)
        if ms != 0 and self.on_sleep is not None:
            self.on_sleep()
        if ms == 0 and self.calls.count(0) == self.send_at_look:
            self.b.send(b"x")
        return self.real.poll(ms)

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
def link():
    link = _Link()
    yield link
    link.close()


def test_a_message_already_there_is_taken_without_a_busy_wait(link):
    spin = S.Spin(1.0)
    link.b.send(b"x")
    assert spin.poll(link, -1) == [(link.a.fileno(), select.POLLIN)]
    assert (spin.caught, spin.missed) == (0, 0)  # nothing to learn from
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
    spin = S.Spin(0.5)
    link.on_sleep = None
    for _ in range(3):  # busy (a miss by far), skipped, busy (a miss by far): two steps in
        spin.poll(link, 5) if spin.skip else _far_miss(spin, link)
    assert (spin.streak, spin.skip) == (2, 2)
    spin.poll(link, 5)
    spin.poll(link, 5)  # both skipped
    assert spin.skip == 0 and spin.missed == 2
    link.calls.clear()
    link.send_at_look = 3  # not there at the first look, there at the third
    assert spin.poll(link, 5000) and spin.caught == 1
    assert spin.streak == 0 and set(link.calls) == {0}
    link.a.recv(1)
    link.send_at_look = 0
    _far_miss(spin, link)
    assert spin.skip == 1  # the first step again: a pool whose waits turn short spins again at once


def _far_miss(spin, link):
    """A busy wait that catches nothing, then a sleep that times out."""
    limit = spin.limit
    spin.limit = 0.002
    try:
        assert spin.poll(link, 5) == []
    finally:
        spin.limit = limit


def test_a_miss_by_more_than_the_near_margin_backs_off(link):
    spin = S.Spin(0.002, near=0.0)
    link.on_sleep = lambda: link.b.send(b"x")  # the answer comes, but after the busy wait
    assert spin.poll(link, 1000)
    assert (spin.missed, spin.skip, spin.streak) == (1, 1, 1)


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


def test_the_busy_wait_counts_against_the_callers_timeout(link):
    spin = S.Spin(10.0)
    t = time.monotonic()
    assert spin.poll(link, 300) == []
    assert time.monotonic() - t < 5.0  # 300 ms in all, not 10 s
    assert spin.missed == 1
    assert 0 <= link.calls[-1] <= 10  # the sleep after it gets what is left of the 300 ms


def test_spin_seconds_from_the_environment():
    assert S.spin_seconds({"SCOOPEXEC_SPIN_US": "1e9"}, cpus=2) == 0.1  # at most 100 ms
    assert S.spin_seconds({}, cpus=1.5) == 0.0  # a quota of one and a half CPUs: not two
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
    if S.SPIN == 0:
        pytest.skip("busy waits are off in this process (SCOOPEXEC_SPIN_US=0, or fewer than 2 CPUs)")
    with ScoopExecutor(1) as ex:
        for i in range(300):
            assert ex.submit(abs, -i).result() == i
        leader = ex._session.leader._spin
        assert leader.caught + leader.missed > 0
        assert ex.submit(_worker_spins, 0).result() > 0


def _nap_3ms(_):
    time.sleep(0.003)


def test_the_leader_stops_busy_waiting_for_tasks_of_milliseconds():
    """Its busy waits would miss by a millisecond or more, each time (SPIN_IF_WITHIN)."""
    if S.SPIN == 0:
        pytest.skip("busy waits are off in this process (SCOOPEXEC_SPIN_US=0, or fewer than 2 CPUs)")
    with ScoopExecutor(1) as ex:
        spin = ex._session.leader._spin
        for i in range(30):
            assert ex.submit(abs, -i).result() == i
        short = spin.caught + spin.missed
        for _ in range(60):
            ex.submit(_nap_3ms, 0).result()
        long = spin.caught + spin.missed - short
        for i in range(30):
            assert ex.submit(abs, -i).result() == i
        again = spin.caught + spin.missed - short - long
    assert short >= 10, short
    assert long <= 12, long  # a few while the smoothed lead grows past the limit, then none
    assert again >= 10, again  # short tasks again: it spins again


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
    code = "from scoopexec import ScoopExecutor\nwith ScoopExecutor(1) as ex:\n    ex.submit(abs, 1).result()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, env=env, check=False)
    assert r.returncode != 0
    assert "SCOOPEXEC_SPIN_US must be a number of microseconds, not 'fast'" in r.stderr.decode()


def _cpu_cgroup_root():
    """Where this test can make a cgroup with a CPU quota: (root, "v1" or "v2"), or None."""
    if os.geteuid() != 0:
        return None
    v1 = "/sys/fs/cgroup/cpu"
    if os.path.exists(os.path.join(v1, "cpu.cfs_quota_us")):
        return v1, "v1"
    try:
        with open("/sys/fs/cgroup/cgroup.subtree_control") as fh:
            if "cpu" in fh.read().split():
                return "/sys/fs/cgroup", "v2"
    except OSError:
        pass
    return None


@pytest.mark.parametrize("quota_cpus, spins", [(1, False), (2, True)])
def test_a_cgroup_cpu_quota_under_two_cpus_turns_busy_waits_off(quota_cpus, spins):
    """A container given one CPU's time still sees every CPU in its affinity."""
    found = _cpu_cgroup_root()
    if found is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs root, a cgroup CPU controller and two CPUs")
    root, kind = found
    group = os.path.join(root, f"scoopexec-test-{os.getpid()}-{quota_cpus}")
    try:
        os.mkdir(group)
    except OSError as exc:  # a read-only cgroup file system (a container)
        pytest.skip(f"cannot make a cgroup here: {exc}")
    try:
        if kind == "v1":
            with open(os.path.join(group, "cpu.cfs_period_us"), "w") as fh:
                fh.write("100000")
            with open(os.path.join(group, "cpu.cfs_quota_us"), "w") as fh:
                fh.write(str(100000 * quota_cpus))
        else:
            with open(os.path.join(group, "cpu.max"), "w") as fh:
                fh.write(f"{100000 * quota_cpus} 100000")
        code = textwrap.dedent(
            f"""
            import os
            with open({os.path.join(group, "cgroup.procs")!r}, "w") as fh:
                fh.write(str(os.getpid()))
            from scoopexec.wire import spin
            print(spin.cgroup_cpus(), spin.SPIN)
            """
        )
        env = {k: v for k, v in os.environ.items() if k != "SCOOPEXEC_SPIN_US"}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, env=env,
                           check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr.decode()
        cpus, seconds = r.stdout.decode().split()
        assert float(cpus) == quota_cpus
        assert (float(seconds) > 0) is spins
    finally:
        for _ in range(50):  # the child has exited; its cgroup empties a moment later
            try:
                os.rmdir(group)
                break
            except OSError:
                time.sleep(0.1)
