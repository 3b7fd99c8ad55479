"""One client's conversation with its broker: the futures table, the outbox, the client's table.

::

  user threads                           the session's thread (the broker's, when embedded)
  submit() --pickle--> outbox --wake-->  broker takes the tasks in, sends them to workers
  Future <--set_result-- handlers[RESULTS] <----- RESULTS (batched) from the broker
          <--set_running-- started(tid) / handlers[STARTED]
  cancel() --> cancelled(tid) --> (a remote session sends CANCEL)

A session keeps only the futures: a task's function and arguments are pickled at
submit() and their bytes live in the broker until the result arrives; a future leaves
the table the moment it is resolved.  Every message the broker sends a client goes
through one table, ``handlers`` ({kind: handler}), whether it came over a socket
(RemoteSession, remote.py) or was handed over in the process (EmbeddedSession,
embedded.py).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .. import logs, pools
from ..deploy.contract import LaunchOptions
from ..deploy.groups import Launchers, RemoteGroup, Target
from ..deploy.hosts import Host, local_cpu_count
from ..errors import BrokenScoopExecutor, BrokerLostError, InitializerError, ProtocolError, SerializationError
from ..wire import fnframes
from ..wire import protocol as P
from ..wire.framing import WakePipe
from ..worker import setup as worker_setup
from .future import (
    Answer,
    ScoopFuture,
    cancel_answered,
    cancel_running,
    in_event_loop,
    running,
    settle_all,
    start,
    start_all,
    wait_answers,
)

__all__ = ["Session", "StatusRequest", "status_timeout"]

log = logging.getLogger("scoopexec")


def status_timeout(timeout: float) -> TimeoutError:
    return TimeoutError(
        f"the broker did not answer a status request within {timeout:g} s; it may be "
        "overloaded (try a longer timeout) or unreachable"
    )


class StatusRequest:
    """A status snapshot asked for by a user thread, answered by the session's thread."""

    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: dict[str, Any] = {}
        self.error = ""


class Session:
    """The client's side of a pool (see the module docstring); subclasses connect it to a broker."""

    endpoint = ""
    # At interpreter exit: abort (a scoopexec.Pool's, as multiprocessing terminates its pools) or
    # let pending futures finish (a ScoopExecutor's, as ProcessPoolExecutor does).
    abort_at_exit = False

    def __init__(self, setup: list[bytes]) -> None:
        self._setup = setup
        self.futures: dict[int, ScoopFuture] = {}
        self.outbox: collections.deque[tuple[int, list[Any]]] = collections.deque()  # submissions
        self.inbox: collections.deque[list[Any]] = collections.deque()  # other messages for the broker
        self.cancels: collections.deque[int] = collections.deque()  # for a broker that must be told
        self.confirms: collections.deque[int] = collections.deque()  # cancels it must answer (CONFIRM)
        self.answers: dict[int, Answer] = {}  # task id -> the answer a cancel() waits for
        self._asking = threading.Lock()  # over `answers`
        self.wake = WakePipe()
        self._tids = itertools.count(1)
        self.broken_kind = ""
        self.broken_msg = ""
        self.inherited = False  # this process is a fork of the pool's (forked())
        self.stop_when_idle = False
        self.pool_id = ""
        self.thread: threading.Thread | None = None
        self.closed = threading.Event()
        self.workers: Launchers | None = None
        self.launch_options = LaunchOptions(sys.executable)
        self._syncs: list[threading.Event] = []
        self.unmatched = 0
        self.status_requests: collections.deque[StatusRequest] = collections.deque()
        self.status_waiting: collections.deque[StatusRequest] = collections.deque()  # sent, not answered
        # What the client does with each message from its broker.
        self.handlers: dict[int, Callable[[P.Message], None]] = {
            P.RESULTS: self._on_results,
            P.STARTED: self._on_started,
            P.OUTPUT: self._on_output,
            P.LOG: self._on_log,
            P.BROKEN: self._on_broken,
            P.ERROR: self._on_error,
            P.STATUS_REPLY: self._on_status_reply,
            P.PING: _ignore,
        }

    # ------------------------------------------------- called from user threads
    def submit(self, frames: list[Any], what: str = "") -> ScoopFuture:
        tid = next(self._tids)
        fut = ScoopFuture(self, tid, what)
        self.futures[tid] = fut
        self.outbox.append((tid, frames))
        self._kick()
        return fut

    def _kick(self) -> None:
        """Have the session's thread take in the outbox."""
        self.wake.wake()

    def share(self, frames: list[Any]) -> None:
        self.inbox.append([P.header(P.SHARE), *frames])
        self.wake.wake()

    def cancelled(self, tid: int) -> None:
        """A future was cancelled before its task started (ScoopFuture.cancel)."""
        if self.futures.pop(tid, None) is not None and self.tells_cancels:
            self.cancels.append(tid)
            self.wake.wake()
        self._check_idle()

    def lead(self, fut: ScoopFuture, timeout: float | None) -> float | None:
        """``fut.result()`` is about to wait: read its result in this thread if that helps
        (EmbeddedSession); returns what is left of ``timeout``."""
        return timeout

    tells_cancels = False  # a remote broker must be told; an embedded one asks (started())
    confirms_cancels = False  # a remote broker answers whether it dropped the task (future.Answer)

    def confirm_cancels(self, futs: list[ScoopFuture], wait: bool) -> None:
        """cancel() of futures not running as far as this client knows (future.Answer): one CONFIRM
        for them all; waits for the answer (CANCEL_WAIT s at most) unless ``wait`` is False or this
        is the session's thread (a done-callback: it only asks).  A broken session asks nothing."""
        answers: set[Answer] = set()
        ask: list[int] = []
        with self._asking:
            for f in futs:
                if self.futures.get(f.tid) is f and not (f.running() or f.done()):
                    answer = self.answers.get(f.tid)
                    if answer is None:
                        ask.append(f.tid)
                    else:  # another thread asked already: its answer is this one's
                        answers.add(answer)
            if ask and not self.broken_msg and self.thread_alive():
                answer = Answer(len(ask))
                for tid in ask:
                    self.answers[tid] = answer
                self.confirms.extend(ask)
                answers.add(answer)
                self.wake.wake()
        if wait and answers and threading.current_thread() is not self.thread and not in_event_loop():
            wait_answers(answers)

    def _release_answers(self) -> None:
        """No answer will come (the session broke, or ends): every cancel() waiting returns."""
        with self._asking:
            answers = set(self.answers.values())
            self.answers.clear()
        for answer in answers:
            answer.release()

    def stop_task(self, fut: ScoopFuture, force: bool) -> bool:
        """ex.cancel() of a running task: its future ends cancelled, and the broker stops the task
        and every task it submitted (CANCEL with arg 1: interrupt; 2: end the worker process)."""
        tid = fut.tid
        if self.futures.get(tid) is not fut or not cancel_running(fut):
            return False
        self.futures.pop(tid, None)
        self.inbox.append([P.pack(P.CANCEL, [(tid,)], arg=2 if force else 1)])
        self.wake.wake()
        self._check_idle()
        return True

    def sync(self, timeout: float = 1.0) -> None:
        """Wait until the session's thread has taken in everything submitted so far."""
        if not self.thread_alive() or self.thread is threading.current_thread():
            return
        ev = threading.Event()
        self._syncs.append(ev)
        self.wake.wake()
        ev.wait(timeout)

    def status(self, timeout: float) -> dict[str, Any]:
        """The broker's status snapshot (Broker.status())."""
        if not self.thread_alive() or self.closed.is_set():
            raise RuntimeError("this pool is shut down; it has no status any more")
        return self._status(timeout)

    def _status(self, timeout: float) -> dict[str, Any]:
        """Ask the broker with a STATUS message sent by the session's thread."""
        if self.thread is threading.current_thread():
            raise RuntimeError(
                "the status of a standalone broker cannot be asked for from this client's I/O thread "
                "(a done-callback): ask from another thread"
            )
        req = StatusRequest()
        self.status_requests.append(req)
        self.wake.wake()
        if not req.event.wait(timeout):
            raise status_timeout(timeout)
        if req.error:
            raise RuntimeError(req.error)
        return req.value

    # --------------------------------------------- called from the session's thread
    def setup_frames(self) -> list[bytes]:
        return self._setup

    def dispatched(self) -> None:
        while self._syncs:
            self._syncs.pop().set()

    def started(self, tid: int) -> bool:
        """The task is about to run: its future is running now, or False if it was cancelled."""
        fut = self.futures.get(tid)
        if fut is None:
            return False
        if fut.running():  # told twice: a cancel()'s answer (CONFIRM) and the dispatch
            return True
        ok = start(fut)  # (False: cancelled, maybe by another thread since the look-up)
        if not ok:
            self.futures.pop(tid, None)
        return ok

    def started_all(self, tids: list[int]) -> list[int]:
        """The tasks are about to run (an embedded broker asks, a batch at a time): their futures
        are running now; returns the ids of those cancelled, whose tasks are dropped."""
        return start_all(self.futures, tids)

    def handle(self, frames: list[Any]) -> None:
        """A message from the broker: checked, then routed through ``handlers``."""
        try:
            msg = P.decode(frames)
        except ProtocolError as exc:
            log.error("bad message from the broker: %s", exc)
            if self.status_waiting and _kind_of(frames) == P.STATUS_REPLY:
                req = self.status_waiting.popleft()
                req.error = f"the broker at {self.endpoint} sent a malformed status: {exc}"
                req.event.set()
            return
        self.dispatch(msg)

    def dispatch(self, msg: P.Message) -> None:
        """A message (decoded) through ``handlers``."""
        handler = self.handlers.get(msg.kind)
        if handler is None:
            log.error("bad message from the broker: unexpected %s", msg.name)
            return
        handler(msg)

    cancels_dropped = False  # CANCELLED from an embedded broker: it dropped the task, never ran it

    def _on_results(self, msg: P.Message) -> None:
        self.results([(ent[0], ent[1], body) for ent, body in msg.parts()])

    def results(self, items: Iterable[tuple[int, int, Sequence[Any]]]) -> None:
        """RESULTS: (task id, status, frames) for each; from the message, or straight from an
        embedded broker (broker/ports.py, InProcessPort.results).  A result nobody waits for
        (cancelled, or a bug: a duplicate) is counted in ``unmatched``."""
        answered: list[Answer] = []
        if self.answers:  # some cancel() waits for the broker's answer: these may be it
            items = self._answered(items, answered)
        unmatched, dropped = settle_all(self.futures, items, self.cancels_dropped)
        for answer in answered:
            answer.one()
        if unmatched:
            self.unmatched += unmatched
        if dropped:
            self.dropped += dropped
        if self.stop_when_idle and not self.futures:
            self.request_stop()

    def _answered(
        self, items: Iterable[tuple[int, int, Sequence[Any]]], answered: list[Answer]
    ) -> list[tuple[int, int, Sequence[Any]]]:
        """Results that answer a cancel() (confirm_cancels): CANCELLED ones cancel their future
        here; returns the others, to settle (their answers, in ``answered``, are given after)."""
        rest: list[tuple[int, int, Sequence[Any]]] = []
        for item in items:
            with self._asking:
                answer = self.answers.pop(item[0], None)
            if answer is not None:
                answered.append(answer)
                if item[1] == P.CANCELLED:
                    fut = self.futures.pop(item[0], None)
                    if fut is not None:
                        cancel_answered(fut)
                    continue
            rest.append(item)
        return rest

    def _on_started(self, msg: P.Message) -> None:
        for (tid,) in msg.entries:
            self.started(tid)
            if self.answers:
                with self._asking:
                    answer = self.answers.pop(tid, None)
                if answer is not None:
                    answer.one()

    def _on_output(self, msg: P.Message) -> None:
        for (_, stream), frame in msg.each():
            out = sys.stderr if stream == 2 else sys.stdout
            if out is None:
                continue
            try:
                out.write(P.as_bytes(frame).decode("utf-8", "replace"))
                out.flush()
            except (OSError, ValueError):
                pass

    def _on_log(self, msg: P.Message) -> None:
        for _, frame in msg.each():
            try:
                logs.handle_remote_record(P.as_bytes(frame))
            except Exception:  # pragma: no cover - a bad record must not stop the pool
                log.debug("could not re-emit a worker's log record", exc_info=True)

    def _on_broken(self, msg: P.Message) -> None:
        self.broken(str(msg.info.get("kind", "")), str(msg.info.get("message", "")))

    def _on_error(self, msg: P.Message) -> None:
        if msg.text.startswith("unknown peer"):
            self.broken(
                "broker",
                f"the broker at {self.endpoint} no longer knows this client (it was restarted, "
                "or gave this client up after a long silence); start a new executor",
            )
        else:
            log.error("broker at %s: %s", self.endpoint, msg.text)

    def _on_status_reply(self, msg: P.Message) -> None:
        if self.status_waiting:
            req = self.status_waiting.popleft()
            req.value = msg.info
            req.event.set()

    def broken(self, kind: str, message: str, stop: bool = True) -> None:
        """The pool cannot run this client's tasks any more: fail them all, and stop (unless
        ``stop`` is False: the caller stops it, with ``stop_when_idle`` and ``request_stop()``)."""
        if self.broken_msg:
            return
        exc_type: type[BrokenScoopExecutor]
        if kind == "main":  # the worker's message is complete and short: say it once
            text, exc_type = message, InitializerError
        elif kind == "initializer":
            logging.getLogger("concurrent.futures").critical("Exception in initializer:\n%s", message)
            text = (
                "A worker's initializer failed, so this pool cannot run tasks any more: fix the "
                f"initializer (its traceback follows) and start a new executor.\n{message}"
            )
            exc_type = InitializerError
        elif kind == "broker":
            text, exc_type = message, BrokerLostError
        else:
            text, exc_type = message, BrokenScoopExecutor
        self.broken_kind = kind
        self.broken_msg = text
        self.fail_all(exc_type, text)
        self._release_answers()  # (after: a cancel() waiting sees its future failed, and says False)
        if stop:
            self.stop_when_idle = True
            self.request_stop()

    def fail_all(self, exc_type: type[Exception], text: str) -> None:
        while self.futures:
            try:
                _, fut = self.futures.popitem()
            except KeyError:
                break
            try:
                fut.set_exception(exc_type(text))
            except cf.InvalidStateError:
                pass

    # ------------------------------------------------------ workers elsewhere
    def _remote_target(self, kind: str) -> Target:
        """Where workers launched elsewhere (``kind``: "ssh" or "srun") connect, with which keys."""
        raise NotImplementedError  # pragma: no cover - overridden

    def start_local(self, n: int) -> None:
        """Start ``n`` more worker processes on this machine."""
        raise NotImplementedError  # pragma: no cover - overridden

    def add_hosts(self, hosts: Sequence[Host], srun: int = 0) -> list[RemoteGroup]:
        """Start workers on ``hosts`` (ssh; local ones here) and ``srun`` workers; wait for them."""
        assert self.workers is not None
        handed = worker_setup.handed_over(self._setup)
        if handed is not None and (srun or not all(h.local for h in hosts)):
            raise SerializationError(
                f"this pool's initializer reaches local workers only ({handed[0]}: it was handed "
                "over, worker/handover.py): it cannot grow on other hosts or through srun"
            )
        groups = self.workers.start_remote(hosts, srun, self._remote_target, self.launch_options)
        n_local = sum(h.slots or local_cpu_count() for h in hosts if h.local)
        if n_local:
            self.start_local(n_local)
        return groups

    # --------------------------------------------------------------- life cycle
    def request_stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_idle(self) -> None:
        if self.stop_when_idle and not self.futures:
            self.request_stop()

    # Seconds the session's thread may go without a turn of its loop (or, once stopping, without
    # ending) while someone waits for it, before the waiter says so and stops waiting.
    stuck_after = 30.0
    abandoned = False
    dropped = 0  # futures cancelled because the broker dropped their tasks (drop_unstarted)

    def turns(self) -> int:  # pragma: no cover - overridden
        """How many turns the session thread's loop has made (it turns at least once a second)."""
        raise NotImplementedError

    def cancel_queued(self, wait: bool = True) -> int:
        """Cancel every future not handed to a worker yet; return how many.  A broker that answers
        (confirm_cancels) is asked once for them all; ``wait`` False: not waited for."""
        futs = list(self.futures.values())
        if not self.confirms_cancels:
            return sum(1 for fut in futs if fut.cancel())
        self.confirm_cancels([f for f in futs if not (f.running() or f.done())], wait)
        return sum(1 for f in futs if f.cancelled())

    def drop_unstarted(self) -> None:
        """Have the broker drop the tasks it holds for no worker, even those counted as running
        (a worker handed them back); they are cancelled.  The embedded broker only."""

    def running(self) -> list[ScoopFuture]:
        """The futures whose tasks a worker has (or is about to have), longest-running first."""
        return running(list(self.futures.values()))

    def forked(self, parent: int) -> None:
        """This process is a fork of the pool's (see pools._after_fork_in_child): refuse work
        here, and leave the pool's threads, sockets and workers to the parent."""
        self.inherited = True
        self.broken_kind = "forked"
        self.broken_msg = (
            f"this pool belongs to process {parent}; a forked child process cannot use it "
            "(create a ScoopExecutor in the child, or start the child with the 'spawn' or "
            "'forkserver' method)"
        )
        if self.workers is not None:
            self.workers.forked()

    def abort(self, reason: str, timeout: float = 10.0) -> str:
        """Stop now: cancel what has not started, fail what has, stop the workers.

        Returns "" once the pool is down, else why it is not (see join()).
        """
        if self.inherited:
            return ""
        self.cancel_queued(wait=False)  # (the broker drops what it can: what is not answered fails)
        self.fail_all(BrokenScoopExecutor, f"abandoned: {reason}")
        self._release_answers()
        self.stop_when_idle = True
        self.request_stop()
        return self.join(limit=timeout)

    def close(self, wait: bool = True) -> str:
        """Stop once every future is resolved; with wait, block until everything is down.

        Returns "" when it did not wait or everything is down, else why not (see join()).
        """
        if self.inherited:
            return ""  # the parent's pool (forked)
        self.stop_when_idle = True
        self._check_idle()
        return self.join() if wait else ""

    def thread_alive(self) -> bool:
        """Whether the session's thread runs (read once: a join() elsewhere lets go of it)."""
        t = self.thread
        return t is not None and t.is_alive()

    def join(self, limit: float | None = None, report: Callable[[float], None] | None = None) -> str:
        """Wait for the session's thread to end; "" when it has, else why it has not.

        Waits in slices, so Ctrl-C gets through, and calls ``report(seconds
        waited)`` after each.  Gives up when ``limit`` seconds have passed, or
        when the thread has not turned its loop for ``stuck_after`` seconds
        (stuck in a done-callback, say): then the pool is abandoned, its
        pending futures failed and its worker processes stopped, and the
        answer says where the thread is stuck.
        """
        t = self.thread
        if t is None or t.ident is None or t is threading.current_thread():
            return ""  # (never started: see EmbeddedSession._start_failed)
        if self.abandoned or self.inherited:
            return ""  # (abandoned: said once already)
        start = last = time.monotonic()
        turns = self.turns()
        while True:
            t.join(0.25)
            if not t.is_alive():
                if self.closed.is_set():
                    # Dropped as ProcessPoolExecutor drops its manager thread: the session sits
                    # in reference cycles, and CPython's test harness counts a Thread object
                    # that outlives its test as a dangling thread (until a garbage collection).
                    self.thread = None
                    return ""
                why = f"the pool's {t.name} thread ended without stopping the pool (see the log)"
                self._abandon(why)
                return why
            now = time.monotonic()
            n = self.turns()
            if n != turns:
                turns, last = n, now
            elif now - last >= self.stuck_after:
                why = (
                    f"the pool's {t.name} thread has not come back to its loop for {now - last:.0f} s; "
                    f"it is in {_where(t)}. A done-callback that blocks (on another future of this "
                    "pool, say) holds up every result: the pool is abandoned and its workers stopped"
                )
                self._abandon(why)
                return why
            if limit is not None and now - start >= limit:
                why = f"the pool's {t.name} thread did not stop within {limit:g} s; it is in {_where(t)}"
                self._abandon(why)
                return why
            if report is not None:
                report(now - start)

    def _abandon(self, why: str) -> None:
        """The session's thread cannot be relied on: fail what is pending and stop the workers from here."""
        self.abandoned = True
        self.stop_when_idle = True
        self.fail_all(BrokenScoopExecutor, why)
        if self.workers is not None:
            self.workers.stop()
        self.request_stop()

    def _finished(self) -> None:
        """The session's thread ends: nothing pending may be left waiting."""
        self.fail_all(
            BrokenScoopExecutor,
            "the pool was shut down before this task completed (wait for the futures you need, "
            "or shut down with wait=True, before the executor goes away)",
        )
        for req in (*self.status_requests, *self.status_waiting):
            req.error = "the pool shut down before its broker answered"
            req.event.set()
        self.status_requests.clear()
        self.status_waiting.clear()
        self._release_answers()
        self.wake.close()
        pools.untrack(self)
        fnframes.forget()  # (the large function frames marked lately)
        self.closed.set()


def _ignore(msg: P.Message) -> None:
    pass


def _where(t: threading.Thread) -> str:
    """Where a thread is now: its innermost frames, innermost first."""
    frame = sys._current_frames().get(t.ident) if t.ident is not None else None
    if frame is None:
        return "an unknown place"
    stack = traceback.extract_stack(frame)[-4:]
    return " <- ".join(f"{f.name}() at {os.path.basename(f.filename)}:{f.lineno}" for f in reversed(stack))


def _kind_of(frames: list[Any]) -> int | None:
    try:
        return P.unpack_header(P.as_bytes(frames[0]))[0]
    except (ProtocolError, IndexError, AttributeError):
        return None
