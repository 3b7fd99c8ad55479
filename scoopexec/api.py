"""Module-level submit / map / wait / as_completed: the pool you are in.

In a client, "the pool" is the innermost ``with ScoopExecutor(...)`` block,
or else a default local pool started on first use and stopped at exit.
Inside a task on a worker, it is the pool the task runs in, and waiting
parks the task instead of blocking the worker.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import pools
from .client.executor import ScoopExecutor
from .errors import SerializationError
from .worker.pool import WorkerExecutor
from .worker.worker import as_completed as _task_as_completed
from .worker.worker import current_worker
from .worker.worker import wait as _task_wait

# The default pool: started on first use when no pool is current, stopped at exit (and by
# futures.shutdown()).  This module owns it: default_executor(), default_pool(),
# shutdown_default().
_default: ScoopExecutor | None = None
_default_lock = threading.Lock()


def current_executor(start_default: bool = True) -> cf.Executor | None:
    """The executor that module-level submit()/map() use here."""
    w = current_worker()
    if w is not None:
        return WorkerExecutor(w)
    ex = active_executor()
    if ex is not None:
        return ex
    if not start_default:
        return None
    return default_executor()


def active_executor() -> ScoopExecutor | None:
    """The innermost executor entered with ``with`` in this process (or the launcher's pool), if any."""
    ex: ScoopExecutor | None = pools.innermost()
    return ex


def default_executor() -> ScoopExecutor:
    """A local pool with one worker per CPU, started on first use and stopped at exit."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = ScoopExecutor()
        return _default


def default_pool() -> ScoopExecutor | None:
    """The default pool if it was started and still takes work, else None (nothing is started)."""
    ex = _default
    return ex if ex is not None and not ex.closed else None


def client_pool(start: bool) -> ScoopExecutor | None:
    """In a client: the current pool, else the default one (started first if ``start``)."""
    ex = active_executor() or default_pool()
    if ex is None and start:
        ex = default_executor()
    return ex


def shutdown_default(wait: bool = True) -> None:
    """Stop the default pool, if it is the one in use (no ``with`` pool is current); it starts
    again on next use."""
    ex = _default
    if ex is not None and active_executor() is None:
        ex.shutdown(wait=wait)


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
    seed: int | tuple[int, ...] | None = None,
    journal: str | os.PathLike[str] | None = None,
) -> Iterator[Any]:
    """Executor.map on the current pool (``progress=True`` draws a progress bar; ``seed=`` and
    ``journal=`` as ScoopExecutor.map)."""
    ex = current_executor()
    assert ex is not None
    return ex.map(  # type: ignore[call-arg]
        fn, *iterables, timeout=timeout, chunksize=chunksize, buffersize=buffersize, unordered=unordered,
        progress=progress, seed=seed, journal=journal,
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
    "active_executor",
    "as_completed",
    "client_pool",
    "current_executor",
    "default_executor",
    "default_pool",
    "map",
    "shared",
    "shutdown_default",
    "submit",
    "wait",
]
