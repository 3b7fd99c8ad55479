"""The compact timeline file: what ``trace=`` writes for a name not ending in ``.json``.

Writing the Chrome JSON timeline at shutdown costs the client several times
what recording did (an event of about 400 characters built per task).  This
file holds what the recorder keeps, as it keeps it, so that writing it is a
few large writes; the arranging (dispatch times, clock offsets, lanes, arrows,
counters) happens when it is read back (``python -m scoopexec trace export
run.trace run.json``, or ``report``, which reads both)::

    offset  size
    0       8     magic b"SCXTRACE"
    8       2     format version (1), little-endian like every number below
    10      2     size of one task record (TASK_RECORD.size)
    12      4     flags (0)
    16      8     R: task records
    24      8     D: dispatches (broker id, time)
    32      8     J: bytes of the JSON part
    40      R * record size   the records, as TraceRecorder.on_results packed them
    ...     D * 16            the dispatches (DISPATCH): broker id, int64, and time,
                              float64 (seconds since the epoch)
    ...     J                 UTF-8 JSON: the table the records index into (clients'
                              keys, function names, workers' keys), the workers,
                              lost attempts, batch-job events, metadata

The file is exactly that long.  ``read()`` checks all of it (magic, version,
record size, lengths, the JSON part's shape, every index a record holds and
every time being a finite number) and raises :class:`TraceError` naming what is
wrong, so that a truncated or damaged file never gives a wrong timeline.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

__all__ = [
    "DISPATCH", "FILE_VERSION", "MAGIC", "TASK_RECORD", "RawTrace", "TraceError", "is_binary", "parse",
    "read",
    "write",
]  # fmt: skip

MAGIC = b"SCXTRACE"
FILE_VERSION = 1
_HEADER = struct.Struct("<8sHHIQQQ")
# A task's record (TraceRecorder.on_results): broker id, parent, client (index in the value
# table), function name (index), submitted, started (worker's clock), run time, result received,
# worker (index), bytes in, bytes out, attempts lost, status.
TASK_RECORD = struct.Struct("<qqIIddddIqqIB")
DISPATCH = struct.Struct("<qd")  # a task handed to a worker: its broker id, when (TraceRecorder.on_dispatch)
_CLIENT, _NAME, _WORKER = 2, 3, 8  # fields of TASK_RECORD that index the value table
_FAR = 1e12  # seconds: every time in a file is between 0 and this (the year 33658)


class TraceError(ValueError):
    """The file is not a scoopexec timeline, or is damaged; the message says what is wrong."""


@dataclass
class RawTrace:
    """What a TraceRecorder holds, as its file stores it."""

    records: bytes | bytearray = b""  # TASK_RECORD after TASK_RECORD
    sent: bytes | bytearray = b""  # DISPATCH after DISPATCH
    values: list[Any] = field(default_factory=list)  # bytes (keys), str (names) or None
    workers: dict[bytes, tuple[str, str, Any]] = field(default_factory=dict)  # key -> name, host, pid
    lost: list[tuple[float, bytes, int, str, bool]] = field(default_factory=list)
    job_events: list[tuple[float, str, str, str]] = field(default_factory=list)
    job_counts: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    dropped: int = 0
    created: float = 0.0
    limit: int = 0
    # Records that come before ``records``, in blocks as the recorder laid them out (written one
    # after the other, never joined: no second copy of them in memory); read() gives none.
    blocks: list[bytes | bytearray] = field(default_factory=list)


def is_binary(path: str) -> bool:
    """Whether ``trace=path`` writes this format: any name but one ending in ``.json``."""
    return not path.lower().endswith(".json")


def _value_out(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"b": v.hex()}
    return v  # str or None


def write(fh: BinaryIO, raw: RawTrace) -> None:
    """Write ``raw`` to the binary file ``fh``: a header, three blocks of bytes and a little JSON."""
    rest = {
        "values": [_value_out(v) for v in raw.values],
        "workers": [[k.hex(), name, host, pid] for k, (name, host, pid) in raw.workers.items()],
        "lost": [[t, k.hex(), btid, reason, given_up] for t, k, btid, reason, given_up in raw.lost],
        "job_events": [list(e) for e in raw.job_events],
        "job_counts": [[t, c] for t, c in raw.job_counts],
        "meta": raw.meta,
        "dropped": raw.dropped,
        "created": raw.created,
        "limit": raw.limit,
    }
    tail = json.dumps(rest, separators=(",", ":"), default=str).encode("ascii")
    records = [*raw.blocks, raw.records]
    n = sum(map(len, records)) // TASK_RECORD.size
    d = len(raw.sent) // DISPATCH.size
    fh.write(_HEADER.pack(MAGIC, FILE_VERSION, TASK_RECORD.size, 0, n, d, len(tail)))
    for block in records:
        fh.write(block)
    fh.write(raw.sent)
    fh.write(tail)


def read_bytes(path: str) -> bytes:
    """A timeline file's bytes; TraceError when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except OSError as exc:
        raise TraceError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def read(path: str) -> RawTrace:
    """Read and check a binary timeline; TraceError names the first problem found."""
    return parse(read_bytes(path), path)


def parse(data: bytes, path: str = "<bytes>") -> RawTrace:
    """``read()`` of bytes already in memory."""
    if len(data) < _HEADER.size:
        if data and not MAGIC.startswith(data[: len(MAGIC)]):
            raise TraceError(f"{path} is not a scoopexec binary timeline (no {MAGIC.decode()} header)")
        raise TraceError(
            f"{path} is truncated: {len(data)} bytes, shorter than the {_HEADER.size}-byte header"
        )
    magic, version, rsize, flags, n, d, j = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise TraceError(f"{path} is not a scoopexec binary timeline (no {MAGIC.decode()} header)")
    if version != FILE_VERSION:
        raise TraceError(
            f"{path} is a binary timeline of format version {version}; this scoopexec reads version "
            f"{FILE_VERSION} (export it to JSON with the scoopexec that wrote it)"
        )
    if rsize != TASK_RECORD.size:
        raise TraceError(
            f"{path}: task records of {rsize} bytes in the header, the format's are {TASK_RECORD.size}"
        )
    if flags:
        raise TraceError(f"{path}: unknown flags {flags:#x} in the header")
    expected = _HEADER.size + n * rsize + 16 * d + j
    if len(data) < expected:
        raise TraceError(
            f"{path} is truncated: the header promises {n:,} task records, {d:,} dispatches and {j:,} bytes "
            f"of JSON ({expected:,} bytes in all), the file has {len(data):,} bytes"
        )
    if len(data) > expected:
        raise TraceError(
            f"{path} has {len(data) - expected:,} bytes after the end the header gives ({expected:,})"
        )
    view = memoryview(data)
    pos = _HEADER.size
    records = bytes(view[pos : pos + n * rsize])
    pos += n * rsize
    sent = bytes(view[pos : pos + 16 * d])
    pos += 16 * d
    try:
        rest = json.loads(bytes(view[pos:]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TraceError(f"{path}: its JSON part is damaged ({type(exc).__name__}: {exc})") from None
    raw = _unpack_rest(rest, path)
    raw.records, raw.sent = records, sent
    _check_records(raw, path)
    far = _FAR
    if not all(0 <= t < far for _, t in DISPATCH.iter_unpack(sent)):
        raise TraceError(f"{path}: a dispatch time is not a number of seconds it could be")
    return raw


class _Bad(Exception):
    """Raised inside _unpack_rest; becomes a TraceError naming the field."""


def _get(doc: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    v = doc.get(key)
    if not isinstance(v, kind) or (isinstance(v, bool) and kind in (int, float, (int, float))):
        raise _Bad(key)
    return v


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < _FAR:
        raise TypeError("not a time")
    return float(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError("not true or false")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError("not an integer")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError("not a string")
    return v


def _key(v: Any) -> bytes:
    return bytes.fromhex(_str(v))


def _value_in(v: Any) -> Any:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, dict) and set(v) == {"b"}:
        return _key(v["b"])
    raise TypeError("neither a string, a key nor null")


def _unpack_rest(rest: Any, path: str) -> RawTrace:
    if not isinstance(rest, dict):
        raise TraceError(f"{path}: its JSON part is not an object")
    what = ""
    try:
        what = "values"
        values = [_value_in(v) for v in _get(rest, "values", list)]
        what = "workers"
        workers: dict[bytes, tuple[str, str, Any]] = {}
        for k, name, host, pid in _get(rest, "workers", list):
            if pid is not None:
                _int(pid)
            workers[_key(k)] = (_str(name), _str(host), pid)
        what = "lost"
        lost = [(_num(t), _key(k), _int(b), _str(r), _bool(g)) for t, k, b, r, g in _get(rest, "lost", list)]
        what = "job_events"
        jobs = [(_num(t), _str(s), _str(j), _str(w)) for t, s, j, w in _get(rest, "job_events", list)]
        what = "job_counts"
        counts = []
        for t, c in _get(rest, "job_counts", list):
            if not isinstance(c, dict):
                raise TypeError("not an object")
            counts.append((_num(t), {_str(k): _int(v) for k, v in c.items()}))
        what = "meta"
        meta = _get(rest, "meta", dict)
        what = "dropped"
        dropped = _int(_get(rest, "dropped", int))
        what = "created"
        created = _num(_get(rest, "created", (int, float)))
        what = "limit"
        limit = _int(_get(rest, "limit", int))
    except (_Bad, TypeError, ValueError) as exc:  # (ValueError: a bad hex key, or a wrong number of fields)
        raise TraceError(f"{path}: the {what!r} part of its JSON is damaged ({exc or 'missing'})") from None
    if dropped < 0 or limit < 0:
        raise TraceError(f"{path}: negative counts in its JSON part")
    return RawTrace(b"", b"", values, workers, lost, jobs, counts, meta,
                    dropped, created, limit)  # fmt: skip


def _check_records(raw: RawTrace, path: str) -> None:
    """Every index a record holds names a value of the right kind; every time is finite."""
    values = raw.values
    nv = len(values)
    clients: set[int] = set()
    names: set[int] = set()
    keys: set[int] = set()
    far = _FAR
    for i, r in enumerate(TASK_RECORD.iter_unpack(raw.records)):
        clients.add(r[_CLIENT])
        names.add(r[_NAME])
        keys.add(r[_WORKER])
        # (finite and not absurd; a little below 0 is possible: a remote worker's clock, corrected)
        if not (-far < r[4] < far and -far < r[5] < far and -far < r[6] < far and -far < r[7] < far):
            raise TraceError(
                f"{path}: task record {i} holds a time that is not a number of seconds it could be"
            )
    for used, kinds, what in ((clients, (bytes, type(None)), "client"), (names, (str,), "function name"),
                              (keys, (bytes,), "worker")):  # fmt: skip
        for idx in used:
            if idx >= nv:
                raise TraceError(f"{path}: a task record names {what} {idx}, the table has {nv} values")
            if not isinstance(values[idx], kinds):
                raise TraceError(
                    f"{path}: a task record's {what} (value {idx}) is a {type(values[idx]).__name__}"
                )
