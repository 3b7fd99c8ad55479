"""Who gets which task: functions of the ledger, no sockets.

* :func:`dispatch` hands queued tasks to workers with credit, as evenly as the queue
  allows (no worker takes more than its share of what is queued while others wait), and
  keeps a sub-task off its parent's worker while another worker is idle: the parent
  may be parked there, and a child queued behind it would hold it up.
* :func:`mark_running` tells owners which queued tasks count as running before any
  worker has them (as many as idle and starting workers), as ProcessPoolExecutor's call
  queue does, so that a pool still starting behaves like one that has started.
* :func:`recall` picks the workers to ask for their unstarted tasks back (RECALL) when
  nothing is queued and a worker is idle (or a client leaving after an error wants them
  back, to drop them): a worker keeps a task or two in hand while it runs one, and those
  are better run on the idle one.  A worker is asked once: not again until it was sent a
  task or sent a result since.  Asking again with nothing changed cannot help (a worker
  whose tasks have all started, e.g. parked parents, has nothing to give, and one that is
  stuck does not read), and it cost a message every 20 ms per such worker for as long as
  another worker stayed idle.
* A task that lost a worker before (its function may end its process: a crash, os._exit, the
  OOM killer) goes last in its batch, and nothing more goes to its worker while that worker
  holds it (``WorkerState.hold``), HOLD_FOR seconds at most: the worker keeps its credit and its
  place in line, and is passed over until the task is done, handed back or lost.  A task lost
  with it must not be lost with it again (tests/test_limits.py's poison task).  At most: the
  task may park, waiting for sub-tasks that only that worker can run (a pool of one worker);
  the broker cannot tell, and its loop looks again at every tick.
* Workers with credit wait in ``ledger.ready`` once each; those that still have credit
  after their turn go back to the front, in turn: the next single task goes to the worker
  that just ran one (warm; a round trip is faster there).

``claim(tasks)`` is asked once per task, a batch at a time (the tasks about to go to one
worker), before their owners first learn they are running: it returns those of them their
owner no longer wants (an in-process client cancelled the future), which are dropped.  One
call per batch, not per task: an embedded client's futures are all marked running in one go.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Collection

from .ledger import Ledger, Task, WorkerState

__all__ = ["HOLD_FOR", "RECALL_EVERY", "dispatch", "mark_running", "recall", "recall_wait"]

RECALL_EVERY = 0.005  # s between looks for idle workers while others hold unstarted tasks
HOLD_FOR = 1.0  # s at most that a worker running a task that lost a worker before is passed over

Claim = Callable[[list[Task]], Collection[Task]]  # the tasks given, those not wanted


def dispatch(ledger: Ledger, claim: Claim) -> list[tuple[WorkerState, list[Task]]]:
    """Assign queued tasks to ready workers; return the batches to send, in order."""
    queue, ready, tasks, workers = ledger.queue, ledger.ready, ledger.tasks, ledger.workers
    out: list[tuple[WorkerState, list[Task]]] = []
    now = time.monotonic()
    while queue and ready:
        share = max(1, math.ceil(len(queue) / len(ready)))
        moved = 0  # tasks taken off the queue this round: sent, or dropped as unwanted
        back: list[WorkerState] = []
        for _ in range(len(ready)):
            if not queue:
                break
            w = ready.popleft()
            w.in_ready = False
            if workers.get(w.key) is not w or w.credit <= 0:  # gone (a new one may have its key)
                continue
            if w.hold in w.assigned and now < w.hold_until:  # (the module docstring: it keeps its place)
                w.in_ready = True
                back.append(w)
                continue
            others: bool | None = None  # another worker idle? (asked when it matters)
            skipped: list[int] = []
            batch: list[Task] = []
            fresh: list[Task] = []  # not marked yet: their owners are asked (claim) first
            want = min(w.credit, share)
            while want and queue:
                btid = queue.popleft()
                task = tasks.get(btid)
                if task is None or task.worker is not None:
                    continue
                if task.src.parent:  # (Task.parent, without a property call per task)
                    parent = tasks.get(task.src.parent)
                    if others is None:
                        others = any(
                            o is not w and o.credit > 0 and not o.assigned and workers.get(o.key) is o
                            for o in itertools.chain(ready, back)
                        )
                    if others and parent is not None and parent.worker == w.key:
                        skipped.append(btid)
                        continue
                if task.lost is None:  # not marked (a task lost with a worker was marked before)
                    fresh.append(task)
                batch.append(task)
                want -= 1
                if task.lost:  # it lost a worker before, and may end this one too: last
                    w.hold, w.hold_until, want = btid, now + HOLD_FOR, 0
            if skipped:
                queue.extendleft(reversed(skipped))
            moved += len(batch)
            if fresh and _mark(tasks, fresh, claim):  # some were cancelled while queued: dropped
                batch = [t for t in batch if t.btid in tasks]
            if batch:
                ledger.assign(w, batch)
                w.credit -= len(batch)
                out.append((w, batch))
            if w.credit > 0:
                w.in_ready = True
                back.append(w)
        ready.extendleft(reversed(back))
        if not moved:
            break  # every ready worker passed on what is queued: wait for input
    return out


def mark_running(ledger: Ledger, starting: int, claim: Claim) -> None:
    """Claim as many of the next queued tasks as there are idle workers plus ``starting`` ones."""
    free = sum(1 for w in ledger.workers.values() if not w.assigned) + starting
    if free <= 0:
        return
    tasks = ledger.tasks
    fresh: list[Task] = []
    for btid in list(itertools.islice(ledger.queue, 0, free + 16)):
        task = tasks.get(btid)
        if task is None or task.worker is not None:
            continue
        free -= 1
        if task.lost is None:  # not marked
            fresh.append(task)
        if not free:
            free = _mark(tasks, fresh, claim)  # each dropped task frees its place for the next
            if not free:
                return
            fresh = []
    if fresh:
        _mark(tasks, fresh, claim)


def _mark(tasks: dict[int, Task], fresh: list[Task], claim: Claim) -> int:
    """Ask the owners of ``fresh`` (claim): those still wanted are marked, the others dropped;
    returns how many were dropped."""
    unwanted = claim(fresh)
    for task in fresh:
        task.lost = ()  # marked (Task.marked, without a property call per task)
    for task in unwanted:
        del tasks[task.btid]
    return len(unwanted)


def recall_wait(ledger: Ledger, ms: int) -> int:
    """The loop's poll timeout ``ms``, cut to when a recall put off is due (``recall_wake``)."""
    if ledger.recall_wake and not ledger.queue and ledger.ready:
        return max(0, min(ms, math.ceil((ledger.recall_wake - time.monotonic()) * 1000)))
    return ms


def recall(ledger: Ledger, now: float) -> list[WorkerState]:
    """The workers to send RECALL to now (see the module docstring); at most every RECALL_EVERY s.

    A look put off by that pace (or by a worker's own, RECALL_EVERY * 4) sets
    ``ledger.recall_wake``, the time the loop must look again even if no input comes: a burst
    of submissions all landing within the pace on a worker that had credit left from short
    tasks, and then quiet, left another worker idle until the first finished one (50 ms of
    sleeps, a whole task: issue 17's "long tasks never wait behind a busy worker while
    another is idle")."""
    if now < ledger.next_recall:
        ledger.recall_wake = ledger.next_recall
        return []
    ledger.next_recall = now + RECALL_EVERY
    ledger.recall_wake = 0.0
    workers = ledger.workers
    if not ledger.closing and not any(
        w.credit > 0 and not w.assigned and workers.get(w.key) is w for w in ledger.ready
    ):
        return []
    out = []
    for w in workers.values():
        # One task assigned is the one it runs (or a parked one): nothing to give.
        if len(w.assigned) >= 2:
            mark = (w.sent, w.done)
            if mark == w.recall_mark:
                continue  # asked already, and nothing moved there since
            due = w.recalled + RECALL_EVERY * 4
            if now < due:
                ledger.recall_wake = min(ledger.recall_wake or due, due)
                continue
            w.recalled, w.recall_mark = now, mark
            out.append(w)
    return out
