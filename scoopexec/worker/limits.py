"""Limits a worker enforces on the tasks it runs: ``task_timeout``.

A task given a time limit (``ScoopExecutor(task_timeout=S)``, ``map(..., task_timeout=S)``)
travels as :class:`TimeLimit` around its function: the limit goes with the task, and
the worker that runs it obeys it::

    TimeLimit.__call__ --arm--> Watchdog (one thread per worker process)
                                   |  S seconds pass, the call still running
                                   v
        the task gets KeyboardInterrupt: a running one through SIGINT to the
        worker's main thread (the handler raises it only in that task's
        greenlet), a parked one when the hub resumes it; its call ends with
        TaskTimeoutError
                                   |  GRACE seconds more, still running
                                   v
        the watchdog sends TaskTimeoutError as the task's result itself and ends
        the process (contract.EXIT_RECYCLED): its starter replaces it, and the broker
        queues the other tasks it held again (lost with their worker)

The timed-out task is not retried: its result (the error) reached the broker before
its worker went.  A worker whose main thread holds the GIL for good (native code that
never lets go of it) cannot run the watchdog; nothing here stops such a task.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import greenlet

from ..deploy.contract import EXIT_RECYCLED
from ..errors import TaskTimeoutError
from ..wire import serialize
from . import lifeline
from .worker import Worker, current_worker

__all__ = ["GRACE", "OnTimeout", "TimeLimit", "check_timeout"]

GRACE = 1.0  # s a task has to stop after its KeyboardInterrupt before its process is ended
POKE_EVERY = 0.05  # s between SIGINTs while the interrupted task has not been reached yet


def check_timeout(value: Any, name: str = "task_timeout") -> float | None:
    """``task_timeout=``: None, or seconds > 0; anything else is a clear error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


class TimeLimit:
    """``fn`` with a time limit: what a task with ``task_timeout`` calls (see the module docstring).

    Called outside a worker's task (in a client, in a thread) it is just ``fn``.
    """

    __slots__ = ("fn", "seconds")

    def __init__(self, fn: Callable[..., Any], seconds: float) -> None:
        self.fn = fn
        self.seconds = seconds

    def __reduce__(self) -> tuple[Any, ...]:
        return (TimeLimit, (self.fn, self.seconds))

    @property
    def __name__(self) -> str:  # what progress bars and messages call it
        return str(getattr(self.fn, "__name__", type(self.fn).__name__))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        w = current_worker()
        if w is None or not w.in_task():
            return self.fn(*args, **kwargs)
        dog = Watchdog.of(w)
        lim = dog.arm(self.seconds, self.fn)
        try:
            lim.running = True
            value = self.fn(*args, **kwargs)
            lim.running = False
        except BaseException:
            lim.running = False
            dog.disarm(lim)
            if lim.fired:
                raise lim.error() from None
            raise
        dog.disarm(lim)
        if lim.fired:  # it caught its KeyboardInterrupt and went on: still late
            raise lim.error()
        return value


class _Limit:
    __slots__ = ("btid", "deadline", "fired", "g", "pending", "running", "seconds", "started", "what")

    def __init__(self, seconds: float, g: greenlet.greenlet, btid: int, what: str) -> None:
        self.seconds = seconds
        self.g = g
        self.btid = btid
        self.what = what
        self.started = time.time()
        self.deadline = time.monotonic() + seconds
        self.fired = False  # its time is up (it gets, or got, KeyboardInterrupt)
        self.pending = False  # ... which has not reached it yet
        self.running = False  # inside the user's call (not in TimeLimit's own lines)

    def error(self, killed: bool = False) -> TaskTimeoutError:
        w = current_worker()
        where = f" on {w.where}" if w is not None else ""
        how = (
            f"did not stop within {GRACE:g} s of its KeyboardInterrupt, so its worker process was "
            "ended (and replaced)"
            if killed
            else "was interrupted (KeyboardInterrupt)"
        )
        limit = f"task_timeout={self.seconds:g} s"
        return TaskTimeoutError(f"{self.what} ran longer than {limit}{where} and {how}")


class Watchdog:
    """The limits of the tasks running on one worker, and the thread that enforces them."""

    _of: dict[int, Watchdog] = {}  # id(worker) -> its watchdog (one worker per process)

    @classmethod
    def of(cls, w: Worker) -> Watchdog:
        dog = cls._of.get(id(w))
        if dog is None or dog.w is not w:
            dog = cls._of[id(w)] = Watchdog(w)
        return dog

    def __init__(self, w: Worker) -> None:
        self.w = w
        self.cond = threading.Condition()
        self.limits: set[_Limit] = set()
        self._prev = signal.signal(signal.SIGINT, self._on_sigint)  # in the main thread: a task
        threading.Thread(target=self._run, name="scoopexec-watchdog", daemon=True).start()

    def arm(self, seconds: float, fn: Callable[..., Any]) -> _Limit:
        lim = _Limit(seconds, greenlet.getcurrent(), self.w.current_task(), serialize.describe(fn) + "()")
        with self.cond:
            self.limits.add(lim)
            self.cond.notify()
        return lim

    def disarm(self, lim: _Limit) -> None:
        with self.cond:
            self.limits.discard(lim)

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        cond = self.cond
        with cond:
            while not self.w.stopping:
                now = time.monotonic()
                wake = now + 60.0
                for lim in list(self.limits):
                    if lim.deadline <= now:
                        if lim.fired:
                            self._end_process(lim)  # does not return
                        lim.fired = lim.pending = True
                        lim.deadline = now + GRACE
                    if lim.pending:
                        self._poke()
                        wake = min(wake, now + POKE_EVERY)
                    wake = min(wake, lim.deadline)
                cond.wait(max(0.0, wake - now))

    def _poke(self) -> None:
        try:
            signal.pthread_kill(self.w.thread_id, signal.SIGINT)
        except (OSError, ValueError):  # pragma: no cover - the main thread is gone
            pass

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT in the main thread: interrupt a task whose time is up, else what it did before."""
        pending = [lim for lim in list(self.limits) if lim.pending]
        if not pending:
            prev = self._prev
            if prev == signal.SIG_IGN or prev is None:
                return
            if callable(prev):
                prev(signum, frame)
                return
            raise KeyboardInterrupt
        g = greenlet.getcurrent()
        for lim in pending:
            if lim.g is g and lim.running:
                lim.pending = False
                raise KeyboardInterrupt
            if getattr(lim.g, "waiter", None) is not None:  # parked: the hub resumes it with it
                lim.pending = False
                self.w.later(functools.partial(self._interrupt_parked, lim))
        # Otherwise it is about to resume (or in TimeLimit's own lines): the next poke reaches it.

    def _interrupt_parked(self, lim: _Limit) -> None:
        if lim in self.limits and not self.w.waits.cancel(lim.g, KeyboardInterrupt):
            lim.pending = True  # it moved on meanwhile: poke it again

    def _end_process(self, lim: _Limit) -> None:
        """The task did not stop: send its TaskTimeoutError, and end this process to be replaced."""
        exc = lim.error(killed=True)
        status, frames = serialize.encode_exception(exc, "")
        w = self.w
        if w.lock.acquire(timeout=5.0):  # a task runs: the hub let go of it (see Worker._switch)
            entry = (lim.btid, status, len(frames), lim.started, time.time() - lim.started)
            w.outbox.results.append((entry, frames))
            w.outbox.flush(0)
            w.chan.close()  # lingers until the result is out
        lifeline.say(str(exc))
        lifeline.end(EXIT_RECYCLED, f"a task ran past its task_timeout and would not stop: {exc}")


class OnTimeout:
    """``fn`` whose TaskTimeoutError reads as ``value``: an item of ``map(..., on_timeout=value)``."""

    __slots__ = ("fn", "value")

    def __init__(self, fn: Callable[..., Any], value: Any) -> None:
        self.fn = fn
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (OnTimeout, (self.fn, self.value))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.fn(*args, **kwargs)
        except TaskTimeoutError:
            return self.value
