"""Resumable maps: ``ex.map(fn, xs, journal="run.journal")``.

Each result is appended to the journal file as it arrives.  Running the same map
again -- after the process was killed, the machine rebooted, the job hit its
walltime -- reads the journal first, hands back the recorded results and runs only
the items that have no record.  Results come back in order, as with any map.

What a record is kept under (its key, 16 bytes of BLAKE2b) is the function's identity
(a hash of its pickled definition: by value for functions of the main script, with
their code but not their line numbers; for importable functions, their name plus
their bytecode), the map's ``seed=`` and the item's index when seeded (seeding.py),
and a hash of the item's pickled arguments.  A changed function, seed or item never
finds a stale record; a record that is not used is left in place.  Not seen: a change
in an importable function that the mapped function calls (start a new journal then).

The file::

    header   b"SCXJOURN" | u32 version | u32 crc32(first 12 bytes)            16 bytes
    record   u64 payload length | u32 crc32(payload) | key (16 bytes) |
             u32 crc32(the 28 bytes before)                                  32 bytes
             payload: the result, pickled

Records are appended with one ``write`` each.  A process killed (SIGKILL) in the
middle of one leaves a torn last record: it is ignored, the file is cut back to the
last whole record, and that item runs again.  The file is ``fsync``-ed at most once
a second while results arrive and when the map ends, so a crash of the whole machine
loses at most the last second's results (they are computed again); a process that
is merely killed loses nothing written.  A journal whose header or whose records in
the middle do not check out raises ``JournalError`` naming the file, the record
number and its byte offset: nothing is recomputed or returned silently.  One map at
a time may use a journal file (an ``flock``); a second one gets ``JournalError``.

Opening walks the records and keeps an index (key -> offset) in memory; results are
read back when their turn comes.  When a map ends, that index is saved beside the
journal (``PATH.idx``, a cache): the next open checks the journal's bytes it covers
against their CRC in one pass and walks only the records appended since, so a journal
of a million records opens in well under a second; without a usable PATH.idx (or if
those bytes changed) the whole journal is walked and checked.  An item that raised is
not recorded: it runs again next time.
"""

from __future__ import annotations

import array
import collections
import concurrent.futures as cf
import contextlib
import fcntl
import io
import logging
import mmap
import os
import pickle
import struct
import threading
import time
import types
import weakref
import zlib
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import cloudpickle

from .errors import JournalError
from .seeding import SeededCall, check_seed
from .wire import serialize

if TYPE_CHECKING:
    import hashlib

__all__ = ["Journal", "MapPlan", "function_identity", "item_key"]

log = logging.getLogger("scoopexec")

MAGIC = b"SCXJOURN"
VERSION = 1
_HEAD = struct.Struct("<8sI")  # magic, version; then crc32 of these 12 bytes
HEADER_SIZE = _HEAD.size + 4
_REC = struct.Struct("<QI16sI")  # payload length, payload crc32, key, crc32 of the 28 bytes before
RECORD_HEADER = _REC.size
_IDX = struct.Struct("<8sQIQQ")  # the index file's fixed part (see Journal._load_index_file)
IDX_MAGIC = b"SCXJIDX1"
FSYNC_EVERY = 1.0  # seconds: the most results a machine crash may cost
KEY_SIZE = 16


class Journal:
    """One journal file, open for a map: its index, appends, fsync policy and lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.index: dict[bytes, int] = {}  # key -> offset of its record
        self.records = 0
        self._lock = threading.Lock()
        self._closed = False
        self._last_sync = time.monotonic()
        self._dirty = False
        self._crc = 0  # crc32 of the journal's bytes up to self.end
        self._indexed = 0  # bytes of the journal that PATH.idx covers
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open the journal {self.path}: {exc.strerror or exc}") from exc
        self.fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)  # a map never iterated: still closed
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalError(
                    f"the journal {self.path} is in use by another map (in this process or another "
                    "one); a journal serves one map at a time"
                ) from None
            self._load()
        except BaseException:
            self._finalizer()
            raise

    # ------------------------------------------------------------- reading
    def _load(self) -> None:
        size = os.fstat(self.fd).st_size
        head = _HEAD.pack(MAGIC, VERSION)
        head += struct.pack("<I", zlib.crc32(head))
        if size < HEADER_SIZE and head.startswith(os.pread(self.fd, size, 0)):
            # New, or killed while its header was being written: (re)write the header.
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            _write_all(self.fd, [head])
            os.fsync(self.fd)
            self.end = HEADER_SIZE
            self._crc = zlib.crc32(head)
            return
        self._check_header(os.pread(self.fd, HEADER_SIZE, 0))
        with mmap.mmap(self.fd, size, access=mmap.ACCESS_READ) as mm:
            mv = memoryview(mm)
            try:
                off = self._load_index_file(mv)
                self._walk(mv, off)
            finally:
                mv.release()
        if self.end < size:
            log.warning(
                "journal %s: ignored an incomplete last record at byte %d (%d bytes; the run that "
                "wrote it was interrupted) and cut the file there", self.path, self.end, size - self.end,
            )  # fmt: skip
            os.ftruncate(self.fd, self.end)
            os.fsync(self.fd)

    def _walk(self, mv: memoryview, off: int) -> None:
        """Check and index the records from ``off`` on; ``self.end``: after the last whole one."""
        n, index, size = self.records, self.index, len(mv)
        unpack, crc32 = _REC.unpack_from, zlib.crc32
        first = off
        while off < size:
            if size - off < RECORD_HEADER:
                break  # torn: the last record's header was cut short
            plen, pcrc, key, hcrc = unpack(mv, off)
            if crc32(mv[off : off + 28]) != hcrc:
                if not any(mv[off:]):
                    break  # zeros after a machine crash: a record never written
                raise self._corrupt(n, off, "its header does not match its checksum")
            start = off + RECORD_HEADER
            end = start + plen
            if end > size:
                break  # torn: the last record's payload was cut short
            if crc32(mv[start:end]) != pcrc:
                if end == size:
                    break  # the last record's payload never reached the disk whole
                raise self._corrupt(n, off, "its result does not match its checksum")
            index[key] = off
            off = end
            n += 1
        self.records = n
        self.end = off
        self._crc = zlib.crc32(mv[first:off], self._crc)

    # The index file PATH.idx caches the index of the records a map found or wrote, so that
    # the next open need not walk them: it is used only if the journal's bytes it covers
    # still have the CRC it recorded (else the journal is walked from the start, as if
    # there were none).  Layout: magic, covered bytes, their crc32, records, entries,
    # keys (entries x 16 bytes), offsets (entries x u64), crc32 of all that.
    def _load_index_file(self, mv: memoryview) -> int:
        """Load PATH.idx if it matches the journal; return the offset to walk on from."""
        self.records, self._crc, self._indexed = 0, 0, 0
        try:
            with open(self.path + ".idx", "rb") as fh:
                idx = fh.read()
        except OSError:
            idx = b""
        fixed = _IDX.size
        if len(idx) >= fixed + 4 and zlib.crc32(idx[:-4]) == struct.unpack_from("<I", idx, len(idx) - 4)[0]:
            magic, covered, crc, records, entries = _IDX.unpack_from(idx)
            if (
                magic == IDX_MAGIC
                and len(idx) == fixed + entries * (KEY_SIZE + 8) + 4
                and HEADER_SIZE <= covered <= len(mv)
                and zlib.crc32(mv[:covered]) == crc
            ):
                keys_end = fixed + entries * KEY_SIZE
                keys = [idx[i : i + KEY_SIZE] for i in range(fixed, keys_end, KEY_SIZE)]
                offsets = array.array("Q")
                offsets.frombytes(idx[keys_end : keys_end + entries * 8])
                self.index = dict(zip(keys, offsets.tolist(), strict=True))
                self.records, self._crc, self._indexed = records, crc, covered
                return int(covered)
        self._crc = zlib.crc32(mv[:HEADER_SIZE])
        return HEADER_SIZE

    def _save_index_file(self) -> None:
        """Write PATH.idx for what the journal holds now (best effort: it is only a cache)."""
        if self._indexed == self.end:
            return
        keys = b"".join(self.index)
        offsets = array.array("Q", self.index.values()).tobytes()
        body = _IDX.pack(IDX_MAGIC, self.end, self._crc, self.records, len(self.index)) + keys + offsets
        tmp = f"{self.path}.idx.{os.getpid()}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(body)
                fh.write(struct.pack("<I", zlib.crc32(body)))
            os.replace(tmp, self.path + ".idx")
        except OSError as exc:
            log.debug("journal %s: could not write its index file: %s", self.path, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _check_header(self, data: bytes) -> None:
        if len(data) < HEADER_SIZE:
            raise JournalError(f"{self.path} is not a scoopexec journal ({len(data)} bytes of another kind)")
        magic, version = _HEAD.unpack_from(data)
        (crc,) = struct.unpack_from("<I", data, _HEAD.size)
        if magic != MAGIC:
            raise JournalError(f"{self.path} is not a scoopexec journal (its first bytes are {data[:8]!r})")
        if zlib.crc32(data[: _HEAD.size]) != crc:
            raise JournalError(f"the journal {self.path} has a damaged header (checksum mismatch)")
        if version != VERSION:
            raise JournalError(
                f"the journal {self.path} has format version {version}; this scoopexec reads version "
                f"{VERSION} (use the scoopexec that wrote it, or start a new journal)"
            )

    def _corrupt(self, n: int, off: int, what: str) -> JournalError:
        return JournalError(
            f"the journal {self.path} is damaged at record {n} (byte {off}): {what}. Nothing was "
            "recomputed; move the file aside to start again, or truncate it to this offset to keep "
            "the records before it"
        )

    def __contains__(self, key: bytes) -> bool:
        return key in self.index

    def get(self, key: bytes) -> Any:
        """The recorded result for ``key`` (KeyError if none)."""
        off = self.index[key]
        head = os.pread(self.fd, RECORD_HEADER, off)
        plen, pcrc, rkey, _ = _REC.unpack_from(head)
        payload = os.pread(self.fd, plen, off + RECORD_HEADER)
        if rkey != key or len(payload) != plen or zlib.crc32(payload) != pcrc:
            raise JournalError(
                f"the journal {self.path} changed under this map: the record at byte {off} no longer "
                "checks out"
            )
        try:
            return pickle.loads(payload)
        except Exception as exc:
            raise JournalError(
                f"cannot load the result recorded in {self.path} at byte {off}: {type(exc).__name__}: "
                f"{exc} (was it written by another version of the code?)"
            ) from exc

    # ------------------------------------------------------------- writing
    def append(self, key: bytes, payload: bytes) -> None:
        """Append one record (no-op once closed: the result is computed again next time)."""
        head = _REC.pack(len(payload), zlib.crc32(payload), key, 0)[:28]
        head += struct.pack("<I", zlib.crc32(head))
        with self._lock:
            if self._closed:
                return
            os.lseek(self.fd, self.end, os.SEEK_SET)
            _write_all(self.fd, [head, payload])
            self._crc = zlib.crc32(payload, zlib.crc32(head, self._crc))
            self.index[key] = self.end
            self.end += len(head) + len(payload)
            self.records += 1
            self._dirty = True
            now = time.monotonic()
            if now - self._last_sync >= FSYNC_EVERY:
                os.fsync(self.fd)
                self._last_sync, self._dirty = now, False

    def close(self) -> None:
        """fsync what was appended, release the lock, close the file; harmless twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._dirty:
                    os.fsync(self.fd)
                self._save_index_file()
            finally:
                self._finalizer()


def _write_all(fd: int, parts: list[bytes]) -> None:
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def open_journal(path: str | os.PathLike[str]) -> Journal:
    return Journal(path)


# ---------------------------------------------------------------- identities
def _code_key(code: types.CodeType) -> tuple[Any, ...]:
    """A code object as what it does, without where it is (file, line numbers)."""
    return (
        tuple,
        (
            (
                "code",
                code.co_name,
                getattr(code, "co_qualname", code.co_name),
                code.co_argcount,
                code.co_posonlyargcount,
                code.co_kwonlyargcount,
                code.co_flags,
                code.co_code,
                tuple(_const_key(c) for c in code.co_consts),
                code.co_names,
                code.co_varnames,
                code.co_freevars,
                code.co_cellvars,
                getattr(code, "co_exceptiontable", b""),
            ),
        ),
    )


def _const_key(c: Any) -> Any:
    if isinstance(c, frozenset):  # its iteration order changes with the hash seed
        return ("frozenset", tuple(sorted(repr(x) for x in c)))
    if isinstance(c, tuple):
        return tuple(_const_key(x) for x in c)
    return c


class _KeyPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """Pickles for hashing, never loaded: code without locations, classes of the main script
    by name (cloudpickle would give them a random id in every process)."""

    dispatch_table = ChainMap({types.CodeType: _code_key}, cloudpickle.Pickler.dispatch_table)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type) and getattr(obj, "__module__", "") == "__main__":
            return (str, (f"<class __main__.{obj.__qualname__}>",))
        name = serialize.shared_generator(obj)
        if name is not None:  # (by name, as in a function frame: its state changes at every draw)
            return name
        return super().reducer_override(obj)


def _key_dumps(obj: Any) -> bytes:
    with io.BytesIO() as fh:
        _KeyPickler(fh, 5).dump(obj)
        return fh.getvalue()


def _blake2b(person: bytes, data: bytes = b"") -> hashlib.blake2b:
    """A BLAKE2b of KEY_SIZE bytes.  hashlib is imported here, on first use: at the top it loaded
    OpenSSL (about 3 ms) into every ``from scoopexec import ScoopExecutor``, for journaled runs only."""
    import hashlib  # stdlib, lazy: see above

    return hashlib.blake2b(data, digest_size=KEY_SIZE, person=person)


def function_identity(fn: Callable[..., Any]) -> bytes:
    """16 bytes that change when ``fn``'s definition does (see the module docstring)."""
    h = _blake2b(b"scoopexec-fn1")
    h.update(_key_dumps(fn))
    for part in _callables(fn):
        code = getattr(part, "__code__", None)
        if isinstance(code, types.CodeType):  # importable functions pickle by name only
            h.update(_key_dumps(code))
    return h.digest()


def _callables(fn: Any) -> Iterator[Any]:
    seen = 0
    while fn is not None and seen < 8:
        seen += 1
        yield fn
        fn = getattr(fn, "func", None) or getattr(fn, "__func__", None)


class _SetsSorted(pickle._Pickler):  # the Python pickler: it asks reducer_override about every object
    """Pickles for hashing, with the elements of every set and frozenset in one order (that of
    their own such pickles), not the hash order, which changes with PYTHONHASHSEED."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in (set, frozenset):
            return (type(obj), (sorted(obj, key=_sets_sorted_dumps),))
        return NotImplemented


def _sets_sorted_dumps(obj: Any) -> bytes:
    with io.BytesIO() as fh:
        _SetsSorted(fh, 5).dump(obj)
        return fh.getvalue()


def item_key(fn_id: bytes, seed_part: bytes, args: tuple[Any, ...]) -> bytes:
    """The key of one item's record."""
    try:
        data = pickle.dumps(args, 5)  # the C pickler: fast, and deterministic for plain data
        if b"\x8f" in data or b"\x91" in data:  # EMPTY_SET, FROZENSET (or bytes that look so): sets
            data = _sets_sorted_dumps(args)
    except Exception:
        data = _key_dumps(args)
    h = _blake2b(b"scoopexec-item1", fn_id)
    h.update(struct.pack("<I", len(seed_part)))
    h.update(seed_part)
    h.update(data)
    return h.digest()


def _result_bytes(value: Any) -> bytes:
    try:
        return pickle.dumps(value, 5)
    except Exception:
        return cloudpickle.dumps(value, 5)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- one map
_RECORDED = object()


class MapPlan:
    """What a map with ``journal=`` and/or ``seed=`` does besides the plain map.

    ``items(zipped)`` passes on the items to compute (as ``(index, *args)`` when
    seeded) and keeps the recorded ones; ``watch(future, n)`` records the results of
    the task just submitted for the next ``n`` computed items; ``merge(gen)`` yields
    recorded and computed results in the map's order.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        seed: Any,
        journal: str | os.PathLike[str] | None,
        done_one: Callable[[], None] | None = None,
        unchunk: Callable[[Any], list[Any]] | None = None,
    ) -> None:
        self.entropy = check_seed(seed) if seed is not None else None
        self.call_fn: Callable[..., Any] = fn if self.entropy is None else SeededCall(fn, self.entropy)
        self.journal: Journal | None = None
        self.fn_id = b""
        if journal is not None:
            try:
                self.fn_id = function_identity(fn)
            except Exception as exc:
                raise JournalError(
                    f"journal={os.fspath(journal)!r} needs the function's identity, but it cannot be "
                    f"pickled: {type(exc).__name__}: {exc}"
                ) from exc
            self.journal = open_journal(journal)
        self._seed_head = b"" if self.entropy is None else repr(self.entropy).encode()
        self._done_one = done_one
        self._unchunk = unchunk  # a chunk task's result -> the results of its items that succeeded
        # In source order: for a recorded item, its key and _RECORDED; for a computed one, its key.
        self.order: collections.deque[tuple[bytes, Any]] = collections.deque()
        # The computed items not yet submitted: (key or b"", index in the map).
        self._pending: collections.deque[tuple[bytes, int]] = collections.deque()
        self._settled: dict[bytes, BaseException | None] = {}
        self._settle_lock = threading.Lock()
        self._callbacks = threading.Condition()  # counts the done-callbacks still to run
        self._outstanding = 0
        # False when the map's results may be stand-ins (map(on_timeout=)): only the tasks'
        # own results, seen by the done-callbacks, are recorded then.
        self.record_yielded = True
        self.recorded = 0
        self.computed = 0

    def items(self, zipped: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        journal = self.journal
        for index, args in enumerate(zipped):
            key = b""
            if journal is not None:
                seed_part = self._seed_head + b"/" + str(index).encode() if self.entropy is not None else b""
                try:
                    key = item_key(self.fn_id, seed_part, args)
                except Exception:
                    key = b""  # cannot be pickled: sending it fails, and names the culprit
                if key in journal:
                    self.order.append((key, _RECORDED))
                    self.recorded += 1
                    if self._done_one is not None:
                        self._done_one()
                    continue
                self.order.append((key, None))
            self._pending.append((key, index))
            self.computed += 1
            yield (index, *args) if self.entropy is not None else args

    def next_index(self) -> int:
        """The index in the map of the next item to be submitted (for error messages)."""
        return self._pending[0][1] if self._pending else -1

    def watch(self, fut: cf.Future[Any], n: int) -> None:
        """The task just submitted holds the next ``n`` computed items."""
        keys = [self._pending.popleft()[0] for _ in range(n)]
        if self.journal is not None:
            with self._callbacks:
                self._outstanding += 1
            fut.add_done_callback(lambda f: self._on_done(f, keys))

    def _on_done(self, fut: cf.Future[Any], keys: list[bytes]) -> None:
        try:
            if fut.cancelled() or fut.exception() is not None:
                return
            value = fut.result()
            if self._unchunk is not None:
                for key, v in zip(keys, self._unchunk(value), strict=False):
                    self._record(key, v)
            else:
                self._record(keys[0], value)
        finally:
            with self._callbacks:
                self._outstanding -= 1
                self._callbacks.notify_all()

    def _record(self, key: bytes, value: Any) -> None:
        """Append ``value`` unless it was already (from the done-callback or the consumer)."""
        assert self.journal is not None
        if not key or key in self._settled:
            return
        error: BaseException | None = None
        payload = b""
        try:
            payload = _result_bytes(value)  # user code (__reduce__): outside any lock
        except Exception as exc:
            error = JournalError(
                f"cannot record a result of {type(value).__name__} in the journal {self.journal.path}: "
                f"it cannot be pickled: {type(exc).__name__}: {exc}"
            )
            error.__cause__ = exc
        with self._settle_lock:  # held while appending: a key is settled once its record is written
            if key in self._settled:
                return
            if error is None:
                try:
                    self.journal.append(key, payload)
                except OSError as exc:  # a full disk, say: the map must not go on as if recorded
                    error = JournalError(f"cannot write to the journal {self.journal.path}: {exc}")
                    error.__cause__ = exc
            self._settled[key] = error

    def merge(self, gen: Iterator[Any], unordered: bool) -> Iterator[Any]:
        """The map's results: recorded ones read back, the others from ``gen``."""
        try:
            if unordered:
                yield from self._merge_unordered(gen)
            else:
                yield from self._merge_ordered(gen)
        finally:
            self.close()
            close = getattr(gen, "close", None)
            if close is not None:
                close()

    def _recorded_value(self, key: bytes) -> Any:
        assert self.journal is not None
        return self.journal.get(key)

    def _merge_ordered(self, gen: Iterator[Any]) -> Iterator[Any]:
        # Every item was read (and queued in ``order``) before its result can come out of
        # ``gen``, and reading on to the next computed item queues the recorded ones between.
        order = self.order
        if self.journal is None:
            yield from gen
            return
        while order:
            key, mark = order.popleft()
            if mark is _RECORDED:
                yield self._recorded_value(key)
                continue
            value = next(gen, _END)
            if value is _END:
                raise JournalError("internal: a map ended before all its items came back")
            yield self._checked(key, value)
        if next(gen, _END) is not _END:
            raise JournalError("internal: a map gave more results than it had items")
        if not self.record_yielded:
            # Only the done-callbacks record here (map(on_timeout=)), and a future wakes its
            # waiter before it runs them: the last results may not be written yet.
            with self._callbacks:
                self._callbacks.wait_for(lambda: self._outstanding == 0, timeout=60)
            self._raise_unrecordable()

    def _checked(self, key: bytes, value: Any) -> Any:
        if self.record_yielded:
            self._record(key, value)  # a no-op if the done-callback did it
        error = self._settled.get(key)
        if error is not None:
            raise error
        return value

    def _merge_unordered(self, gen: Iterator[Any]) -> Iterator[Any]:
        # Recorded results are ready at once; computed ones come in the order they complete.
        yield from self._recorded_ready()
        for value in gen:
            self._raise_unrecordable()
            yield value
            yield from self._recorded_ready()
        yield from self._recorded_ready()
        with self._callbacks:  # the last results' callbacks may still be recording them
            self._callbacks.wait_for(lambda: self._outstanding == 0, timeout=60)
        self._raise_unrecordable()

    def _recorded_ready(self) -> Iterator[Any]:
        while self.order:
            key, mark = self.order.popleft()
            if mark is _RECORDED:
                yield self._recorded_value(key)

    def _raise_unrecordable(self) -> None:
        for error in list(self._settled.values()):
            if error is not None:
                raise error

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()


_END = object()


def entries(path: str | os.PathLike[str]) -> Iterable[tuple[bytes, Any]]:
    """(key, result) of every record of the journal at ``path``, in file order (for inspection)."""
    j = open_journal(path)
    try:
        for key, _ in sorted(j.index.items(), key=lambda kv: kv[1]):
            yield key, j.get(key)
    finally:
        j.close()
