"""A large function frame reaches each worker once, not with every task.

A function of the script travels by value (cloudpickle) with the globals it reads, so a
task function that reads a 20 MB array of the script makes a 20 MB frame.  Sent with
every task, that cost a map of 200 items 3.1 s where ProcessPoolExecutor, whose forked
workers look the function up by name, takes 0.02 s.  The bytes are the same from one
task to the next (a map pickles its function once; submits of an unchanged function
pickle to the same bytes), so:

* the client (serialize.encode_function) marks a function frame of :data:`MIN_SIZE` bytes
  or more, a map's, or a submit's of a callable that went with a large frame before (not a
  callable made for one call, such as a partial around its data or joblib's batch: workers
  would hold data they never see again): :func:`mark` puts before the pickle a zero byte
  and an id (17 bytes,
  :data:`HEAD`; a pickle starts with PROTO, 0x80, never 0).  The id stands for those exact
  bytes: the frames marked lately are kept, and a pickle equal to one of them, byte for
  byte, gets that frame again; any other gets a new id, never used before by any process
  (8 random bytes drawn per process, and in each forked child, then a count);
* the broker (ledger.task_entries) keeps, for each worker, the keys (set-up id, head) of
  the marked frames it sent it whole, as the worker keeps them: :class:`Held`, the same
  rule on both sides, applied to the same frames in the same order (those of the TASKS
  messages of one link).  A marked frame the worker holds goes as its head alone;
* the worker (worker.py) keeps each marked frame it receives whole, and puts the frame
  back in place of a head.  A plain function (or a map's chunks of one) is unpickled once
  and re-used by that key, without hashing megabytes per task; any other callable is
  unpickled from the held bytes for every task, as before.

Nothing changes for the task: the worker unpickles exactly the bytes the client pickled.
What a worker holds is bounded (:data:`HELD_FRAMES`, :data:`HELD_BYTES`; the newest
always stays, however large, until others replace it or the pool ends), and so is what a
client keeps (:data:`RECENT`, HELD_BYTES, none larger; until :data:`RECENT_SECONDS` unused
with an embedded broker, or until any pool of the process ends: forget()); a submit's frame
larger than HELD_BYTES is not marked (a new id each time would push out what workers hold).
A worker keeps none of the frames it marks, and marks only its maps' functions.  A large
frame that goes unmarked is not kept by the worker either (serialize.loads_function, the
worker's run-time estimates): it was made for one call.

If the two sides ever disagree (a message lost on a reconnection), the worker hands the
tasks back with RETURN arg 1 and the broker forgets what it thought the worker held, so
frames go whole again; a HELLO again (resync) forgets it too.  The key has the set-up id
of the task's client: one client's frames never stand for another's.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

__all__ = [
    "HEAD", "HELD_BYTES", "HELD_FRAMES", "MIN_SIZE", "RECENT", "RECENT_SECONDS", "Held", "expire", "forget",
    "head_of", "mark", "retain", "retaining",
]  # fmt: skip

MIN_SIZE = 256 << 10  # bytes of a function frame from which it is marked
HEAD = 17  # the mark: a zero byte, then a 16-byte id
HELD_FRAMES = 4  # marked frames a worker keeps ...
HELD_BYTES = 256 << 20  # ... holding at most this much, but for the newest one
RECENT = 4  # marked frames a client keeps for mark() (none in a worker) ...
RECENT_SECONDS = 30.0  # ... and for at most this long unused (expire(), or until forget())


def mark(data: bytes) -> bytes:
    """``data`` (a function's pickle) with a head before it: the frame marked lately with
    the same bytes (a comparison: 1 ms for 20 MB), or a new one (a copy behind a new id)."""
    size = len(data) + HEAD
    now = time.monotonic()
    with _lock:
        recent = _recent
        for i, (frame, _) in enumerate(recent):
            if len(frame) == size and frame.endswith(data):
                del recent[i]
                recent.append((frame, now))  # (the most recently used last)
                return frame
        frame = b"".join((b"\x00", _prefix, next(_count).to_bytes(8, "little"), data))
        if not _retain or size > HELD_BYTES:  # (none larger than that: a broker= client never expires them)
            return frame
        recent.append((frame, now))
        total = sum(len(f) for f, _ in recent)
        while len(recent) > 1 and (len(recent) > RECENT or total > HELD_BYTES):
            total -= len(recent.pop(0)[0])
        return frame


_lock = threading.Lock()
_recent: list[tuple[bytes, float]] = []  # the frames marked lately, when last used, the latest last
_retain = True  # whether mark() keeps them (retain())
_prefix = os.urandom(8)
_count = itertools.count(1)


def forget() -> None:
    """Let go of the frames mark() keeps (a client's pool ended)."""
    with _lock:
        _recent.clear()


def expire(now: float) -> None:
    """Let go of the frames mark() has not used for RECENT_SECONDS (an embedded broker's tick,
    in the client's process: cheap when none are kept)."""
    with _lock:
        if _recent and now - _recent[0][1] > RECENT_SECONDS:
            _recent[:] = [(f, t) for f, t in _recent if now - t <= RECENT_SECONDS]


def retaining() -> bool:
    """Whether mark() keeps the frames it makes (a client: a submit of the same bytes finds
    its frame among them; a worker's sub-tasks are marked only for a map)."""
    return _retain


def retain(on: bool) -> None:
    """Whether mark() keeps the frames it makes: a worker keeps none (worker/main.py), as
    nothing would tell it when to let go of them."""
    global _retain
    with _lock:
        _retain = on
        _recent.clear()


def _forked() -> None:
    """In a forked child: ids of its own (the parent's next ones are the parent's), and
    none of the parent's frames kept."""
    global _lock, _prefix, _count
    _lock = threading.Lock()
    _recent.clear()
    _prefix = os.urandom(8)
    _count = itertools.count(1)


os.register_at_fork(after_in_child=_forked)


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
