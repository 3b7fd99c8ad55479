"""The broker's guards: what it does with a message it cannot use, and the limits it enforces.

* :class:`Guard` turns the exception a bad message raised (protocol.decode, a check of
  wire/validate.py, a handler) into a count in ``ledger.dropped``, an ERROR back where
  that helps the peer (a version mismatch), and a log line naming the peer -- at most
  ``burst`` lines per ``interval`` seconds, so that a flood of bad messages cannot fill a
  disk; the lines not written are counted and reported with the next one.  The loop goes on.
* :func:`write_nowait`: output for nobody (a worker printing outside any client's task) on
  the broker's own stdout or stderr, without ever blocking the loop on a reader that
  does not read.
* :class:`Connections`: the ROUTER's connections as its monitor reports them, cut when
  there are more than max_connections or one says no HELLO within the handshake timeout.
* :class:`Limits`: the sizes and counts a broker holds any one peer to (max_message_size,
  connections, queued tasks per client, the handshake timeout).
"""

from __future__ import annotations

import collections
import logging
import os
import resource
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse  # (annotations only)

import zmq

from ..errors import ProtocolError
from ..wire import protocol as P
from ..wire.validate import DEFAULT_MAX_MESSAGE_SIZE
from .ledger import LOCAL, ClientState

__all__ = ["Connections", "Guard", "Limits", "add_limit_options", "limits_of", "write_nowait"]

log = logging.getLogger("scoopexec.broker")


@dataclass(frozen=True)
class Limits:
    """What one broker allows any one peer (see the module docstring; max_message_size is
    the Broker's own argument, as it is the executor's).

    ``max_connections``: connections to its ROUTER at once (0: no limit); ``max_queued``:
    tasks one remote client may have in the broker at once (0: no limit);
    ``handshake_timeout``: seconds a connection may stay without saying HELLO (0: for ever).
    """

    max_connections: int = 0
    max_queued: int = 0
    handshake_timeout: float = 0.0

    def refuse_tasks(self, c: ClientState, n: int) -> list[Any] | None:
        """The frames of the FAILED result for each of ``n`` tasks ``c`` submits, if they would
        take it over max_queued (the client's other tasks go on); None if they are welcome."""
        if not self.max_queued or c.key == LOCAL or c.held + n <= self.max_queued:
            return None
        message = (
            f"the broker holds {c.held} task(s) of this client and accepts at most "
            f"max_queued={self.max_queued} from one client: {n} more were refused; wait for "
            "results before submitting more, or ask the broker's operator for a higher limit"
        )
        return [P.dump_json({"type": "TooManyTasks", "message": message, "kind": "limit"}), b""]


def describe_peer(key: bytes, peer: Any, ident: Any) -> str:
    """A peer, for a log line: its role and name when it said HELLO, its address when known."""
    who = f"peer {key.hex() or 'in-process'}"
    if peer is not None:
        info = peer.info
        who = f"{peer.role} {key.hex()} (pid {info.get('pid', '?')} on {info.get('host', '?')})"
    if ident is not None:
        try:
            who += f" from {ident.get('Peer-Address')}"
        except (zmq.ZMQError, AttributeError, TypeError, KeyError, UnicodeDecodeError):
            pass
    return who


class Guard:
    """Drops bad messages: counts them, answers where useful, logs them at a bounded rate."""

    def __init__(
        self,
        dropped: collections.Counter[str],
        send: Callable[[bytes, Sequence[Any]], None],
        peer_of: Callable[[bytes], Any],
        *,
        burst: int = 10,
        interval: float = 60.0,
    ) -> None:
        self.dropped = dropped
        self.send = send
        self.peer_of = peer_of
        self.burst = burst
        self.interval = interval
        self.logged = 0  # lines written in the current interval
        self.unlogged = 0  # drops not written since the last line
        self._window = 0.0  # monotonic start of the current interval

    def refuse(self, key: bytes, ident: Any, exc: BaseException) -> None:
        """The message from ``key`` raised ``exc``: drop it (the loop goes on)."""
        if isinstance(exc, P.VersionMismatch):
            self.dropped["version"] += 1
            self.send(key, [P.header(P.ERROR), str(exc).encode()])
            self.note(key, ident, str(exc))
        elif isinstance(exc, ProtocolError):
            self.dropped["malformed"] += 1
            self.note(key, ident, str(exc))
        elif isinstance(
            exc, (ValueError, KeyError, TypeError, OverflowError, UnicodeDecodeError, IndexError)
        ):
            self.dropped["malformed"] += 1
            self.note(key, ident, f"{type(exc).__name__}: {exc}")
        else:  # the broker's own bug, met on one peer's message: say so, with the traceback
            self.dropped["internal error"] += 1
            self.note(key, ident, f"{type(exc).__name__}: {exc}", exc)

    def note(self, key: bytes, ident: Any, what: str, exc: BaseException | None = None) -> None:
        """Log one dropped message, unless ``burst`` were logged in this interval already."""
        now = time.monotonic()
        if now - self._window >= self.interval:
            self._window, self.logged = now, 0
        if self.logged >= self.burst:
            self.unlogged += 1
            return
        self.logged += 1
        more = f" ({self.unlogged} more dropped, not logged)" if self.unlogged else ""
        self.unlogged = 0
        who = describe_peer(key, self.peer_of(key), ident)
        log.warning(
            "dropped a message from %s: %s%s", who, what[:500], more,
            exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
        )  # fmt: skip


def write_nowait(stream: Any, data: bytes) -> bool:
    """Write ``data`` to ``stream`` (the broker's stdout or stderr) unless that would block:
    False when the reader does not keep up (what is left is dropped).  A stream with no
    file descriptor (a notebook's, pytest's capture) is written as text."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        stream.write(data.decode("utf-8", "replace"))
        return True
    try:
        stream.flush()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        view = memoryview(data)
        while view:
            if not poll.poll(0):
                return False
            # At most PIPE_BUF bytes: a pipe that polls writable takes them without blocking.
            view = view[os.write(fd, view[: select.PIPE_BUF]) :]
    except (OSError, ValueError):
        return False
    return True


class Connections:
    """The connections of a ROUTER, by file descriptor, as its monitor reports them.

    ZeroMQ offers no call to close one connection of a ROUTER; shutting down the socket
    under a descriptor (a duplicate of it, after checking that it is still the same peer)
    makes ZeroMQ see the connection end and close it as it would any other.
    """

    def __init__(self, limits: Limits, dropped: collections.Counter[str]) -> None:
        self.limits = limits
        self.dropped = dropped
        self.open: dict[int, tuple[float, Any]] = {}  # fd -> (accepted at, the peer's address)
        self.waiting: set[int] = set()  # fds on which no HELLO came yet
        # fds on which a HELLO came: it can be read before the monitor reports the accept
        self.greeted: set[int] = set()

    def accepted(self, fd: int) -> None:
        self.open[fd] = (time.monotonic(), _peer_name(fd))
        if fd not in self.greeted:
            self.waiting.add(fd)
        cap = self.limits.max_connections
        if cap and len(self.open) > cap:
            self.cut(fd, "too many connections", f"more than max_connections={cap}")

    def closed(self, fd: int) -> None:
        self.open.pop(fd, None)
        self.waiting.discard(fd)
        self.greeted.discard(fd)

    def hello(self, fd: int) -> None:
        self.waiting.discard(fd)
        self.greeted.add(fd)

    def expire(self, now: float) -> None:
        """On a tick: cut the connections that said no HELLO within the handshake timeout."""
        limit = self.limits.handshake_timeout
        if limit > 0:
            for fd in [fd for fd in self.waiting if now - self.open[fd][0] > limit]:
                self.cut(fd, "handshake timeout", f"no HELLO within {limit:g} s")

    def cut(self, fd: int, reason: str, why: str) -> None:
        entry = self.open.pop(fd, None)
        self.waiting.discard(fd)
        self.greeted.discard(fd)
        self.dropped[reason] += 1
        if entry is None:
            return
        try:
            with socket.socket(fileno=os.dup(fd)) as s:
                if s.getpeername() == entry[1]:  # the descriptor still holds that connection
                    s.shutdown(socket.SHUT_RDWR)
                    log.warning("closed the connection from %s: %s", entry[1] or "a local peer", why)
        except OSError:
            pass  # gone already, or no descriptor to spare: its own end will come


def _peer_name(fd: int) -> Any:
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            return s.getpeername()
    except OSError:
        return None


# A standalone broker's defaults (an embedded one serves its own client: no limit but the size).
DEFAULT_MAX_QUEUED = 1_000_000
DEFAULT_HANDSHAKE_TIMEOUT = 30.0


def _default_connections() -> int:
    """Half the descriptors this process may open: connections alone cannot exhaust them."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(1, soft // 2) if soft != resource.RLIM_INFINITY else 100_000


def add_limit_options(ap: argparse.ArgumentParser) -> None:
    """``python -m scoopexec broker``'s options for the limits it holds peers to."""
    ap.add_argument(
        "--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE_SIZE, metavar="BYTES",
        help="frames larger than this (plus 1 MiB) are refused; -1: no limit (default: 1 GiB)",
    )  # fmt: skip
    ap.add_argument(
        "--max-connections", type=int, default=_default_connections(), metavar="N",
        help="connections accepted at once; more are closed (default: half the open-file limit)",
    )  # fmt: skip
    ap.add_argument(
        "--max-queued", type=int, default=DEFAULT_MAX_QUEUED, metavar="N",
        help="tasks one client may have in the broker; more fail with an error (0: no limit)",
    )  # fmt: skip
    ap.add_argument(
        "--handshake-timeout", type=float, default=DEFAULT_HANDSHAKE_TIMEOUT, metavar="S",
        help="close a connection that says no HELLO within S seconds (0: never)",
    )  # fmt: skip


def limits_of(args: argparse.Namespace) -> Limits:
    return Limits(
        max_connections=max(0, args.max_connections),
        max_queued=max(0, args.max_queued),
        handshake_timeout=max(0.0, args.handshake_timeout),
    )
