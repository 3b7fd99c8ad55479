"""``ScoopExecutor()`` with no broker: a private broker in a thread of this process, and local workers.

::

  user threads                    broker thread (broker/loop.py)             worker processes
  submit() --pickle--> outbox --wake--> Broker loop --TASKS (batched)--> hub greenlet, runners
  Future <--set_result-- handle() <------------------- RESULT (batched) --+
                                      (set_running_or_notify_cancel when a task is
                                       handed to a worker; cancelled ones are dropped)

The local workers' template is made first, a fork of this process when it still runs a
single thread then (deploy/clientfork.py); such a template is asked for the workers at once,
and forks them while the broker is made here (their links wait for it, with their HELLO in
them; each HELLO asks for a task, which the broker sends with WELCOME).  The client is the
broker's in-process peer (broker/ports.InProcessPort), so a round trip costs two socket
hops; the submitting thread dispatches its own task when the broker's loop sleeps, and the thread waiting in
``result()`` reads the result from the worker's link itself (broker/leader.py), so that
a short round trip wakes no other thread of this process.  The
local workers get one end of a socketpair each (deploy/local.py, wire/framing.Link);
the broker also listens on a private ipc socket in a 0700 directory (for standalone
workers and status queries; on loopback TCP with CURVE when no socket path short
enough can be had) and, with ``bind=`` or workers on other hosts, on a TCP endpoint
secured with CURVE (loopback included: its key is written for this user's
hand-started workers, see wire/security.publish_local_key).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import shutil
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from .. import pools
from ..broker.leader import Leader
from ..broker.loop import Broker
from ..deploy import clientfork
from ..deploy.contract import LaunchOptions
from ..deploy.groups import Launchers, Target
from ..deploy.local import LocalWorkers, use_socketpairs
from ..deploy.slurm import slurm_address
from ..errors import SerializationError
from ..wire.security import (
    Credentials,
    KeyPair,
    check_endpoint,
    endpoint_host,
    is_loopback,
    private_socket_dir,
    publish_local_key,
)
from ..worker import setup as worker_setup
from . import interrupts
from .future import ScoopFuture
from .session import Session, status_timeout

if TYPE_CHECKING:
    from ..deploy.forkstart import Template
    from ..trace import TraceRecorder

__all__ = ["EmbeddedSession"]

log = logging.getLogger("scoopexec")

# s a submitter waits at most for the broker loop's turn to end (_dispatch_now): the stall it saves
TURN_WAIT = sys.getswitchinterval()


class EmbeddedSession(Session):
    """An embedded broker in a thread of this process, and local worker processes."""

    cancels_dropped = True

    def __init__(
        self,
        n: int,
        setup: list[bytes],
        options: LaunchOptions,
        *,
        bind: str | None,
        max_retries: int,
        max_message_size: int,
        trace: TraceRecorder | None = None,
    ) -> None:
        if bind is not None:
            check_endpoint(bind, secure=True, what="bind endpoint")
        # First, while this process may still run one thread: the local workers' template, a
        # fork of this process if it does (before the broker's sockets, pipes and threads exist).
        template = clientfork.template_for(options, n)
        handed = worker_setup.handed_over(setup)
        if handed is not None and template is None and handed[1]:
            # Neither inherited (no fork of this process) nor picklable for a fresh worker.
            raise SerializationError(
                f"cannot send the initializer to workers: {handed[0]}; nor as to a spawned process: "
                f"{handed[1].rstrip('.')}.  Workers forked from this process would inherit it, but "
                "this pool's workers start fresh (mp_context=, python=, env= of a start-up variable, "
                "worker_memory_limit=, SCOOPEXEC_WORKER_START, or other threads running here: a "
                "QueueListener's, say); multiprocessing objects made from get_context('spawn') or "
                "get_context('forkserver') reach them"
            )
        # An initializer only inheritance passes: every worker must be a fork of the template.
        fork_only = handed[0] if handed is not None and handed[1] else ""
        local: LocalWorkers | None = None
        early: list[socket.socket] = []  # the links of workers forked before the broker was made
        self._ipc_dir: str | None = None
        self._published: list[str] = []  # key files written for this user's hand-started peers
        try:
            # A private ipc socket in a 0700 directory (in $TMPDIR, or this user's runtime directory
            # when $TMPDIR is too long for a socket path); else loopback TCP, with CURVE like all TCP.
            place = private_socket_dir()
            self._ipc_dir = place[0] if place is not None else None
            private = place[1] if place is not None else "tcp://127.0.0.1:0"
            if template is not None and place is not None:
                # A template forked from us forks the workers at once, while the rest of the pool
                # is made here (the template is idle until asked: so it is asked first): each
                # worker says HELLO on its link, which the broker reads once it runs.
                local = self._local_workers(
                    n, options, private, max_message_size, early.append, template, fork_only=fork_only
                )
            super().__init__(setup)
            self.ctx: zmq.Context[Any] = zmq.Context()
        except BaseException:
            if local is not None:
                local.stop(0.5)  # and its template
            elif template is not None:
                template.stop()
            for sock in early:
                sock.close()
            self._cleanup_dir()
            if getattr(self, "wake", None) is not None:
                self.wake.close()  # (Session's, made before the context)
            raise
        self.launch_options = options
        self.trace = trace
        self._secure: str | None = None  # a CURVE endpoint, once there is one
        try:
            self.broker = Broker(
                private,
                context=self.ctx,
                local=self,
                heartbeat=options.heartbeat,
                heartbeat_timeout=options.heartbeat_timeout,
                max_retries=max_retries,
                max_message_size=max_message_size,
            )
            self.pool_id = self.broker.pool_id
            self.endpoint = self.private = self.broker.endpoint
            local_keys = None
            if self.private.startswith("tcp://"):
                local_keys = self._new_keys()
            if bind is not None:
                secure = bind.startswith("tcp://")
                self.endpoint = self.broker.router.add_endpoint(bind, secure=secure)
                if secure:
                    self._secure = self.endpoint
                    self._publish()
            link = self.broker.links.add if use_socketpairs() else None
            if local is None:
                connect = self.private
                local = self._local_workers(
                    n, options, connect, max_message_size, link, template, local_keys, fork_only
                )
            else:
                local.link = link
                while early:
                    self.broker.links.add(early.pop(0))
            self.workers = Launchers(local)
        except BaseException:
            if local is not None:
                local.stop(0.5)  # and its template
            elif template is not None:
                template.stop()
            for sock in early:
                sock.close()
            self._cleanup_dir()
            if getattr(self, "broker", None) is not None:
                self.broker.close()
            # destroy(), not term(): a broker that failed part-way through its making left a
            # socket open, and term() would wait for it for ever (seen with few descriptors left)
            self.ctx.destroy(linger=0)
            self.wake.close()
            raise
        self.broker.watcher = self.workers
        self.broker.trace = trace
        self.leader = Leader(self.broker)
        pools.track(self)
        # Whether the thread's _run began, or the start gave it up first: a signal handler that
        # raises inside Thread.start() (SIGTERM's SystemExit, say) leaves a launched thread
        # whose ident may not be set yet, and the start must not free what it then uses.
        self._begun: bool | None = None
        self._begin_lock = threading.Lock()
        try:
            self.thread = threading.Thread(target=self._run, name="scoopexec-broker", daemon=True)
            self.thread.start()
            self.loop_ident = self.thread.ident
            # The forks are processes once the pool is made (the broker reads their HELLO meanwhile).
            with interrupts.allowed():  # (a wait of up to FORK_WAIT s: Ctrl-C may end it)
                local.confirm()
        except BaseException:  # (Ctrl-C, or forks that never came): nothing left running
            self._start_failed()
            raise
        # The script's classes its workers inherited, as noted just before the fork (a template
        # forked from us: wire/mainclasses.py); None: they travel by value.
        self.main_classes = None
        if template is not None and template.origin == "client":
            self.main_classes = template.main_classes

    def _start_failed(self) -> None:
        """The pool's start failed once its broker was made: stop what runs, free what is held.
        Before, a Ctrl-C here left the broker's thread, the template and the workers running
        until exit, and exit failed to join a thread that had not started."""
        with self._begin_lock:
            if self._begun is None:
                self._begun = False  # (a thread launched after all ends at once: see _run)
        if self._begun:
            # Its thread frees the rest (and untracks the pool: an abort cut short by Ctrl-C, a
            # wait of up to 10 s, leaves the pool to the exit hook).
            with interrupts.unheld():
                self.abort("the pool's start failed", timeout=10.0)
            return
        pools.untrack(self)
        if self.workers is not None:
            self.workers.stop()
        worker_setup.release(self.setup_frames())
        self.broker.close()
        self.ctx.destroy(linger=0)
        self._cleanup_dir()
        self.wake.close()

    @staticmethod
    def _local_workers(
        n: int, options: LaunchOptions, connect: str, max_message_size: int,
        link: Callable[[socket.socket], object] | None, template: Template | None,
        keys: Credentials | None = None, fork_only: str = "",
    ) -> LocalWorkers:  # fmt: skip
        """The pool's local workers (forked ones: asked of the template, not awaited yet)."""
        return LocalWorkers(
            connect,
            n,
            python=options.python,
            env=options.env,
            cwd=options.cwd if options.keep_cwd else None,
            flags={"keep_cwd": options.keep_cwd, "max_message_size": max_message_size, **options.recycle},
            heartbeat=options.heartbeat,
            heartbeat_timeout=options.heartbeat_timeout,
            link=link,
            keys=keys,
            template=template,
            wait=False,
            pass_fds=options.pass_fds,
            fork_only=fork_only,
        )

    def submit(self, frames: list[Any], what: str = "") -> ScoopFuture:
        """Session.submit, dispatching from this thread when it can (_dispatch_now)."""
        tid = next(self._tids)
        fut = ScoopFuture(self, tid, what)
        self.futures[tid] = fut
        self.outbox.append((tid, frames))
        broker = self.broker
        if (not self.wake.pending or broker.ledger.ready) and not self._dispatch_now(broker):
            self.wake.wake()
        return fut

    def _dispatch_now(self, broker: Broker) -> bool:
        """Dispatch the outbox from this thread (Broker.dispatch_local_now); False: wake the loop.

        While the loop sleeps in poll, the task reaches a worker without waking the broker's
        thread first (a thread hand-off).  While the loop is in a turn (it holds its lock),
        or has been woken for one, tasks are left to it, to be taken in together, unless
        workers have room for tasks (``ledger.ready``: workers with credit).  Then this thread
        waits for the turn to end, and dispatches itself: left to the loop, the tasks waited
        for the GIL, which a thread submitting in a loop (a map's) lets go of only at the
        switch interval (5 ms), while idle workers got nothing (issue 17: 64 workers on
        sleeping tasks).  It waits at most that long too (TURN_WAIT): a turn that lasts
        longer (a pool closing, a loop short of CPU) gets the tasks, as before.
        """
        lock = broker.lock
        if lock.locked() and broker.ledger.ready and threading.get_ident() != self.loop_ident:
            return broker.dispatch_local_now(TURN_WAIT)  # (blocked on the lock: the GIL is free)
        return broker.dispatch_local_now()

    def lead(self, fut: ScoopFuture, timeout: float | None) -> float | None:
        # A thread waiting on a result reads it from its worker's link itself (broker/leader.py);
        # not the broker's own thread (a done-callback), whose loop resolves it anyway.
        if threading.get_ident() == self.loop_ident:
            return timeout
        return self.leader.wait(fut, fut.tid, timeout)

    def request_stop(self) -> None:
        self.broker.stop()

    def turns(self) -> int:
        return self.broker.turns

    def drop_unstarted(self) -> None:
        broker = self.broker
        if not self.thread_alive() or self.closed.is_set():
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
        if self.closed.is_set():
            raise RuntimeError("the pool is shut down")
        if self.thread is None:  # (not started yet)
            return fn()
        return self.broker.call_soon(fn).result(timeout=60)

    def _remote_target(self, kind: str) -> Target:
        if self._secure is None or is_loopback(self._secure):  # other hosts cannot reach loopback
            router = self.broker.router
            self._secure = self._in_loop(lambda: router.add_endpoint("tcp://0.0.0.0:0", secure=True))
        keys = self._new_keys()
        assert self._secure is not None
        host = endpoint_host(self._secure) or ""
        port = int(self._secure.rsplit(":", 1)[1])
        if host not in ("0.0.0.0", "*", "::", ""):
            return Target(self._secure, None, keys)
        if kind == "ssh":
            return Target(None, port, keys)
        return Target(f"tcp://{slurm_address()}:{port}", None, keys)

    def _publish(self) -> None:
        """Write this pool's key for this user's hand-started workers of a loopback or wildcard
        bind= endpoint; without a usable runtime directory, say so (write_key_file still works)."""
        try:
            path = publish_local_key(self.endpoint, self._new_keys())
        except (OSError, ValueError) as exc:
            log.warning("no key for workers started by hand at %s: %s", self.endpoint, exc)
            return
        if path is not None:
            self._published.append(path)

    def _new_keys(self) -> Credentials:
        """A new key pair this broker accepts, with its public key to pin."""
        curve = self.broker.router.curve
        assert curve is not None
        pair = KeyPair.new()
        self.broker.router.allow(pair.public)
        return Credentials.for_pair(curve.public, pair)

    def worker_target(self, kind: str) -> Target:
        """Where workers a scheduler starts connect (CURVE over TCP), with a new key pair for them."""
        return self._remote_target(kind)

    def start_local(self, n: int) -> None:
        assert self.workers is not None and self.workers.local is not None
        self.workers.local.add(n)

    def revoke(self, public: bytes) -> None:
        """Refuse new connections with this key (a group of workers removed on purpose)."""
        self.broker.router.revoke(public)

    def join_keys(self) -> Credentials:
        """A new key pair this pool accepts, for a peer started by hand."""
        if self._secure is None:
            raise RuntimeError(
                "this pool listens on no network endpoint: create it with "
                "bind='tcp://0.0.0.0:PORT' (or an address of this host) to let workers join by hand"
            )
        return self._new_keys()

    def _status(self, timeout: float) -> dict[str, Any]:
        if self.thread is threading.current_thread():
            return self.broker.status()  # e.g. from a done-callback: we are the broker's thread
        fut = self.broker.call_soon(self.broker.status)
        try:
            result: dict[str, Any] = fut.result(timeout)
        except cf.TimeoutError:
            fut.cancel()
            raise status_timeout(timeout) from None
        except cf.CancelledError:
            raise RuntimeError("this pool shut down before its broker answered") from None
        return result

    def _run(self) -> None:
        with self._begin_lock:
            if self._begun is False:
                return  # the start gave up before this thread began: it freed everything
            self._begun = True
        try:
            self.broker.run()
        except BaseException:  # pragma: no cover - a bug in the loop must not hang the client
            log.exception("the scoopexec broker thread failed")
            self.broken_msg = self.broken_msg or "the broker thread failed (see the log)"
        finally:
            if self.workers is not None:
                self.workers.stop()
            worker_setup.release(self.setup_frames())  # what it handed over (worker/handover.py)
            self.ctx.term()
            self._cleanup_dir()
            self._write_trace()
            log.info("pool %s stopped after %d task(s)", self.pool_id, self.broker.ledger.completed)
            self._finished()

    def _write_trace(self) -> None:
        if self.trace is None:
            return
        try:
            path = self.trace.write()
        except Exception as exc:
            log.error("could not write the timeline to %s: %s: %s", self.trace.path, type(exc).__name__, exc)
        else:
            log.info("timeline of %d task(s) written to %s", self.trace.recorded, path)

    def _cleanup_dir(self) -> None:
        while self._published:
            try:
                os.unlink(self._published.pop())
            except OSError:
                pass
        if self._ipc_dir is not None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
            self._ipc_dir = None
