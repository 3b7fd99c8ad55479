"""A short busy wait on a link before sleeping in poll(), while such waits pay off.

A process that sleeps in poll() and is woken by a message pays the kernel's wake-up, and
on a virtual machine whose virtual CPU went idle meanwhile, the hypervisor's: measured on
this project's 2-core VMs, a task's round trip through sleeping client and worker took
520 us, of which the work was under 100 (issue 17).  ProcessPoolExecutor pays it too.  So
the two places that wait for an answer expected within microseconds first look without
sleeping for up to :data:`SPIN` seconds, yielding the CPU between looks
(``sched_yield``: a thread or process that has work there goes first):

* the client's thread that waits on a result it reads itself (broker/leader.py);
* a local worker whose hub has nothing to run (worker/worker.py): the next task, or the
  results of the sub-tasks its task waits for.

A busy wait that ends without a message, and is followed by a long sleep (the message
came more than a busy wait's length after it, or none), was CPU time for nothing, so
:class:`Spin` backs off: it skips the next 1, then 2, 4, ... up to :data:`MAX_SKIP` waits;
a busy wait that catches a message, or just misses it, starts over (a pool whose waits
turn short spins again at once).  A message there at the first look teaches nothing.
The leader also busy-waits only while its leads (a task's whole wait) have been short
(broker/leader.py): a task of a millisecond or more would make most of its busy waits
miss by less than a millisecond, over and over.  A round trip of short tasks spins every
time; a long task or an idle pool costs one spin now and then.

Only with two usable CPUs or more (the affinity, and a cgroup quota: v2 ``cpu.max``, v1
``cpu.cfs_quota_us``), as on one the spinner would hold the CPU the answer must be computed
on.  ``SCOOPEXEC_SPIN_US`` (microseconds, default 300, at most 100,000; 0: never) is read
once, when this module is first imported: in a client, with ``ScoopExecutor`` (a bad value
fails that import, naming the variable); in a worker, when it starts.  A local worker
inherits its client's environment, so its setting too.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["MAX_SKIP", "SPIN", "Spin", "cgroup_cpus", "spin_seconds"]

MAX_SKIP = 64  # waits without a busy wait, at most, after busy waits that caught nothing
DEFAULT_US = 300


def cgroup_cpus() -> float | None:
    """The CPUs that this process's cgroup quota allows (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``),
    its own cgroup's or an ancestor's, the smallest; None without one.  A container limited
    to one CPU's time sees every CPU of its host in its affinity."""
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    allowed: float | None = None
    for line in lines:
        ident, controllers, path = [*line.split(":", 2), "", ""][:3]
        v2 = ident == "0"
        if v2:
            roots = ["/sys/fs/cgroup"]
        elif "cpu" in controllers.split(","):
            roots = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"]
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for root in roots:
            for depth in range(len(parts), -1, -1):
                where = "/".join([root, *parts[:depth]])
                try:
                    if v2:
                        with open(f"{where}/cpu.max") as fh:
                            quota, period = fh.read().split()[:2]
                    else:
                        with open(f"{where}/cpu.cfs_quota_us") as fh:
                            quota = fh.read().strip()
                        with open(f"{where}/cpu.cfs_period_us") as fh:
                            period = fh.read().strip()
                    if quota not in ("max", "-1"):
                        cpus = int(quota) / int(period)
                        allowed = cpus if allowed is None else min(allowed, cpus)
                except (OSError, ValueError, ZeroDivisionError):
                    continue
    return allowed


def spin_seconds(environ: Any = os.environ, cpus: float | None = None) -> float:
    """How long a busy wait may last here: SCOOPEXEC_SPIN_US (at most 100 ms), and 0 with fewer
    than two usable CPUs (affinity, or a cgroup quota)."""
    raw = environ.get("SCOOPEXEC_SPIN_US", "")
    try:
        us = float(raw) if raw.strip() else DEFAULT_US
    except ValueError:
        raise ValueError(f"SCOOPEXEC_SPIN_US must be a number of microseconds, not {raw!r}") from None
    if not us >= 0:
        raise ValueError(f"SCOOPEXEC_SPIN_US must be >= 0, not {raw!r}")
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            cpus = os.cpu_count() or 1
        quota = cgroup_cpus()
        if quota is not None:
            cpus = min(cpus, quota)
    return min(us, 100_000) / 1e6 if cpus >= 2 else 0.0


SPIN = spin_seconds()


class Spin:
    """Busy waits on one poll object before sleeping in it (see the module docstring)."""

    __slots__ = ("caught", "limit", "missed", "near", "skip", "streak")

    def __init__(self, limit: float = SPIN, near: float | None = None) -> None:
        self.limit = limit
        self.near = limit if near is None else near  # s after a busy wait: a near miss
        self.skip = 0  # waits still to be left alone
        self.streak = 0  # how far the back-off has gone (it doubles the skip each step)
        self.caught = 0  # busy waits that caught a message (counts for tests and benchmarks)
        self.missed = 0

    def poll(self, poller: Any, timeout_ms: int) -> list[tuple[int, int]]:
        """``poller.poll(timeout_ms)`` (negative: no timeout), after a busy wait if one is due;
        the busy wait counts against the timeout."""
        limit = self.limit
        if limit <= 0 or timeout_ms == 0:
            return poller.poll(timeout_ms)  # type: ignore[no-any-return]
        if self.skip > 0:  # (first: a skipped wait costs no more than it did without busy waits)
            self.skip -= 1
            return poller.poll(timeout_ms)  # type: ignore[no-any-return]
        ready: list[tuple[int, int]] = poller.poll(0)
        if ready:  # there already: no busy wait, nothing learnt
            return ready
        if 0 < timeout_ms < limit * 1000:
            limit = timeout_ms / 1000
        now = time.perf_counter
        start = now()
        end = start + limit
        yield_cpu = os.sched_yield
        while True:
            yield_cpu()
            ready = poller.poll(0)
            if ready:
                self.caught += 1
                self.streak = 0
                return ready
            if now() >= end:
                break
        self.missed += 1
        if timeout_ms > 0:
            timeout_ms = max(0, timeout_ms - int((now() - start) * 1000))
        ready = poller.poll(timeout_ms)
        if ready and now() - end < self.near:
            self.streak = 0  # a near miss: the next busy wait may well catch it
        else:
            self.skip = min(1 << self.streak, MAX_SKIP)
            self.streak = min(self.streak + 1, MAX_SKIP.bit_length())
        return ready
