"""The timeline's bulk path (tracebulk.py) against the per-task loop, byte for byte: the
shortcuts it takes from what the broker's books say of every task (tests/test_trace.py has
the rest)."""

from __future__ import annotations

import pickle
import time

from scoopexec import trace as trace_mod
from scoopexec.broker import ledger as ledger_mod
from scoopexec.broker.ledger import Ledger, Source, Task, WorkerState
from scoopexec.trace import TraceRecorder
from scoopexec.wire import protocol as P
from tests.test_trace import _pickled_global, dispatch_to_both


def test_a_lost_attempt_sends_its_message_to_the_loop_once_any_was_lost(tmp_path, monkeypatch):
    """While no attempt was lost in the process (ledger.LOST_ATTEMPTS), tracebulk.sizes does not
    look at each task's lost attempts; once one was (Task.lose counts it), a message of tiny
    tasks with a retried task among them, of one Source or two, goes to the per-task loop,
    which records its retries; the others still go through _bulk.  Both recorders' records are
    the same bytes.  Task.lose not counting the attempt, or either of sizes' passes (one
    Source, several) skipping the test of ``lost`` whatever the count, records 0 retries in
    bulk and fails this."""
    count = ledger_mod.LOST_ATTEMPTS
    before, count[0] = count[0], 0  # (as in a process that lost none; what it lost is added back)
    try:
        _lost_attempts_then_the_loop(tmp_path, monkeypatch)
    finally:
        count[0] += before


def _lost_attempts_then_the_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(trace_mod, "_time", lambda: 1_700_000_321.5)
    ledger = Ledger(3)
    ledger.add_client(b"C", {"role": "client"}, [b"{}", b""])
    a = ledger.add_worker(b"E" * 12, {"name": "e", "pid": 4, "host": "h"})
    ledger.grant(a, 10_000)
    fn = pickle.dumps(pickle.dumps)  # a function pickled by reference
    for first in (0, 24):  # two SUBMITs: two Sources
        time.sleep(0.002)
        ledger.submit(b"C", [((i, 0, 2), [fn, b"a" * i]) for i in range(first, first + 24)],
                      ledger.clients[b"C"])  # fmt: skip
    bulk, loop = TraceRecorder(tmp_path / "a.trace"), TraceRecorder(tmp_path / "b.trace")
    loop._bulk_from = 10**9
    dispatch_to_both(ledger, bulk, loop)
    by_tid = {t.tid: t for t in ledger.tasks.values()}
    assert by_tid[0].src is not by_tid[24].src

    def result(tids, through_bulk):
        entries = [(by_tid[i].btid, 0, 1, 1.7e9 + i, 0.5) for i in tids]
        frames = [P.pack(P.RESULT, entries)] + [b"r" * (i + 1) for i in tids]
        loop.on_results(a, entries, frames, dict(ledger.tasks))
        done: list[Task] = []
        ledger.finish(a, zip(entries, [[f] for f in frames[1:]], strict=True), None, done)
        pending = bulk._later.count
        bulk.on_finished(a, entries, frames, done)
        assert bulk._later.count == pending + (len(tids) if through_bulk else 0), (tids, through_bulk)

    result(range(0, 8), True)  # none lost: one Source
    result([*range(8, 12), *range(24, 28)], True)  # and two
    for tid in (13, 21, 30):  # (a late result is accepted from a worker it was lost with: Task.prev)
        by_tid[tid].lose(b"elsewhere", "lost")
    assert ledger_mod.LOST_ATTEMPTS[0] == 3
    result(range(12, 16), False)  # one Source, 13 retried
    result([*range(20, 24), *range(28, 32)], False)  # two Sources, 21 and 30 retried
    result([*range(16, 20), *range(32, 36)], True)  # two Sources, none retried
    result(range(36, 48), True)  # one Source, none retried
    a_raw, b_raw = bulk.raw(), loop.raw()
    assert b"".join([*a_raw.blocks, a_raw.records]) == bytes(b_raw.records)
    assert bytes(a_raw.sent) == bytes(b_raw.sent) and a_raw.values == b_raw.values
    retries = {r[0]: r[11] for r in bulk.records}
    retried = {b for b, n in retries.items() if n}
    assert len(retries) == 48 and retried == {by_tid[t].btid for t in (13, 21, 30)}


def test_messages_whose_templates_differ_in_one_field_each_are_each_recorded_right(tmp_path, monkeypatch):
    """_bulk packs only the times into the last message's template when its function frame,
    worker, status, parent and client are those of the last (tracebulk.Pending.last); a
    message that differs from the one before in any one of them (or only in its Source's
    submit time, or the time its results came) must still record what the per-task loop
    records.  The shortcut skipping any one of its five tests fails this."""
    fa, fb = _pickled_global("mod", "alpha"), _pickled_global("mod", "beta")
    wa = WorkerState(b"A" * 12, {"host": "h", "pid": 1, "name": "a"})
    wb = WorkerState(b"B" * 12, {"host": "h", "pid": 2, "name": "b"})
    bulk, loop = TraceRecorder(tmp_path / "a.trace"), TraceRecorder(tmp_path / "b.trace")
    loop._bulk_from = 10**9
    variants = [  # (parent, client, submitted, function, worker, status): each differs in one
        (0, b"C", 100.0, fa, wa, 0),
        (0, b"C", 100.0, fa, wa, 0),  # none (another Source of the same)
        (0, b"C", 101.5, fa, wa, 0),  # its submit time
        (0, b"C", 101.5, fa, wa, 1),  # status
        (0, b"C", 101.5, fa, wb, 1),  # worker
        (7, b"C", 101.5, fa, wb, 1),  # parent
        (7, b"D", 101.5, fa, wb, 1),  # client
        (7, b"D", 101.5, fb, wb, 1),  # function
    ]
    btid = 1
    for n, (parent, client, submitted, fn, w, status) in enumerate(variants):
        src = Source(parent, client, 1, submitted)
        tasks = []
        for i in range(5):
            t = Task(btid, client, btid, 0, None, 0, [fn, b"x" * i], 0.0, src)
            t.worker = w.key
            tasks.append(t)
            btid += 1
        monkeypatch.setattr(trace_mod, "_time", lambda n=n: 1_700_000_000.0 + n)
        for rec in (bulk, loop):
            rec.on_dispatch(w, tasks)
        entries = [(t.btid, status, 1, 1.7e9 + t.btid, t.btid / 64) for t in tasks]
        frames = [P.pack(P.RESULT, entries), *[b"r" * t.btid for t in tasks]]
        loop.on_results(w, entries, frames, {t.btid: t for t in tasks})
        bulk.on_finished(w, entries, frames, tasks)
        assert bulk._later.count == 5 * (n + 1), "through _bulk"
    a_raw, b_raw = bulk.raw(), loop.raw()
    assert b"".join([*a_raw.blocks, a_raw.records]) == bytes(b_raw.records)
    assert len(b_raw.records) == 5 * len(variants) * trace_mod.tracefile.TASK_RECORD.size
    assert a_raw.values == b_raw.values
