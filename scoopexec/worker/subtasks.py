"""A worker as a client of its broker: the sub-tasks its tasks submit, and their results.

A task calls ``scoopexec.submit`` (or ``map``, or ``submit`` on a captured executor);
the sub-task's frames join the outbox's SUBMIT batch, its future (a WorkerFuture, which
parks the task when waited on) waits here for the RESULTS.  Submissions from other
threads of the worker are handed to the hub, which alone touches the outbox's order.

The outcomes are taken off the socket under the worker's lock and set on their futures
once it is released (:meth:`SubTasks.deliver`): setting one runs its done-callbacks,
user and library code (joblib's takes its Parallel's lock, which a task may hold while
it submits), and unpickling a result is user code too.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..client.future import settle
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
            owner = parent or 0
            hub.later(lambda: submits.append(((tid, owner, len(frames)), frames)))
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
            settle(fut, status, body)
