"""The broker: one poll loop, and a table {message kind: handler}.

::

   submitters (clients, and workers running tasks that submit)
        |  SUBMIT (batches)                     ^  RESULTS / STARTED / OUTPUT
        v                                       |
   ports.py: RouterPort, LinkPort, InProcessPort --> Broker._take --> handlers[kind]
                                                                        |
   ledger.py: tasks, queue, workers, clients  <---- plain calls --------+
   scheduling.py: dispatch / mark_running / recall  ---> TASKS, STARTED, RECALL
        |  SETUP, TASKS (up to the worker's credit)      ^  RESULT + CREDIT
        v                                                |
   workers (hub greenlet + one greenlet per running task)

Each turn: poll every port's file descriptors; take the messages in (each checked
by protocol.decode, its sender's role by protocol.SENDERS, then routed by the table);
dispatch; send the batched results; a tick (liveness, exits of local workers, the
completion rate) every 50 ms while something moves, every 250 ms otherwise (``TICK``,
``QUIET_TICK``).

The broker never unpickles: it reads the fixed headers of wire/protocol.py and
moves payload frames (zmq.Frame, received without copying) from submitter to
worker and back.  It keeps each task's frames until the result arrives, so
that the task can be sent again when its worker is lost, and it forgets a task
the moment its result is handed on: a second result for the same id (a late
answer from a worker given up for lost) finds nothing and is dropped.

Inside a client (the default) the broker runs in a thread and that client is
an in-process peer (ports.InProcessPort): its submissions arrive through a deque
plus a wake-up pipe, and the messages for it are handed to its own table by the
broker's thread once the broker's lock is released.  The submitting thread may
dispatch its own task while the loop sleeps (dispatch_local_now), so that a
round trip crosses no ZeroMQ I/O thread and one thread hand-off fewer; and the
thread that then waits on the result may read it from the worker's link itself
(leader.py, take_turn), one more hand-off fewer.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

import zmq

from ..errors import ProtocolError
from ..wire import fnframes
from ..wire import protocol as P
from ..wire.framing import WakePipe
from ..wire.security import KeyPair
from ..wire.validate import DEFAULT_MAX_MESSAGE_SIZE, check_hello
from . import scheduling
from .ledger import LOCAL, ClientState, Ledger, Peer, Task, WorkerState, task_entries
from .limits import Guard, Limits, write_nowait
from .memory import IntakeTrim
from .ports import InProcessPort, LinkPort, LocalClient, Poll, RouterPort
from .supervision import QUICK_REAP, ProcessWatcher, Supervisor

if TYPE_CHECKING:
    from ..trace import TraceRecorder

__all__ = ["LOCAL", "Broker", "LocalClient", "ProcessWatcher"]

log = logging.getLogger("scoopexec.broker")

TICK = 0.05  # s between ticks (liveness, exits, rate) while workers start or peers are probed
# s between ticks otherwise (at most a quarter of the heartbeat, an eighth of its timeout).  A
# tick woke this thread 20 times a second for about 0.25 ms of CPU each: 0.5 % of a core,
# taken from the workers on a machine whose cores they all use (issue 17's CPU-bound row).
# Nothing urgent waits on it: a lost worker is seen at once (its link ends, a probe fails) and
# its tasks go elsewhere; a retiring one is looked for every QUICK_REAP s; messages wake the
# loop.  What does wait for a tick -- replacing a worker killed as hung, a worker that dies
# before its HELLO when its start came between ticks, a first probe again -- waits up to one
# quiet tick longer.
QUIET_TICK = 0.25


Handler = Callable[[bytes, Any, P.Message], None]


class Broker:
    """Routes tasks from submitters to workers and results back.

    ``bind`` is a ZeroMQ endpoint (``ipc://...`` or ``tcp://127.0.0.1:0``).
    ``local`` is the in-process client, if any; ``watcher`` the local worker
    processes to watch for exits and replace.
    """

    def __init__(
        self,
        bind: str,
        *,
        context: zmq.Context[Any] | None = None,
        local: LocalClient | None = None,
        watcher: ProcessWatcher | None = None,
        heartbeat: float = 1.0,
        heartbeat_timeout: float = 5.0,
        max_retries: int = 3,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        pool_id: str | None = None,
        curve: KeyPair | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.ctx = context or zmq.Context.instance()
        self.limits = limits or Limits()
        self.pool_id = pool_id or os.urandom(8).hex()  # (as secrets.token_hex, without its hashlib)
        self.watcher = watcher
        self.supervisor = Supervisor(self)
        self.trim = IntakeTrim(enabled=local is None)  # memory.py: not in a client's process
        self.heartbeat = heartbeat
        self.heartbeat_timeout = heartbeat_timeout
        self.max_retries = max_retries
        self.max_message_size = max_message_size
        self.host = socket.gethostname()
        self.ledger = Ledger(max_retries)
        self.poll = Poll()
        self.wakeup = WakePipe()  # stop(), call_soon() and new links wake the loop
        self.poll.watch(self.wakeup.fd, self._on_wakeup)
        self.router = RouterPort(
            self.ctx, heartbeat=heartbeat, heartbeat_timeout=heartbeat_timeout,
            max_message_size=max_message_size, curve=curve,
            on_message=self._take, on_gone=self.supervisor.peer_gone, dropped=self.ledger.dropped,
            limits=self.limits,
        )  # fmt: skip
        self.endpoint: str = self.router.add_endpoint(bind, secure=bind.startswith("tcp://"))  # TCP: CURVE
        self.router.watch(self.poll)
        gone, dropped = self.supervisor.peer_gone, self.ledger.dropped
        self.guard = Guard(dropped, self.send, self.ledger.peer)
        self.links = LinkPort(
            self.poll, self.wakeup, self._take, gone, dropped, heartbeat_timeout, max_message_size
        )
        self.local: InProcessPort | None = None
        if local is not None:
            self.local = InProcessPort(local)
            self.ledger.add_client(LOCAL, {"role": P.CLIENT, "local": True}, local.setup_frames())
            self.poll.watch(local.wake.fd, self._on_local_wake)
        self._calls: collections.deque[tuple[Callable[[], Any], cf.Future[Any]]] = collections.deque()
        self._out: dict[bytes, list[tuple[int, int, Sequence[Any]]]] = {}  # RESULTS: (tid, status, frames)
        self._started: dict[bytes, list[tuple[int]]] = {}  # STARTED to send, per owner
        self._stopping = False
        self.turns = 0  # turns of the loop: an owner waiting on it can tell a stuck thread
        # Held by the loop except while it waits in poll: the in-process client's
        # thread may then dispatch its own submissions itself (dispatch_local_now).
        self.lock = threading.Lock()
        self._wake_needed = 0  # counts sends that the sleeping loop must be told about
        self._next_tick = time.monotonic()
        self._quiet_tick = max(TICK, min(QUIET_TICK, heartbeat / 4, heartbeat_timeout / 8))
        self._next_state_check = 0.0
        self.started = time.time()
        self.trace: TraceRecorder | None = None  # set by the owner to record a timeline (trace.py)
        # What the broker does with each message, once protocol.SENDERS admitted its sender.
        self.handlers: dict[int, Handler] = {
            P.HELLO: self._on_hello,
            P.SUBMIT: self._on_submit,
            P.RESULT: self._on_result,
            P.CREDIT: self._on_credit,
            P.RETURN: self._on_return,
            P.CANCEL: self._on_cancel,
            P.OUTPUT: self._on_output,
            P.LOG: self._on_output,
            P.SETUP_DONE: self.supervisor.on_setup_done,
            P.SHARE: self._on_share,
            P.BYE: self._on_bye,
            P.STATUS: self._on_status,
        }

    # ------------------------------------------------------------- endpoints
    @property
    def stopping(self) -> bool:
        """stop() was called: the loop ends after this turn."""
        return self._stopping

    def call_soon(self, fn: Callable[[], Any]) -> cf.Future[Any]:
        """Run ``fn`` in the broker's loop (sockets are not thread-safe); thread-safe."""
        fut: cf.Future[Any] = cf.Future()
        self._calls.append((fn, fut))
        self.wakeup.wake()
        return fut

    def _run_calls(self) -> None:
        while self._calls:
            fn, fut = self._calls.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Serve until stop() is called.  Runs in a thread or as a process's main loop."""
        try:
            while not self._stopping:
                self.step()
        finally:
            with self.lock:  # a thread in a turn of its own (leader.py, dispatch_local_now) ends it first
                self._close()

    def step(self, timeout: float | None = None) -> None:
        """One turn of the loop: wait for input (at most ``timeout`` s), handle it, dispatch, send.

        The in-process client's messages are handed over (its futures resolved, its output
        written) with `lock` released, as soon as the input is taken in and again at the end
        of the turn: their done-callbacks are user code, which may submit, ask for status or
        shut the pool down.
        """
        lock = self.lock
        local = self.local
        self.turns += 1
        with lock:
            ms = self._before_poll(timeout)
        ready = self.poll.wait(ms)
        with lock:
            self._take_input(ready)
        if local is not None and local.pending:
            local.deliver()
        with lock:
            self._after_input()
        if local is not None and local.pending:
            local.deliver()

    def _before_poll(self, timeout: float | None) -> int:
        if self.links.new:
            self.links.register_new()
        if timeout is not None:
            ms = int(timeout * 1000)
        elif self.router.backlog:
            ms = 50
        else:
            # Round up: rounding down spins through the last millisecond before a tick.
            ms = max(0, math.ceil((self._next_tick - time.monotonic()) * 1000))
        if self.supervisor.leaving:
            ms = min(ms, math.ceil(QUICK_REAP * 1000))
        return 0 if self.router.input_waiting() else scheduling.recall_wait(self.ledger, ms)

    def _take_input(self, ready: list[tuple[int, int]]) -> None:
        handlers = self.poll.handlers
        for fd, events in ready:
            handler = handlers.get(fd)
            if handler is not None:
                handler(events)
        self.router.take()
        out = self._out.pop(LOCAL, None)
        if out is not None:  # its results go over at once, not after this turn's dispatch
            self.local.results(out)  # type: ignore[union-attr]  # (only the local client is LOCAL)

    def _after_input(self) -> None:
        if self._calls:
            self._run_calls()
        local = self.local
        if local is not None and (local.outbox or local.inbox):
            self._take_local()
        self._dispatch()
        self._flush()
        if self.links.dead:
            self.links.close_dead()
        if self.local is not None:
            self.local.client.dispatched()
        now = time.monotonic()
        if self.supervisor.leaving:
            self.supervisor.look_for_leavers(now)
        if now >= self._next_tick:
            self._tick(now)
            self._next_tick = now + (TICK if _moving(self) else self._quiet_tick)

    def _on_wakeup(self, events: int) -> None:
        self.wakeup.drain()
        self.links.register_new()

    def _on_local_wake(self, events: int) -> None:
        assert self.local is not None
        self.local.client.wake.drain()  # what it queued is taken in every turn (_take_local)

    def dispatch_local_now(self, wait: float = 0.0) -> bool:
        """Dispatch the in-process client's new tasks from its own thread, if the loop sleeps
        (or ends its turn within ``wait`` s: client/embedded.py, _dispatch_now).
        Saves the round trip's first thread hand-off (wake the loop, which then
        sends).  Holding `lock` while the loop waits in poll is safe for every
        socket: the loop uses none of them then.  False means nothing was done,
        or something was that the loop must be woken for.
        """
        lock = self.lock
        if not lock.acquire(True, wait):
            return False
        try:
            local = self.local
            if self._stopping or self.router.sock.closed or local is None:
                return False
            before = self._wake_needed
            self._take_local()
            self._dispatch()
            local.client.dispatched()
            return (
                self._wake_needed == before and not self.links.dead and not self.router.backlog
                and not self._out and not local.pending
            )  # fmt: skip
        finally:
            lock.release()

    def take_turn(self, ready: list[tuple[int, int]]) -> None:
        """A turn on ``ready`` without the poll, by a thread waiting on a result (leader.py); hold `lock`."""
        self._take_input(ready)
        self._after_input()

    def stop(self) -> None:
        """Ask the loop to end (thread-safe)."""
        self._stopping = True
        self.wakeup.wake()

    def _close(self) -> None:
        for w in list(self.ledger.workers.values()):
            self.send(w.key, [P.header(P.STOP)])
        for key in [k for k in self.links.links if k not in self.ledger.workers]:
            self.send(key, [P.header(P.STOP)])  # still starting: it reads this first
        self.links.close_all(drain=0.5)
        self.close()

    def close(self) -> None:
        """Release the sockets (run() does this when it ends)."""
        if self.router.sock.closed:
            return
        self.router.close()
        while self._calls:
            _, fut = self._calls.popleft()
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("the broker stopped"))
        self.wakeup.close()
        self.poll.close()

    # --------------------------------------------------------------- receive
    def _take(self, key: bytes, frames: list[Any], ident: zmq.Frame | None) -> None:
        """Handle one message; a bad one is dropped, counted, and answered where that helps."""
        ledger = self.ledger
        try:
            msg = P.decode(frames)
            handler = self.handlers.get(msg.kind)
            if handler is None:
                raise ProtocolError(f"unexpected {msg.name} from a peer")
            peer: Peer | None = ledger.workers.get(key)
            if peer is not None:
                peer.last_seen = time.time()  # type: ignore[attr-defined]
            else:
                peer = ledger.clients.get(key)
            senders = P.SENDERS.get(msg.kind)
            if senders is not None and (peer is None or peer.role not in senders):
                ledger.dropped["unknown peer"] += 1
                self.send(key, [P.header(P.ERROR), b"unknown peer: send HELLO first"])
                return
            if ident is not None and msg.kind == P.HELLO:
                self.router.remember(ident, key)  # that connection closing is this peer's
            handler(key, peer, msg)
        except Exception as exc:  # anything a message made happen: drop it, the loop goes on
            self.guard.refuse(key, ident, exc)

    def _take_local(self) -> None:
        assert self.local is not None
        for tid in self.local.take(self._take, self.ledger):
            self.result(LOCAL, tid, P.CANCELLED, [])  # its client is leaving

    # ------------------------------------------------------------- handlers
    def _on_hello(self, key: bytes, peer: Peer | None, msg: P.Message) -> None:
        info, ledger = check_hello(msg.info), self.ledger
        role, held, credit = info["role"], info.pop("held", set()), info.pop("credit", 0)
        if role == P.WORKER:
            old = ledger.workers.get(key)
            if old is not None:
                ledger.resync(old, held)
                old.info.update(info)
                self._welcome(key, {"resumed": True})
                return
            w = ledger.add_worker(key, info)
            if w.tag and self.watcher is not None:
                self.watcher.mark_hello(w.tag)
            log.info("worker %s joined (pid %s on %s)", w.name, info.get("pid"), info.get("host"))
            self._welcome(key, {"granted": credit} if credit else {})
            ledger.grant(w, credit)  # its HELLO's credit: first tasks go out this turn, after WELCOME
        elif role == P.CLIENT:
            c = ledger.clients.get(key) or ledger.add_client(key, info, list(msg.frames[2:]))
            self._welcome(key, {"setup": c.setup})
        else:  # an observer (check_hello knows no other role)
            ledger.observers.add(key)
            self._welcome(key, {})

    def _welcome(self, key: bytes, extra: dict[str, Any]) -> None:
        self.send(key, [P.header(P.WELCOME), P.dump_json(_welcome(self, key, extra))])

    def _on_submit(self, key: bytes, peer: ClientState | WorkerState, msg: P.Message) -> None:
        client = peer if isinstance(peer, ClientState) else None  # a worker's: sub-tasks
        refused = self.limits.refuse_tasks(client, msg.count) if client is not None else None
        if refused is not None:  # over its max_queued: those tasks fail, with the reason
            for ent in msg.entries:
                self.result(key, ent[0], P.FAILED, refused)
            return
        for tid in self.ledger.submit(key, msg.parts(), client):  # type: ignore[arg-type]
            self.result(key, tid, P.CANCELLED, [])  # its client is broken, or leaving

    def _on_share(self, key: bytes, c: ClientState, msg: P.Message) -> None:
        """A value every worker of this client must have before its later tasks."""
        frames = list(msg.frames[1:])
        c.shares[P.as_bytes(frames[0])] = frames  # sharing a name again replaces its value
        for w in self.ledger.workers.values():
            if c.setup in w.setups:
                self.send(w.key, [P.header(P.SHARE, 0, c.setup), *frames])

    def _on_cancel(self, key: bytes, peer: Peer, msg: P.Message) -> None:
        """The owner no longer wants these tasks: forget them wherever they are (arg: stop them running)."""
        if msg.arg:  # ex.cancel() of running tasks and what they submitted, or CONFIRM: answer each
            return self.supervisor.on_cancel(key, [e[0] for e in msg.entries], msg.arg)
        self.cancel_on_workers(self.ledger.cancel(key, [e[0] for e in msg.entries]))

    def _on_return(self, key: bytes, w: WorkerState, msg: P.Message) -> None:
        """A worker is starting a task that may run long: it hands back what it has not started."""
        self.ledger.take_back(w, [e[0] for e in msg.entries], msg.arg == 1)

    def _on_credit(self, key: bytes, w: WorkerState, msg: P.Message) -> None:
        self.ledger.grant(w, msg.arg)

    def _on_result(self, key: bytes, w: WorkerState, msg: P.Message) -> None:
        ledger = self.ledger
        self.supervisor.note_results(msg)
        done: list[Task] | None = None if self.trace is None else []  # (the tasks finished, for the timeline)
        _, others = ledger.finish(w, msg.parts(), self._out, done)  # (the results: into this turn's batches)
        for other, btid in others:
            self.send(other, [P.pack(P.CANCEL, [(btid,)])])
        ledger.completed += msg.count
        ledger.grant(w, msg.arg)
        if self.trace is not None:  # (last: a recorder's failure costs no cancel and no credit)
            self.trace.on_finished(w, msg.entries, msg.frames, done or [])

    def _on_output(self, key: bytes, w: WorkerState, msg: P.Message) -> None:
        """OUTPUT / LOG: to the client whose task printed or logged (the broker's own stdout if none)."""
        ledger = self.ledger
        routes = ledger.route_output(msg.each())
        for origin, items in routes.items():
            if origin is not None and origin in ledger.clients:
                self.send(origin, [P.pack(msg.kind, [ent for ent, _ in items]), *[f for _, f in items]])
            elif msg.kind == P.OUTPUT:
                for ent, frame in items:
                    if not write_nowait(sys.stderr if ent[1] == 2 else sys.stdout, P.as_bytes(frame)):
                        ledger.dropped["output nobody reads"] += 1

    def break_client(self, c: ClientState, kind: str, message: str) -> None:
        """The client's pool cannot run its tasks any more: say why, drop what serves it."""
        cancels, orphans = self.ledger.break_client(c)
        self.send(c.key, [P.header(P.BROKEN), P.dump_json({"kind": kind, "message": message})])
        self.cancel_on_workers(cancels)
        for task in orphans:  # a worker's sub-task: its parked parent is told
            self.result(task.owner, task.tid, P.CANCELLED, [])

    def _on_bye(self, key: bytes, peer: Peer | None, msg: P.Message) -> None:
        ledger = self.ledger
        if isinstance(peer, WorkerState):
            self.router.forget(key)
            self.cancel_on_workers(ledger.leave(peer))
            self.supervisor.expect_exit(peer.tag)
        elif isinstance(peer, ClientState):
            self.router.forget(key)
            self.cancel_on_workers(ledger.remove_client(key)[1])
        ledger.observers.discard(key)

    def _on_status(self, key: bytes, peer: Peer | None, msg: P.Message) -> None:
        self.send(key, [P.header(P.STATUS_REPLY), P.dump_json(self.status())])

    # ------------------------------------------------------------- dispatch
    def drop_unstarted(self, key: bytes = LOCAL) -> None:
        """A client leaves after an error: drop its tasks that no worker holds, now and later
        (answered CANCELLED; see Ledger.drop_unstarted).  Only in the loop's thread."""
        c = self.ledger.clients.get(key)
        if c is not None:
            for task in self.ledger.drop_unstarted(c):
                self.result(task.owner, task.tid, P.CANCELLED, [])

    def _dispatch(self) -> None:
        ledger = self.ledger
        if ledger.closing:
            for task in ledger.drop_closing():
                self.result(task.owner, task.tid, P.CANCELLED, [])
        for w, batch in scheduling.dispatch(ledger, self._claim):
            self._send_tasks(w, batch)
        if ledger.queue:
            starting = self.watcher.starting() if self.watcher is not None else 0
            if starting:
                scheduling.mark_running(ledger, starting, self._claim)
        elif ledger.ready or ledger.closing:
            for w in scheduling.recall(ledger, time.monotonic()):
                self.send(w.key, [P.header(P.RECALL)])
        if self._started:
            started, self._started = self._started, {}
            for owner, ids in started.items():
                self.send(owner, [P.pack(P.STARTED, ids)])

    def _claim(self, tasks: list[Task]) -> Collection[Task]:
        """The owners learn the tasks run (STARTED); an in-process client is asked at once
        (InProcessPort.claim).  Returns the tasks it no longer wants (scheduling.Claim)."""
        unwanted: Collection[Task] = ()
        if self.local is not None:
            tasks, unwanted = self.local.claim(tasks)
        for task in tasks:
            if task.owner in self.ledger.clients:
                self._started.setdefault(task.owner, []).append((task.tid,))
        return unwanted

    def _send_tasks(self, w: WorkerState, batch: list[Task]) -> None:
        for c in self.ledger.new_setups(w, batch):  # before its first task there: SETUP, SHAREs
            self.send(w.key, [P.header(P.SETUP, 0, c.setup), *c.setup_frames])
            for shared in c.shares.values():
                self.send(w.key, [P.header(P.SHARE, 0, c.setup), *shared])
        frames: list[Any] = [b""]
        sent: list[tuple[int, int]] | None = None if self.trace is None else []  # (its large frames)
        flat = task_entries(batch, frames, w, sent)
        frames[0] = P.pack_flat(P.TASKS, len(batch), flat)
        if self.trace is not None:
            self.trace.on_dispatch(w, batch, flat, frames[0], sent)
        self.send(w.key, frames)

    # ----------------------------------------------------------------- send
    def send(self, key: bytes, frames: Sequence[Any]) -> None:
        """Send a message to a peer, through its port."""
        if key in self.links.links:
            needs_loop = self.links.send(key, frames)
        elif key == LOCAL and self.local is not None:
            needs_loop = self.local.send(key, frames)
        else:
            needs_loop = self.router.send(key, frames)
        if needs_loop:
            self._wake_needed += 1

    def result(self, owner: bytes, tid: int, status: int, body: Sequence[Any]) -> None:
        """A result for ``owner``: sent in its RESULTS batch at the end of this turn."""
        self._out.setdefault(owner, []).append((tid, status, body))

    def cancel_on_workers(self, cancels: dict[bytes, list[tuple[int]]]) -> None:
        """CANCEL, to each worker, the tasks the ledger dropped that it holds."""
        for wkey, ids in cancels.items():
            self.send(wkey, [P.pack(P.CANCEL, ids)])

    def _flush(self) -> None:
        if self._out:
            out, self._out = self._out, {}
            for owner, items in out.items():
                self._send_results(owner, items)
        if self.router.backlog:
            self.router.retry_backlog(self.ledger.known)

    def _send_results(self, owner: bytes, items: list[tuple[int, int, Sequence[Any]]]) -> None:
        if owner == LOCAL and self.local is not None:
            self.local.results(items)  # no message: see InProcessPort.results
            return
        frames: list[Any] = [P.pack(P.RESULTS, [(tid, status, len(body)) for tid, status, body in items])]
        for _, _, body in items:
            frames.extend(body)
        self.send(owner, frames)

    def _tick(self, now: float) -> None:
        self.links.settle(now)  # (and the process's large receive buffers)
        fnframes.expire(now)  # (frames a client in this process marked lately)
        self.router.reprobe(self.ledger.known)
        led, links = self.ledger, self.links.links  # (the router's peers: not on a link, not LOCAL)
        self.router.sweep(k for k in chain(led.workers, led.clients, led.observers) if k not in links and k)
        if now >= self._next_state_check and (self.links.links or self.watcher is not None):
            self._next_state_check = now + min(self.heartbeat, self.heartbeat_timeout / 4)
            workers = self.ledger.workers
            self.links.check_stopped(now, lambda k: workers[k].info.get("pid") if k in workers else None)
            if self.watcher is not None and not self._stopping:
                # Workers still starting have said nothing yet: look at their processes.
                for why in self.watcher.check_starting(self.heartbeat_timeout):
                    log.warning("%s", why)
        self.supervisor.reap()
        self.ledger.measure_rate(now)
        self.trim.tick(now, led.completed + len(led.tasks))  # memory.py: a burst's input given back

    # --------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """The pool at this moment, as JSON-ready data (see status.PoolStatus for the fields).

        Only call it in the broker's thread (or when the loop is not running):
        STATUS messages and ScoopExecutor.status() arrange that.
        """
        return _status(self)


def _moving(b: Broker) -> bool:
    """Whether the next tick comes soon (TICK): workers start or are to be started again, peers
    whose connection closed are probed, messages wait for a slow peer, or the loop stops."""
    w = b.watcher
    return bool(
        b.router.probing or b.router.backlog or b.supervisor.retry or b.stopping
        or (w is not None and w.starting())
    )  # fmt: skip


def _welcome(b: Broker, key: bytes, extra: dict[str, Any]) -> dict[str, Any]:
    """WELCOME's JSON: the pool, the peer's id, the settings a peer follows."""
    return {
        "pool": b.pool_id,
        "id": key.hex(),
        "version": P.VERSION,
        "heartbeat": b.heartbeat,
        "heartbeat_timeout": b.heartbeat_timeout,
        "max_message_size": b.max_message_size,
        "host": b.host,
        **extra,
    }


def _status(b: Broker) -> dict[str, Any]:
    now = time.time()
    auth = b.router.auth
    return {
        "pool": b.pool_id,
        "endpoint": b.endpoint,
        "host": b.host,
        "pid": os.getpid(),
        "protocol": P.VERSION,
        "uptime": round(now - b.started, 3),
        "tasks_per_second": round(b.ledger.rate(now - b.started), 1),
        "endpoints": [{"endpoint": e, "curve": sec} for e, sec in b.router.endpoints],
        "refused_keys": auth.refused if auth is not None else 0,
        "trace": b.trace.path if b.trace is not None else None,
        "starting": b.watcher.starting() if b.watcher is not None else 0,
        "jobs": b.watcher.jobs() if b.watcher is not None else [],
        **b.ledger.snapshot(),
    }
