"""A worker's flusher thread: keeps the worker responsive while one task runs long, on events only.

While the hub (worker.py) runs a task's slice it holds nothing and reads nothing; if the
slice runs long, someone else must send what the worker has waiting (results held back to
batch them, output, log records, sub-tasks), hand queued tasks back when the broker
RECALLs them, read a CANCEL for the running task and deliver sub-task results.  That is
this thread.  It used to be woken at the start of every slice, to sleep 2 ms and look:
three to five wake-ups of a second thread per task, each taking the GIL and a core
(issue 17: 0.35 ms of CPU per 50 ms sleeping task on 64 workers, against 0.14 ms for
ProcessPoolExecutor's).  Now it sleeps until one of its events happens, and a task that
brings none costs it no wake-up at all:

* **input on the channel while a slice runs.**  The channel is in this thread's epoll,
  one-shot, from the hub's first turn with work (:meth:`Flusher.watch`, after the hub read
  the channel) until it goes to sleep on the channel itself (:meth:`Flusher.unwatch`):
  two epoll_ctl calls, no wake-up.  A message that arrives while a slice runs wakes this
  thread once; it reads at once if the slice is known to be long, else once the slice
  has run FLUSH_AFTER (a short one ends first, and the hub reads it itself);
* **something to send while a slice runs** (:meth:`Flusher.poke`: output, a log record, a
  batched sub-task; results the hub held back when the slice started): the same rule,
  then every FLUSH_AFTER, doubling up to BUSY_WAIT, while some of it still waits.

A ZeroMQ socket's descriptor signals changes, not input that waits (a call on the socket
can take the signal of a message it leaves queued), so over ZeroMQ this thread still looks
once in each slice: at once if it is known to be long, else after FLUSH_AFTER.

The slice state (:attr:`Flusher.slice`, ``in_slice``, ``started``, ``long``) and the epoll
are changed only by whoever holds the worker's lock: the hub between slices, this thread
while a slice runs.  Without epoll (not Linux) the channel is polled with select.poll, and
watch()/unwatch() wake this thread to poll the new set.
"""

from __future__ import annotations

import functools
import logging
import select
import threading
import time
from collections.abc import Callable

from ..wire.framing import WakePipe

__all__ = ["BUSY_WAIT", "FLUSH_AFTER", "Flusher"]

FLUSH_AFTER = 0.002  # s a slice may run before this thread sends and reads for its worker
BUSY_WAIT = 0.05  # s at most between looks while something waits to be sent during one slice

# What the worker does when this thread looks during a long slice (holding its lock): returns
# whether something still waits (unread input, output to send) and what to call once the lock
# is released (sub-task results to deliver: user code), or None.
Relieve = Callable[[], "tuple[bool, Callable[[], None] | None]"]

log = logging.getLogger("scoopexec.worker")

_HAS_EPOLL = hasattr(select, "epoll")
_ONESHOT = select.EPOLLIN | select.EPOLLONESHOT if _HAS_EPOLL else 0


class Flusher:
    """The flusher thread of one worker and the slice state it watches (see the module docstring)."""

    def __init__(
        self,
        lock: threading.RLock,
        fd: int,
        relieve: Relieve,
        pending: Callable[[], bool],
        level: bool = True,
    ) -> None:
        self.lock = lock
        self.fd = fd  # the channel to the broker
        # Readable while input waits (a socket).  A ZeroMQ socket's descriptor only signals
        # changes, and any call on the socket may take the signal of a message it leaves
        # queued: there, this thread looks once in every slice that runs long, as it did.
        self.level = level
        self._relieve = relieve
        self._pending = pending  # something waits in the outbox
        self.slice = 0  # slices run so far (the hub counts them)
        self.in_slice = False  # a task's slice runs now (the hub let go of the lock)
        self.started = 0.0  # when it started (time.perf_counter)
        self.long = False  # it is expected to run longer than FLUSH_AFTER
        self.watching = False  # the channel is in this thread's wait (one-shot: until it fires)
        self.reads = 0  # the hub's turns (each begins with reading the channel)
        self.idle = True  # the hub sleeps on the channel itself
        self.due = False  # something waits to be sent: look on a clock
        self.stopping = False
        self.pipe = WakePipe()
        self._ep = select.epoll() if _HAS_EPOLL else None
        if self._ep is not None:
            self._ep.register(self.pipe.fd, select.EPOLLIN)
            self._ep.register(fd, 0)
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ the hub's side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scoopexec-flusher", daemon=True)
        self._thread.start()

    def read(self) -> None:
        """The hub read the channel (hold the lock): a turn of its loop begins."""
        self.reads += 1
        self.idle = False

    def watch(self) -> None:
        """Have a message that arrives during a slice wake this thread (hold the lock: the hub,
        having read the channel, before its slices; this thread, having read it in one)."""
        self.watching = True
        if self._ep is not None:
            try:
                self._ep.modify(self.fd, _ONESHOT)
            except (OSError, ValueError):  # closed (the worker ending)
                pass
        else:
            self.pipe.wake()

    def rest(self) -> None:
        """The hub sleeps on the channel itself now (hold the lock)."""
        self.idle = True
        self.unwatch()

    def unwatch(self) -> None:
        """No slice runs until the hub's next turn (hold the lock): the hub reads the channel."""
        if self.watching:
            self.watching = False
            if self._ep is not None:
                try:
                    self._ep.modify(self.fd, 0)
                except (OSError, ValueError):
                    pass
            else:
                self.pipe.wake()

    def enter(self, started: float, long: bool, pending: bool) -> None:
        """A slice starts (hold the lock; the hub lets go of it next).  ``pending``: something
        waits to be sent that the hub did not send before it."""
        self.slice += 1
        self.started = started
        self.long = long
        self.in_slice = True
        if pending or not self.level:
            self.poke()

    def poke(self) -> None:
        """Something waits to be sent during a slice (call after queueing it; any thread)."""
        if not self.due:
            self.due = True
            self.pipe.wake()

    def stop(self) -> None:
        self.stopping = True
        self.pipe.wake()

    # --------------------------------------------------------------- the thread
    def _wait(self, timeout: float | None) -> bool:
        """Sleep until an event or ``timeout`` (None: no limit); True if the channel fired."""
        if self._ep is not None:
            ready = self._ep.poll(-1 if timeout is None else timeout)
        else:
            p = select.poll()
            p.register(self.pipe.fd, select.POLLIN)
            if self.watching:
                p.register(self.fd, select.POLLIN)
            ready = p.poll(None if timeout is None else int(timeout * 1000) + 1)
        fired = False
        for fd, _ in ready:
            if fd == self.pipe.fd:
                self.pipe.drain()
            elif fd == self.fd:
                fired = True
        return fired

    def _run(self) -> None:
        lock = self.lock
        timeout: float | None = None
        delay, seen = FLUSH_AFTER, -1
        fired, reads = False, 0  # input seen on the channel; the hub's turn then
        while True:
            chan = self._wait(timeout)
            after: Callable[[], None] | None = None
            with lock:
                if self.stopping:
                    break
                if chan:
                    self.watching = False  # one-shot: out of the wait until watch()
                    fired, reads = True, self.reads
                elif fired and (self.reads != reads or self.idle):
                    fired = False  # the hub read it since, or sleeps on the channel itself
                timeout = None
                if self.in_slice and (fired or self.due):
                    age = time.perf_counter() - self.started
                    if self.long or age >= FLUSH_AFTER:
                        if self.slice != seen:
                            seen, delay = self.slice, FLUSH_AFTER
                        self.due = False  # (before looking: a poke() meanwhile is seen)
                        try:
                            busy, after = self._relieve()
                        except Exception as exc:  # pragma: no cover - must not end this thread
                            busy, after = False, functools.partial(_failed, exc)
                        fired = False
                        self.watch()  # read: the next message wakes this thread again
                        if busy:
                            self.due = True
                            timeout, delay = delay, min(delay * 2, BUSY_WAIT)
                    else:
                        timeout = FLUSH_AFTER - age  # a short slice ends first, usually
                elif fired and not self.idle:
                    timeout = FLUSH_AFTER  # the hub, between slices, reads it at its next turn
                elif self.due:
                    self.due = False
                    if self._pending():
                        self.due = True
                        timeout = FLUSH_AFTER
            if after is not None:
                after()
        if self._ep is not None:
            self._ep.close()
        self.pipe.close()


def _failed(exc: Exception) -> None:  # pragma: no cover - logging handlers are others' code
    log.error("the worker's flusher failed", exc_info=exc)
