"""The broker's guards: what it does with a message it cannot use, and the limits it enforces.

* :class:`Guard` turns the exception a bad message raised (protocol.decode, a check of
  wire/validate.py, a handler) into a count in ``ledger.dropped``, an ERROR back where
  that helps the peer (a version mismatch), and a log line naming the peer -- at most
  ``burst`` lines per ``interval`` seconds, so that a flood of bad messages cannot fill a
  disk; the lines not written are counted and reported with the next one.  The loop goes on.
* :func:`write_nowait`: output for nobody (a worker printing outside any client's task) on
  the broker's own stdout or stderr, without ever blocking the loop on a reader that
  does not read.
* :class:`Limits`: the sizes and counts a broker holds any one peer to (max_message_size,
  connections, queued tasks per client, the handshake timeout).
"""

from __future__ import annotations

import collections
import logging
import os
import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from ..errors import ProtocolError
from ..wire import protocol as P
from ..wire.validate import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["Guard", "Limits", "write_nowait"]

log = logging.getLogger("scoopexec.broker")


@dataclass(frozen=True)
class Limits:
    """What one broker allows (see the module docstring).

    ``max_message_size``: bytes in one frame (-1: no limit); ``max_connections``: peers
    connected to its ROUTER at once (0: no limit); ``max_queued``: tasks one client may
    have in the broker at once (0: no limit); ``handshake_timeout``: seconds a connection
    may stay without saying HELLO (0: for ever).
    """

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_connections: int = 0
    max_queued: int = 0
    handshake_timeout: float = 0.0


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
