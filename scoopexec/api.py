"""Module-level submit / map / wait / as_completed: the pool you are in.

In a client, "the pool" is the innermost ``with ScoopExecutor(...)`` block,
or else a default local pool started on first use and stopped at exit.
Inside a task on a worker, it is the pool the task runs in, and waiting
parks the task instead of blocking the worker.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import serialize
from .errors import SerializationError
from .mapping import MapMixin
from .worker import Worker, current_worker
from .worker import as_completed as _task_as_completed
from .worker import wait as _task_wait

_default: Any = None
_default_lock = threading.Lock()


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
        return self._worker.submit(fn, args, kwargs, self._parent)

    def _encode_fn(self, fn: Callable[..., Any]) -> Any:
        return serialize._dumps_fn_checked(fn)

    def _submit_encoded(
        self,
        fn_frame: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        what: str = "",
        item: int = -1,
        chunk: bool = False,
    ) -> cf.Future[Any]:
        return self._worker.submit_encoded(fn_frame, args, kwargs, self._parent, what, item, chunk)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """A task cannot shut its own pool down; this does nothing."""

    @property
    def pool_id(self) -> str:
        """The pool this task runs in (ScoopExecutor.pool_id of the client that created it)."""
        return self._worker.pool_id

    def __reduce__(self) -> tuple[Any, ...]:
        from .executor import _pool_handle

        return (_pool_handle, (self._worker.pool_id,))

    def __repr__(self) -> str:
        return f"<WorkerExecutor pool={self._worker.pool_id} worker={self._worker.name}>"


def current_executor(start_default: bool = True) -> cf.Executor | None:
    """The executor that module-level submit()/map() use here."""
    w = current_worker()
    if w is not None:
        return WorkerExecutor(w)
    from .executor import active_executor

    ex = active_executor()
    if ex is not None:
        return ex
    if not start_default:
        return None
    return default_executor()


def default_executor() -> cf.Executor:
    """A local pool with one worker per CPU, started on first use and stopped at exit."""
    global _default
    from .executor import ScoopExecutor

    with _default_lock:
        if _default is None or _default._shutdown or _default._broken:
            _default = ScoopExecutor()
        return _default  # type: ignore[no-any-return]


def submit(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
    """Submit ``fn(*args, **kwargs)`` to the current pool (see the module docstring)."""
    ex = current_executor()
    assert ex is not None
    return ex.submit(fn, *args, **kwargs)


def map(
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    chunksize: int = 1,
    buffersize: int | None = None,
    unordered: bool = False,
    progress: bool | str | None = None,
) -> Iterator[Any]:
    """Executor.map on the current pool (``progress=True`` draws a progress bar)."""
    ex = current_executor()
    assert ex is not None
    return ex.map(  # type: ignore[call-arg]
        fn, *iterables, timeout=timeout, chunksize=chunksize, buffersize=buffersize, unordered=unordered,
        progress=progress,
    )


def shared(name: str) -> Any:
    """A value shared with ``ScoopExecutor.share(name, value)``: in a task, or in the client."""
    w = current_worker()
    if w is not None and w.current is not None:
        return w.shared(name)
    ex = current_executor(start_default=False)
    if ex is None or not hasattr(ex, "shared"):
        raise KeyError(name)
    return ex.shared(name)


def wait(
    fs: Iterable[cf.Future[Any]], timeout: float | None = None, return_when: str = cf.ALL_COMPLETED
) -> cf._base.DoneAndNotDoneFutures[Any]:
    """concurrent.futures.wait that, inside a task, parks the task instead of its worker."""
    return _task_wait(fs, timeout, return_when)


def as_completed(fs: Iterable[cf.Future[Any]], timeout: float | None = None) -> Iterator[cf.Future[Any]]:
    """concurrent.futures.as_completed that, inside a task, parks the task instead of its worker."""
    return _task_as_completed(fs, timeout)


__all__ = [
    "SerializationError",
    "WorkerExecutor",
    "as_completed",
    "current_executor",
    "default_executor",
    "map",
    "shared",
    "submit",
    "wait",
]
