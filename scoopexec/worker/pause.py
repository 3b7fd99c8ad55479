"""How a worker's flusher thread waits while a long task runs: on events, not on a clock.

The flusher (worker.py) keeps a worker responsive while one task runs for long: what
the task prints goes out, tasks the broker recalls go back, sub-task results are
delivered.  It used to look every 50 ms (after a first 2 ms and a doubling), so a task
of one second shared its process with about 40 wake-ups of another thread, each one
taking the GIL from the task (issue 17: "the worker machinery must take no CPU or GIL
time from running tasks").  Now, once nothing waits to be sent, it sleeps in poll() on
what can give it work:

* the channel to the broker (a message: RECALL, sub-task results, TASKS to keep);
* :class:`Alarm`'s pipe, written by ``set()`` while the flusher sleeps: a new slice
  (the hub switched to a task), or output, a log record or a sub-task the task made.

and wakes at the latest after QUIET_WAIT.  While something waits to be sent (a
sub-task batched in the outbox, say) it keeps the old clock: FLUSH_AFTER doubling up
to BUSY_WAIT.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable

from ..wire.framing import WakePipe

__all__ = ["BUSY_WAIT", "QUIET_WAIT", "Alarm"]

BUSY_WAIT = 0.05  # s at most between looks while something waits to be sent
QUIET_WAIT = 1.0  # s at most between looks while nothing does (a safety net: events wake it)


class Alarm(threading.Event):
    """The flusher's "a slice started" event, which also ends its quiet sleep (:meth:`pause`)."""

    def __init__(self) -> None:
        super().__init__()
        self.pipe = WakePipe()
        self.sleeping = False
        self.count = 0  # set() calls so far: what happened since a mark

    def set(self) -> None:
        self.count += 1
        super().set()
        if self.sleeping:  # one write per wake-up at most (WakePipe.wake), none on busy paths
            self.pipe.wake()

    def ended(self) -> None:
        """The slice ended (the hub's thread): a flusher asleep in poll() stops watching it.

        Else it would sleep on the channel until QUIET_WAIT, waking for every message the
        idle hub reads anyway, and for the next task's: two wake-ups where one does.
        """
        if self.sleeping:
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
            if unread or waiting():
                time.sleep(delay)
                return min(delay * 2, BUSY_WAIT)
            p = select.poll()
            p.register(fd, select.POLLIN)
            p.register(self.pipe.fd, select.POLLIN)
            if any(f == self.pipe.fd for f, _ in p.poll(int(QUIET_WAIT * 1000))):
                self.pipe.drain()
            return delay
        finally:
            self.sleeping = False
