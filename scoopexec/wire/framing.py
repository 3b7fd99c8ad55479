"""How messages travel: over a socketpair (Link), and how a loop is woken.

Every message is a list of frames (protocol.py says what they hold); this module moves such
lists and opens no listening socket itself:

* :class:`Link`: messages over a connected AF_UNIX stream socket, for the workers an embedded
  broker starts on its own machine;
* over ZeroMQ, zmqsock.py's :func:`~scoopexec.wire.zmqsock.zmq_send` and
  :func:`~scoopexec.wire.zmqsock.zmq_receive` (kept apart: a local worker never loads zmq);
* :class:`WakePipe`: the self-pipe through which other threads wake a loop sleeping in poll.

Local links
-----------

ZeroMQ moves every message through an I/O thread on each side.  Between two
processes of one machine that is four extra thread wake-ups per round trip,
most of the gap to ProcessPoolExecutor's pipes (benchmarks/README.md, "Where
the time goes").  So the workers a ScoopExecutor starts on its own machine get
one end of a socketpair instead of an ipc endpoint, and the broker thread
polls the other end next to its ROUTER socket.  Nothing else changes: the same
protocol.py messages travel, frame for frame.

One message on the wire::

    u32 number of frames n | n x u64 frame lengths | the frames' bytes

Small frames are read in batches and cut out as bytes; a frame of
BIG bytes or more is read straight into a buffer of its own (``BigFrame``),
taken from a small per-process pool of buffers that nothing references any
more, so that repeated large arrays do not pay for fresh pages each time.

Liveness needs no heartbeat messages here: end of file on the socket is the
process exiting (or closing it), and the broker watches a local worker's
process state for a worker that stopped (SIGSTOP) or hangs in the kernel,
which is what ZeroMQ's heartbeats detected on the ipc link.
"""

from __future__ import annotations

import array
import collections
import mmap
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from itertools import accumulate, islice, pairwise
from typing import Any

from ..errors import ProtocolError
from .segments import (
    ANCILLARY,
    DESCRIPTOR,
    MAX_FDS,
    NOTE,
    SHARED,
    SHARED_FROM,
    Segments,
    available,
    received_fds,
)

COUNT = struct.Struct("<I")
# A peer gone is an EPIPE error, never SIGPIPE (a program may have restored its default action).
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_LENGTHS: dict[int, struct.Struct] = {}
_CTRUNC = int(getattr(socket, "MSG_CTRUNC", 0))  # (a plain int: an IntFlag's & is Python code)
BIG = 1 << 20  # frames this large get a buffer of their own, filled in place
READ_SIZE = 1 << 18
MAX_FRAMES = 1 << 20
HEADROOM = 1 << 20  # what a receiver takes beyond max_message_size in one frame (see validate.py)
IOV_MAX = 512  # buffers handed to one sendmsg call (the kernel allows 1024)
JOIN_BELOW = 1 << 16  # bytes up to which a message's frames are sent as one buffer
PUSH_WAIT = 0.002  # s a non-blocking sender waits for room while its peer keeps reading
POOL_BUFFERS = 4  # large receive buffers a process keeps for reuse ...
POOL_IDLE_BYTES = 256 << 20  # ... holding at most this much memory while unused ...
POOL_IDLE_SECONDS = 10.0  # ... and for at most this long


class BigFrame(mmap.mmap):
    """A large received frame in an anonymous mapping of exactly its size (writable)."""

    @property
    def bytes(self) -> bytes:
        return self[:]


if hasattr(mmap, "MAP_POPULATE"):  # fault every page in with one call, not one fault each
    _FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
else:  # pragma: no cover - not Linux
    _FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


def _references(entry: list[Any]) -> int:
    """How many references the buffer of a pool entry ([buffer, last handed out]) has."""
    return sys.getrefcount(entry[0])


# What _references() counts for a buffer that only its entry refers to, measured with the same
# function instead of assumed: a local name passed to getrefcount() is counted on 3.11-3.13 and
# not from 3.14 (borrowed), so the former fixed bound read a buffer that a caller still held as
# unused on 3.14, and the next frame overwrote the caller's data.
_UNUSED = _references([object(), 0.0])


class BufferPool:
    """Large receive buffers, reused once nothing but the pool refers to them.

    A received array lives in its BigFrame; when the task (or the caller) drops
    the array, the frame's reference count falls back to the pool's own, and
    the next frame of the same size is read into it: no fresh pages to fault
    in, which costs more than the copy itself (~40 ms for 64 MiB here).  The
    pool holds at most `keep` buffers, at most `idle_bytes` of them unused, and
    none unused for longer than `idle_seconds` (see expire()).
    """

    def __init__(
        self,
        keep: int = POOL_BUFFERS,
        idle_bytes: int = POOL_IDLE_BYTES,
        idle_seconds: float = POOL_IDLE_SECONDS,
    ) -> None:
        self.keep = keep
        self.idle_bytes = idle_bytes
        self.idle_seconds = idle_seconds
        self._entries: list[list[Any]] = []  # [buffer, last handed out], oldest first
        self._lock = threading.Lock()
        self.reused = 0
        self.allocated = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, size: int) -> BigFrame:
        with self._lock:
            now = time.monotonic()
            for i, entry in enumerate(self._entries):
                # No local name may hold the buffer while its references are counted.
                if len(entry[0]) == size and _references(entry) <= _UNUSED:
                    del self._entries[i]
                    entry[1] = now
                    self._entries.append(entry)
                    self.reused += 1
                    return entry[0]  # type: ignore[no-any-return]
            buf = BigFrame(-1, size, flags=_FLAGS)
            self.allocated += 1
            self._entries.append([buf, now])
            self._trim(now)
            return buf

    def detach(self, buf: Any) -> None:
        """Take ``buf`` out of the pool: its holder keeps it (a worker's large function frame,
        wire/fnframes.py), and a buffer in use would count against the pool for good."""
        with self._lock:
            self._entries = [e for e in self._entries if e[0] is not buf]

    def expire(self) -> None:
        """Let go of buffers unused for longer than idle_seconds (cheap when there are none)."""
        if self._entries:
            with self._lock:
                self._trim(time.monotonic())

    def _trim(self, now: float) -> None:
        entries = self._entries
        del entries[: max(0, len(entries) - self.keep)]
        idle = 0
        for i in range(len(entries) - 1, -1, -1):
            if _references(entries[i]) <= _UNUSED:
                idle += len(entries[i][0])
                if idle > self.idle_bytes or now - entries[i][1] > self.idle_seconds:
                    del entries[i]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


POOL = BufferPool()


def _lengths(n: int) -> struct.Struct:
    st = _LENGTHS.get(n)
    if st is None:
        st = struct.Struct(f"<{n}Q")
        if n <= 64:
            _LENGTHS[n] = st
    return st


def _rights(fds: list[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def _view(f: Any) -> memoryview:
    m = memoryview(f)
    if m.ndim != 1 or m.format not in ("B", "b", "c"):
        m = m.cast("B")
    return m


class Link:
    """One end of a socketpair carrying framed messages; non-blocking.

    The broker owns one per local worker and sends without ever waiting:
    what the socket cannot take now waits in `pending` until it is writable
    (`wants_write`).  A worker owns the other end and, having nothing else to
    do meanwhile, waits for room when it sends (`blocking_send`).
    """

    def __init__(
        self, sock: socket.socket, *, blocking_send: bool = False, pool: BufferPool = POOL,
        max_frame: int = -1, shared: bool = True,
    ) -> None:  # fmt: skip
        sock.setblocking(False)
        self.max_frame = max_frame  # a longer frame announced is an error, not an allocation (-1: none)
        self.sock = sock
        self.fd = sock.fileno()
        self.blocking_send = blocking_send
        self.pool = pool
        self.eof = False
        self.closed = False
        self._buf = bytearray()  # the start of a message whose rest has not arrived
        # Reads land here: a fresh bytes object per recv of READ_SIZE would cost an
        # mmap, an mremap and an munmap each time (it is above malloc's mmap threshold).
        # Anonymous memory, whose pages the kernel provides as reads first reach them: a
        # bytearray's were all zeroed at once (64 page faults, ~0.1 ms, before a worker's
        # first message, and on the broker's side for each worker).
        self._rbuf = mmap.mmap(-1, READ_SIZE)
        self._rview = memoryview(self._rbuf)
        self._rbufs = [self._rbuf]  # (recvmsg_into's argument, made once)
        self._lens: tuple[int, ...] | None = None
        self._next = 0  # index in _lens of the frame being read
        self._frames: list[Any] = []
        self._big: BigFrame | None = None
        self._big_view: memoryview | None = None
        self._big_fill = 0
        self._out: collections.deque[memoryview] = collections.deque()
        # Large frames through shared memory (segments.py); both ends of a link must agree.
        self.seg = Segments() if shared and available() else None
        self._fds = False  # reads use recvmsg (the other end said EXPECT: segments.py)

    # --------------------------------------------------------------- receive
    def receive(self, limit: int = 1000) -> list[list[Any]]:
        """Read what the socket holds now and return the complete messages (sets `eof`)."""
        msgs: list[list[Any]] = []
        while len(msgs) < limit and not self.eof:
            big = self._big_view
            if big is not None:
                try:
                    n = self._recv(big[self._big_fill :])
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    n = 0
                if n == 0:
                    self.eof = True
                    break
                self._big_fill += n
                if self._big_fill == len(big):
                    big.release()
                    self._big_view = None
                    self._frames.append(self._big)
                    self._big = None
                    self._parse(memoryview(b""), msgs)
                continue
            try:
                if not self._fds:
                    n = self.sock.recv_into(self._rbuf)
                else:  # (inlined: the path of every small message)
                    n, anc, flags, _ = self.sock.recvmsg_into(self._rbufs, ANCILLARY)
                    if anc or flags:
                        self._took(anc, flags)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                n = 0
            if not n:
                self.eof = True
                break
            self._parse(self._rview[:n], msgs)
            if n < READ_SIZE and self._big is None:
                break  # the socket had no more: save a recv that would only say so
        return msgs

    def _recv(self, buf: Any) -> int:
        if not self._fds:
            return self.sock.recv_into(buf)
        # A new segment's descriptor may ride on any bytes now (segments.py): recv_into would drop it.
        n: int
        n, anc, flags, _ = self.sock.recvmsg_into([buf], ANCILLARY)
        if anc or flags:
            self._took(anc, flags)
        return n

    def _took(self, anc: list[tuple[int, int, bytes]], flags: int) -> None:
        """What a recvmsg brought besides bytes: descriptors of new segments, or their loss."""
        assert self.seg is not None
        received_fds(anc, self.seg.fds_in)
        if len(self.seg.fds_in) > 4 * MAX_FDS:
            raise ProtocolError("descriptors sent on a local link and never used")
        if flags & _CTRUNC:
            raise ProtocolError(
                "descriptors sent on a local link were lost on the way in (more at once than it "
                "takes, or this process is out of open files: see `ulimit -n`)"
            )

    def _parse(self, data: memoryview, msgs: list[list[Any]]) -> None:
        """Cut messages from what is buffered plus `data` (a view of the read buffer)."""
        if self._buf:
            self._buf += data
            with memoryview(self._buf) as mv:
                pos = self._cut(mv, msgs)
            del self._buf[:pos]
        else:
            pos = self._cut(data, msgs)
            if pos < len(data):
                self._buf += data[pos:]

    def _cut(self, mv: memoryview, msgs: list[list[Any]]) -> int:
        """Take messages from `mv`; return how many bytes were used."""
        pos, end = 0, len(mv)
        while True:
            lens = self._lens
            if lens is None:
                if end - pos < 4:
                    return pos
                (n,) = COUNT.unpack_from(mv, pos)
                if not n:  # a note about segments
                    used = self._note(mv, pos, end)
                    if not used:
                        return pos
                    pos += used
                    continue
                if n > MAX_FRAMES:
                    raise ProtocolError(f"a message of {n} frames on a local link")
                need = 4 + 8 * n
                if end - pos < need:
                    return pos
                lens = self._lens = _lengths(n).unpack_from(mv, pos + 4)
                self._next = 0
                pos += need
            i, count = self._next, len(lens)
            if not i and count > 2 and max(lens) < BIG:  # (a batch of small frames: cut in one go)
                stops = list(accumulate(lens, initial=pos))
                if stops[-1] <= end:  # the whole message is here
                    msgs.append([mv[a:b].tobytes() for a, b in pairwise(stops)])
                    pos = stops[-1]
                    self._lens = None
                    continue
            frames = self._frames
            while i < count:
                ln = lens[i]
                if ln >= SHARED:  # in a segment: its descriptor on the wire
                    if self.seg is None:
                        raise ProtocolError("a frame in shared memory on a link without them")
                    if end - pos < DESCRIPTOR.size:
                        break
                    desc = mv[pos : pos + DESCRIPTOR.size]
                    frames.append(self.seg.frame(ln ^ SHARED, desc, self.max_frame))
                    pos += DESCRIPTOR.size
                    i += 1
                    continue
                if ln >= BIG:
                    if 0 < self.max_frame < ln:
                        raise ProtocolError(f"a frame of {ln} bytes, more than the limit of {self.max_frame}")
                    try:
                        buf = self.pool.get(ln)
                    except (OSError, ValueError, OverflowError, MemoryError) as exc:
                        raise ProtocolError(f"a frame of {ln} bytes cannot be received here: {exc}") from exc
                    have = min(end - pos, ln)
                    buf[:have] = mv[pos : pos + have]
                    pos += have
                    i += 1
                    if have < ln:  # the rest is read straight into it (receive)
                        self._big, self._big_view, self._big_fill = buf, memoryview(buf), have
                        self._next = i
                        return pos
                    frames.append(buf)
                    continue
                if end - pos < ln:
                    break
                # Plain bytes: a bytes subclass would be made in two steps (a bytes object,
                # then a copy of it into the subclass's), on every frame received.
                frames.append(mv[pos : pos + ln].tobytes())
                pos += ln
                i += 1
            self._next = i
            if i < count:
                return pos
            msgs.append(frames)
            self._frames = []
            self._lens = None

    def _note(self, mv: memoryview, pos: int, end: int) -> int:
        """Act on the note at `pos`; how many bytes it took (0: not all here yet)."""
        if self.seg is None:
            raise ProtocolError("a message of 0 frames on a local link")
        if end - pos < NOTE.size:
            return 0
        kind: int
        k: int
        _, kind, k = NOTE.unpack_from(mv, pos)
        if k > 4096:
            raise ProtocolError(f"a note about {k} segments on a local link")
        need = NOTE.size + 4 * k
        if end - pos < need:
            return 0
        self.seg.note(kind, struct.unpack_from(f"<{k}I", mv, pos + NOTE.size))
        self._fds = self.seg.expecting
        return need

    # ------------------------------------------------------------------ send
    def send(self, frames: Sequence[Any]) -> bool:
        """Send one message; False when part of it waits for the socket (see `wants_write`)."""
        if self.closed:
            raise BrokenPipeError("the link is closed")
        sizes = [len(f) if f.__class__ is bytes else _view(f).nbytes for f in frames]  # (no isinstance call)
        seg = self.seg
        if seg is not None and (
            seg.fds_out or max(sizes, default=0) >= SHARED_FROM or (seg.held and seg.look())
        ):  # (held segments looked at, at most every LOOK_EVERY: they go back to their owner)
            return self._send_shared(seg, frames, sizes)
        n = len(frames)
        head = COUNT.pack(n) + _lengths(n).pack(*sizes)
        total = len(head) + sum(sizes)
        if n > 2 and total <= JOIN_BELOW:  # many small frames (a batch of tasks, of results): copied
            frames = [b"".join(frames)]  # into one, cheaper than sendmsg's look at each buffer it is given
        if not self._out and len(frames) < IOV_MAX:  # (the common case, inlined)
            try:
                sent = self.sock.sendmsg([head, *frames], (), _NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent == total:
                return True
            self._queue([memoryview(head), *(_view(f) for f in frames)], sent)
            return self._wait_out()
        return self._put(head, frames, total)

    def _send_shared(self, seg: Segments, frames: Sequence[Any], sizes: list[int]) -> bool:
        """send(), for a message with frames large enough for a segment (segments.py), or
        while a new segment's descriptor waits to go.  Until the kernel has the message or it
        is queued, an exception (an interrupt, a send error) undoes what it did to segments."""
        if seg.held:
            seg.check_held()  # released before this message: the other end may use them for it
        try:
            if max(sizes, default=0) >= SHARED_FROM:
                views = [_view(f) if s >= SHARED_FROM else None for f, s in zip(frames, sizes, strict=True)]
                frames = seg.place(frames, sizes, views, not self._out)
            n = len(frames)
            head = seg.notes() + COUNT.pack(n) + _lengths(n).pack(*sizes)
            total = len(head) + sum(s if s < SHARED else DESCRIPTOR.size for s in sizes)
            if n > 2 and total <= JOIN_BELOW:
                frames = [b"".join(frames)]
            return self._put(head, frames, total, seg)
        except BaseException:
            seg.undo()  # (nothing left to undo once _put committed)
            raise

    def _put(self, head: bytes, frames: Sequence[Any], total: int, placed: Segments | None = None) -> bool:
        """Send or queue a message; ``placed``: the segments whose place() made it, told once
        the message is the kernel's or queued (commit), or that it is not (undo)."""
        seg = self.seg
        sent = 0
        queued = False
        try:
            if not self._out and len(frames) < IOV_MAX:
                anc = _rights(seg.fds_out) if seg is not None and seg.fds_out else ()
                try:
                    sent = self.sock.sendmsg([head, *frames], anc, _NOSIGNAL)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                if anc and sent:
                    seg.sent_fds()  # type: ignore[union-attr]
                if sent == total:
                    if placed is not None:
                        placed.commit()
                    return True
                views = [memoryview(head), *(_view(f) for f in frames)]
                self._queue(views, sent)
            else:
                self._queue([memoryview(head), *(_view(f) for f in frames)], 0)
            queued = True
        except BaseException:
            if placed is not None:
                # Undone only if none of it reached the kernel or the queue; else the other end
                # has (part of) it: its books stay as sent (a message cut short ends the link).
                if sent > 0 or queued:
                    placed.commit()
                else:
                    placed.undo()
            raise
        if placed is not None:
            placed.commit()
        return self._wait_out()

    def _wait_out(self) -> bool:
        if self.blocking_send:
            while not self.flush(1.0):
                pass
            return True
        return self.flush(PUSH_WAIT)

    def _queue(self, views: list[memoryview], skip: int) -> None:
        out = self._out
        for v in views:
            n = v.nbytes
            if skip >= n:
                skip -= n
                continue
            out.append(v[skip:] if skip else v)
            skip = 0

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def flush(self, wait: float = 0.0) -> bool:
        """Send what waits, as far as the socket takes it; True when nothing is left.

        With `wait`, a full socket is given up to that many seconds to make room
        (again after every bit of progress): a peer that is reading takes a large
        message in one go instead of one socket buffer per turn of the caller's loop.
        """
        out = self._out
        poller = None
        seg = self.seg
        while out:
            anc = _rights(seg.fds_out) if seg is not None and seg.fds_out else ()
            try:
                sent = self.sock.sendmsg(list(islice(out, IOV_MAX)), anc, _NOSIGNAL)
                if anc and sent:
                    seg.sent_fds()  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                if wait <= 0:
                    return False
                if poller is None:
                    poller = select.poll()
                    poller.register(self.fd, select.POLLOUT)
                if not poller.poll(max(1, int(wait * 1000))):
                    return False
                continue
            while sent:
                v = out[0]
                if sent >= v.nbytes:
                    sent -= v.nbytes
                    out.popleft()
                else:
                    out[0] = v[sent:]
                    sent = 0
        return True

    def settle(self, now: float | None = None) -> float:
        """Tell the other end which of its segments this end no longer uses, and let go of
        our own long free; seconds until one would be let go (-1: none free).  For a
        worker about to wait, and the broker's tick."""
        seg = self.seg
        if seg is None or self.closed or not (seg.held or seg.own or seg.pending):
            return -1.0  # (the path of every worker about to wait for its next task)
        if seg.held:
            seg.check_held()
        nxt = seg.expire(time.monotonic() if now is None else now)
        if seg.pending and not self.eof:
            notes = seg.notes()
            self._put(notes, (), len(notes), seg)
        return nxt

    def close(self, drain: float = 0.0) -> None:
        """Close; with `drain`, first give what waits that many seconds to leave."""
        if self.closed:
            return
        if drain > 0 and self._out and not self.eof:
            try:
                self.flush(drain)  # gives up after `drain` s without progress
            except OSError:
                pass
        self.closed = True
        self._out.clear()
        if self.seg is not None:
            self.seg.close()
        if self._big_view is not None:
            self._big_view.release()
            self._big_view = None
        try:
            # Wakes a thread polling this socket (broker/leader.py) while its descriptor still
            # names it: poll() looks a descriptor up again when woken, and once closed, the
            # number may already name another file, on which that thread would sleep.
            # (Not always, seen on Linux 6.18 under load: that thread also polls in slices.)
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# ------------------------------------------------------------------ waking
class WakePipe:
    """A self-pipe that wakes one poll loop; any thread may call wake().

    The loop polls ``fd`` and, each time poll reports it readable, calls
    drain() *before* it looks at what it was woken for.  wake() writes a byte
    only when none is pending (``pending``), which saves the syscall on busy
    paths.  The order is what makes it safe under any interleaving:

    - drain() empties the pipe and only then clears ``pending``: a wake()
      that runs between the two sees ``pending`` still set and writes
      nothing, but what it queued before calling wake() is seen, because the
      loop looks after drain() returns;
    - a wake() after drain() writes a byte, so poll returns again;
    - the loop drains whenever the pipe is readable, whatever ``pending``
      says, so a byte written by a wake() whose flag drain() already cleared
      is read on the next turn instead of leaving poll readable for ever
      (the 100 %-CPU spin of issue 18: the old code read the pipe only while
      the flag was set).
    """

    __slots__ = ("_w", "fd", "pending")

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        self.pending = False

    def wake(self) -> None:
        """Make the loop's poll return (thread-safe, cheap when a wake is already pending)."""
        if not self.pending:
            self.pending = True
            try:
                os.write(self._w, b"x")
            except OSError:  # full: it is readable anyway; closed: nobody polls any more
                pass

    def drain(self) -> None:
        """Empty the pipe, then allow the next wake() to write (the loop's thread only)."""
        try:
            while len(os.read(self.fd, 4096)) == 4096:
                pass
        except OSError:  # empty (BlockingIOError), or closed
            pass
        self.pending = False

    def close(self) -> None:
        """Close both ends; later wake() calls do nothing."""
        self.pending = True  # first: a late wake() must not write to a reused fd
        fds, self.fd, self._w = (self.fd, self._w), -1, -1
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
