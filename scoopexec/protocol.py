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

Any change to a struct or a meaning below bumps VERSION.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import ProtocolError

MAGIC = b"SX"
VERSION = 1

HEADER = struct.Struct("<2sBBII")  # magic, version, type, count, arg
HEADER_SIZE = HEADER.size

# Message types.  Comments give the direction and the entry layout.
HELLO = 1  # peer -> broker; frame 1: JSON {"role": ...}; clients add set-up frames
WELCOME = 2  # broker -> peer; frame 1: JSON {"pool": ..., "id": ...}
SUBMIT = 3  # peer -> broker; SUBMIT_ENTRY per task, then the task's frames
TASKS = 4  # broker -> worker; TASK_ENTRY per task, then the task's frames
RESULT = 5  # worker -> broker; RESULT_ENTRY per result; arg = credits granted
RESULTS = 6  # broker -> owner; RESULTS_ENTRY per result
CANCEL = 7  # owner -> broker (owner ids), broker -> worker (broker ids); ID_ENTRY
CREDIT = 8  # worker -> broker; arg = credits granted, no entries
STARTED = 9  # broker -> remote owner; ID_ENTRY per task now running
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
RETURN = 22  # worker -> broker; ID_ENTRY per task handed back unstarted; its credit drops to 0
RECALL = 23  # broker -> worker: a worker is idle; one running a long task RETURNs what it has not started

TYPE_NAMES = {
    HELLO: "HELLO", WELCOME: "WELCOME", SUBMIT: "SUBMIT", TASKS: "TASKS", RESULT: "RESULT",
    RESULTS: "RESULTS", CANCEL: "CANCEL", CREDIT: "CREDIT", STARTED: "STARTED", SETUP: "SETUP",
    SETUP_DONE: "SETUP_DONE", OUTPUT: "OUTPUT", STOP: "STOP", BYE: "BYE", ERROR: "ERROR",
    STATUS: "STATUS", STATUS_REPLY: "STATUS_REPLY", LOG: "LOG", BROKEN: "BROKEN", PING: "PING",
    SHARE: "SHARE", RETURN: "RETURN", RECALL: "RECALL",
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


def load_json(buf: bytes | memoryview) -> Any:
    try:
        return json.loads(bytes(buf))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON control frame: {exc}") from None
    except RecursionError:  # nesting deeper than the interpreter's recursion limit
        raise ProtocolError("malformed JSON control frame: nested too deeply") from None
