"""asyncio and scoopexec: an async map, and how event loops meet the pool.

::

    async for r in scoopexec.amap(simulate, params):       # results as they complete
        ...
    r = await loop.run_in_executor(ex, simulate, p)          # one call
    r = await asyncio.wrap_future(ex.submit(simulate, p))    # the same, from a future

A scoopexec future is a ``concurrent.futures.Future`` completed by another
thread (the client's I/O thread, or a worker's hub), so ``wrap_future`` and
``run_in_executor`` work from any event loop in any thread.  Inside a task on
a worker, an event loop the task runs (``asyncio.run(...)``) waits by parking
the task, not the worker (worker/worker.py's task-aware selector): sub-tasks it
awaits run on the same worker if need be, and several tasks of one worker
may each run a loop of their own.

``amap`` submits chunks of items to the executor and yields each result when
its chunk comes back; it never blocks the event loop.  Leaving the ``async
for`` early (or cancelling the consumer) cancels what has not started.  The
work is mapping.amap_on's, which every executor's ``amap`` method uses too.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import Any

from .api import current_executor
from .mapping import amap_on, check_amap

__all__ = ["amap"]


async def amap(
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    executor: cf.Executor | None = None,
    chunksize: int = 1,
    buffersize: int | None = None,
    ordered: bool = False,
) -> AsyncIterator[Any]:
    """Run ``fn`` over the items of ``iterables`` on the pool; yield each result as it comes.

    ``async for r in scoopexec.amap(fn, xs)`` (or ``ex.amap(fn, xs)``).
    Results come in the order they complete, or with ``ordered=True`` in the
    order of the items.  ``executor`` defaults to the pool you are in
    (``scoopexec.current_executor()``).  ``chunksize`` items travel per task;
    ``buffersize`` bounds how many tasks are in flight, and then the iterables
    are read lazily (otherwise all at once, as ``Executor.map`` does).  An
    item that raised raises its error when it is reached, with the remote
    traceback as ``__cause__``; the results before it are yielded first.
    Leaving the loop early, or cancelling the coroutine that iterates,
    cancels the tasks that have not started.
    """
    check_amap(iterables, chunksize, buffersize)
    if executor is None:
        executor = current_executor()
        assert executor is not None
    results = amap_on(executor, fn, *iterables, chunksize=chunksize, buffersize=buffersize, ordered=ordered)
    assert isinstance(results, AsyncGenerator)
    try:
        async for value in results:
            yield value
    finally:
        await results.aclose()  # cancels what has not started, now rather than when collected
