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

A function's large buffers (the NumPy arrays among the globals it reads) travel after its
pickle, not inside it (:data:`PACKED`): pickling the function for each submit or map then
costs 0.2 ms for 20 MB instead of 12-25 (the in-band pickle's copies), and :func:`mark`
compares the buffers where they lie (2 ms).  The worker unpickles over copies of them.

Nothing changes for the task: the worker unpickles exactly the bytes the client pickled,
and each unpickle gets buffers of its own, writable or read-only as they were.
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
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = [
    "HEAD", "HELD_BYTES", "HELD_FRAMES", "MAX_BUFFERS", "MIN_SIZE", "PACKED", "RECENT", "RECENT_SECONDS",
    "Held", "expire", "forget", "head_of", "mark", "pack_head", "pickle_of", "retain", "retaining", "unpack",
    "worth_a_look",
]  # fmt: skip

MIN_SIZE = 256 << 10  # bytes of a function frame from which it is marked
HEAD = 17  # the mark: a zero byte, then a 16-byte id
HELD_FRAMES = 4  # marked frames a worker keeps ...
HELD_BYTES = 256 << 20  # ... holding at most this much, but for the newest one
RECENT = 4  # marked frames a client keeps for mark() (none in a worker) ...
RECENT_SECONDS = 30.0  # ... and for at most this long unused (expire(), or until forget())


def mark(parts: Sequence[Any]) -> bytes:
    """The frame of ``parts`` (a function's pickle, or the parts of a packed one: pack_head())
    joined, with a head before it: the frame marked lately with the same bytes (a comparison
    without a copy: 2 ms for 20 MB), or a new one (a copy behind a new id)."""
    size = HEAD + sum(len(p) for p in parts)
    now = time.monotonic()
    with _lock:
        recent = _recent
        for i, (frame, _) in enumerate(recent):
            if len(frame) == size and _same(frame, parts):
                del recent[i]
                recent.append((frame, now))  # (the most recently used last)
                return frame
        ident = next(_count).to_bytes(8, "little")
        prefix = _prefix
    # The copy outside the lock (an embedded broker's tick takes it: expire()).
    frame = b"".join((b"\x00", prefix, ident, *parts))
    if not _retain or size > HELD_BYTES:  # (none larger than that: a broker= client never expires them)
        return frame
    with _lock:
        recent = _recent
        recent.append((frame, now))
        total = sum(len(f) for f, _ in recent)
        while len(recent) > 1 and (len(recent) > RECENT or total > HELD_BYTES):
            total -= len(recent.pop(0)[0])
        return frame


def _same(frame: bytes, parts: Sequence[Any]) -> bool:
    """Whether ``frame`` after its head is ``parts`` joined (memcmp: bytes.startswith at an
    offset; comparing memoryviews goes item by item, 30 times slower)."""
    at = HEAD
    for p in parts:
        if not frame.startswith(p, at):
            return False
        at += len(p)
    return True


# A packed function frame: its pickle's large buffers (NumPy arrays of the globals a function
# reads) after the pickle, not inside it.  Pickling them out of band costs a function reading a
# 20 MB array 0.2 ms instead of 12-25 (the in-band pickle's copies), and mark() compares the
# buffers where they are.  The worker unpickles over copies of them (unpack): each unpickle
# gets its own, writable (or read-only) as an in-band pickle would give.
PACKED = 1  # a packed frame's first byte (a pickle's is PROTO, 0x80; a marked frame's 0)
MAX_BUFFERS = 4096  # buffers a packed frame may have (a function with more is pickled in band)
_PACK = struct.Struct("<BIQ")  # PACKED, buffer count, the pickle's size
_BUF = struct.Struct("<QB")  # per buffer: size, read-only


def pack_head(pickled: bytes, raws: Sequence[memoryview]) -> bytes:
    """What goes before ``pickled`` and its out-of-band buffers ``raws`` (PickleBuffer.raw())
    in a packed frame: the frame is ``pack_head(...) + pickled + raws`` joined."""
    return _PACK.pack(PACKED, len(raws), len(pickled)) + b"".join(
        _BUF.pack(r.nbytes, r.readonly) for r in raws
    )


def _layout(data: Any) -> tuple[int, int, list[tuple[int, int]]]:
    """Where a packed frame's pickle starts and ends, and (size, read-only) of each buffer;
    ValueError if ``data`` is not a well-formed packed frame (a worker checks what it unpickles)."""
    n = len(data)
    if n < _PACK.size:
        raise ValueError("a packed function frame shorter than its head")
    kind, count, size = _PACK.unpack_from(data)
    at = _PACK.size + count * _BUF.size
    if kind != PACKED or count > MAX_BUFFERS or at > n:
        raise ValueError(f"a malformed packed function frame ({count} buffers in {n} bytes)")
    bufs = [_BUF.unpack_from(data, _PACK.size + i * _BUF.size) for i in range(count)]
    if at + size + sum(b[0] for b in bufs) != n or any(ro > 1 or not nb for nb, ro in bufs):
        raise ValueError(f"a malformed packed function frame (its sizes do not add up to {n} bytes)")
    return at, at + size, bufs


def pickle_of(data: Any) -> Any:
    """The pickle of a function frame: the frame itself, but for a packed one (a copy)."""
    if len(data) == 0 or data[0] != PACKED:
        return data
    start, end, _ = _layout(data)
    return bytes(memoryview(data)[start:end])


def unpack(data: Any) -> tuple[Any, list[Any]]:
    """A packed frame's pickle (a view) and copies of its buffers, to unpickle it with: a
    writable bytearray for a buffer pickled writable, bytes for a read-only one."""
    start, end, bufs = _layout(data)
    mv = memoryview(data)
    copies: list[Any] = []
    at = end
    for size, readonly in bufs:
        part = mv[at : at + size]
        copies.append(part.tobytes() if readonly else bytearray(part))
        at += size
    return mv[start:end], copies


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


def worth_a_look(size: int) -> bool:
    """Whether a function frame of ``size`` bytes may be marked (whole, or its head alone), so
    worth head_of(): the broker's per-task loop (ledger.task_entries) writes this test inline."""
    return size >= MIN_SIZE or size == HEAD


def head_of(frame: Any) -> bytes | None:
    """The head of a marked frame (whole, or the head alone), None for any other frame.
    Callers look only at frames worth_a_look() (cheap: len())."""
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
