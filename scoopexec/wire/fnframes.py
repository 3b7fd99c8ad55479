"""A large function frame reaches each worker once, not with every task.

A function of the script travels by value (cloudpickle) with the globals it reads, so a
task function that reads a 20 MB array of the script makes a 20 MB frame.  Sent with
every task, that cost a map of 200 items 3 s where ProcessPoolExecutor, whose forked
workers look the function up by name, takes 0.02 s.  The bytes are the same from one
task to the next (a map pickles its function once; submits of an unchanged function
pickle to the same bytes), so:

* the client (serialize.encode_function) marks a function frame of :data:`MIN_SIZE` bytes
  or more: :func:`mark` puts before the pickle a zero byte and a digest of it (17 bytes,
  :data:`HEAD`; a pickle starts with PROTO, 0x80, never 0);
* the broker (ledger.task_entries) keeps, for each worker, the keys (set-up id, head) of
  the marked frames it sent it whole, as the worker keeps them: :class:`Held`, the same
  rule on both sides, applied to the same frames in the same order (those of the TASKS
  messages of one link).  A marked frame the worker holds goes as its head alone;
* the worker (worker.py) keeps each marked frame it receives whole, and puts the frame
  back in place of a head.  Its unpickled function is re-used by that key, without
  hashing megabytes per task.

Nothing changes for the task: the worker unpickles exactly the bytes the client pickled.
What the worker holds is bounded (:data:`HELD_FRAMES`, :data:`HELD_BYTES`; the newest
always stays).  If the two sides ever disagree (a message lost on a reconnection), the
worker hands the task back with RETURN arg 1 and the broker forgets what it thought the
worker held, so the frame goes whole again; a HELLO again (resync) forgets it too.  The
key has the set-up id of the task's client: one client's frames never stand for
another's.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["HEAD", "HELD_BYTES", "HELD_FRAMES", "MIN_SIZE", "RECENT", "Held", "forget", "head_of", "mark"]

MIN_SIZE = 256 << 10  # bytes of a function frame from which it is marked (a digest costs 0.6 ms a MB)
HEAD = 17  # the mark: a zero byte, then 16 bytes of the pickle's SHA-256
HELD_FRAMES = 4  # marked frames a worker keeps ...
HELD_BYTES = 256 << 20  # ... holding at most this much, but for the newest one


def mark(data: bytes) -> bytes:
    """``data`` (a function's pickle) with its head before it.  The frames marked lately are
    kept (:data:`RECENT`, within HELD_BYTES but for the newest): an unchanged function's
    next pickle is one of them, found by comparing bytes (1 ms for 20 MB) instead of
    hashing them and copying them behind a head (36 ms)."""
    size = len(data) + HEAD
    recent = _recent
    for i, frame in enumerate(list(recent)):  # (a copy: other threads may submit too)
        if len(frame) == size and frame.endswith(data):
            if i < len(recent) - 1:
                recent.append(recent.pop(i))  # (the most recently used last)
            return frame
    frame = b"".join((b"\x00", hashlib.sha256(data).digest()[:16], data))
    recent.append(frame)
    total = sum(map(len, recent))
    while len(recent) > 1 and (len(recent) > RECENT or total > HELD_BYTES):
        total -= len(recent.pop(0))
    return frame


RECENT = 4  # marked frames a process keeps for mark() (until forget())
_recent: list[bytes] = []


def forget() -> None:
    """Let go of the frames mark() keeps (a client's pool ended)."""
    _recent.clear()


def head_of(frame: Any) -> bytes | None:
    """The head of a marked frame (whole, or the head alone), None for any other frame.
    Callers look only at frames of HEAD or MIN_SIZE bytes and more (cheap: len())."""
    with memoryview(frame) as mv:
        if len(mv) < HEAD or mv.ndim != 1 or mv.itemsize != 1 or mv[0] != 0:
            return None
        return mv[:HEAD].tobytes()


class Held:
    """The marked frames one worker holds, by (set-up id, head), least recently used first:
    the worker's own (with each frame's pickle), or the broker's account of them (without)."""

    __slots__ = ("entries", "nbytes")

    def __init__(self) -> None:
        self.entries: dict[tuple[int, bytes], tuple[int, Any]] = {}
        self.nbytes = 0

    def get(self, key: tuple[int, bytes]) -> tuple[int, Any] | None:
        """(size, pickle) of ``key``, now the most recently used; None if not held."""
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.entries[key] = entry
        return entry

    def add(self, key: tuple[int, bytes], size: int, value: Any = None) -> None:
        """Hold ``key`` (a frame of ``size`` bytes, head included), letting go of the least
        recently used while more than HELD_FRAMES or HELD_BYTES are held."""
        entries = self.entries
        old = entries.pop(key, None)
        if old is not None:
            self.nbytes -= old[0]
        entries[key] = (size, value)
        self.nbytes += size
        while len(entries) > 1 and (len(entries) > HELD_FRAMES or self.nbytes > HELD_BYTES):
            self.nbytes -= entries.pop(next(iter(entries)))[0]
