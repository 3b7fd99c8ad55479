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
the task, not the worker (worker.py's task-aware selector): sub-tasks it
awaits run on the same worker if need be, and several tasks of one worker
may each run a loop of their own.

``amap`` submits chunks of items to the executor and yields each result when
its chunk comes back; it never blocks the event loop.  Leaving the ``async
for`` early (or cancelling the consumer) cancels what has not started.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .mapping import ChunkError, run_chunk

if TYPE_CHECKING:
    import asyncio

__all__ = ["amap"]


def _remote_cause(text: str) -> BaseException:
    # The type scoopexec (and ProcessPoolExecutor) give a remote traceback everywhere else.
    import concurrent.futures.process as cfp

    kind = getattr(cfp, "_RemoteTraceback", None)
    if kind is None:  # pragma: no cover - every CPython we support has it
        return RuntimeError(text)
    return kind(f'\n"""\n{text}"""')  # type: ignore[no-any-return]


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
    if not iterables:
        raise TypeError("amap() needs at least one iterable")
    if not isinstance(chunksize, int) or isinstance(chunksize, bool):
        raise TypeError("chunksize must be an integer")
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1.")
    if buffersize is not None and (not isinstance(buffersize, int) or isinstance(buffersize, bool)):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")
    if executor is None:
        from . import current_executor

        executor = current_executor()
        assert executor is not None
    ex = executor
    import asyncio  # here: `import scoopexec` (in every worker too) need not import asyncio

    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[tuple[int, cf.Future[Any]]] = asyncio.Queue()

    def arrive(index: int) -> Callable[[cf.Future[Any]], None]:
        def callback(fut: cf.Future[Any]) -> None:  # in the thread that completed the future
            try:
                loop.call_soon_threadsafe(arrived.put_nowait, (index, fut))
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

        return callback

    items = zip(*iterables, strict=False)  # stop at the shortest, as map() does
    source: Iterator[tuple[int, list[tuple[Any, ...]]]] = enumerate(_chunks(items, chunksize))
    pending: dict[int, cf.Future[Any]] = {}

    def submit_next() -> bool:
        item = next(source, None)
        if item is None:
            return False
        index, chunk = item
        if chunksize == 1:
            fut = ex.submit(fn, *chunk[0])
        else:
            fut = ex.submit(run_chunk, fn, chunk)
        pending[index] = fut
        fut.add_done_callback(arrive(index))
        return True

    try:
        if buffersize is None:
            while submit_next():
                pass
        else:
            for _ in range(buffersize):
                if not submit_next():
                    break
        held: dict[int, cf.Future[Any]] = {}  # ordered: completed ahead of their turn
        turn = 0
        while pending or held:
            if ordered and turn in held:
                fut = held.pop(turn)
                turn += 1
            else:
                index, fut = await arrived.get()
                del pending[index]
                if ordered and index != turn:
                    held[index] = fut
                    continue
                turn += 1
            if buffersize is not None:
                submit_next()
            value = fut.result()  # done: raises the task's error at its item
            del fut
            if chunksize == 1:
                yield value
                continue
            if type(value) is ChunkError:
                for v in value.done:
                    yield v
                exc = value.exc
                exc.__cause__ = _remote_cause(value.tb)
                raise exc
            for v in value:
                yield v
            del value
    finally:
        for fut in pending.values():
            fut.cancel()


def _chunks(items: Iterator[tuple[Any, ...]], n: int) -> Iterator[list[tuple[Any, ...]]]:
    while True:
        chunk = list(itertools.islice(items, n))
        if not chunk:
            return
        yield chunk
