"""Limits a worker enforces on the tasks it runs: ``task_timeout``.

A task given a time limit (``ScoopExecutor(task_timeout=S)``, ``map(..., task_timeout=S)``)
travels as :class:`TimeLimit` around its function: the limit goes with the task, and
the worker that runs it obeys it::

    TimeLimit.__call__ --arm--> Watchdog (one thread per worker process, from its first limit)
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
import os
import random
import re
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import greenlet

from ..deploy.contract import EXIT_RECYCLED
from ..errors import TaskTimeoutError, WorkerMemoryError
from ..wire import protocol as P
from ..wire import serialize
from . import chunks, lifeline
from .worker import Worker, current_worker

__all__ = [
    "GRACE", "Limited", "OnTimeout", "Recycler", "TimeLimit", "check_timeout", "install", "parse_size",
    "recycle_flags", "rss",
]  # fmt: skip

GRACE = 1.0  # s a task has to stop after its KeyboardInterrupt before its process is ended
POKE_EVERY = 0.05  # s between SIGINTs while the interrupted task has not been reached yet
DRAIN = 5.0  # s at most that a worker ending itself waits for its last messages to leave


def check_timeout(value: Any, name: str = "task_timeout") -> float | None:
    """``task_timeout=``: None, or seconds > 0; anything else is a clear error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


class Limited:
    """A map's task whose calls carry their own time limit already (TimeLimit around each), for
    a submit() that a subclass overrides (mapping.py): ScoopExecutor.submit puts none around it,
    which would limit a whole chunk, or override the map's own ``task_timeout``.  Holds the call
    as ``fn``, as TimeLimit does (serialize.py sees through it)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __reduce__(self) -> tuple[Any, ...]:
        return (Limited, (self.fn,))

    @property
    def __name__(self) -> str:
        return str(getattr(self.fn, "__name__", type(self.fn).__name__))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


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
    __slots__ = ("btid", "deadline", "fired", "g", "kill", "pending", "running", "seconds", "started", "what")

    def __init__(self, seconds: float, g: greenlet.greenlet, btid: int, what: str) -> None:
        self.kill = True  # past its grace, end the process (a cancel's interrupt is only tried)
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
        """Only in the worker's main thread (it sets the SIGINT handler): see install()."""
        self.w = w
        self.cond = threading.Condition()
        self.limits: set[_Limit] = set()
        self.recycler: Recycler | None = None
        self._prev = signal.signal(signal.SIGINT, self._on_sigint)  # in the main thread: a task
        # The thread starts with the first thing it watches (a time limit, a cancel's interrupt, a
        # recycler): most workers never need it, and each thread started before a worker's first
        # task delays it (Thread.start() waits for the new thread to run, on busy cores too).
        self._thread: threading.Thread | None = None

    def watch(self) -> None:
        """Start the thread, if not yet (hold ``cond``)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="scoopexec-watchdog", daemon=True)
            self._thread.start()

    def interrupt(self, btid: int, g: greenlet.greenlet) -> None:
        """KeyboardInterrupt in the task ``btid`` running on ``g`` (cancelled: ex.cancel()), once."""
        lim = _Limit(GRACE, g, btid, "")
        lim.kill = False
        lim.fired = lim.pending = lim.running = True
        with self.cond:
            self.watch()
            self.limits.add(lim)
            self.cond.notify()

    def arm(self, seconds: float, fn: Callable[..., Any]) -> _Limit:
        what = serialize.describe_user(fn) + "()"
        lim = _Limit(seconds, greenlet.getcurrent(), self.w.current_task(), what)
        with self.cond:
            self.watch()
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
                            if lim.kill:
                                self._end_process(lim)  # does not return
                            self.limits.discard(lim)
                            continue
                        lim.fired = lim.pending = True
                        lim.deadline = now + GRACE
                    if lim.pending:
                        self._poke()
                        wake = min(wake, now + POKE_EVERY)
                    wake = min(wake, lim.deadline)
                if self.recycler is not None:
                    wake = min(wake, self.recycler.check(now))
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
        g, btid = greenlet.getcurrent(), self.w.current_task()
        for lim in pending:
            if lim.g is g and lim.running and lim.btid == btid:
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
        note = f"a task ran past its task_timeout and would not stop: {exc}"
        chunk = chunks.progress(lim.g)
        if chunk is None:
            self.fail_and_end(lim.btid, lim.started, exc, note)
        else:  # an item of a chunk: the chunk's result, with the items that finished (chunks.py)
            stand_in = chunk.fn.value if isinstance(chunk.fn, OnTimeout) else chunks.RAISE
            result = serialize.encode_result(chunk.cut(exc, stand_in))
            self.fail_and_end(lim.btid, lim.started, exc, note, result)

    def fail_and_end(
        self, btid: int, started: float, exc: BaseException, note: str, result: tuple[int, Any] | None = None
    ) -> None:
        """Send ``exc`` (or the encoded ``result``) as the result of task ``btid`` (running: not
        retried), and end this process to be replaced (the broker requeues the other tasks it
        held).  From the watchdog's thread."""
        status, frames = result if result is not None else serialize.encode_exception(exc, "")
        w = self.w
        if w.lock.acquire(timeout=5.0):  # a task runs: the hub let go of it (see Worker._switch)
            w.outbox.results.append(((btid, status, len(frames), started, time.time() - started), frames))
            w.outbox.flush(0)
            w.chan.close(drain=DRAIN)  # the result must be out before the process ends
        lifeline.say(str(exc))
        lifeline.end(EXIT_RECYCLED, note)


def install(
    w: Worker,
    max_tasks: int | None = None,
    memory_limit: str | None = None,
    max_lifetime: float | None = None,
) -> None:
    """Make the worker obey CANCEL with an ``arg`` (ex.cancel() of running tasks: 1 interrupts
    them with KeyboardInterrupt, 2 ends the process, which is replaced) and its recycling limits
    (the worker's --max-tasks, --memory-limit, --max-lifetime: see Recycler).  In the main thread."""
    dog = Watchdog.of(w)
    plain = w.handlers[P.CANCEL]
    if max_tasks or memory_limit or max_lifetime:
        rec = Recycler(dog, max_tasks, parse_size(memory_limit), max_lifetime)
        w.after_task = rec.after_task
        with dog.cond:
            dog.recycler = rec
            dog.watch()
            dog.cond.notify()

    def urgent(msg: P.Message) -> None:  # the flusher thread, while a task runs
        if msg.kind == P.CANCEL and msg.arg:
            task = w.current
            if task is not None and any(e[0] == task.btid for e in msg.entries):
                r = w.active.get(task.btid)
                if msg.arg >= 2:
                    _end_for_cancel(task.btid)
                if r is not None:
                    dog.interrupt(task.btid, r)

    def on_cancel(msg: P.Message) -> None:  # the hub
        plain(msg)
        if not msg.arg:
            return
        here = [w.active[e[0]] for e in msg.entries if e[0] in w.active]
        if here and msg.arg >= 2:
            _end_for_cancel(here[0].task.btid if here[0].task is not None else 0)
        for r in here:  # parked: KeyboardInterrupt when resumed, rather than CancelledError
            w.waits.cancel(r, KeyboardInterrupt)

    w.urgent = urgent
    w.handlers[P.CANCEL] = on_cancel


def _end_for_cancel(btid: int) -> None:
    message = f"task {btid} was cancelled with force=True: its worker process ends (and is replaced)"
    lifeline.say(message)
    lifeline.end(EXIT_RECYCLED, message)


class Recycler:
    """When a worker process retires, to be replaced by a fresh one (stdlib's max_tasks_per_child, and more).

    * after ``max_tasks`` tasks, or a task that left it using more than ``memory_limit``
      bytes: before its next task;
    * a task that takes it past ``memory_limit`` while it runs (seen twice, POKE_EVERY
      apart: a task that crosses it on its way out is the case above): that task fails
      with WorkerMemoryError, and the process ends at once;
    * idle, after about ``max_lifetime`` seconds (80 to 100 % of it, drawn per process, so
      that a pool's workers do not all retire together); a busy one waits for its tasks.

    Retiring, it says BYE (the broker queues what it held again, no attempt spent) and
    exits with EXIT_RECYCLED; its starter replaces it.  With a task still parked, it waits
    until that task ends.
    """

    def __init__(
        self, dog: Watchdog, max_tasks: int | None, memory_limit: int | None, max_lifetime: float | None
    ) -> None:
        self.dog = dog
        self.w = dog.w
        self.max_tasks = max_tasks
        self.memory_limit = memory_limit
        self.retire_at = time.monotonic() + max_lifetime * random.uniform(0.8, 1.0) if max_lifetime else None
        self.max_lifetime = max_lifetime
        self.done = 0
        self.why = ""  # set: retire as soon as no task is active
        self._over: tuple[int, int] | None = None  # (task, bytes) seen past the limit once

    def after_task(self) -> None:
        """A task's result is queued (in its greenlet): retire now if it is time."""
        self.done += 1
        if self.max_tasks and self.done >= self.max_tasks:
            self.why = self.why or f"it ran max_tasks_per_child={self.max_tasks} tasks"
        used = rss() if self.memory_limit else 0
        if self.memory_limit and used > self.memory_limit:
            self.why = self.why or (
                f"it used {used} bytes after a task, more than worker_memory_limit={self.memory_limit}"
            )
        if self.why:
            self.retire()

    def check(self, now: float) -> float:
        """The watchdog's turn (holding its lock): memory during a task, and lifetime.  When to look again."""
        w = self.w
        wake = now + 60.0
        if self.memory_limit:
            task = w.current
            used = rss() if task is not None else 0
            if task is not None and used > self.memory_limit:
                if self._over is not None and self._over[0] == task.btid:
                    exc = WorkerMemoryError(
                        f"task {task.btid} took {w.where} to {used} bytes, past its "
                        f"worker_memory_limit={self.memory_limit} bytes ({_mib(self.memory_limit)}): "
                        "the process was ended (and replaced)"
                    )
                    self.dog.fail_and_end(task.btid, task.started, exc, str(exc))
                self._over = (task.btid, used)
            else:
                self._over = None
            wake = now + POKE_EVERY
        if self.retire_at is not None:
            if now >= self.retire_at and not self.why:
                self.why = f"it reached worker_max_lifetime={self.max_lifetime:g} s"
                w.later(self.retire)
            wake = min(wake, max(self.retire_at, now + 1.0))
        return wake

    def retire(self) -> None:
        """Leave (BYE) and exit to be replaced, unless a task is still active here (in the main thread)."""
        w = self.w
        if w.active:
            return  # the end of the last one retires it (after_task)
        with w.lock:
            w.outbox.flush(0)  # its last results, asking for no more tasks
            w.chan.send([P.header(P.BYE)])
            w.chan.close(drain=DRAIN)  # else they may be lost, and that task run again elsewhere
        lifeline.end(EXIT_RECYCLED, f"recycled: {self.why}")


def rss() -> int:
    """This process's resident memory, in bytes."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):  # not Linux: the peak, which is what is known
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_UNITS = {
    "": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
    "T": 1000**4, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
}  # fmt: skip
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: int | str | None, name: str = "worker_memory_limit") -> int | None:
    """Bytes from ``2147483648``, ``"2GiB"``, ``"512MB"``, ``"1.5G"``; None stays None; else ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        what = type(value).__name__
        raise TypeError(f"{name} must be a number of bytes or a string such as '2GiB', not {what}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(value)
        unit = _UNITS.get(m.group(2).upper()) if m is not None else None
        if m is None or unit is None:
            raise ValueError(
                f"{name}={value!r} is not a size: give bytes, or a number with a unit "
                "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. '2GiB'"
            )
        n = int(float(m.group(1)) * unit)
    if n <= 0:
        raise ValueError(f"{name} must be more than 0 bytes, got {value!r}")
    return n


def _mib(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB"


def recycle_flags(
    max_tasks_per_child: int | None, worker_memory_limit: int | str | None, worker_max_lifetime: float | None
) -> dict[str, Any]:
    """The executor's recycling options, checked, as the worker's command-line flags (contract.OPTIONS)."""
    if max_tasks_per_child is not None:
        if not isinstance(max_tasks_per_child, int) or isinstance(max_tasks_per_child, bool):
            raise TypeError("max_tasks_per_child must be an integer or None")
        if max_tasks_per_child < 1:
            raise ValueError("max_tasks_per_child must be >= 1")
    limit = parse_size(worker_memory_limit)
    lifetime = check_timeout(worker_max_lifetime, "worker_max_lifetime")
    memory = str(limit) if limit else None
    return {"max_tasks": max_tasks_per_child, "memory_limit": memory, "max_lifetime": lifetime}


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
