"""A worker as a client of its broker: the sub-tasks its tasks submit, and their results.

A task calls ``scoopexec.submit`` (or ``map``, or ``submit`` on a captured executor);
the sub-task's frames join the outbox's SUBMIT batch, its future (a WorkerFuture, which
parks the task when waited on) waits here for the RESULTS.  Submissions from other
threads of the worker are handed to the hub, which alone touches the outbox's order.

The outcomes are taken off the socket under the worker's lock and set on their futures
once it is released (:meth:`SubTasks.deliver`): setting one runs its done-callbacks,
user and library code (joblib's takes its Parallel's lock, which a task may hold while
it submits), and unpickling a result is user code too.

cancel() of a sub-task asks the broker (CANCEL with CONFIRM: only it knows whether a worker
has the task; client/future.py, Answer) and waits for the answer, CANCEL_WAIT s at most.
A task waiting so blocks its worker's thread: nothing else starts here meanwhile (a task
started would hold the thread for as long as it runs); the flusher thread reads what comes,
the answer included, as while any task runs.  Another thread of the process waits too; the
hub (a done-callback) and the flusher cannot, as they read the answers: they only ask.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..client.future import Answer, ScoopFuture, cancel_answered, settle, start, wait_answers
from ..errors import MessageTooLargeError, SerializationError
from ..wire import protocol as P
from ..wire import serialize
from .channels import Outbox
from .pause import Alarm
from .waiting import WorkerFuture

__all__ = ["SubTasks"]

FLUSH_EVERY = 64  # submissions that make the hub send at once
FLUSH_IDLE = 0.0002  # s since the last send after which one submission is sent at once


class _Hub(Protocol):
    thread_id: int
    outbox: Outbox
    max_message_size: int
    lock: threading.RLock
    alarm: Alarm

    def current_task(self) -> int: ...
    def in_task(self) -> bool: ...
    def nudge(self) -> None: ...
    def later(self, fn: Callable[[], None]) -> None: ...
    def flush(self) -> None: ...
    def wait_until(self, fs: Any, timeout: float | None, return_when: str) -> None: ...


class SubTasks:
    """The sub-tasks submitted on one worker that have no result yet (see the module docstring)."""

    def __init__(self, hub: _Hub) -> None:
        self._hub = hub
        self.futures: dict[int, WorkerFuture] = {}
        self._tids = itertools.count(1)
        # Outcomes taken off the socket under the worker's lock, to be set once it is released.
        self.deliveries: list[tuple[WorkerFuture, int, Sequence[Any]]] = []
        # Submissions from other threads, for the outbox (take_foreign), in their order.
        self.foreign: collections.deque[tuple[tuple[int, int, int], list[Any]]] = collections.deque()

    confirms_cancels = True  # (client/future.py, Holder)
    no_wait = 0  # the flusher thread's id: it reads the answers, so it cannot wait for one

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], parent: int | None = None
    ) -> WorkerFuture:
        """Submit a sub-task.  ``parent``: the broker id of the task it belongs to
        (default: the running task), which decides its client's set-up and shares."""
        try:
            frames: list[Any] | None = serialize.encode_call(fn, args, kwargs)
            error: SerializationError | None = None
        except SerializationError as exc:
            frames, error = None, exc
        return self._submit(frames, error, parent)

    def submit_encoded(
        self,
        fn_frame: bytes,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent: int | None = None,
        what: str = "",
        item: int = -1,
        chunk: bool = False,
    ) -> WorkerFuture:
        """Submit a sub-task whose function is already a frame (map() encodes it once; ``what``,
        ``item``, ``chunk``: which function and items, for error messages)."""
        try:
            args_frames = serialize.encode_args(args, kwargs, None, item, chunk, what)
            frames: list[Any] | None = [fn_frame, *args_frames]
            error: SerializationError | None = None
        except SerializationError as exc:
            frames, error = None, exc
        return self._submit(frames, error, parent)

    def _submit(
        self, frames: list[Any] | None, error: SerializationError | None, parent: int | None
    ) -> WorkerFuture:
        hub = self._hub
        tid = next(self._tids)
        fut = WorkerFuture(self, tid, hub.wait_until)
        if frames is not None:
            big = serialize.oversized(frames, hub.max_message_size)
            if big:
                error = MessageTooLargeError(
                    f"the task needs a {big}-byte message, more than the pool's "
                    f"max_message_size={hub.max_message_size}"
                )
        if frames is None or error is not None:
            fut.set_exception(error)
            return fut
        self.futures[tid] = fut
        submits = hub.outbox.submits
        if threading.get_ident() != hub.thread_id:
            self.foreign.append(((tid, parent or 0, len(frames)), frames))
            hub.later(self.take_foreign)
            return fut
        if parent is None:
            parent = hub.current_task()
        submits.append(((tid, parent, len(frames)), frames))
        if len(submits) >= FLUSH_EVERY or time.monotonic() - hub.outbox.last_flush > FLUSH_IDLE:
            with hub.lock:
                hub.flush()
        elif len(submits) == 1:  # the first of a batch: once per batch, not per submission
            hub.alarm.poke()  # in a long task that runs on without waiting, the flusher sends it
        return fut

    def lead(self, fut: Any, timeout: float | None) -> float | None:
        """A task waits by parking (WorkerFuture.result): nothing to read here first."""
        return timeout

    def cancelled(self, tid: int) -> None:
        """A sub-task's future was cancelled: tell the broker (from the hub's thread)."""
        if self.futures.pop(tid, None) is not None:
            cancels = self._hub.outbox.cancels
            if threading.get_ident() == self._hub.thread_id:
                cancels.append(tid)
            else:
                self._hub.later(lambda: cancels.append(tid))

    def take_foreign(self) -> None:
        """Move the submissions of other threads into the outbox, in order (hold the lock)."""
        foreign, submits = self.foreign, self._hub.outbox.submits
        while foreign:
            submits.append(foreign.popleft())

    def confirm_cancels(self, futs: list[ScoopFuture], wait: bool) -> None:
        """cancel() of sub-tasks not known to run (see the module docstring): one CONFIRM for them
        all, sent now (their submissions first); the caller waits for the answer if it can."""
        hub = self._hub
        answers: set[Answer] = set()
        ask: list[ScoopFuture] = []
        with hub.lock:
            for f in futs:
                if self.futures.get(f.tid) is f and not (f.running() or f.done()):
                    if f.asked is None:
                        ask.append(f)
                    else:  # another thread asked already: its answer is this one's
                        answers.add(f.asked)
            if ask:
                answer = Answer(len(ask))
                for f in ask:
                    f.asked = answer
                answers.add(answer)
                self.take_foreign()
                hub.outbox.confirms.extend(f.tid for f in ask)
                hub.flush()
        if ask:
            hub.nudge()  # the flusher (a task runs) or the hub reads the answer
        me = threading.get_ident()
        if wait and answers and (hub.in_task() if me == hub.thread_id else me != self.no_wait):
            wait_answers(answers)

    def on_started(self, msg: P.Message) -> None:
        """STARTED: the broker's answer to a cancel() -- a worker has these sub-tasks (hold the lock)."""
        for (tid,) in msg.entries:
            fut = self.futures.get(tid)
            if fut is not None and fut.asked is not None:
                start(fut)
                answer, fut.asked = fut.asked, None
                answer.one()

    def on_results(self, msg: P.Message) -> None:
        """RESULTS: the sub-tasks' outcomes, for deliver() (holding the worker's lock here)."""
        futures, deliveries = self.futures, self.deliveries
        for (tid, status, _), body in msg.parts():
            fut = futures.pop(tid, None)
            if fut is not None:
                deliveries.append((fut, status, body))

    def take(self) -> list[tuple[WorkerFuture, int, Sequence[Any]]]:
        """The outcomes received so far (hold the worker's lock); deliver them once it is released."""
        batch, self.deliveries = self.deliveries, []
        return batch

    @staticmethod
    def deliver(batch: list[tuple[WorkerFuture, int, Sequence[Any]]]) -> None:
        """Set sub-task outcomes on their futures.  Hold no scoopexec lock (see the module docstring)."""
        for fut, status, body in batch:
            answer = fut.asked
            if answer is None:
                settle(fut, status, body)
                continue
            fut.asked = None  # the answer to its cancel(): CANCELLED, dropped; else it ran
            if status == P.CANCELLED:
                cancel_answered(fut)
            else:
                settle(fut, status, body)
            answer.one()
