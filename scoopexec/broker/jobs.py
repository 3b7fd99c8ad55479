"""The broker's side of a pool that grows and shrinks with batch jobs (deploy/elastic.py).

The workers of one batch job carry its id in their tag (``PREFIX<job id>.<n>``, the
tag of a worker group).  Called in the broker's loop (Broker.call_soon), the functions
here tell the job pool what the broker sees per job, and drain the workers of jobs
that end soon or are no longer needed: they get no task any more (Ledger.drain) and
are told DRAIN, on which a worker RETURNs every task it has not started.  What a
draining worker runs finishes there; if its job ends first, the worker is lost and
its tasks are queued again like those of any lost worker.  The job pool cancels a
job once none of its workers holds a task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..wire import protocol as P
from .ledger import LOCAL

if TYPE_CHECKING:
    from .loop import Broker

__all__ = ["JobView", "break_pool", "job_of", "sync"]


@dataclass
class JobView:
    """What the broker holds, for the job pool: queued tasks, and per job its workers' loads."""

    queued: int = 0
    idle_workers: int = 0  # connected workers (of any kind) with nothing to do
    jobs: dict[str, list[int]] = field(default_factory=dict)  # job id -> tasks held by each worker


def job_of(tag: str, prefix: str) -> str | None:
    """The job id in a worker's tag (``PREFIX<id>`` or ``PREFIX<id>.<n>``), or None."""
    if not tag.startswith(prefix):
        return None
    return tag[len(prefix) :].split(".", 1)[0] or None


def sync(broker: Broker, prefix: str, drain: set[str] | frozenset[str]) -> JobView:
    """Drain the workers of the jobs in ``drain`` (once each) and say what the broker holds.

    Only in the broker's loop.
    """
    ledger = broker.ledger
    view = JobView(queued=len(ledger.queue))
    for w in ledger.workers.values():
        if not w.assigned and not w.draining:
            view.idle_workers += 1
        job = job_of(w.tag, prefix)
        if job is None:
            continue
        if job in drain and not w.draining:
            ledger.drain(w)
            broker.send(w.key, [P.header(P.DRAIN)])
        view.jobs.setdefault(job, []).append(len(w.assigned))
    return view


def break_pool(broker: Broker, message: str) -> None:
    """The pool's jobs cannot start workers: its own client's futures fail with ``message``."""
    c = broker.ledger.clients.get(LOCAL)
    if c is not None and not c.broken:
        broker.break_client(c, "broken", message)
