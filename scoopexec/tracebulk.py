"""What the timeline recorder keeps of a message of tiny tasks before laying it out (trace.py).

A worker's RESULT message of tiny tasks gives the recorder one record per task
(tracefile.TASK_RECORD, 81 bytes), most of whose fields are the same for the
tasks of one Source in one message (parent, client, function, when the result
came, from which worker, status): a template.  What differs from task to task
is the broker id, start and run time (the message's RESULT entries, 29 bytes
each, kept as received) and the bytes in and out.  :class:`Pending` keeps those
for up to ``MAX_PENDING`` tasks and lays the records out for all of them at
once (``take``): a join of the templates, then a few dozen copies of 8-byte
words between the odd-sized layouts (``copy_words``), each a C loop over
thousands of tasks, instead of a Python loop or a struct pack a task.  The
records so made go into blocks of their own (no growing buffer copied again and
again), which the file writes one after the other.

Dispatches (a broker id and a time each, tracefile.DISPATCH) are kept as a list
of ids and the times packed, and packed into their layout the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from .broker.ledger import LOST_ATTEMPTS
from .tracefile import DISPATCH, TASK_RECORD
from .wire.protocol import HEADER_SIZE, RESULT_ENTRY, TASK_ENTRY

__all__ = ["ENTRY_NFRAMES", "ENTRY_STATUS", "MAX_PENDING", "Pending", "copy_words", "sizes"]

MAX_PENDING = 16384  # results, dispatches Pending holds before the recorder lays them out (~2.4 MB)

# Where Pending.take copies the 8-byte fields from: (offset in a record, offset in a RESULT
# entry).  The formats are tracefile.TASK_RECORD "<qqIIddddIqqIB" and protocol's RESULT_ENTRY
# "<QBIdd"; tests/test_trace.py checks the result against the per-task loop's.
_FROM_ENTRY = (
    (0, 0),  # broker id
    (struct.calcsize("<qqIId"), struct.calcsize("<QBI")),  # start
    (struct.calcsize("<qqIIdd"), struct.calcsize("<QBId")),  # run time
)
_AT_IN, _AT_OUT = struct.calcsize("<qqIIddddI"), struct.calcsize("<qqIIddddIq")  # bytes in, out
_ENTRIES = itemgetter(slice(HEADER_SIZE, None))  # a header frame's entries (a C call a message, no loop)
ENTRY_STATUS = struct.calcsize("<Q")  # a RESULT entry's status byte
ENTRY_NFRAMES = struct.calcsize("<QB")  # and its number of frames (4 bytes, little-endian)


def copy_words(dst: memoryview, at: int, dstep: int, src: memoryview, off: int, sstep: int, m: int) -> None:
    """Copy the 8 bytes at ``src[off + i * sstep]`` to ``dst[at + i * dstep]`` for each i < m.

    The records (81 bytes) and entries (29) are odd sizes, so their fields are not 8-byte
    words of one view at one step; but those of every 8th record are (8 records are 81 words):
    eight copies of 8-byte words, each over an eighth of the records, instead of a byte column
    each (a C loop a byte) or a Python loop a record.
    """
    for r in range(min(8, m)):
        n = len(range(r, m, 8))
        d, s = at + r * dstep, off + r * sstep
        words = dst[d : d + (n - 1) * 8 * dstep + 8].cast("Q")
        words[::dstep] = src[s : s + (n - 1) * 8 * sstep + 8].cast("Q")[::sstep]


def sizes(found: Sequence[Any], frames: Sequence[Any]) -> tuple[list[Any] | None, bytes, bytes] | None:
    """What a RESULT message of tiny tasks (``frames``: header, then one result frame each) tells
    of tasks ``found`` (in its order): (their Sources, or None when all share ``found[0]``'s;
    their bytes in; their bytes out), each column a byte a task when all of it is under 256,
    else an int64 a task (what Pending keeps).  None when a task has other than two frames, a
    function frame other than ``found[0]``'s or a lost attempt, or a frame has no len().

    A pass over the tasks in bytecode, the fewest steps it can take (one test each and len() of
    their arguments' frame), and C loops for the rest: the function's frame, shared, is counted
    once and added to each byte of the column by bytes.translate.  Lost attempts are looked for
    only once the process has lost one (ledger.LOST_ATTEMPTS, which Task.lose counts).
    """
    k = len(found)
    fn, src = found[0].first, found[0].src
    srcs: list[Any] | None = None
    lost = LOST_ATTEMPTS[0]  # (0: no task has a lost attempt, and none is looked at: a test a task less)
    try:
        if lost:
            ins = [len(t.rest) for t in found if t.first is fn and t.src is src and not t.lost]
        else:
            ins = [len(t.rest) for t in found if t.first is fn and t.src is src]
        if len(ins) != k:  # several Sources, or not tiny tasks
            if lost:
                ins = [len(t.rest) for t in found if t.first is fn and not t.lost]
            else:
                ins = [len(t.rest) for t in found if t.first is fn]
            if len(ins) != k:
                return None
            srcs = [t.src for t in found]
        outs = frames[1:]
        try:
            nout = bytes(map(len, outs))
        except ValueError:  # 256 or more
            nout = struct.pack(f"<{k}q", *map(len, outs))
        n = len(fn)
    except TypeError:  # (Task.rest is MANY: other than two frames; a pickle.PickleBuffer)
        return None
    try:  # bytes in: the function's frame added to each (0 where a sum reaches 256)
        nin = bytes(ins)
        if n:
            table = _ADD.get(n) or _adding(n)
            nin = nin.translate(table)
            if 0 in nin:  # (every sum is at least n > 0: a 0 is one that reached 256)
                raise ValueError(n)
    except ValueError:
        nin = struct.pack(f"<{k}q", *[size + n for size in ins])
    return srcs, nin, nout


def _adding(n: int) -> bytes:
    """The translation table adding ``n`` to a byte, 0 where the sum reaches 256; ValueError if
    ``n`` is 256 or more (no sum fits a byte)."""
    if not 0 < n < 256:
        raise ValueError(n)
    table = _ADD[n] = bytes(i + n if i + n < 256 else 0 for i in range(256))
    return table


_ADD: dict[int, bytes] = {}  # n -> the translation table adding n to a byte (0 where it overflows)


class Pending:
    """Tasks recorded in bulk whose records are not laid out yet, and dispatches not packed yet.

    Kept a message at a time, in lists of what each message gave (no buffer grown and copied
    again and again), and joined once when laid out.  Bytes in and out are kept a byte each
    when they are under 256 (what tiny tasks send: bytes() of the list, and one strided byte
    copy into the records, whose other seven bytes of the field are 0), else as int64s.
    """

    __slots__ = (
        "count", "done", "heads", "last", "nin", "nout", "pending", "sent_count", "sent_heads",
        "sent_times", "templates", "wide",
    )  # fmt: skip

    def __init__(self) -> None:
        self.count = 0  # tasks pending from bulk messages
        self.done: list[tuple[int, bytearray]] = []  # complete records between them: (where, records)
        self.pending = 0  # records pending, both kinds
        self.templates: list[bytes] = []  # per message: its records, the per-task fields still 0
        self.heads: list[bytes] = []  # its header frame: its RESULT entries, as received
        self.nin: list[bytes] = []  # its tasks' bytes in: a byte each, or 8 (then counted in wide)
        self.nout: list[bytes] = []  # and bytes out
        self.wide = 0  # columns of 8 bytes a task in nin and nout
        self.sent_count = 0  # dispatches pending
        self.sent_heads: list[bytes] = []  # per TASKS message: its header (its entries: broker ids)
        self.sent_times: list[bytes] = []  # and its dispatches laid out, their broker ids still 0
        # TraceRecorder._bulk's last template of one Source: (function frame, worker key, status,
        # parent, origin, the record before its times, after them); a message whose template
        # differs only in its times (a Source of the same parent and client) packs only those.
        self.last: tuple[Any, ...] = (None, None, None, None, None, b"", b"")

    def add(self, templates: bytes, head: bytes, nin: bytes, nout: bytes, k: int) -> int:
        """A message's ``k`` records (``templates``), its header frame (``head``: its RESULT entries),
        its tasks' bytes in and out (columns: :func:`sizes`); returns how many tasks are pending now."""
        self.templates.append(templates)
        self.heads.append(head)
        self.nin.append(nin)
        self.nout.append(nout)
        if len(nin) + len(nout) != k + k:  # (either column of int64s)
            self.wide += (len(nin) != k) + (len(nout) != k)
        self.count += k
        self.pending += k
        return self.pending

    def add_done(self, records: bytearray) -> int:
        """Records the per-task loop made while bulk ones are pending: they go after those, without
        laying those out now (a take for a few dozen records costs as much as for thousands)."""
        self.done.append((self.count, records))
        self.pending += len(records) // TASK_RECORD.size
        return self.pending

    def take(self) -> bytearray | None:
        """The pending records, laid out (TASK_RECORD after TASK_RECORD); None if there are none."""
        m = self.count
        if not self.pending:
            return None
        size, step = TASK_RECORD.size, RESULT_ENTRY.size
        block = bytearray().join(self.templates)
        ents = b"".join(map(_ENTRIES, self.heads))
        with memoryview(block) as out, memoryview(ents) as src:
            for at, offset in _FROM_ENTRY:
                copy_words(out, at, size, src, offset, step, m)
        for at, columns in ((_AT_IN, self.nin), (_AT_OUT, self.nout)):
            if not self.wide:
                block[at::size] = b"".join(columns)  # (the low byte of each; the others are 0)
                continue
            words = b"".join([c if len(c) != len(t) // size else struct.pack(f"<{len(c)}q", *c)
                              for c, t in zip(columns, self.templates, strict=True)])  # fmt: skip
            with memoryview(block) as out, memoryview(words) as data:
                copy_words(out, at, size, data, 0, 8, m)
        if self.done:  # (the loop's records, each where it came)
            with memoryview(block) as laid:
                pieces: list[Any] = []
                at = 0
                for where, records in self.done:
                    pieces += (laid[at * size : where * size], records)
                    at = where
                pieces.append(laid[at * size :])
                block = bytearray().join(pieces)
                pieces.clear()
        for kept in (self.templates, self.heads, self.nin, self.nout, self.done):
            kept.clear()
        self.count = self.pending = self.wide = 0
        return block

    def add_sent(self, head: bytes, when: float) -> int:
        """A TASKS message's header frame (its entries hold the broker ids), sent at ``when``;
        returns how many dispatches are pending now."""
        n = (len(head) - HEADER_SIZE) // TASK_ENTRY.size
        self.sent_heads.append(head)
        self.sent_times.append(DISPATCH.pack(0, when) * n)
        self.sent_count += n
        return self.sent_count

    def take_sent(self) -> bytearray:
        """The pending dispatches, laid out (tracefile.DISPATCH after DISPATCH)."""
        block = bytearray().join(self.sent_times)
        ids = b"".join(map(_ENTRIES, self.sent_heads))
        with memoryview(block) as out, memoryview(ids) as src:  # (both little-endian 64 bits)
            copy_words(out, 0, DISPATCH.size, src, 0, TASK_ENTRY.size, self.sent_count)
        self.sent_heads.clear()
        self.sent_times.clear()
        self.sent_count = 0
        return block
