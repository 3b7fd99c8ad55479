"""A worker's flusher thread, and how it waits while a long task runs: on events, not on a clock.

The flusher keeps a worker responsive while one task runs for long: what the task prints
goes out, tasks the broker recalls go back, sub-task results are delivered
(Worker.relieve, holding the worker's lock, which the hub releases while a task runs).
It used to look every 50 ms (after a first 2 ms and a doubling), so a task of one second
shared its process with about 40 wake-ups of another thread, each one taking the GIL from
the task (issue 17: "the worker machinery must take no CPU or GIL time from running
tasks").  Now, once nothing waits to be sent, it sleeps in poll() on what can give it work:

* the channel to the broker (a message: RECALL, sub-task results, TASKS to keep);
* :class:`Alarm`'s pipe, written by ``set()`` while the flusher sleeps: a new slice
  (the hub switched to a task), or output or a log record the task made; and by
  ``poke()`` for the first sub-task batched since the last send (once per batch: the
  flusher then sends after FLUSH_AFTER, with what the task batched meanwhile).

and wakes at the latest after QUIET_WAIT.  While something waits to be sent (a
sub-task batched in the outbox, say) it keeps the old clock: FLUSH_AFTER doubling up
to BUSY_WAIT.

Through back-to-back slices of a function known to run long (longer than FLUSH_AFTER,
from its past runs) the flusher keeps watching: the hub neither wakes it when such a
slice ends nor when the next one starts, only when it goes to sleep on the channel
itself (``rest``) or a short slice starts.  A worker running 50 ms tasks back to back,
each next one sent by the broker while the last runs, then costs its flusher one wake-up
per task (the next task arriving) instead of four (the slice's start, the look after
FLUSH_AFTER, the next task, the slice's end).  Other slices keep the look after
FLUSH_AFTER: a short one ends first, usually, and the hub reads what came meanwhile
itself (nested sub-tasks bring many messages, each of which would wake a flusher that
watched the channel during short slices: that slowed them, when tried).  Over ZeroMQ
the flusher is still woken at each slice's start: its descriptor signals a change,
which a send by the hub between slices can take, so a sleeping flusher could miss a
message.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..wire.framing import WakePipe

__all__ = ["BUSY_WAIT", "FLUSH_AFTER", "QUIET_WAIT", "Alarm", "flusher"]

FLUSH_AFTER = 0.002  # s a task may run before its worker's waiting results and output go out
BUSY_WAIT = 0.05  # s at most between looks while something waits to be sent
QUIET_WAIT = 1.0  # s at most between looks while nothing does (a safety net: events wake it)

log = logging.getLogger("scoopexec.worker")


class Alarm(threading.Event):
    """The slice running now (the hub changes it, holding the worker's lock), and the
    flusher's "a slice started" event, which also ends its quiet sleep (:meth:`pause`)."""

    def __init__(self, level: bool = False) -> None:
        super().__init__()
        # The channel's descriptor is readable while input waits (a socketpair), not only on
        # a change (ZeroMQ's, whose signal a send by the hub between slices can take).
        self.level = level
        self.pipe = WakePipe()
        self.sleeping = False  # the flusher is in pause()
        self.quiet = False  # ... about to sleep, or asleep, in its quiet poll: what poke() wakes
        self.count = 0  # set() calls so far: what happened since a mark
        self.slice = 0  # slices run so far
        self.in_task = False  # a task's slice runs now (the hub let go of the lock)
        self.long = False  # ... of a function known to run longer than FLUSH_AFTER

    def set(self) -> None:
        self.count += 1
        super().set()
        if self.sleeping:  # one write per wake-up at most (WakePipe.wake), none on busy paths
            self.pipe.wake()

    def enter(self, long: bool, pending: bool) -> None:
        """A slice starts (the hub, before it lets go of the lock).  ``pending``: something
        waits to be sent.  A long slice after a long one, with nothing waiting, leaves a
        flusher asleep in pause() as it is: it watches the channel already."""
        self.slice += 1
        self.in_task = True
        quiet = long and self.long and self.level and self.sleeping and not pending
        self.long = long
        if not quiet and not self.is_set():  # if this slice runs long, the flusher keeps it responsive
            self.set()  # (set() alone takes the Event's lock and notifies, even when set)

    def leave(self) -> None:
        """The slice ended (the hub, holding the lock again).  After a short one, a flusher
        asleep in pause() stops watching the channel; after a long one it watches on, for the
        next long slice (see the module docstring), until :meth:`rest`."""
        self.in_task = False
        if not (self.long and self.level):
            self.rest()

    def rest(self) -> None:
        """The hub sleeps on the channel itself (or a short slice ended): a flusher asleep
        in pause() stops watching it.

        Else it would sleep on the channel until QUIET_WAIT, waking for every message the
        idle hub reads anyway.
        """
        if self.sleeping:
            self.pipe.wake()

    def poke(self) -> None:
        """A task batched the first sub-task since the last send (subtasks.py): a flusher asleep
        in its quiet poll wakes, and sends the batch FLUSH_AFTER later (pause()).  Nothing else:
        a flusher that looks on a clock sends it at its next look, and waking it at once for
        each new batch sent the submissions of a task that submits in a loop one or two a
        message (5,000 in 2,700-4,400 messages where about 1,100 do)."""
        if self.in_task and self.quiet:
            self.quiet = False
            self.pipe.wake()

    def pause(self, fd: int, mark: int, unread: bool, waiting: Callable[[], bool], delay: float) -> float:
        """Wait for work while a task runs; return the next ``delay`` for a busy pause.

        ``mark``: :attr:`count` before the caller last looked at its work (a set() since,
        a new slice or output, means look again at once).  ``unread`` (the channel said
        it has input) or ``waiting()`` (something waits to be sent): sleep ``delay``
        and double it.  Else sleep in poll() on ``fd`` (the channel to the broker) and
        on the pipe that :meth:`set` writes, QUIET_WAIT at most.
        """
        self.sleeping = True
        try:
            if self.count != mark:  # (looked at after `sleeping` is set: a set() before is seen)
                return delay
            self.quiet = True  # (before waiting() is looked at: a poke from now on is seen)
            if unread or waiting():
                self.quiet = False
                time.sleep(delay)
                return min(delay * 2, BUSY_WAIT)
            p = select.poll()
            p.register(fd, select.POLLIN)
            p.register(self.pipe.fd, select.POLLIN)
            if any(f == self.pipe.fd for f, _ in p.poll(int(QUIET_WAIT * 1000))):
                self.pipe.drain()
                if waiting():  # poked (or output): what follows joins the batch, as after a slice's start
                    self.quiet = False
                    time.sleep(delay)
            return delay
        finally:
            self.sleeping = False
            self.quiet = False


class _Channel(Protocol):
    fd: int

    def readable(self) -> bool: ...


class _Outbox(Protocol):
    def waiting(self) -> bool: ...


class _SubTasks(Protocol):
    def take(self) -> Sequence[Any]: ...
    def deliver(self, batch: Any) -> None: ...


class _Hub(Protocol):
    lock: threading.RLock
    stopping: bool
    welcomed: bool
    chan: _Channel
    outbox: _Outbox
    subtasks: _SubTasks

    def relieve(self) -> None: ...


def flusher(alarm: Alarm, hub: _Hub) -> None:
    """The flusher thread: while a slice runs for more than FLUSH_AFTER, keep its worker
    responsive (see the module docstring and Worker.relieve).

    The hub releases `lock` while a task runs, and this thread takes it only then, so
    the socket is never used by two threads at once.
    """
    lock, chan, subtasks = hub.lock, hub.chan, hub.subtasks
    while not hub.stopping:
        alarm.wait()
        alarm.clear()
        seen = alarm.slice
        delay = FLUSH_AFTER
        time.sleep(delay)
        while alarm.in_task and (alarm.slice == seen or alarm.long) and not hub.stopping:
            failed, mark = None, alarm.count
            with lock:
                if alarm.slice != seen and alarm.long:
                    seen, delay = alarm.slice, FLUSH_AFTER  # the next long slice: watched on
                if not (alarm.in_task and alarm.slice == seen and hub.welcomed):
                    break
                try:
                    hub.relieve()
                except Exception as exc:  # pragma: no cover - must not end this thread
                    failed = exc
                batch, unread = subtasks.take(), chan.readable()
            if failed is not None:  # pragma: no cover - logging handlers are others' code
                log.error("the worker's flusher failed", exc_info=failed)
            if batch:
                subtasks.deliver(batch)  # a task polling done() sees them; see subtasks.py
            delay = alarm.pause(chan.fd, mark, unread, hub.outbox.waiting, delay)
