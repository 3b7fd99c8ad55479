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
4. otherwise a pool this backend starts with ``n_jobs`` workers (``-1``: one
   per CPU) and shuts down when joblib terminates the backend -- at the end
   of each ``Parallel`` call, or of a ``with Parallel(...)`` block.  Extra
   keyword arguments (``hosts=``, ``initializer=``, ``env=`` ...) go to that
   ``ScoopExecutor``; worker environments limit BLAS/OpenMP threads the way
   joblib's loky backend does (``inner_max_num_threads``).

``n_jobs=-1`` means every worker of the pool (``-2`` all but one, ...).

The backend implements joblib's callback API: results are handed to joblib
on a thread of the backend (never the broker's), batches are auto-sized,
``return_as="generator"`` / ``"generator_unordered"`` and ``timeout`` work,
and ``abort_everything`` (after an error or a timeout) cancels every batch
not started -- and, for a pool the backend started itself, stops the
workers at once, as loky does, so running batches do not run to completion.

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
import queue
import threading
import time
import types
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
from scoopexec.deploy.local import default_worker_count
from scoopexec.worker.worker import Worker, current_worker

__all__ = ["MAX_NESTING_LEVEL", "ScoopBackend", "register"]

log = logging.getLogger("scoopexec.joblib")

MAX_NESTING_LEVEL = 16
"""Parallel calls nested deeper than this run sequentially (a bound on runaway recursion)."""

# Keyword arguments joblib passes to every backend's configure(); not for ScoopExecutor.
_JOBLIB_KWARGS = frozenset(
    {"max_nbytes", "temp_folder", "mmap_mode", "verbose", "context", "prefer", "require"}
)


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
        self._own: ScoopExecutor | None = None  # a pool this backend started
        self._futures: set[cf.Future[Any]] = set()
        self._lock = threading.Lock()
        self._callbacks: _CallbackThread | None = None
        self._signal: cf.Future[None] | None = None
        self._dirty = False

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
            n = getattr(ex, "_max_workers", 0) or len(getattr(ex, "worker_pids", ()))
            if not n and isinstance(ex, ScoopExecutor):
                try:  # a client of a standalone broker: the workers it has now
                    n = len(ex.status(timeout=5.0).workers)
                except (RuntimeError, TimeoutError):
                    n = 0
            if n:
                return int(n)
        return self._pool_size or default_worker_count()

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
            if self._own is None:
                self._own = self._start_pool(n, n_jobs, extra)
            self._workers = self._own
            n = self.effective_n_jobs(n_jobs)
        if w is None and self._callbacks is None:
            self._callbacks = _CallbackThread()
        return n

    def _start_pool(self, n: int, n_jobs: int, extra: dict[str, Any]) -> ScoopExecutor:
        kwargs = dict(extra)
        elsewhere = any(k in kwargs for k in ("hosts", "hostfile", "broker"))
        max_workers = kwargs.pop("max_workers", None) or (n if n_jobs > 0 or not elsewhere else None)
        env = dict(self._prepare_worker_env(n_jobs=max(n, 1)))
        env.update(kwargs.pop("env", None) or {})
        try:
            return ScoopExecutor(max_workers, env=env, **kwargs)
        except TypeError as exc:
            raise TypeError(
                f"the 'scoop' joblib backend passes {sorted(kwargs)} on to ScoopExecutor, which "
                f"refused them: {exc}"
            ) from exc

    def terminate(self) -> None:
        """End of a Parallel call (or of a ``with Parallel()`` block): stop a pool we started."""
        own, self._own, self._workers = self._own, None, None
        with self._lock:
            self._futures.clear()
        if own is not None:
            own.shutdown(wait=True, cancel_futures=True)
        cbt, self._callbacks = self._callbacks, None
        if cbt is not None:
            cbt.stop()
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel every batch not started; stop a pool we started (then start a new one if asked)."""
        with self._lock:
            futs = list(self._futures)
            self._futures.clear()
        for fut in futs:
            fut.cancel()
        own = self._own
        if own is not None:
            self._own = self._workers = None
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
