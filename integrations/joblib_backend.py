"""The joblib backend ``"scoop"``: ``Parallel`` on a scoopexec pool.

::

    import joblib, scoopexec                      # importing scoopexec registers "scoop"
    with joblib.parallel_config(backend="scoop", n_jobs=8):
        results = joblib.Parallel()(joblib.delayed(f)(x) for x in xs)

Which pool a ``Parallel`` call runs on, first match wins:

1. ``executor=`` given to ``parallel_config(backend="scoop", executor=ex)``;
2. inside a task, the pool the task runs in (nested ``Parallel`` calls become
   nested futures: waiting parks the task, the worker runs other work, and
   nothing falls back to sequential or to threads);
3. the executor of the innermost ``with ScoopExecutor(...)`` block (or the
   ``python -m scoopexec`` launcher's pool);
4. otherwise the backend's shared pool: started with ``n_jobs`` workers
   (``-1``: one per CPU) by the first call that needs it and kept for the
   calls after it, as loky's reusable executor is, then stopped at
   interpreter exit (or by :func:`shutdown_shared_pool`).  A call that asks
   for more workers grows it; one that asks for fewer, or for other
   arguments, gets a new pool in its place; a broken pool (its initializer
   failed, ...) is replaced.  While another call is running on it, a call
   that needs a different pool gets a private one for its duration.  Extra
   keyword arguments (``hosts=``, ``initializer=``, ``env=`` ...) go to that
   ``ScoopExecutor``; worker environments limit BLAS/OpenMP threads the way
   joblib's loky backend does (``inner_max_num_threads``).

``n_jobs=-1`` means every worker of the pool (``-2`` all but one, ...).

The backend implements joblib's callback API: results are handed to joblib
on a thread of the backend (never the broker's), batches are auto-sized,
``return_as="generator"`` / ``"generator_unordered"`` and ``timeout`` work,
and ``abort_everything`` (after an error or a timeout) cancels every batch
not started -- and, on a pool the backend started itself (unless another
call is using it), stops the workers at once, as loky does, so running
batches do not run to completion; the call, or the next one, starts a new
pool.

On workers, two things make joblib cooperate with task greenlets (installed
when joblib is first imported in a worker): ``parallel_config`` state is kept
per task instead of per thread (tasks share the worker's thread), and the
10 ms polling sleep of ``Parallel``'s result loop parks the task -- until one
of its batches completes, for this backend -- instead of blocking the worker.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import contextvars
import functools
import logging
import os
import queue
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import greenlet
import joblib.parallel as _jp
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from scoopexec import ScoopExecutor
from scoopexec.api import WorkerExecutor, active_executor
from scoopexec.client.future import cancel_all
from scoopexec.deploy.hosts import local_cpu_count
from scoopexec.errors import SerializationError
from scoopexec.worker.worker import Worker, current_worker

from .joblib_memmap import MapError, Memmapping, pool_is_local

__all__ = ["MAX_NESTING_LEVEL", "ScoopBackend", "register", "shared_pool", "shutdown_shared_pool"]

log = logging.getLogger("scoopexec.joblib")

MAX_NESTING_LEVEL = 16
"""Parallel calls nested deeper than this run sequentially (a bound on runaway recursion)."""

# Keyword arguments joblib passes to every backend's configure(); not for ScoopExecutor.
_JOBLIB_KWARGS = frozenset(
    {"max_nbytes", "temp_folder", "mmap_mode", "verbose", "context", "prefer", "require"}
)
# ScoopExecutor arguments that put workers elsewhere than on this machine.
_ELSEWHERE = ("hosts", "hostfile", "broker")


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    try:
        return bool(a == b)
    except Exception:  # values whose == is not a bool (arrays in initargs ...): not the same
        return False


class _SharedPool:
    """The pool ``Parallel`` calls share when they are given none (module docstring, case 4).

    ``lease()`` hands a call the pool, starting, growing or replacing it as the
    call needs; ``release()`` gives it back at the end of the call.  The
    calls holding it are tracked weakly (a backend that is dropped without
    ``terminate()`` does not hold it forever).  Only this class starts or
    stops the shared pool.  Starting (or growing) happens under its lock, as
    in loky, so that two calls never start two pools; nothing else waits on
    that lock, and a retired pool is stopped after it is released.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ex: ScoopExecutor | None = None
        self._args: dict[str, Any] = {}  # the ScoopExecutor arguments it was started with
        self._size: int | None = 0  # None: every slot of the hosts it was given
        self._pid = 0
        self._users: weakref.WeakSet[ScoopBackend] = weakref.WeakSet()

    def current(self) -> ScoopExecutor | None:
        with self._lock:
            return self._ex if self._pid == os.getpid() else None

    def lease(
        self, user: ScoopBackend, n: int | None, args: dict[str, Any]
    ) -> tuple[ScoopExecutor, bool]:
        """(executor, shared) for a call wanting ``n`` workers started with ``args``.

        ``shared`` False: a private pool for this call (the shared one is busy
        with another call and is not what this one needs); the caller stops it.
        """
        retired: list[ScoopExecutor] = []
        try:
            with self._lock:
                if self._pid != os.getpid():  # inherited through fork: not ours to use or stop
                    self._ex, self._users = None, weakref.WeakSet()
                ex = self._ex
                if ex is not None and ex.broken:
                    retired.append(ex)
                    ex = self._ex = None
                    self._users = weakref.WeakSet()
                if ex is not None:
                    same = _same(self._args, args)
                    if same and n == self._size:
                        self._users.add(user)
                        return ex, True
                    if any(u is not user for u in self._users):
                        return _start_pool(n, args), False
                    if same and n is not None and self._size is not None and n > self._size and not any(
                        k in args for k in _ELSEWHERE
                    ):
                        ex.add_workers(n - self._size)
                        self._size = n
                        self._users.add(user)
                        return ex, True
                    retired.append(ex)
                    self._ex = None
                ex = _start_pool(n, args)
                self._ex, self._args, self._size, self._pid = ex, dict(args), n, os.getpid()
                self._users = weakref.WeakSet([user])
                return ex, True
        finally:
            for old in retired:  # idle (no call holds it) or broken: nothing of a caller's is lost
                if old.broken:
                    log.info("the joblib backend's pool was broken (%s); started a new one", old.broken)
                old.shutdown(wait=True, cancel_futures=True)

    def release(self, user: ScoopBackend) -> None:
        with self._lock:
            self._users.discard(user)

    def sole_user(self, user: ScoopBackend) -> bool:
        with self._lock:
            return all(u is user for u in self._users)

    def discard(self, ex: ScoopExecutor) -> None:
        """Forget ``ex`` (about to be aborted): the next call starts a new pool."""
        with self._lock:
            if self._ex is ex:
                self._ex = None
                self._users = weakref.WeakSet()

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            ex, self._ex = self._ex, None
            self._users = weakref.WeakSet()
            mine = self._pid == os.getpid()
        if ex is not None and mine:
            ex.shutdown(wait=wait, cancel_futures=True)


_shared = _SharedPool()


def shared_pool() -> ScoopExecutor | None:
    """The pool ``Parallel`` calls share when given no executor, if it is running."""
    return _shared.current()


def shutdown_shared_pool(wait: bool = True) -> None:
    """Stop the shared pool now (the next ``Parallel`` call that needs it starts a new one).

    Interpreter exit stops it anyway; this is for a program (or a test) that
    wants its processes gone earlier.  Calls still running on it lose their
    batches not yet started.
    """
    _shared.shutdown(wait)


def _start_pool(n: int | None, args: dict[str, Any]) -> ScoopExecutor:
    kwargs = dict(args)
    try:
        return ScoopExecutor(n, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"the 'scoop' joblib backend passes {sorted(kwargs)} on to ScoopExecutor, which "
            f"refused them: {exc}"
        ) from exc


class ScoopBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's ParallelBackendBase over a scoopexec pool (see the module docstring)."""

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    supports_sharedmem = False
    uses_threads = False

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        executor: cf.Executor | None = None,
        **executor_kwargs: Any,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **executor_kwargs
        )
        if executor is not None and not callable(getattr(executor, "submit", None)):
            raise TypeError(f"executor= must be a concurrent.futures.Executor, not {type(executor).__name__}")
        self._executor = executor
        self._pool_size: int | None = None  # known size of the pool, carried into nested backends
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self.parallel: Any = None
        self._workers: cf.Executor | None = None  # the executor of the current call (joblib's tests look)
        self._own: ScoopExecutor | None = None  # a pool this backend started (shared or private)
        self._own_shared = False  # _own is the shared pool (else a private one, stopped at terminate)
        self._futures: set[cf.Future[Any]] = set()
        self._lock = threading.Lock()
        self._callbacks: _CallbackThread | None = None
        self._signal: cf.Future[None] | None = None
        self._dirty = False
        self._maps: Memmapping | None = None  # joblib's memory maps of arrays, on a local pool

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        # Nested backends travel inside joblib's batches: only what a task needs.
        return {
            "nesting_level": self.nesting_level,
            "inner_max_num_threads": self.inner_max_num_threads,
            "_pool_size": self._pool_size,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["nesting_level"], state["inner_max_num_threads"])  # type: ignore[misc]
        self._pool_size = state["_pool_size"]

    # ------------------------------------------------------------------- sizing
    def _size(self) -> int:
        ex = self._workers or self._executor
        if ex is None and current_worker() is None:
            ex = active_executor()
        if ex is not None and not isinstance(ex, WorkerExecutor):
            if isinstance(ex, ScoopExecutor):
                n = ex.max_workers
                if not n:
                    try:  # a client of a standalone broker: the workers it has now
                        n = len(ex.status(timeout=5.0).workers)
                    except (RuntimeError, TimeoutError):
                        n = 0
            else:  # another library's executor: ProcessPoolExecutor's and loky's attribute
                n = getattr(ex, "_max_workers", 0)
            if n:
                return int(n)
        return self._pool_size or local_cpu_count()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``n_jobs``, with ``None`` as -1 and negative values counted from the pool's size."""
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs < 0:
            n_jobs = max(self._size() + 1 + n_jobs, 1)
        return int(n_jobs)

    # -------------------------------------------------------------- life cycle
    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **kwargs: Any,
    ) -> int:
        """Pick (or start) the pool for a Parallel call; return the number of jobs."""
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        level = self.nesting_level or 0
        if level > MAX_NESTING_LEVEL:
            raise FallbackToBackend(SequentialBackend(nesting_level=level))
        self.parallel = parallel
        extra = {k: v for k, v in {**self.backend_kwargs, **kwargs}.items() if k not in _JOBLIB_KWARGS}
        w = current_worker()
        # (made first: it checks max_nbytes and mmap_mode before a pool or a thread is started)
        maps = None
        if w is None:
            maps = Memmapping(kwargs.get("max_nbytes"), kwargs.get("mmap_mode"), kwargs.get("temp_folder"))
        ex = self._executor
        if ex is None and w is not None:
            install_task_support()
            ex = WorkerExecutor(w)
        if ex is None:
            ex = active_executor()
        if ex is not None:
            if extra:
                raise ValueError(
                    f"the 'scoop' joblib backend runs on {ex!r} here, so the ScoopExecutor "
                    f"arguments {sorted(extra)} cannot apply: pass them to the executor instead"
                )
            self._workers = ex
            n = self.effective_n_jobs(n_jobs)
            if n == 1:
                self._workers = None
                raise FallbackToBackend(SequentialBackend(nesting_level=level))
        else:
            n = self.effective_n_jobs(n_jobs)
            if n == 1:
                raise FallbackToBackend(SequentialBackend(nesting_level=level))
            if self._own is None:  # (else this backend is mid-call: keep its pool)
                self._own, self._own_shared = _shared.lease(self, *self._pool_arguments(n, n_jobs, extra))
            self._workers = self._own
            n = self.effective_n_jobs(n_jobs)
        if w is None and self._callbacks is None:
            self._callbacks = _CallbackThread()
        if maps is not None and self._maps is None and isinstance(self._workers, ScoopExecutor):
            self._maps = maps
        return n

    def _pool_arguments(
        self, n: int, n_jobs: int, extra: dict[str, Any]
    ) -> tuple[int | None, dict[str, Any]]:
        """(workers, other ScoopExecutor arguments) of the pool a call without an executor needs."""
        kwargs = dict(extra)
        elsewhere = any(k in kwargs for k in _ELSEWHERE)
        max_workers = kwargs.pop("max_workers", None) or (n if n_jobs > 0 or not elsewhere else None)
        env = dict(self._prepare_worker_env(n_jobs=max(n, 1)))
        env.update(kwargs.pop("env", None) or {})
        kwargs["env"] = env
        return max_workers, kwargs

    def terminate(self) -> None:
        """End of a Parallel call (or of a ``with Parallel()`` block): give back or stop our pool."""
        own, self._own, self._workers = self._own, None, None
        with self._lock:
            self._futures.clear()
        if own is not None:
            if self._own_shared:
                _shared.release(self)
            else:
                own.shutdown(wait=True, cancel_futures=True)
        cbt, self._callbacks = self._callbacks, None
        if cbt is not None:
            cbt.stop()
        maps, self._maps = self._maps, None
        if maps is not None:
            maps.close()  # (after the callbacks: no batch is being sent)
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel every batch not started; stop running ones on a pool we started (see the docstring)."""
        with self._lock:
            futs = list(self._futures)
            self._futures.clear()
        cancel_all(futs, wait=False)  # one request for all, not waited for (nobody reads the answers)
        own = self._own
        if own is not None:
            if self._own_shared and not _shared.sole_user(self):
                # Another call runs on the pool too: its batches are not ours to stop. Ours that
                # are running finish, and their results are dropped.
                return
            self._own = self._workers = None
            if self._own_shared:
                _shared.discard(own)
            own.abort("joblib aborted the Parallel call")
            if ensure_ready and self.parallel is not None:
                self.configure(
                    n_jobs=self.parallel.n_jobs, parallel=self.parallel, **self.parallel._backend_kwargs
                )

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """Parallel calls inside a task run on the same pool, one level deeper."""
        level = (self.nesting_level or 0) + 1
        if level > MAX_NESTING_LEVEL:
            return SequentialBackend(nesting_level=level), None
        nested = ScoopBackend(nesting_level=level, inner_max_num_threads=self.inner_max_num_threads)
        nested._pool_size = self._size()
        return nested, None

    # -------------------------------------------------------------------- tasks
    def submit(
        self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None
    ) -> cf.Future[Any]:
        """Run one joblib batch as a task; ``callback(future)`` when it is done."""
        ex = self._workers
        if ex is None:
            raise RuntimeError("the 'scoop' joblib backend was used before configure() or after terminate()")
        # The batch travels as an argument: workers cache unpickled *functions* by
        # their bytes, and two identical batches must not share one object.
        maps = self._maps
        if maps is not None and pool_is_local(ex):
            fut = _submit_mapped(ex, func, maps)
        else:
            fut = ex.submit(_run_batch, func)
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(self._forget)
        cbt = self._callbacks
        if callback is not None:
            fut.add_done_callback(functools.partial(cbt.put, callback) if cbt is not None else callback)
        if cbt is None:
            fut.add_done_callback(self._wake)  # in a task, after joblib's callback: wake its result loop
        return fut

    def retrieve_result_callback(self, out: cf.Future[Any]) -> Any:
        """The batch's list of results (or its exception, raised)."""
        return out.result()

    def _forget(self, fut: cf.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(fut)

    # --------------------------------------------- result loop inside a task
    def _wake(self, fut: cf.Future[Any]) -> None:
        self._dirty = True
        s = self._signal
        if s is not None and not s.done():
            s.set_result(None)

    def _nap(self, w: Worker, seconds: float) -> None:
        """joblib's polling sleep in a task: park until one of our batches completes."""
        if self._dirty:
            self._dirty = False
            return
        timeout = getattr(self.parallel, "timeout", None)
        limit = 1.0 if timeout is None else min(1.0, max(seconds, timeout / 10))
        s: cf.Future[None] = cf.Future()
        self._signal = s
        try:
            w.wait_until([s], limit, cf.FIRST_COMPLETED)
        finally:
            self._signal = None
            self._dirty = False

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        """Around Parallel's result loop: lets a task's loop sleep on this backend's completions."""
        w = current_worker()
        g = greenlet.getcurrent() if w is not None and w.in_task() else None
        if g is not None:
            _retrieving[g] = self
        try:
            yield
        finally:
            if g is not None:
                _retrieving.pop(g, None)


def _run_batch(batch: Callable[[], Any]) -> Any:
    return batch()


def _submit_mapped(ex: cf.Executor, func: Callable[[], Any], maps: Memmapping) -> cf.Future[Any]:
    """Submit a batch whose arrays travel as maps (joblib_memmap.py).  If it cannot be sent:
    an array that could not be written fails the batch with that OSError (not a pickling
    error); anything else, with the error of the batch sent as it is, which names the part
    that cannot be pickled (the search for that part does not look inside the wrapper)."""
    fut = ex.submit(_run_batch, maps.wrap(func))
    if not fut.done() or fut.cancelled():
        return fut
    err = fut.exception()
    if not isinstance(err, SerializationError):
        return fut
    if isinstance(err.__cause__, MapError):
        failed: cf.Future[Any] = cf.Future()
        failed.set_exception(err.__cause__)
        return failed
    return ex.submit(_run_batch, func)


class _CallbackThread:
    """Runs joblib's completion callbacks (which dispatch the next batches) off the broker's thread."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[Callable[[Any], None], Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="scoopexec-joblib", daemon=True)
        self._thread.start()

    def put(self, callback: Callable[[Any], None], fut: Any) -> None:
        self._q.put((callback, fut))

    def stop(self) -> None:
        self._q.put(None)  # after the callbacks already queued

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            callback, fut = item
            try:
                callback(fut)
            except BaseException:  # pragma: no cover - joblib's callback catches its own errors
                log.exception("a joblib completion callback failed")


# ------------------------------------------------------------- worker support
_retrieving: dict[Any, ScoopBackend] = {}
_installed = False


class _TaskLocal:
    """joblib's ``parallel_config`` state, per task greenlet (and per thread) on a worker.

    joblib keeps it in a ``threading.local``; a worker's tasks share one
    thread, so a task that parks inside ``parallel_config`` would otherwise
    see, or undo, another task's settings.  Greenlets and threads each have
    their own context, so a context variable separates them.
    """

    __slots__ = ("_var",)

    def __init__(self) -> None:
        object.__setattr__(self, "_var", contextvars.ContextVar("scoopexec_joblib_state"))

    def __getattr__(self, name: str) -> Any:
        state: dict[str, Any] = self._var.get({})
        try:
            return state[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._var.set({**self._var.get({}), name: value})

    def __delattr__(self, name: str) -> None:
        state = dict(self._var.get({}))
        if state.pop(name, None) is None:
            raise AttributeError(name)
        self._var.set(state)


class _TaskAwareTime(types.ModuleType):
    """The ``time`` module as joblib.parallel sees it on a worker: sleeping in a task parks it."""

    def __init__(self) -> None:
        super().__init__("time")

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        w = current_worker()
        if w is None or not w.in_task():
            time.sleep(seconds)
            return
        backend = _retrieving.get(greenlet.getcurrent())
        if backend is not None:
            backend._nap(w, seconds)
        else:
            never: cf.Future[None] = cf.Future()
            w.wait_until([never], seconds, cf.FIRST_COMPLETED)


def install_task_support() -> None:
    """On a worker: make joblib.parallel's per-thread state per task, and its sleeps park."""
    global _installed
    if _installed:
        return
    _installed = True
    _jp._backend = _TaskLocal()
    _jp.time = _TaskAwareTime()


def register() -> None:
    """Register ``"scoop"`` with joblib (``import scoopexec`` arranges this; calling it again is harmless)."""
    _jp.register_parallel_backend("scoop", ScoopBackend)
    if current_worker() is not None:
        install_task_support()


register()  # importing this module is registering (the import hook may be what imports it)
