"""The ZeroMQ side of the wire: DEALER sockets, multipart messages, handshake failures.

Clients, brokers and workers reached over ZeroMQ use these; a worker an embedded broker
started on its own machine talks over a socketpair (framing.Link) and never imports this
module, nor zmq itself (about a sixth of a worker's start-up, which each pool's template
pays before its first task: deploy/forkstart.py).

* :func:`zmq_send` / :func:`zmq_receive`: one multipart message out, the waiting messages in,
  on a ZeroMQ socket (the broker's ROUTER, a client's or a worker's DEALER, made by
  :func:`dealer`);
* :class:`HandshakeWatch` and :data:`MONITOR_EVENTS`: a socket monitor's handshake
  failures turned into one clear error (libzmq itself retries them silently forever);
  :func:`monitor_event` and :func:`recv_monitor_event` read that monitor's messages.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import zmq

from .framing import HEADROOM
from .security import Credentials, endpoint_host

__all__ = [
    "MONITOR_EVENTS",
    "HandshakeWatch",
    "dealer",
    "monitor_event",
    "recv_monitor_event",
    "zmq_receive",
    "zmq_send",
]

MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


COPY_BELOW = 65536  # bytes shorter than this are copied by zmq_send (cheaper than tracking them)
SNDMORE = int(zmq.SNDMORE)
ZMQ_EVENTS = int(zmq.EVENTS)  # as plain ints: flag arithmetic on pyzmq's enums costs a call each time
ZMQ_POLLIN = int(zmq.POLLIN)


def zmq_send(sock: zmq.Socket[Any], frames: Sequence[Any]) -> None:
    """Send one multipart message; large frames and buffers go without a copy.

    Small bytes are copied (the cheapest way to send them); everything else goes with
    ``copy=False``, where pyzmq still copies what is below the socket's ``copy_threshold``
    (64 KiB) and hands zmq.Frames and large buffers over as they are.
    """
    send = sock.send
    for f in frames[:-1]:
        send(f, SNDMORE, copy=f.__class__ is bytes and len(f) < COPY_BELOW)
    f = frames[-1]
    send(f, 0, copy=f.__class__ is bytes and len(f) < COPY_BELOW)


def zmq_receive(sock: zmq.Socket[Any], limit: int) -> list[list[Any]]:
    """The messages waiting on ``sock`` (at most ``limit``), frames as zmq.Frame (no copy).

    Fewer than ``limit`` means the socket had no more: its EVENTS said so, which is
    cheaper than a recv that raises zmq.Again.
    """
    out: list[list[Any]] = []
    while len(out) < limit:
        if not sock.getsockopt(ZMQ_EVENTS) & ZMQ_POLLIN:  # type: ignore[operator]
            break
        first = sock.recv(copy=False)
        frames = [first]
        more = first.more
        while more:
            f = sock.recv(copy=False)
            frames.append(f)
            more = f.more
        out.append(frames)
    return out


def dealer(
    ctx: zmq.Context[Any],
    ident: bytes,
    endpoint: str,
    *,
    linger: int,
    heartbeat: float,
    heartbeat_timeout: float,
    keys: Credentials | None,
    max_message_size: int = -1,
) -> zmq.Socket[Any]:
    """A DEALER for a client or worker of the broker at ``endpoint`` (not yet connected).

    Routing id, deep queues, ZMTP heartbeats, IPv6 when the address is one, and
    CURVE with ``keys``; frames above ``max_message_size`` (plus headroom) are refused
    (wire/validate.frame_limit).
    """
    s: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.ROUTING_ID, ident)
    s.setsockopt(zmq.LINGER, linger)
    s.setsockopt(zmq.SNDHWM, 100_000)
    s.setsockopt(zmq.RCVHWM, 100_000)
    s.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat * 1000))
    s.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(heartbeat_timeout * 1000))
    s.setsockopt(zmq.HEARTBEAT_TTL, int(heartbeat_timeout * 1000))
    if ":" in (endpoint_host(endpoint) or ""):
        s.setsockopt(zmq.IPV6, 1)
    if max_message_size > 0:
        s.setsockopt(zmq.MAXMSGSIZE, max_message_size + HEADROOM)
    if keys is not None:
        keys.apply(s)
    return s


_MONITOR = struct.Struct("=Hi")  # libzmq 4: event number, value (signed, as libzmq has it; host order)


def monitor_event(frames: Sequence[Any]) -> dict[str, Any]:
    """A socket monitor's message as ``{"event", "value", "endpoint"}``; ValueError if it is none.

    libzmq (4.x) sends two frames: six bytes (a 16-bit event number, then a 32-bit value: an
    errno, a descriptor, a ZMTP error code), and the endpoint.  Read here rather than with
    ``zmq.utils.monitor``, which imports asyncio: about 13 ms of every client's start, and of
    every worker whose main module imports ScoopExecutor.
    """
    if len(frames) != 2:
        raise ValueError(f"a monitor event has 2 frames, not {len(frames)}")
    head = bytes(frames[0])
    if len(head) != _MONITOR.size:
        raise ValueError(f"a monitor event starts with {_MONITOR.size} bytes, not {len(head)}")
    event, value = _MONITOR.unpack(head)
    return {"event": event, "value": value, "endpoint": bytes(frames[1])}


def recv_monitor_event(sock: zmq.Socket[Any]) -> dict[str, Any]:
    """The next event on the monitor socket ``sock`` (waits for it)."""
    return monitor_event(sock.recv_multipart())


class HandshakeWatch:
    """Turns a socket monitor's handshake failures into one clear error.

    Feed it every monitor event; :meth:`event` returns the error text once the
    failure is certain: at once for a refused key, after a few repeats for a
    failed CURVE exchange (which is also what a lost connection mid-handshake
    looks like).
    """

    REPEATS = 3

    def __init__(self, endpoint: str, secure: bool) -> None:
        self.endpoint = endpoint
        self.secure = secure
        self.failures = 0

    def event(self, event: int, value: int = 0) -> str | None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.failures = 0
            return None
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (
                f"the broker at {self.endpoint} refused this key (status {value}): it is not among "
                "the keys that broker accepts; use the key file it wrote when it last started"
            )
        mismatch = value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and mismatch:
            # Certain at once (and libzmq may not try again): one side uses CURVE, the other not.
            if not self.secure:
                return (
                    f"the broker at {self.endpoint} requires CURVE security: give its key file "
                    "(key=... or --key FILE)"
                )
            return f"the broker at {self.endpoint} does not use CURVE security: connect without a key"
        if event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            self.failures += 1
            if self.failures < self.REPEATS:
                return None
            if self.secure:
                return (
                    f"the CURVE handshake with the broker at {self.endpoint} failed "
                    f"{self.failures} times: the server key in the key file is not that broker's "
                    "(was the broker restarted? it makes new keys each time), or no scoopexec "
                    "CURVE broker listens there"
                )
            return (
                f"the handshake with the broker at {self.endpoint} failed {self.failures} times: that "
                "broker most likely requires CURVE security: give its key file (key=... or --key FILE)"
            )
        return None
