"""A worker as a client of its broker: the sub-tasks its tasks submit, and their results.

A task calls ``scoopexec.submit`` (or ``map``, or ``submit`` on a captured executor);
the sub-task's frames join the outbox's SUBMIT batch, its future (a WorkerFuture, which
parks the task when waited on) waits here for the RESULTS.  Submissions from other
threads of the worker are handed to the hub, which alone touches the outbox's order.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import MessageTooLargeError, SerializationError
from ..wire import protocol as P
from ..wire import serialize
from .channels import Outbox
from .waiting import WorkerFuture

__all__ = ["SubTasks"]

FLUSH_EVERY = 64  # submissions that make the hub send at once
FLUSH_IDLE = 0.0002  # s since the last send after which one submission is sent at once


class _Hub(Protocol):
    thread_id: int
    outbox: Outbox
    max_message_size: int
    lock: threading.RLock

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

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], parent: int | None = None
    ) -> WorkerFuture:
        """Submit a sub-task.  ``parent``: the broker id of the task it belongs to
        (default: the running task), which decides its client's set-up and shares."""
        try:
            fn_frame: bytes | None = serialize.encode_function(fn)
            error: SerializationError | None = None
        except SerializationError as exc:
            fn_frame, error = None, exc
        return self.submit_encoded(fn_frame, args, kwargs, parent, error)

    def submit_encoded(
        self,
        fn_frame: bytes | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent: int | None = None,
        error: SerializationError | None = None,
    ) -> WorkerFuture:
        """Submit a sub-task whose function is already a frame (map() encodes it once)."""
        hub = self._hub
        tid = next(self._tids)
        fut = WorkerFuture(self, tid, hub.wait_until)
        try:
            if error is not None:
                raise error
            frames = [fn_frame, *serialize.encode_args(args, kwargs)]
            big = serialize.oversized(frames, hub.max_message_size)
            if big:
                raise MessageTooLargeError(
                    f"the task needs a {big}-byte message, more than the pool's "
                    f"max_message_size={hub.max_message_size}"
                )
        except SerializationError as exc:
            fut.set_exception(exc)
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
        return fut

    def cancelled(self, tid: int) -> None:
        """A sub-task's future was cancelled: tell the broker (from the hub's thread)."""
        if self.futures.pop(tid, None) is not None:
            cancels = self._hub.outbox.cancels
            if threading.get_ident() == self._hub.thread_id:
                cancels.append(tid)
            else:
                self._hub.later(lambda: cancels.append(tid))

    def on_results(self, msg: P.Message) -> None:
        """RESULTS: resolve the sub-tasks' futures."""
        futures = self.futures
        for (tid, status, _), body in msg.parts():
            fut = futures.pop(tid, None)
            if fut is None or fut.done():
                continue
            ok, value = serialize.decode_outcome(status, body)
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
