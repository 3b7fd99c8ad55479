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
came more than :data:`NEAR` after it, or none), was CPU time for nothing, so :class:`Spin`
backs off: it skips the next 1, then 2, 4, ... up to :data:`MAX_SKIP` waits; a busy wait
that catches a message, or just misses it, starts over.  A round trip of short tasks
spins every time; a long task or an idle pool costs one spin now and then; answers that
come every millisecond or two cost at most the spin's share of that time.  Only where more than one
CPU is usable (on one, the spinner would hold the CPU the answer must be computed on);
``SCOOPEXEC_SPIN_US`` (microseconds, default 300; 0: never) is read at import, so a
local worker started by its client gets the client's setting.
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["MAX_SKIP", "NEAR", "SPIN", "Spin", "spin_seconds"]

MAX_SKIP = 64  # waits without a busy wait, at most, after busy waits that caught nothing
NEAR = 0.002  # s: a message this soon after a busy wait ended makes it a near miss, not a waste
DEFAULT_US = 300


def spin_seconds(environ: Any = os.environ, cpus: int | None = None) -> float:
    """How long a busy wait may last here: SCOOPEXEC_SPIN_US, and 0 on a single usable CPU."""
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
    return min(us, 100_000) / 1e6 if cpus > 1 else 0.0


SPIN = spin_seconds()


class Spin:
    """Busy waits on one poll object before sleeping in it (see the module docstring)."""

    __slots__ = ("caught", "limit", "missed", "near", "skip", "streak")

    def __init__(self, limit: float = SPIN, near: float = NEAR) -> None:
        self.limit = limit
        self.near = near
        self.skip = 0  # waits still to be left alone
        self.streak = 0  # busy waits in a row that missed by far
        self.caught = 0  # busy waits that caught a message (counts for tests and benchmarks)
        self.missed = 0

    def poll(self, poller: Any, timeout_ms: int) -> list[tuple[int, int]]:
        """``poller.poll(timeout_ms)`` (negative: no timeout), after a busy wait if one is due."""
        limit = self.limit
        if limit <= 0 or timeout_ms == 0:
            return poller.poll(timeout_ms)  # type: ignore[no-any-return]
        if self.skip:
            self.skip -= 1
            return poller.poll(timeout_ms)  # type: ignore[no-any-return]
        if 0 < timeout_ms < limit * 1000:
            limit = timeout_ms / 1000
        now = time.perf_counter
        end = now() + limit
        yield_cpu = os.sched_yield
        while True:
            ready: list[tuple[int, int]] = poller.poll(0)
            if ready:
                self.streak = 0
                self.caught += 1
                return ready
            if now() >= end:
                break
            yield_cpu()
        self.missed += 1
        ready = poller.poll(timeout_ms)
        if ready and now() - end < self.near:
            self.streak = 0  # a near miss: the next busy wait may well catch it
        else:
            self.skip = min(1 << self.streak, MAX_SKIP)
            self.streak = min(self.streak + 1, MAX_SKIP.bit_length())
        return ready
