"""SCOOP's ``scoop.futures`` API, on scoopexec.

Programs written for SCOOP run unchanged under ``python -m scoopexec
script.py``, where ``from scoop import futures`` resolves to this module; in
normal code it is ``scoopexec.futures``.  Every function works on "the pool
you are in" (see :mod:`scoopexec.api`): inside a task, the pool the task runs
in (waiting parks the task); in a client, the innermost ``with
ScoopExecutor()`` block, the launcher's pool, or else a default local pool
started on first use and stopped at exit.

Differences from SCOOP, all deliberate:

* every ``timeout`` is honoured (SCOOP ignores them); a negative timeout, as
  SCOOP's ``wait`` accepts, means no limit;
* ``mapScan`` returns the running reduction ``[r0, op(r0, r1), ...]``, and
  ``mapReduce`` and ``mapScan`` fold in order in the caller, so the reduction
  need not be associative or commutative;
* keyword arguments ``map``, ``map_as_completed``, ``mapReduce`` and
  ``mapScan`` do not know (``parallelLevel=2`` in SCOOP's own examples) are
  ignored, as SCOOP ignores them, but not silently: a ``UserWarning`` names
  them;
* ``shutdown()`` waits for what was submitted through this module and stops
  the default pool if that is the one in use (it restarts on next use); it
  never stops the launcher's pool or a ``with`` block's executor.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import api, mainmodule
from .worker.worker import current_worker

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "CancelledError",
    "Future",
    "TimeoutError",
    "as_completed",
    "map",
    "mapReduce",
    "mapScan",
    "map_as_completed",
    "shutdown",
    "submit",
    "wait",
]

FIRST_COMPLETED = cf.FIRST_COMPLETED
FIRST_EXCEPTION = cf.FIRST_EXCEPTION
ALL_COMPLETED = cf.ALL_COMPLETED
Future = cf.Future  # every future scoopexec returns is one (callbacks, result(timeout), cancel())
TimeoutError = cf.TimeoutError  # SCOOP's name (the builtin, since Python 3.11)
CancelledError = cf.CancelledError

_submitted: weakref.WeakSet[cf.Future[Any]] = weakref.WeakSet()
_submitted_lock = threading.Lock()


def _pool() -> cf.Executor:
    w = current_worker()
    if w is not None and w.importing_main:
        raise mainmodule.guard_error("submits work (scoop.futures)")
    ex = api.current_executor()
    assert ex is not None
    return ex


def _ignore(function: str, kwargs: dict[str, Any]) -> None:
    """SCOOP's ``**kwargs``: accepted and unused.  Say so, once per call site."""
    if kwargs:
        names = ", ".join(sorted(kwargs))
        warnings.warn(
            f"futures.{function}() ignores the keyword argument{'s' if len(kwargs) > 1 else ''} "
            f"{names}, as SCOOP does",
            UserWarning,
            stacklevel=3,
        )


def _keep_alive(owner: Any, it: Iterator[Any]) -> Iterator[Any]:
    # A task's pool handle is made per call: the map iterator must keep it.
    try:
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
        del owner


def _map(
    func: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    chunksize: int | str,
    buffersize: int | None,
    *,
    unordered: bool,
    **extra: Any,
) -> Iterator[Any]:
    if not callable(func):
        raise TypeError(f"{func!r} is not callable")
    ex = _pool()
    it: Iterator[Any] = ex.map(  # type: ignore[call-arg]
        func, *iterables, timeout=timeout, chunksize=chunksize, buffersize=buffersize, unordered=unordered,  # type: ignore[arg-type]
        **extra,
    )
    if isinstance(ex, api.WorkerExecutor):
        return _keep_alive(ex, it)
    return it


def map(  # SCOOP's name
    func: Callable[..., Any],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    chunksize: int | str = 1,
    buffersize: int | None = None,
    seed: int | tuple[int, ...] | None = None,
    journal: str | os.PathLike[str] | None = None,
    **ignored: Any,
) -> Iterator[Any]:
    """Like the built-in ``map``, each call a task on the pool; results in order, lazily.

    Every item is submitted at once (or ``buffersize`` at a time); the
    iterator yields each result when it and those before it are done.  A
    call's exception is raised at its item.  ``timeout`` (seconds, from this
    call) raises ``TimeoutError`` at the first result not ready in time.
    ``chunksize`` items travel per task.  ``seed`` and ``journal``: see
    ``ScoopExecutor.map`` (scoopexec's, not SCOOP's).  Other keyword arguments are
    ignored, as in SCOOP (with a warning).
    """
    _ignore("map", ignored)
    extra = {k: v for k, v in (("seed", seed), ("journal", journal)) if v is not None}
    return _map(func, iterables, timeout, chunksize, buffersize, unordered=False, **extra)


def map_as_completed(
    func: Callable[..., Any],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    chunksize: int = 1,
    buffersize: int | None = None,
    **ignored: Any,
) -> Iterator[Any]:
    """Like :func:`map`, but results come in the order the calls complete."""
    _ignore("map_as_completed", ignored)
    return _map(func, iterables, timeout, chunksize, buffersize, unordered=True)


def submit(func: Callable[..., Any], *args: Any, **kwargs: Any) -> cf.Future[Any]:
    """Run ``func(*args, **kwargs)`` as a task; return its Future."""
    if not callable(func):
        raise TypeError(f"{func!r} is not callable")
    fut = _pool().submit(func, *args, **kwargs)
    if current_worker() is None:
        with _submitted_lock:
            _submitted.add(fut)
    return fut


def _no_limit(timeout: float | None) -> float | None:
    return None if timeout is None or timeout < 0 else timeout


def wait(
    fs: Iterable[cf.Future[Any]], timeout: float | None = None, return_when: str = ALL_COMPLETED
) -> cf._base.DoneAndNotDoneFutures[Any]:
    """Wait for futures, as ``concurrent.futures.wait``; returns ``(done, not_done)``.

    ``timeout`` None or negative means no limit.  Inside a task, waiting parks
    the task and its worker runs other tasks meanwhile.
    """
    return api.wait(fs, _no_limit(timeout), return_when)


def as_completed(fs: Iterable[cf.Future[Any]], timeout: float | None = None) -> Iterator[cf.Future[Any]]:
    """Yield futures as they complete; ``TimeoutError`` if ``timeout`` seconds pass first."""
    return api.as_completed(fs, _no_limit(timeout))


def _folded(
    mapFunc: Callable[..., Any],
    reductionOp: Callable[[Any, Any], Any],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    chunksize: int,
) -> Iterator[Any]:
    if not callable(reductionOp):
        raise TypeError(f"the reduction {reductionOp!r} is not callable")
    results = _map(mapFunc, iterables, timeout, chunksize, None, unordered=False)
    try:
        yield from itertools.accumulate(results, reductionOp)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # an error or a timeout cancels the calls not started yet


def mapReduce(
    mapFunc: Callable[..., Any],
    reductionOp: Callable[[Any, Any], Any],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    chunksize: int = 1,
    **ignored: Any,
) -> Any:
    """``functools.reduce(reductionOp, map(mapFunc, *iterables))``, the map on the pool.

    The results are folded in order as they arrive, in the calling process
    (or task).  ``TypeError`` if the iterables are empty.
    """
    _ignore("mapReduce", ignored)
    sentinel = object()
    result = sentinel
    for result in _folded(mapFunc, reductionOp, iterables, timeout, chunksize):  # noqa: B007
        pass
    if result is sentinel:
        raise TypeError("mapReduce() of empty iterables: nothing to reduce")
    return result


def mapScan(
    mapFunc: Callable[..., Any],
    reductionOp: Callable[[Any, Any], Any],
    *iterables: Iterable[Any],
    timeout: float | None = None,
    chunksize: int = 1,
    **ignored: Any,
) -> list[Any]:
    """Every intermediate value of :func:`mapReduce`: ``[r0, op(r0, r1), op(op(r0, r1), r2), ...]``.

    (``itertools.accumulate`` of the mapped results; ``[]`` for empty iterables.)
    """
    _ignore("mapScan", ignored)
    return list(_folded(mapFunc, reductionOp, iterables, timeout, chunksize))


def shutdown(wait: bool = True) -> None:
    """Wait for the futures submitted through this module; stop the default pool if in use.

    Inside a task this does nothing.  The launcher's pool and executors of
    ``with`` blocks are left running (their owners stop them); the default
    local pool is stopped and starts again if used later.
    """
    if current_worker() is not None:
        return
    with _submitted_lock:
        pending = [f for f in _submitted if not f.done()]
    if wait and pending:
        cf.wait(pending)
    api.shutdown_default(wait=wait)
