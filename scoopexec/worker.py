"""The worker process: a hub greenlet and one greenlet per running task.

::

    broker --TASKS--> hub: queue of tasks ----start----> runner greenlet: fn(*args)
                       ^                                      |  submit() -> SUBMIT (batched)
                       |                                      |  future.result() parks:
                       +------- resume when the result -------+  switch back to the hub
                                arrives (RESULTS)

The hub is the main greenlet of the main thread.  It receives messages,
starts queued tasks on runner greenlets (re-used, since a fresh greenlet
costs an mmap), resumes parked ones whose futures completed, and flushes
results, nested submissions, output and credit in batches.  A task that
waits on a future parks only its own greenlet, so a worker keeps running
other tasks -- its own children included -- and nested maps never deadlock,
even on a single worker.

Flow control is by credit: the worker asks for as many tasks as it wants
queued in hand (fewer when tasks are long, up to 64 when they are tiny), and
asks again whenever it starts one.  Parked tasks hold no credit, so a worker
whose every task waits still receives work.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import concurrent.futures._base as cfb
import heapq
import io
import itertools
import json
import logging
import os
import select
import selectors
import signal
import socket
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NoReturn

import greenlet
import zmq

from . import contract, logs, mainmodule, serialize
from . import protocol as P
from .contract import EXIT_AUTH, EXIT_LOST, EXIT_UNREACHABLE
from .errors import ProtocolError, SerializationError
from .link import POOL, Link, process_state
from .security import MONITOR_EVENTS, Credentials, HandshakeWatch, dealer

READY_MARK = b"SCOOPEXEC-READY"  # printed on stdout once connected, for launchers (--ready)

log = logging.getLogger("scoopexec.worker")

_current: Worker | None = None  # the worker of this process, when it is one

FLUSH_AFTER = 0.002  # s a task may run before its worker's waiting results and output go out


def current_worker() -> Worker | None:
    return _current


class _Task:
    __slots__ = ("attempt", "btid", "fkey", "frames", "setup", "started")

    def __init__(self, btid: int, setup: int, attempt: int, frames: list[Any]) -> None:
        self.btid = btid
        self.setup = setup
        self.attempt = attempt
        self.frames = frames
        self.started = 0.0
        self.fkey = b""  # the function's pickle: key of its run-time estimate


class _Runner(greenlet.greenlet):  # type: ignore[misc]
    task: _Task | None = None
    waiter: _Waiter | None = None  # what it is parked on, while it is


class _Waiter:
    """A task's greenlet, parked or about to park, and what wakes it.

    It may be woken before it parks (a future it watches completes meanwhile,
    in this thread) or after it stopped waiting: the hub resumes it only while
    it is parked on this waiter (see Worker._run_some).
    """

    __slots__ = ("active", "cancelled", "done", "g", "scheduled")

    def __init__(self, g: greenlet.greenlet) -> None:
        self.g = g
        self.active = True
        self.scheduled = False  # (g, ...) is in the hub's ready queue: at most one entry
        self.cancelled = False
        self.done: collections.deque[cf.Future[Any]] = collections.deque()


class WorkerFuture(cf.Future):  # type: ignore[type-arg]
    """A future made inside a task: waiting on it parks the task, not the worker."""

    def __init__(self, worker: Worker, tid: int) -> None:
        super().__init__()
        self._worker = worker
        self._tid = tid

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            self._worker.wait_until([self], timeout, cf.FIRST_COMPLETED)
        return super().result(timeout=0 if not self.done() else None)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            self._worker.wait_until([self], timeout, cf.FIRST_COMPLETED)
        return super().exception(timeout=0 if not self.done() else None)

    def cancel(self) -> bool:
        ok = super().cancel()  # runs the done-callbacks, holding no lock
        if ok:
            with self._condition:
                if self._state == cfb.CANCELLED:
                    self.set_running_or_notify_cancel()  # wakes cf.wait() callers in other threads
            self._worker.cancelled(self._tid)
        return ok


class _ForwardStream(io.TextIOBase):
    """sys.stdout / sys.stderr of a worker: complete lines go to the task's client."""

    def __init__(self, worker: Worker, stream: int, fd: int) -> None:
        super().__init__()
        self._worker = worker
        self._stream = stream
        self._fd = fd
        self._parts: list[str] = []
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not s:
            return 0
        with self._lock:
            self._parts.append(s)
            if "\n" in s:
                text = "".join(self._parts)
                cut = text.rindex("\n") + 1
                self._parts = [text[cut:]] if cut < len(text) else []
                self._worker.output(self._stream, text[:cut])
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._parts:
                text = "".join(self._parts)
                self._parts = []
                self._worker.output(self._stream, text)


class _ForwardLogs(logging.Handler):
    """Send this worker's log records to the client whose task is running."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self._worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc_text = record.exc_text
            if record.exc_info and not exc_text:
                exc_text = "".join(traceback.format_exception(*record.exc_info))
            data = {
                "name": record.name,
                "levelno": record.levelno,
                "levelname": record.levelname,
                "msg": record.getMessage(),
                "exc_text": exc_text,
                "pathname": record.pathname,
                "filename": record.filename,
                "module": record.module,
                "lineno": record.lineno,
                "funcName": record.funcName,
                "created": record.created,
                "process": record.process,
                "threadName": record.threadName,
                "host": self._worker.host,
                "worker": self._worker.name,
            }
            self._worker.log_record(json.dumps(data, default=str).encode())
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


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
    ) -> None:
        self.ctx: zmq.Context[Any] | None = None  # a worker on a local link needs none (no I/O thread)
        self.connect_to = connect
        self.tag = tag
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.name = name or f"{self.host}:{self.pid}"
        self.heartbeat_timeout = heartbeat_timeout
        self.ident = b"W" + os.urandom(11)
        self._ready = ready
        self.keep_cwd = keep_cwd  # started in a directory chosen for it (cwd=): stay there
        self._connect_timeout = connect_timeout
        self._monitor: zmq.Socket[Any] | None = None
        self.chan: _ZmqChannel | _LinkChannel
        if link is not None:
            # One end of a socketpair from the embedded broker that started us (link.py).
            self.chan = _LinkChannel(Link(link, blocking_send=True))
        else:
            self.ctx = context or zmq.Context()
            s = dealer(
                self.ctx,
                self.ident,
                connect,
                linger=2000,
                heartbeat=heartbeat,
                heartbeat_timeout=heartbeat_timeout,
                keys=curve,
            )
            self._handshakes = HandshakeWatch(connect, curve is not None)
            self._monitor = s.get_monitor_socket(
                zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | MONITOR_EVENTS
            )
            s.connect(connect)
            self.chan = _ZmqChannel(s)

        self.hub = greenlet.getcurrent()
        self.thread_id = threading.get_ident()
        self.queue: collections.deque[_Task] = collections.deque()
        # Parked tasks to resume: (what it waits on, the value its park returns).  An entry
        # is stale, and skipped, unless its task is still parked on that very waiter.
        self.ready: collections.deque[tuple[_Waiter, Any]] = collections.deque()
        self.idle_runners: list[_Runner] = []
        self.active: dict[int, _Runner] = {}  # broker id -> runner holding that task
        self.current: _Task | None = None
        self.futures: dict[int, WorkerFuture] = {}
        self._tids = itertools.count(1)
        self._timers: list[tuple[float, int, _Waiter]] = []
        self._fd_waits: dict[_Waiter, list[tuple[int, int]]] = {}  # tasks parked in wait_fds
        self._timer_seq = itertools.count()
        # Outgoing, drained by _flush.  Deques: appends from task code need no lock.
        self.results: collections.deque[tuple[tuple[Any, ...], list[Any]]] = collections.deque()
        self.submits: collections.deque[tuple[tuple[int, int, int], list[Any]]] = collections.deque()
        self.outputs: collections.deque[tuple[tuple[int, int], bytes]] = collections.deque()
        self.logs: collections.deque[tuple[tuple[int], bytes]] = collections.deque()
        self.cancels: collections.deque[int] = collections.deque()
        # Sub-task outcomes taken off the socket under `lock`, to be set on their futures
        # once it is released: setting one runs its done-callbacks, user and library code
        # (joblib's takes its Parallel's lock, which a task may hold while it submits).
        self._deliveries: list[tuple[WorkerFuture, int, list[Any]]] = []
        # The socket, the queue and the credit belong to whoever holds `lock`: the hub,
        # except while a task runs, when the flusher thread may take it (see _flusher).
        self.lock = threading.RLock()
        self._armed = threading.Event()
        self._inbox: collections.deque[list[Any]] = collections.deque()
        self._slice = 0
        self._recalled = -1  # the slice in which the broker last asked for unstarted tasks back
        self._in_task = False
        self._foreign: collections.deque[Callable[[], None]] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._woken = False
        self.granted = 0  # credits the broker holds for us
        self.avg = 0.0  # smoothed duration of a task's run between switches (s)
        self.fn_avg: dict[bytes, float] = {}  # the same, per function
        self._last_flush = 0.0
        self.setups: dict[int, str | None] = {}  # set-up id -> None (ok) or error text
        self.stopping = False
        self.welcomed = False
        self.pool_id = ""
        self.tasks_done = 0
        self._forward_output = forward_output
        self._watch_stdin = watch_stdin
        self._reconnected = False
        self.importing_main = False
        self._streams: list[_ForwardStream] = []
        self.max_message_size = -1
        self.shares: dict[int, dict[str, Any]] = {}  # set-up id -> name -> frames, then value
        self.argvs: dict[int, list[str]] = {}  # set-up id -> its client's sys.argv
        self._argv_of = -1  # the set-up whose argv sys.argv is

    # ------------------------------------------------------------ lifecycle
    def serve(self) -> None:
        global _current
        _current = self
        _install_patches()
        self._start_watchdogs()
        if self._forward_output:
            self._streams = [_ForwardStream(self, 1, 1), _ForwardStream(self, 2, 2)]
            sys.stdout, sys.stderr = self._streams
            root = logging.getLogger()
            root.addHandler(_ForwardLogs(self))
        self._send([P.header(P.HELLO), P.dump_json(self._hello())])
        threading.Thread(target=self._flusher, name="scoopexec-flusher", daemon=True).start()
        try:
            self._loop()
        except BaseException as exc:
            if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
                # sys.stderr goes to the client, through the channel this ends: say it here.
                text = f"scoopexec worker (pid {self.pid}): internal error:\n{traceback.format_exc()}"
                try:
                    os.write(2, text.encode("utf-8", "replace"))
                except OSError:
                    pass
            raise
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            with self.lock:
                self._flush(force=True)
            _current = None
            self.chan.close()

    def _hello(self, held: Iterable[int] = ()) -> dict[str, Any]:
        return {
            "role": P.WORKER,
            "pid": self.pid,
            "host": self.host,
            "tag": self.tag,
            "name": self.name,
            "python": sys.version.split()[0],
            "held": list(held),
        }

    def _start_watchdogs(self) -> None:
        if self._watch_stdin:
            # Our parent (the client, or ssh) holds the other end of stdin:
            # EOF means it is gone and nobody wants our results any more.
            fd = os.dup(0)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
            global _litter
            litter = _private_socket(self.connect_to)
            _litter = (os.getppid(), litter) if litter is not None else None
            threading.Thread(target=_watch_fd, args=(fd,), name="scoopexec-stdin", daemon=True).start()
        if self._monitor is not None:
            threading.Thread(
                target=self._watch_broker, args=(self._monitor,), name="scoopexec-monitor", daemon=True
            ).start()

    def _watch_broker(self, mon: zmq.Socket[Any]) -> None:
        """Exit when the broker stays unreachable for longer than the heartbeat timeout."""
        from zmq.utils.monitor import recv_monitor_message

        lost_at: float | None = None
        connected_once = False
        first_by = time.monotonic() + self._connect_timeout if self._connect_timeout > 0 else None
        while True:
            timeout = None
            if lost_at is not None:
                timeout = max(0.0, lost_at + self.heartbeat_timeout - time.monotonic())
            elif first_by is not None and not connected_once:
                timeout = max(0.0, first_by - time.monotonic())
            try:
                if timeout is not None and not mon.poll(int(timeout * 1000) + 1):
                    if lost_at is not None:  # the broker is gone: nothing can be delivered
                        _end(EXIT_LOST, f"no answer from the broker for {self.heartbeat_timeout:g} s")
                    _die(
                        EXIT_UNREACHABLE,
                        f"no scoopexec broker answered at {self.connect_to} within "
                        f"{self._connect_timeout:g} s (is that address reachable from {self.host}?)",
                    )
                event = recv_monitor_message(mon)
            except zmq.ZMQError:
                return
            problem = self._handshakes.event(event["event"], event["value"])
            if problem is not None:
                _die(EXIT_AUTH, problem)
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED and not connected_once and self._ready:
                try:
                    os.write(1, READY_MARK + b" " + (self.tag or self.name).encode() + b"\n")
                except OSError:
                    pass
            if event["event"] == zmq.EVENT_DISCONNECTED:
                lost_at = time.monotonic()
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if connected_once and lost_at is not None:
                    self._reconnected = True
                    self._wake()
                connected_once = True
                lost_at = None
            elif event["event"] == zmq.EVENT_MONITOR_STOPPED:
                return

    # ----------------------------------------------------------------- loop
    def _loop(self) -> None:
        fds = select.poll()
        fds.register(self.chan.fd, select.POLLIN)
        fds.register(self._wake_r, select.POLLIN)
        lock = self.lock
        lock.acquire()
        try:
            while not self.stopping:
                self._receive()
                if self._deliveries:
                    self._deliver_unlocked()
                if self.ready or self.queue:
                    self._run_some()
                self._flush()
                if self.stopping:
                    break
                idle = not (self.ready or self.queue or self._foreign or self._inbox)
                if idle and not self.chan.readable():
                    # A ZeroMQ socket's FD only signals changes, so EVENTS was checked
                    # (above, holding the lock) before sleeping on it.
                    timeout = -1
                    if self._timers:
                        timeout = max(0, int((self._timers[0][0] - time.monotonic()) * 1000) + 1)
                    if len(POOL):  # large receive buffers kept for reuse: let go of old ones
                        POOL.expire()
                        if len(POOL):
                            wait = int(POOL.idle_seconds * 1000) + 1
                            timeout = wait if timeout < 0 else min(timeout, wait)
                    lock.release()
                    try:
                        if self._fd_waits:
                            woke = self._poll_fd_waits(timeout)
                        else:
                            woke = fds.poll(timeout)
                    finally:
                        lock.acquire()
                    if woke and not self._woken and any(fd == self._wake_r for fd, _ in woke):
                        # A byte written after the flag was last cleared: read it, or
                        # every later poll returns at once (the hub would spin).
                        self._woken = True
                elif self._fd_waits:
                    woke = self._poll_fd_waits(0)
                    if woke and not self._woken and any(fd == self._wake_r for fd, _ in woke):
                        self._woken = True
                self._fire_timers()
                if self._woken:
                    self._woken = False  # before reading: a later wake writes a new byte
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                while self._foreign:
                    self._foreign.popleft()()
                if self._reconnected:
                    self._reconnected = False
                    held = list(self.active) + [t.btid for t in self.queue]
                    self._send([P.header(P.HELLO), P.dump_json(self._hello(held))])
        finally:
            self._armed.set()  # let the flusher see `stopping` and end
            lock.release()

    def _receive(self) -> None:
        inbox = self._inbox
        while inbox:  # what the flusher read while a task ran, in order
            try:
                self._handle(inbox.popleft())
            except ProtocolError as exc:
                log.error("bad message from the broker: %s", exc)
        for frames in self.chan.receive(1000):
            try:
                self._handle(frames)
            except ProtocolError as exc:
                log.error("bad message from the broker: %s", exc)

    def _deliver_unlocked(self) -> None:
        """The hub's deliveries (see _deliver), with `lock` released while they run."""
        batch, self._deliveries = self._deliveries, []
        lock = self.lock
        lock.release()
        try:
            self._deliver(batch)
        finally:
            lock.acquire()

    def _deliver(self, batch: list[tuple[WorkerFuture, int, list[Any]]]) -> None:
        """Set sub-task outcomes on their futures.  Hold no scoopexec lock.

        Unpickling a result and the futures' done-callbacks run code of the
        user's and of libraries (joblib's callback takes its Parallel's lock,
        which a task holds while it submits): with `lock` held, such code would
        wait for a task that waits for `lock`.  The hub delivers what it
        received; the flusher thread what it took while a task ran (that task
        may be polling done()).
        """
        for fut, status, body in batch:
            if fut.done():  # cancelled meanwhile
                continue
            ok, value = serialize.decode_outcome(status, body)
            try:
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            except cf.InvalidStateError:
                pass  # cancelled between the look and the set

    def _handle(self, frames: list[zmq.Frame]) -> None:
        head = frames[0].bytes
        mtype, count, arg = P.unpack_header(head)
        if mtype == P.TASKS:
            pos = 1
            q = self.queue
            for btid, setup, n, attempt in P.entries(mtype, head):
                q.append(_Task(btid, setup, attempt, frames[pos : pos + n]))
                pos += n
            self.granted = max(0, self.granted - count)
        elif mtype == P.RESULTS:
            pos = 1
            futures = self.futures
            for tid, status, n in P.entries(mtype, head):
                body = frames[pos : pos + n]
                pos += n
                fut = futures.pop(tid, None)
                if fut is not None:
                    self._deliveries.append((fut, status, body))
        elif mtype == P.SETUP:
            self._apply_setup(arg, frames[1:])
        elif mtype == P.CANCEL:
            self._cancel([e[0] for e in P.entries(mtype, head)])
        elif mtype == P.SHARE:
            if len(frames) >= 3:
                self.shares.setdefault(arg, {})[frames[1].bytes.decode()] = frames[2:]
        elif mtype == P.WELCOME:
            info = P.load_json(frames[1].bytes)
            self.pool_id = info.get("pool", "")
            self.max_message_size = int(info.get("max_message_size", -1) or -1)
            if not self.welcomed or info.get("resumed") is None:
                self.granted = 0
            if not self.welcomed and _exit_fd is not None:
                contract.write_welcomed(_exit_fd)  # whoever started us: we reached a broker
            self.welcomed = True
        elif mtype == P.RECALL:
            # Between tasks: the next one starts now, but if it runs long, what is queued
            # behind it goes back (the broker asks once, not again until something moves).
            if self.queue:
                self._recalled = self._slice + 1
        elif mtype == P.STOP:
            global _stopped
            _stopped = self.stopping = True
        elif mtype == P.ERROR:
            text = frames[1].bytes.decode("utf-8", "replace") if len(frames) > 1 else ""
            if text.startswith("unknown peer"):
                # The broker forgot us (it thought we were lost): join again.
                held = list(self.active) + [t.btid for t in self.queue]
                self.granted = 0
                self._send([P.header(P.HELLO), P.dump_json(self._hello(held))])
            else:
                log.error("broker: %s", text)
                if "protocol version" in text:
                    self.stopping = True
        # PING, STATUS_REPLY: nothing to do

    # ---------------------------------------------------------------- tasks
    def _run_some(self) -> None:
        hub = self.hub
        clock = time.perf_counter
        deadline = clock() + 0.002
        ready, queue = self.ready, self.queue
        fn_avg = self.fn_avg
        while ready or queue:
            fkey = None
            if ready:
                waiter, value = ready.popleft()
                g = waiter.g
                if g.dead or g.waiter is not waiter:
                    continue  # it finished, or moved on, since this was queued
                t = self.current = g.task
                if t is not None and t.setup != self._argv_of:
                    self._use_argv(t.setup)
                t0 = clock()
                self._switch(g, value)
            else:
                task = queue.popleft()
                fkey = task.fkey = task.frames[0].bytes if task.frames else b""
                est = fn_avg.get(fkey)
                maybe_long = est is None or est > 0.0001
                if maybe_long and (queue or self.granted):
                    # Nothing may wait here behind a task that might run long
                    # while another worker is idle: hand back the unstarted ones.
                    self._give_back()
                if (self.results and maybe_long) or self.avg > 0.001:
                    # Finished results (and, for long tasks, the request for
                    # more work) must not wait behind it either.
                    self._flush()
                r = self.idle_runners.pop() if self.idle_runners else _Runner(self._runner_main, parent=hub)
                r.task = task
                self.active[task.btid] = r
                self.current = task
                if task.setup != self._argv_of:
                    self._use_argv(task.setup)
                t0 = clock()
                self._switch(r, task)
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

    def _switch(self, g: greenlet.greenlet, value: Any) -> None:
        """Run a task's greenlet until it finishes or parks, without holding `lock`."""
        self._slice += 1
        self._in_task = True
        self._armed.set()  # if this slice runs long, the flusher keeps the worker responsive
        lock = self.lock
        lock.release()
        try:
            g.switch(value)
        finally:
            lock.acquire()
            self._in_task = False

    def _flusher(self) -> None:
        """While one task runs for more than FLUSH_AFTER, keep its worker responsive.

        Finished results, output and log lines go out; tasks queued here, or
        arriving now, are handed back to the broker so that an idle worker can
        take them; results of sub-tasks are delivered (after releasing `lock`).
        The hub releases `lock` while a task runs, and this thread takes it only
        then, so the socket is never used by two threads at once.
        """
        armed, lock = self._armed, self.lock
        while not self.stopping:
            armed.wait()
            armed.clear()
            seen = self._slice
            delay = FLUSH_AFTER
            time.sleep(delay)
            while self._in_task and self._slice == seen and not self.stopping:
                failed = None
                with lock:
                    if not (self._in_task and self._slice == seen and self.welcomed):
                        break
                    try:
                        self._relieve()
                    except Exception as exc:  # pragma: no cover - must not end this thread
                        failed = exc
                    batch, self._deliveries = self._deliveries, []
                if failed is not None:  # pragma: no cover - logging handlers are others' code
                    log.error("the worker's flusher failed", exc_info=failed)
                if batch:
                    self._deliver(batch)  # a task polling done() sees them; see _deliver
                delay = min(delay * 2, 0.05)
                time.sleep(delay)

    def _relieve(self) -> None:
        """Hold `lock`, with a long task running: see _flusher.

        Tasks queued here, or arriving now, stay (the worker starts them as soon
        as this one ends, without a round trip to the broker) unless the broker
        sends RECALL: another worker is idle, so they are handed back to it.
        """
        inbox = self._inbox
        recalled = self._recalled == self._slice
        for frames in self.chan.receive(100_000):
            try:
                mtype, _, _ = P.unpack_header(frames[0].bytes)
            except ProtocolError:
                continue
            if mtype == P.RESULTS:
                self._handle(frames)  # sub-task results, for _flusher to deliver
            elif mtype == P.RECALL:
                recalled = True
            else:
                inbox.append(frames)  # for the hub, in order, when the task ends
        if recalled:
            self._recalled = self._slice
            back = [(t.btid,) for t in self.queue]
            kept: collections.deque[list[Any]] = collections.deque()
            for frames in inbox:
                head = frames[0].bytes
                if P.unpack_header(head)[0] == P.TASKS:
                    back.extend((btid,) for btid, _, _, _ in P.entries(P.TASKS, head))
                else:
                    kept.append(frames)
            if back or self.granted:
                inbox.clear()
                inbox.extend(kept)
                self.queue.clear()
                self.granted = 0
                self._send([P.pack(P.RETURN, back)])
        self._flush(credit=False)

    def _give_back(self) -> None:
        back = [(t.btid,) for t in self.queue]
        self.queue.clear()
        self.granted = 0
        self._send([P.pack(P.RETURN, back)])

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
        err = self.setups.get(task.setup)
        if err is not None:
            status, frames = protocol_failure("initializer", err)
        else:
            try:
                fn, args, kwargs = serialize.decode_call(task.frames, task.fkey)
            except BaseException as exc:
                status, frames = protocol_failure(
                    "call",
                    f"the task could not be unpickled on worker {self.name} (pid {self.pid} on "
                    f"{self.host}): {type(exc).__name__}: {exc} (the module that defines it must be "
                    "importable there: workers get the client's sys.path and working directory)",
                    serialize.user_traceback(exc),
                )
            else:
                task.frames = []
                try:
                    value = fn(*args, **kwargs)
                except BaseException as exc:
                    status, frames = serialize.encode_exception(exc, self._format_tb(exc))
                else:
                    where = f" on worker {self.name} (pid {self.pid} on {self.host})"
                    status, frames = serialize.encode_result(value, where, fn)
                    big = serialize.oversized(frames, self.max_message_size)
                    if big:
                        status, frames = protocol_failure(
                            "size",
                            f"the result of {type(value).__name__} needs a {big}-byte message, more "
                            f"than the pool's max_message_size={self.max_message_size}; return less "
                            "data (write it to a file and return the path) or raise the limit",
                        )
                    del value
                del fn, args, kwargs
        dt = time.perf_counter() - t0
        for stream in self._streams:
            if stream._parts:  # a partial last line belongs to this task
                stream.flush()
        self.active.pop(task.btid, None)
        self.results.append(((task.btid, status, len(frames), task.started, dt), frames))
        self.tasks_done += 1

    def _format_tb(self, exc: BaseException) -> str:
        tb = exc.__traceback__
        if tb is not None and tb.tb_frame.f_code is Worker._execute.__code__:
            tb = tb.tb_next  # our own frame (the call into the task) is noise
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        return f"On worker {self.name} (pid {self.pid} on {self.host}):\n{text}"

    def _cancel(self, btids: list[int]) -> None:
        gone = set(btids)
        if self.queue:
            self.queue = collections.deque(t for t in self.queue if t.btid not in gone)
        for btid in btids:
            r = self.active.get(btid)
            w = r.waiter if r is not None else None
            if w is not None and w.active:
                # A parked task nobody wants any more: unwind it.  Through its
                # waiter, so that it is resumed once, and never after it moved on.
                w.cancelled = True
                if not w.scheduled:
                    w.scheduled = True
                    self.ready.append((w, None))

    # ------------------------------------------------------------ submitting
    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], parent: int | None = None
    ) -> WorkerFuture:
        """Submit a sub-task.  ``parent``: the broker id of the task it belongs to
        (default: the running task), which decides its client's set-up and shares."""
        tid = next(self._tids)
        fut = WorkerFuture(self, tid)
        try:
            frames = serialize.encode_call(fn, args, kwargs)
            _check_size(frames, self.max_message_size)
        except SerializationError as exc:
            fut.set_exception(exc)
            return fut
        return self._submit_frames(fut, tid, frames, parent)

    def submit_encoded(
        self,
        fn_frame: bytes,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent: int | None = None,
        what: str = "",
        item: int = -1,
        chunk: bool = False,
    ) -> WorkerFuture:
        tid = next(self._tids)
        fut = WorkerFuture(self, tid)
        try:
            frames = [fn_frame, *serialize._dumps_args_checked(args, kwargs, None, item, chunk, what)]
            _check_size(frames, self.max_message_size)
        except SerializationError as exc:
            fut.set_exception(exc)
            return fut
        return self._submit_frames(fut, tid, frames, parent)

    def _submit_frames(
        self, fut: WorkerFuture, tid: int, frames: list[Any], parent: int | None = None
    ) -> WorkerFuture:
        if threading.get_ident() != self.thread_id:
            owner = parent or 0
            self.futures[tid] = fut
            self._foreign.append(lambda: self.submits.append(((tid, owner, len(frames)), frames)))
            self._wake()
            return fut
        self.futures[tid] = fut
        if parent is None:
            parent = self.current.btid if self.current is not None else 0
        self.submits.append(((tid, parent, len(frames)), frames))
        now = time.monotonic()
        if len(self.submits) >= 64 or now - self._last_flush > 0.0002:
            with self.lock:
                self._flush()
        return fut

    def cancelled(self, tid: int) -> None:
        if self.futures.pop(tid, None) is not None:
            if threading.get_ident() == self.thread_id:
                self.cancels.append(tid)
            else:
                self._foreign.append(lambda: self.cancels.append(tid))
                self._wake()

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    # --------------------------------------------------------------- waiting
    def in_task(self) -> bool:
        return (
            threading.get_ident() == self.thread_id and greenlet.getcurrent() is not self.hub
        )

    def wait_until(
        self, fs: Iterable[cf.Future[Any]], timeout: float | None, return_when: str
    ) -> None:
        """Park the calling task until ``return_when`` holds for ``fs`` or time runs out."""
        fs = list(fs)
        if not self.in_task():
            if threading.get_ident() == self.thread_id:
                raise RuntimeError(
                    "cannot wait for a future in a done-callback on a scoopexec worker (callbacks run "
                    "in the worker's hub, which must not block): wait in the task itself instead"
                )
            cfb.wait(fs, timeout, return_when)  # another thread: block it, the hub will resolve
            return
        if _condition_met(fs, return_when):
            return
        waiter = _Waiter(greenlet.getcurrent())
        self._watch(waiter, fs)
        if timeout is not None:
            self._add_timer(waiter, timeout)
        try:
            while not _condition_met(fs, return_when):
                if self._park(waiter) is _TIMEOUT:
                    break
        finally:
            waiter.active = False

    def _watch(self, waiter: _Waiter, fs: Iterable[cf.Future[Any]]) -> None:
        def wake(f: cf.Future[Any]) -> None:
            if threading.get_ident() != self.thread_id:
                # Completed in another thread (the flusher, a user's): the hub's
                # queues and the waiter's flags are the hub's to change.
                self._foreign.append(lambda: wake(f))
                self._wake()
            elif waiter.active:
                waiter.done.append(f)
                if not waiter.scheduled:
                    waiter.scheduled = True
                    self.ready.append((waiter, None))

        for f in fs:
            f.add_done_callback(wake)

    def _add_timer(self, waiter: _Waiter, timeout: float) -> None:
        heapq.heappush(self._timers, (time.monotonic() + max(0.0, timeout), next(self._timer_seq), waiter))

    def _park(self, waiter: _Waiter) -> Any:
        waiter.scheduled = False
        g = waiter.g
        if not isinstance(g, _Runner):
            raise RuntimeError(
                "a task can wait for futures only in its own greenlet, not in a greenlet it started"
            )
        g.waiter = waiter
        try:
            value = self.hub.switch()
        finally:
            g.waiter = None
        if waiter.cancelled:
            waiter.active = False
            raise cf.CancelledError("the broker cancelled this task (its result is no longer wanted)")
        return value

    def wait_fds(self, fds: Iterable[tuple[int, int]], timeout: float | None) -> None:
        """Park the calling task until one of ``fds`` (fd, poll event mask) is ready or ``timeout`` passes.

        What an event loop run by a task waits with (_TaskSelector): the hub
        polls these descriptors with its own, and runs other tasks meanwhile.
        """
        waiter = _Waiter(greenlet.getcurrent())
        self._fd_waits[waiter] = list(fds)
        if timeout is not None:
            self._add_timer(waiter, timeout)
        try:
            self._park(waiter)
        finally:
            waiter.active = False
            del self._fd_waits[waiter]

    def _poll_fd_waits(self, timeout: int) -> list[tuple[int, int]]:
        """Poll the hub's descriptors and those of parked tasks (wait_fds); wake the tasks whose are ready."""
        masks: dict[int, int] = {self.chan.fd: select.POLLIN, self._wake_r: select.POLLIN}
        owners: dict[int, list[_Waiter]] = {}
        for waiter, fds in self._fd_waits.items():
            if waiter.active and not waiter.scheduled:
                for fd, mask in fds:
                    masks[fd] = masks.get(fd, 0) | mask
                    owners.setdefault(fd, []).append(waiter)
        poller = select.poll()
        for fd, mask in masks.items():
            poller.register(fd, mask)
        events = poller.poll(timeout)
        for fd, _ in events:
            for waiter in owners.get(fd, ()):
                if waiter.active and not waiter.scheduled:
                    waiter.scheduled = True
                    self.ready.append((waiter, None))
        return events

    def _fire_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, waiter = heapq.heappop(timers)
            if waiter.active and not waiter.scheduled:
                waiter.scheduled = True
                self.ready.append((waiter, _TIMEOUT))

    def iter_completed(self, fs: Iterable[cf.Future[Any]], timeout: float | None) -> Iterator[cf.Future[Any]]:
        """as_completed() for a task: parks between futures."""
        fs = set(fs)
        end = None if timeout is None else time.monotonic() + timeout
        finished = [f for f in fs if f._state in _DONE_STATES]
        pending = fs - set(finished)
        yield from finished
        if not pending:
            return
        waiter = _Waiter(greenlet.getcurrent())
        self._watch(waiter, pending)
        if end is not None:
            self._add_timer(waiter, end - time.monotonic())
        try:
            while pending:
                while waiter.done:
                    f = waiter.done.popleft()
                    if f in pending:
                        pending.discard(f)
                        yield f
                if not pending:
                    return
                if self._park(waiter) is _TIMEOUT or (end is not None and time.monotonic() >= end):
                    if waiter.done:
                        continue
                    raise cf.TimeoutError(f"{len(pending)} (of {len(fs)}) futures unfinished")
        finally:
            waiter.active = False

    def shared(self, name: str) -> Any:
        """A value the running task's client shared with ScoopExecutor.share(); KeyError if none."""
        task = self.current
        if task is None:
            raise RuntimeError("shared values are only available inside a task")
        table = self.shares.get(task.setup, {})
        value = table[name]
        if isinstance(value, list):  # still frames: unpickle once, on first use
            value = table[name] = (serialize.loads(value),)
        return value[0]

    # ----------------------------------------------------- output and logs
    def output(self, stream: int, text: str) -> None:
        btid = self.current.btid if self.current is not None else 0
        self.outputs.append(((btid, stream), text.encode("utf-8", "replace")))
        if self._in_task:
            self._armed.set()  # a long task's prints must not wait for its end
        elif threading.get_ident() != self.thread_id:
            self._wake()

    def log_record(self, data: bytes) -> None:
        btid = self.current.btid if self.current is not None else 0
        self.logs.append(((btid,), data))
        if self._in_task:
            self._armed.set()
        elif threading.get_ident() != self.thread_id:
            self._wake()

    # ---------------------------------------------------------------- set-up
    def _apply_setup(self, sid: int, frames: list[zmq.Frame]) -> None:
        """Apply a client's set-up: its sys.path, directory, argv, main module, initializer.

        The main module and the initializer are the user's code: they run with
        `lock` released (the hub holds it here; nothing else takes it while no
        task runs, so this costs nothing).
        """
        if sid in self.setups:
            return
        lock = self.lock
        lock.release()
        try:
            error = self._run_setup(sid, frames)
        finally:
            lock.acquire()
        if error is None:
            self.setups[sid] = None
            self._send([P.header(P.SETUP_DONE, 1, sid)])
            return
        text, kind = error
        self.setups[sid] = text
        done = [P.header(P.SETUP_DONE, 0, sid), text.encode("utf-8", "replace")]
        self._send([*done, kind] if kind else done)

    def _run_setup(self, sid: int, frames: list[zmq.Frame]) -> tuple[str, bytes] | None:
        """The work of _apply_setup: None, or the error's text and its kind for SETUP_DONE.

        The kind is b"main" when importing the client's main module failed (the client
        then says it once, with no initializer wording), b"" otherwise.
        """
        try:
            plain = P.load_json(frames[0].bytes) if frames else {}
            argv = plain.get("argv")
            if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
                # Tasks see the client's sys.argv, as in ProcessPoolExecutor's
                # spawned workers, not this worker's own command line.
                self.argvs[sid] = argv
                self._use_argv(sid)
            logs.apply_levels(plain.get("log_levels"))  # log what the client wants to see
            for entry in reversed(plain.get("sys_path", [])):
                if entry not in sys.path:
                    sys.path.insert(0, entry)
            cwd = plain.get("cwd")
            if cwd and os.path.isdir(cwd) and not self.keep_cwd:
                os.chdir(cwd)
            if plain.get("mp_authkey"):
                import multiprocessing

                multiprocessing.current_process().authkey = bytes.fromhex(plain["mp_authkey"])
            if plain.get("scoop_compat"):
                from . import scoop_compat

                scoop_compat.install(origin=False)  # before the main import: it may `from scoop import ...`
            main = plain.get("main") or {}
            self.importing_main = True
            try:
                mainmodule.run(main)
            except BaseException as exc:
                # One short message, marked "main" for the client (no initializer wording).
                where = f"worker {self.name} (pid {self.pid} on {self.host})"
                return mainmodule.import_failure(exc, main, where), b"main"
            finally:
                self.importing_main = False
            if len(frames) > 1 and len(frames[1]) > 0:
                init, initargs = serialize.loads([frames[1]])
                if init is not None:
                    init(*initargs)
        except BaseException as exc:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            return f"On worker {self.name} (pid {self.pid} on {self.host}):\n{text}", b""
        return None

    def _use_argv(self, sid: int) -> None:
        """sys.argv of the client whose set-up ``sid`` is (a worker may serve several)."""
        self._argv_of = sid
        argv = self.argvs.get(sid)
        if argv is not None:
            sys.argv = list(argv)

    # ------------------------------------------------------------------ send
    def _target(self) -> int:
        """Tasks to hold queued (not started): enough to cover a round trip to the broker.

        None while run times are unknown or long, so that a task never waits
        behind a slow one here while another worker is idle.
        """
        avg = self.avg
        if avg <= 0.0 or avg >= 0.02:
            return 0
        return max(1, min(64, int(0.001 / avg) + 1))

    def _flush(self, force: bool = False, credit: bool = True) -> None:
        """Send what is waiting: output, logs, cancels, submissions, results (+ credit).  Hold `lock`."""
        self._last_flush = time.monotonic()
        if self.outputs:
            items = _drain(self.outputs)
            self._send([P.pack(P.OUTPUT, [e for e, _ in items]), *[b for _, b in items]])
        if self.logs:
            items2 = _drain(self.logs)
            self._send([P.pack(P.LOG, [e for e, _ in items2]), *[b for _, b in items2]])
        if self.cancels:
            self._send([P.pack(P.CANCEL, [(t,) for t in _drain(self.cancels)])])
        if self.submits:
            subs = _drain(self.submits)
            frames: list[Any] = [P.pack(P.SUBMIT, [e for e, _ in subs])]
            for _, body in subs:
                frames.extend(body)
            self._send(frames)
        more = 0
        if credit and self.welcomed and not self.stopping:
            more = self._target() - len(self.queue) - self.granted
            if more <= 0:
                # Idle (nothing queued, nothing promised): always ask for one.
                more = 1 if not self.queue and not self.granted and not self.ready else 0
            self.granted += more
        if self.results:
            res = _drain(self.results)
            frames = [P.pack(P.RESULT, [e for e, _ in res], arg=more)]
            for _, body in res:
                frames.extend(body)
            self._send(frames)
        elif more:
            self._send([P.header(P.CREDIT, 0, more)])

    def _send(self, frames: list[Any]) -> None:
        self.chan.send(frames)


class _ZmqChannel:
    """The worker's DEALER socket to a broker, by ZeroMQ."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self.sock = sock
        self.fd = _int_opt(sock, zmq.FD)

    def readable(self) -> bool:
        return bool(_int_opt(self.sock, zmq.EVENTS) & zmq.POLLIN)

    def receive(self, limit: int) -> list[list[Any]]:
        s = self.sock
        events, pollin = zmq.EVENTS, zmq.POLLIN
        out: list[list[Any]] = []
        while len(out) < limit:
            if not _int_opt(s, events) & pollin:  # cheaper than a recv raising zmq.Again
                break
            first = s.recv(copy=False)
            frames = [first]
            more = first.more
            while more:
                f = s.recv(copy=False)
                frames.append(f)
                more = f.more
            out.append(frames)
        return out

    def send(self, frames: list[Any]) -> None:
        s = self.sock
        last = len(frames) - 1
        for i, f in enumerate(frames):
            big = not isinstance(f, bytes) or len(f) > 65536
            s.send(f, zmq.SNDMORE if i < last else 0, copy=not big)

    def close(self) -> None:
        self.sock.close(linger=2000)


class _LinkChannel:
    """The worker's end of a local link (link.py); the broker closing it means it is gone."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.fd = link.fd

    def readable(self) -> bool:
        return False  # receive() takes everything; the socket's fd is level-triggered

    def receive(self, limit: int) -> list[list[Any]]:
        try:
            msgs = self.link.receive(limit)
        except ProtocolError as exc:
            _die(EXIT_LOST, f"the local link to the broker is corrupt: {exc}")
        if self.link.eof and not msgs:
            _client_gone(EXIT_LOST)  # the broker is gone: nothing can be delivered
        return msgs

    def send(self, frames: list[Any]) -> None:
        try:
            self.link.send(frames)
        except OSError:
            # The broker closed its end; what it sent before (a STOP, say) is still
            # to be read: receive() ends this worker, one way or the other.
            pass

    def close(self) -> None:
        self.link.close(drain=2.0)


_TIMEOUT = object()
_DONE_STATES = (cfb.CANCELLED_AND_NOTIFIED, cfb.FINISHED)


def _condition_met(fs: list[cf.Future[Any]], return_when: str) -> bool:
    done = [f for f in fs if f._state in _DONE_STATES]
    if return_when == cf.ALL_COMPLETED:
        return len(done) == len(fs)
    if return_when == cf.FIRST_COMPLETED:
        return bool(done) or not fs
    if return_when == cf.FIRST_EXCEPTION:
        if len(done) == len(fs):
            return True
        return any(not f.cancelled() and f.exception(0) is not None for f in done)
    raise ValueError(f"Invalid return condition: {return_when!r}")


def _int_opt(sock: zmq.Socket[Any], option: int) -> int:
    return sock.getsockopt(option)  # type: ignore[return-value]  # FD and EVENTS are ints


def _drain(dq: collections.deque[Any]) -> list[Any]:
    out = []
    pop = dq.popleft
    while dq:
        out.append(pop())
    return out


def _check_size(frames: list[Any], limit: int) -> None:
    big = serialize.oversized(frames, limit)
    if big:
        from .errors import MessageTooLargeError

        raise MessageTooLargeError(
            f"the task needs a {big}-byte message, more than the pool's max_message_size={limit}"
        )


def protocol_failure(kind: str, message: str, tb: str = "") -> tuple[int, list[Any]]:
    return P.FAILED, serialize.failure_frames(kind, message, tb)


def _die(code: int, message: str) -> NoReturn:
    """Say why on the real stderr (sys.stderr goes to the client) and exit at once."""
    try:
        os.write(2, f"scoopexec worker (pid {os.getpid()}): {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass
    _end(code, message)


_exit_fd: int | None = None  # --exit-fd: the pipe for this worker's exit note (contract.py)


def _end(code: int, message: str) -> NoReturn:
    """Exit at once with ``code``; one of our own codes is announced first (contract.py)."""
    if _exit_fd is not None and code in contract.REASONS:
        contract.write_note(_exit_fd, code, message)
    os._exit(code)


def _watch_fd(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
    _client_gone(0)


# (the client's pid, its private ipc socket): set by a worker its client started (--watch-stdin)
_litter: tuple[int, str] | None = None
_stopped = False  # the broker told this worker to STOP (a normal end)


def _client_gone(code: int) -> NoReturn:
    """Our client closed our stdin or link: exit now, tidying up after it if it was killed.

    A client killed by SIGKILL cannot remove its private ipc directory; its
    worker can, once the client has died (its files, our stdin and link among
    them, are closed a moment before it becomes a zombie and we are re-parented).
    A worker told to STOP exits at once: its client is alive and cleans up.
    """
    if _litter is not None and not _stopped:
        parent, path = _litter
        deadline = time.monotonic() + 0.1
        while not _dead(parent) and time.monotonic() < deadline and not _stopped:
            time.sleep(0.002)
        if _dead(parent):
            _remove_private_socket(path)
    _end(code, "its broker closed the connection")


def _dead(parent: int) -> bool:
    return os.getppid() != parent or process_state(parent) in (None, b"Z", b"X")


def _private_socket(endpoint: str) -> str | None:
    """The ipc socket of an embedded broker (in its private scoopexec-* directory), if that is ours."""
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://") :]
    if not os.path.basename(os.path.dirname(path)).startswith("scoopexec-"):
        return None
    return path


def _remove_private_socket(path: str) -> None:
    """Our client died without cleaning up (SIGKILL): remove its ipc socket and private directory."""
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid():
            os.unlink(path)
        os.rmdir(os.path.dirname(path))  # only if empty: anything else there is not ours to judge
    except OSError:
        pass


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
    done = {f for f in fs if f._state in _DONE_STATES}
    return cfb.DoneAndNotDoneFutures(done, fs - done)


def as_completed(fs: Iterable[cf.Future[Any]], timeout: float | None = None) -> Iterator[cf.Future[Any]]:
    """concurrent.futures.as_completed that parks a task instead of blocking its worker."""
    w = _current
    if w is None or not w.in_task():
        return _orig_as_completed(fs, timeout)
    return w.iter_completed(fs, timeout)


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
            w.wait_fds(fds, timeout)
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


def _connect_back(port: int) -> str:
    """The broker's endpoint when it is the far end of the ssh session we run in."""
    conn = os.environ.get("SSH_CONNECTION", "").split()
    if len(conn) < 4:
        raise ValueError("--connect-back needs SSH_CONNECTION: it is for workers started through ssh")
    addr = conn[0]
    if addr.startswith("::ffff:") and "." in addr:
        addr = addr[len("::ffff:") :]  # an IPv4 client seen by an IPv6 server
    if addr == "::1":
        addr = "127.0.0.1"
    return f"tcp://[{addr}]:{port}" if ":" in addr else f"tcp://{addr}:{port}"


def main(argv: list[str] | None = None) -> int:
    """``python -m scoopexec worker``: join a broker, alone or as a group of N processes."""
    import argparse

    from .security import check_endpoint, read_frame, read_key_file

    ap = argparse.ArgumentParser(prog="python -m scoopexec worker")
    ap.add_argument("--connect", metavar="ADDR", help="the broker's endpoint")
    ap.add_argument(
        "--connect-back",
        type=int,
        metavar="PORT",
        help="connect to PORT on the host this ssh session comes from (launchers use it)",
    )
    ap.add_argument(
        "--key", metavar="FILE", help="the pool's key file (0600), needed for a broker on another host"
    )
    ap.add_argument("--key-stdin", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ready", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--link-fd", type=int, default=None, help=argparse.SUPPRESS)  # launch.LocalWorkers
    ap.add_argument("--exit-fd", type=int, default=None, help=argparse.SUPPRESS)  # contract.py
    ap.add_argument("--keep-cwd", action="store_true", help="stay in the working directory started in")
    ap.add_argument(
        "--connect-timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="give up when no broker answered within S seconds (default: keep trying)",
    )
    ap.add_argument("--tag", default="", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="")
    ap.add_argument("--heartbeat", type=float, default=1.0)
    ap.add_argument("--heartbeat-timeout", type=float, default=5.0)
    ap.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    ap.add_argument("--no-forward-output", action="store_true")
    ap.add_argument(
        "-n",
        "--workers",
        default=None,
        metavar="N",
        help="run N worker processes under one supervisor (N or 'auto': one per CPU)",
    )
    args = ap.parse_args(argv)
    if (args.connect is None) == (args.connect_back is None):
        ap.error("give the broker's endpoint: --connect ADDR")
    if args.key and args.key_stdin:
        ap.error("--key and --key-stdin exclude each other")
    try:
        connect = args.connect or _connect_back(args.connect_back)
        creds = None
        if args.key:
            creds = read_key_file(args.key)
        elif args.key_stdin:
            creds = read_frame(0)
        check_endpoint(connect, secure=creds is not None, what="broker endpoint")
    except ValueError as exc:
        ap.error(str(exc))
    n = None
    if args.workers is not None:
        if args.workers == "auto":
            from .executor import _default_workers

            n = _default_workers()
        elif args.workers.isdigit() and int(args.workers) >= 1:
            n = int(args.workers)
        else:
            ap.error(f"-n takes a number of workers >= 1 or 'auto', not {args.workers!r}")
    if n is not None and (n != 1 or args.ready):
        from .launch import run_worker_group

        return run_worker_group(args, connect, creds, n)
    signal.signal(signal.SIGINT, signal.SIG_IGN) if args.watch_stdin else None
    if args.exit_fd is not None:
        global _exit_fd
        try:
            os.set_inheritable(args.exit_fd, False)  # programs that tasks start must not write on it
        except OSError as exc:
            ap.error(f"--exit-fd {args.exit_fd}: {exc}")
        _exit_fd = args.exit_fd
    link = None
    if args.link_fd is not None:
        try:
            link = socket.socket(fileno=args.link_fd)
            link.set_inheritable(False)  # programs that tasks start must not keep it open
        except OSError as exc:
            ap.error(f"--link-fd {args.link_fd}: {exc}")
    Worker(
        connect,
        link=link,
        tag=args.tag,
        name=args.name,
        heartbeat=args.heartbeat,
        heartbeat_timeout=args.heartbeat_timeout,
        watch_stdin=args.watch_stdin,
        forward_output=not args.no_forward_output,
        curve=creds,
        ready=args.ready,
        connect_timeout=args.connect_timeout,
        keep_cwd=args.keep_cwd,
    ).serve()
    return 0
