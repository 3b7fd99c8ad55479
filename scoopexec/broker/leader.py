"""A thread waiting on a result of the embedded broker reads that result itself.

Without it, a result crosses two threads of the client: the worker's RESULT wakes the
broker's thread (asleep in its poll), which resolves the future and wakes the waiting
thread (a Condition), which then waits for the GIL until the broker's thread is back in
its poll.  A short task's round trip spends a good part of its time in those two
wake-ups and that GIL hand-over (issue 17).

So ``future.result()`` first tries to lead (ScoopFuture.result -> Session.lead -> here):
when its task is on a local worker's link, the waiting thread takes that link out of the
loop's poll set (ports.Poll.pause: an epoll, whose changes apply to a wait in progress,
so only one thread wakes for the link) and waits on it itself, holding no lock.  What
the link brings goes through the loop's own turn (Broker.take_turn, under the broker's
lock, as dispatch_local_now does for submissions); the results for this client are then
handed over by this thread, outside the lock, as the loop's thread would
(InProcessPort.deliver).  The loop goes on meanwhile with everything else (other
workers, submissions, ticks), and ignores a readiness of the paused link that it saw
before the pause (LinkPort: the leader reads it).

Before it sleeps on the link, the thread looks at it without sleeping for a moment
(wire/spin.py), while leads have been short (SPIN_IF_WITHIN): a short task's answer is
often there within that moment, and a thread that slept for it would pay a wake-up, on a
VM a long one.

The waiting thread waits on its future as any thread does, and the loop's thread
resolves it, when the task is not on a local link (queued, remote worker, or not the
client's latest: another thread's), when another thread leads on that link already, and
after LEAD_FOR: a task that runs longer costs its waiting thread one extra wake-up.  A
future completed otherwise meanwhile (cancelled, pool broken) is seen at the latest then.
"""

from __future__ import annotations

import math
import select
import time
from typing import TYPE_CHECKING, Any

from ..wire.spin import Spin
from .ledger import LOCAL

if TYPE_CHECKING:
    from .loop import Broker

__all__ = ["LEAD_FOR", "Leader"]

LEAD_FOR = 0.01  # s a waiting thread reads for itself, at most, before leaving it to the loop
# A longer read is cut into polls this long, each followed by a look at the future and the loop:
# a link shut down and closed by the loop while this thread polls it does not always wake that
# poll (seen on Linux 6.18 under load: the poll slept to its timeout, then saw POLLNVAL).
POLL_SLICE = 0.1
# A lead busy-waits (wire/spin.py) only while leads have lasted at most this many busy waits'
# length: a task of a millisecond or more would make most of them miss.
SPIN_IF_WITHIN = 3


class Leader:
    """Lets threads waiting on the embedded broker's results read them (see the module docstring)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._polls: dict[int, Any] = {}  # a link's descriptor -> a poll over it
        self._spin = Spin()  # (shared by the threads that lead: its back-off is a hint, not state)
        self._typical = 0.0  # s a lead lasts, smoothed: busy waits only while leads are short

    def wait(self, fut: Any, tid: int, timeout: float | None) -> float | None:
        """Read for ``fut`` (the future of the client's task ``tid``, not done) while that helps;
        return what is left of ``timeout`` (None: no limit) for the caller's own wait."""
        b = self.broker
        owner, last, _ = b.ledger.last_assigned  # (read without the lock: one tuple, a hint)
        if (last != tid or owner != LOCAL) and not (b.local is not None and b.local.outbox):
            return timeout  # not the latest task handed to a worker (a map's, another thread's)
        start = time.monotonic()
        limit = left = LEAD_FOR if timeout is None else min(timeout, LEAD_FOR)
        spin = self._typical <= SPIN_IF_WITHIN * self._spin.limit
        while left > 0 and self._read(tid, left, spin) and not fut.done():
            left = limit - (time.monotonic() - start)
        waited = time.monotonic() - start
        self._typical += 0.25 * (waited - self._typical)  # (a hint: threads may race on it)
        if timeout is None:
            return None
        return max(0.0, timeout - waited)

    def _read(self, tid: int, left: float, spin: bool) -> bool:
        """Wait on the link of the worker that holds ``tid``, at most ``left`` s, and take in what
        it brings; False if this thread cannot (the caller then waits on its future)."""
        b = self.broker
        lock = b.lock
        if not lock.acquire(True, left):  # the loop holds it for a turn at most
            return False
        fd = None
        try:
            if b.stopping:
                return False  # the loop is closing the sockets (without the lock): touch none
            fd = self._link_fd(tid)
            if fd is None and b.local is not None and b.local.outbox:
                # Its submitter found the loop at work: dispatch it here, as the loop would.
                b.take_turn([])
                fd = self._link_fd(tid)
            if fd is not None and not b.poll.pause(fd):
                fd = None  # another thread reads that link
            if fd is None:
                self._after_turn()
        finally:
            lock.release()
        if fd is None:
            self._deliver()
            return False
        ready: list[tuple[int, int]] = []
        p = self._polls.get(fd) or self._poll_of(fd)
        try:
            ms = max(1, math.ceil(min(left, POLL_SLICE) * 1000))
            ready = self._spin.poll(p, ms) if spin else p.poll(ms)
        finally:
            with lock:
                stopping = b.stopping
                try:
                    if ready and not stopping:
                        b.take_turn(ready)
                finally:
                    b.poll.resume(fd)
                if not stopping:
                    router = b.router
                    if router.backlog or b.links.dead or router.input_waiting():
                        b.wakeup.wake()  # (as _after_turn, inline: this is every round trip's path)
        local = b.local
        if local is not None and local.pending:
            # (outside the lock: done-callbacks are user code)  Another thread handing
            # messages over has this one's result too: wait on the future, not the link.
            return local.deliver()
        return True

    def _after_turn(self) -> None:
        """After a turn taken here (hold the lock): wake the loop for what its poll would not see."""
        b = self.broker
        router = b.router
        if router.backlog or b.links.dead or router.input_waiting():
            b.wakeup.wake()

    def _deliver(self) -> None:
        """Hand this client what the turn brought for it (outside the lock: callbacks are user code)."""
        local = self.broker.local
        if local is not None and local.pending:
            local.deliver()

    def _link_fd(self, tid: int) -> int | None:
        """The descriptor of the local link to the worker holding this client's task, if known:
        the latest task handed to a worker (a round trip's), else None."""
        b = self.broker
        owner, last, btid = b.ledger.last_assigned
        task = b.ledger.tasks.get(btid) if last == tid and owner == LOCAL else None
        if task is None or task.worker is None:
            return None
        link = b.links.links.get(task.worker)
        return link.fd if link is not None else None

    def _poll_of(self, fd: int) -> Any:
        p = self._polls.get(fd)
        if p is None:
            if len(self._polls) > 4096:  # links come and go: keep this bounded
                self._polls.clear()
            p = self._polls[fd] = select.poll()
            p.register(fd, select.POLLIN)
        return p
