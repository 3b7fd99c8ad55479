"""The wire format shared by clients, the broker and workers.

Every message is one ZeroMQ multipart message.  Its first frame is a small
fixed header, followed (for batch messages) by a packed array of entries;
the remaining frames are opaque payloads that the broker routes without ever
looking inside them::

    frame 0    header    magic "SX" | version | type | count | arg
               entries   count x entry struct (layout depends on type)
    frame 1..  payload   entry 0's frames, entry 1's frames, ...

On a ROUTER socket the routing id comes before frame 0.

Control information that is not on the hot path (HELLO, WELCOME, STATUS,
LOG) travels as JSON in frame 1; it is never pickled.  Payloads (functions,
arguments, results, exceptions, set-up blobs) are pickles made and read only
by clients and workers.

Every kind has a shape (SHAPES: its entry layout and what its payload frames must be) and a
set of roles that may send it to the broker (SENDERS).  :func:`decode` checks a received
message against its kind's shape and returns a :class:`Message`; each role (broker, worker,
client) routes the messages it accepts through one table ``{kind: handler}``.

Any change to a struct or a meaning below bumps VERSION.
"""

from __future__ import annotations

import json
import operator
import re
import struct
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any, NamedTuple

from ..errors import ProtocolError

MAGIC = b"SX"
VERSION = 4  # 2: CANCEL with CONFIRM, answered by RESULTS CANCELLED or STARTED; 3: large function
# frames marked, their head alone to a worker that holds them (wire/fnframes.py), RETURN arg 1;
# 4: packed function frames (their large buffers after the pickle: fnframes.PACKED)

HEADER = struct.Struct("<2sBBII")  # magic, version, type, count, arg
HEADER_SIZE = HEADER.size

# Message types.  Comments give the direction and the entry layout.
HELLO = 1  # peer -> broker; frame 1: JSON {"role": ...}; clients add set-up frames; a worker's
# first may say {"credit": N}: a CREDIT of N taken with it (its first tasks come without a round trip)
WELCOME = 2  # broker -> peer; frame 1: JSON {"pool": ..., "id": ...}; {"granted": N}: that credit, taken
SUBMIT = 3  # peer -> broker; SUBMIT_ENTRY per task, then the task's frames
TASKS = 4  # broker -> worker; TASK_ENTRY per task, then the task's frames
RESULT = 5  # worker -> broker; RESULT_ENTRY per result; arg = credits granted
RESULTS = 6  # broker -> owner; RESULTS_ENTRY per result
CANCEL = 7  # owner -> broker (owner ids), broker -> worker (broker ids); ID_ENTRY; arg: see below
CREDIT = 8  # worker -> broker; arg = credits granted, no entries
STARTED = 9  # broker -> remote owner; ID_ENTRY per task now running (or not cancelled: CONFIRM)
SETUP = 10  # broker -> worker; arg = set-up id; frames: the client's set-up blob
SETUP_DONE = 11  # worker -> broker; arg = set-up id; count = 1 ok, 0 failed; frame 1: error text;
#                  frame 2 (optional): b"main" when importing the client's main module failed
OUTPUT = 12  # worker -> broker -> client; OUTPUT_ENTRY per chunk, one UTF-8 frame each
STOP = 13  # broker -> worker: finish and exit
BYE = 14  # peer -> broker: leaving on purpose
ERROR = 15  # broker -> peer; frame 1: UTF-8 text (version mismatch, refused, ...)
STATUS = 16  # anyone -> broker; no entries
STATUS_REPLY = 17  # broker -> asker; frame 1: JSON
LOG = 18  # worker -> broker -> client; LOG_ENTRY per record, one JSON frame each
BROKEN = 19  # broker -> client; frame 1: JSON {"kind": ..., "message": ...}
PING = 20  # broker -> peer: is this routing id still connected?  Ignored by peers.
SHARE = 21  # client -> broker (arg 0), broker -> worker (arg = set-up id); frames: name, value pickle
RETURN = 22  # worker -> broker; ID_ENTRY per task handed back unstarted; its credit drops to 0;
# arg 1: one was a function frame's head the worker does not hold (wire/fnframes.py): send them whole
RECALL = 23  # broker -> worker: a worker is idle; one running a long task RETURNs what it has not started
DRAIN = 24  # broker -> worker: its batch job ends soon; RETURN every task not started (no more come)

# CANCEL's arg from an owner: 0 forget them; 1, 2 stop them running too (ex.cancel(): interrupt, end
# the worker process); CONFIRM: answer each, RESULTS CANCELLED (dropped: no worker has or had it, it
# will not run) or STARTED (a worker has it, or the broker knows no such task: its result is due).
CONFIRM = 3

TYPE_NAMES = {
    HELLO: "HELLO", WELCOME: "WELCOME", SUBMIT: "SUBMIT", TASKS: "TASKS", RESULT: "RESULT",
    RESULTS: "RESULTS", CANCEL: "CANCEL", CREDIT: "CREDIT", STARTED: "STARTED", SETUP: "SETUP",
    SETUP_DONE: "SETUP_DONE", OUTPUT: "OUTPUT", STOP: "STOP", BYE: "BYE", ERROR: "ERROR",
    STATUS: "STATUS", STATUS_REPLY: "STATUS_REPLY", LOG: "LOG", BROKEN: "BROKEN", PING: "PING",
    SHARE: "SHARE", RETURN: "RETURN", RECALL: "RECALL", DRAIN: "DRAIN",
}  # fmt: skip

# Entry layouts.
SUBMIT_ENTRY = struct.Struct("<QQI")  # owner's task id, parent broker id (0: none), n frames
TASK_ENTRY = struct.Struct("<QIIH")  # broker id, set-up id, n frames, attempt
RESULT_ENTRY = struct.Struct("<QBIdd")  # broker id, status, n frames, start (epoch s), run time (s)
RESULTS_ENTRY = struct.Struct("<QBI")  # owner's task id, status, n frames
ID_ENTRY = struct.Struct("<Q")
OUTPUT_ENTRY = struct.Struct("<QB")  # broker id of the task printing (0: none), stream 1/2
LOG_ENTRY = struct.Struct("<Q")  # broker id of the task logging (0: none)

ENTRY_OF = {
    SUBMIT: SUBMIT_ENTRY,
    TASKS: TASK_ENTRY,
    RESULT: RESULT_ENTRY,
    RESULTS: RESULTS_ENTRY,
    CANCEL: ID_ENTRY,
    STARTED: ID_ENTRY,
    RETURN: ID_ENTRY,
    OUTPUT: OUTPUT_ENTRY,
    LOG: LOG_ENTRY,
}

# Result status codes.
OK = 0  # frames: result pickle + out-of-band buffers
RAISED = 1  # frames: exception pickle, traceback text
FAILED = 2  # frames: JSON {"type", "message", "kind"}, traceback text; nothing to unpickle
LOST = 3  # frames: JSON as FAILED; the task's worker was lost too many times
CANCELLED = 4  # no frames; the broker dropped the task (its owner or parent went away)

# Roles in HELLO.
CLIENT = "client"
WORKER = "worker"
OBSERVER = "observer"

# Upper bound on entries in one message; a peer sending more is misbehaving.
MAX_ENTRIES = 1 << 20

# What the payload frames (after frame 0) of a kind must be.
NONE = "none"  # no payload frames
COUNTED = "counted"  # field 2 of each entry says how many frames are the entry's
ONE_EACH = "one each"  # one frame per entry
JSON = "json"  # frame 1 is a JSON object (Message.info); more frames may follow (HELLO's set-up)
TEXT = "text"  # an optional UTF-8 frame 1 (Message.text); up to Shape.max_frames frames in all
NAMED = "named"  # a name frame and at least one value frame
ANY = "any"  # whatever the kind's owner sends (SETUP's blob)


class Shape(NamedTuple):
    frames: str
    min_frames: int = 0  # COUNTED: frames each entry needs at least
    max_frames: int = 1  # TEXT: payload frames at most (the text, then the kind's own)


SHAPES: dict[int, Shape] = {
    HELLO: Shape(JSON), WELCOME: Shape(JSON), SUBMIT: Shape(COUNTED, 2), TASKS: Shape(COUNTED),
    RESULT: Shape(COUNTED), RESULTS: Shape(COUNTED), CANCEL: Shape(NONE), CREDIT: Shape(NONE),
    STARTED: Shape(NONE), SETUP: Shape(ANY), SETUP_DONE: Shape(TEXT, 0, 2), OUTPUT: Shape(ONE_EACH),
    STOP: Shape(NONE), BYE: Shape(NONE), ERROR: Shape(TEXT), STATUS: Shape(NONE),
    STATUS_REPLY: Shape(JSON), LOG: Shape(ONE_EACH), BROKEN: Shape(JSON), PING: Shape(NONE),
    SHARE: Shape(NAMED), RETURN: Shape(NONE), RECALL: Shape(NONE), DRAIN: Shape(NONE),
}  # fmt: skip

# Who may send each kind to the broker (None: any peer, even one that has not said HELLO).
SENDERS: dict[int, frozenset[str] | None] = {
    HELLO: None, BYE: None, STATUS: None,
    SUBMIT: frozenset({CLIENT, WORKER}), CANCEL: frozenset({CLIENT, WORKER}),
    RESULT: frozenset({WORKER}), CREDIT: frozenset({WORKER}), RETURN: frozenset({WORKER}),
    OUTPUT: frozenset({WORKER}), LOG: frozenset({WORKER}), SETUP_DONE: frozenset({WORKER}),
    SHARE: frozenset({CLIENT}),
}  # fmt: skip


def header(mtype: int, count: int = 0, arg: int = 0) -> bytes:
    return HEADER.pack(MAGIC, VERSION, mtype, count, arg)


def pack(mtype: int, entries: Sequence[tuple[Any, ...]] = (), arg: int = 0) -> bytes:
    """Frame 0 of a message: the header followed by its packed entries."""
    if not entries:
        return HEADER.pack(MAGIC, VERSION, mtype, 0, arg)
    st = ENTRY_OF[mtype]
    return HEADER.pack(MAGIC, VERSION, mtype, len(entries), arg) + b"".join(
        [st.pack(*e) for e in entries]
    )


_FLAT: dict[tuple[int, int], struct.Struct] = {}  # (kind, count) -> the struct of count entries
_FLAT_CACHED = 256  # the largest count whose struct is kept


def pack_flat(mtype: int, count: int, values: Sequence[Any], arg: int = 0) -> bytes:
    """pack() of ``count`` entries given one after the other in ``values`` (a flat sequence):
    the same bytes, packed in one call instead of one per entry."""
    st = _FLAT.get((mtype, count))
    if st is None:
        st = struct.Struct("<" + ENTRY_OF[mtype].format.lstrip("<") * count)
        if count <= _FLAT_CACHED:  # (a larger one, rare, is not kept: its format is count codes long)
            if len(_FLAT) >= 1024:
                _FLAT.clear()
            _FLAT[mtype, count] = st
    return HEADER.pack(MAGIC, VERSION, mtype, count, arg) + st.pack(*values)


def unpack_header(buf: bytes | memoryview) -> tuple[int, int, int]:
    """Return (type, count, arg), or raise ProtocolError for anything malformed."""
    if len(buf) < HEADER_SIZE:
        raise ProtocolError(f"header of {len(buf)} bytes is shorter than {HEADER_SIZE}")
    magic, version, mtype, count, arg = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise ProtocolError("not a scoopexec message (bad magic)")
    if version != VERSION:
        raise VersionMismatch(version)
    if mtype not in TYPE_NAMES:
        raise ProtocolError(f"unknown message type {mtype}")
    if count > MAX_ENTRIES:
        raise ProtocolError(f"{count} entries exceeds the limit of {MAX_ENTRIES}")
    st = ENTRY_OF.get(mtype)
    want = HEADER_SIZE + (count * st.size if st is not None else 0)
    if len(buf) != want:
        raise ProtocolError(
            f"{TYPE_NAMES[mtype]} header is {len(buf)} bytes, expected {want} for {count} entries"
        )
    return mtype, count, arg


def entries(mtype: int, buf: bytes | memoryview) -> Iterator[tuple[Any, ...]]:
    """The entries of a header already checked by unpack_header."""
    return ENTRY_OF[mtype].iter_unpack(memoryview(buf)[HEADER_SIZE:])


def check_frames(counts: Sequence[int], nframes: int) -> None:
    """The entries' frame counts must add up to the payload frames present."""
    if sum(counts) != nframes:
        raise ProtocolError(f"entries announce {sum(counts)} payload frames, message has {nframes}")


class VersionMismatch(ProtocolError):
    def __init__(self, version: int) -> None:
        super().__init__(
            f"peer speaks scoopexec protocol version {version}, this side speaks {VERSION}; "
            "install the same scoopexec version on every host"
        )
        self.version = version


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# Control frames nest a few levels; deeper JSON is refused whatever the interpreter would parse
# (up to 3.13 json.loads raised RecursionError past about 1,000 levels; 3.14 parses as deep as
# its C stack allows, and a value that deep breaks repr() and anything else that recurses).
MAX_JSON_DEPTH = 200
_JSON_NESTING = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings skipped whole, brackets


def _too_deep(data: bytes) -> bool:
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:  # the usual case: no scan
        return False
    depth = 0
    for m in _JSON_NESTING.finditer(data):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif c in (b"]", b"}"):
            depth -= 1
    return False


def load_json(buf: bytes | memoryview) -> Any:
    data = bytes(buf)
    if _too_deep(data):
        raise ProtocolError("malformed JSON control frame: nested too deeply")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON control frame: {exc}") from None
    except RecursionError:  # nesting deeper than the interpreter's recursion limit
        raise ProtocolError("malformed JSON control frame: nested too deeply") from None


class Message:
    """A received message whose shape was checked (see :func:`decode`).

    ``frames`` is the whole message, ``frames[0]`` its header; ``entries`` the header's
    entries; ``info`` the JSON object of a JSON kind; ``text`` the text frame of a TEXT kind.
    """

    __slots__ = ("arg", "count", "entries", "frames", "info", "kind", "text")

    def __init__(
        self, kind: int, count: int, arg: int, entries: list[tuple[Any, ...]], frames: Sequence[Any]
    ) -> None:
        self.kind = kind
        self.count = count
        self.arg = arg
        self.entries = entries
        self.frames = frames
        self.info: dict[str, Any] = {}
        self.text = ""

    @property
    def name(self) -> str:
        return TYPE_NAMES[self.kind]

    def parts(self) -> Iterator[tuple[tuple[Any, ...], Sequence[Any]]]:
        """(entry, its frames) for each entry of a COUNTED kind: a list of them, or a tuple of
        its one frame when every entry has one (the usual RESULT, RESULTS: made in C, no slice)."""
        frames, entries = self.frames, self.entries
        if len(frames) == len(entries) + 1 and entries and max(map(_COUNT, entries)) == 1:
            return zip(entries, zip(islice(frames, 1, None)), strict=True)  # (decode checked the sum)
        return self._parts()

    def _parts(self) -> Iterator[tuple[tuple[Any, ...], Sequence[Any]]]:
        frames = self.frames
        pos = 1
        for ent in self.entries:
            n = ent[2]
            yield ent, frames[pos : pos + n]
            pos += n

    def each(self) -> Iterator[tuple[tuple[Any, ...], Any]]:
        """(entry, its frame) for each entry of a ONE_EACH kind."""
        return zip(self.entries, self.frames[1:], strict=True)


def as_bytes(frame: Any) -> bytes:
    """A frame's bytes: bytes (and link frames) as they are, a zmq.Frame's content."""
    return frame if isinstance(frame, bytes) else frame.bytes  # type: ignore[no-any-return]


_COUNT = operator.itemgetter(2)  # an entry's number of frames (SUBMIT, TASKS, RESULT, RESULTS)
_NO_ENTRIES: list[tuple[Any, ...]] = []  # shared, never changed: messages without entries


def decode(frames: Sequence[Any]) -> Message:
    """Check a received message against its kind's shape; ProtocolError (or VersionMismatch) if wrong.

    On every message's path: unpack_header's checks are made inline, and the common shapes
    (COUNTED, NONE) are tested first.
    """
    if not frames:
        raise ProtocolError("an empty message")
    head = frames[0]
    if not isinstance(head, bytes):
        head = head.bytes
    if len(head) < HEADER_SIZE:
        raise ProtocolError(f"header of {len(head)} bytes is shorter than {HEADER_SIZE}")
    magic, version, kind, count, arg = HEADER.unpack_from(head)
    if magic != MAGIC:
        raise ProtocolError("not a scoopexec message (bad magic)")
    if version != VERSION:
        raise VersionMismatch(version)
    shape = SHAPES.get(kind)
    if shape is None:
        raise ProtocolError(f"unknown message type {kind}")
    if count > MAX_ENTRIES:
        raise ProtocolError(f"{count} entries exceeds the limit of {MAX_ENTRIES}")
    st = ENTRY_OF.get(kind)
    want = HEADER_SIZE + (count * st.size if st is not None else 0)
    if len(head) != want:
        raise ProtocolError(
            f"{TYPE_NAMES[kind]} header is {len(head)} bytes, expected {want} for {count} entries"
        )
    ents = list(st.iter_unpack(memoryview(head)[HEADER_SIZE:])) if st is not None and count else _NO_ENTRIES
    msg = Message(kind, count, arg, ents, frames)
    payload = len(frames) - 1
    rule = shape.frames
    if rule is COUNTED:
        if sum(map(_COUNT, ents)) != payload:
            check_frames([e[2] for e in ents], payload)  # raises, saying how many
        if shape.min_frames and count and min(map(_COUNT, ents)) < shape.min_frames:
            raise ProtocolError(
                f"{TYPE_NAMES[kind]}: an entry needs at least {shape.min_frames} frames "
                "(a task needs a function and an arguments frame)"
            )
    elif rule is NONE:
        if payload:
            raise ProtocolError(f"{TYPE_NAMES[kind]} carries no frames, this one has {payload}")
    elif rule is ONE_EACH:
        if payload != count:
            raise ProtocolError(f"{TYPE_NAMES[kind]} needs one frame per entry ({count}), has {payload}")
    elif rule is JSON:
        if not payload:
            raise ProtocolError(f"{TYPE_NAMES[kind]} without its JSON frame")
        info = load_json(as_bytes(frames[1]))
        if not isinstance(info, dict):
            raise ProtocolError(f"{TYPE_NAMES[kind]}'s JSON is not an object")
        msg.info = info
    elif rule is TEXT:
        if payload > shape.max_frames:
            raise ProtocolError(
                f"{TYPE_NAMES[kind]} carries at most {shape.max_frames} frame(s), has {payload}"
            )
        if payload:
            msg.text = as_bytes(frames[1]).decode("utf-8", "replace")
    elif rule is NAMED:
        if payload < 2:
            raise ProtocolError(f"{TYPE_NAMES[kind]} needs a name frame and a value frame")
        try:  # (a worker keeps the value under this name: a name it cannot decode ended it)
            as_bytes(frames[1]).decode()
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{TYPE_NAMES[kind]}'s name is not UTF-8 text: {exc}") from None
    return msg
