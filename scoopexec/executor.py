"""ScoopExecutor: a concurrent.futures.Executor over a ZeroMQ broker and greenlet workers.

::

  user threads                    broker thread (embedded default)            worker processes
  submit() --pickle--> outbox --wake--> Broker loop --TASKS (batched)--> hub greenlet, runners
  Future <--set_result-- deliver() <--------------------- RESULT (batched) --+
                                      (set_running_or_notify_cancel when a task is
                                       handed to a worker; cancelled ones are dropped)

By default (no ``broker=``) the executor runs the broker in a thread of this
process and starts ``max_workers`` local worker processes; the client is an
in-process peer of that broker, so a round trip costs two socket hops and two
thread hand-offs, like ProcessPoolExecutor's.  With ``broker="tcp://..."`` the
executor is a remote client of a standalone broker (``python -m scoopexec
broker``) through a DEALER socket served by one I/O thread.

The client keeps only the futures: a task's function and arguments are
pickled at submit() and their bytes live in the broker until the result
arrives; a future leaves the client's table the moment it is resolved.

With ``hosts=`` / ``hostfile=`` (or ``hosts="auto"`` inside a batch job) the
embedded broker also listens on a TCP endpoint secured with CURVE and starts
workers on the other hosts over ssh, or with srun (remote.py); local workers
keep the private ipc socket.  Host specs are parsed in hosts.py.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import concurrent.futures._base as cfb
import functools
import itertools
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import zmq

from . import logs, mainmodule, scoop_compat, serialize
from . import protocol as P
from .broker import Broker
from .errors import (
    AuthenticationError,
    BrokenScoopExecutor,
    BrokerLostError,
    InitializerError,
    MessageTooLargeError,
    SerializationError,
)
from .hosts import (
    Host,
    detect_allocation,
    distribute,
    local_cpu_count,
    note_local_hosts,
    parse_hosts,
    read_hostfile,
)
from .launch import LocalWorkers
from .link import WakePipe
from .mapping import MapMixin
from .remote import (
    Launchers,
    RemoteGroup,
    check_env,
    launch_all,
    remote_pythonpath,
    slurm_address,
    srun_command,
    ssh_command,
    worker_args,
)
from .security import (
    MONITOR_EVENTS,
    Credentials,
    HandshakeWatch,
    KeyPair,
    check_endpoint,
    dealer,
    endpoint_host,
    is_loopback,
    read_key_file,
    write_key_file,
)

if TYPE_CHECKING:
    from .status import PoolStatus
    from .trace import TraceRecorder

log = logging.getLogger("scoopexec")

_global_shutdown = False
_live_links: set[_Link] = set()
_live_lock = threading.Lock()
_active: list[Any] = []  # executors entered with `with`, innermost last
_by_pool: weakref.WeakValueDictionary[str, ScoopExecutor] = weakref.WeakValueDictionary()


def _python_exit() -> None:
    """At interpreter exit: refuse new work, let pending futures finish, stop every pool.

    When the program is ending because of Ctrl-C (an uncaught KeyboardInterrupt),
    or a second Ctrl-C arrives while waiting, pending work is abandoned instead.
    """
    global _global_shutdown
    _global_shutdown = True
    with _live_lock:
        links = list(_live_links)
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    interrupted = isinstance(last, KeyboardInterrupt)
    for link in links:
        try:
            if interrupted:
                why = link.abort("the program was interrupted (KeyboardInterrupt)")
            else:
                why = link.close(wait=True)
            if why:
                log.error("%s", why)
        except KeyboardInterrupt:
            for other in links:
                other.abort("the program was interrupted (KeyboardInterrupt)")
            raise


if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_python_exit)
else:  # pragma: no cover
    import atexit

    atexit.register(_python_exit)


def _default_workers() -> int:
    return local_cpu_count()



def _local_links() -> bool:
    """Whether local workers get socketpair links (link.py) rather than the ipc endpoint.

    On Linux only, where the broker can see a worker's process state in /proc;
    SCOOPEXEC_LOCAL_TRANSPORT=zmq chooses the ipc endpoint (for comparisons).
    """
    return sys.platform.startswith("linux") and os.environ.get("SCOOPEXEC_LOCAL_TRANSPORT", "") != "zmq"

class ScoopFuture(cf.Future):  # type: ignore[type-arg]
    """The future of a task submitted from a client.  A concurrent.futures.Future."""

    _link: _Link | None = None
    _tid = 0
    _what = ""  # the task's function, for error messages
    _started = 0.0  # time.monotonic() when it was handed to a worker

    def cancel(self) -> bool:
        """Cancel the task if no worker has it yet; True if it is (now) cancelled."""
        if not super().cancel():  # runs the done-callbacks, outside every lock
            return False
        with self._condition:
            if self._state == cfb.CANCELLED:
                # Tell waiters (wait(), as_completed()) now rather than when the
                # broker reaches this task in its queue.
                self.set_running_or_notify_cancel()
        link = self._link
        if link is not None:
            self._link = None
            link.cancelled(self._tid)
        return True


def _status_timeout(timeout: float) -> TimeoutError:
    return TimeoutError(
        f"the broker did not answer a status request within {timeout:g} s; it may be "
        "overloaded (try a longer timeout) or unreachable"
    )


class _StatusRequest:
    """A status snapshot asked for by a user thread, answered by the I/O thread."""

    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: dict[str, Any] = {}
        self.error = ""


class _Link:
    """The client's side: the futures table and the outbox towards a broker."""

    remote = False

    def __init__(self) -> None:
        self.futures: dict[int, ScoopFuture] = {}
        self.outbox: collections.deque[tuple[int, list[Any]]] = collections.deque()
        self.shares: collections.deque[list[Any]] = collections.deque()
        self._tids = itertools.count(1)
        self._wakeup = WakePipe()
        self.wake_fd = self._wakeup.fd
        self.drain_wake = self._wakeup.drain  # the I/O thread, when poll says wake_fd is readable
        # Results and output for user code, queued by the I/O thread (or the broker's
        # loop, holding its lock) and handed over by resolve(), which holds no lock:
        # (future, status, frames), (future, None, exception) or (None, function, args).
        self.outcomes: collections.deque[tuple[Any, Any, Any]] = collections.deque()
        self.broken_kind = ""
        self.broken_msg = ""
        self.stop_when_idle = False
        self.pool_id = ""
        self.thread: threading.Thread | None = None
        self.closed = threading.Event()
        self.workers: Launchers | None = None
        self.launch_options: dict[str, Any] = {}
        self._syncs: list[threading.Event] = []
        self.unmatched = 0
        self.status_requests: collections.deque[_StatusRequest] = collections.deque()

    # --- called from user threads
    def submit(self, frames: list[Any], what: str = "") -> ScoopFuture:
        tid = next(self._tids)
        fut = ScoopFuture()
        fut._link = self
        fut._tid = tid
        fut._what = what
        self.futures[tid] = fut
        self.outbox.append((tid, frames))
        self._kick()
        return fut

    def _kick(self) -> None:
        """Have the I/O thread take in the outbox."""
        self._wakeup.wake()

    def share(self, frames: list[Any]) -> None:
        self.shares.append(frames)
        self._wake()

    def _wake(self) -> None:
        self._wakeup.wake()

    def cancelled(self, tid: int) -> None:
        self.futures.pop(tid, None)
        self._check_idle()

    def sync(self, timeout: float = 1.0) -> None:
        """Wait until the I/O thread has taken in everything submitted so far."""
        if self.thread is None or not self.thread.is_alive() or self.thread is threading.current_thread():
            return
        ev = threading.Event()
        self._syncs.append(ev)
        self._wake()
        ev.wait(timeout)

    def status(self, timeout: float) -> dict[str, Any]:
        """The broker's status snapshot (Broker.status()), computed in the broker's thread."""
        if self.thread is None or not self.thread.is_alive() or self.closed.is_set():
            raise RuntimeError("this pool is shut down; it has no status any more")
        return self._status(timeout)

    def _status(self, timeout: float) -> dict[str, Any]:
        """Ask the broker with a STATUS message sent by the I/O thread (a remote link)."""
        if self.thread is threading.current_thread():
            raise RuntimeError(
                "the status of a standalone broker cannot be asked for from this client's I/O thread "
                "(a done-callback): ask from another thread"
            )
        req = _StatusRequest()
        self.status_requests.append(req)
        self._wake()
        if not req.event.wait(timeout):
            raise _status_timeout(timeout)
        if req.error:
            raise RuntimeError(req.error)
        return req.value

    # --- called from the I/O (broker) thread
    def dispatched(self) -> None:
        while self._syncs:
            self._syncs.pop().set()

    def started(self, tid: int) -> bool:
        fut = self.futures.get(tid)
        if fut is None:
            return False
        with fut._condition:  # set_running_or_notify_cancel runs no callback
            if fut._state != cfb.PENDING:
                self.futures.pop(tid, None)
                return False
            fut._started = time.monotonic()
            return fut.set_running_or_notify_cancel()

    def deliver(self, tid: int, status: int, frames: Sequence[Any]) -> None:
        """A task's result: resolved by resolve(), when no lock is held."""
        fut = self.futures.pop(tid, None)
        if fut is None:
            self.unmatched += 1  # a result nobody waits for (cancelled, or a bug: a duplicate)
            return
        fut._link = None
        self.outcomes.append((fut, status, frames))
        if self.stop_when_idle and not self.futures:
            self.request_stop()

    def resolve(self) -> None:
        """Hand queued results, output and log records over to user code.

        Called with no scoopexec lock held (by the I/O thread after each turn,
        or by a thread that failed futures itself), since unpickling a result,
        a future's done-callbacks, sys.stdout and logging handlers are user code.
        """
        outcomes = self.outcomes
        while outcomes:
            try:
                fut, status, arg = outcomes.popleft()
            except IndexError:  # another thread took the last one
                return
            if fut is None:
                try:
                    status(*arg)
                except Exception:  # pragma: no cover - must not stop the I/O thread
                    log.exception("scoopexec could not hand over a worker's output")
                continue
            if status is None:
                ok, value = False, arg
            elif status == P.CANCELLED and not self.remote:
                self.dropped += 1
                _cancel_dropped(fut)
                continue
            else:
                ok, value = serialize.decode_outcome(status, arg, fut._what)
                if not ok and status == P.LOST and fut._what:
                    value.args = (f"{fut._what}(): {value.args[0] if value.args else ''}",)
            try:
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            except cf.InvalidStateError:
                pass

    def output(self, stream: int, text: bytes) -> None:
        self.outcomes.append((None, self._write_output, (stream, text)))

    def _write_output(self, stream: int, text: bytes) -> None:
        out = sys.stderr if stream == 2 else sys.stdout
        if out is None:
            return
        try:
            out.write(text.decode("utf-8", "replace"))
            out.flush()
        except (OSError, ValueError):
            pass

    def log_record(self, data: bytes) -> None:
        self.outcomes.append((None, self._log_record, (data,)))

    def _log_record(self, data: bytes) -> None:
        try:
            logs.handle_remote_record(data)
        except Exception:  # pragma: no cover - a bad record must not stop the pool
            log.debug("could not re-emit a worker's log record", exc_info=True)

    def broken(self, kind: str, message: str) -> None:
        if self.broken_msg:
            return
        exc_type: type[BrokenScoopExecutor]
        if kind == "main":  # the worker's message is complete and short: say it once
            text, exc_type = message, InitializerError
        elif kind == "initializer":
            self.outcomes.append(
                (
                    None,
                    logging.getLogger("concurrent.futures").critical,
                    ("Exception in initializer:\n%s", message),
                )
            )
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
        self.stop_when_idle = True
        self.request_stop()

    def fail_all(self, exc_type: type[Exception], text: str) -> None:
        """Fail every pending future (queued for resolve())."""
        while self.futures:
            try:
                _, fut = self.futures.popitem()
            except KeyError:
                break
            fut._link = None
            self.outcomes.append((fut, None, exc_type(text)))

    _setup: list[bytes] = []

    def setup_frames(self) -> list[bytes]:
        return self._setup

    # --- workers on other hosts
    def _remote_target(self, kind: str) -> tuple[str | None, int | None, Credentials]:
        """(endpoint, or port to connect back to, keys) for workers launched elsewhere."""
        raise NotImplementedError  # pragma: no cover - overridden

    def _start_local(self, n: int) -> None:
        raise NotImplementedError  # pragma: no cover - overridden

    def add_hosts(self, hosts: list[Host], srun: int = 0) -> list[RemoteGroup]:
        """Start workers on ``hosts`` (ssh; local ones here) and ``srun`` workers; wait for them."""
        assert self.workers is not None
        o = self.launch_options
        makers: list[Callable[[], RemoteGroup]] = []
        common = {
            "heartbeat": o["heartbeat"],
            "heartbeat_timeout": o["heartbeat_timeout"],
            "connect_timeout": o["launch_timeout"] * 0.75,  # says why before we give up
            "keep_cwd": o["keep_cwd"],
        }
        for h in hosts:
            if h.local:
                continue
            connect, back, keys = self._remote_target("ssh")
            tag = self.workers.next_tag("S")
            args = worker_args(
                connect=connect,
                connect_back=back,
                tag=tag,
                n=h.slots,
                **common,
            )
            argv = ssh_command(
                h,
                ssh=o["ssh"],
                python=o["python"],
                cwd=o["cwd"],
                env=o["env"],
                args=args,
                connect_timeout=o["connect_timeout"],
            )
            hint = (
                "check that `ssh -o BatchMode=yes HOST true` works from here without a prompt, that "
                f"{o['python']} and {o['cwd']} exist there (or pass python= / cwd=), and that the host "
                "key is in known_hosts"
            )
            makers.append(
                functools.partial(RemoteGroup, tag, h.name, "ssh", argv, keys=keys, expected=None, hint=hint)
            )
        if srun:
            connect, _, keys = self._remote_target("srun")
            tag = self.workers.next_tag("R")
            args = worker_args(
                connect=connect,
                connect_back=None,
                tag=tag,
                group=False,
                **common,
            )
            argv = srun_command(srun, args, python=o["python"], cwd=o["cwd"])
            env = dict(os.environ, PYTHONPATH=remote_pythonpath(), **o["env"])
            makers.append(
                lambda: RemoteGroup(
                    tag,
                    "the SLURM allocation",
                    "srun",
                    argv,
                    keys=keys,
                    expected=srun,
                    env=env,
                    hint="srun runs inside the allocation; is there room for another job step?",
                )
            )
        groups = launch_all(makers, o["launch_timeout"]) if makers else []
        for g in groups:
            self.workers.add(g)
        n_local = sum(h.slots or _default_workers() for h in hosts if h.local)
        if n_local:
            self._start_local(n_local)
        return groups

    # --- life cycle
    def request_stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_idle(self) -> None:
        if self.stop_when_idle and not self.futures:
            self.request_stop()

    # Seconds the I/O thread may go without a turn of its loop (or, once stopping, without
    # ending) while someone waits for it, before the waiter says so and stops waiting.
    stuck_after = 30.0

    def turns(self) -> int:  # pragma: no cover - overridden
        """How many turns the I/O thread's loop has made (it turns at least once a second)."""
        raise NotImplementedError

    def cancel_queued(self) -> int:
        """Cancel every future not handed to a worker yet; return how many."""
        return sum(1 for fut in list(self.futures.values()) if fut.cancel())

    dropped = 0  # futures cancelled because the broker dropped their tasks (drop_unstarted)

    def drop_unstarted(self) -> None:
        """Have the broker drop the tasks it holds for no worker, even those counted as running
        (a worker handed them back); they are cancelled.  The embedded broker only."""

    def running(self) -> list[ScoopFuture]:
        """The futures whose tasks a worker has (or is about to have), longest-running first."""
        futs = [f for f in list(self.futures.values()) if f._state == cfb.RUNNING]
        futs.sort(key=lambda f: f._started)
        return futs

    def abort(self, reason: str, timeout: float = 10.0) -> str:
        """Stop now: cancel what has not started, fail what has, stop the workers.

        Returns "" once the pool is down, else why it is not (see join()).
        """
        self.cancel_queued()
        self.fail_all(BrokenScoopExecutor, f"abandoned: {reason}")
        self.resolve()
        self.stop_when_idle = True
        self.request_stop()
        return self.join(limit=timeout)

    def close(self, wait: bool = True) -> str:
        """Stop once every future is resolved; with wait, block until everything is down.

        Returns "" when it did not wait or everything is down, else why not (see join()).
        """
        self.stop_when_idle = True
        self._check_idle()
        return self.join() if wait else ""

    def join(self, limit: float | None = None, report: Callable[[float], None] | None = None) -> str:
        """Wait for the I/O thread to end; "" when it has, else why it has not.

        Waits in slices, so Ctrl-C gets through, and calls ``report(seconds
        waited)`` after each.  Gives up when ``limit`` seconds have passed, or
        when the thread has not turned its loop for ``stuck_after`` seconds
        (stuck in a done-callback, say): then the pool is abandoned, its
        pending futures failed and its worker processes stopped, and the
        answer says where the thread is stuck.
        """
        t = self.thread
        if t is None or t is threading.current_thread() or self.abandoned:
            return ""  # (abandoned: said once already)
        start = last = time.monotonic()
        turns = self.turns()
        while True:
            t.join(0.25)
            if not t.is_alive():
                if self.closed.is_set():
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

    abandoned = False

    def _abandon(self, why: str) -> None:
        """The I/O thread cannot be relied on: fail what is pending and stop the workers from here."""
        self.abandoned = True
        self.stop_when_idle = True
        self.fail_all(BrokenScoopExecutor, why)
        self.resolve()
        if self.workers is not None:
            self.workers.stop()
        self.request_stop()

    def _close_pipes(self) -> None:
        self._wakeup.close()

    def _finished(self) -> None:
        self.resolve()
        self.fail_all(
            BrokenScoopExecutor,
            "the pool was shut down before this task completed (wait for the futures you need, "
            "or shut down with wait=True, before the executor goes away)",
        )
        self.resolve()
        while self.status_requests:
            req = self.status_requests.popleft()
            req.error = "the pool shut down before its broker answered"
            req.event.set()
        self._close_pipes()
        with _live_lock:
            _live_links.discard(self)
        self.closed.set()


class _LocalLink(_Link):
    """An embedded broker in a thread of this process, and local worker processes."""

    def __init__(
        self,
        n: int,
        setup: list[bytes],
        *,
        bind: str | None,
        heartbeat: float,
        heartbeat_timeout: float,
        max_retries: int,
        python: str | None,
        env: Mapping[str, str] | None,
        max_message_size: int,
        cwd: str | None = None,
        trace: TraceRecorder | None = None,
    ) -> None:
        if bind is not None:
            check_endpoint(bind, secure=True, what="bind endpoint")
        super().__init__()
        self._setup = setup
        self.ctx: zmq.Context[Any] = zmq.Context()
        self._ipc_dir: str | None = tempfile.mkdtemp(prefix="scoopexec-")  # mode 0700
        private = f"ipc://{self._ipc_dir}/broker"
        if len(private) > 100:  # too long for a unix socket path
            private = "tcp://127.0.0.1:0"
        self._secure: str | None = None  # a CURVE endpoint, once there is one
        try:
            self.broker = Broker(
                private,
                context=self.ctx,
                local=self,
                heartbeat=heartbeat,
                heartbeat_timeout=heartbeat_timeout,
                max_retries=max_retries,
                max_message_size=max_message_size,
            )
            self.pool_id = self.broker.pool_id
            self.endpoint = self.private = self.broker.endpoint
            if bind is not None:
                secure = not is_loopback(bind)
                self.endpoint = self.broker.add_endpoint(bind, secure=secure)
                if secure:
                    self._secure = self.endpoint
            self.workers = Launchers(
                LocalWorkers(
                    self.private,
                    n,
                    python=python,
                    env=env,
                    cwd=cwd,
                    extra=["--keep-cwd"] if cwd is not None else (),
                    heartbeat=heartbeat,
                    heartbeat_timeout=heartbeat_timeout,
                    link=self.broker.add_link if _local_links() else None,
                )
            )
        except BaseException:
            self._cleanup_dir()
            if getattr(self, "broker", None) is not None:
                self.broker.close()
            self.ctx.term()
            self._close_pipes()
            raise
        self.broker.watcher = self.workers
        self.broker.trace = self.trace = trace
        with _live_lock:
            _live_links.add(self)
        self.thread = threading.Thread(target=self._run, name="scoopexec-broker", daemon=True)
        self.thread.start()

    def _kick(self) -> None:
        # Dispatch from this thread while the broker's loop sleeps in poll: the task
        # reaches a worker without first waking the broker thread (a thread hand-off).
        wakeup = self._wakeup
        if not wakeup.pending and not self.broker.dispatch_local_now():
            wakeup.wake()

    def request_stop(self) -> None:
        self.broker.stop()

    def turns(self) -> int:
        return self.broker.turns

    def drop_unstarted(self) -> None:
        broker = self.broker
        if self.thread is None or not self.thread.is_alive() or self.closed.is_set():
            return  # the loop has ended: nothing is queued any more
        if self.thread is threading.current_thread():  # a done-callback: outside the loop's turn
            with broker.lock:
                broker.drop_unstarted()
            return
        try:
            broker.call_soon(broker.drop_unstarted).result(timeout=5)
        except (cf.TimeoutError, cf.CancelledError, RuntimeError):
            pass  # a stuck or stopped loop: only the futures not yet handed over are cancelled

    def _in_loop(self, fn: Callable[[], Any]) -> Any:
        if self.thread is None:
            return fn()
        return self.broker.call_soon(fn).result(timeout=60)

    def _remote_target(self, kind: str) -> tuple[str | None, int | None, Credentials]:
        if self._secure is None:
            self._secure = self._in_loop(lambda: self.broker.add_endpoint("tcp://0.0.0.0:0", secure=True))
        assert self.broker.curve is not None
        pair = KeyPair.new()
        self.broker.allow(pair.public)
        keys = Credentials.for_pair(self.broker.curve.public, pair)
        host = endpoint_host(self._secure) or ""
        port = int(self._secure.rsplit(":", 1)[1])
        if host not in ("0.0.0.0", "*", "::", ""):
            return self._secure, None, keys
        if kind == "ssh":
            return None, port, keys
        return f"tcp://{slurm_address()}:{port}", None, keys

    def _start_local(self, n: int) -> None:
        assert self.workers is not None and self.workers.local is not None
        self.workers.local.add(n)

    def join_keys(self) -> Credentials:
        """A new key pair this pool accepts, for a peer started by hand."""
        if self._secure is None:
            raise RuntimeError(
                "this pool listens on no network endpoint: create it with "
                "bind='tcp://0.0.0.0:PORT' (or an address of this host) to let workers join by hand"
            )
        return self._remote_target("key")[2]

    def _status(self, timeout: float) -> dict[str, Any]:
        if self.thread is threading.current_thread():
            return self.broker.status()  # e.g. from a done-callback: we are the broker's thread
        fut = self.broker.call_soon(self.broker.status)
        try:
            result: dict[str, Any] = fut.result(timeout)
        except cf.TimeoutError:
            fut.cancel()
            raise _status_timeout(timeout) from None
        except cf.CancelledError:
            raise RuntimeError("this pool shut down before its broker answered") from None
        return result

    def _run(self) -> None:
        try:
            self.broker.run()
        except BaseException:  # pragma: no cover - a bug in the loop must not hang the client
            log.exception("the scoopexec broker thread failed")
            self.broken_msg = self.broken_msg or "the broker thread failed (see the log)"
        finally:
            if self.workers is not None:
                self.workers.stop()
            self.ctx.term()
            self._cleanup_dir()
            self._write_trace()
            log.info("pool %s stopped after %d task(s)", self.pool_id, self.broker.completed)
            self._finished()

    def _write_trace(self) -> None:
        if self.trace is None:
            return
        try:
            path = self.trace.write()
        except Exception as exc:
            log.error("could not write the timeline to %s: %s: %s", self.trace.path, type(exc).__name__, exc)
        else:
            log.info("timeline of %d task(s) written to %s", len(self.trace.records), path)

    def _cleanup_dir(self) -> None:
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            self._ipc_dir = None


class _RemoteLink(_Link):
    """A client of a standalone broker, through one DEALER socket and one I/O thread."""

    remote = True

    def __init__(
        self,
        endpoint: str,
        setup: list[bytes],
        *,
        heartbeat: float,
        heartbeat_timeout: float,
        connect_timeout: float,
        keys: Credentials | None = None,
    ) -> None:
        check_endpoint(endpoint, secure=keys is not None, what="broker endpoint")
        super().__init__()
        self.keys = keys
        self._handshakes = HandshakeWatch(endpoint, keys is not None)
        self._setup = setup
        self.endpoint = endpoint
        self.heartbeat_timeout = heartbeat_timeout
        self.cancels: collections.deque[int] = collections.deque()
        self._status_waiting: collections.deque[_StatusRequest] = collections.deque()
        self._stop = False
        self.ctx: zmq.Context[Any] = zmq.Context()
        s = self.sock = dealer(
            self.ctx,
            b"C" + os.urandom(11),
            endpoint,
            linger=1000,
            heartbeat=heartbeat,
            heartbeat_timeout=heartbeat_timeout,
            keys=keys,
        )
        self.monitor = s.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | MONITOR_EVENTS
        )
        s.connect(endpoint)
        try:
            self._handshake(connect_timeout)
        except BaseException:
            try:
                s.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(linger=0)
            s.close(linger=0)
            self.ctx.term()
            self._close_pipes()
            raise
        with _live_lock:
            _live_links.add(self)
        self.thread = threading.Thread(target=self._run, name="scoopexec-client", daemon=True)
        self.thread.start()

    def _handshake(self, timeout: float) -> None:
        hello = {"role": P.CLIENT, "pid": os.getpid(), "host": _hostname()}
        self._send([P.header(P.HELLO), P.dump_json(hello), *self._setup])
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            events = dict(poller.poll(int(left * 1000) + 1)) if left > 0 else {}
            if self.monitor in events:
                self._check_monitor(raise_errors=True)
            if left <= 0 or not events:
                raise BrokerLostError(
                    f"no scoopexec broker answered at {self.endpoint} within {timeout:g} s "
                    "(is `python -m scoopexec broker --bind ...` running there?)"
                )
            if self.sock not in events:
                continue
            frames = self.sock.recv_multipart(copy=False)
            mtype, _, _ = P.unpack_header(frames[0].bytes)
            if mtype == P.WELCOME:
                self.pool_id = P.load_json(frames[1].bytes).get("pool", "")
                return
            if mtype == P.ERROR:
                raise BrokenScoopExecutor(
                    f"the broker at {self.endpoint} refused this client: "
                    + frames[1].bytes.decode("utf-8", "replace")
                )

    def _check_monitor(self, raise_errors: bool = False) -> float | None:
        """Read monitor events; return the time the connection was lost (None: it is up)."""
        from zmq.utils.monitor import recv_monitor_message

        lost: float | None = self._lost_at
        while self.monitor.poll(0):
            ev = recv_monitor_message(self.monitor)
            problem = self._handshakes.event(ev["event"], ev["value"])
            if problem is not None:
                if raise_errors:
                    raise AuthenticationError(problem)
                self.broken("broker", problem)
            if ev["event"] == zmq.EVENT_DISCONNECTED:
                lost = lost or time.monotonic()
            elif ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                lost = None
        self._lost_at = lost
        return lost

    _lost_at: float | None = None

    def _remote_target(self, kind: str) -> tuple[str | None, int | None, Credentials]:
        if self.keys is None or is_loopback(self.endpoint):
            raise ValueError(
                f"workers on other hosts cannot reach the broker at {self.endpoint}: start it with "
                "`python -m scoopexec broker --bind tcp://0.0.0.0:PORT --key-file FILE` and give "
                "key=FILE and broker='tcp://THIS-HOST:PORT'"
            )
        return self.endpoint, None, self.keys

    def _start_local(self, n: int) -> None:
        assert self.workers is not None
        if self.workers.local is None:
            self.workers.local = LocalWorkers(
                self.endpoint,
                0,
                python=self.launch_options.get("python"),
                env=self.launch_options.get("env"),
                cwd=self.launch_options["cwd"] if self.launch_options.get("keep_cwd") else None,
                extra=["--keep-cwd"] if self.launch_options.get("keep_cwd") else (),
                heartbeat=self.launch_options.get("heartbeat", 1.0),
                heartbeat_timeout=self.launch_options.get("heartbeat_timeout", 5.0),
                replace=False,
                keys=self.keys,
            )
        self.workers.local.add(n)

    def cancelled(self, tid: int) -> None:
        if self.futures.pop(tid, None) is not None:
            self.cancels.append(tid)
            self._wake()
        self._check_idle()

    def request_stop(self) -> None:
        self._stop = True
        self._wake()

    def turns(self) -> int:
        return self._turns

    _turns = 0

    def _send(self, frames: list[Any]) -> None:
        last = len(frames) - 1
        for i, f in enumerate(frames):
            big = not isinstance(f, bytes) or len(f) > 65536
            self.sock.send(f, zmq.SNDMORE if i < last else 0, copy=not big)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.wake_fd, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        lost_at: float | None = None
        wake_fd = self.wake_fd
        try:
            while not self._stop:
                self._turns += 1
                timeout = 1000
                if lost_at is not None:
                    left = lost_at + self.heartbeat_timeout - time.monotonic()
                    if left <= 0:
                        self.broken(
                            "broker",
                            f"lost the connection to the broker at {self.endpoint}: no answer for "
                            f"{self.heartbeat_timeout:g} s. The broker process has exited or cannot be "
                            "reached; pending tasks are lost. Check the broker (its log, its host), then "
                            "start a new executor",
                        )
                        break
                    timeout = int(left * 1000) + 1
                events = dict(poller.poll(timeout))
                if wake_fd in events:
                    self.drain_wake()  # before looking at what it was woken for
                self._send_pending()
                self.dispatched()
                if self.sock in events:
                    self._receive()
                if self.monitor in events:
                    lost_at = self._check_monitor()
                if self.outcomes:
                    self.resolve()
        except BaseException:  # pragma: no cover
            log.exception("the scoopexec client thread failed")
        finally:
            try:
                self._send_pending()
                self._send([P.header(P.BYE)])
            except zmq.ZMQError:
                pass
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(linger=0)
            self.sock.close(linger=500)
            if self.workers is not None:
                self.workers.stop()
            self.ctx.term()
            self.status_requests.extend(self._status_waiting)
            self._finished()

    def _send_pending(self) -> None:
        while self.status_requests:
            self._status_waiting.append(self.status_requests.popleft())
            self._send([P.header(P.STATUS)])
        while self.shares:
            self._send([P.header(P.SHARE), *self.shares.popleft()])
        outbox = self.outbox
        while outbox:
            items: list[tuple[int, list[Any]]] = []
            while outbox and len(items) < 256:
                items.append(outbox.popleft())
            frames: list[Any] = [P.pack(P.SUBMIT, [(tid, 0, len(body)) for tid, body in items])]
            for _, body in items:
                frames.extend(body)
            self._send(frames)
        if self.cancels:
            ids = []
            while self.cancels:
                ids.append((self.cancels.popleft(),))
            self._send([P.pack(P.CANCEL, ids)])

    def _receive(self) -> None:
        s = self.sock
        for _ in range(1000):
            try:
                first = s.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames = [first]
            while frames[-1].more:
                frames.append(s.recv(copy=False))
            head = frames[0].bytes
            try:
                mtype, _, _ = P.unpack_header(head)
            except Exception as exc:
                log.error("bad message from the broker: %s", exc)
                continue
            if mtype == P.RESULTS:
                pos = 1
                for tid, status, n in P.entries(mtype, head):
                    self.deliver(tid, status, frames[pos : pos + n])
                    pos += n
            elif mtype == P.STARTED:
                for (tid,) in P.entries(mtype, head):
                    self.started(tid)
            elif mtype == P.OUTPUT:
                for (_, stream), f in zip(P.entries(mtype, head), frames[1:], strict=False):
                    self.output(stream, f.bytes)
            elif mtype == P.LOG:
                for f in frames[1:]:
                    self.log_record(f.bytes)
            elif mtype == P.STATUS_REPLY:
                if self._status_waiting:
                    req = self._status_waiting.popleft()
                    value = P.load_json(frames[1].bytes) if len(frames) > 1 else None
                    if isinstance(value, dict):
                        req.value = value
                    else:
                        req.error = f"the broker at {self.endpoint} sent a malformed status"
                    req.event.set()
            elif mtype == P.BROKEN:
                info = P.load_json(frames[1].bytes)
                self.broken(str(info.get("kind", "")), str(info.get("message", "")))
            elif mtype == P.ERROR:
                text = frames[1].bytes.decode("utf-8", "replace") if len(frames) > 1 else ""
                if text.startswith("unknown peer"):
                    self.broken(
                        "broker",
                        f"the broker at {self.endpoint} no longer knows this client (it was restarted, "
                        "or gave this client up after a long silence); start a new executor",
                    )
                else:
                    log.error("broker at %s: %s", self.endpoint, text)


def _cancel_dropped(fut: ScoopFuture) -> None:
    """The broker dropped this task before any worker started it: cancel its future.

    It may count as running (handed to a worker, which gave it back unstarted);
    it never ran, so it is put back to pending and cancelled like any other.
    """
    with fut._condition:
        if fut._state == cfb.RUNNING:
            fut._state = cfb.PENDING
    fut.cancel()


def _where(t: threading.Thread) -> str:
    """Where a thread is now: its innermost frames, innermost first."""
    frame = sys._current_frames().get(t.ident) if t.ident is not None else None
    if frame is None:
        return "an unknown place"
    stack = traceback.extract_stack(frame)[-4:]
    return " <- ".join(f"{f.name}() at {os.path.basename(f.filename)}:{f.lineno}" for f in reversed(stack))


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _check_local_endpoint(endpoint: str, *, secure: bool = False) -> None:
    """ipc and loopback TCP always; any other TCP endpoint only with CURVE (``secure``)."""
    check_endpoint(endpoint, secure=secure)


def _plan_hosts(
    max_workers: int | None,
    hosts: str | Sequence[str] | Mapping[str, int] | None,
    hostfile: str | os.PathLike[str] | None,
) -> tuple[int, list[Host], int]:
    """(local workers, hosts to start over ssh or here, srun workers) for a new pool."""
    if hosts is not None and hostfile is not None:
        raise ValueError("give hosts= or hostfile=, not both")
    if hostfile is not None:
        listed = read_hostfile(hostfile)
    elif isinstance(hosts, str) and hosts.strip().lower() == "auto":
        alloc = detect_allocation()
        if alloc is None:
            return max_workers or _default_workers(), [], 0
        if alloc.kind == "slurm":
            total = alloc.slots
            if max_workers is not None and max_workers > total:
                raise ValueError(
                    f"{max_workers} workers asked for, but the SLURM allocation has {total} tasks "
                    f"({', '.join(str(h) for h in alloc.hosts)})"
                )
            return 0, [], max_workers or total
        listed = alloc.hosts
    elif hosts is not None:
        listed = parse_hosts(hosts)
    else:
        return max_workers or _default_workers(), [], 0
    placed = distribute(listed, max_workers)
    note_local_hosts(placed)
    return 0, placed, 0


def _setup_blob(initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> list[bytes]:
    plain: dict[str, Any] = {
        "sys_path": [p for p in sys.path if isinstance(p, str)],
        "cwd": os.getcwd(),
        "argv": [str(a) for a in getattr(sys, "argv", [])],  # tasks see it, as with ProcessPoolExecutor
        "main": mainmodule.describe(),
        "log_levels": logs.levels(),
    }
    if scoop_compat.active():
        plain["scoop_compat"] = True  # workers provide `scoop.futures` too (python -m scoopexec)
    mp_process = sys.modules.get("multiprocessing.process")
    if mp_process is not None:
        # As multiprocessing's children do, workers take the client's authkey, so
        # that Manager proxies (dicts, queues, locks) passed to tasks connect.
        plain["mp_authkey"] = bytes(mp_process.current_process().authkey).hex()
    init = b""
    if initializer is not None:
        if not callable(initializer):
            raise TypeError("initializer must be a callable")
        try:
            init = bytes(serialize.dumps((initializer, tuple(initargs)))[0])
        except Exception as exc:
            raise SerializationError(
                f"cannot send the initializer to workers: {type(exc).__name__}: {exc}"
            ) from exc
    return [P.dump_json(plain), init]


def _check_mp_context(ctx: Any) -> None:
    if ctx is None:
        return
    get = getattr(ctx, "get_start_method", None)
    if not callable(get):
        raise TypeError(
            f"mp_context must be a multiprocessing context, e.g. multiprocessing.get_context('spawn'), "
            f"not {type(ctx).__name__}"
        )
    method = get()
    if method not in ("spawn", "forkserver"):
        raise ValueError(
            f"mp_context with the {method!r} start method cannot be honoured: scoopexec workers are "
            "fresh interpreters (as with 'spawn') and inherit nothing from this process; pass "
            "multiprocessing.get_context('spawn') or leave mp_context out"
        )


class ScoopExecutor(MapMixin, cf.Executor):
    """An Executor that runs calls on a pool of worker processes behind a ZeroMQ broker.

    With no ``broker`` argument it starts a broker inside this process and
    ``max_workers`` worker processes on this machine (default: one per
    available CPU), and stops them all at ``shutdown()``, at the end of a
    ``with`` block, or at interpreter exit.  With ``broker="tcp://host:port"``
    it connects to a standalone broker (``python -m scoopexec broker``).

    Tasks may submit tasks themselves (through this executor, captured in the
    task, or ``scoopexec.submit``) and wait on them: waiting parks only that
    task, so nested maps never deadlock.

    The first four arguments are ProcessPoolExecutor's, in its order, so that
    ``ProcessPoolExecutor(...)`` can be replaced by ``ScoopExecutor(...)``.

    Arguments:
        max_workers: local worker processes to start (must be > 0).
        mp_context: accepted for compatibility with ProcessPoolExecutor.  Workers
            are always fresh interpreters started by command, which is what the
            'spawn' and 'forkserver' start methods give; a 'fork' context is
            refused (ValueError), since what a fork inherits cannot be.
        initializer, initargs: called as ``initializer(*initargs)`` in every
            worker before its first task of this executor; if it raises, the
            executor is broken (``InitializerError``).
        broker: endpoint of a standalone broker to use instead of an embedded one.
        bind: endpoint for the embedded broker (default: a private ipc socket).
        heartbeat, heartbeat_timeout: seconds between liveness checks, and of
            silence after which a peer counts as lost.
        max_retries: times a task is sent again after its worker was lost.
        max_message_size: bytes; larger messages are refused (-1: no limit).
        python, env: interpreter and extra environment variables for workers
            (local and remote; default: this interpreter, no extra variables).
        connect_timeout: seconds to wait for a standalone broker to answer,
            and for ssh to connect to a host.
        hosts: where to run workers: ``["node1", "node2:8", "alice@node3:4"]``,
            ``{"node1": 8}``, ``"node[01-04]:8"``, or ``"auto"`` (the SLURM,
            PBS or SGE allocation this runs in; local workers outside one).
            Other hosts are reached with the system ``ssh`` (inside SLURM,
            with ``srun``); a host without a count runs one worker per CPU;
            ``max_workers`` caps the total, dealt to the hosts in turn.
        hostfile: a file of ``hostname [workers]`` lines, instead of hosts.
        cwd: working directory of remote workers (default: the current one).
        ssh: the ssh command and options to use, e.g. ``["ssh", "-F", "cfg"]``.
        key: the key file of a standalone broker that is not on loopback
            (``python -m scoopexec broker --key-file FILE`` writes it).
        launch_timeout: seconds to wait for launched workers to connect.
        trace: a file name: record every task (submit, start, end, worker,
            host, parent task, bytes in and out, retries) and write them there
            as a Chrome trace-event timeline when the pool stops; open it in
            https://ui.perfetto.dev or summarise it with
            ``python -m scoopexec report FILE``.  Embedded broker only (start
            a standalone broker with ``--trace FILE`` instead).
        progress: the default of ``map(..., progress=)``: True draws a
            progress bar on stderr for every map.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        *,
        broker: str | None = None,
        bind: str | None = None,
        heartbeat: float = 1.0,
        heartbeat_timeout: float = 5.0,
        max_retries: int = 3,
        max_message_size: int = -1,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
        hosts: str | Sequence[str] | Mapping[str, int] | None = None,
        hostfile: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ssh: Sequence[str] | None = None,
        key: str | os.PathLike[str] | Credentials | None = None,
        launch_timeout: float = 60.0,
        trace: str | os.PathLike[str] | None = None,
        progress: bool = False,
    ) -> None:
        if max_workers is not None:
            if not isinstance(max_workers, int) or isinstance(max_workers, bool):
                raise TypeError("max_workers must be an integer or None")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        _check_mp_context(mp_context)
        if heartbeat <= 0 or heartbeat_timeout <= heartbeat:
            raise ValueError(
                f"need 0 < heartbeat < heartbeat_timeout, got heartbeat={heartbeat!r} and "
                f"heartbeat_timeout={heartbeat_timeout!r}"
            )
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError("max_retries must be an integer >= 0")
        if _global_shutdown:
            raise RuntimeError("cannot start a scoopexec pool after interpreter shutdown began")
        _refuse_during_worker_bootstrap()
        env = check_env(env)
        n_local, remote_hosts, n_srun = _plan_hosts(max_workers, hosts, hostfile)
        if scoop_compat.active():  # under python -m scoopexec: SCOOP's scoop.SIZE, for the workers
            size = n_local + n_srun + sum(h.slots or 0 for h in remote_hosts)
            env = {**scoop_compat.worker_env(size), **env}
        keys = key if isinstance(key, Credentials) or key is None else read_key_file(key)
        if isinstance(ssh, str) or (ssh is not None and not all(isinstance(a, str) for a in ssh)):
            raise TypeError("ssh= is a list of strings, e.g. ['ssh', '-F', 'ssh_config']")
        launch_options = {
            "python": python or sys.executable,
            "env": env,
            "cwd": os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd(),
            "keep_cwd": cwd is not None,
            "ssh": list(ssh) if ssh is not None else ["ssh"],
            "heartbeat": heartbeat,
            "heartbeat_timeout": heartbeat_timeout,
            "connect_timeout": connect_timeout,
            "launch_timeout": launch_timeout,
        }
        recorder: TraceRecorder | None = None
        if trace is not None:
            if broker is not None:
                raise ValueError(
                    "trace= records in the embedded broker; with broker=..., start the standalone "
                    "broker with `python -m scoopexec broker --bind ADDR --trace FILE` instead"
                )
            from .trace import TraceRecorder

            recorder = TraceRecorder(trace)
        mainmodule.alias_in_client()
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._shared: dict[str, Any] = {}
        self._max_message_size = max_message_size
        self._progress = progress
        setup = _setup_blob(initializer, tuple(initargs))
        self._link: _Link
        if broker is None:
            if key is not None:
                raise ValueError("key= is for a standalone broker (broker=...)")
            self._max_workers = n_local + n_srun + sum(h.slots or 0 for h in remote_hosts)
            if recorder is not None:
                recorder.meta.update(argv=list(sys.argv))
            self._link = _LocalLink(
                n_local,
                setup,
                bind=bind,
                heartbeat=heartbeat,
                heartbeat_timeout=heartbeat_timeout,
                max_retries=max_retries,
                python=python,
                env=env,
                max_message_size=max_message_size,
                cwd=str(launch_options["cwd"]) if cwd is not None else None,
                trace=recorder,
            )
        else:
            if bind is not None:
                raise ValueError("bind= is for the embedded broker; it cannot be used with broker=")
            self._max_workers = max_workers or 0
            self._link = _RemoteLink(
                broker,
                setup,
                heartbeat=heartbeat,
                heartbeat_timeout=heartbeat_timeout,
                connect_timeout=connect_timeout,
                keys=keys,
            )
            self._link.workers = Launchers(None)
            self._link.launch_options = launch_options
            if hosts is None and hostfile is None:
                n_local = max_workers or 0
            self._max_workers = n_local + n_srun + sum(h.slots or 0 for h in remote_hosts)
            if n_local:
                self._link._start_local(n_local)
        self._link.launch_options = launch_options
        if remote_hosts or n_srun:
            try:
                self._link.add_hosts(remote_hosts, n_srun)
            except BaseException:
                self._link.close(wait=True)
                raise
        log.info(
            "pool %s: %s at %s, %d worker(s) started%s",
            self._link.pool_id, "embedded broker" if broker is None else "client of the broker",
            self._link.endpoint, self._max_workers,
            f", recording a timeline to {recorder.path}" if recorder is not None else "",
        )  # fmt: skip
        self._pool_id = self._link.pool_id
        _by_pool[self._pool_id] = self
        link = self._link
        self._finalizer = weakref.finalize(self, link.close, False)

    # --------------------------------------------------------------- public
    @property
    def _broken(self) -> str | bool:
        return self._link.broken_msg or False

    @property
    def pool_id(self) -> str:
        """Identifies the pool (its broker); executor handles in tasks refer to it."""
        return self._pool_id

    @property
    def endpoint(self) -> str:
        """The broker's endpoint, where more workers may connect."""
        return getattr(self._link, "endpoint", "")

    @property
    def max_workers(self) -> int:
        """The workers this pool was started with plus those added since (its size once all joined)."""
        return self._max_workers

    @property
    def broken(self) -> str | None:
        """Why this pool can run no more tasks (its initializer failed, its broker was lost ...), or None."""
        return self._link.broken_msg or None

    def add_workers(
        self,
        n: int | None = None,
        *,
        hosts: str | Sequence[str] | Mapping[str, int] | None = None,
        hostfile: str | os.PathLike[str] | None = None,
    ) -> None:
        """Grow the running pool: ``n`` more local workers, or workers on ``hosts``.

        Returns once the new workers are connected; the broker gives them work
        at once.  Raises LaunchError (nothing added) if a host cannot be used.
        """
        if (n is None) == (hosts is None and hostfile is None):
            raise ValueError("give either a number of local workers or hosts= / hostfile=")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ValueError("the number of workers to add must be an integer >= 1")
        with self._shutdown_lock:
            if self._shutdown or self._link.broken_msg:
                raise RuntimeError("cannot add workers to a pool that was shut down or is broken")
        if n is not None:
            self._link._start_local(n)
            self._max_workers += n
            return
        _, placed, n_srun = _plan_hosts(None, hosts, hostfile)
        if not placed and not n_srun:
            placed = [Host("localhost", _default_workers())]  # "auto" outside an allocation
        self._link.add_hosts(placed, n_srun)
        self._max_workers += n_srun + sum(h.slots or 0 for h in placed)

    def remove_workers(self, hosts: str | Sequence[str]) -> int:
        """Stop the workers this executor started on ``hosts`` (names as given); return how many
        hosts were stopped.  Their running tasks go to other workers; with none left, tasks wait
        for workers to be added.
        """
        names = {h.name for h in parse_hosts(hosts)}
        launchers = self._link.workers
        if launchers is None:
            return 0
        stopped = 0
        for g in list(launchers.groups.values()):
            if g.host in names and not g.retired:
                g.retired = True
                if isinstance(self._link, _LocalLink):
                    self._link.broker.revoke(g.keys.public)
                g.stop()
                launchers.discard(g)
                stopped += 1
        return stopped

    def write_key_file(self, path: str | os.PathLike[str]) -> str:
        """Write a key file (0600) that lets a worker join this pool by hand.

        ``python -m scoopexec worker --connect ENDPOINT --key FILE`` on another
        host, with ENDPOINT this pool's ``bind`` address.  Each call makes a new
        key pair that the pool accepts.
        """
        link = self._link
        if not isinstance(link, _LocalLink):
            raise RuntimeError("a client of a standalone broker joins with that broker's key file")
        return write_key_file(path, link.join_keys())

    @property
    def trace_path(self) -> str | None:
        """Where the timeline is written when the pool stops (``trace=``), or None."""
        rec = getattr(self._link, "trace", None)
        return rec.path if rec is not None else None

    def status(self, timeout: float = 5.0) -> PoolStatus:
        """What the pool is doing now: its workers, its queue and its throughput.

        Returns a PoolStatus: per worker its host, pid, busy or idle, tasks
        assigned and done, and seconds since it was last heard from; the
        tasks queued and assigned to workers, tasks completed and completions
        per second.  ``print()`` it
        for a table.  The embedded broker computes it in its own thread; a
        standalone broker is asked over the connection.  Raises TimeoutError
        if no answer comes within ``timeout`` seconds, RuntimeError after
        shutdown.
        """
        from .status import PoolStatus

        return PoolStatus.from_dict(self._link.status(timeout))

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the local worker processes this executor started."""
        w = self._link.workers
        return w.pids if w is not None else []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; return a Future for its result."""
        try:
            frames: list[Any] | None = serialize.encode_call(fn, args, kwargs)
            error: Exception | None = None
        except SerializationError as exc:
            frames, error = None, exc
        return self._submit_frames(frames, error, serialize.describe(fn))

    def _encode_fn(self, fn: Callable[..., Any]) -> Any:
        return serialize._dumps_fn_checked(fn)

    def _submit_encoded(
        self,
        fn_frame: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        what: str = "",
        item: int = -1,
        chunk: bool = False,
    ) -> cf.Future[Any]:
        try:
            frames: list[Any] | None = [
                fn_frame,
                *serialize._dumps_args_checked(args, kwargs, None, item, chunk, what),
            ]
            error: Exception | None = None
        except SerializationError as exc:
            frames, error = None, exc
        return self._submit_frames(frames, error, what)

    def _submit_frames(
        self, frames: list[Any] | None, error: Exception | None, what: str = ""
    ) -> cf.Future[Any]:
        if frames is not None and self._max_message_size > 0:
            big = serialize.oversized(frames, self._max_message_size)
            if big:
                frames, error = None, MessageTooLargeError(
                    f"the task needs a {big}-byte message, more than this executor's "
                    f"max_message_size={self._max_message_size}; send less data (share it once with "
                    "ex.share(), or pass a file path) or raise the limit"
                )
        with self._shutdown_lock:
            link = self._link
            if link.broken_msg:
                broke_at_setup = link.broken_kind in ("initializer", "main")
                exc_type = InitializerError if broke_at_setup else BrokenScoopExecutor
                raise exc_type(link.broken_msg)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _global_shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if frames is None:
                fut = ScoopFuture()
                fut.set_exception(error)  # type: ignore[arg-type]
                return fut
            return link.submit(frames, what)

    def share(self, name: str, value: Any) -> None:
        """Make ``value`` available to every task of this executor, on every worker.

        Workers that join later receive it too, and tasks submitted after this
        call are guaranteed to see it (``scoopexec.shared(name)`` in a task).
        """
        if not isinstance(name, str):
            raise TypeError("a shared value's name must be a string")
        try:
            frames = [name.encode(), *serialize.dumps(value)]
        except Exception as exc:
            raise SerializationError(f"cannot share {name!r}: {type(exc).__name__}: {exc}") from exc
        with self._shutdown_lock:
            if self._shutdown or self._link.broken_msg:
                raise RuntimeError("cannot share values after shutdown")
            self._shared[name] = value
            self._link.share(frames)

    def shared(self, name: str) -> Any:
        """The value shared under ``name`` by this executor (KeyError if none)."""
        return self._shared[name]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; the pool stops once pending futures are done.

        With ``cancel_futures=True`` futures not yet handed to a worker are
        cancelled first.  With ``wait=True`` this returns when every worker
        process and thread of the pool is gone (Ctrl-C interrupts the wait).
        Calling it again, or from a done-callback, is harmless.  Raises
        BrokenScoopExecutor instead of waiting for ever if the pool's I/O
        thread is stuck (in a done-callback that blocks, say): the message
        says where, and the pool's workers are stopped.
        """
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            # Let the broker take in what was submitted (tasks about to go to
            # idle workers count as running), then cancel everything else.
            self._link.sync()
            self._link.cancel_queued()
        why = self._link.close(wait=wait)
        if why:
            raise BrokenScoopExecutor(why)

    def __enter__(self) -> ScoopExecutor:
        _active.append(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Without an exception: shutdown(wait=True), as any Executor.  With one: cancel
        the tasks that have not started, wait only for the running ones, and say which
        (Ctrl-C, or a KeyboardInterrupt as the exception, abandons them at once).
        """
        try:
            _active.remove(self)
        except ValueError:
            pass
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.abort("interrupted (KeyboardInterrupt)")
            return
        try:
            if exc_type is None:
                self.shutdown(wait=True)
            else:
                self._leave_after(exc_type)
        except KeyboardInterrupt:
            self.abort("interrupted (KeyboardInterrupt) while waiting for pending tasks")
            raise

    # Leaving `with` because of an exception, with tasks running: say so after this many
    # seconds, and again every REPORT_EVERY seconds.
    REPORT_AFTER = 1.0
    REPORT_EVERY = 10.0

    def _leave_after(self, exc_type: type[BaseException]) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        link = self._link
        cancelled = link.cancel_queued()
        link.drop_unstarted()
        link.close(wait=False)
        due = [self.REPORT_AFTER]

        def report(waited: float) -> None:
            if waited < due[0]:
                return
            due[0] = waited + self.REPORT_EVERY
            running = link.running()
            if not running:
                return
            now = time.monotonic()
            shown = ", ".join(
                f"{(f._what or 'a task').rsplit('.', 1)[-1]}() running for {now - f._started:.1f} s"
                for f in running[:5]
            )
            if len(running) > 5:
                shown += f" and {len(running) - 5} more"
            log.warning(
                "leaving the `with ScoopExecutor()` block because of %s: cancelled %d task(s) that "
                "had not started; waiting for %d running task(s) to finish: %s. Ctrl-C stops "
                "waiting and abandons them",
                exc_type.__name__, cancelled + link.dropped, len(running), shown,
            )  # fmt: skip

        why = link.join(report=report)
        if why:
            log.error("%s", why)  # the exception leaving `with` is the user's: do not replace it

    def abort(self, reason: str = "aborted") -> None:
        """Stop at once: cancel pending futures, fail running ones, stop every worker.

        What Ctrl-C in a ``with ScoopExecutor()`` block does; ``shutdown()``
        afterwards is harmless.  Waits at most 10 s for the pool's thread, and
        says so (a log error) if it did not stop.
        """
        with self._shutdown_lock:
            self._shutdown = True
        why = self._link.abort(reason)
        if why:
            log.error("%s", why)

    def __reduce__(self) -> tuple[Any, ...]:
        # Inside a task, an executor captured from the client is a handle to
        # the same pool: its submit() goes through the worker running the task.
        return (_pool_handle, (self._pool_id,))

    def __repr__(self) -> str:
        state = "broken" if self._broken else "shut down" if self._shutdown else "running"
        return f"<ScoopExecutor pool={self._pool_id} workers={self._max_workers} {state}>"


def _pool_handle(pool_id: str) -> Any:
    from .worker import current_worker

    w = current_worker()
    if w is not None:
        from .api import WorkerExecutor

        if w.pool_id and pool_id != w.pool_id:
            raise RuntimeError(
                f"this task received an executor of pool {pool_id}, but runs in pool {w.pool_id}; "
                "a task can only submit to the pool it runs in"
            )
        return WorkerExecutor(w)
    ex = _by_pool.get(pool_id)
    if ex is None:
        raise RuntimeError(
            f"the scoopexec pool {pool_id} is not reachable from this process: an executor only "
            "travels to the tasks of its own pool; pass data, not the executor, anywhere else"
        )
    return ex


def _refuse_during_worker_bootstrap() -> None:
    from .worker import current_worker

    w = current_worker()
    if w is not None and w.importing_main:
        raise mainmodule.guard_error("starts a pool (a ScoopExecutor)")


def active_executor() -> ScoopExecutor | None:
    """The innermost executor entered with ``with`` in this process, if any."""
    return _active[-1] if _active else None


