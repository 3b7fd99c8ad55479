"""Large frames through shared memory on a local link (framing.Link).

Through a socket, a frame is copied twice: into the kernel, then out of it into the
receiver's buffer; 64 MiB take 13-16 ms each way here, the socket's own limit.  A frame
that goes through shared memory is copied once, by its sender, into a segment that both
ends of the link keep mapped, and the receiver's frame *is* that mapping.

Segments
--------

A segment is a sealed memfd of exactly one frame's size (sealed: neither end can shrink
it under the other's mapping, which would be a SIGBUS on the next read).  The end that
made it owns it; the other end only maps it:

* **sending** a frame of SHARED_FROM bytes or more whose size this link has sent before
  (a one-off frame goes through the socket: a fresh segment's pages cost twice a fresh
  anonymous buffer's, 55 against 28 ms for 64 MiB here), the sender copies it into a
  segment of its own that is *free*, and sends in its place a descriptor ``<II`` (segment
  id, whether new), its length word marked with SHARED.  A new segment's descriptor
  travels with ancillary data (SCM_RIGHTS) on the same sendmsg, or on an earlier one;
  the segment is then *lent*;
* **receiving** one, the receiver maps the descriptor (the first time) and hands the
  mapping up as the frame.  Once nothing but its table refers to the mapping (the
  reference count, as framing.BufferPool does), it tells the owner with a RELEASE note
  the next time it sends, settles (``settle()``: a worker about to wait, the broker's
  tick) or expires; the owner may use the segment again;
* a frame larger than IDLE_BYTES always goes through the socket: its segment could not be
  kept, and a fresh one costs more than the socket's two copies;
* the owner keeps at most KEEP segments per link and PROCESS_SEGMENTS in all, and at
  most IDLE_BYTES of free ones in the whole process, none free for longer than
  IDLE_SECONDS: one it lets go of, it closes and names in a FORGET note, on which the
  other end unmaps it too.  With no segment to use, a frame goes through the socket.

A note is a message of zero frames on the link: ``u32 0 | u32 kind | u32 count |
count x u32 ids``.  Nothing above the link sees notes, descriptors or segments.

Reading with recvmsg
--------------------

A descriptor sent with SCM_RIGHTS rides on the bytes of its sendmsg, and a reader that
takes those bytes with recv_into loses it; recvmsg_into costs about 0.4 us more per read,
on the path of every small message.  So a reader uses recv_into until the other end has
sent EXPECT, a note that goes at the head of the first message with a frame of SHARED_FROM
bytes or more (sent through the socket: its size is new).  A sender makes a new segment
only when it announced EXPECT in an earlier message and nothing of an earlier message
waits to be sent: its descriptor then rides on the new message's own bytes, which start
at least one such large frame, read into its own buffer to its exact length, after the
note.  The read that took the note took at most framing.READ_SIZE bytes, less than that
frame: the reader saw the note before it reads the descriptor's bytes.  A link that never
carries a large frame reads with recv_into for good.

A receiver checks what it is given: the descriptor's id (known, or new with a
descriptor of the right size, seals and inode at hand), at most PEER_SEGMENTS mapped
per link, notes about segments in the state they name.  Anything else is a ProtocolError.

What can go wrong on the way, and what happens then:

* an exception between place() and the kernel taking the message (an interrupt, a send
  error) undoes what place() did (``undo``): its new segments are closed with their
  descriptors, the ones it lent are free again, its notes go with the next message.  A
  descriptor that strays all the same is skipped: a new segment's descriptor names the
  memfd's inode, and the receiver takes the received descriptor that has it;
* a receiver that cannot map a new segment (its descriptor arrived, but the mapping's
  duplicate of it did not fit under the open-file limit, before 3.13; or out of
  mappings) copies it instead, and says REFUSE: the owner closes that segment and makes
  no more on this link (those mapped already go on).  A receiver with no descriptor to
  spare at all loses the descriptor in the kernel (MSG_CTRUNC): that is still an error
  that closes the link, its message saying why (a pool's start makes room for the
  descriptors its links need: deploy/local.py);
* a process that forks while it holds segments of the other end (an array it received)
  would share their pages with the child, not copy them on write: those segments are
  pinned before the fork (``_pin``) and never handed back while the link lives.
"""

from __future__ import annotations

import array
import fcntl
import mmap
import os
import socket
import struct
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

from ..errors import ProtocolError

__all__ = [
    "DESCRIPTOR",
    "FDS_PER_LINK",
    "SHARED",
    "SHARED_FROM",
    "Segments",
    "SharedFrame",
    "available",
    "received_fds",
    "wanted",
]

SHARED = 1 << 63  # in a frame's length word: the frame is in a segment; its bytes are a descriptor
SHARED_FROM = 1 << 20  # frames this large may go through a segment
DESCRIPTOR = struct.Struct("<IIQ")  # segment id, 1 when new to the receiver, its inode (when new)
NOTE = struct.Struct("<III")  # 0 (no frames), kind, count of ids
RELEASE, FORGET, EXPECT, REFUSE = 1, 2, 3, 4
KEEP = 4  # segments one end of a link owns, at most
PEER_SEGMENTS = 16  # segments of the other end one end maps, at most
PROCESS_SEGMENTS = 32  # segments a process owns, at most (each holds a descriptor while mapped)
IDLE_BYTES = 256 << 20  # free segments a process keeps ...
IDLE_SECONDS = 10.0  # ... and for how long
MAX_NOTE_IDS = 1024
MAX_FDS = 8  # new segments in one message, at most (the receiver's ancillary buffer)
ANCILLARY = socket.CMSG_SPACE(MAX_FDS * 4) if hasattr(socket, "CMSG_SPACE") else 0
SIZES_KEPT = 16  # frame sizes a link remembers having sent
_SEALS = ("F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_SEAL")
_NO_RESIZE = getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(fcntl, "F_SEAL_GROW", 0)  # what a receiver needs
_SEALED = _NO_RESIZE | getattr(fcntl, "F_SEAL_SEAL", 0)  # what a sender sets
# Before 3.13 a mapping of a file keeps a duplicate of its descriptor open for as long as it
# lives: one per segment an end owns or maps.  From 3.13 it need not (trackfd=False).
_MAP: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}
FDS_PER_LINK = 0 if _MAP else KEEP  # descriptors the mappings of one worker's segments hold here


def available() -> bool:
    """Whether this platform has what segments need (Linux: memfd, seals, SCM_RIGHTS)."""
    return (
        hasattr(os, "memfd_create")
        and hasattr(os, "MFD_ALLOW_SEALING")
        and hasattr(fcntl, "F_ADD_SEALS")
        and all(hasattr(fcntl, s) for s in _SEALS)
        and hasattr(socket, "SCM_RIGHTS")
        and hasattr(socket, "CMSG_SPACE")
    )


def wanted() -> bool:
    """Whether this end sends through segments: ``SCOOPEXEC_SHARED_FRAMES=0`` says no.  It
    still takes what the other end sends through them, so two ends never disagree."""
    return os.environ.get("SCOOPEXEC_SHARED_FRAMES", "1").strip() != "0"


class SharedFrame(mmap.mmap):
    """A frame in a segment: a shared, writable mapping of exactly its size (or, for a receiver
    that could not map it, a private copy: _copied)."""

    @property
    def bytes(self) -> bytes:
        return self[:]


def _references(entry: list[Any]) -> int:
    return sys.getrefcount(entry[0])


_UNUSED = _references([object()])  # (measured, as framing._UNUSED is: it differs from 3.14 on)


class _Budget:
    """What the process's segments hold: their number, and the bytes of the free ones."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.segments = 0
        self.idle = 0


_BUDGET = _Budget()
_ALL: weakref.WeakSet[Segments] = weakref.WeakSet()
# Held by check_held() and new links, and by _pin() in whichever thread forks: a segment must
# not be both handed back and pinned (the owner would send it again while the child holds it).
_HELD_LOCK = threading.Lock()
LOOK_EVERY = 0.001  # s between looks at held segments by a sender of small messages (look())


def received_fds(ancdata: list[tuple[int, int, bytes]], into: deque[int]) -> None:
    """Append the descriptors that a recvmsg's ancillary data carried to ``into``."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            into.extend(fds)


def _close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _copied(fd: int, size: int) -> SharedFrame:
    """A private copy of a segment's bytes, for a receiver that cannot map it."""
    buf = SharedFrame(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # (private: see _pin)
    done = 0
    with memoryview(buf) as view:
        while done < size:
            n = os.preadv(fd, [view[done:]], done)
            if n <= 0:
                raise OSError(f"a segment ended after {done} of its {size} bytes")
            done += n
    return buf


def _sealed(size: int) -> tuple[int, SharedFrame, int]:
    """A new sealed memfd of ``size`` bytes: its descriptor, our mapping of it, its inode."""
    fd = os.memfd_create("scoopexec-frame", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALED)
        return fd, SharedFrame(fd, size, flags=mmap.MAP_SHARED, **_MAP), os.fstat(fd).st_ino
    except BaseException:
        os.close(fd)
        raise


class Segments:
    """One end of a link: the segments it owns, those of the other end it maps, its notes."""

    def __init__(self) -> None:
        self.own: dict[int, list[Any]] = {}  # id -> [mapping, lent, size, last freed, inode]
        self.peer: dict[int, list[Any]] = {}  # id -> [mapping]
        self.held: list[int] = []  # peer segments handed up and not released yet
        self.pinned: set[int] = set()  # held when this process forked: never released (_pin)
        self.fds_in: deque[int] = deque()  # descriptors received, not yet matched to a new id
        self.fds_out: list[int] = []  # descriptors to attach to the next bytes sent
        self._notes: list[tuple[int, int]] = []  # (kind, id) to send before the next message
        self._sizes: OrderedDict[int, None] = OrderedDict()  # sizes sent before (a few)
        self._next_id = 1
        self.announced = False  # we sent EXPECT: the other end reads with recvmsg from then on
        self.expecting = False  # the other end sent EXPECT: descriptors may come with any bytes
        self.sending = wanted()
        self.refused = False  # the other end could not map one of ours: make no more
        self._touched: list[tuple[int, int]] = []  # (id, its new descriptor or -1): see undo()
        self._taken: list[tuple[int, int]] = []  # notes put in the message being sent
        self._announcing = False  # that message carries our EXPECT
        self.closed = False
        self.sent_shared = 0  # frames sent through a segment (for tests and benchmarks)
        self.received_shared = 0
        self._next_look = 0.0
        with _HELD_LOCK:
            _ALL.add(self)

    # ------------------------------------------------------------- sending side
    def place(
        self, frames: Sequence[Any], sizes: list[int], views: list[memoryview | None], idle: bool
    ) -> list[Any]:
        """The frames to send, with those that go through a segment replaced by their
        descriptors; ``sizes`` is updated to the length words.  ``views[i]`` is frame i as
        a byte view, for the frames of SHARED_FROM bytes or more.  ``idle``: nothing of an
        earlier message waits to be sent, so descriptors sent now ride on this message."""
        out = list(frames)
        self._touched = []
        self._announcing = False
        if not self.sending:
            return out
        # A new segment only once the EXPECT of an earlier message is in the kernel (see the
        # module docstring): this message's bytes are then read with recvmsg.
        can_make = self.announced and idle and not self.refused
        new = 0
        for i, view in enumerate(views):
            if view is None or sizes[i] > IDLE_BYTES:  # (one too large to keep: fresh pages every time)
                continue
            size = sizes[i]
            seen = size in self._sizes
            self._sizes[size] = None
            self._sizes.move_to_end(size)
            if len(self._sizes) > SIZES_KEPT:
                self._sizes.popitem(last=False)
            sid: int | None = self._free(size)
            fresh = sid is None
            if sid is None:
                if not seen and not self.announced:
                    self._notes.append((EXPECT, 0))
                    self.announced = self._announcing = True
                if not seen or not can_make or new == MAX_FDS:  # a size not sent before: the socket
                    continue
                sid = self._make(size)
                if sid is None:
                    continue
                new += 1
            else:
                self._touched.append((sid, -1))
            entry = self.own[sid]
            entry[1] = True
            entry[0][:] = view
            out[i] = DESCRIPTOR.pack(sid, fresh, entry[4] if fresh else 0)
            sizes[i] = SHARED | size
            self.sent_shared += 1
        return out

    def _free(self, size: int) -> int | None:
        for sid, entry in self.own.items():
            if not entry[1] and entry[2] == size:
                with _BUDGET.lock:
                    _BUDGET.idle -= size
                return sid
        return None

    def _make(self, size: int) -> int | None:
        """A new segment of ``size`` bytes, lent at once (None: over the limits)."""
        if len(self.own) >= KEEP:
            for sid, entry in list(self.own.items()):  # make room: a free one of another size
                if not entry[1]:
                    self._drop(sid)
                    break
            else:
                return None
        with _BUDGET.lock:
            if _BUDGET.segments >= PROCESS_SEGMENTS:
                return None
            _BUDGET.segments += 1
        try:
            fd, mapping, inode = _sealed(size)
        except (OSError, ValueError, OverflowError, MemoryError):
            with _BUDGET.lock:
                _BUDGET.segments -= 1
            return None
        sid = self._next_id
        self._next_id += 1
        self._touched.append((sid, fd))
        self.own[sid] = [mapping, True, size, 0.0, inode]
        self.fds_out.append(fd)
        return sid

    def commit(self) -> None:
        """The message place() and notes() made is in the kernel, or queued to go."""
        self._touched = []
        self._taken = []
        self._announcing = False

    def undo(self) -> None:
        """The message place() and notes() made was not sent (an exception before the kernel
        took it: an interrupt, an error): as if never made, so that no descriptor of it rides
        on a later message, no segment stays lent to nobody, and its notes go with the next."""
        now = time.monotonic()
        for sid, fd in reversed(self._touched):
            entry = self.own.get(sid)
            if entry is None:
                continue
            if fd >= 0:  # made for it: gone again
                self._discard(sid)
                if fd in self.fds_out:
                    self.fds_out.remove(fd)
                    _close_fds([fd])
            elif entry[1]:
                entry[1] = False
                entry[3] = now
                with _BUDGET.lock:
                    _BUDGET.idle += entry[2]
        if self._announcing:
            self.announced = False
            self._taken = [n for n in self._taken if n[0] != EXPECT]
        self._notes[:0] = self._taken
        self.commit()

    def _discard(self, sid: int) -> list[Any]:
        """Take a segment of ours out of the books, and unmap it here; its entry."""
        entry = self.own.pop(sid)
        with _BUDGET.lock:
            _BUDGET.segments -= 1
        entry[0].close()
        return entry

    def _drop(self, sid: int) -> None:
        """Let go of a free segment of ours; the other end is told to unmap it."""
        entry = self._discard(sid)
        with _BUDGET.lock:
            _BUDGET.idle -= entry[2]
        self._notes.append((FORGET, sid))

    def sent_fds(self) -> None:
        """The descriptors in fds_out went with bytes the kernel took: close ours."""
        fds, self.fds_out = self.fds_out, []
        _close_fds(fds)

    def notes(self) -> bytes:
        """The notes to send before the next message (b"" when none), then forgotten."""
        if not self._notes:
            return b""
        out = []
        if (EXPECT, 0) in self._notes:
            out.append(NOTE.pack(0, EXPECT, 0))
        for kind in (RELEASE, FORGET, REFUSE):
            ids = [sid for k, sid in self._notes if k == kind]
            for start in range(0, len(ids), MAX_NOTE_IDS):
                part = ids[start : start + MAX_NOTE_IDS]
                out.append(NOTE.pack(0, kind, len(part)) + struct.pack(f"<{len(part)}I", *part))
        self._taken = self._taken + self._notes
        self._notes = []
        return b"".join(out)

    # ----------------------------------------------------------- receiving side
    def frame(self, size: int, descriptor: bytes | memoryview, max_frame: int) -> SharedFrame:
        """The frame a descriptor names (`size`: its length word without SHARED)."""
        sid, fresh, inode = DESCRIPTOR.unpack(descriptor)
        if fresh:
            if sid in self.peer:
                raise ProtocolError(f"segment {sid} announced again on a local link")
            if len(self.peer) >= PEER_SEGMENTS:
                raise ProtocolError(f"more than {PEER_SEGMENTS} segments mapped from a local link")
            if 0 < max_frame < size:
                raise ProtocolError(f"a frame of {size} bytes, more than the limit of {max_frame}")
            fd = self._descriptor(sid, inode)
            try:
                self._check(fd, size)
                try:
                    mapping = SharedFrame(fd, size, flags=mmap.MAP_SHARED, **_MAP)
                except OSError:  # this process's limits (open files, mappings): a private copy
                    self._notes.append((REFUSE, sid))
                    self.received_shared += 1
                    return _copied(fd, size)
            except (OSError, ValueError, OverflowError, MemoryError) as exc:
                raise ProtocolError(f"segment {sid} of {size} bytes cannot be mapped: {exc}") from exc
            finally:
                os.close(fd)
            entry = [mapping]
            self.peer[sid] = entry
        else:
            got = self.peer.get(sid)
            if got is None:
                raise ProtocolError(f"segment {sid} is not known on this local link")
            if len(got[0]) != size:
                raise ProtocolError(f"segment {sid} holds {len(got[0])} bytes, not {size}")
            if sid in self.held or sid in self.pinned:
                raise ProtocolError(f"segment {sid} sent again before it was released")
            entry = got
        self.held.append(sid)
        self.received_shared += 1
        return entry[0]  # type: ignore[no-any-return]

    def _descriptor(self, sid: int, inode: int) -> int:
        """The received descriptor of new segment `sid`: the first whose inode is `inode`.
        Others before it are strays (of a message its sender never sent): closed."""
        fds = self.fds_in
        while fds:
            fd = fds.popleft()
            try:
                if os.fstat(fd).st_ino == inode:
                    return fd
            except OSError:
                pass
            _close_fds([fd])
        raise ProtocolError(
            f"segment {sid} arrived without its descriptor (lost on the way in when this "
            "process is out of open files: see `ulimit -n`)"
        )

    @staticmethod
    def _check(fd: int, size: int) -> None:
        st = os.fstat(fd)
        if st.st_size != size:
            raise ValueError(f"it holds {st.st_size} bytes")
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _NO_RESIZE != _NO_RESIZE:
            raise ValueError("it is not sealed against resizing")

    def note(self, kind: int, ids: Sequence[int]) -> None:
        """Act on a note from the other end."""
        if kind == RELEASE:
            now = time.monotonic()
            for sid in ids:
                entry = self.own.get(sid)
                if entry is None or not entry[1]:
                    raise ProtocolError(f"a release of segment {sid}, which is not lent")
                entry[1] = False
                entry[3] = now
                with _BUDGET.lock:
                    _BUDGET.idle += entry[2]
                    over = _BUDGET.idle > IDLE_BYTES
                if over:
                    self._drop(sid)
        elif kind == EXPECT:
            self.expecting = True
        elif kind == REFUSE:  # it copied ours instead of mapping it: ours, free; and make no more
            for sid in ids:
                entry = self.own.get(sid)
                if entry is None or not entry[1]:
                    raise ProtocolError(f"a refusal of segment {sid}, which is not lent")
                self._discard(sid)
            self.refused = True
        elif kind == FORGET:
            for sid in ids:
                if sid not in self.peer or sid in self.held or sid in self.pinned:
                    raise ProtocolError(f"segment {sid} forgotten while not free")
                mapping = self.peer.pop(sid)[0]
                try:
                    mapping.close()
                except BufferError:  # pragma: no cover - a reference appeared: the GC closes it
                    pass
        else:
            raise ProtocolError(f"a note of unknown kind {kind} on a local link")

    def check_held(self) -> bool:
        """Note as released the held segments nothing refers to any more; whether any."""
        peer, pinned = self.peer, self.pinned
        with _HELD_LOCK:
            free = [sid for sid in self.held if sid not in pinned and _references(peer[sid]) <= _UNUSED]
            if free or pinned:
                self.held = [sid for sid in self.held if sid not in free and sid not in pinned]
        self._notes.extend((RELEASE, sid) for sid in free)
        return bool(free)

    def look(self) -> bool:
        """check_held(), at most every LOOK_EVERY: for a sender of small messages (a worker's
        results, the broker's tasks), so that segments go back while only the other end sends
        large frames, at a cost to no message.  Whether a RELEASE now waits to be sent."""
        now = time.monotonic()
        if now < self._next_look:
            return False
        self._next_look = now + LOOK_EVERY
        return self.check_held()

    def expire(self, now: float) -> float:
        """Let go of segments free for longer than IDLE_SECONDS; seconds until the next
        one would be (-1: none is free)."""
        nxt = -1.0
        for sid, entry in list(self.own.items()):
            if entry[1]:
                continue
            left = entry[3] + IDLE_SECONDS - now
            if left <= 0:
                self._drop(sid)
            elif nxt < 0 or left < nxt:
                nxt = left
        return nxt

    @property
    def pending(self) -> bool:
        """Whether there is a note to send."""
        return bool(self._notes)

    def close(self) -> None:
        """The link is closed: let go of everything (frames handed up stay valid)."""
        if self.closed:
            return
        self.closed = True
        with _BUDGET.lock:
            _BUDGET.segments -= len(self.own)
            _BUDGET.idle -= sum(e[2] for e in self.own.values() if not e[1])
        for entry in self.own.values():
            try:
                entry[0].close()
            except BufferError:  # pragma: no cover
                pass
        self.own.clear()
        self.peer.clear()
        self.held.clear()
        self.pinned.clear()
        _close_fds(self.fds_out)
        self.fds_out = []
        _close_fds(self.fds_in)
        self.fds_in.clear()


def _pin() -> None:
    """Before this process forks: the child gets the mappings of the segments held now, shared
    and not copied on write, so they are never handed back (they stay lent to this end until
    its link closes): the other end would write the next frame into the child's array."""
    with _HELD_LOCK:
        for seg in list(_ALL):
            seg.pinned.update(seg.held)


def _forked() -> None:
    """In a forked child, the parent's links are not ours: forget their segments."""
    global _HELD_LOCK
    _HELD_LOCK = threading.Lock()
    for seg in list(_ALL):
        seg.own.clear()
        seg.peer.clear()
        seg.held.clear()
        seg.pinned.clear()
        _close_fds(seg.fds_out)  # (this process's copies)
        _close_fds(seg.fds_in)
        seg.fds_out = []
        seg.fds_in.clear()
        seg.closed = True
    _BUDGET.lock = threading.Lock()
    _BUDGET.segments = 0
    _BUDGET.idle = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_pin, after_in_child=_forked)
