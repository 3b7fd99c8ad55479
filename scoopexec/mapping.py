"""Executor.map for every scoopexec executor: ordered or not, chunked, buffered.

The ordered path follows the standard library's (Python 3.14) contract:
every item is submitted at once unless ``buffersize`` bounds how many are in
flight, results come back lazily in order, an error surfaces at its own item,
``TimeoutError`` comes after the items that finished in time, and leaving the
iterator early cancels what has not started.  Chunks (``chunksize`` > 1)
report each item's outcome separately, so an error in a chunk still surfaces
at its item and the items before it are kept.

Waiting goes through ``Future.result`` and ``concurrent.futures.wait``, which
park a task's greenlet when map is called inside a task on a worker.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import itertools
import os
import time
import traceback
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures._base import FINISHED
from typing import Any

from . import autochunk
from .client.future import cancel_all
from .errors import SerializationError, TaskTimeoutError, remote_traceback
from .journal import MapPlan
from .progress import MapProgress
from .wire import serialize
from .wire.serialize import describe
from .worker import chunks
from .worker.limits import Limited, OnTimeout, TimeLimit, check_timeout

RAISE: Any = object()  # map(on_timeout=) not given: an item that timed out raises TaskTimeoutError
_NO_KWARGS: dict[str, Any] = {}  # a map's tasks' keyword arguments (read, never changed)


class ChunkError:
    """What a chunk returns when one of its items raised: the results before it, and the error."""

    __slots__ = ("done", "exc", "tb")

    def __init__(self, done: list[Any], exc: BaseException, tb: str) -> None:
        self.done = done
        self.exc = exc
        self.tb = tb

    def __reduce__(self) -> tuple[Any, ...]:
        return (ChunkError, (self.done, self.exc, self.tb))


def _chunk_shape(done: list[Any], error: tuple[BaseException, str] | None, seconds: float) -> Any:
    """A chunk runner's result (see chunks.Progress)."""
    return done if error is None else ChunkError(done, error[0], error[1])


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any] | ChunkError:
    out: list[Any] = []
    token = chunks.start(fn, out, len(chunk), _chunk_shape)  # what a worker ended meanwhile sends
    try:
        for args in chunk:
            out.append(fn(*args))
    except Exception as exc:
        return ChunkError(out, exc, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    finally:
        chunks.end(token)
    return out


def _starcall(fn: Callable[..., Any], args: Iterable[Any]) -> Any:
    """One item of a starmap: the item is the argument list."""
    return fn(*args)


def _run_chunk1(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any] | ChunkError:
    """A chunk of a single-iterable map: items, not 1-tuples.  Each item runs once: an item that
    raises ends the chunk, with the results before it (running the chunk again to find the item
    would repeat its items' side effects, and a timed-out item's time limit)."""
    out: list[Any] = []
    append = out.append
    token = chunks.start(fn, out, len(chunk), _chunk_shape)  # what a worker ended meanwhile sends
    try:
        for x in chunk:
            append(fn(x))
    except Exception as exc:
        return ChunkError(out, exc, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    finally:
        chunks.end(token)
    return out


class _Completions:
    """Futures in the order they complete, waitable from a thread or a task."""

    def __init__(self) -> None:
        self.done: collections.deque[cf.Future[Any]] = collections.deque()
        self.signal: cf.Future[None] | None = None

    def add(self, fut: cf.Future[Any]) -> None:
        fut.add_done_callback(self._on_done)

    def _on_done(self, fut: cf.Future[Any]) -> None:
        self.done.append(fut)
        s = self.signal
        if s is not None:
            try:
                s.set_result(None)
            except cf.InvalidStateError:
                pass

    def get(self, timeout: float | None) -> cf.Future[Any]:
        if not self.done:
            s = self.signal = cf.Future()
            if not self.done:  # re-check after publishing the signal
                cf.wait([s], timeout)
            self.signal = None
            if not self.done:
                raise cf.TimeoutError()
        return self.done.popleft()


class MapMixin:
    """map() for executors that offer ``_submit_encoded(fn_frame, args, kwargs)``."""

    _map_keeps_executor = False

    def _submit_is_ours(self) -> bool:
        """Whether ``submit`` is this package's own.  A subclass that overrides it (to bound,
        count or wrap what it is given) gets each task of a map through it, as
        ``Executor.map`` gives them to ``submit`` (ProcessPoolExecutor's chunks too); the
        package's own maps hand their tasks over pickled already (``_submit_encoded``)."""
        return _submit_is_ours(self)

    def _encode_fn(self, fn: Callable[..., Any], each: bool = False) -> Any:
        """A map's function frame (its chunks send it again and again); ``each``: made for each
        chunk (serialize.encode_function)."""
        return serialize.encode_function(fn, repeats=True, each=each)

    def _submit_encoded(
        self,
        fn_frame: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        what: str = "",
        item: int = -1,
        chunk: bool = False,
    ) -> cf.Future[Any]:  # pragma: no cover
        """Submit a task whose function is pickled already; ``item``, ``chunk``: which items of
        a map ``args`` hold (for error messages)."""
        raise NotImplementedError

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | str = 1,
        buffersize: int | None = None,
        unordered: bool = False,
        progress: bool | str | None = None,
        task_timeout: float | None = None,
        on_timeout: Any = RAISE,
        seed: int | tuple[int, ...] | None = None,
        journal: str | os.PathLike[str] | None = None,
    ) -> Iterator[Any]:
        """Like the built-in map, run on the pool; results come back lazily.

        ``chunksize`` items travel per task; ``chunksize="auto"`` sizes the
        chunks from the measured cost of the first items (a share of what
        remains, about 5 ms of work each or more, less at the end of a long
        map: see scoopexec/autochunk.py;
        unordered maps then go one item per task); ``buffersize`` bounds how many
        tasks are in flight (the iterables are then read lazily);
        ``unordered=True`` yields results in the order they complete.
        ``progress=True`` (or a label) draws a bar on stderr counting finished
        items, with the total and the rate (tqdm if installed, else a plain
        line); None takes the executor's default (``ScoopExecutor(progress=)``).
        ``task_timeout`` (seconds; default: the executor's) stops each call that runs
        longer (TaskTimeoutError); an item whose call timed out yields ``on_timeout``
        if given (e.g. a worst fitness), else raises TaskTimeoutError when reached.
        With ``journal=``, an item that timed out is not recorded (it runs again on a resume)
        unless it was in a chunk with ``on_timeout`` given: then its ``on_timeout`` value is.

        ``seed=S`` (an int >= 0, or a tuple of them) seeds ``random``, numpy's global
        generator when numpy is imported, and ``scoopexec.task_rng()`` for each item
        from S and the item's index, so results do not depend on the workers
        (seeding.py).  ``journal=PATH`` records each result in PATH as it arrives; the
        same map run again returns the recorded results and runs only the other items
        (journal.py).
        """
        limit = check_timeout(task_timeout) or getattr(self, "_task_timeout", None)
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        auto = chunksize == autochunk.AUTO and not unordered
        if chunksize == autochunk.AUTO:
            chunksize = 1
        elif not isinstance(chunksize, int) or isinstance(chunksize, bool):
            raise TypeError('chunksize must be an integer or "auto"')
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        zipped: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)  # stop at the shortest
        if progress is None:
            progress = getattr(self, "_progress", False)
        tracker = None
        if progress:
            label = progress if isinstance(progress, str) else getattr(fn, "__name__", "map")
            tracker = MapProgress(_known_length(iterables), label)
            zipped = _tally(zipped, tracker)
        plan = None
        if seed is not None or journal is not None:
            done_one = functools.partial(tracker.task_done, 1) if tracker is not None else None
            unchunk = _timed_values if auto else _chunk_values if chunksize > 1 else None
            plan = MapPlan(fn, seed, journal, done_one, unchunk)
            zipped = plan.items(zipped)
            plan.record_yielded = on_timeout is RAISE  # an on_timeout stand-in is not a result
        try:
            return self._map_planned(
                fn, iterables, zipped, tracker, plan, end_time, chunksize, buffersize, unordered,
                limit, on_timeout, auto,
            )
        except BaseException:
            if plan is not None:
                plan.close()
            raise

    def _map_planned(
        self,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        zipped: Iterator[tuple[Any, ...]],
        tracker: MapProgress | None,
        plan: MapPlan | None,
        end_time: float | None,
        chunksize: int,
        buffersize: int | None,
        unordered: bool,
        limit: float | None,
        on_timeout: Any,
        auto: bool = False,
    ) -> Iterator[Any]:
        user_fn = fn
        if plan is not None:
            fn = plan.call_fn
        if limit is not None:
            fn = TimeLimit(fn, limit)
        if on_timeout is not RAISE and (auto or chunksize > 1):
            fn = OnTimeout(fn, on_timeout)  # an item of a chunk: the others go on
        if auto:
            call_fn: Callable[..., Any] = functools.partial(autochunk.run_timed, fn)
            source: Iterator[tuple[Any, ...]] = zipped
        elif chunksize > 1:
            if len(iterables) == 1 and plan is None:
                call_fn = functools.partial(_run_chunk1, fn)
                items: Iterator[Any] = iter(iterables[0])
                if tracker is not None:
                    items = _tally(items, tracker)
                source = ((list(c),) for c in batched(items, chunksize))
            else:
                call_fn = functools.partial(_run_chunk, fn)
                source = ((list(c),) for c in batched(zipped, chunksize))
        else:
            call_fn, source = fn, zipped
        encode_error: Exception | None = None
        ours = self._submit_is_ours()
        # (for an overridden submit: each call is limited already, not the task: executor.submit)
        theirs = call_fn if ours or limit is None else Limited(call_fn)
        try:
            fn_frame = self._encode_fn(call_fn) if ours else None
        except Exception as exc:
            fn_frame, encode_error = None, exc
            if plan is not None:  # name the user's function, not the seeding wrapper
                try:
                    self._encode_fn(user_fn)
                except Exception as user_exc:
                    encode_error = user_exc
        # A client's executor must not be kept alive by a forgotten iterator; a
        # handle made inside a task (WorkerExecutor) is only alive through it.
        executor_ref: Callable[[], Any] = _strong(self) if self._map_keeps_executor else weakref.ref(self)
        what = describe(user_fn)
        next_item = 0  # index of the first item of the next task (for error messages)
        chunked = auto or chunksize > 1
        seeded = plan is not None and plan.entropy is not None  # items travel as (index, *args)

        def submit(args: tuple[Any, ...]) -> cf.Future[Any]:
            nonlocal next_item
            ex = executor_ref()
            if ex is None:
                raise RuntimeError("the executor was garbage-collected during map()")
            item = next_item if plan is None else plan.next_index()
            next_item += len(args[0]) if chunked else 1
            if encode_error is not None:
                f: cf.Future[Any] = cf.Future()
                f.set_exception(encode_error)
            else:
                if ours:
                    f = ex._submit_encoded(fn_frame, args, {}, what, item, chunked)
                else:
                    f = ex.submit(theirs, *args)
                if seeded and f.done() and not f.cancelled():
                    f = _unseeded_error(f, args, what, item, chunked)
                if chunked and on_timeout is not RAISE:  # its items after one that ended its worker
                    f = _Continued(f, functools.partial(resend, args[0], item), auto)
            if tracker is not None:
                f.add_done_callback(_Advance(tracker, len(args[0]) if chunked else 1))
            if plan is not None:
                plan.watch(f, len(args[0]) if chunked else 1)
            if on_timeout is not RAISE:
                # A task that timed out (of a chunk: its worker was ended) yields on_timeout per item.
                stand_in = [on_timeout] * len(args[0]) if chunked else on_timeout
                # (as long as its time limit, for the chunk sizes: not free)
                f = _Substitute(f, (limit or 0.0, stand_in, None) if auto else stand_in)
            return f

        def resend(chunk: list[Any], item: int, start: int) -> cf.Future[Any]:
            # (the rest of a chunk whose worker was ended: in a done-callback, on the thread that
            # settles futures, so never through an overridden submit, which may block there)
            nonlocal fn_frame
            ex = executor_ref()
            if ex is None:
                raise RuntimeError("the executor was garbage-collected during map()")
            if fn_frame is None:
                fn_frame = ex._encode_fn(call_fn)  # (its chunks went through submit: it pickles)
            f: cf.Future[Any] = ex._submit_encoded(fn_frame, (chunk[start:],), {}, what, item + start, True)
            return f

        if auto:
            gen = autochunk.ordered(
                user_fn, source, submit, workers=getattr(self, "_max_workers", None),
                total=_known_length(iterables), end_time=end_time, buffersize=buffersize,
                alive=lambda: executor_ref() is not None,
            )  # fmt: skip
            del self
            if plan is not None:
                gen = plan.merge(gen, unordered)
            return _with_progress(gen, tracker) if tracker is not None else gen

        send: Callable[[tuple[Any, ...]], cf.Future[Any]] = submit
        fast = ours and encode_error is None
        if fast and plan is None and tracker is None and on_timeout is RAISE and not chunked:

            def send(args: tuple[Any, ...]) -> cf.Future[Any]:  # submit(), less what this map has not
                nonlocal next_item
                ex = executor_ref()
                if ex is None:
                    raise RuntimeError("the executor was garbage-collected during map()")
                next_item += 1
                return ex._submit_encoded(fn_frame, args, _NO_KWARGS, what, next_item - 1)  # type: ignore[no-any-return]

        if buffersize:
            fs: collections.deque[cf.Future[Any]] = collections.deque(
                map(send, itertools.islice(source, buffersize))
            )
        else:
            fs = collections.deque(map(send, source))
        del self  # the iterator must not keep the executor alive

        if unordered:
            gen = _unordered(fs, source if buffersize else None, send, end_time)
        else:
            gen = _ordered(fs, source if buffersize else None, send, end_time, executor_ref)
        if chunked:
            gen = _unchunk(gen)
        if plan is not None:
            gen = plan.merge(gen, unordered)
        if tracker is not None:
            return _with_progress(gen, tracker)
        return gen

    def starmap(
        self, fn: Callable[..., Any], iterable: Iterable[Iterable[Any]], /, **options: Any
    ) -> Iterator[Any]:
        """map() where each item is the argument list: ``fn(*item)``, as itertools.starmap.

        Takes map()'s keyword arguments (timeout, chunksize, buffersize,
        unordered, progress).
        """
        if options.get("progress") is True:
            options["progress"] = getattr(fn, "__name__", "starmap")
        return self.map(functools.partial(_starcall, fn), iterable, **options)

    def amap(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        chunksize: int = 1,
        buffersize: int | None = None,
        ordered: bool = False,
    ) -> AsyncIterator[Any]:
        """map() for asyncio: ``async for r in ex.amap(fn, xs)`` yields results as they complete.

        ``ordered=True`` yields them in the order of the items instead; see
        ``scoopexec.amap``.  Waiting never blocks the event loop.
        """
        return amap_on(
            self, fn, *iterables, chunksize=chunksize, buffersize=buffersize, ordered=ordered  # type: ignore[arg-type]
        )


def _ordered(
    fs: collections.deque[cf.Future[Any]],
    refill: Iterator[tuple[Any, ...]] | None,
    submit: Callable[[tuple[Any, ...]], cf.Future[Any]],
    end_time: float | None,
    executor_ref: Callable[[], Any],
) -> Iterator[Any]:
    try:
        fs.reverse()
        while fs:
            if refill is not None and executor_ref() is not None:
                args = next(refill, None)
                if args is not None:
                    fs.appendleft(submit(args))
            # No local name for the future: a suspended generator must not
            # keep the result alive once it has been handed out.
            if end_time is None:
                yield _result_or_cancel(fs.pop())
            else:
                yield _result_or_cancel(fs.pop(), end_time - time.monotonic())
    finally:
        cancel_all(fs, wait=False)  # (nobody reads what cancel() says: the broker answers later)


def _unordered(
    fs: collections.deque[cf.Future[Any]],
    refill: Iterator[tuple[Any, ...]] | None,
    submit: Callable[[tuple[Any, ...]], cf.Future[Any]],
    end_time: float | None,
) -> Iterator[Any]:
    comp = _Completions()
    pending = set(fs)
    for f in fs:
        comp.add(f)
    fs.clear()
    try:
        while pending:
            timeout = None if end_time is None else max(0.0, end_time - time.monotonic())
            box = [comp.get(timeout)]
            pending.discard(box[0])
            if refill is not None:
                args = next(refill, None)
                if args is not None:
                    nf = submit(args)
                    pending.add(nf)
                    comp.add(nf)
                    del nf
            yield box.pop().result()
    finally:
        cancel_all(pending, wait=False)


def _unchunk(gen: Iterator[list[Any] | ChunkError]) -> Iterator[Any]:
    try:
        for chunk in gen:
            if type(chunk) is ChunkError:
                yield from chunk.done
                exc = chunk.exc
                exc.__cause__ = remote_traceback(chunk.tb)
                raise exc
            yield from chunk  # type: ignore[misc]
            del chunk
    finally:
        # The chunks not done yet are cancelled now, not once the collector breaks the cycle a
        # raised error makes (its traceback holds this frame, which holds gen): a caller that
        # caught the error had its next tasks wait behind the rest of the map.
        close = getattr(gen, "close", None)
        if close is not None:
            close()


def _cancel_with(outer: cf.Future[Any], inner: cf.Future[Any]) -> bool:
    """A map's stand-in future follows its task's cancellation: if ``inner`` was cancelled,
    cancel ``outer`` too (cf.Future's own cancel: the stand-ins' cancel() cancels the task)."""
    if not inner.cancelled():
        return False
    cf.Future.cancel(outer)
    outer.set_running_or_notify_cancel()
    return True


class _Substitute(cf.Future):  # type: ignore[type-arg]
    """A map's future whose TaskTimeoutError reads as ``value`` (``on_timeout``).

    cancel() cancels the task's own future."""

    def __init__(self, inner: cf.Future[Any], value: Any) -> None:
        super().__init__()
        self.inner = inner
        self._value = value
        inner.add_done_callback(self._settle)

    def _settle(self, inner: cf.Future[Any]) -> None:
        if _cancel_with(self, inner):
            return
        exc = inner.exception()
        if not self.set_running_or_notify_cancel():
            return
        if isinstance(exc, TaskTimeoutError):
            self.set_result(self._value)
        elif exc is not None:
            self.set_exception(exc)
        else:
            self.set_result(inner.result())

    def result(self, timeout: float | None = None) -> Any:
        # Waits through the task's own future: in a task on a worker, that parks the task.
        try:
            return self.inner.result(timeout)
        except TaskTimeoutError:
            return self._value

    def cancel(self) -> bool:
        return self.inner.cancel()


def _unseeded_error(
    f: cf.Future[Any], args: tuple[Any, ...], what: str, item: int, chunked: bool
) -> cf.Future[Any]:
    """A seeded map's task that could not be sent: its error as the same map unseeded names it
    (the items travel as ``(index, *args)``: the parts' paths were one off)."""
    if not isinstance(f.exception(), SerializationError):
        return f
    if chunked:
        plain: tuple[Any, ...] = ([a[1] if len(a) == 2 else a[1:] for a in args[0]],)
    else:
        plain = args[1:]
    try:
        serialize.encode_args(plain, {}, None, item, chunked, what)
    except SerializationError as exc:
        g: cf.Future[Any] = cf.Future()
        g.set_exception(exc)
        return g
    return f


class _Continued(cf.Future):  # type: ignore[type-arg]
    """A chunk's future, complete once all its items are: when its worker was ended during one
    of them (the result is a chunks.Cut), the items after that one are sent again as a new task
    (``resend(start)``) and the two results joined.  ``timed``: run by autochunk.run_timed.

    cancel() cancels the task running the chunk's items now."""

    def __init__(self, inner: cf.Future[Any], resend: Callable[[int], cf.Future[Any]], timed: bool) -> None:
        super().__init__()
        self.inner = inner
        self._resend = resend
        self._timed = timed
        self._head: tuple[list[Any], float] | None = None  # the items' results so far, seconds
        self._start = 0  # the index in the chunk of the first item ``inner`` runs
        inner.add_done_callback(self._settle)

    def _parts(self, value: Any) -> tuple[list[Any], tuple[BaseException, str] | None, float]:
        if self._timed:
            return value[1], value[2], value[0]
        if type(value) is ChunkError:
            return value.done, (value.exc, value.tb), 0.0
        return value, None, 0.0

    def _settle(self, inner: cf.Future[Any]) -> None:
        if _cancel_with(self, inner):
            return
        exc = inner.exception()
        if exc is None:
            value = inner.result()
            if type(value) is chunks.Cut:
                done, _, seconds = self._parts(value.value)
                head = self._head or ([], 0.0)
                self._head = (head[0] + done, head[1] + seconds)
                self._start += value.rest
                try:
                    self.inner = nxt = self._resend(self._start)
                except BaseException as error:  # a shut-down executor, say
                    exc = error
                else:
                    del value, inner
                    nxt.add_done_callback(self._settle)
                    return
            elif self._head is None:
                self._finish(value)
                return
            else:
                tail = self._parts(value)
        if exc is not None:
            if self._head is None:
                if self.set_running_or_notify_cancel():
                    self.set_exception(exc)
                return
            tail = ([], (exc, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))), 0.0)
        assert self._head is not None
        done, seconds = self._head[0] + tail[0], self._head[1] + tail[2]
        if self._timed:
            self._finish((seconds, done, tail[1]))
        else:
            self._finish(done if tail[1] is None else ChunkError(done, *tail[1]))

    def _finish(self, value: Any) -> None:
        if self.set_running_or_notify_cancel():
            self.set_result(value)

    def result(self, timeout: float | None = None) -> Any:
        cf.wait([self], timeout)  # in a task on a worker, this parks the task
        return super().result(0)

    def cancel(self) -> bool:
        return self.inner.cancel()


def _timed_values(result: autochunk.Timed) -> list[Any]:
    """The results of an automatically sized chunk's items that succeeded."""
    return result[1]


def _chunk_values(result: list[Any] | ChunkError) -> list[Any]:
    """The results of a chunk's items that succeeded."""
    return result.done if isinstance(result, ChunkError) else result


def _strong(obj: Any) -> Callable[[], Any]:
    def ref() -> Any:
        return obj

    return ref


def _result_or_cancel(fut: cf.Future[Any], timeout: float | None = None) -> Any:
    try:
        if fut._state == FINISHED:  # (on every item: nothing to cancel, no time to wait)
            return fut.result()
        try:
            return fut.result(timeout)
        finally:
            if not fut.done():  # (a timeout, Ctrl-C: one that asks its broker does not wait)
                cancel_all((fut,), wait=False)
    finally:
        del fut  # break the reference cycle through the traceback


def _known_length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many items zip(*iterables) will give, if every iterable knows its length."""
    try:
        return min((len(it) for it in iterables), default=0)  # type: ignore[arg-type]
    except TypeError:
        return None


def _tally(items: Iterator[Any], tracker: Any) -> Iterator[Any]:
    """Pass the items through; once they are exhausted, the progress bar knows its total."""
    count = 0
    for item in items:
        count += 1
        yield item
    tracker.set_total(count)


class _Advance:
    """A done-callback: ``n`` more items of a map are finished."""

    __slots__ = ("n", "tracker")

    def __init__(self, tracker: Any, n: int) -> None:
        self.tracker = tracker
        self.n = n

    def __call__(self, _fut: cf.Future[Any]) -> None:
        self.tracker.task_done(self.n)


def _with_progress(gen: Iterator[Any], tracker: Any) -> Iterator[Any]:
    """Yield the map's results; complete the bar as the last one is handed out.

    Completed *before* the last result is yielded, so that the bar's final
    line comes before whatever the consumer prints next, even when the
    consumer never asks past the last item (``zip(population, results)``).
    """
    complete = False
    taken = 0
    try:
        for item in gen:
            taken += 1
            if tracker.total is not None and taken >= tracker.total:
                tracker.finish()
            yield item
        complete = True
    finally:
        if complete:
            tracker.finish()
        else:
            # Stopped early: show the count reached before closing the map
            # cancels the rest (cancelled futures run their callbacks too).
            tracker.close()
            gen.close()  # type: ignore[attr-defined]


def batched(it: Iterator[Any], n: int) -> Iterator[tuple[Any, ...]]:
    """Tuples of ``n`` items of ``it`` (the last may be shorter): itertools.batched before 3.12."""
    while True:
        chunk = tuple(itertools.islice(it, n))
        if not chunk:
            return
        yield chunk

def check_amap(iterables: tuple[Iterable[Any], ...], chunksize: int, buffersize: int | None) -> None:
    """amap()'s arguments, checked as map() checks its own."""
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


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _submit_is_ours(ex: Any) -> bool:
    """See MapMixin._submit_is_ours: the ``submit`` that ``ex``'s class gives it is a function of
    this package (by its code's file: functools.wraps copies a module's name onto an override,
    and ``submit = ScoopExecutor.submit`` is ours), and none was set on ``ex`` itself."""
    if "submit" in getattr(ex, "__dict__", ()):
        return False
    for klass in type(ex).__mro__:
        own = klass.__dict__.get("submit")
        if own is not None:
            code = getattr(own, "__code__", None)
            return code is not None and os.path.abspath(code.co_filename).startswith(_PACKAGE)
    return False


def chunk_sender(
    ex: cf.Executor, run: Callable[..., Any], fn: Callable[..., Any], once: bool
) -> Callable[[tuple[Any, ...], int], cf.Future[Any]]:
    """How a map that is not map()'s own (Pool's, amap's) submits its chunks of ``fn`` to ``ex``:
    ``send(args, item)``, with ``args`` the arguments of ``run`` (a chunk runner, called with
    ``fn`` first, then the chunk) and ``item`` the index of the chunk's first item.

    To a ScoopExecutor (or a task's pool) they go as map()'s chunks do: the runner around the
    function is the task's function, so a large one reaches each worker once (wire/fnframes.py),
    the worker gives the function its pool's initializer globals and unpickles it once, an item
    that cannot be pickled is named as map() names it (item N of map(f, ...)), and the
    executor's task limit applies to each call (``task_timeout``: "a call running longer
    than").  The runner is pickled once (``once``: the map submits every chunk now) or for each
    chunk (a lazy map, whose function may read globals changed meanwhile).  To another
    executor: submit(), as before; and to one whose class overrides submit(), through it too,
    each call limited (Limited: submit() then puts no limit around the whole chunk).
    """
    limit = getattr(ex, "_task_timeout", None)
    if not isinstance(ex, MapMixin) or not ex._submit_is_ours():
        runner: Any = functools.partial(run, fn)
        if limit is not None:
            runner = Limited(functools.partial(run, TimeLimit(fn, limit)))
        return lambda args, item: ex.submit(runner, *args)
    call = functools.partial(run, fn if limit is None else TimeLimit(fn, limit))
    what = describe(fn)
    mixin = ex

    def encode() -> tuple[Any, Exception | None]:
        try:
            return mixin._encode_fn(call, not once), None
        except Exception as exc:  # each chunk fails with it, as each would pickling it itself
            return None, exc

    frame, error = encode() if once else (None, None)

    def send(args: tuple[Any, ...], item: int) -> cf.Future[Any]:
        f, e = (frame, error) if once else encode()
        if e is not None:
            fut: cf.Future[Any] = cf.Future()
            fut.set_exception(e)
            return fut
        return mixin._submit_encoded(f, args, {}, what, item, True)

    return send


async def amap_on(
    ex: cf.Executor,
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    chunksize: int = 1,
    buffersize: int | None = None,
    ordered: bool = False,
) -> AsyncIterator[Any]:
    """The async map of ``ex`` (ScoopExecutor.amap, scoopexec.amap; see aio.py)."""
    check_amap(iterables, chunksize, buffersize)
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

    one = len(iterables) == 1  # (its items are the arguments: map()'s _run_chunk1 and wording)
    items = iter(iterables[0]) if one else zip(*iterables, strict=False)  # (the shortest, as map())
    chunks = (list(c) for c in batched(items, chunksize))
    source: Iterator[tuple[int, list[Any]]] = enumerate(chunks)
    pending: dict[int, cf.Future[Any]] = {}
    send = chunk_sender(ex, _run_chunk1 if one else _run_chunk, fn, False) if chunksize > 1 else None

    def submit_next() -> bool:
        item = next(source, None)
        if item is None:
            return False
        index, chunk = item
        if send is None:
            fut = ex.submit(fn, chunk[0]) if one else ex.submit(fn, *chunk[0])
        else:
            fut = send((chunk,), index * chunksize)
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
                exc.__cause__ = remote_traceback(value.tb)
                raise exc
            for v in value:
                yield v
            del value
    finally:
        cancel_all(pending.values(), wait=False)
