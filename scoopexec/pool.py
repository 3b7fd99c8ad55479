"""scoopexec.Pool: ``multiprocessing.Pool``'s interface on a scoopexec pool.

::

    with scoopexec.Pool(4) as pool:                  # instead of multiprocessing.Pool(4)
        squares = pool.map(square, range(100))
        pool.starmap(power, [(2, 3), (3, 2)])
        for r in pool.imap_unordered(simulate, params):
            ...

Code written for ``multiprocessing.Pool`` (pymoo's
``StarmapParallelization(pool.starmap)``, DEAP's ``toolbox.register("map",
pool.map)``) runs unchanged, on the same broker and workers as
``ScoopExecutor``: ``Pool(processes, hosts=[...])`` reaches other machines,
``Pool(executor=ex)`` shares a running executor.

How it works: every call becomes futures of the executor (one per chunk of
items; one per ``apply``).  Their completions go to one thread of the Pool,
which updates the results and runs ``callback`` / ``error_callback`` there, in
the order results arrive -- as multiprocessing's result-handler thread does, so
a slow callback delays only other callbacks, never the pool.  ``imap`` reads
its input and submits on a thread of its own, so the call returns at once.

Where it differs from multiprocessing, on purpose:

* ``terminate()`` fails every result not ready yet (``BrokenScoopExecutor``)
  instead of leaving it pending forever.
* An exception raised by a callback is logged (logger ``scoopexec``); the
  result still becomes ready.
* A callback is called for an empty ``map_async`` too (with ``[]``).
* An argument that cannot be pickled fails its result with
  ``scoopexec.SerializationError`` (a ``pickle.PicklingError`` naming the
  argument, the original error as ``__cause__``); a result that cannot be
  pickled likewise, where multiprocessing raises ``MaybeEncodingError``.
* ``imap`` with ``chunksize > 1`` after a failed chunk goes on with the next
  chunks (multiprocessing's chunked ``imap`` stops there).
* ``maxtasksperchild`` is the executor's ``max_tasks_per_child``: a worker
  process is replaced by a fresh one after that many tasks.

The Pool is meant for the client.  Inside a task, use ``scoopexec.map`` /
``scoopexec.submit``, whose waiting parks the task instead of the worker.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import logging
import multiprocessing
import multiprocessing.pool
import operator
import os
import queue
import signal
import threading
import time
import types
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .client.executor import ScoopExecutor
from .client.future import cancel_all
from .deploy.hosts import local_cpu_count
from .deploy.local import process_start
from .errors import BrokenScoopExecutor
from .mapping import batched, chunk_sender

__all__ = ["ApplyResult", "AsyncResult", "IMapIterator", "MapResult", "Pool"]

log = logging.getLogger("scoopexec")

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"

_TERMINATED = "the Pool was terminated before this result was ready"


_Sender = Callable[[tuple[Any, ...], int], cf.Future[Any]]  # how a map's chunks are submitted (_chunk_sender)


def _run_chunk(func: Callable[..., Any], chunk: list[Any], star: bool) -> list[Any]:
    """Run on a worker: one chunk of a map; an error fails the whole chunk, as in multiprocessing."""
    if star:
        return [func(*args) for args in chunk]
    return [func(x) for x in chunk]


def _outcome(fut: cf.Future[Any], single: bool = False) -> tuple[bool, Any]:
    """(True, result) or (False, exception) of a finished future; ``single``: a result as a chunk of one."""
    if fut.cancelled():
        return False, BrokenScoopExecutor(_TERMINATED)
    exc = fut.exception()
    if exc is None:
        return True, [fut.result()] if single else fut.result()
    tb = getattr(exc.__cause__, "tb", None)
    if type(exc.__cause__).__name__ == "_RemoteTraceback" and isinstance(tb, str):
        # The type multiprocessing gives the worker's traceback (same text).
        exc.__cause__ = multiprocessing.pool.RemoteTraceback(tb)  # type: ignore[attr-defined]
    return False, exc


class _Jobs:
    """The Pool's unfinished results and futures in flight; shared with its handler thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.jobs: set[_Job] = set()
        self.futures: set[cf.Future[Any]] = set()
        self.closed = False  # close()/terminate(): no job may be added (the handler may have ended)

    def add(self, job: _Job) -> None:
        with self.lock:
            if self.closed:
                raise ValueError("Pool not running")
            self.jobs.add(job)

    def finished(self, job: _Job) -> None:
        with self.lock:
            self.jobs.discard(job)
            self.changed.notify_all()

    def wait_all(self) -> None:
        with self.lock:
            while self.jobs:
                self.changed.wait(1.0)

    def abandon_all(self, exc_text: str) -> None:
        """In the handler thread: every unfinished result fails (terminate())."""
        with self.lock:
            jobs = list(self.jobs)
        for job in jobs:
            job._abandon(BrokenScoopExecutor(exc_text))


_WHEN_IDLE = object()  # to the handler thread: end once no result is pending (the Pool was dropped)


def _handle(inbox: queue.SimpleQueue[Any], jobs: _Jobs) -> None:
    """The Pool's handler thread: apply completions to results, run callbacks, in arrival order."""
    when_idle = False
    while True:
        if when_idle:
            with jobs.lock:
                if not jobs.jobs:
                    return
        item = inbox.get()
        if item is None:
            return
        if item is _WHEN_IDLE:
            when_idle = True
            continue
        fn, args = item
        try:
            fn(*args)
        except Exception:  # pragma: no cover - a bug here must not stop the thread
            log.exception("scoopexec.Pool: handling a result failed")
        del item, fn, args


class _Job:
    """Something a Pool call returns, completed by the handler thread."""

    _jobs: _Jobs

    def _abandon(self, exc: BaseException) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class AsyncResult(_Job):
    """The result of ``apply_async``, ``map_async`` or ``starmap_async`` (as multiprocessing's)."""

    __class_getitem__: Any = classmethod(types.GenericAlias)

    def __init__(
        self,
        jobs: _Jobs,
        callback: Callable[[Any], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
    ) -> None:
        self._jobs = jobs
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success: bool | None = None
        self._value: Any = None
        jobs.add(self)

    def ready(self) -> bool:
        """Whether the call has completed."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call completed without raising; ValueError if it is not ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return bool(self._success)

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds pass."""
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The result; raise the call's exception; multiprocessing.TimeoutError after ``timeout`` s."""
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value
        raise self._value

    # --- in the handler thread
    def _finish(self, success: bool, value: Any) -> None:
        if self.ready():
            return
        self._success, self._value = success, value
        cb = self._callback if success else self._error_callback
        self._callback = self._error_callback = None
        if cb is not None:
            try:
                cb(value)
            except Exception:
                log.exception("scoopexec.Pool: a %s raised", "callback" if success else "error_callback")
        self._event.set()
        self._jobs.finished(self)

    def _abandon(self, exc: BaseException) -> None:
        self._finish(False, exc)


class ApplyResult(AsyncResult):
    """The result of ``apply_async``."""

    def _set(self, _index: int, fut: cf.Future[Any], _single: bool) -> None:
        self._finish(*_outcome(fut))


class MapResult(AsyncResult):
    """The result of ``map_async`` / ``starmap_async``: ready once every chunk is back.

    If chunks failed, the error is the first one to come back, as in multiprocessing.
    """

    def __init__(
        self,
        jobs: _Jobs,
        n_chunks: int,
        callback: Callable[[Any], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
    ) -> None:
        super().__init__(jobs, callback, error_callback)
        self._chunks: list[list[Any] | None] = [None] * n_chunks
        self._left = n_chunks
        self._error: BaseException | None = None

    def _set(self, index: int, fut: cf.Future[Any], single: bool) -> None:
        if self.ready():
            return
        ok, value = _outcome(fut, single)
        self._left -= 1
        if ok:
            self._chunks[index] = value
        elif self._error is None:
            self._error = value
        if self._left == 0:
            self._complete()

    def _complete(self) -> None:
        if self._error is not None:
            self._chunks = []
            self._finish(False, self._error)
        else:
            out = list(itertools.chain.from_iterable(self._chunks))  # type: ignore[arg-type]
            self._chunks = []
            self._finish(True, out)


class IMapIterator(_Job):
    """The iterator ``imap`` and ``imap_unordered`` return; ``next(timeout)`` as in multiprocessing."""

    def __init__(self, jobs: _Jobs, ordered: bool) -> None:
        self._jobs = jobs
        self._ordered = ordered
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[tuple[bool, Any]] = deque()  # ready to hand out
        self._ahead: dict[int, tuple[bool, Any]] = {}  # ordered: chunks back before their turn
        self._turn = 0  # chunks taken in (ordered: in order)
        self._length: int | None = None  # chunks in all, once the input is read
        self._over = False
        jobs.add(self)

    def __iter__(self) -> IMapIterator:
        return self

    def next(self, timeout: float | None = None) -> Any:
        """The next result; multiprocessing.TimeoutError if none comes within ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._over:
                    raise StopIteration
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise multiprocessing.TimeoutError
                self._cond.wait(left)
            ok, value = self._items.popleft()
        if ok:
            return value
        raise value

    __next__ = next

    # --- in the handler thread
    def _set(self, index: int, fut: cf.Future[Any], single: bool) -> None:
        self._take(index, _outcome(fut, single))

    def _take(self, index: int, outcome: tuple[bool, Any]) -> None:
        with self._cond:
            if self._over:
                return
            if self._ordered:
                self._ahead[index] = outcome
                while self._turn in self._ahead:
                    self._push(self._ahead.pop(self._turn))
                    self._turn += 1
            else:
                self._push(outcome)
                self._turn += 1
            self._check_end()

    def _push(self, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if ok:
            self._items.extend((True, v) for v in value)
        else:
            self._items.append(outcome)

    def _set_length(self, n: int) -> None:
        with self._cond:
            self._length = n
            self._check_end()

    def _check_end(self) -> None:
        if not self._over and self._length is not None and self._turn >= self._length:
            self._over = True
            self._jobs.finished(self)
        self._cond.notify_all()

    def _abandon(self, exc: BaseException) -> None:
        with self._cond:
            if self._over:
                return
            self._items.append((False, exc))
            self._over = True
            self._ahead.clear()
            self._jobs.finished(self)
            self._cond.notify_all()


class WorkerProcess:
    """A local worker process of a Pool, with what code reads of, or does to, multiprocessing's
    Process objects in ``Pool._pool``: ``pid``, ``name`` (as ``current_process().name`` in it),
    ``is_alive()`` (by its start time too: a pid used again by another process is not it),
    ``exitcode`` (None while it runs, -N once signal N ended it, as multiprocessing's),
    ``join()``, ``terminate()`` and ``kill()``.  A worker that ends is replaced by a new
    process, as multiprocessing's Pool replaces its own; its tasks run again elsewhere."""

    def __init__(self, proc: Any) -> None:
        self._proc = proc  # the pool's handle on it: a subprocess.Popen, or a forked worker's
        self.pid: int = proc.pid
        self.name = f"ScoopWorker-{self.pid}"
        self._started = process_start(self.pid)

    @property
    def exitcode(self) -> int | None:
        return self._proc.poll()  # type: ignore[no-any-return]

    def is_alive(self) -> bool:
        if self._proc.poll() is not None:
            return False
        if not os.path.isdir("/proc"):  # (not Linux: by pid alone)
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass
            return True
        return self._started is not None and process_start(self.pid) == self._started

    def join(self, timeout: float | None = None) -> None:
        """Wait until it has ended, ``timeout`` s at most (None: no limit; less than 0: as 0)."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while self.exitcode is None:
            left = 0.02 if deadline is None else min(0.02, deadline - time.monotonic())
            if left <= 0:
                return
            time.sleep(left)

    def terminate(self) -> None:
        """SIGTERM to it, if it still runs."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to it, if it still runs."""
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.is_alive():
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def __repr__(self) -> str:
        code = self.exitcode
        state = "started" if code is None else f"stopped exitcode={code}"
        return f"<WorkerProcess name={self.name!r} pid={self.pid} {state}>"


class Pool:
    """A process pool with ``multiprocessing.Pool``'s methods, run by a scoopexec pool.

    Arguments as multiprocessing's: ``processes`` (workers to start; default
    one per CPU), ``initializer(*initargs)`` run in each worker before its
    first task, ``maxtasksperchild`` (see the module docstring), ``context``
    (a multiprocessing context, as ScoopExecutor's mp_context, or None).  Other
    keyword arguments go to ``ScoopExecutor`` (``hosts=``, ``broker=``,
    ``env=``, ``trace=`` ...).  ``executor=`` runs on an existing
    ``ScoopExecutor`` instead of starting one: then ``close``/``join`` wait for
    this Pool's work and leave the executor running, and ``terminate`` cancels
    this Pool's tasks that have not started (those running finish on the
    executor; their results are dropped).

    ``with Pool() as p:`` calls ``terminate()`` at the end of the block, as
    multiprocessing does: get the results inside it.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        executor: ScoopExecutor | None = None,
        **executor_options: Any,
    ) -> None:
        self._state = RUN  # first: __del__ reads it even if __init__ fails
        if processes is not None:
            processes = _index(processes, "processes")  # (a NumPy integer too)
            if processes < 1:
                raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int)
            or isinstance(maxtasksperchild, bool)
            or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if executor is not None:
            if processes is not None or initializer is not None or tuple(initargs) or context is not None:
                raise ValueError(
                    "Pool(executor=...) runs on that executor as it is: give processes, initializer, "
                    "initargs and context to the ScoopExecutor instead"
                )
            if executor_options or maxtasksperchild is not None:
                raise ValueError(
                    f"Pool(executor=...) takes no executor options (got "
                    f"{sorted([*executor_options, *(['maxtasksperchild'] if maxtasksperchild else [])])})"
                )
            self._executor: Any = executor
            self._own = False
            self._processes = _count_workers(executor)
        else:
            if maxtasksperchild is not None:
                executor_options["max_tasks_per_child"] = maxtasksperchild
            self._executor = ScoopExecutor(
                processes, context, initializer, tuple(initargs), **executor_options
            )
            self._own = True
            self._executor._session.abort_at_exit = True  # terminated at exit, as multiprocessing's
            local_only = not any(k in executor_options for k in ("hosts", "hostfile", "broker"))
            counted = local_cpu_count() if local_only else _count_workers(self._executor)
            self._processes = processes or counted
        self._jobs = _Jobs()
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._feeders: set[threading.Thread] = set()
        self._handler = threading.Thread(
            target=_handle, args=(self._inbox, self._jobs), name="scoopexec-pool-results", daemon=True
        )
        self._handler.start()

    # ------------------------------------------------------------------ info
    @property
    def executor(self) -> ScoopExecutor:
        """The ScoopExecutor this Pool runs on (its status(), share(), worker_pids ...)."""
        return self._executor  # type: ignore[no-any-return]

    @property
    def _pool(self) -> list[WorkerProcess]:
        """multiprocessing.Pool's private list of its processes, which code reads for their pids
        (CPython's test_make_pool, its len()): here the local worker processes, as they are now."""
        launchers = self._executor._session.workers
        return [WorkerProcess(proc) for proc in launchers.local_procs] if launchers is not None else []

    def __repr__(self) -> str:
        return f"<scoopexec.Pool state={self._state} pool_size={getattr(self, '_processes', '?')}>"

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    # ------------------------------------------------------------- one call
    def apply(
        self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None
    ) -> Any:
        """``func(*args, **kwds)`` on a worker; wait for it and return its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> ApplyResult:
        """Start ``func(*args, **kwds)`` on a worker; return an AsyncResult at once."""
        self._check_running()
        result = ApplyResult(self._jobs, callback, error_callback)
        try:
            call = _call_arguments(func, args, kwds)
        except TypeError as exc:  # as multiprocessing's worker raises it: from get(), to error_callback
            self._fail(result, 0, exc)
        else:
            self._submit(result, 0, func, *call)
        return result

    # ------------------------------------------------------------------ maps
    def map(
        self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[Any]:
        """``list(map(func, iterable))`` on the workers, ``chunksize`` items per task."""
        return self._map_async(func, iterable, chunksize, None, None, star=False).get()  # type: ignore[no-any-return]

    def starmap(
        self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]], chunksize: int | None = None
    ) -> list[Any]:
        """``list(itertools.starmap(func, iterable))`` on the workers."""
        return self._map_async(func, iterable, chunksize, None, None, star=True).get()  # type: ignore[no-any-return]

    def map_async(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> MapResult:
        """map() that returns an AsyncResult at once."""
        return self._map_async(func, iterable, chunksize, callback, error_callback, star=False)

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> MapResult:
        """starmap() that returns an AsyncResult at once."""
        return self._map_async(func, iterable, chunksize, callback, error_callback, star=True)

    def _map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        callback: Callable[[Any], Any] | None,
        error_callback: Callable[[BaseException], Any] | None,
        *,
        star: bool,
    ) -> MapResult:
        self._check_running()
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._processes * 4)  # type: ignore[arg-type]
            if extra:
                chunksize += 1
            chunksize = max(chunksize, 1)
        else:
            chunksize = _check_chunksize(chunksize)
        # Read everything before submitting anything: an input that fails part-way leaves no task behind.
        chunks = [list(c) for c in batched(iter(items), chunksize)]
        result = MapResult(self._jobs, len(chunks), callback, error_callback)
        if not chunks:
            self._inbox.put((result._complete, ()))
        send = self._chunk_sender(func, True) if chunks and chunksize > 1 else None
        for i, chunk in enumerate(chunks):
            if send is None:  # chunksize=1: the function is the task (its name in errors and timelines)
                try:
                    args = _call_arguments(func, chunk[0], None)[0] if star else (chunk[0],)
                except TypeError as exc:  # (multiprocessing's worker raises it: the map fails)
                    self._fail(result, i, exc, single=True)
                    continue
                self._submit(result, i, func, args, {}, single=True)
            else:
                self._send(result, i, send, (chunk, star), i * chunksize)
        return result

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        """An iterator of ``func(x)`` for the items, in order, as they become available."""
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(
        self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1
    ) -> IMapIterator:
        """imap() whose results come in the order they complete."""
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int, *, ordered: bool
    ) -> IMapIterator:
        self._check_running()
        chunksize = _check_chunksize(chunksize)
        it = IMapIterator(self._jobs, ordered)
        # Read the input and submit on a thread, as multiprocessing does: the first results can be
        # taken while a long input is still being sent, and an endless one does not block the call.
        t = threading.Thread(
            target=self._feed,
            args=(it, func, iterable, chunksize),
            name="scoopexec-pool-feeder",
            daemon=True,
        )
        with self._jobs.lock:
            self._feeders.add(t)
        t.start()
        return it

    def _feed(
        self, it: IMapIterator, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int
    ) -> None:
        n = 0
        send = None
        try:
            if chunksize > 1:
                send = self._chunk_sender(func, False)
            source = iter(iterable)
            while self._state != TERMINATE:
                chunk = list(itertools.islice(source, chunksize))
                if not chunk:
                    break
                if send is None:
                    self._submit(it, n, func, (chunk[0],), {}, single=True)
                else:
                    self._send(it, n, send, (chunk, False), n * chunksize)
                n += 1
        except Exception as exc:  # reading the input failed: the error takes the next place
            self._inbox.put((it._take, (n, (False, exc))))
            n += 1
        finally:
            self._inbox.put((it._set_length, (n,)))
            me = threading.current_thread()
            with self._jobs.lock:
                self._feeders.discard(me)
                last = not self._feeders
            if last and self._state == CLOSE and self._own:
                self._executor.shutdown(wait=False)

    def _chunk_sender(self, func: Callable[..., Any], once: bool) -> _Sender:
        """How a map's chunks of ``func`` are submitted (mapping.chunk_sender: pickled once for
        map and starmap, ``once``, or for each of imap's)."""
        return chunk_sender(self._executor, _run_chunk, func, once)

    def _submit(
        self,
        job: _Job,
        index: int,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        single: bool = False,
    ) -> None:
        self._track(job, index, lambda: self._executor.submit(fn, *args, **kwargs), single)

    def _send(
        self,
        job: _Job,
        index: int,
        send: _Sender,
        args: tuple[Any, ...],
        item: int,
    ) -> None:
        """_submit() of a chunk, through its map's ``send`` (_chunk_sender); ``item``: its first."""
        self._track(job, index, lambda: send(args, item))

    def _track(self, job: _Job, index: int, submit: Callable[[], Any], single: bool = False) -> None:
        """``job``'s part ``index`` is the future ``submit()`` returns (or, if it raises because the
        executor is shut down or broken, a future failed with that)."""
        try:
            fut = submit()
        except Exception as exc:
            fut = cf.Future()
            fut.set_exception(exc)
        jobs = self._jobs
        with jobs.lock:
            jobs.futures.add(fut)
        fut.add_done_callback(functools.partial(_arrived, jobs, self._inbox, job, index, single))

    def _fail(self, job: _Job, index: int, exc: BaseException, single: bool = False) -> None:
        """``job``'s part ``index`` failed before it could be sent: it completes with ``exc``."""
        fut: cf.Future[Any] = cf.Future()
        fut.set_exception(exc)
        fut.add_done_callback(functools.partial(_arrived, self._jobs, self._inbox, job, index, single))

    # ------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Accept no more work; the workers stop once what was submitted is done (see join())."""
        with self._jobs.lock:
            if self._state != RUN:
                return
            self._state = CLOSE
            self._jobs.closed = True
            idle = not self._feeders
        self._inbox.put(_WHEN_IDLE)  # the handler thread ends once every result is in
        if idle and self._own:
            self._executor.shutdown(wait=False)

    def terminate(self) -> None:
        """Stop now: results not ready fail, the workers are stopped (see the module docstring)."""
        with self._jobs.lock:
            if self._state == TERMINATE:
                return
            self._state = TERMINATE
            self._jobs.closed = True
            futures = list(self._jobs.futures)
        cancel_all(futures, wait=False)  # one request; the results fail below, whatever the answers
        if self._own:
            self._executor.abort("the Pool was terminated")
        self._inbox.put((self._jobs.abandon_all, (_TERMINATED,)))
        self._inbox.put(None)  # then the handler thread ends (as multiprocessing's do, without join())

    def join(self) -> None:
        """Wait for the workers to exit; call close() or terminate() first."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        with self._jobs.lock:
            feeders = list(self._feeders)
        for t in feeders:
            t.join()
        self._jobs.wait_all()
        if self._handler.is_alive():
            self._inbox.put(None)
            self._handler.join()
        if self._own:
            self._executor.shutdown(wait=True)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError(
            "a scoopexec.Pool cannot be passed to a task or pickled; pass pool.executor, "
            "or use scoopexec.submit / scoopexec.map inside tasks"
        )

    def __del__(self, _warn: Callable[..., Any] = warnings.warn) -> None:
        if getattr(self, "_state", None) == RUN and hasattr(self, "_inbox"):
            # multiprocessing's words, then ours in the repr: a warnings filter (or a test) written
            # for multiprocessing.Pool's message matches this one too
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)
            # Results already asked for still arrive (the executor, dropped too, stops once its
            # futures are done); then the handler thread ends.
            self._inbox.put(_WHEN_IDLE)


def _arrived(
    jobs: _Jobs, inbox: queue.SimpleQueue[Any], job: Any, index: int, single: bool, fut: cf.Future[Any]
) -> None:
    """A future's done-callback (in the thread that completed it): hand it to the handler thread."""
    with jobs.lock:
        jobs.futures.discard(fut)
    inbox.put((job._set, (index, fut, single)))


def _call_arguments(func: Any, args: Any, kwds: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``func(*args, **kwds)``'s positional and keyword arguments; the TypeError the call would
    raise (in words like Python's) if ``args`` is no iterable or ``kwds`` no mapping."""
    name = getattr(func, "__qualname__", None) or type(func).__name__
    try:
        positional = tuple(args)
    except TypeError:
        raise TypeError(f"{name}() argument after * must be an iterable, not {type(args).__name__}") from None
    if kwds is None:
        return positional, {}
    if not hasattr(kwds, "keys"):
        raise TypeError(f"{name}() argument after ** must be a mapping, not {type(kwds).__name__}")
    return positional, dict(kwds)


def _index(value: Any, what: str) -> int:
    """``value`` as an int: an int, or an integer of another type (a NumPy integer), as
    multiprocessing takes them; a bool is refused."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, not {type(value).__name__}") from None


def _check_chunksize(chunksize: Any) -> int:
    n = _index(chunksize, "chunksize")
    if n < 1:
        raise ValueError(f"Chunksize must be 1+, not {n:n}")
    return n


def _count_workers(executor: Any) -> int:
    """Workers of a pool this Pool did not size itself (for the default chunksize)."""
    try:
        return max(1, len(executor.status().workers))
    except Exception:
        return local_cpu_count()
