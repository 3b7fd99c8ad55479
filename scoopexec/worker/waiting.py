"""Waiting inside a task: the task's greenlet parks, its worker runs other work meanwhile.

::

    task greenlet                         hub (the worker's main greenlet)
    future.result() / wait() / as_completed()
      Waits.wait_until(fs) ---- park ---->  runs other tasks, receives results
                                            a future completes: its callback
      <---------- resume (or timeout) ----  puts the waiter on the ready queue

A future made inside a task (:class:`WorkerFuture`) parks when waited on; so does a
plain concurrent.futures.Future passed to :func:`concurrent.futures.wait`, which the
worker patches (worker.py) to come here.  Waiting outside a task -- another thread of
the worker -- blocks that thread as usual; waiting in the hub itself (a done-callback)
is refused, since the hub must never block.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import concurrent.futures._base as cfb
import heapq
import itertools
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import greenlet

from .. import seeding
from ..client.future import Holder, ScoopFuture

__all__ = ["DONE_STATES", "Runner", "Waits", "WorkerFuture", "condition_met"]

TIMEOUT = object()  # what a waiter is resumed with when its time is up
DONE_STATES = (cfb.CANCELLED_AND_NOTIFIED, cfb.FINISHED)


class Runner(greenlet.greenlet):  # type: ignore[misc]
    """The greenlet a task runs on (re-used for the next task when it ends)."""

    task: Any = None  # the task it runs (worker._Task)
    waiter: _Waiter | None = None  # what it is parked on, while it is


WaitUntil = Callable[[Iterable[cf.Future[Any]], "float | None", str], None]


class WorkerFuture(ScoopFuture):
    """A future made inside a task: waiting on it parks the task, not the worker.

    ``holder`` is told when it is cancelled; ``wait_until`` is the worker's (Waits.wait_until).
    """

    def __init__(self, holder: Holder, tid: int, wait_until: WaitUntil) -> None:
        super().__init__(holder, tid)
        self._wait_until = wait_until

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            self._wait_until([self], timeout, cf.FIRST_COMPLETED)
        return super().result(timeout=0 if not self.done() else None)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            self._wait_until([self], timeout, cf.FIRST_COMPLETED)
        return super().exception(timeout=0 if not self.done() else None)


def condition_met(fs: list[cf.Future[Any]], return_when: str) -> bool:
    done = [f for f in fs if f._state in DONE_STATES]
    if return_when == cf.ALL_COMPLETED:
        return len(done) == len(fs)
    if return_when == cf.FIRST_COMPLETED:
        return bool(done) or not fs
    if return_when == cf.FIRST_EXCEPTION:
        if len(done) == len(fs):
            return True
        return any(not f.cancelled() and f.exception(0) is not None for f in done)
    raise ValueError(f"Invalid return condition: {return_when!r}")


class _Waiter:
    """A task's greenlet, parked or about to park, and what wakes it.

    It may be woken before it parks (a future it watches completes meanwhile,
    in this thread) or after it stopped waiting: the hub resumes it only while
    it is parked on this waiter (see Worker._run_some).
    """

    __slots__ = ("active", "cancelled", "done", "g", "scheduled")

    def __init__(self, g: greenlet.greenlet) -> None:
        self.g = g
        self.active = True
        self.scheduled = False  # (self, ...) is in the hub's ready queue: at most one entry
        self.cancelled: type[BaseException] | None = None  # raised in the task when it resumes
        self.done: collections.deque[cf.Future[Any]] = collections.deque()


Ready = collections.deque[tuple[_Waiter, Any]]


class Waits:
    """The parked tasks of one worker: what wakes them (futures, timers, fds) and how they resume.

    ``ready`` is the hub's queue of parked tasks to resume, as (waiter, value): an
    entry is stale, and skipped, unless its task is still parked on that very
    waiter.  ``later(fn)`` has the hub call ``fn`` (from another thread).
    """

    def __init__(self, hub: greenlet.greenlet, ready: Ready, later: Callable[[Callable[[], None]], None]):
        self.hub = hub
        self.ready = ready
        self.later = later
        self.thread_id = threading.get_ident()
        self.timers: list[tuple[float, int, _Waiter]] = []  # a heap: (when, seq, waiter), earliest first
        self._timer_seq = itertools.count()
        self.fd_waits: dict[_Waiter, list[tuple[int, int]]] = {}  # tasks parked in wait_fds

    def in_task(self) -> bool:
        """True in a task's greenlet (in the worker's main thread, not in its hub)."""
        return threading.get_ident() == self.thread_id and greenlet.getcurrent() is not self.hub

    def wait_until(self, fs: Iterable[cf.Future[Any]], timeout: float | None, return_when: str) -> None:
        """Park the calling task until ``return_when`` holds for ``fs`` or time runs out."""
        fs = list(fs)
        if not self.in_task():
            if threading.get_ident() == self.thread_id:
                raise RuntimeError(
                    "cannot wait for a future in a done-callback on a scoopexec worker (callbacks run "
                    "in the worker's hub, which must not block): wait in the task itself instead"
                )
            cfb.wait(fs, timeout, return_when)  # another thread: block it, the hub will resolve
            return
        if condition_met(fs, return_when):
            return
        waiter = _Waiter(greenlet.getcurrent())
        self._watch(waiter, fs)
        if timeout is not None:
            self._add_timer(waiter, timeout)
        try:
            while not condition_met(fs, return_when):
                if self._park(waiter) is TIMEOUT:
                    break
        finally:
            waiter.active = False

    def iter_completed(self, fs: Iterable[cf.Future[Any]], timeout: float | None) -> Iterator[cf.Future[Any]]:
        """as_completed() for a task: parks between futures."""
        fs = set(fs)
        end = None if timeout is None else time.monotonic() + timeout
        finished = [f for f in fs if f._state in DONE_STATES]
        pending = fs - set(finished)
        yield from finished
        if not pending:
            return
        waiter = _Waiter(greenlet.getcurrent())
        self._watch(waiter, pending)
        if end is not None:
            self._add_timer(waiter, end - time.monotonic())
        try:
            while pending:
                while waiter.done:
                    f = waiter.done.popleft()
                    if f in pending:
                        pending.discard(f)
                        yield f
                if not pending:
                    return
                if self._park(waiter) is TIMEOUT or (end is not None and time.monotonic() >= end):
                    if waiter.done:
                        continue
                    raise cf.TimeoutError(f"{len(pending)} (of {len(fs)}) futures unfinished")
        finally:
            waiter.active = False

    def fire_timers(self) -> None:
        """Resume the waiters whose time is up (the hub calls this every turn)."""
        timers = self.timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, waiter = heapq.heappop(timers)
            if waiter.active and not waiter.scheduled:
                waiter.scheduled = True
                self.ready.append((waiter, TIMEOUT))

    def cancel(self, r: Runner, exc: type[BaseException] = cf.CancelledError) -> bool:
        """The broker cancelled the task ``r`` runs: if it is parked, it unwinds (CancelledError,
        or ``exc``: KeyboardInterrupt for worker/limits.py).  True if it was parked."""
        w = r.waiter
        if w is None or not w.active:
            return False
        # Through its waiter, so that it is resumed once, and never after it moved on.
        w.cancelled = exc
        if not w.scheduled:
            w.scheduled = True
            self.ready.append((w, None))
        return True

    def wait_fds(self, fds: Iterable[tuple[int, int]], timeout: float | None) -> None:
        """Park the calling task until one of ``fds`` (fd, poll event mask) is ready or ``timeout`` passes.

        What an event loop run by a task waits with (worker._TaskSelector): the
        hub polls these descriptors with its own, and runs other tasks meanwhile.
        """
        waiter = _Waiter(greenlet.getcurrent())
        self.fd_waits[waiter] = list(fds)
        if timeout is not None:
            self._add_timer(waiter, timeout)
        try:
            self._park(waiter)
        finally:
            waiter.active = False
            del self.fd_waits[waiter]

    def poll(self, masks: dict[int, int], timeout: int) -> list[tuple[int, int]]:
        """Poll ``masks`` (the hub's descriptors) and those of parked tasks (wait_fds); wake the
        tasks whose are ready; return the events."""
        masks = dict(masks)
        owners: dict[int, list[_Waiter]] = {}
        for waiter, fds in self.fd_waits.items():
            if waiter.active and not waiter.scheduled:
                for fd, mask in fds:
                    masks[fd] = masks.get(fd, 0) | mask
                    owners.setdefault(fd, []).append(waiter)
        poller = select.poll()
        for fd, mask in masks.items():
            poller.register(fd, mask)
        events = poller.poll(timeout)
        for fd, _ in events:
            for waiter in owners.get(fd, ()):
                if waiter.active and not waiter.scheduled:
                    waiter.scheduled = True
                    self.ready.append((waiter, None))
        return events

    def _watch(self, waiter: _Waiter, fs: Iterable[cf.Future[Any]]) -> None:
        def wake(f: cf.Future[Any]) -> None:
            if threading.get_ident() != self.thread_id:
                # Completed in another thread (the flusher, a user's): the hub's
                # queues and the waiter's flags are the hub's to change.
                self.later(lambda: wake(f))
            elif waiter.active:
                waiter.done.append(f)
                if not waiter.scheduled:
                    waiter.scheduled = True
                    self.ready.append((waiter, None))

        for f in fs:
            f.add_done_callback(wake)

    def _add_timer(self, waiter: _Waiter, timeout: float) -> None:
        heapq.heappush(self.timers, (time.monotonic() + max(0.0, timeout), next(self._timer_seq), waiter))

    def _park(self, waiter: _Waiter) -> Any:
        waiter.scheduled = False
        g = waiter.g
        if not isinstance(g, Runner):
            raise RuntimeError(
                "a task can wait for futures only in its own greenlet, not in a greenlet it started"
            )
        g.waiter = waiter
        seeded = seeding.suspend()  # other tasks may draw from `random` while this one is parked
        try:
            value = self.hub.switch()
        finally:
            g.waiter = None
            seeding.resume(seeded)
        if waiter.cancelled is not None:
            waiter.active = False
            if waiter.cancelled is not cf.CancelledError:
                raise waiter.cancelled()
            raise cf.CancelledError("the broker cancelled this task (its result is no longer wanted)")
        return value
