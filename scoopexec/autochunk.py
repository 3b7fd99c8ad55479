"""``map(..., chunksize="auto")``: chunks sized from the measured cost of the items.

A task costs the pool a round trip and some bookkeeping whatever it computes; for items that
take microseconds (a DEAP evaluation of a small individual) that cost dominates, and one task
per item runs several times slower than the built-in map.  Chunks fix that, but the right size
depends on what an item costs, which the caller rarely knows.  Here:

* every chunk is timed where it runs (:func:`run_timed`), so each result says what its items
  cost there, waiting for the pool excluded;
* a chunk holds at least ``TARGET`` seconds of work at the cost measured (at least one item),
  so that a task's own cost stays a few per cent of it -- but for the end of a long map;
* when the number of items is known, chunks are larger while much remains: a chunk holds
  what remains unsent divided by ``SPREAD`` times the number of workers (guided
  self-scheduling), never more than ``LONGEST`` seconds of work nor each worker's share of
  the items.  Sizes thus shrink towards the end of the map: few tasks (600 evaluations of
  10 ms make about 35 tasks on 2 workers, not 600) and the last chunks, small, let the
  workers finish close together.  In a map whose first chunks hold twice the target or more
  (20 ms of work a worker, on 2 workers), they shrink below ``TARGET``, down to ``TAIL`` of
  it: each worker holds a chunk or two ahead (the broker's credit), so the first, largest
  ones pair up unevenly, and the end evens that out (600
  evaluations of 0.1 ms on 2 workers: the workers ended 1.6-3.2 ms apart with a last round of
  5 ms chunks, 0.6-0.8 ms apart with 1.1 ms ones, and the map took 3 % less).  What remains
  at the least goes in whole rounds of equal chunks, one per worker (600 items of 25 us on
  2 workers: 4 chunks of 150, not 3 of 200 that leave one worker half of the map alone);
* the first time a function is mapped, its first items go singly, ``PROBES`` per worker (the
  workers start at once), the rest once the first result has come, in chunks growing at most
  twofold from one to the next (an early estimate may be off);
* the cost measured is remembered for that function (while it lives), so that the next map of
  it -- DEAP maps the same ``toolbox.evaluate`` every generation -- sends all its chunks at
  once, sized from the start;
* results come back in order; an error surfaces at its own item, after the items before it.

With ``buffersize``, at most that many tasks are in flight and the rest are read lazily, each
new chunk sized with what has been measured by then.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import math
import os
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .client.future import cancel_all
from .errors import remote_traceback
from .worker import chunks

__all__ = [
    "AUTO", "LONGEST", "PROBES", "SPREAD", "TAIL", "TARGET", "Sizer",
    "known_cost", "ordered", "remember_cost", "run_timed",
]  # fmt: skip

AUTO = "auto"
TARGET = 0.005  # s of work per chunk: a task's own cost (~0.1 ms) is then a few per cent of it
PROBES = 2  # items sent singly per worker before anything is measured
SPREAD = 2  # a chunk holds at most what remains unsent / (SPREAD x workers)
TAIL = 0.25  # of TARGET: the least work of a chunk at the end of a map whose first chunks were large
LONGEST = 0.25  # s of work at most per chunk (progress, timeouts, a lost worker's work)


Timed = tuple[float, list[Any], "tuple[BaseException, str] | None"]


def run_timed(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> Timed:
    """Run a chunk where it was sent: (seconds it took, the results, None), or, when an item
    raised, (seconds, the results before it, (its exception, the traceback's text))."""
    out: list[Any] = []
    start = time.perf_counter()
    token = chunks.start(fn, out, len(chunk), _timed_shape)  # what a worker ended meanwhile sends
    try:
        for args in chunk:
            out.append(fn(*args))
    except Exception as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return time.perf_counter() - start, out, (exc, tb)
    finally:
        chunks.end(token)
    return time.perf_counter() - start, out, None


def _timed_shape(done: list[Any], error: tuple[BaseException, str] | None, seconds: float) -> Timed:
    return seconds, done, error


class Sizer:
    """How many items the next chunk holds, from the cost measured so far (or ``prior``: seconds
    per item measured by an earlier map of the same function)."""

    def __init__(self, workers: int, total: int | None, prior: float | None = None, target: float = TARGET):
        self.workers = max(1, workers)
        self.cap = max(1, math.ceil(total / self.workers)) if total is not None else None
        self.unsent = total  # items not yet given to a chunk (None: unknown)
        self.even: int | None = None  # the size of the last chunks, once the end is reached
        self.even_for = 0  # the least that size was reckoned for
        self.shrinking = False  # a chunk was sized from what remains, twice the least or more
        self.prior = prior
        self.target = target
        self.seconds = 0.0
        self.items = 0
        self.last = 1

    def observe(self, seconds: float, items: int) -> None:
        if items > 0:
            self.seconds += max(seconds, 0.0)
            self.items += items

    @property
    def cost(self) -> float | None:
        """Seconds per item, on average so far (the prior until something is measured)."""
        return self.seconds / self.items if self.items else self.prior

    def next(self) -> int:
        """The size of the next chunk."""
        cost = self.cost
        if cost is None:
            size = 1
        else:
            size = self._sized(cost)
            self.last = max(self.last, size)
        self.took(size)
        return size

    def took(self, n: int) -> None:
        """``n`` items went out in a chunk (next()'s, or one sized elsewhere: a probe)."""
        if self.unsent is not None:
            self.unsent = max(0, self.unsent - n)

    def _sized(self, cost: float) -> int:
        least = max(1, int(self.target / cost) if cost > 0 else 1 << 30)  # the least worth a task
        size = least
        if self.unsent is not None:  # guided: a share of what remains, shrinking to the least
            guided = math.ceil(self.unsent / (SPREAD * self.workers))
            # (Twice, not just above: one item more must not double the tasks; one worker has
            # no one to end with.)
            if guided >= 2 * least and self.workers > 1:
                self.shrinking = True
            if self.shrinking:  # (chunks of twice the least went out: the end in smaller ones)
                least = max(1, int(self.target * TAIL / cost) if cost > 0 else 1 << 30)
            longest = max(1, int(LONGEST / cost) if cost > 0 else 1 << 30)
            size = max(least, min(guided, longest))
            if size == least:  # the end: what remains in whole rounds of one equal chunk per worker
                if self.even is None or not self.even_for / 2 <= least <= 2 * self.even_for:
                    # (again if the cost moved far from what it was reckoned with)
                    rounds = max(1, math.ceil(math.ceil(self.unsent / least) / self.workers))
                    self.even = max(1, math.ceil(self.unsent / (rounds * self.workers)))
                    self.even_for = least
                size = self.even
        if self.items:  # (from a prior: sized at once)
            size = min(size, 2 * self.last)
        if self.cap is not None:
            size = min(size, self.cap)
        return size


_costs: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def known_cost(fn: Any) -> float | None:
    """Seconds per item an earlier map of ``fn`` measured (None: none, or ``fn`` cannot be
    remembered without keeping it alive: a bound method is a new object at every access)."""
    try:
        return _costs.get(fn)
    except TypeError:
        return None


def remember_cost(fn: Any, cost: float | None) -> None:
    if cost is not None:
        try:
            _costs[fn] = cost
        except TypeError:
            pass


def ordered(
    fn: Any,
    items: Iterator[tuple[Any, ...]],
    submit: Callable[[tuple[Any, ...]], cf.Future[Any]],
    *,
    workers: int | None,
    total: int | None,
    end_time: float | None,
    buffersize: int | None,
    alive: Callable[[], bool] = lambda: True,
) -> Iterator[Any]:
    """Submit ``items`` (argument tuples for ``fn``) in chunks sized as the module docstring
    says; yield the results in order.  ``submit((chunk,))`` sends one chunk to run with
    run_timed; ``alive()``: the executor can still take tasks (no refill once it is gone)."""
    prior = known_cost(fn)
    sizer = Sizer(workers or os.cpu_count() or 1, total, prior)
    fs: collections.deque[cf.Future[Any]] = collections.deque()
    limit = buffersize or (1 << 62)

    def send(n: int) -> bool:
        chunk = list(itertools.islice(items, n))
        if not chunk:
            return False
        fs.append(submit((chunk,)))
        return True

    if prior is None:
        for _ in range(min(PROBES * sizer.workers, limit)):
            if not send(1):
                break
            sizer.took(1)  # (the last round is reckoned from what is left)
    else:
        while len(fs) < limit and send(sizer.next()):
            pass
    return _results(fn, fs, sizer, send, limit, end_time, alive)


def _results(
    fn: Any,
    fs: collections.deque[cf.Future[Any]],
    sizer: Sizer,
    send: Callable[[int], bool],
    limit: int,
    end_time: float | None,
    alive: Callable[[], bool],
) -> Iterator[Any]:
    more = True
    try:
        while fs:
            fut = fs.popleft()
            try:
                value = fut.result(None if end_time is None else end_time - time.monotonic())
            finally:
                if not fut.done():  # (a timeout, Ctrl-C: one that asks its broker does not wait)
                    cancel_all((fut,), wait=False)
                del fut
            seconds, out, error = value
            del value
            if error is not None:
                yield from out
                exc, tb = error
                exc.__cause__ = remote_traceback(tb)
                raise exc
            sizer.observe(seconds, len(out))
            while more and len(fs) < limit and alive():
                more = send(sizer.next())
            yield from out
            del out
    finally:
        cancel_all(fs, wait=False)  # (nobody reads what cancel() says: the broker answers later)
        if sizer.items:
            remember_cost(fn, sizer.cost)
