"""A large function frame reaches each worker once (wire/fnframes.py): a function of the
script, a lambda or a closure that refers to megabytes is pickled with them, and those bytes
went to a worker with every task (a map of 200 items over a 20 MB global: 3.1 s, against
ProcessPoolExecutor's 0.02 s).  These tests run real pools; the broker's and the worker's
books alone are tested at the end."""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import time
import warnings

import pytest

from scoopexec import ScoopExecutor
from scoopexec.broker.ledger import FORGED, Ledger, WorkerState, task_entries
from scoopexec.errors import LargeFunctionWarning
from scoopexec.wire import fnframes, serialize
from scoopexec.wire import protocol as P
from tests import helpers

pytestmark = pytest.mark.filterwarnings("ignore::scoopexec.errors.LargeFunctionWarning")


def _closure(data):
    def probe(i):  # (a closure: by value, with the bytes it refers to)
        pid, held = helpers.held_function_frames()
        return i + data[i % 8], pid, held

    return probe


@pytest.mark.parametrize("transport", ["link", "zmq"])
def test_each_worker_receives_a_large_function_once(monkeypatch, transport):
    monkeypatch.setenv("SCOOPEXEC_LOCAL_TRANSPORT", transport)
    data = bytearray(range(8)) * (1 << 17)  # 1 MiB
    probe = _closure(data)
    with ScoopExecutor(max_workers=2) as ex:
        out = list(ex.map(probe, range(40)))
        more = [ex.submit(probe, i).result(timeout=60) for i in range(40, 46)]
    assert [v for v, _, _ in out + more] == [i + i % 8 for i in range(46)]
    by_pid: dict[int, set[tuple[object, int]]] = {}
    for _, pid, held in out + more:
        assert len(held) == 1, held
        by_pid.setdefault(pid, set()).update(held.items())
    # One key everywhere (a submit pickles the function to the same bytes as the map), and on
    # each worker one buffer: the frame came whole once, its head alone after that.
    assert len({key for items in by_pid.values() for key, _ in items}) == 1
    assert all(len(items) == 1 for items in by_pid.values()), by_pid


def test_a_pool_with_a_task_timeout_holds_its_large_functions_too():
    probe = _closure(bytearray(1 << 20))  # (each task's function is a TimeLimit around it)
    with ScoopExecutor(1, task_timeout=60) as ex:
        out = [ex.submit(probe, i).result(timeout=60) for i in range(4)]
    assert [v for v, _, _ in out] == list(range(4))
    # The first submit goes whole and unmarked (a callable seen once may be made for one call);
    # from the second on, it is marked: held once, the same buffer.
    assert out[0][2] == {} and all(len(held) == 1 for _, _, held in out[1:])
    assert len({b for _, _, h in out for b in h.values()}) == 1


def test_a_changed_function_goes_whole_again_and_is_what_runs(one_worker):
    data = bytearray(1 << 20)
    probe = _closure(data)
    assert [v for v, _, _ in one_worker.map(probe, range(8))] == list(range(8))
    data[3] = 100  # changed in place: other bytes, another frame
    out = list(one_worker.map(probe, range(8)))
    assert [v for v, _, _ in out] == [i + (100 if i == 3 else 0) for i in range(8)]
    assert len(out[-1][2]) == 2  # both held now (within fnframes.HELD_FRAMES)
    data[3] = 0  # back as it was: the first frame again, held already
    assert [v for v, _, _ in one_worker.map(probe, range(8))] == list(range(8))


def test_a_held_frame_leaves_the_pool_of_receive_buffers(one_worker):
    probe = _closure(bytearray(3 << 20))  # (3 MiB: received into a pooled buffer, framing.BIG)
    assert [v for v, _, _ in one_worker.map(probe, range(4))] == list(range(4))
    # Held for good: left in the pool, it would keep an idle worker waking every 10 s to
    # trim a pool that never empties, and take one of its 4 places.
    assert one_worker.submit(helpers.held_frames_in_receive_pool).result(timeout=60) == (0, 1)


def test_a_worker_that_lost_a_frame_gets_it_whole_again(one_worker):
    probe = _closure(bytearray(1 << 20))
    assert [v for v, _, _ in one_worker.map(probe, [1])] == [1]
    assert one_worker.submit(helpers.forget_function_frames).result(timeout=60) == 1
    # The broker sends the head alone; the worker does not hold it: it hands the task back
    # (RETURN arg 1), and the broker sends the frame whole.
    value, _, held = one_worker.submit(probe, 2).result(timeout=60)
    assert value == 2 and len(held) == 1
    assert [v for v, _, _ in one_worker.map(probe, range(5))] == list(range(5))


def test_a_head_alone_from_a_client_fails_its_task_and_nothing_else(one_worker):
    data = serialize.encode_function(_closure(bytearray(1 << 20)), repeats=True)
    assert data[:1] == b"\x00" and len(data) > fnframes.MIN_SIZE
    args = serialize.encode_args((1,), {})
    assert one_worker.submit(abs, -1).result(timeout=60) == 1  # (the pool runs)
    forged = one_worker._session.submit([data[: fnframes.HEAD], *args], "forged")
    with pytest.raises(Exception, match="could not be unpickled"):
        forged.result(timeout=60)
    good = one_worker._session.submit([data, *args], "whole")
    assert good.result(timeout=60)[0] == 1


def test_a_large_function_is_still_warned_about_once():
    data = bytearray(2 << 20)
    fn = lambda i: data[i]  # noqa: E731
    with ScoopExecutor(1) as ex:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert list(ex.map(fn, range(3))) == [0, 0, 0]
            assert ex.submit(fn, 1).result(timeout=60) == 0
    said = [w for w in seen if w.category is LargeFunctionWarning]
    assert len(said) == 1 and "2.1 MB at every submit (once per map" in str(said[0].message)


# ------------------------------------ large buffers apart from the pickle (packed frames)


def _array_closure(arr):
    def peek(i):  # (reads its array; by value, the array out of band: a packed frame)
        pid, held = helpers.held_function_frames()
        return float(arr[i % 8]), bool(arr.flags.writeable), pid, held

    return peek


class _Bumper:
    """A callable object holding an array: unpickled afresh for every task (not re-used)."""

    def __init__(self, arr):
        self.arr = arr

    def __call__(self, i):
        self.arr[0] += 1  # (writable, and this task's own copy: every task sees 0 before)
        return float(self.arr[0])


def test_a_function_reading_a_large_array_is_packed_and_pickled_without_copying_it():
    np = pytest.importorskip("numpy")
    arr = np.arange(1 << 17, dtype=np.float64)  # 1 MiB
    peek = _array_closure(arr)
    frame = serialize.encode_function(peek, repeats=True)
    assert frame[:1] == b"\x00" and frame[fnframes.HEAD] == fnframes.PACKED
    body = frame[fnframes.HEAD :]
    pickled = fnframes.pickle_of(body)
    assert len(pickled) < 8192 and arr.tobytes() not in pickled  # (the array is not in the pickle)
    assert frame.endswith(arr.tobytes())  # (it follows it)
    assert serialize.encode_function(peek, repeats=True) is frame  # the same bytes: the same frame
    copy = serialize.loads_function(body).__closure__[0].cell_contents
    assert copy is not arr and copy.flags.writeable and np.array_equal(copy, arr)


@pytest.mark.parametrize("transport", ["link", "zmq"])
def test_each_worker_receives_a_function_reading_a_large_array_once(monkeypatch, transport):
    np = pytest.importorskip("numpy")
    monkeypatch.setenv("SCOOPEXEC_LOCAL_TRANSPORT", transport)
    arr = np.tile(np.arange(8, dtype=np.float64), 1 << 14)  # 1 MiB; arr[i % 8] == i % 8
    peek = _array_closure(arr)
    with ScoopExecutor(max_workers=2) as ex:
        out = list(ex.map(peek, range(40)))
        more = [ex.submit(peek, i).result(timeout=60) for i in range(40, 46)]
    assert [v for v, _, _, _ in out + more] == [float(i % 8) for i in range(46)]
    assert all(w for _, w, _, _ in out + more)  # writable on the worker, as it is here
    by_pid: dict[int, set[tuple[object, int]]] = {}
    for _, _, pid, held in out + more:
        assert len(held) == 1, held
        by_pid.setdefault(pid, set()).update(held.items())
    assert len({key for items in by_pid.values() for key, _ in items}) == 1
    assert all(len(items) == 1 for items in by_pid.values()), by_pid


def test_a_packed_frame_gives_each_unpickle_its_own_array_read_only_if_it_was(one_worker):
    np = pytest.importorskip("numpy")
    bump = _Bumper(np.zeros(1 << 17))
    out = [one_worker.submit(bump, i).result(timeout=60) for i in range(4)]
    assert out == [1.0] * 4  # no task saw another's change (nor the held frame changed)
    assert list(one_worker.map(bump, range(4))) == [1.0] * 4
    assert bump.arr[0] == 0
    frozen = np.ones(1 << 17)
    frozen.setflags(write=False)
    peek = _array_closure(frozen)
    assert [w for _, w, _, _ in one_worker.map(peek, range(3))] == [False] * 3


def test_an_array_changed_in_place_goes_whole_again_and_is_what_runs(one_worker):
    np = pytest.importorskip("numpy")
    arr = np.zeros(1 << 17)
    peek = _array_closure(arr)
    assert [v for v, _, _, _ in one_worker.map(peek, range(8))] == [0.0] * 8
    arr[3] = 100.0  # changed in place: other buffer bytes, another frame
    out = list(one_worker.map(peek, range(8)))
    assert [v for v, _, _, _ in out] == [100.0 if i == 3 else 0.0 for i in range(8)]
    assert len(out[-1][3]) == 2
    arr[3] = 0.0  # as it was: the first frame again, held already
    out = list(one_worker.map(peek, range(8)))
    assert [v for v, _, _, _ in out] == [0.0] * 8 and len(out[-1][3]) == 2


def test_a_malformed_packed_frame_fails_its_task_with_a_clear_error(one_worker):
    np = pytest.importorskip("numpy")
    good = serialize.dumps_function(_array_closure(np.zeros(1 << 17)))
    assert good[0] == fnframes.PACKED
    args = serialize.encode_args((1,), {})
    for bad in (good[:-1], good[:5], good[:13] + b"\xff" + good[14:]):
        with pytest.raises(ValueError, match="packed function frame"):
            fnframes.unpack(bad)
        f = one_worker._session.submit([bad, *args], "malformed")
        with pytest.raises(Exception, match=r"could not be unpickled.*packed function frame"):
            f.result(timeout=60)
    assert one_worker._session.submit([good, *args], "whole").result(timeout=60)[0] == 0.0


def test_a_packed_frame_with_too_many_or_empty_buffers_is_refused_at_once():
    import struct

    def frame(count, sizes, pickled=b"\x80\x05N."):
        head = struct.pack("<BIQ", fnframes.PACKED, count, len(pickled))
        return head + b"".join(struct.pack("<QB", n, 0) for n in sizes) + pickled + b"x" * sum(sizes)

    assert fnframes.unpack(frame(2, [3, 1]))[1] == [bytearray(b"xxx"), bytearray(b"x")]
    for bad in (
        frame(fnframes.MAX_BUFFERS + 1, [1] * (fnframes.MAX_BUFFERS + 1)),  # (more than a client makes)
        frame(3, [0, 0, 0]),  # (empty buffers: a client's are 64 KiB or more)
        frame(2**32 - 1, []),  # (a count its frame cannot hold)
        frame(1, [5])[:-1],  # (a byte short)
        b"\x02" + frame(1, [5])[1:],  # (not PACKED)
        frame(1, [5])[:13] + struct.pack("<QB", 5, 2) + frame(1, [5])[22:],  # (read-only flag 2)
    ):
        with pytest.raises(ValueError, match="malformed packed function frame"):
            fnframes.unpack(bad)


def test_a_function_with_more_large_buffers_than_a_worker_takes_is_pickled_in_band(monkeypatch):
    np = pytest.importorskip("numpy")
    arrays = [np.full(serialize.OOB_MIN // 8, i, dtype=np.float64) for i in range(3)]

    def total():
        return sum(float(a[0]) for a in arrays)

    assert serialize.dumps_function(total)[0] == fnframes.PACKED
    monkeypatch.setattr(fnframes, "MAX_BUFFERS", 2)  # (three arrays stand for 4,097)
    data = serialize.dumps_function(total)
    assert data[:1] == b"\x80" and serialize.loads_function(data)() == 3.0


def test_a_chunk_of_a_builtin_is_traced_by_its_name():
    import functools

    from scoopexec import autochunk, mapping, pool
    from scoopexec.trace import function_name

    from scoopexec.seeding import SeededCall
    from scoopexec.worker.limits import OnTimeout, TimeLimit

    for runner in (pool._run_chunk, mapping._run_chunk, mapping._run_chunk1, autochunk.run_timed):
        assert function_name(serialize.dumps_function(functools.partial(runner, abs))) == "abs", runner
        limited = TimeLimit(functools.partial(runner, OnTimeout(TimeLimit(abs, 5), None)), 5)
        assert function_name(serialize.dumps_function(limited)) == "abs", runner
    assert function_name(serialize.dumps_function(functools.partial(mapping._starcall, pow))) == "pow"
    seeded = functools.partial(mapping._run_chunk1, SeededCall(abs, (1, 2)))
    assert function_name(serialize.dumps_function(seeded)) == "abs"


def test_a_traced_packed_function_keeps_its_name():
    np = pytest.importorskip("numpy")
    from scoopexec.trace import function_name

    table = np.zeros(1 << 17)

    def reads_a_table(i):
        return table[i]

    frame = serialize.encode_function(reads_a_table, repeats=True)
    assert frame[fnframes.HEAD] == fnframes.PACKED
    assert function_name(frame).endswith("reads_a_table")
    assert function_name(serialize.dumps_function(reads_a_table)).endswith("reads_a_table")


# ----------------------------------------------------------- the books alone


def test_mark_gives_the_same_bytes_one_frame_and_other_bytes_a_new_id():
    fnframes.forget()
    a, b = b"\x80\x05" + b"a" * 1000, b"\x80\x05" + b"b" * 1000
    ma = fnframes.mark([a])
    assert ma[: fnframes.HEAD] == fnframes.head_of(ma) and ma[fnframes.HEAD :] == a
    assert fnframes.mark([bytes(bytearray(a))]) is ma  # equal bytes, another object: the same frame
    mb = fnframes.mark([b])
    assert fnframes.head_of(mb) != fnframes.head_of(ma)
    assert fnframes.mark([b"\x80\x05" + b"a" * 999 + b"b"])[: fnframes.HEAD] not in (ma[:17], mb[:17])
    assert fnframes.head_of(a) is None and fnframes.head_of(b"\x00" * 5) is None
    fnframes.forget()  # (a pool ended): the same bytes get a new id, never an old one again
    again = fnframes.mark([a])
    assert again[fnframes.HEAD :] == a and again[: fnframes.HEAD] != ma[: fnframes.HEAD]
    for _ in range(fnframes.RECENT + 1):
        fnframes.mark([os.urandom(100)])
    assert fnframes.mark([a]) is not again  # (kept: the RECENT last only)


def test_a_forked_child_marks_with_ids_of_its_own():
    fnframes.forget()
    parent = fnframes.mark([b"\x80\x05parent"])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(w, fnframes.mark([b"\x80\x05child"])[: fnframes.HEAD] + bytes([len(fnframes._recent)]))
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    mine = fnframes.mark([b"\x80\x05child"])
    # The same count in both processes; another prefix, so another id; the parent's frames
    # not kept in the child.
    assert got[1:9] != parent[1:9] and got[: fnframes.HEAD] != mine[: fnframes.HEAD] and got[-1] == 1
    assert mine[1:9] == parent[1:9]


class _Batch:  # (as joblib's BatchedCalls: a callable object carrying its calls' arguments)
    def __init__(self, data):
        self.data = data

    def __call__(self):
        return len(self.data)


def test_what_is_marked_a_maps_function_and_a_callable_submitted_again():
    import functools

    big = bytearray(fnframes.MIN_SIZE)
    for again in (lambda: big, functools.partial(len, big), _Batch(big)):
        assert serialize.encode_function(again)[:1] == b"\x80"  # once: maybe made for one call
        assert serialize.encode_function(again)[:1] == b"\x00"  # again: its workers hold it
    for _ in range(3):  # made for one call each (joblib's batches, a partial around its data)
        assert serialize.encode_function(_Batch(big))[:1] == b"\x80"
        assert serialize.encode_function(functools.partial(len, bytearray(big)))[:1] == b"\x80"
    assert serialize.encode_function(lambda: big, repeats=True)[:1] == b"\x00"  # a map's
    mapped = lambda: big  # noqa: E731
    serialize.encode_function(mapped, repeats=True)
    assert serialize.encode_function(mapped)[:1] == b"\x00"  # a map's function, then submitted
    assert serialize.encode_function(lambda: 1, repeats=True)[:1] == b"\x80"  # small


@dataclasses.dataclass
class _Model:  # (eq=True, so unhashable, as a dataclass is by default: a callable model and its data)
    data: bytearray

    def __call__(self, i=0):
        pid, held = helpers.held_function_frames()
        return self.data[i], pid, held


def test_an_unhashable_callable_submitted_again_is_marked_as_a_hashable_one_is():
    big = bytearray(fnframes.MIN_SIZE)
    model = _Model(big)
    with pytest.raises(TypeError):
        hash(model)
    assert serialize.encode_function(model)[:1] == b"\x80"  # once: maybe made for one call
    assert [serialize.encode_function(model)[:1] for _ in range(2)] == [b"\x00"] * 2  # again: held
    assert serialize.encode_function(model.__call__)[:1] == b"\x00"  # (its bound method: the same)
    for _ in range(3):  # a new model each time, as a new partial: made for one call
        assert serialize.encode_function(_Model(bytearray(big)))[:1] == b"\x80"


def test_a_large_unhashable_callable_is_warned_about_once():
    model = _Model(bytearray(2 << 20))
    other = _Model(bytearray(2 << 20))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            serialize.encode_function(model)
            serialize.encode_function(other.__call__)  # (a new bound method each time: its object)
    assert [w.category for w in seen] == [LargeFunctionWarning] * 2


class _EqFails:  # (hashable, but its __eq__ raises, as one comparing NumPy arrays would)
    def __hash__(self):
        return 1

    def __eq__(self, other):
        raise ValueError("ambiguous")

    def __call__(self):
        return 0


def test_callables_seen_are_held_weakly_and_let_go_of_when_they_die():
    import gc

    seen = serialize._Seen()
    model, odd = _Model(bytearray(8)), _EqFails()
    assert [seen.seen(model), seen.seen(model), seen.seen(_Model(bytearray(8)))] == [False, True, False]
    assert [seen.seen(odd), seen.seen(odd), seen.seen(odd)] == [False, True, True]  # (never compared)
    assert {id(r()) for r in seen._refs.values()} == {id(model), id(odd)}
    del model, odd
    gc.collect()
    assert seen._refs == {}


def test_each_worker_receives_an_unhashable_callable_it_is_submitted_again_once(one_worker):
    model = _Model(bytearray(range(8)) * (1 << 17))  # 1 MiB
    out = [one_worker.submit(model, i).result(timeout=60) for i in range(5)]
    assert [v for v, _, _ in out] == [i % 8 for i in range(5)]
    # The first went whole and unmarked; from the second on, marked: held once, the same buffer
    # (before, every submit of it went whole, 20 MB a task for a model over a 20 MB array).
    assert out[0][2] == {} and all(len(held) == 1 for _, _, held in out[1:])
    assert len({b for _, _, h in out for b in h.values()}) == 1


def test_a_client_lets_go_of_frames_unused_for_a_while():
    fnframes.forget()
    frame = fnframes.mark([b"\x80\x05" + b"k" * 100])
    now = time.monotonic()
    fnframes.expire(now)
    assert fnframes.mark([b"\x80\x05" + b"k" * 100]) is frame  # (used just now: kept)
    fnframes.expire(time.monotonic() + fnframes.RECENT_SECONDS + 1)  # (the clock read after the use)
    assert fnframes._recent == [] and fnframes.mark([b"\x80\x05" + b"k" * 100]) is not frame


def test_held_frames_are_bounded_and_least_recently_used_go_first():
    held = fnframes.Held()
    for i in range(fnframes.HELD_FRAMES):
        held.add((1, bytes([i])), 10, i)
    assert held.get((1, b"\x00")) == (10, 0)  # used: now the last to go
    held.add((1, b"new"), 10, "new")
    assert list(held.entries) == [(1, b"\x02"), (1, b"\x03"), (1, b"\x00"), (1, b"new")]
    held.add((2, b"huge"), fnframes.HELD_BYTES + 1, "huge")  # the newest stays, however large
    assert list(held.entries) == [(2, b"huge")] and held.nbytes == fnframes.HELD_BYTES + 1
    held.add((2, b"huge"), 5, "again")  # the same key again: replaced, counted once
    assert held.nbytes == 5


def test_the_broker_sends_a_worker_the_head_of_a_frame_it_holds():
    ledger = Ledger(1)
    ledger.add_client(b"C", {"role": "client"}, [b"{}", b""])
    setup = ledger.clients[b"C"].setup
    frame = fnframes.mark([b"\x80\x05" + b"f" * fnframes.MIN_SIZE])
    head = frame[: fnframes.HEAD]
    tid = iter(range(1, 100))

    def tasks(*fn_frames):
        entries = [((next(tid), 0, 2), [f, b"args"]) for f in fn_frames]
        entries.append(((next(tid), 0, 3), [frame, b"args", b"buffer"]))  # more frames than two
        assert ledger.submit(b"C", entries, ledger.clients[b"C"]) == []
        batch = [t for t in ledger.tasks.values() if t.worker is None]
        for t in batch:
            t.worker = b"w"
        return batch

    def sent(w, batch):
        out: list[object] = []
        task_entries(batch, out, w)
        return [f for f in out if f not in (b"args", b"buffer")]

    w, v = WorkerState(b"w", {}), WorkerState(b"v", {})
    assert sent(w, tasks(frame, frame)) == [frame, head, head]
    assert sent(v, tasks(frame)) == [frame, head]  # another worker: its own books
    assert sent(w, tasks(head, b"\x80\x05small")) == [FORGED, b"\x80\x05small", head]  # (head: a client's)
    ledger.take_back(w, [], lost_frames=True)  # RETURN arg 1
    assert sent(w, tasks(frame)) == [frame, head]
    ledger.resync(w, set())  # HELLO again
    assert sent(w, tasks()) == [frame]
    assert setup == ledger.clients[b"C"].setup and w.fns is not None
    assert list(w.fns.entries) == [(setup, head)]


def test_a_traced_large_function_keeps_its_name():
    from scoopexec.trace import function_name

    def named_here(i):
        return len(blob) + i

    blob = b"x" * fnframes.MIN_SIZE
    frame = serialize.encode_function(named_here, repeats=True)
    assert frame[:1] == b"\x00"
    assert function_name(frame).endswith("named_here")


@pytest.mark.parametrize("seed", range(20))
def test_the_broker_and_the_worker_keep_the_same_account(monkeypatch, seed):
    """Random batches of marked frames (two clients, more frames than a worker holds, a byte
    bound that evicts) through the broker's task_entries and the worker's own reading: each
    task runs its own pickle, and no head is ever missed, whether the worker reads a TASKS
    message or hands it back unread (RECALL: _note_frames).  A message lost on the way makes
    misses, which the RETURN arg 1 the worker then sends recovers from."""
    from scoopexec.broker.ledger import Task
    from scoopexec.worker.worker import _note_frames, _take_tasks

    monkeypatch.setattr(fnframes, "HELD_BYTES", 4 * fnframes.MIN_SIZE)
    rng = random.Random(seed)
    fnframes.forget()
    pickles = [b"\x80\x05" + bytes([i]) * (rng.choice([1, 2]) * fnframes.MIN_SIZE + 7) for i in range(7)]
    frames = [fnframes.mark([p]) for p in pickles]
    ledger = Ledger(1)
    w = WorkerState(b"w", {})
    held = fnframes.Held()
    btids = iter(range(1, 10**6))
    lost_once = False
    for _ in range(60):
        batch = []
        for _ in range(rng.randint(1, 5)):
            k = rng.randrange(len(frames))
            setup = rng.choice([1, 2])
            batch.append(Task(next(btids), b"C", 0, 0, None, setup, [frames[k], pickles[k][:8]]))
        out: list[object] = [b""]
        flat = task_entries(batch, out, w)
        out[0] = P.pack_flat(P.TASKS, len(batch), flat)
        msg = P.decode(out)
        fate = rng.random()
        if fate < 0.1 and not lost_once:
            lost_once = True  # lost on the way: the broker counts its frames held, the worker never saw them
            continue
        if fate < 0.3:  # handed back unread (RECALL)
            missed = _note_frames(held, msg)
            assert not missed or lost_once, "a miss without a lost message"
            ledger.take_back(w, [], missed)  # (arg 1 if missed)
            lost_once = lost_once and not missed
            continue
        queue: collections.deque = collections.deque()
        missed = _take_tasks(msg, queue, held)
        assert not missed or lost_once, "a miss without a lost message"
        for task in queue:
            src = next(t for t in batch if t.btid == task.btid)
            assert bytes(task.frames[0]) == pickles[frames.index(src.first)]  # its own pickle
            assert task.fkey == (src.src.setup, src.first[: fnframes.HEAD])
        if missed:
            ledger.take_back(w, [m[0] for m in missed], True)  # RETURN arg 1: whole again from now on
            lost_once = False  # (recovered: a miss after this would be a bug)
        if rng.random() < 0.05:
            ledger.resync(w, set())  # HELLO again
        assert held.nbytes <= fnframes.HELD_BYTES or len(held.entries) == 1
        if not lost_once:  # (no message lost since the last reset) the broker's account: a subset
            assert set(w.fns.entries if w.fns else ()) <= set(held.entries)


def test_a_worker_handing_back_a_head_it_does_not_hold_says_so():
    from scoopexec.broker.ledger import Task
    from scoopexec.worker.worker import _note_frames

    frame = fnframes.mark([b"\x80\x05" + b"g" * fnframes.MIN_SIZE])
    w, held = WorkerState(b"w", {}), fnframes.Held()

    def message():
        out: list[object] = [b""]
        flat = task_entries([Task(1, b"C", 1, 0, None, 1, [frame, b"args"])], out, w)
        out[0] = P.pack_flat(P.TASKS, 1, flat)
        return P.decode(out)

    assert _note_frames(held, message()) is False  # whole: held now, as the broker counts it
    assert list(held.entries) == list(w.fns.entries)
    held.entries.clear()  # (lost)
    assert _note_frames(held, message()) is True  # a head alone, not held: RETURN arg 1


def test_the_warning_says_when_workers_receive_it_once():
    with pytest.warns(LargeFunctionWarning, match=r"_Batch object is pickled by value .* 2\.1 MB at every submit "
                      r"\(once per map; each worker receives it once while its bytes stay the same, when mapped "
                      r"or submitted again\)"):  # fmt: skip
        serialize.encode_function(_Batch(bytearray(2 << 20)))


def test_a_worker_keeps_nothing_of_large_callables_made_for_one_call(one_worker):
    import functools

    for i in range(3):  # each its own data: sent whole, unmarked, and let go of
        data = bytearray(fnframes.MIN_SIZE * 2)
        data[0] = i
        assert one_worker.submit(functools.partial(bytes.__getitem__, bytes(data)), 0).result(timeout=60) == i
        assert one_worker.submit(lambda data=data: data[0]).result(timeout=60) == i
    longest = one_worker.submit(helpers.largest_function_keys_kept).result(timeout=60)
    assert max(longest) < fnframes.MIN_SIZE, longest


def test_submits_mark_no_frame_larger_than_a_worker_holds_but_a_map_does(monkeypatch):
    monkeypatch.setattr(fnframes, "HELD_BYTES", 2 * fnframes.MIN_SIZE)
    big = bytearray(3 * fnframes.MIN_SIZE)
    fn = lambda: big  # noqa: E731
    assert [serialize.encode_function(fn)[:1] for _ in range(3)] == [b"\x80"] * 3  # (each a new id else)
    assert serialize.encode_function(fn, repeats=True)[:1] == b"\x00"  # a map's: one frame for its chunks
    # A lazy map's (imap, amap in chunks: made for each chunk), as a submit's: a new id for each
    # chunk would push out what the worker holds, and have it unpickled each time.
    assert [serialize.encode_function(fn, repeats=True, each=True)[:1] for _ in range(3)] == [b"\x80"] * 3
    within = bytes(fnframes.MIN_SIZE)
    held = lambda: within  # noqa: E731
    assert serialize.encode_function(held, repeats=True, each=True)[:1] == b"\x00"  # (within: marked)


def test_a_bound_method_of_the_same_object_is_marked_when_submitted_again():
    obj = _Batch(bytearray(fnframes.MIN_SIZE))
    assert serialize.encode_function(obj.__call__)[:1] == b"\x80"
    assert serialize.encode_function(obj.__call__)[:1] == b"\x00"  # (another bound method object)
    assert serialize.encode_function(_Batch(bytearray(fnframes.MIN_SIZE)).__call__)[:1] == b"\x80"


def test_a_worker_marks_only_its_maps_functions():
    fn = _closure(bytearray(fnframes.MIN_SIZE))
    fnframes.retain(False)  # (as worker/main.py: a worker keeps no frames it marks)
    try:
        assert [serialize.encode_function(fn)[:1] for _ in range(2)] == [b"\x80"] * 2
        assert serialize.encode_function(fn, repeats=True)[:1] == b"\x00"
    finally:
        fnframes.retain(True)


def test_a_worker_keeps_unpickled_large_functions_within_the_held_bounds(monkeypatch):
    monkeypatch.setattr(fnframes, "HELD_BYTES", 3 * fnframes.MIN_SIZE)
    monkeypatch.setattr(serialize, "_loaded_large", fnframes.Held())
    pickles = [serialize.dumps_function(_closure(bytearray(fnframes.MIN_SIZE) + bytes([i]))) for i in range(4)]
    fns = [serialize.loads_function(p, key=(1, bytes([i]))) for i, p in enumerate(pickles)]
    assert serialize.loads_function(pickles[3], key=(1, b"\x03")) is fns[3]  # re-used by key
    assert len(serialize._loaded_large.entries) == 2  # (bytes: 2 of about 1.0 MIN_SIZE each, within 3)


def test_a_pool_map_in_chunks_sends_a_large_function_to_its_worker_once():
    from scoopexec import Pool

    probe = _closure(bytearray(1 << 20))
    with Pool(1) as pool:
        out = pool.map(probe, range(40), chunksize=4)  # 10 chunks: the function pickled once
        again = list(pool.imap(probe, range(8), chunksize=2))  # (pickled for each chunk)
        star = pool.starmap(probe, [(i,) for i in range(12)], chunksize=3)
    assert [v for v, _, _ in out] == list(range(40)) and [v for v, _, _ in again] == list(range(8))
    assert [v for v, _, _ in star] == list(range(12))
    # Marked from the first chunk, as a map's function: the worker holds one frame, and
    # imap's chunks (the same runner around the same function) are that frame.
    buffers = {b for _, _, held in out + again + star for b in held.values()}
    assert len(buffers) == 1 and all(len(held) == 1 for _, _, held in out + again + star), buffers


def test_an_amap_in_chunks_sends_a_large_function_to_its_worker_once(one_worker):
    import asyncio

    probe = _closure(bytearray(1 << 20))

    async def run():
        return [r async for r in one_worker.amap(probe, range(24), chunksize=4)]

    out = asyncio.run(run())
    assert [v for v, _, _ in out] == list(range(24))
    # Marked from the first chunk, as a map's function: one frame held, one buffer.
    buffers = {b for _, _, held in out for b in held.values()}
    assert len(buffers) == 1 and all(len(held) == 1 for _, _, held in out), buffers
