"""The pool a task runs in, seen from inside the task: WorkerExecutor, and executor handles.

A ScoopExecutor captured by a task (or a WorkerExecutor passed to a sub-task) travels
as a handle to its pool: :func:`pool_handle` turns it back into the pool of the process
that unpickles it -- a WorkerExecutor on a worker of that pool, the ScoopExecutor itself
in the client that owns it (pools.py), an error anywhere else.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

from .. import pools
from ..mapping import MapMixin
from ..wire import serialize
from .worker import Worker, current_worker

__all__ = ["WorkerExecutor", "pool_handle"]


class WorkerExecutor(MapMixin, cf.Executor):
    """The pool a task runs in, seen from inside the task (what a captured executor becomes)."""

    _map_keeps_executor = True  # a throw-away handle: map() must keep it alive

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        # The task this handle was made in: its sub-tasks belong to that task's
        # client even when submitted later from a done-callback or a thread.
        task = worker.current if worker.in_task() else None
        self._parent = task.btid if task is not None else None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Submit a sub-task to the pool this task runs in."""
        return self._worker.subtasks.submit(fn, args, kwargs, self._parent)

    def _encode_fn(self, fn: Callable[..., Any], each: bool = False) -> Any:
        return serialize.encode_function(fn, repeats=True, each=each)  # (as MapMixin's)

    def _submit_encoded(
        self,
        fn_frame: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        what: str = "",
        item: int = -1,
        chunk: bool = False,
    ) -> cf.Future[Any]:
        subtasks = self._worker.subtasks
        return subtasks.submit_encoded(fn_frame, args, kwargs, self._parent, what, item, chunk)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """A task cannot shut its own pool down; this does nothing."""

    @property
    def pool_id(self) -> str:
        """The pool this task runs in (ScoopExecutor.pool_id of the client that created it)."""
        return self._worker.pool_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (pool_handle, (self._worker.pool_id,))

    def __repr__(self) -> str:
        return f"<WorkerExecutor pool={self._worker.pool_id} worker={self._worker.name}>"


def pool_handle(pool_id: str) -> Any:
    """The executor of pool ``pool_id`` here (what a pickled executor becomes when unpickled)."""
    w = current_worker()
    if w is not None:
        if w.pool_id and pool_id != w.pool_id:
            raise RuntimeError(
                f"this task received an executor of pool {pool_id}, but runs in pool {w.pool_id}; "
                "a task can only submit to the pool it runs in"
            )
        return WorkerExecutor(w)
    ex = pools.find(pool_id)
    if ex is None:
        raise RuntimeError(
            f"the scoopexec pool {pool_id} is not reachable from this process: an executor only "
            "travels to the tasks of its own pool; pass data, not the executor, anywhere else"
        )
    return ex
