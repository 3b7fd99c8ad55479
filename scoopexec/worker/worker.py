"""The worker process: a hub greenlet and one greenlet per running task.

::

    broker --TASKS--> hub: queue of tasks ----start----> runner greenlet: fn(*args)
                       ^                                      |  submit() -> SUBMIT (batched)
                       |                                      |  future.result() parks:
                       +------- resume when the result -------+  switch back to the hub
                                arrives (RESULTS)

The hub is the main greenlet of the main thread.  It receives messages (one table,
``{kind: handler}``), starts queued tasks on runner greenlets (re-used, since a fresh
greenlet costs an mmap), resumes parked ones whose futures completed (waiting.py), and
flushes results, nested submissions, output and credit in batches (channels.Outbox).
A task that waits on a future parks only its own greenlet, so a worker keeps running
other tasks -- its own children included -- and nested maps never deadlock, even on a
single worker.

Flow control is by credit: the worker asks for as many tasks as it wants
queued in hand (fewer when tasks are long, up to 64 when they are tiny), and
asks again whenever it starts one.  Parked tasks hold no credit, so a worker
whose every task waits still receives work.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import concurrent.futures._base as cfb
import logging
import os
import select
import selectors
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import greenlet

from .. import _hooks
from ..deploy.contract import EXIT_VERSION
from ..errors import ProtocolError
from ..wire import fnframes, serialize
from ..wire import protocol as P
from ..wire.framing import POOL, WakePipe
from ..wire.segments import SharedFrame
from ..wire.spin import SPIN, Spin
from . import lifeline
from .channels import ForwardLogs, ForwardStream, LinkChannel, Outbox, open_channel
from .pause import FLUSH_AFTER, Alarm, flusher
from .setup import Setups, script_globals
from .subtasks import SubTasks
from .waiting import DONE_STATES, Runner, Waits, WorkerFuture

if TYPE_CHECKING:
    import zmq

    from ..wire.security import Credentials
    from .zmqchannel import ZmqChannel

__all__ = ["Worker", "WorkerFuture", "as_completed", "current_worker", "wait"]

log = logging.getLogger("scoopexec.worker")

_current: Worker | None = None  # the worker of this process, when it is one


# s: a task known to run at least this long starts before its worker asks for the next one
# (its flusher asks FLUSH_AFTER later): the request's send, and the broker's answer, are not
# on the way to its start (64 workers starting theirs at once on 2 cores queue behind them).
ASK_LATER = 0.01
HELLO_CREDIT = 1  # tasks a worker's HELLO asks for (what an idle worker asks for once welcomed)
# s: tasks queued here wait behind a task known to run shorter than this (a worker asks for tasks
# ahead only while its tasks average less: _prefetch); a task not known, or known to run longer,
# hands them back to the broker first (and so does one started after a RECALL).  At every
# start of a task of 0.1 ms or more they used to go back, and came again with the next credit:
# 2,000 sleeps of 0.5 ms on 2 workers sent 1,996 RETURNs and 3,994 tasks (issue 17).
HOLD_BEHIND = 0.02


def current_worker() -> Worker | None:
    """The worker of this process, when it is one (None in a client)."""
    return _current


class _Task:
    __slots__ = ("attempt", "btid", "fkey", "frames", "setup", "started")

    def __init__(self, btid: int, setup: int, attempt: int, frames: list[Any]) -> None:
        self.btid = btid
        self.setup = setup
        self.attempt = attempt
        self.frames = frames
        self.started = 0.0
        self.fkey: Any = b""  # its function's pickle, or a large one's key (_unmark): its run time's key


def _failure(kind: str, message: str, tb: str = "") -> tuple[int, list[Any]]:
    return P.FAILED, serialize.failure_frames(kind, message, tb)


class Worker:
    """Connects to a broker and runs tasks until told to stop or the broker goes away."""

    def __init__(
        self,
        connect: str,
        *,
        link: socket.socket | None = None,
        tag: str = "",
        name: str = "",
        heartbeat: float = 1.0,
        heartbeat_timeout: float = 5.0,
        watch_stdin: bool = False,
        forward_output: bool = True,
        context: zmq.Context[Any] | None = None,
        curve: Credentials | None = None,
        ready: bool = False,
        connect_timeout: float = 0.0,
        keep_cwd: bool = False,
        max_message_size: int = -1,  # the guard on what it receives, before the broker says its own
    ) -> None:
        self.connect_to = connect
        self.tag = tag
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.name = name or f"{self.host}:{self.pid}"
        self.where = f"worker {self.name} (pid {self.pid} on {self.host})"  # for messages
        self.ident = b"W" + os.urandom(11)
        self._ready = ready
        self.keep_cwd = keep_cwd  # started in a directory chosen for it (cwd=): stay there
        self._connect_timeout = connect_timeout
        self.chan = open_channel(
            link, context, self.ident, connect, max_message_size=max_message_size,
            heartbeat=heartbeat, heartbeat_timeout=heartbeat_timeout, curve=curve,
        )  # fmt: skip

        self.hub = greenlet.getcurrent()
        self.thread_id = threading.get_ident()
        self.queue: collections.deque[_Task] = collections.deque()
        # Parked tasks to resume: (what it waits on, the value its park returns).  An entry
        # is stale, and skipped, unless its task is still parked on that very waiter.
        self.ready: collections.deque[tuple[Any, Any]] = collections.deque()
        self.waits = Waits(self.hub, self.ready, self.later)
        self.idle_runners: list[Runner] = []
        self.active: dict[int, Runner] = {}  # broker id -> runner holding that task
        self.current: _Task | None = None
        self.outbox = Outbox(self._send)
        self.subtasks = SubTasks(self)
        # The socket, the queue and the credit belong to whoever holds `lock`: the hub,
        # except while a task runs, when the flusher thread may take it (pause.flusher).
        self.lock = threading.RLock()
        self.setups = Setups(self, self._send, self.lock, self._flush_results)
        self.alarm = Alarm(level=link is not None)  # the slice running now, the flusher's wake-ups (pause.py)
        self._inbox: collections.deque[P.Message] = collections.deque()
        self._recalled, self._recall_armed = -1, False  # the slice of the last RECALL; see _on_recall
        self._foreign: collections.deque[Callable[[], None]] = collections.deque()
        self._wakeup = WakePipe()
        self.granted = 0  # credits the broker holds for us
        self.ask_later = False  # the running task's start did not ask for more: the flusher does
        self.avg = 0.0  # smoothed duration of a task's run between switches (s)
        self.fn_avg: dict[Any, float] = {}  # the same, per function
        self.fns = fnframes.Held()  # the large function frames held (wire/fnframes.py)
        self.stopping = False
        self.welcomed = False
        self.hello_open = True  # a HELLO waits for its WELCOME: a VersionMismatch then is the answer
        self.pool_id = ""
        self._forward_output = forward_output
        self._watch_stdin = watch_stdin
        self._reconnected = False
        self.importing_main = False
        self._streams: list[ForwardStream] = []
        self.max_message_size = -1
        self.urgent: Callable[[P.Message], None] = _ignore  # one read while a task runs (limits.py)
        self.after_task: Callable[[], None] = _nothing  # in a task's greenlet, its result queued (limits.py)
        # What the hub does with each message from the broker.
        self.handlers: dict[int, Callable[[P.Message], None]] = {
            P.TASKS: self._on_tasks,
            P.RESULTS: self.subtasks.on_results,
            P.STARTED: self.subtasks.on_started,  # the answer to a sub-task's cancel()
            P.SETUP: self.setups.on_setup,
            P.CANCEL: self._on_cancel,
            P.SHARE: self.setups.on_share,
            P.WELCOME: self._on_welcome,
            P.STOP: self._on_stop,
            P.ERROR: self._on_error,
            P.PING: _ignore,  # the broker checking that we are connected
            P.RECALL: self._on_recall,
            P.DRAIN: lambda msg: self._give_back(),  # its job ends soon: the broker sends no more
            P.STATUS_REPLY: _ignore,
        }

    # ------------------------------------------------------------ lifecycle
    def serve(self) -> None:
        """Run until the broker says STOP (or goes away, which ends the process)."""
        global _current
        _current = self
        _install_patches()
        if not isinstance(self.chan, LinkChannel):
            ready = (self.tag or self.name).encode() if self._ready else None
            threading.Thread(
                target=self.chan.watch, args=(self._connect_timeout, self.host, ready, self._on_reconnect),
                name="scoopexec-monitor", daemon=True,
            ).start()  # fmt: skip
        if self._forward_output:
            self._streams = [ForwardStream(self, 1, 1), ForwardStream(self, 2, 2)]
            sys.stdout, sys.stderr = self._streams
            logging.getLogger().addHandler(ForwardLogs(self))
        # One task asked for with HELLO (what an idle worker asks for once welcomed): the broker
        # sends it right after WELCOME, a round trip sooner.
        self._send([P.header(P.HELLO), P.dump_json({**self._hello(), "credit": HELLO_CREDIT})])
        # Its threads start once HELLO is out (each start waits for the thread to run): the
        # broker's answer, and the first task, are on their way meanwhile.
        if self._watch_stdin:
            lifeline.watch_stdin(self.connect_to)
        fl = threading.Thread(target=flusher, args=(self.alarm, self), name="scoopexec-flusher", daemon=True)
        fl.start()
        self.subtasks.no_wait = fl.ident or 0
        try:
            self._loop()
        except BaseException as exc:
            if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                lifeline.say(f"internal error:\n{traceback.format_exc()}")  # not to the client
            raise
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            with self.lock:
                self._flush()
            _current = None
            self.chan.close()

    def _hello(self, held: Iterable[int] = ()) -> dict[str, Any]:
        return {
            "role": P.WORKER, "pid": self.pid, "host": self.host, "tag": self.tag, "name": self.name,
            "python": sys.version.split()[0], "held": list(held),
        }  # fmt: skip

    def _on_reconnect(self) -> None:
        """The connection to the broker came back (monitor thread): say HELLO again."""
        self._reconnected = True
        self._wake()

    def _hello_again(self) -> None:
        held = list(self.active) + [t.btid for t in self.queue]
        self.hello_open = True
        self._send([P.header(P.HELLO), P.dump_json(self._hello(held))])

    # ----------------------------------------------------------------- loop
    def _loop(self) -> None:
        masks = {self.chan.fd: select.POLLIN, self._wakeup.fd: select.POLLIN}
        fds = select.poll()
        for fd, mask in masks.items():
            fds.register(fd, mask)
        waits, lock, subtasks = self.waits, self.lock, self.subtasks
        wake_fd = self._wakeup.fd
        # a short busy wait before sleeping, on a local link only (a ZeroMQ socket's FD is edge-triggered)
        spin = self.spin = Spin(SPIN if isinstance(self.chan, LinkChannel) else 0.0)
        lock.acquire()
        try:
            while not self.stopping:
                self._receive()
                if self.outbox.results and (subtasks.deliveries or self.ready):
                    self._flush()  # held back for the next start (below), but user code comes first
                if subtasks.deliveries:
                    batch = subtasks.take()
                    lock.release()  # their callbacks are user code: see subtasks.py
                    try:
                        subtasks.deliver(batch)
                    finally:
                        lock.acquire()
                if self.ready or self.queue:
                    self._run_some()
                    inbox = self._inbox
                    while inbox:  # read by the flusher meanwhile (the next task, say): now
                        self._handle(inbox.popleft())
                if not (self.queue and self.avg > 0.001 and not self.ready):
                    self._flush()  # (else the next task's start sends it with its credit: one message)
                if self.stopping:
                    break
                idle = not (self.ready or self.queue or self._foreign or self._inbox)
                if idle and not self.chan.readable():
                    # A ZeroMQ socket's FD only signals changes, so EVENTS was checked
                    # (above, holding the lock) before sleeping on it.
                    timeout = -1
                    if waits.timers:  # the earliest first (a heap)
                        timeout = max(0, int((waits.timers[0][0] - time.monotonic()) * 1000) + 1)
                    timeout = _let_go(self.chan, timeout)
                    self.alarm.rest()  # the flusher stops watching the channel: this thread does
                    lock.release()
                    try:
                        woke = waits.poll(masks, timeout) if waits.fd_waits else spin.poll(fds, timeout)
                    finally:
                        lock.acquire()
                    if any(fd == wake_fd for fd, _ in woke):
                        self._wakeup.drain()  # before looking at what it was woken for
                elif waits.fd_waits:
                    waits.poll(masks, 0)
                if waits.timers:
                    waits.fire_timers()
                while self._foreign:
                    self._foreign.popleft()()
                if self._reconnected:
                    self._reconnected = False
                    self._hello_again()
        finally:
            self.alarm.set()  # let the flusher see `stopping` and end
            lock.release()

    def _receive(self) -> None:
        inbox = self._inbox
        while inbox:  # what the flusher read while a task ran, in order
            self._handle(inbox.popleft())
        for frames in self.chan.receive(1000):
            try:
                msg = P.decode(frames)
            except ProtocolError as exc:
                if isinstance(exc, P.VersionMismatch) and self.hello_open:  # (its answer to HELLO)
                    lifeline.die(EXIT_VERSION, f"cannot serve the broker at {self.connect_to}: {exc}")
                log.error("bad message from the broker: %s", exc)
                continue
            self._handle(msg)

    def _handle(self, msg: P.Message) -> None:
        handler = self.handlers.get(msg.kind)
        if handler is None:
            log.error("bad message from the broker: unexpected %s", msg.name)
            return
        handler(msg)

    # ------------------------------------------------------------- handlers
    def _on_tasks(self, msg: P.Message) -> None:
        missed = _take_tasks(msg, self.queue, self.fns)
        self.granted = max(0, self.granted - msg.count)
        if missed:  # the broker thought it held a frame it does not: all back, and it forgets
            log.info("%d tasks came with the head of a function frame not held here: back", len(missed))
            self._give_back(missed)

    def _on_cancel(self, msg: P.Message) -> None:
        gone = {e[0] for e in msg.entries}
        if self.queue:
            self.queue = collections.deque(t for t in self.queue if t.btid not in gone)
        for btid in gone:
            r = self.active.get(btid)
            if r is not None:
                self.waits.cancel(r)  # a parked task nobody wants any more: it unwinds

    def _on_recall(self, msg: P.Message) -> None:
        # Between tasks: the next one starts now, but if it runs long, what is queued
        # behind it goes back (the broker asks once, not again until something moves); and
        # at the next queued task's start, if a parked task resumed first takes that slice.
        if self.queue:
            self._recalled, self._recall_armed = self.alarm.slice + 1, True

    def _on_welcome(self, msg: P.Message) -> None:
        info = msg.info
        self.pool_id = info.get("pool", "")
        self.max_message_size = int(info.get("max_message_size", -1) or -1)
        if not self.welcomed:
            self.granted = _granted(info.get("granted"))  # what it took of our HELLO's credit
        elif info.get("resumed") is None:
            self.granted = 0
        if not self.welcomed:
            lifeline.welcomed()  # whoever started us: we reached a broker
        self.welcomed = True
        self.hello_open = False

    def _on_stop(self, msg: P.Message) -> None:
        lifeline.mark_stopped()
        self.stopping = True

    def _on_error(self, msg: P.Message) -> None:
        if msg.text.startswith("unknown peer"):
            # The broker forgot us (it thought we were lost): join again.
            self.granted = 0
            self._hello_again()
        else:
            log.error("broker: %s", msg.text)
            if "protocol version" in msg.text:
                self.stopping = True

    # ---------------------------------------------------------------- tasks
    def _run_some(self) -> None:
        hub = self.hub
        clock = time.perf_counter
        deadline = clock() + 0.002
        ready, queue = self.ready, self.queue
        fn_avg, setups = self.fn_avg, self.setups
        while ready or queue:
            fkey = None
            if ready:
                waiter, value = ready.popleft()
                g = waiter.g
                if g.dead or g.waiter is not waiter:
                    continue  # it finished, or moved on, since this was queued
                t = self.current = g.task
                if t is not None and t.setup != setups.argv_of:
                    setups.use_argv(t.setup)
                t0 = clock()
                self._switch(g, value)
            else:
                task = queue.popleft()
                fkey = task.fkey
                if not fkey:  # (a large function frame's is its key: _unmark)
                    f = task.frames[0] if task.frames else b""
                    fkey = task.fkey = f if f.__class__ is bytes else P.as_bytes(f)
                    fkey = fkey if len(fkey) < fnframes.MIN_SIZE else LARGE_UNMARKED  # (not a key to keep)
                est = fn_avg.get(fkey)
                maybe_long = est is None or est > 0.0001
                hand_back = est is None or est >= HOLD_BEHIND or (self._recall_armed and maybe_long)
                if hand_back and (queue or self.granted):
                    # Nothing may wait here behind a task that might run long while another
                    # worker is idle: hand back the unstarted ones (see HOLD_BEHIND, _on_recall).
                    self._give_back()
                self._recall_armed = False
                if (self.outbox.results and maybe_long) or self.avg > 0.001:
                    # Finished results (and, for long tasks, the request for
                    # more work) must not wait behind it either.
                    if self.outbox.results or est is None or est < ASK_LATER:
                        self._flush()
                    else:  # known to run long: start it first, the flusher asks (relieve)
                        self.ask_later = True
                r = self.idle_runners.pop() if self.idle_runners else Runner(self._runner_main, parent=hub)
                r.task = task
                self.active[task.btid] = r
                self.current = task
                if task.setup != setups.argv_of:
                    setups.use_argv(task.setup)
                t0 = clock()
                self._switch(r, task, est is not None and est > FLUSH_AFTER)
            # How long the hub was away: a task's run until it finished or parked.
            now = clock()
            dt = now - t0
            self.avg = dt if self.avg == 0.0 else 0.8 * self.avg + 0.2 * dt
            if fkey is not None:
                old = fn_avg.get(fkey)
                if old is None and len(fn_avg) >= 4096:
                    fn_avg.clear()
                fn_avg[fkey] = dt if old is None else 0.8 * old + 0.2 * dt
            self.current = None
            if now > deadline:
                break

    def _switch(self, g: greenlet.greenlet, value: Any, long: bool = False) -> None:
        """Run a task's greenlet until it finishes or parks, without holding `lock`; ``long``:
        its function is known to run longer than FLUSH_AFTER (the flusher watches on: pause.py)."""
        self.alarm.enter(long, long and (self.ask_later or self.outbox.pending()))
        lock = self.lock
        lock.release()
        try:
            g.switch(value)
        finally:
            lock.acquire()
            self.alarm.leave()

    def relieve(self) -> None:
        """Hold `lock`, with a long task running: see pause.flusher.

        Tasks queued here, or arriving now, stay (the worker starts them as soon
        as this one ends, without a round trip to the broker) unless the broker
        sends RECALL: another worker is idle, so they are handed back to it.
        """
        inbox = self._inbox
        recalled = self._recalled == self.alarm.slice
        for frames in self.chan.receive(100_000):
            try:
                msg = P.decode(frames)
            except ProtocolError:
                continue
            if msg.kind in (P.RESULTS, P.STARTED):
                self.handlers[msg.kind](msg)  # sub-task results (for the flusher to deliver), answers
            elif msg.kind in (P.RECALL, P.DRAIN):
                recalled = True
            else:
                inbox.append(msg)  # for the hub, in order, when the task ends
                self.urgent(msg)
        if recalled:
            self._recalled, self._recall_armed = self.alarm.slice, False  # (answered here)
            back = [(t.btid,) for t in self.queue]
            kept: collections.deque[P.Message] = collections.deque()
            missed = False
            for m in inbox:
                if m.kind == P.TASKS:
                    back.extend((e[0],) for e in m.entries)
                    missed |= _note_frames(self.fns, m)  # (held as the broker counts them)
                else:
                    kept.append(m)
            if back or self.granted:
                inbox.clear()
                inbox.extend(kept)
                self.queue.clear()
                self.granted = 0
                self._send([P.pack(P.RETURN, back, 1 if missed else 0)])
        self._flush(credit=self.ask_later and not recalled)
        self.ask_later = False

    def _give_back(self, missed: list[tuple[int]] | None = None) -> None:
        back = [*(missed or ()), *((t.btid,) for t in self.queue)]
        self.queue.clear()
        self.granted = 0
        self._send([P.pack(P.RETURN, back, 1 if missed else 0)])  # (arg 1: wire/fnframes.py)

    def _runner_main(self, task: _Task) -> None:
        me = greenlet.getcurrent()
        while True:
            self._execute(task)
            me.task = None
            self.idle_runners.append(me)
            task = self.hub.switch()

    def _execute(self, task: _Task) -> None:
        task.started = time.time()
        t0 = time.perf_counter()
        s, sid = self.setups, task.setup
        status, frames = _call(task, s.errors.get(sid), self.where, self.max_message_size, s.given.get(sid))
        dt = time.perf_counter() - t0
        for stream in self._streams:
            if stream.parts:  # a partial last line belongs to this task
                stream.flush()
        self.active.pop(task.btid, None)
        self.outbox.results.append(((task.btid, status, len(frames), task.started, dt), frames))
        self.after_task()

    # ------------------------------------------------------------ submitting
    def current_task(self) -> int:
        """The broker id of the running task (0 outside one)."""
        return self.current.btid if self.current is not None else 0

    def later(self, fn: Callable[[], None]) -> None:
        """Have the hub call ``fn`` (from another thread: the hub alone orders the outbox)."""
        self._foreign.append(fn)
        self._wake()

    def flush(self) -> None:
        """Send what waits now (hold `lock`)."""
        self._flush()

    def _wake(self) -> None:
        self._wakeup.wake()

    # --------------------------------------------------------------- waiting
    def in_task(self) -> bool:
        """True when called from a task's greenlet on this worker."""
        return self.waits.in_task()

    def wait_until(self, fs: Iterable[cf.Future[Any]], timeout: float | None, return_when: str) -> None:
        """Park the calling task until ``return_when`` holds for ``fs`` or time runs out."""
        self.waits.wait_until(fs, timeout, return_when)

    def shared(self, name: str) -> Any:
        """A value the running task's client shared with ScoopExecutor.share(); KeyError if none."""
        task = self.current
        if task is None:
            raise RuntimeError("shared values are only available inside a task")
        return self.setups.shared(task.setup, name)

    # ----------------------------------------------------- output and logs
    def output(self, stream: int, text: str) -> None:
        """A line a task printed: for its client (ForwardStream)."""
        btid = self.current.btid if self.current is not None else 0
        self.outbox.output((btid, stream), text.encode("utf-8", "replace"), self.max_message_size)
        self.nudge()

    def log_record(self, data: bytes) -> None:
        """A log record a task made: for its client (ForwardLogs)."""
        btid = self.current.btid if self.current is not None else 0
        self.outbox.log((btid,), data, self.max_message_size)
        self.nudge()

    def nudge(self) -> None:
        """Something waits to be sent (output, a log record, a sub-task): while a task runs, the
        flusher sends it (a short task's end comes first, usually: see pause.flusher)."""
        if self.alarm.in_task:
            self.alarm.set()  # a long task's prints must not wait for its end
        elif threading.get_ident() != self.thread_id:
            self._wake()

    # ------------------------------------------------------------------ send
    def _flush(self, credit: bool = True) -> None:
        """Send what is waiting, asking for more tasks (``credit``) when they are wanted.  Hold `lock`."""
        more = 0
        if credit and self.welcomed and not self.stopping:
            self.ask_later = False
            more = _prefetch(self.avg) - len(self.queue) - self.granted
            if more <= 0:
                # Idle (nothing queued, nothing promised): always ask for one.
                more = 1 if not self.queue and not self.granted and not self.ready else 0
            self.granted += more
        self.outbox.flush(more)

    def _flush_results(self) -> None:
        if self.outbox.results:
            self._flush()

    def _send(self, frames: list[Any]) -> None:
        self.chan.send(frames)


def _call(
    task: _Task, setup_error: str | None, where: str, max_size: int, given: dict[str, Any] | None = None
) -> tuple[int, list[Any]]:
    """Run one task on ``where`` (``worker NAME (pid P on HOST)``): its status and frames (the
    result, or what went wrong).  ``given``: the script's globals its pool's initializer set."""
    if setup_error is not None:
        return _failure("initializer", setup_error)
    try:
        fn, args, kwargs = serialize.decode_call(task.frames, task.fkey, task.setup if given else None)
    except BaseException as exc:
        return _failure(
            "call",
            f"the task could not be unpickled on {where}: {type(exc).__name__}: {exc} (the "
            "module that defines it must be importable there: workers get the client's "
            "sys.path and working directory)",
            serialize.user_traceback(exc),
        )
    task.frames = []
    try:
        if given:
            script_globals(fn, given)
        value = fn(*args, **kwargs)
    except BaseException as exc:
        tb = exc.__traceback__
        if tb is not None and tb.tb_frame.f_code is _call.__code__:
            tb = tb.tb_next  # our own frame (the call into the task) is noise
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        return serialize.encode_exception(exc, f"On {where}:\n{text}")
    del args, kwargs
    status, frames = serialize.encode_result(value, f" on {where}", fn)
    del fn
    big = serialize.oversized(frames, max_size)
    if big:
        return _failure(
            "size",
            f"the result of {type(value).__name__} needs a {big}-byte message, more "
            f"than the pool's max_message_size={max_size}; return less "
            "data (write it to a file and return the path) or raise the limit",
        )
    return status, frames


def _take_tasks(msg: P.Message, queue: collections.deque[_Task], held: fnframes.Held) -> list[tuple[int]]:
    """Queue the tasks of a TASKS message, large function frames in place (_unmark); the ids
    of those that came with the head of a frame not held, not queued."""
    missed: list[tuple[int]] = []
    for (btid, sid, _, attempt), body in msg.parts():
        task = _Task(btid, sid, attempt, body)  # type: ignore[arg-type]  # a list slice
        n = len(body[0]) if body else 0
        if n >= fnframes.MIN_SIZE or n == fnframes.HEAD:  # (fnframes.worth_a_look, inline: per task)
            try:
                task.fkey = _unmark(held, sid, body) or b""  # type: ignore[arg-type]
            except KeyError:
                missed.append((btid,))
                continue
        queue.append(task)
    return missed


def _let_go(chan: LinkChannel | ZmqChannel, timeout: int) -> int:
    """Before the worker waits: large receive buffers unused too long are let go of, the
    broker's segments this worker no longer uses go back to it, and ours free too long are
    closed (wire/framing.py, wire/segments.py).  The wait's ``timeout`` (ms, -1: none),
    shortened to when the next of those would be let go of."""
    waits = []
    if len(POOL):
        POOL.expire()
        if len(POOL):
            waits.append(POOL.idle_seconds)
    left = chan.settle()
    if left >= 0:
        waits.append(left)
    for w in waits:
        ms = int(w * 1000) + 1
        timeout = ms if timeout < 0 else min(timeout, ms)
    return timeout


LARGE_UNMARKED = b"\x00"  # fn_avg's key for the large function frames not marked (they share one)


def _unmark(held: fnframes.Held, sid: int, body: list[Any]) -> tuple[int, bytes] | None:
    """A task's function frame (``body[0]``, of HEAD or MIN_SIZE bytes and more), if marked
    (wire/fnframes.py): the pickle in its place, from the frame or from those held, and its
    key (None if not marked).  KeyError for the head of a frame not held."""
    head = fnframes.head_of(body[0])
    if head is None:
        return None
    key = (sid, head)
    n = len(body[0])
    if n > fnframes.HEAD:
        frame = body[0]
        if isinstance(frame, SharedFrame):  # kept for good: a copy, and the broker's segment back
            frame = bytearray(frame)
        else:
            POOL.detach(frame)  # (kept here for good: no more the receive buffers' to re-use)
        view = memoryview(frame)[fnframes.HEAD :]
        held.add(key, n, view)
    else:
        entry = held.get(key)
        if entry is None:
            raise KeyError(key)
        view = entry[1]
    body[0] = view
    return key


def _note_frames(held: fnframes.Held, msg: P.Message) -> bool:
    """Hold the large function frames of a TASKS message handed back unread, as if read;
    whether one was the head of a frame not held (the RETURN says so: arg 1)."""
    return bool(_take_tasks(msg, collections.deque(), held))


def _granted(value: Any) -> int:
    """A WELCOME's ``granted``: what the broker took of our HELLO's credit.  Anything but an
    int of 0..HELLO_CREDIT counts as nothing taken (the worker then asks with CREDIT)."""
    return value if type(value) is int and 0 <= value <= HELLO_CREDIT else 0


def _ignore(msg: P.Message) -> None:
    pass


def _nothing() -> None:
    pass


def _prefetch(avg: float) -> int:
    """Tasks to hold queued (not started), for tasks of ``avg`` s: enough to cover a round trip
    to the broker.  None while run times are unknown or long; the ones held wait behind a
    task that runs long only until the broker's RECALL (another worker is idle) moves them.
    """
    if avg <= 0.0 or avg >= HOLD_BEHIND:
        return 0
    return max(1, min(64, int(0.001 / avg) + 1))


# ---------------------------------------------------------------- patches
_orig_wait = cfb.wait
_orig_as_completed = cfb.as_completed


def wait(
    fs: Iterable[cf.Future[Any]], timeout: float | None = None, return_when: str = cf.ALL_COMPLETED
) -> cf._base.DoneAndNotDoneFutures[Any]:
    """concurrent.futures.wait that parks a task instead of blocking its worker."""
    w = _current
    if w is None or not w.in_task():
        return _orig_wait(fs, timeout, return_when)
    fs = set(fs)
    w.wait_until(fs, timeout, return_when)
    done = {f for f in fs if f._state in DONE_STATES}
    return cfb.DoneAndNotDoneFutures(done, fs - done)


def as_completed(fs: Iterable[cf.Future[Any]], timeout: float | None = None) -> Iterator[cf.Future[Any]]:
    """concurrent.futures.as_completed that parks a task instead of blocking its worker."""
    w = _current
    if w is None or not w.in_task():
        return _orig_as_completed(fs, timeout)
    return w.waits.iter_completed(fs, timeout)


_RealSelector = selectors.DefaultSelector
_POLL_MASKS = {selectors.EVENT_READ: select.POLLIN, selectors.EVENT_WRITE: select.POLLOUT}


class _TaskSelector(selectors.BaseSelector):
    """selectors.DefaultSelector on a worker: select() in a task parks the task, not the worker.

    An event loop a task runs (``asyncio.run(...)`` in a task) waits in its
    selector's select(); on a worker that would block the hub, and with it
    every other task -- the sub-tasks the loop awaits included.  Here the
    task parks instead, and the hub polls the loop's descriptors with its
    own: the loop wakes when one is ready (a future it awaits completes, which
    writes to its self-pipe) or its timeout passes.  While parked, the task's
    loop is not the thread's running loop, so other tasks may run loops of
    their own.  Outside a task (the hub, other threads) it is the real selector.
    """

    def __init__(self) -> None:
        self._sel = _RealSelector()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._sel.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._sel.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._sel.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        w = _current
        if w is None or (timeout is not None and timeout <= 0) or not w.in_task():
            return self._sel.select(timeout)
        ready = self._sel.select(0)
        if ready:
            return ready
        fds = [
            (key.fd, sum(m for ev, m in _POLL_MASKS.items() if key.events & ev))
            for key in self._sel.get_map().values()
        ]
        import asyncio

        loop = asyncio._get_running_loop()
        hooks = sys.get_asyncgen_hooks()
        asyncio._set_running_loop(None)
        sys.set_asyncgen_hooks(None, None)
        try:
            w.waits.wait_fds(fds, timeout)
        finally:
            asyncio._set_running_loop(loop)
            sys.set_asyncgen_hooks(*hooks)
        return self._sel.select(0)

    def close(self) -> None:
        self._sel.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._sel.get_map()


_patched = False


def _install_patches() -> None:
    """Make the standard library's wait()/as_completed() and event loops' selectors task-aware here."""
    global _patched
    if _patched:
        return
    _patched = True
    cfb.wait = wait  # type: ignore[assignment]
    cfb.as_completed = as_completed  # type: ignore[assignment]
    cf.wait = wait  # type: ignore[assignment]
    cf.as_completed = as_completed  # type: ignore[assignment]
    selectors.DefaultSelector = _TaskSelector  # type: ignore[misc,assignment]
    _hooks.on_worker()  # integrations a fork of the client brought: their worker side
