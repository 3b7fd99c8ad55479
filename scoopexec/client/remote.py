"""``ScoopExecutor(broker="tcp://...")``: a client of a standalone broker (``python -m scoopexec broker``).

One DEALER socket (CURVE: a key file, or on loopback the key the broker wrote for
this user) served by one I/O thread: it sends what the user threads queued (SUBMIT
batches, SHARE, CANCEL, STATUS) and routes what arrives through the session's table.
The connection is watched by the socket monitor: a refused key, a broker that cannot
prove its pinned key, or a broker gone for longer than the heartbeat timeout breaks
the executor with the reason.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import zmq

from .. import pools
from ..deploy.groups import Target
from ..deploy.local import LocalWorkers
from ..errors import AuthenticationError, BrokenScoopExecutor, BrokerLostError
from ..wire import protocol as P
from ..wire.security import Credentials, is_loopback, resolve_credentials
from ..wire.zmqsock import MONITOR_EVENTS, HandshakeWatch, dealer, recv_monitor_event, zmq_receive, zmq_send
from . import interrupts
from .session import Session

__all__ = ["RemoteSession"]

log = logging.getLogger("scoopexec")

SUBMIT_BATCH = 256  # tasks per SUBMIT message


class RemoteSession(Session):
    """A client of a standalone broker, through one DEALER socket and one I/O thread."""

    tells_cancels = True
    confirms_cancels = True

    def __init__(
        self,
        endpoint: str,
        setup: list[bytes],
        *,
        heartbeat: float,
        heartbeat_timeout: float,
        connect_timeout: float,
        keys: Credentials | None = None,
        max_retries: int | None = None,
    ) -> None:
        keys = resolve_credentials(endpoint, keys, "broker endpoint")
        super().__init__(setup)
        self.keys = keys
        self.max_retries = max_retries  # travels in the HELLO: the broker applies it to our tasks
        self._handshakes = HandshakeWatch(endpoint, keys is not None)
        self.endpoint = endpoint
        self.heartbeat_timeout = heartbeat_timeout
        self._stop = False
        self._lost_at: float | None = None
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
            with interrupts.allowed():  # (Ctrl-C while waiting for the broker's answer: at once)
                self._handshake(connect_timeout)
        except BaseException:
            try:
                s.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(linger=0)
            s.close(linger=0)
            self.ctx.term()
            self.wake.close()
            raise
        pools.track(self)
        self.thread = threading.Thread(target=self._run, name="scoopexec-client", daemon=True)
        self.thread.start()

    def _handshake(self, timeout: float) -> None:
        hello: dict[str, Any] = {"role": P.CLIENT, "pid": os.getpid(), "host": socket.gethostname()}
        if self.max_retries is not None:
            hello["max_retries"] = self.max_retries
        zmq_send(self.sock, [P.header(P.HELLO), P.dump_json(hello), *self._setup])
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
            msg = P.decode(self.sock.recv_multipart(copy=False))
            if msg.kind == P.WELCOME:
                self.pool_id = msg.info.get("pool", "")
                return
            if msg.kind == P.ERROR:
                raise BrokenScoopExecutor(f"the broker at {self.endpoint} refused this client: {msg.text}")

    def _check_monitor(self, raise_errors: bool = False) -> float | None:
        """Read monitor events; return the time the connection was lost (None: it is up)."""
        lost: float | None = self._lost_at
        while self.monitor.poll(0):
            ev = recv_monitor_event(self.monitor)
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

    def _remote_target(self, kind: str) -> Target:
        if self.keys is None or is_loopback(self.endpoint):
            raise ValueError(
                f"workers on other hosts cannot reach the broker at {self.endpoint}: start it with "
                "`python -m scoopexec broker --bind tcp://0.0.0.0:PORT --key-file FILE` and give "
                "key=FILE and broker='tcp://THIS-HOST:PORT'"
            )
        return Target(self.endpoint, None, self.keys)

    def start_local(self, n: int) -> None:
        assert self.workers is not None
        if self.workers.local is None:
            o = self.launch_options
            self.workers.local = LocalWorkers(
                self.endpoint,
                0,
                python=o.python,
                env=o.env,
                cwd=o.cwd if o.keep_cwd else None,
                flags={"keep_cwd": o.keep_cwd, **o.recycle},
                heartbeat=o.heartbeat,
                heartbeat_timeout=o.heartbeat_timeout,
                replace=False,
                keys=self.keys,
            )
        self.workers.local.add(n)

    def request_stop(self) -> None:
        self._stop = True
        self.wake.wake()

    _turns = 0

    def turns(self) -> int:
        return self._turns

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.wake.fd, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        lost_at: float | None = None
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
                if self.wake.fd in events:
                    self.wake.drain()
                self._send_pending()
                self.dispatched()
                if self.sock in events:
                    for frames in zmq_receive(self.sock, 1000):
                        self.handle(frames)
                if self.monitor in events:
                    lost_at = self._check_monitor()
        except BaseException:  # pragma: no cover
            log.exception("the scoopexec client thread failed")
        finally:
            try:
                self._send_pending()
                zmq_send(self.sock, [P.header(P.BYE)])
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
            self._finished()

    def _send_pending(self) -> None:
        sock = self.sock
        # Taken first: the submission of a task whose cancel() is asked here is in the outbox now.
        confirms = [(self.confirms.popleft(),) for _ in range(len(self.confirms))]
        while self.status_requests:
            self.status_waiting.append(self.status_requests.popleft())
            zmq_send(sock, [P.header(P.STATUS)])
        while self.inbox:
            zmq_send(sock, self.inbox.popleft())
        outbox = self.outbox
        while outbox:
            items: list[tuple[int, list[Any]]] = []
            while outbox and len(items) < SUBMIT_BATCH:
                items.append(outbox.popleft())
            frames: list[Any] = [P.pack(P.SUBMIT, [(tid, 0, len(body)) for tid, body in items])]
            for _, body in items:
                frames.extend(body)
            zmq_send(sock, frames)
        if self.cancels:
            ids = []
            while self.cancels:
                ids.append((self.cancels.popleft(),))
            zmq_send(sock, [P.pack(P.CANCEL, ids)])
        if confirms:  # after the submissions: the broker knows each task it is asked about
            zmq_send(sock, [P.pack(P.CANCEL, confirms, P.CONFIRM)])
