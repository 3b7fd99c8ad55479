"""A worker's channel to a broker reached over ZeroMQ (any broker but its embedded parent's).

:class:`ZmqChannel` offers what channels.LinkChannel offers (``receive``, ``send``,
``readable``, ``close``) over a DEALER socket, and ``watch``: a thread reading the socket's
monitor, which ends the worker when the broker stays unreachable or refuses its keys.
Kept out of channels.py so that a local worker, on a socketpair, never imports zmq
(worker.py loads this module only for a ZeroMQ endpoint).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from ..deploy.contract import EXIT_AUTH, EXIT_LOST, EXIT_UNREACHABLE, READY_MARK
from ..wire.security import Credentials
from ..wire.zmqsock import (
    MONITOR_EVENTS,
    ZMQ_EVENTS,
    ZMQ_POLLIN,
    HandshakeWatch,
    dealer,
    recv_monitor_event,
    zmq_receive,
    zmq_send,
)
from .lifeline import die, end

__all__ = ["ZmqChannel"]


class ZmqChannel:
    """The worker's DEALER socket to a broker, by ZeroMQ, and the monitor that watches it."""

    def __init__(
        self,
        ctx: zmq.Context[Any] | None,
        ident: bytes,
        connect: str,
        *,
        heartbeat: float,
        heartbeat_timeout: float,
        curve: Credentials | None,
        max_message_size: int = -1,
    ) -> None:
        self.connect_to = connect
        self.heartbeat_timeout = heartbeat_timeout
        self.ctx = ctx or zmq.Context()  # (a worker on a local link needs none: no I/O thread)
        s = self.sock = dealer(
            self.ctx,
            ident,
            connect,
            linger=2000,
            heartbeat=heartbeat,
            heartbeat_timeout=heartbeat_timeout,
            keys=curve,
            max_message_size=max_message_size,
        )
        self._handshakes = HandshakeWatch(connect, curve is not None)
        self.monitor = s.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | MONITOR_EVENTS
        )
        s.connect(connect)
        self.fd = int(s.getsockopt(zmq.FD))  # type: ignore[call-overload]

    def readable(self) -> bool:
        """Input waits already (a ZeroMQ FD signals only changes: ask before sleeping on it)."""
        return bool(self.sock.getsockopt(ZMQ_EVENTS) & ZMQ_POLLIN)  # type: ignore[operator]

    def receive(self, limit: int) -> list[list[Any]]:
        return zmq_receive(self.sock, limit)

    def send(self, frames: list[Any]) -> None:
        zmq_send(self.sock, frames)

    def settle(self) -> float:
        """Nothing to hand back over ZeroMQ (segments are for local links): -1."""
        return -1.0

    def close(self, drain: float = 0.0) -> None:
        """Close the socket.  ``drain``: this process ends next (os._exit), and ZeroMQ's I/O
        thread with it, which would drop what it has not sent yet (a last result, a BYE: the
        broker would run that task again elsewhere); so first wait, at most ``drain`` seconds,
        until what was sent is out (the context's term(), once the monitor is closed too)."""
        if drain <= 0:
            self.sock.close(linger=2000)
            return
        try:
            self.sock.disable_monitor()  # watch() sees MONITOR_STOPPED and closes its socket
        except zmq.ZMQError:
            pass
        ctx = self.sock.context
        self.sock.close(linger=int(drain * 1000))
        ending = threading.Thread(target=ctx.term, name="scoopexec-drain", daemon=True)
        ending.start()
        ending.join(drain + 1.0)  # bounded even if a socket stayed open

    def watch(
        self, connect_timeout: float, host: str, ready: bytes | None, on_reconnect: Callable[[], None]
    ) -> None:
        """Exit when the broker stays unreachable for longer than the heartbeat timeout (a thread).

        ``ready``: print READY_MARK and this label once connected (launchers wait for it).
        """
        try:
            self._watch(connect_timeout, host, ready, on_reconnect)
        finally:
            self.monitor.close(linger=0)  # its thread owns it; close(drain=) waits for it

    def _watch(
        self, connect_timeout: float, host: str, ready: bytes | None, on_reconnect: Callable[[], None]
    ) -> None:
        mon = self.monitor
        lost_at: float | None = None
        connected_once = False
        first_by = time.monotonic() + connect_timeout if connect_timeout > 0 else None
        while True:
            timeout = None
            if lost_at is not None:
                timeout = max(0.0, lost_at + self.heartbeat_timeout - time.monotonic())
            elif first_by is not None and not connected_once:
                timeout = max(0.0, first_by - time.monotonic())
            try:
                if timeout is not None and not mon.poll(int(timeout * 1000) + 1):
                    if lost_at is not None:  # the broker is gone: nothing can be delivered
                        end(EXIT_LOST, f"no answer from the broker for {self.heartbeat_timeout:g} s")
                    die(
                        EXIT_UNREACHABLE,
                        f"no scoopexec broker answered at {self.connect_to} within "
                        f"{connect_timeout:g} s (is that address reachable from {host}?)",
                    )
                event = recv_monitor_event(mon)
            except zmq.ZMQError:
                return
            problem = self._handshakes.event(event["event"], event["value"])
            if problem is not None:
                die(EXIT_AUTH, problem)
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED and not connected_once and ready is not None:
                try:
                    os.write(1, READY_MARK + b" " + ready + b"\n")
                except OSError:
                    pass
            if event["event"] == zmq.EVENT_DISCONNECTED:
                lost_at = time.monotonic()
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if connected_once and lost_at is not None:
                    on_reconnect()
                connected_once = True
                lost_at = None
            elif event["event"] == zmq.EVENT_MONITOR_STOPPED:
                return
