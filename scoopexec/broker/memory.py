"""Giving the system back what a burst of input left free in the broker's process.

A broker that takes in many tasks at once holds, for a moment, their messages as they
arrived (ZeroMQ's buffers, made in its I/O thread's malloc arena, and the received
buffers the frames are cut from) beside the tasks made of them.  Freed, most of that
memory stays in the process: glibc gives back only the top of a heap by itself, so the
process's resident size keeps the high-water mark of its input backlog, and how high that
was depends on how far the loop fell behind (measured with
``benchmarks/queued_memory.py``, a standalone broker holding 10^6 queued tasks: 224 to 364
bytes of RSS per task over nine runs).  ``malloc_trim(0)`` returns the free pages of every
arena (213 to 254 bytes per task over five runs; Python's own count of the books is about
206).

It runs on the tick of a broker in its own process (``python -m scoopexec broker``; not in
a client's process, whose heap is the user's: there a trim walks all of it, 66-82 ms with
2 GB of the user's data), once input has paused for :data:`QUIET` seconds after at least
:data:`AFTER_TASKS` tasks were taken in since the last trim, and at most every
:data:`EVERY` seconds in one process (it is process-wide).  A steady flow of tasks does not
trim until it pauses.  One trim took 0.3 ms with a small heap and up to 12 ms with a
million tasks queued (malloc_trim walks the heap: ~18 ms per GB).  Not on a C library
without ``malloc_trim`` (then nothing is done).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["AFTER_TASKS", "EVERY", "QUIET", "IntakeTrim"]

AFTER_TASKS = 10_000
EVERY = 2.0
QUIET = 1.0

_last_trim = [0.0]  # monotonic time of this process's last trim
_trim: list[Callable[[int], Any] | None] = []  # [malloc_trim or None], looked up once


def _malloc_trim() -> Callable[[int], Any] | None:
    if not _trim:
        import ctypes  # (here: a broker that never trims never loads ctypes)

        try:
            fn = ctypes.CDLL(None).malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        except (AttributeError, OSError):
            fn = None
        _trim.append(fn)
    return _trim[0]


class IntakeTrim:
    """One broker's count of the tasks it has taken in, at its last trim and at its last
    tick; ``enabled``: the broker has a process of its own."""

    __slots__ = ("at", "enabled", "last", "since", "trims")

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.at = 0  # taken in, at the last trim
        self.last = 0  # taken in, at the last tick
        self.since = 0.0  # when the count last moved
        self.trims = 0

    def tick(self, now: float, taken: int) -> bool:
        """On a tick (monotonic ``now``), ``taken`` tasks in all so far: trim if a burst of
        input has ended; True if it did."""
        if taken != self.last:
            self.last, self.since = taken, now
            return False
        if (
            not self.enabled or taken - self.at < AFTER_TASKS or now - self.since < QUIET
            or now - _last_trim[0] < EVERY
        ):  # fmt: skip
            return False
        fn = _malloc_trim()
        if fn is None:
            return False
        self.at = taken
        fn(0)
        _last_trim[0] = time.monotonic()
        self.trims += 1
        return True
