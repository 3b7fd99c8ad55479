"""The future of a task: a concurrent.futures.Future that knows who holds its task.

Clients (client/session.py) and workers submitting sub-tasks (worker/waiting.py) make
them.  Cancelling one that has not started tells its holder, which drops the task (a
remote holder sends CANCEL).  A task lost with its workers too often fails with a
WorkerLostError that names the task's function.  The module's functions read what the
futures know about their tasks: which are running, and for how long.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures._base as cfb
import pickle
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ..errors import WorkerLostError
from ..wire import protocol, serialize

__all__ = [
    "CANCEL_WAIT", "Answer", "Holder", "ScoopFuture", "cancel_all", "cancel_answered", "cancel_dropped",
    "cancel_running", "describe_running", "in_event_loop", "running", "settle", "settle_all", "start",
    "start_all", "wait_answers",
]  # fmt: skip


class Holder(Protocol):
    """Who holds a task until its result comes: told when its future is cancelled, or (with
    ``confirms_cancels``) asked to cancel it, which takes its broker's answer (see Answer)."""

    confirms_cancels: bool

    def cancelled(self, tid: int) -> None: ...
    def confirm_cancels(self, futs: list[ScoopFuture], wait: bool) -> None: ...
    def lead(self, fut: ScoopFuture, timeout: float | None) -> float | None: ...  # see ScoopFuture.result


_MAKING = threading.Lock()  # held while a future's condition and lists are made (_MadeOnUse)


class _MadeOnUse:
    """Future's condition and lists, made when first read (see ScoopFuture).

    A non-data descriptor: the first read of any of the three makes all three, under a
    lock (two threads reading at once get the same objects), and stores them as the
    instance's own attributes, which answer every later read: this runs once per future.
    (Stored by plain assignment, not through ``__dict__``, which would turn the instance's
    inline attribute values into a dict and slow every later attribute read.)
    """

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __get__(self, fut: Any, owner: type | None = None) -> Any:
        if fut is None:
            return self
        with _MAKING:
            made = fut._made
            if made is None:
                made = (threading.Condition(), [], [])
                fut._condition, fut._waiters, fut._done_callbacks = made
                fut._made = True
            else:  # made meanwhile by another thread: its attributes answer now
                return getattr(fut, ("_condition", "_waiters", "_done_callbacks")[self.index])
        return made[self.index]


class ScoopFuture(cf.Future):  # type: ignore[type-arg]
    """The future of a task submitted from a client.  A concurrent.futures.Future.

    A million of them may wait in a queue, so a pending future is small: Future's
    Condition (an RLock, a deque and bound methods: 1.3 kB) and its lists of waiters
    and callbacks are made the first time a waiter, a callback or a blocking call
    needs them (``_MadeOnUse``), not at creation.  Until then nobody can be waiting,
    so the task's start and its result change the state under the module's lock alone
    (``start``, ``settle``), and ``done()``, ``result()`` of a finished
    future and the like read it without the condition: most futures never make one
    (nine objects fewer for the garbage collector per task, most of its time).
    """

    _started = 0.0  # time.monotonic() when it was handed to a worker
    asked: Answer | None = None  # a worker's sub-task: the answer a cancel() waits for (worker/subtasks.py)
    _condition = _MadeOnUse(0)
    _waiters = _MadeOnUse(1)
    _done_callbacks = _MadeOnUse(2)

    def __init__(self, holder: Holder | None = None, tid: int = 0, what: str = "") -> None:
        # Future.__init__, less what _MadeOnUse makes when it is needed.
        self._state = cfb.PENDING
        self._result = None
        self._exception = None
        self._made: bool | None = None  # True once _MadeOnUse made the condition and lists
        self._holder = holder
        self._tid = tid
        self._what = what  # the task's function, for error messages (serialize.describe(): interned)

    def __reduce__(self) -> Any:
        # A concurrent.futures.Future never pickles (its condition's lock does not); one of ours
        # that finished before anything waited on it has no condition, and would pickle as a dead
        # copy: a task handed a future (or a future's bound method) would run on a stale snapshot.
        raise TypeError(f"cannot pickle a {type(self).__name__}: a future stays in the process that made it")

    def __copy__(self) -> ScoopFuture:
        # copy.copy() of a concurrent.futures.Future shares its state (__dict__ copied); so here,
        # which __reduce__ above would refuse.
        new = self.__class__.__new__(self.__class__)
        new.__dict__.update(self.__dict__)
        return new

    @property
    def tid(self) -> int:
        """Its task's id for its holder (a session)."""
        return self._tid

    # Reading one attribute needs no lock: Future's own take its condition only to read
    # ``_state``, which would make one for every future (_MadeOnUse).
    def done(self) -> bool:
        """True if the future finished (with a result or an error) or was cancelled."""
        return self._state in _DONE

    def cancelled(self) -> bool:
        """True if the future was cancelled."""
        return self._state in _CANCELLED

    def running(self) -> bool:
        """True while a worker runs its task."""
        return self._state == cfb.RUNNING

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As Future.exception: the task's error, or None; waits at most ``timeout`` s."""
        if self._state == cfb.FINISHED:
            return self._exception
        return super().exception(timeout)

    def cancel(self) -> bool:
        """Cancel the task if no worker has it yet; True if it is (now) cancelled, and then it will
        not run.  A remote client's or a worker's asks its broker first (see Answer)."""
        if self._state == cfb.FINISHED:  # (map() cancels every future it has read)
            return False
        holder = self._holder
        if holder is not None and self._state == cfb.PENDING and holder.confirms_cancels:
            holder.confirm_cancels([self], True)
            return self._state in _CANCELLED
        if not super().cancel():  # runs the done-callbacks, outside every lock
            return False
        with self._condition:
            if self._state == cfb.CANCELLED:
                # Tell waiters (wait(), as_completed()) now rather than when the
                # broker reaches this task in its queue.
                self.set_running_or_notify_cancel()
        holder = self._holder
        if holder is not None:
            self._holder = None
            holder.cancelled(self._tid)
        return True

    def result(self, timeout: float | None = None) -> Any:
        """As Future.result; a short task's result may first be read by this very thread (its
        holder's ``lead``: broker/leader.py), which saves two thread hand-offs."""
        # Finished is final: a result set is read as it is (Future's path for the rest).
        if self._state == cfb.FINISHED and self._exception is None:
            return self._result
        holder = self._holder
        if holder is not None and self._state in _UNDONE:
            timeout = holder.lead(self, timeout)
        return super().result(timeout)

    def set_running_or_notify_cancel(self) -> bool:
        """As Future's; a task that starts running is timed from now (see describe_running)."""
        ok = super().set_running_or_notify_cancel()
        if ok:
            self._started = time.monotonic()
        return ok

    def set_exception(self, exception: BaseException | None) -> None:
        """As Future.set_exception; a WorkerLostError is prefixed with the task's function."""
        if isinstance(exception, WorkerLostError) and self._what:
            exception.args = (f"{self._what}(): {exception.args[0] if exception.args else ''}",)
        self._holder = None
        super().set_exception(exception)


_DONE = (cfb.CANCELLED, cfb.CANCELLED_AND_NOTIFIED, cfb.FINISHED)
_CANCELLED = (cfb.CANCELLED, cfb.CANCELLED_AND_NOTIFIED)
_UNDONE = (cfb.PENDING, cfb.RUNNING)
_OK = protocol.OK
_PENDING, _RUNNING, _FINISHED = cfb.PENDING, cfb.RUNNING, cfb.FINISHED
_CANCELLED_STATUS = protocol.CANCELLED
_NONE = serialize.NONE_PICKLE  # a result of None, as a worker sends it: nothing to unpickle


# The task's start and its result change the state of a future that has no condition yet (so
# no waiter and no callback: nobody to notify) under _MAKING, under which a condition is made:
# a waiter that comes at that moment makes it first, then the usual path below notifies it, or
# sees the new state.  (_MAKING.acquire() and release(), not ``with``: its look-ups of
# __enter__ and __exit__ cost twice the lock itself, on every task.)


def settle(fut: ScoopFuture, status: int, frames: Any) -> None:
    """Resolve ``fut`` with a result message's outcome (unpickled here: call it holding no lock)."""
    if status == _OK and len(frames) == 1:  # the usual result: serialize.decode_outcome, inline
        try:
            value, ok = pickle.loads(frames[0]), True
        except BaseException as exc:  # even SystemExit: this runs in the client's I/O thread
            value, ok = serialize.unpickling_error(exc, fut._what), False
    else:
        ok, value = serialize.decode_outcome(status, frames, fut._what)
    if ok and fut._made is None:
        _MAKING.acquire()
        try:
            if fut._made is None and fut._state in _UNDONE:
                fut._result = value
                fut._state = cfb.FINISHED
                fut._holder = None
                return
        finally:
            _MAKING.release()
    try:
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
    except cf.InvalidStateError:
        pass  # cancelled between the look and the set


def settle_all(
    futures: dict[int, ScoopFuture], items: Iterable[tuple[int, int, Sequence[Any]]], cancels_dropped: bool
) -> tuple[int, int]:
    """Resolve the futures of a batch of results, each (task id, status, frames), taking them
    out of ``futures`` (call it holding no lock: results are unpickled here).

    settle() for each, except that the usual result (one frame, OK, for a future without a
    condition: nobody waits on it yet) is unpickled first and its future set finished with
    the next ones of its kind, in one hold of the module's lock; a result of another kind
    first finishes those before it, so futures still finish in the order of their results.
    With ``cancels_dropped`` (an embedded broker), CANCELLED means the broker dropped the
    task without running it: the future is cancelled.  Returns (results whose future was
    not there, futures cancelled so).
    """
    unmatched = dropped = 0
    pop = futures.pop
    ready: list[ScoopFuture] = []  # their result is in _result, their state not yet finished
    for tid, status, frames in items:
        fut = pop(tid, None)
        if fut is None:
            unmatched += 1  # cancelled, or a bug: a duplicate
            continue
        if status == _OK and len(frames) == 1 and fut._made is None:
            try:
                value = pickle.loads(data) if (data := frames[0]) != _NONE else None
            except BaseException as exc:  # even SystemExit: this runs in the client's I/O thread
                if ready:  # (those before it finish first: results in order)
                    _finish(ready)
                    ready = []
                try:
                    fut.set_exception(serialize.unpickling_error(exc, fut._what))
                except cf.InvalidStateError:
                    pass  # cancelled while its result was unpickled (ex.cancel())
                continue
            # Only read once the state says FINISHED (then set under _MAKING, or by set_result).
            fut._result = value
            ready.append(fut)
            continue
        if ready:
            _finish(ready)
            ready = []
        if status == _CANCELLED_STATUS and cancels_dropped:
            dropped += 1
            cancel_dropped(fut)
        else:
            settle(fut, status, frames)
    if ready:
        _finish(ready)
    return unmatched, dropped


def _finish(ready: list[ScoopFuture]) -> None:
    """Set finished futures whose result is in ``_result`` already (settle_all)."""
    late = None
    _MAKING.acquire()
    try:
        for fut in ready:
            if fut._made is None and fut._state in _UNDONE:
                fut._state = _FINISHED
                fut._holder = None
            else:
                late = late or []
                late.append(fut)
    finally:
        _MAKING.release()
    if late:  # a condition made meanwhile (a waiter came): the usual path notifies it
        for fut in late:
            try:
                fut.set_result(fut._result)
            except cf.InvalidStateError:
                pass  # cancelled meanwhile


def start(fut: ScoopFuture) -> bool:
    """Its task is about to run: the future is running now, or False if it was cancelled.

    Future.set_running_or_notify_cancel, in one hold of the future's lock, less its error
    (logged, then raised) for a future in another state than pending or cancelled: cancelled
    and notified already, as cancel() does at once (a cancel between a look-up in the futures
    table and this call is not an error), or failed by fail_all meanwhile.
    """
    if fut._made is None:  # no condition: see above
        _MAKING.acquire()
        try:
            if fut._made is None and fut._state == cfb.PENDING:
                fut._started = time.monotonic()
                fut._state = cfb.RUNNING
                return True
        finally:
            _MAKING.release()
    with fut._condition:
        state = fut._state
        if state == cfb.PENDING:
            fut._state = cfb.RUNNING
            fut._started = time.monotonic()
            return True
        if state == cfb.CANCELLED:
            fut._state = cfb.CANCELLED_AND_NOTIFIED
            for waiter in fut._waiters:
                waiter.add_cancelled(fut)
        return False


def start_all(futures: dict[int, ScoopFuture], tids: Iterable[int]) -> list[int]:
    """The tasks ``tids`` are about to run: their futures (in ``futures``) are running now.

    start() for each, in one hold of the module's lock and with one clock reading for those
    without a condition (most: nobody waits on a future whose task has not started yet).
    Returns the ids whose future is gone or was cancelled (then taken out of ``futures``):
    their tasks are dropped.
    """
    gone: list[int] = []
    others: list[tuple[int, ScoopFuture]] = []  # with a condition: start() notifies
    now = time.monotonic()
    get = futures.get
    _MAKING.acquire()
    try:
        for tid in tids:
            fut = get(tid)
            if fut is None:
                gone.append(tid)
            elif fut._made is None and fut._state == _PENDING:
                fut._started = now
                fut._state = _RUNNING
            else:
                others.append((tid, fut))
    finally:
        _MAKING.release()
    for tid, fut in others:
        if not start(fut):
            futures.pop(tid, None)
            gone.append(tid)
    return gone


def cancel_dropped(fut: ScoopFuture) -> None:
    """The broker dropped this task before any worker started it: cancel its future.

    It may count as running (handed to a worker, which gave it back unstarted);
    it never ran, so it is put back to pending and cancelled like any other.
    """
    with fut._condition:
        if fut._state == cfb.RUNNING:
            fut._state = cfb.PENDING
    fut.cancel()


CANCEL_WAIT = 5.0  # s a cancel() waits at most for its broker's answer (then: False)


def in_event_loop() -> bool:
    """This thread runs an asyncio event loop (asyncio.wrap_future cancels there): a remote
    client's cancel() only asks, and says False, rather than stall the loop for its broker."""
    aio = sys.modules.get("asyncio")
    return aio is not None and aio._get_running_loop() is not None


class Answer:
    """The broker's answer to one CANCEL with CONFIRM, about ``n`` tasks.

    A holder that talks to its broker through messages (a remote client, a worker) cannot know
    that no worker has a task yet: cancel() asks (Holder.confirm_cancels) and says True only if
    the broker dropped it -- RESULTS CANCELLED; STARTED (a worker has it) or its result say no.
    Whoever reads an answer puts it on its future first (cancelled, running, or done), then
    calls one(); ``event`` is set when every task has its answer, or when the holder gives up
    (release(): its broker is gone -- the futures have failed).  A second cancel() of the same
    future waits for the same answer.
    """

    __slots__ = ("event", "left", "lock")

    def __init__(self, n: int) -> None:
        self.left = n
        self.lock = threading.Lock()
        self.event = threading.Event()

    def one(self) -> None:
        with self.lock:
            self.left -= 1
            last = self.left == 0
        if last:
            self.event.set()

    def release(self) -> None:
        self.event.set()


def wait_answers(answers: Iterable[Answer]) -> None:
    """Wait for these answers, CANCEL_WAIT s at most in all."""
    deadline = time.monotonic() + CANCEL_WAIT
    for answer in answers:
        answer.event.wait(max(0.0, deadline - time.monotonic()))


def cancel_all(futs: Iterable[cf.Future[Any]], wait: bool = True) -> None:
    """cancel() of each of ``futs``, with one request per holder that asks its broker (map()
    dropping what it has not read, Pool.terminate(): one at a time, each would wait in turn)."""
    asks: dict[int, tuple[Holder, list[ScoopFuture]]] = {}
    for given in futs:
        fut = given  # a map's stand-in (mapping._Substitute, _Continued): its task's future
        while not isinstance(fut, ScoopFuture) and isinstance(inner := getattr(fut, "inner", 0), cf.Future):
            fut = inner
        if isinstance(fut, ScoopFuture):
            holder = fut._holder
            if holder is not None and fut._state == cfb.PENDING and holder.confirms_cancels:
                asks.setdefault(id(holder), (holder, []))[1].append(fut)
                continue  # (a stand-in follows its task's future: mapping._cancel_with)
        given.cancel()
    for holder, mine in asks.values():
        holder.confirm_cancels(mine, wait)


def cancel_answered(fut: ScoopFuture) -> None:
    """The broker dropped this task, as a cancel() asked (CONFIRM): no worker ever had it, and
    none will.  The future is cancelled (its holder is not told again)."""
    with fut._condition:
        if fut._state == cfb.RUNNING:
            fut._state = cfb.PENDING
        fut._holder = None
    fut.cancel()


def cancel_running(fut: ScoopFuture) -> bool:
    """ex.cancel() of a task that may be running: the future ends cancelled (True) unless it is
    done.  Its holder is not told: the caller stops the task (Session.stop_task)."""
    with fut._condition:
        if fut._state not in (cfb.PENDING, cfb.RUNNING):
            return False
        fut._state = cfb.PENDING
        fut._holder = None
    return fut.cancel()


def running(futures: Iterable[ScoopFuture]) -> list[ScoopFuture]:
    """The futures whose tasks a worker has (or is about to have), longest-running first."""
    futs = [f for f in futures if f._state == cfb.RUNNING]
    futs.sort(key=lambda f: f._started)
    return futs


def describe_running(futures: list[ScoopFuture], shown: int = 5) -> str:
    """``f() running for 1.2 s, ...`` for the first ``shown`` of ``futures`` (see running())."""
    now = time.monotonic()
    text = ", ".join(
        f"{(f._what or 'a task').rsplit('.', 1)[-1]}() running for {now - f._started:.1f} s"
        for f in futures[:shown]
    )
    if len(futures) > shown:
        text += f" and {len(futures) - shown} more"
    return text
