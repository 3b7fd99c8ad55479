"""The broker: one class, one poll loop.

::

   submitters (clients, and workers running tasks that submit)
        |  SUBMIT (batches)                     ^  RESULTS / STARTED / OUTPUT
        v                                       |
   +--------------------------- Broker ---------------------------+
   | tasks: broker id -> Task (owner, owner's id, frames, attempt) |
   | queue: deque of broker ids waiting for a worker               |
   | workers: routing id -> credit, assigned ids, set-ups seen      |
   +---------------------------------------------------------------+
        |  SETUP, TASKS (up to the worker's credit)      ^  RESULT + CREDIT
        v                                                |
   workers (hub greenlet + one greenlet per running task)

The broker never unpickles: it reads the fixed headers of protocol.py and
moves payload frames (zmq.Frame, received without copying) from submitter to
worker and back.  It keeps each task's frames until the result arrives, so
that the task can be sent again when its worker is lost, and it forgets a task
the moment its result is handed on: a second result for the same id (a late
answer from a worker given up for lost) finds nothing and is dropped.

Inside a client (the default) the broker runs in a thread and that client is
an in-process peer: its submissions arrive through a deque plus a wake-up
pipe, and its results are delivered by direct calls that resolve the futures,
so that no extra socket hop or thread hand-off lies on the round trip.

One ROUTER socket may listen on several endpoints: a private ipc socket (for
standalone workers of this machine, and status queries), and TCP endpoints
secured with CURVE for other hosts (security.py).  The ZAP handler that checks
CURVE peers' keys is one more socket in the same poll loop.  The workers that
an embedded broker starts itself are not on the ROUTER: each has one end of a
socketpair (link.py), polled in the same loop, and the submitting thread may
dispatch its own task while the loop sleeps (dispatch_local_now), so that a
round trip crosses no ZeroMQ I/O thread and one thread hand-off fewer.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import logging
import math
import os
import secrets
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import zmq
from zmq.utils.monitor import parse_monitor_message

from . import protocol as P
from .errors import ProtocolError
from .link import POOL, PUSH_WAIT, Link, WakePipe, process_state
from .security import MONITOR_EVENTS, Authenticator, KeyPair, is_loopback

if TYPE_CHECKING:
    from .trace import TraceRecorder

log = logging.getLogger("scoopexec.broker")

LOCAL = b""  # the peer key of the in-process client
SEND_HWM = 100_000
POLLIN = int(zmq.POLLIN)  # a plain int: cheaper than the enum
RECALL_EVERY = 0.005  # s between looks for idle workers while others hold unstarted tasks
LINK_CLOSED = "its connection closed"  # why a local worker on a link is lost when it closes it


class LocalClient(Protocol):
    """What an in-process client offers the broker (see executor._LocalLink)."""

    outbox: collections.deque[tuple[int, list[Any]]]
    shares: collections.deque[list[Any]]
    outcomes: collections.deque[Any]  # what resolve() will hand to user code, outside `lock`
    wake_fd: int

    def setup_frames(self) -> list[bytes]: ...
    def started(self, tid: int) -> bool: ...
    def deliver(self, tid: int, status: int, frames: Sequence[Any]) -> None: ...
    def output(self, stream: int, text: bytes) -> None: ...
    def log_record(self, record: bytes) -> None: ...
    def broken(self, kind: str, message: str) -> None: ...
    def drain_wake(self) -> None: ...
    def dispatched(self) -> None: ...
    def resolve(self) -> None: ...  # set futures' results, run output/log handlers: no lock held


class ProcessWatcher(Protocol):
    """Local worker processes the broker should watch and replace (launch.LocalWorkers)."""

    def reap(self) -> list[tuple[str, int, int]]: ...  # (tag, pid, returncode)
    def mark_hello(self, tag: str) -> None: ...
    def owns_process(self, tag: str) -> bool: ...  # a local process it can reap
    def starting(self) -> int: ...
    def check_starting(self, stopped_limit: float) -> list[str]: ...  # kills the stuck; says why
    def kill(self, tag: str) -> None: ...
    def replace(self, tag: str) -> bool: ...
    def own_exit(self, tag: str) -> bool: ...  # it ended for a reason of its own (contract.py)
    def describe_exit(self, tag: str, returncode: int) -> str: ...


class Task:
    __slots__ = (
        "attempts",
        "btid",
        "frames",
        "losses",
        "marked",
        "origin",
        "owner",
        "parent",
        "prev",
        "setup",
        "submitted",
        "tid",
        "worker",
    )

    def __init__(
        self,
        btid: int,
        owner: bytes,
        tid: int,
        parent: int,
        origin: bytes | None,
        setup: int,
        frames: list[Any],
    ) -> None:
        self.btid = btid
        self.owner = owner
        self.tid = tid
        self.parent = parent
        self.origin = origin
        self.setup = setup
        self.frames = frames
        self.attempts = 0
        self.worker: bytes | None = None
        self.submitted = time.time()
        self.losses: list[str] = []
        self.marked = False  # its owner was told it is running
        self.prev: tuple[bytes, ...] = ()  # workers it was lost with (their late result is accepted)


class Peer:
    __slots__ = ("backlog", "fd", "info", "joined", "key", "role")

    def __init__(self, key: bytes, role: str, info: dict[str, Any], fd: int) -> None:
        self.key = key
        self.role = role
        self.info = info
        self.fd = fd
        self.joined = time.time()
        self.backlog: collections.deque[list[Any]] = collections.deque()


class WorkerPeer(Peer):
    __slots__ = (
        "assigned", "busy_since", "credit", "done", "in_ready", "last_seen", "name", "recall_mark",
        "recalled", "sent", "setups", "tag",
    )  # fmt: skip

    def __init__(self, key: bytes, info: dict[str, Any], fd: int) -> None:
        super().__init__(key, P.WORKER, info, fd)
        self.credit = 0
        self.in_ready = False  # in Broker.ready (once: a second entry would jump the queue)
        self.assigned: set[int] = set()
        self.setups: set[int] = set()
        self.done = 0
        self.sent = 0  # tasks sent to it (a new one may wait there unstarted)
        self.last_seen = time.time()
        self.recalled = 0.0  # monotonic time of the last RECALL sent to it
        self.recall_mark = (-1, -1)  # (sent, done) when that RECALL went out
        self.tag = str(info.get("tag") or "")
        self.name = str(info.get("name") or key.hex())


class ClientPeer(Peer):
    __slots__ = ("broken", "closing", "setup", "setup_frames", "shares")

    def __init__(self, key: bytes, info: dict[str, Any], fd: int, setup: int, frames: list[Any]):
        super().__init__(key, P.CLIENT, info, fd)
        self.setup = setup
        self.setup_frames = frames
        self.broken = False
        self.closing = False  # leaving after an error: what no worker has started is dropped
        self.shares: list[list[Any]] = []  # values shared with every worker, in order


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
        max_message_size: int = -1,
        pool_id: str | None = None,
        curve: KeyPair | None = None,
    ) -> None:
        self.ctx = context or zmq.Context.instance()
        self.pool_id = pool_id or secrets.token_hex(8)
        self.local = local
        self.watcher = watcher
        self.heartbeat = heartbeat
        self.heartbeat_timeout = heartbeat_timeout
        self.max_retries = max_retries
        self.host = socket.gethostname()

        r = self.router = self.ctx.socket(zmq.ROUTER)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        r.setsockopt(zmq.LINGER, 0)
        r.setsockopt(zmq.SNDHWM, SEND_HWM)
        r.setsockopt(zmq.RCVHWM, SEND_HWM)
        r.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat * 1000))
        r.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(heartbeat_timeout * 1000))
        r.setsockopt(zmq.HEARTBEAT_TTL, int(heartbeat_timeout * 1000))
        if max_message_size > 0:
            # Peers check sizes themselves and fail the one task; this is the
            # hard guard against a peer that does not (it gets disconnected).
            r.setsockopt(zmq.MAXMSGSIZE, max_message_size + (1 << 20))
        self.curve = curve
        self.auth: Authenticator | None = None
        self.endpoints: list[tuple[str, bool]] = []  # (endpoint, secured with CURVE)
        self.endpoint: str = self.add_endpoint(bind, secure=curve is not None and bind.startswith("tcp://"))
        self.monitor = r.get_monitor_socket(zmq.EVENT_DISCONNECTED | MONITOR_EVENTS)
        self._calls: collections.deque[tuple[Callable[[], Any], cf.Future[Any]]] = collections.deque()

        self.tasks: dict[int, Task] = {}
        self.queue: collections.deque[int] = collections.deque()
        self.by_owner: dict[tuple[bytes, int], int] = {}  # remote owners only (for CANCEL)
        self.workers: dict[bytes, WorkerPeer] = {}
        self.clients: dict[bytes, ClientPeer] = {}
        self.observers: set[bytes] = set()
        self.fds: dict[int, bytes] = {}
        self.ready: collections.deque[WorkerPeer] = collections.deque()
        self._next_btid = 1
        self._next_setup = 1
        self.setups: dict[int, ClientPeer] = {}
        self.dropped: collections.Counter[str] = collections.Counter()
        self.completed = 0
        self._rate = 0.0
        self._rate_t = time.monotonic()
        self._rate_n = 0
        self._stopping = False
        self._wakeup = WakePipe()  # stop(), call_soon() and add_link() from other threads
        self.turns = 0  # turns of the loop: an owner waiting on it can tell a stuck thread
        self._out: dict[bytes, list[tuple[tuple[Any, ...], list[Any]]]] = {}
        self._backlogged: set[bytes] = set()
        self._recent_losses: collections.deque[str] = collections.deque(maxlen=50)
        self._poller: select.poll | None = None
        self._router_fd = self._monitor_fd = -1
        self._local_wake_fd = -3  # the in-process client's WakePipe, once polled
        self._zmq_dirty = True  # the ZeroMQ sockets were used since their EVENTS were last read
        # Held by the loop except while it waits in poll: the in-process client's
        # thread may then dispatch its own submissions itself (dispatch_local_now).
        self.lock = threading.Lock()
        self._wake_needed = 0  # counts sends that the sleeping loop must be told about
        self._poll_auth: Authenticator | None = None
        self._next_tick = time.monotonic()
        self._next_recall = 0.0
        self._closing = False  # some client is leaving after an error (drop_unstarted)
        self.max_message_size = max_message_size
        self._suspects: dict[bytes, tuple[float, str]] = {}  # peers whose connection closed
        # Local workers on socketpairs (link.py): key -> link, fd -> key.
        self.links: dict[bytes, Link] = {}
        self._link_fds: dict[int, bytes] = {}
        self._new_links: collections.deque[tuple[bytes, Link]] = collections.deque()
        self._dead_links: list[bytes] = []
        self._stopped: dict[bytes, float] = {}  # link workers seen stopped (SIGSTOP), since when
        self._next_state_check = 0.0
        self.started = time.time()
        self.trace: TraceRecorder | None = None  # set by the owner to record a timeline (trace.py)

        if local is not None:
            self._add_client(LOCAL, {"role": P.CLIENT, "local": True}, -1, local.setup_frames())

    # ------------------------------------------------------------- endpoints
    def add_endpoint(self, endpoint: str, *, secure: bool) -> str:
        """Listen on one more endpoint; return it as bound (the port filled in).

        ``secure`` endpoints use CURVE, and only peers whose public key was
        given to :meth:`allow` get in.  Call it before :meth:`run` or, once the
        loop runs, through :meth:`call_soon`.
        """
        r = self.router
        if secure:
            if self.curve is None:
                self.curve = KeyPair.new()
            if self.auth is None:
                self.auth = Authenticator(self.ctx)  # before the listener exists
            r.setsockopt(zmq.CURVE_SERVER, 1)
            r.setsockopt(zmq.CURVE_SECRETKEY, self.curve.secret)
        elif not is_loopback(endpoint):
            raise ValueError(f"refusing to listen on {endpoint!r} without CURVE security")
        else:
            r.setsockopt(zmq.CURVE_SERVER, 0)
        try:
            r.bind(endpoint)
            self._zmq_dirty = True
        finally:
            r.setsockopt(zmq.CURVE_SERVER, 0)  # later listeners choose again
        bound = str(r.getsockopt_string(zmq.LAST_ENDPOINT))
        self.endpoints.append((bound, secure))
        return bound

    def add_link(self, sock: socket.socket) -> bytes:
        """Serve a local worker on one end of a socketpair (thread-safe); returns its key."""
        key = b"W" + os.urandom(11)
        self._new_links.append((key, Link(sock)))
        self._wakeup.wake()  # the loop registers it
        return key

    def _register_links(self, poller: select.poll) -> None:
        while self._new_links:
            key, link = self._new_links.popleft()
            self.links[key] = link
            self._link_fds[link.fd] = key
            poller.register(link.fd, select.POLLIN)

    def _on_link(self, key: bytes, events: int) -> None:
        link = self.links.get(key)
        if link is None:
            return
        if events & select.POLLOUT:
            try:
                done = link.flush(PUSH_WAIT)
            except OSError:
                done, link.eof = True, True
            if done and self._poller is not None:
                self._poller.modify(link.fd, select.POLLIN)
        if events & (select.POLLIN | select.POLLERR | select.POLLHUP) or link.eof:
            try:
                msgs = link.receive(2000)
            except ProtocolError as exc:
                msgs, link.eof = [], True
                self.dropped["malformed"] += 1
                log.warning("closed the link to a local worker: %s", exc)
            for frames in msgs:
                self._take(key, None, frames)
            if link.eof:
                self._close_link(key, LINK_CLOSED)

    def _close_link(self, key: bytes, why: str) -> None:
        link = self.links.pop(key, None)
        if link is None:
            return
        self._link_fds.pop(link.fd, None)
        self._stopped.pop(key, None)
        if self._poller is not None:
            try:
                self._poller.unregister(link.fd)
            except KeyError:
                pass
        link.close()
        self._peer_gone(key, why)

    def _check_stopped(self, now: float) -> None:
        """Local workers on links have no ZeroMQ heartbeat: look at their process state.

        A process stopped (SIGSTOP, a debugger) for heartbeat_timeout is lost, as
        an unanswered heartbeat would make it.  A task holding the GIL is not.
        """
        for key in list(self.links):
            w = self.workers.get(key)
            pid = w.info.get("pid") if w is not None else None
            if not isinstance(pid, int):
                continue
            state = process_state(pid)
            if state is None:
                continue
            if state not in (b"T", b"t"):
                self._stopped.pop(key, None)
                continue
            since = self._stopped.setdefault(key, now)
            if now - since >= self.heartbeat_timeout:
                self._close_link(key, f"its process was stopped for {now - since:.1f} s")

    def allow(self, public: bytes) -> None:
        """Accept CURVE peers with this public key (thread-safe)."""
        if self.auth is None:
            raise RuntimeError("this broker has no secured endpoint")
        self.auth.allow(public)

    def revoke(self, public: bytes) -> None:
        """Refuse new connections with this public key (thread-safe)."""
        if self.auth is not None:
            self.auth.revoke(public)

    def call_soon(self, fn: Callable[[], Any]) -> cf.Future[Any]:
        """Run ``fn`` in the broker's loop (sockets are not thread-safe); thread-safe."""
        fut: cf.Future[Any] = cf.Future()
        self._calls.append((fn, fut))
        self._wakeup.wake()
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
            self._close()

    def step(self, timeout: float | None = None) -> None:
        """One turn of the loop: wait for input (at most ``timeout`` s), handle it, dispatch, send.

        The in-process client's futures are resolved (and its output written)
        with `lock` released, as soon as the input is taken in: their
        done-callbacks are user code, which may submit, ask for status or shut
        the pool down.
        """
        lock = self.lock
        local = self.local
        self.turns += 1
        with lock:
            poller, ms, take_router, take_monitor, take_auth = self._before_poll(timeout)
        ready = poller.poll(ms)
        with lock:
            self._take_input(ready, take_router, take_monitor, take_auth)
        if local is not None and local.outcomes:
            local.resolve()
        with lock:
            self._after_input()
        if local is not None and local.outcomes:
            local.resolve()

    def _before_poll(self, timeout: float | None) -> tuple[select.poll, int, bool, bool, bool]:
        poller = self._poller
        if poller is None:
            # select.poll over the ZeroMQ sockets' FDs, not zmq.Poller: zmq_poll asks each
            # socket for its EVENTS around every wait (syscalls each), which only matter here
            # after something happened on that socket (see `_zmq_dirty`).
            poller = self._poller = select.poll()
            self._router_fd = int(self.router.getsockopt(zmq.FD))
            self._monitor_fd = int(self.monitor.getsockopt(zmq.FD))
            poller.register(self._router_fd, select.POLLIN)
            poller.register(self._monitor_fd, select.POLLIN)
            poller.register(self._wakeup.fd, select.POLLIN)
            if self.local is not None:
                self._local_wake_fd = self.local.wake_fd
                poller.register(self._local_wake_fd, select.POLLIN)
            self._zmq_dirty = True
        if self._new_links:
            self._register_links(poller)
        auth = self.auth
        if auth is not None and auth is not self._poll_auth:
            self._poll_auth = auth
            poller.register(int(auth.socket.getsockopt(zmq.FD)), select.POLLIN)
        if timeout is not None:
            ms = int(timeout * 1000)
        elif self._backlogged:
            ms = 50
        else:
            # Round up: rounding down spins through the last millisecond before a tick.
            ms = max(0, math.ceil((self._next_tick - time.monotonic()) * 1000))
        # A ZeroMQ socket's FD signals only changes: input that was already there when
        # we last used the socket must be asked for (EVENTS) before sleeping.
        take_router = take_monitor = take_auth = False
        if self._zmq_dirty:
            self._zmq_dirty = False
            take_router = bool(self.router.getsockopt(zmq.EVENTS) & POLLIN)
            take_monitor = bool(self.monitor.getsockopt(zmq.EVENTS) & POLLIN)
        if auth is not None:
            take_auth = bool(auth.socket.getsockopt(zmq.EVENTS) & POLLIN)
        if take_router or take_monitor or take_auth:
            ms = 0
        return poller, ms, take_router, take_monitor, take_auth

    def _take_input(
        self, ready: list[tuple[int, int]], take_router: bool, take_monitor: bool, take_auth: bool
    ) -> None:
        auth = self.auth
        auth_fd = int(auth.socket.getsockopt(zmq.FD)) if auth is not None else -2
        local = self.local
        for fd, events in ready:
            if fd == self._router_fd:
                take_router = True
            elif fd == self._monitor_fd:
                take_monitor = True
            elif fd == auth_fd:
                take_auth = True
            elif fd == self._local_wake_fd and local is not None:
                local.drain_wake()  # before _drain_local() looks at the outbox
            elif fd == self._wakeup.fd:
                self._wakeup.drain()
                if self._new_links and self._poller is not None:
                    self._register_links(self._poller)
            else:
                key = self._link_fds.get(fd)
                if key is not None:
                    self._on_link(key, events)
        if take_router:
            self._drain_router()
        if take_monitor:
            self._drain_monitor()
        if take_auth and auth is not None:
            auth.handle()

    def _after_input(self) -> None:
        local = self.local
        if self._calls:
            self._run_calls()
        if local is not None:
            self._drain_local()
        self._dispatch()
        self._flush()
        while self._dead_links:
            self._close_link(self._dead_links.pop(), LINK_CLOSED)
        if local is not None:
            local.dispatched()
        now = time.monotonic()
        if now >= self._next_tick:
            self._next_tick = now + 0.05
            self._tick()

    def dispatch_local_now(self) -> bool:
        """Dispatch the in-process client's new tasks from its own thread, if the loop sleeps.

        Saves the round trip's first thread hand-off (wake the loop, which then
        sends).  Holding `lock` while the loop waits in poll is safe for every
        socket: the loop uses none of them then.  False means nothing was done,
        or something was that the loop must be woken for.
        """
        lock = self.lock
        if not lock.acquire(False):
            return False
        try:
            if self._stopping or self.router.closed or self.local is None:
                return False
            before = self._wake_needed
            self._drain_local()
            self._dispatch()
            self.local.dispatched()
            # Outcomes (a task found cancelled or lost) are the loop's to resolve, outside `lock`.
            return (
                self._wake_needed == before
                and not self._dead_links
                and not self._backlogged
                and not self.local.outcomes
            )
        finally:
            lock.release()

    def stop(self) -> None:
        """Ask the loop to end (thread-safe)."""
        self._stopping = True
        self._wakeup.wake()

    def _close(self) -> None:
        for w in list(self.workers.values()):
            self._send(w.key, [P.header(P.STOP)])
        for key in [k for k in self.links if k not in self.workers]:
            self._send(key, [P.header(P.STOP)])  # still starting: it reads this first
        for link in self.links.values():
            link.close(drain=0.5)
        self.links.clear()
        self.close()

    def close(self) -> None:
        """Release the sockets (run() does this when it ends)."""
        if self.router.closed:
            return
        # Stop the monitor while its socket can still take the MONITOR_STOPPED
        # event: disabling it after closing that socket can block forever.
        try:
            self.router.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.router.close(linger=200)
        if self.auth is not None:
            self.auth.close()
        while self._calls:
            _, fut = self._calls.popleft()
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("the broker stopped"))
        self._wakeup.close()

    # --------------------------------------------------------------- receive
    def _drain_router(self) -> None:
        r = self.router
        events, pollin = zmq.EVENTS, POLLIN
        self._zmq_dirty = True  # unless the loop below ends on EVENTS saying there is no more
        for _ in range(2000):
            # Asking for EVENTS is cheaper than a recv that raises zmq.Again.
            if not r.getsockopt(events) & pollin:
                self._zmq_dirty = False
                return
            ident = r.recv(copy=False)
            frames = []
            more = ident.more
            while more:
                f = r.recv(copy=False)
                frames.append(f)
                more = f.more
            key = ident.bytes
            if not frames:
                self.dropped["empty"] += 1
                continue
            self._take(key, ident, frames)

    def _take(self, key: bytes, ident: zmq.Frame | None, frames: list[Any]) -> None:
        """Handle one message; a bad one is dropped, counted, and answered where that helps."""
        try:
            self._handle(key, ident, frames)
        except P.VersionMismatch as exc:
            self.dropped["version"] += 1
            self._send(key, [P.header(P.ERROR), str(exc).encode()])
        except ProtocolError as exc:
            self.dropped["malformed"] += 1
            log.debug("dropped a malformed message from %r: %s", key, exc)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            self.dropped["malformed"] += 1
            log.debug("dropped a message from %r: %r", key, exc)

    def _handle(self, key: bytes, ident: zmq.Frame | None, frames: list[Any]) -> None:
        head = frames[0].bytes
        mtype, count, arg = P.unpack_header(head)
        w = self.workers.get(key)
        if w is not None:
            w.last_seen = time.time()
        if mtype == P.RESULT:
            if w is None:
                return self._unknown(key)
            self._on_results(w, head, count, frames, arg)
        elif mtype == P.SUBMIT:
            owner = self.clients.get(key) or w
            if owner is None:
                return self._unknown(key)
            self._on_submit(key, owner, head, count, frames)
        elif mtype == P.CREDIT:
            if w is None:
                return self._unknown(key)
            self._grant(w, arg)
        elif mtype == P.RETURN:
            if w is None:
                return self._unknown(key)
            self._on_return(w, [e[0] for e in P.entries(mtype, head)])
        elif mtype == P.CANCEL:
            if key not in self.clients and w is None:
                return self._unknown(key)
            self._on_cancel(key, [e[0] for e in P.entries(mtype, head)])
        elif mtype in (P.OUTPUT, P.LOG):
            if w is None:
                return self._unknown(key)
            self._on_output(mtype, head, count, frames)
        elif mtype == P.HELLO:
            if len(frames) < 2:
                raise ProtocolError("HELLO without its JSON frame")
            info = P.load_json(frames[1].bytes)
            if not isinstance(info, dict):
                raise ProtocolError("HELLO's JSON is not an object")
            fd = self._srcfd(ident) if ident is not None else -1
            self._on_hello(key, info, fd, frames[2:])
        elif mtype == P.SETUP_DONE:
            if w is None:
                return self._unknown(key)
            self._on_setup_done(w, arg, bool(count), frames)
        elif mtype == P.SHARE:
            c = self.clients.get(key)
            if c is None:
                return self._unknown(key)
            if len(frames) < 3:
                raise ProtocolError("SHARE needs a name frame and a value frame")
            self._share(c, frames[1:])
        elif mtype == P.BYE:
            self._on_bye(key)
        elif mtype == P.STATUS:
            self._send(key, [P.header(P.STATUS_REPLY), P.dump_json(self.status())])
        else:
            raise ProtocolError(f"unexpected {P.TYPE_NAMES.get(mtype, mtype)} from a peer")

    def _unknown(self, key: bytes) -> None:
        self.dropped["unknown peer"] += 1
        self._send(key, [P.header(P.ERROR), b"unknown peer: send HELLO first"])

    @staticmethod
    def _srcfd(ident: zmq.Frame) -> int:
        try:
            return int(ident.get(zmq.SRCFD))
        except (zmq.ZMQError, AttributeError, TypeError):
            return -1

    def _drain_monitor(self) -> None:
        mon = self.monitor
        while mon.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            msg = mon.recv_multipart()
            try:
                event = parse_monitor_message(msg)
            except Exception:
                continue
            if event["event"] & MONITOR_EVENTS:
                self.dropped["failed handshake"] += 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                key = self.fds.pop(int(event["value"]), None)
                if key is not None:
                    self._probe(key, "its connection closed")

    def _probe(self, key: bytes, why: str, until: float | None = None) -> None:
        """A peer's connection closed: is the routing id still reachable?

        The ROUTER learns that a connection's pipe is gone a little after the
        monitor reports it, so a probe that gets through is tried again on
        the next ticks (until a new HELLO, or heartbeat_timeout): a remote
        worker has no process here whose exit would tell.
        """
        self._zmq_dirty = True
        self._wake_needed += 1
        try:
            self.router.send(key, zmq.SNDMORE | zmq.NOBLOCK)
            self.router.send(P.header(P.PING))
        except zmq.Again:
            return  # alive (a newer connection exists), just busy
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self._suspects.pop(key, None)
                self._peer_gone(key, why)
            return
        if until is None:
            until = time.monotonic() + self.heartbeat_timeout
        self._suspects[key] = (until, why)

    def _reprobe(self) -> None:
        now = time.monotonic()
        registered = set(self.fds.values())
        for key, (until, why) in list(self._suspects.items()):
            del self._suspects[key]
            if now > until or key in registered or (key not in self.workers and key not in self.clients):
                continue  # reconnected (it said HELLO again), still answering, or already gone
            self._probe(key, why, until)

    # ------------------------------------------------------------- handlers
    def _on_hello(self, key: bytes, info: dict[str, Any], fd: int, extra: list[zmq.Frame]) -> None:
        role = info.get("role")
        if fd >= 0:
            self.fds[fd] = key
        if role == P.WORKER:
            old = self.workers.get(key)
            if old is not None:
                held = set(int(x) for x in info.get("held", ()))
                self._resync(old, held)
                old.fd = fd
                old.info.update(info)
                self._welcome(key, {"resumed": True})
                return
            w = WorkerPeer(key, info, fd)
            self.workers[key] = w
            if w.tag and self.watcher is not None:
                self.watcher.mark_hello(w.tag)
            log.info("worker %s joined (pid %s on %s)", w.name, info.get("pid"), info.get("host"))
            self._welcome(key, {})
        elif role == P.CLIENT:
            if key in self.clients:
                self._welcome(key, {"setup": self.clients[key].setup})
                return
            c = self._add_client(key, info, fd, extra)
            self._welcome(key, {"setup": c.setup})
        elif role == P.OBSERVER:
            self.observers.add(key)
            self._welcome(key, {})
        else:
            raise ProtocolError(f"HELLO with unknown role {role!r}")

    def _welcome(self, key: bytes, extra: dict[str, Any]) -> None:
        body = {
            "pool": self.pool_id,
            "id": key.hex(),
            "version": P.VERSION,
            "heartbeat": self.heartbeat,
            "heartbeat_timeout": self.heartbeat_timeout,
            "max_message_size": self.max_message_size,
            "host": self.host,
            **extra,
        }
        self._send(key, [P.header(P.WELCOME), P.dump_json(body)])

    def _add_client(self, key: bytes, info: dict[str, Any], fd: int, frames: list[Any]) -> ClientPeer:
        sid = self._next_setup
        self._next_setup += 1
        c = ClientPeer(key, info, fd, sid, list(frames))
        self.clients[key] = c
        self.setups[sid] = c
        return c

    def _on_submit(
        self, key: bytes, owner: Peer, head: bytes, count: int, frames: list[zmq.Frame]
    ) -> None:
        ents = list(P.entries(P.SUBMIT, head))
        P.check_frames([e[2] for e in ents], len(frames) - 1)
        pos = 1
        is_worker = owner.role == P.WORKER
        for tid, parent, n in ents:
            if n < 2:
                raise ProtocolError("a task needs at least a function and an arguments frame")
            body = frames[pos : pos + n]
            pos += n
            if is_worker:
                ptask = self.tasks.get(parent)
                if ptask is not None:
                    origin, setup = ptask.origin, ptask.setup
                else:
                    origin, setup = None, 0
            else:
                c = owner  # type: ignore[assignment]
                origin, setup = key, c.setup  # type: ignore[attr-defined]
            self._new_task(key, tid, parent, origin, setup, body)

    def _share(self, c: ClientPeer, frames: list[Any]) -> None:
        """A value every worker of this client must have before its later tasks."""
        c.shares.append(frames)
        for w in self.workers.values():
            if c.setup in w.setups:
                self._send(w.key, [P.header(P.SHARE, 0, c.setup), *frames])

    def _drain_local(self) -> None:
        local = self.local
        assert local is not None
        while local.shares:
            self._share(self.clients[LOCAL], local.shares.popleft())
        outbox = local.outbox
        if outbox:
            setup = self.clients[LOCAL].setup
            new = self._new_task
            while outbox:
                tid, body = outbox.popleft()
                new(LOCAL, tid, 0, LOCAL, setup, body)

    def _new_task(
        self, owner: bytes, tid: int, parent: int, origin: bytes | None, setup: int, body: list[Any]
    ) -> None:
        c = self.clients.get(origin) if origin is not None else None
        if c is not None and (c.broken or c.closing):
            self._deliver_direct(owner, tid, P.CANCELLED, [])
            return
        btid = self._next_btid
        self._next_btid = btid + 1
        self.tasks[btid] = Task(btid, owner, tid, parent, origin, setup, body)
        if owner != LOCAL:
            self.by_owner[(owner, tid)] = btid
        self.queue.append(btid)

    def _on_cancel(self, owner: bytes, tids: list[int]) -> None:
        """The owner no longer wants these tasks: forget them wherever they are."""
        by_worker: dict[bytes, list[tuple[int]]] = {}
        for tid in tids:
            btid = self.by_owner.pop((owner, tid), None)
            if btid is None:
                continue
            task = self.tasks.pop(btid, None)
            if task is None:
                continue
            if task.worker is not None:
                w = self.workers.get(task.worker)
                if w is not None:
                    w.assigned.discard(btid)
                    by_worker.setdefault(w.key, []).append((btid,))
        for wkey, ids in by_worker.items():
            self._send(wkey, [P.pack(P.CANCEL, ids)])

    def _on_return(self, w: WorkerPeer, btids: list[int]) -> None:
        """A worker is starting a task that may run long: it hands back what it has not started."""
        w.credit = 0
        for btid in reversed(btids):
            task = self.tasks.get(btid)
            if task is not None and task.worker == w.key:
                task.worker = None
                w.assigned.discard(btid)
                self.queue.appendleft(btid)

    def _grant(self, w: WorkerPeer, credit: int) -> None:
        w.last_seen = time.time()
        if credit <= 0:
            return
        if not w.in_ready:
            w.in_ready = True
            self.ready.append(w)
        w.credit += credit

    def _on_results(
        self, w: WorkerPeer, head: bytes, count: int, frames: list[zmq.Frame], credit: int
    ) -> None:
        ents = list(P.entries(P.RESULT, head))
        P.check_frames([e[2] for e in ents], len(frames) - 1)
        pos = 1
        tasks = self.tasks
        local = self.local
        if self.trace is not None:
            self.trace.on_results(w, ents, frames, tasks)
        for btid, status, n, _t0, _trun in ents:
            body = frames[pos : pos + n]
            pos += n
            task = tasks.get(btid)
            w.assigned.discard(btid)
            if task is None:
                self.dropped["stale result"] += 1
                continue
            if task.worker != w.key and w.key not in task.prev:
                self.dropped["result from a worker that did not have the task"] += 1
                continue
            del tasks[btid]
            w.done += 1
            if task.worker is not None and task.worker != w.key:
                # A late answer from a worker we gave up on: first result wins;
                # the worker now holding the task may drop it.
                other = self.workers.get(task.worker)
                if other is not None:
                    other.assigned.discard(btid)
                    self._send(other.key, [P.pack(P.CANCEL, [(btid,)])])
            if task.owner == LOCAL:
                assert local is not None
                local.deliver(task.tid, status, body)
            else:
                self.by_owner.pop((task.owner, task.tid), None)
                self._queue_result(task.owner, (task.tid, status, n), body)
        self.completed += len(ents)
        self._grant(w, credit)

    def _queue_result(self, owner: bytes, entry: tuple[int, int, int], body: list[Any]) -> None:
        out = self._out.get(owner)
        if out is None:
            out = self._out[owner] = []
        out.append((entry, body))

    def _deliver_direct(self, owner: bytes, tid: int, status: int, body: list[Any]) -> None:
        if owner == LOCAL:
            if self.local is not None:
                self.local.deliver(tid, status, body)
        else:
            self.by_owner.pop((owner, tid), None)
            self._queue_result(owner, (tid, status, len(body)), body)

    def _on_output(self, mtype: int, head: bytes, count: int, frames: list[zmq.Frame]) -> None:
        ents = list(P.entries(mtype, head))
        if len(ents) != len(frames) - 1:
            raise ProtocolError("OUTPUT/LOG needs one frame per entry")
        routes: dict[bytes | None, list[tuple[tuple[Any, ...], zmq.Frame]]] = {}
        for ent, frame in zip(ents, frames[1:], strict=True):
            task = self.tasks.get(ent[0]) if ent[0] else None
            origin = task.origin if task is not None else self._default_origin()
            routes.setdefault(origin, []).append((ent, frame))
        for origin, items in routes.items():
            if origin == LOCAL and self.local is not None:
                for ent, frame in items:
                    if mtype == P.OUTPUT:
                        self.local.output(ent[1], frame.bytes)
                    else:
                        self.local.log_record(frame.bytes)
            elif origin is not None and origin in self.clients:
                head2 = P.pack(mtype, [ent for ent, _ in items])
                self._send(origin, [head2, *[f for _, f in items]])
            else:
                for ent, frame in items:
                    if mtype == P.OUTPUT:
                        stream = sys.stderr if ent[1] == 2 else sys.stdout
                        stream.write(frame.bytes.decode("utf-8", "replace"))
                        stream.flush()

    def _default_origin(self) -> bytes | None:
        if self.local is not None:
            return LOCAL
        if len(self.clients) == 1:
            return next(iter(self.clients))
        return None

    def _on_setup_done(self, w: WorkerPeer, sid: int, ok: bool, frames: list[zmq.Frame]) -> None:
        if ok:
            return
        c = self.setups.get(sid)
        text = frames[1].bytes.decode("utf-8", "replace") if len(frames) > 1 else "set-up failed"
        if c is None or c.broken:
            return
        main = len(frames) > 2 and frames[2].bytes == b"main"  # importing the client's script failed
        self._break_client(c, "main" if main else "initializer", text)

    def _break_client(self, c: ClientPeer, kind: str, message: str) -> None:
        c.broken = True
        if c.key == LOCAL and self.local is not None:
            self.local.broken(kind, message)
        else:
            self._send(c.key, [P.header(P.BROKEN), P.dump_json({"kind": kind, "message": message})])
        # Its queued tasks will never run: drop them (the client fails its futures itself).
        for btid in [b for b, t in self.tasks.items() if t.origin == c.key]:
            task = self.tasks.pop(btid)
            if task.worker is not None:
                ww = self.workers.get(task.worker)
                if ww is not None:
                    ww.assigned.discard(btid)
                    self._send(ww.key, [P.pack(P.CANCEL, [(btid,)])])
            if task.owner != c.key:
                self._deliver_direct(task.owner, task.tid, P.CANCELLED, [])

    def _on_bye(self, key: bytes) -> None:
        if key in self.workers:
            w = self.workers.pop(key)
            self._forget_fd(key)
            for btid in list(w.assigned):
                task = self.tasks.get(btid)
                if task is not None and task.worker == key:
                    task.worker = None
                    self.queue.appendleft(btid)
            self._drop_owned_by(key)
        elif key in self.clients:
            c = self.clients.pop(key)
            self._forget_fd(key)
            self._client_gone(c)
        self.observers.discard(key)

    def _forget_fd(self, key: bytes) -> None:
        for fd, k in list(self.fds.items()):
            if k == key:
                del self.fds[fd]

    # ------------------------------------------------------------- dispatch
    def _mark_running(self) -> None:
        """Tell owners that the tasks next in line are running.

        Like ProcessPoolExecutor's call queue: as many tasks as there are idle
        or still-starting workers count as running (and can no longer be
        cancelled) even before a worker has them, so that a pool that is still
        starting up behaves like one that has started.
        """
        free = sum(1 for w in self.workers.values() if not w.assigned)
        if self.watcher is not None:
            free += self.watcher.starting()
        if free <= 0:
            return
        started: dict[bytes, list[tuple[int]]] = {}
        local = self.local
        for btid in list(itertools.islice(self.queue, 0, free + 16)):
            if free <= 0:
                break
            task = self.tasks.get(btid)
            if task is None or task.worker is not None:
                continue
            free -= 1
            if task.marked or task.attempts:
                continue
            if task.owner == LOCAL:
                assert local is not None
                if not local.started(task.tid):
                    del self.tasks[btid]
                    free += 1
                    continue
            elif task.owner in self.clients:
                started.setdefault(task.owner, []).append((task.tid,))
            task.marked = True
        for owner, ids in started.items():
            self._send(owner, [P.pack(P.STARTED, ids)])

    def drop_unstarted(self, key: bytes = LOCAL) -> None:
        """A client leaves after an error: drop its tasks that no worker holds, now and later.

        Each is answered CANCELLED (to the client, or to the worker whose task
        submitted it).  Workers are asked (RECALL) for what they hold unstarted;
        what they hand back is dropped too, as are new sub-tasks.  Tasks that
        have started run on.  Only in the loop's thread.
        """
        c = self.clients.get(key)
        if c is None or c.closing:
            return
        c.closing = self._closing = True
        self._drop_closing()

    def _drop_closing(self) -> None:
        tasks, clients = self.tasks, self.clients
        kept: collections.deque[int] = collections.deque()
        for btid in self.queue:
            task = tasks.get(btid)
            if task is None:
                continue
            c = clients.get(task.origin) if task.origin is not None else None
            if c is not None and c.closing and task.worker is None:
                del tasks[btid]
                self._deliver_direct(task.owner, task.tid, P.CANCELLED, [])
            else:
                kept.append(btid)
        self.queue = kept

    def _dispatch(self) -> None:
        if self._closing:
            self._drop_closing()
        self._dispatch_ready()
        if self.queue:
            if self.watcher is not None and self.watcher.starting():
                self._mark_running()
        elif self.ready or self._closing:
            self._recall()

    def _recall(self) -> None:
        """Nothing is queued and a worker is idle: ask workers that may hold unstarted tasks for them.

        A worker keeps a task or two in hand while it runs one, so that it need
        not wait for the broker when that one ends.  When another worker has
        nothing to do, those tasks are better run there: RECALL asks for them.
        A worker hands them back (RETURN) only while a task of its own has run
        for more than a slice (its flusher thread answers), or once the task it
        starts next does; otherwise it is about to start them anyway.

        A worker is asked once: not again until it was sent a task or sent a
        result since.  Asking again with nothing changed cannot help (a worker
        whose tasks have all started, e.g. parked parents, has nothing to give,
        and one that is stuck does not read), and it did cost a message every
        20 ms per such worker for as long as another worker stayed idle.
        """
        now = time.monotonic()
        if now < self._next_recall:
            return
        self._next_recall = now + RECALL_EVERY
        workers = self.workers
        if not self._closing and not any(
            w.credit > 0 and not w.assigned and w.key in workers for w in self.ready
        ):
            return  # (a client leaving after an error wants back what has not started, to drop it)
        for w in workers.values():
            # One task assigned is the one it runs (or a parked one): nothing to give.
            if len(w.assigned) >= 2 and now - w.recalled >= RECALL_EVERY * 4:
                mark = (w.sent, w.done)
                if mark == w.recall_mark:
                    continue  # asked already, and nothing moved there since
                w.recalled, w.recall_mark = now, mark
                self._send(w.key, [P.header(P.RECALL)])

    def _dispatch_ready(self) -> None:
        queue = self.queue
        ready = self.ready
        tasks = self.tasks
        local = self.local
        workers = self.workers
        while queue and ready:
            share = max(1, math.ceil(len(queue) / len(ready)))
            sent = 0
            back: list[WorkerPeer] = []
            for _ in range(len(ready)):
                if not queue:
                    break
                w = ready.popleft()
                w.in_ready = False
                if w.key not in workers or w.credit <= 0:
                    continue
                # A task's parent may be parked on this worker: if the child ran
                # here and took long, the parent could not even notice its other
                # children finishing. Prefer another worker when one is idle (one
                # that runs a task already would only queue the child behind it).
                others: bool | None = None  # another worker idle? (asked when it matters)
                skipped: list[int] = []
                batch: list[Task] = []
                want = min(w.credit, share)
                started: dict[bytes, list[tuple[int]]] = {}
                while want and queue:
                    btid = queue.popleft()
                    task = tasks.get(btid)
                    if task is None or task.worker is not None:
                        continue
                    if task.parent:
                        parent = tasks.get(task.parent)
                        if others is None:
                            others = any(
                                o is not w and o.credit > 0 and not o.assigned and o.key in workers
                                for o in itertools.chain(ready, back)
                            )
                        if others and parent is not None and parent.worker == w.key:
                            skipped.append(btid)
                            continue
                    if task.marked or task.attempts:
                        pass
                    elif task.owner == LOCAL:
                        assert local is not None
                        if not local.started(task.tid):
                            del tasks[btid]  # cancelled while queued
                            continue
                    elif task.owner in self.clients:
                        started.setdefault(task.owner, []).append((task.tid,))
                    task.marked = True
                    batch.append(task)
                    want -= 1
                if skipped:
                    queue.extendleft(reversed(skipped))
                if batch:
                    self._send_tasks(w, batch)
                    w.credit -= len(batch)
                    sent += len(batch)
                for owner, ids in started.items():
                    self._send(owner, [P.pack(P.STARTED, ids)])
                if w.credit > 0:
                    w.in_ready = True
                    back.append(w)
            # Those that still have credit go back to the front, in turn: the next single task
            # goes to the worker that just ran one (warm; a round trip is faster there).
            ready.extendleft(reversed(back))
            if not sent:
                break  # every ready worker passed on what is queued: wait for input

    def _send_tasks(self, w: WorkerPeer, batch: list[Task]) -> None:
        for sid in {t.setup for t in batch if t.setup and t.setup not in w.setups}:
            c = self.setups.get(sid)
            if c is not None:
                self._send(w.key, [P.header(P.SETUP, 0, sid), *c.setup_frames])
                for shared in c.shares:
                    self._send(w.key, [P.header(P.SHARE, 0, sid), *shared])
            w.setups.add(sid)
        if self.trace is not None:
            self.trace.on_dispatch(w, batch)
        head = P.pack(P.TASKS, [(t.btid, t.setup, len(t.frames), t.attempts) for t in batch])
        frames: list[Any] = [head]
        key = w.key
        for t in batch:
            t.worker = key
            w.assigned.add(t.btid)
            frames.extend(t.frames)
        w.sent += len(batch)
        self._send(key, frames)

    # ----------------------------------------------------------------- send
    def _flush(self) -> None:
        if self._out:
            out, self._out = self._out, {}
            for owner, items in out.items():
                head = P.pack(P.RESULTS, [e for e, _ in items])
                frames: list[Any] = [head]
                for _, body in items:
                    frames.extend(body)
                self._send(owner, frames)
        if self._backlogged:
            for key in list(self._backlogged):
                self._retry_backlog(key)

    def _send(self, key: bytes, frames: Sequence[Any]) -> bool:
        """Send one message; keep it for later if the peer is slow, drop it if gone."""
        peer = self.workers.get(key) or self.clients.get(key)
        if peer is not None and peer.backlog:
            peer.backlog.append(list(frames))
            return True
        return self._send_now(key, frames, peer)

    def _send_now(self, key: bytes, frames: Sequence[Any], peer: Peer | None) -> bool:
        link = self.links.get(key)
        if link is not None:
            try:
                if not link.send(frames) and self._poller is not None:
                    self._poller.modify(link.fd, select.POLLIN | select.POLLOUT)
                    self._wake_needed += 1
            except OSError:
                link.eof = True
                self._dead_links.append(key)
                return False
            return True
        r = self.router
        self._zmq_dirty = True  # sending can take in the commands that signal input
        self._wake_needed += 1
        try:
            r.send(key, zmq.SNDMORE | zmq.NOBLOCK)
        except zmq.Again:
            if peer is not None:
                peer.backlog.append(list(frames))
                self._backlogged.add(key)
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                if peer is not None:
                    self._peer_gone(key, "it is no longer connected")
                return False
            raise
        last = len(frames) - 1
        for i, f in enumerate(frames):
            r.send(f, zmq.SNDMORE if i < last else 0, copy=False)
        return True

    def _retry_backlog(self, key: bytes) -> None:
        peer = self.workers.get(key) or self.clients.get(key)
        if peer is None:
            self._backlogged.discard(key)
            return
        while peer.backlog:
            frames = peer.backlog.popleft()
            if not self._send_now(key, frames, None):
                peer.backlog.appendleft(frames)
                return
        self._backlogged.discard(key)

    # ------------------------------------------------------ losing peers
    def _peer_gone(self, key: bytes, why: str) -> None:
        w = self.workers.get(key)
        if w is not None:
            self._lose_worker(w, why)
            return
        c = self.clients.pop(key, None)
        if c is not None:
            log.info("client %s left (%s)", key.hex(), why)
            self._forget_fd(key)
            self._client_gone(c)
        self.observers.discard(key)

    def _client_gone(self, c: ClientPeer) -> None:
        c.broken = True
        self._break_client_tasks(c.key)

    def _break_client_tasks(self, key: bytes) -> None:
        by_worker: dict[bytes, list[tuple[int]]] = {}
        for btid in [b for b, t in self.tasks.items() if key in (t.origin, t.owner)]:
            task = self.tasks.pop(btid)
            self.by_owner.pop((task.owner, task.tid), None)
            if task.worker is not None:
                w = self.workers.get(task.worker)
                if w is not None:
                    w.assigned.discard(btid)
                    by_worker.setdefault(w.key, []).append((btid,))
        for wkey, ids in by_worker.items():
            self._send(wkey, [P.pack(P.CANCEL, ids)])

    def _lose_worker(self, w: WorkerPeer, why: str, exit_info: str = "", task_rc: int | None = None) -> None:
        """Forget a worker and requeue (or fail) its tasks.

        ``task_rc``: the exit status of its process, which ended not for a
        reason of its own (contract.py): what it was running most likely ended it.
        """
        if self.workers.pop(w.key, None) is None:
            return
        self._forget_fd(w.key)
        host = w.info.get("host", "?")
        pid = w.info.get("pid", "?")
        if not exit_info and w.tag and self.watcher is not None and self.watcher.owns_process(w.tag):
            exit_info, task_rc = self._local_exit_info(w.tag)
            if not exit_info:
                # Alive but unreachable (stopped, stuck in native code): it is
                # ours, so end it; its tasks run elsewhere and it is replaced.
                self.watcher.kill(w.tag)
                if "stopped" in why:  # seen in its process state (a link, see _check_stopped)
                    exit_info = f"{why} (SIGSTOP or a debugger) and was killed"
                elif why == LINK_CLOSED:  # no heartbeat is involved: say what was seen
                    exit_info = f"{why}, but its process had not exited 0.1 s later and was killed"
                else:
                    exit_info = (
                        f"it stopped answering heartbeats for {self.heartbeat_timeout:g} s and was killed"
                    )
        where = f"worker {w.name} (pid {pid} on {host})"
        reason = exit_info or why
        held = len(w.assigned)
        by_task = task_rc is not None and bool(exit_info) and held > 0
        if by_task:
            self._recent_losses.append(f"{where}: {reason} while running a task")
        else:
            self._recent_losses.append(f"{where}: {reason}")
        if w.assigned:
            log.warning("%s was lost with %d task(s): %s", where, held, reason)
        for btid in sorted(w.assigned):
            task = self.tasks.get(btid)
            if task is None or task.worker != w.key:
                continue
            task.worker = None
            task.attempts += 1
            task.prev += (w.key,)
            ended = _ended_by_task(held, task_rc) if by_task and task_rc is not None else ""
            task.losses.append(f"{where}: {reason}{ended}")
            if self.trace is not None:
                self.trace.on_lost(task, w, f"{where}: {reason}", task.attempts > self.max_retries)
            if task.attempts > self.max_retries:
                del self.tasks[btid]
                message = (
                    f"task {btid} was lost {task.attempts} time{'s' if task.attempts != 1 else ''} with "
                    f"its worker, more than max_retries={self.max_retries} allows; last: "
                    f"{task.losses[-1]}. A task that keeps "
                    "taking its worker down is the likely cause (memory use, a crash in native code); "
                    "if the losses are unrelated to it, raise max_retries"
                )
                body = [P.dump_json({"type": "WorkerLostError", "message": message, "kind": "lost"}), b""]
                self._deliver_direct(task.owner, task.tid, P.LOST, body)
            else:
                self.queue.appendleft(btid)
        w.assigned.clear()
        self._drop_owned_by(w.key)

    def _local_exit_info(self, tag: str) -> tuple[str, int | None]:
        """Wait briefly for a local worker's exit status; replace it once it has exited.

        Its description ("" if it has not exited) and, if it did not end for a
        reason of its own, its exit status (see _lose_worker).
        """
        assert self.watcher is not None
        for _ in range(20):
            for t, _pid, rc in self.watcher.reap():
                if t == tag:
                    self._replace_local(t)
                    return self.watcher.describe_exit(tag, rc), None if self.watcher.own_exit(tag) else rc
                self._local_exited(t, rc)
            time.sleep(0.005)
        return "", None

    def _drop_owned_by(self, key: bytes) -> None:
        """Tasks submitted by a lost worker have nobody to report to."""
        self._break_client_tasks(key)

    def _resync(self, w: WorkerPeer, held: set[int]) -> None:
        for btid in list(w.assigned):
            if btid not in held:
                w.assigned.discard(btid)
                task = self.tasks.get(btid)
                if task is not None and task.worker == w.key:
                    task.worker = None
                    self.queue.appendleft(btid)

    def _local_exited(self, tag: str, rc: int) -> None:
        assert self.watcher is not None
        # A tag names one local worker process, or a group of workers started
        # together on another host (their tags are "GROUP.N").
        lost = [w for w in self.workers.values() if w.tag == tag or w.tag.startswith(tag + ".")]
        task_rc = None if self.watcher.own_exit(tag) else rc
        for w in lost:
            self._lose_worker(w, "its process exited", self.watcher.describe_exit(tag, rc), task_rc)
        if not lost:
            self._recent_losses.append(self.watcher.describe_exit(tag, rc))
        self._replace_local(tag)

    def _replace_local(self, tag: str) -> None:
        """Start a new worker for one that exited, unless they keep dying at start-up."""
        assert self.watcher is not None
        if self._stopping or self.watcher.replace(tag) or self.workers or self.watcher.starting():
            return
        why = "; ".join(self._recent_losses) or "worker processes keep exiting"
        text = (
            f"no worker is left, and none could be started or replaced: {why}. Run `python -m "
            f"scoopexec worker --connect {self.endpoint}` by hand to see why (the same Python, with "
            "scoopexec importable)"
        )
        for c in list(self.clients.values()):
            if not c.broken:
                self._break_client(c, "broken", text)

    def _tick(self) -> None:
        POOL.expire()
        if self._suspects:
            self._reprobe()
        now = time.monotonic()
        if now >= self._next_state_check and (self.links or self.watcher is not None):
            self._next_state_check = now + min(self.heartbeat, self.heartbeat_timeout / 4)
            if self.links:
                self._check_stopped(now)
            if self.watcher is not None and not self._stopping:
                # Workers still starting have said nothing yet: look at their processes.
                for why in self.watcher.check_starting(self.heartbeat_timeout):
                    log.warning("%s", why)
        if self.watcher is not None:
            for tag, _pid, rc in self.watcher.reap():
                self._local_exited(tag, rc)
        now = time.monotonic()
        if now - self._rate_t >= 1.0:
            n = self.completed - self._rate_n
            self._rate = n / (now - self._rate_t)
            self._rate_t, self._rate_n = now, self.completed

    # --------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """The pool at this moment, as JSON-ready data (see status.PoolStatus for the fields).

        Only call it in the broker's thread (or when the loop is not running):
        STATUS messages and ScoopExecutor.status() arrange that.
        """
        now = time.time()
        rate = self._rate
        if now - self.started < 1.0 and self.completed:  # no full one-second window yet
            rate = self.completed / max(now - self.started, 1e-3)
        return {
            "pool": self.pool_id,
            "endpoint": self.endpoint,
            "host": self.host,
            "pid": os.getpid(),
            "protocol": P.VERSION,
            "uptime": round(now - self.started, 3),
            "queued": len(self.queue),
            "assigned": sum(len(w.assigned) for w in self.workers.values()),
            "tasks": len(self.tasks),
            "completed": self.completed,
            "tasks_per_second": round(rate, 1),
            "clients": len(self.clients),
            "starting": self.watcher.starting() if self.watcher is not None else 0,
            "dropped": dict(self.dropped),
            "endpoints": [{"endpoint": e, "curve": sec} for e, sec in self.endpoints],
            "refused_keys": self.auth.refused if self.auth is not None else 0,
            "trace": self.trace.path if self.trace is not None else None,
            "workers": [
                {
                    "id": w.key.hex(),
                    "name": w.name,
                    "host": w.info.get("host"),
                    "pid": w.info.get("pid"),
                    "busy": len(w.assigned),
                    "state": "busy" if w.assigned else "idle",
                    "done": w.done,
                    "credit": w.credit,
                    "last_seen": round(now - w.last_seen, 3),
                    "joined": round(now - w.joined, 3),
                    "python": w.info.get("python"),
                }
                for w in self.workers.values()
            ],
        }


def _ended_by_task(held: int, rc: int) -> str:
    """For a task lost with a worker whose process ended, not for a reason of its own."""
    which = "this task" if held == 1 else f"this task or one of the {held - 1} other(s) it held"
    if rc < 0:
        return f" while running {which}"
    return (
        f" while running {which}: a task ended the process (os._exit({rc}), or exit() in native "
        "code); a worker's own exits are announced, and this one was not"
    )


def serve(
    bind: str,
    *,
    on_ready: Callable[[Broker], None] | None = None,
    **kwargs: Any,
) -> None:
    """Run a standalone broker in this process until interrupted."""
    b = Broker(bind, **kwargs)
    if on_ready is not None:
        on_ready(b)
    try:
        b.run()
    except KeyboardInterrupt:
        pass
