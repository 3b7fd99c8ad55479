"""The broker's books and its scheduling, alone: plain objects, no sockets, no threads (broker/ledger.py,
broker/scheduling.py).  The loop around them is tested through real sockets elsewhere
(test_broker_model.py, test_broker_scheduling.py, test_hostile.py)."""

from __future__ import annotations

import math

import pytest

from scoopexec.broker import scheduling
from scoopexec.broker.ledger import Ledger, Task, WorkerState

C = b"client"
BODY = [b"fn", b"args"]


def books(max_retries: int = 1) -> Ledger:
    ledger = Ledger(max_retries)
    ledger.add_client(C, {"role": "client"}, [b"{}", b""])
    return ledger


def worker(ledger: Ledger, name: str, credit: int = 0) -> WorkerState:
    w = ledger.add_worker(name.encode(), {"name": name, "pid": 1, "host": "h"})
    ledger.grant(w, credit)
    return w


def submit(ledger: Ledger, *tids: int, owner: bytes = C, parent: int = 0) -> None:
    """A SUBMIT of ``tids`` from ``owner``: the client C, or a worker (sub-tasks of ``parent``)."""
    client = ledger.clients.get(owner)
    assert ledger.submit(owner, [((tid, parent, 2), list(BODY)) for tid in tids], client) == []


def _btid(ledger: Ledger, tid: int) -> int:
    return next(b for b, t in ledger.tasks.items() if t.tid == tid)


def refused(ledger: Ledger, tid: int, owner: bytes = C, parent: int = 0) -> bool:
    """Whether a SUBMIT of the one task ``tid`` is refused (nothing queued)."""
    before = len(ledger.tasks)
    out = ledger.submit(owner, [((tid, parent, 2), list(BODY))], ledger.clients.get(owner))
    assert (out == [tid]) == (len(ledger.tasks) == before)
    return out == [tid]


def finish(ledger: Ledger, w: WorkerState, btid: int) -> tuple[Task | None, bytes | None]:
    """A RESULT of one task from ``w``: (the task delivered or None, the worker told to cancel it or None)."""
    done, others = ledger.finish(w, [((btid, 0, 1, 0.0, 0.0), [b"result"])])
    return (done[0][0] if done else None), (others[0][0] if others else None)


def everyone(tasks: list[Task]) -> list[Task]:
    """scheduling's claim: every owner still wants its tasks."""
    return []


def check(ledger: Ledger) -> None:
    """Each task in exactly one place: queued, or assigned to one live worker."""
    queued = [b for b in ledger.queue if b in ledger.tasks and ledger.tasks[b].worker is None]
    for btid, task in ledger.tasks.items():
        if task.worker is None:
            assert btid in queued
        else:
            assert btid in ledger.workers[task.worker].assigned
    for key, w in ledger.workers.items():
        for btid in w.assigned:
            assert ledger.tasks[btid].worker == key


# ------------------------------------------------------------------ dispatch
def test_queued_tasks_are_shared_out_evenly_among_ready_workers():
    ledger = books()
    a, b = worker(ledger, "a", 8), worker(ledger, "b", 8)
    submit(ledger, 1, 2, 3, 4)
    batches = scheduling.dispatch(ledger, everyone)
    assert [(w.name, len(batch)) for w, batch in batches] == [("a", 2), ("b", 2)]
    assert (a.credit, b.credit, len(a.assigned), len(b.assigned)) == (6, 6, 2, 2)
    assert not ledger.queue
    check(ledger)


def test_a_worker_waits_in_line_once_however_often_it_asks():
    ledger = books()
    a = worker(ledger, "a", 1)
    ledger.grant(a, 1)
    ledger.take_back(a, [])  # RETURN: its credit back to 0 ...
    ledger.grant(a, 1)  # ... and asking again
    assert list(ledger.ready).count(a) == 1


def test_a_task_its_owner_no_longer_wants_is_dropped_at_dispatch():
    ledger = books()
    worker(ledger, "a", 4)
    submit(ledger, 1, 2)
    batches = scheduling.dispatch(ledger, lambda ts: [t for t in ts if t.tid == 1])
    assert [t.tid for t in batches[0][1]] == [2]
    assert [t.tid for t in ledger.tasks.values()] == [2]
    check(ledger)


def test_a_sub_task_stays_off_its_parents_worker_while_another_is_idle():
    ledger = books()
    a = worker(ledger, "a", 1)
    submit(ledger, 1)
    ((_, (parent,)),) = scheduling.dispatch(ledger, everyone)
    ledger.grant(a, 1)  # the parent waits on its children: its worker asks for more
    b = worker(ledger, "b", 1)
    submit(ledger, 7, owner=a.key, parent=parent.btid)
    (batch,) = scheduling.dispatch(ledger, everyone)
    assert batch[0] is b, "the child went to the worker where its parent is parked"
    check(ledger)


# ------------------------------------------------------------------ results
def test_a_result_is_delivered_once_and_stale_or_foreign_ones_are_counted():
    ledger = books()
    a, b = worker(ledger, "a", 1), worker(ledger, "b", 1)
    submit(ledger, 1)
    ((w, (task,)),) = scheduling.dispatch(ledger, everyone)
    other = b if w is a else a
    assert finish(ledger, other, task.btid) == (None, None)
    assert ledger.dropped["result from a worker that did not have the task"] == 1
    assert finish(ledger, w, task.btid) == (task, None)
    assert finish(ledger, w, task.btid) == (None, None)
    assert ledger.dropped["stale result"] == 1
    assert not ledger.tasks and not w.assigned


def test_one_result_message_delivers_each_task_with_its_status_and_frames():
    ledger = books()
    w = worker(ledger, "a", 3)
    submit(ledger, 1, 2, 3)
    ((_, batch),) = scheduling.dispatch(ledger, everyone)
    a, b, c = (t.btid for t in batch)
    done, others = ledger.finish(w, [((a, 0, 1), [b"ra"]), ((99, 0, 1), [b"x"]), ((c, 1, 2), [b"e", b"tb"])])
    assert [(t.tid, status, body) for t, status, body in done] == [(1, 0, [b"ra"]), (3, 1, [b"e", b"tb"])]
    assert others == [] and ledger.dropped["stale result"] == 1
    assert w.done == 2 and w.assigned == {b} and list(ledger.tasks) == [b]
    check(ledger)


def test_results_go_straight_into_the_brokers_batches_by_owner():
    ledger = books()
    w = worker(ledger, "a", 4)
    submit(ledger, 1, 2)
    submit(ledger, 9, owner=w.key, parent=1)  # a sub-task: its owner is the worker
    ((_, batch),) = scheduling.dispatch(ledger, everyone)
    a, b, c = (t.btid for t in batch)
    out: dict[bytes, list[tuple[int, int, object]]] = {C: [(5, 0, [b"earlier"])]}
    done, others = ledger.finish(w, [((c, 0, 1), [b"rc"]), ((a, 1, 1), [b"ra"]), ((99, 0, 1), [b"x"])], out)
    assert done == [] and others == [] and ledger.dropped["stale result"] == 1
    assert out == {C: [(5, 0, [b"earlier"]), (1, 1, [b"ra"])], w.key: [(9, 0, [b"rc"])]}
    assert w.done == 2 and list(ledger.tasks) == [b]
    check(ledger)


def test_a_late_result_from_a_lost_worker_wins_and_the_new_holder_cancels():
    ledger = books(max_retries=3)
    a = worker(ledger, "a", 1)
    submit(ledger, 1)
    ((_, (task,)),) = scheduling.dispatch(ledger, everyone)
    lost, _ = ledger.lose_worker(a, "its connection closed")
    assert lost == [(task, False)] and task.attempts == 1
    b = worker(ledger, "b", 1)
    scheduling.dispatch(ledger, everyone)
    assert task.worker == b.key
    assert finish(ledger, a, task.btid) == (task, b.key)  # the late answer is accepted ...
    assert not b.assigned  # ... and the worker now holding it is told to drop it
    check(ledger)


# --------------------------------------------------------------- losses
def test_a_lost_workers_tasks_are_queued_again_then_given_up():
    ledger = books(max_retries=1)
    submit(ledger, 1)
    for attempt, name in enumerate(("a", "b")):
        w = worker(ledger, name, 1)
        scheduling.dispatch(ledger, everyone)
        ((task, given_up),), _ = ledger.lose_worker(w, "killed by the test")
        assert given_up is (attempt == 1)
    assert not ledger.tasks and task.attempts == 2
    assert task.losses == (
        "worker a (pid 1 on h): killed by the test",
        "worker b (pid 1 on h): killed by the test",
    )


def test_a_lost_workers_tasks_go_back_to_the_front_of_the_queue_in_their_first_order():
    # They went back in reverse: a task that kills its worker (run after an innocent one, whose
    # result had not gone out yet) was then sent ahead of it every time, and the innocent one
    # was lost with it again and again, until it exceeded max_retries (test_limits' poison).
    ledger = books(max_retries=3)
    w = worker(ledger, "a", 3)
    submit(ledger, 1, 2, 3)
    scheduling.dispatch(ledger, everyone)
    submit(ledger, 4)  # (queued behind them)
    lost, _ = ledger.lose_worker(w, "killed by the test")
    assert [t.tid for t, _ in lost] == [1, 2, 3]
    assert [ledger.tasks[b].tid for b in ledger.queue] == [1, 2, 3, 4]
    b = worker(ledger, "b", 3)
    ((_, sent),) = scheduling.dispatch(ledger, everyone)
    assert [t.tid for t in sent] == [1]  # a task that lost a worker goes last, here alone ...
    assert scheduling.dispatch(ledger, everyone) == []  # ... and nothing goes behind it
    assert b.credit == 2 and b.in_ready  # (the worker keeps its credit and its place)
    c = worker(ledger, "c", 3)
    ((_, sent),) = scheduling.dispatch(ledger, everyone)
    assert [t.tid for t in sent] == [2]
    finish(ledger, b, _btid(ledger, 1))  # task 1 done: b takes tasks again
    ((w, sent),) = scheduling.dispatch(ledger, everyone)
    assert w is b and [t.tid for t in sent] == [3]
    assert c.credit == 2 and scheduling.dispatch(ledger, everyone) == []  # (4 waits: 2 and 3 held)
    c.hold_until = 0.0  # (HOLD_FOR is over: task 2 may be waiting for sub-tasks only c can run)
    ((w, sent),) = scheduling.dispatch(ledger, everyone)
    assert w is c and [t.tid for t in sent] == [4]
    check(ledger)


def test_a_loss_a_task_caused_says_so():
    ledger = books(max_retries=0)
    w = worker(ledger, "a", 1)
    submit(ledger, 1)
    scheduling.dispatch(ledger, everyone)
    ((task, _),), _ = ledger.lose_worker(w, "its process exited", task_rc=5)
    assert "a task ended the process (os._exit(5)" in task.losses[-1]
    assert ledger.recent_losses[-1].endswith("while running a task")


def test_the_sub_tasks_of_a_lost_worker_are_cancelled_where_they_run():
    ledger = books()
    a, b = worker(ledger, "a", 1), worker(ledger, "b", 1)
    submit(ledger, 1)
    scheduling.dispatch(ledger, everyone)
    parent = ledger.tasks[next(iter(ledger.tasks))]
    holder = a if parent.worker == a.key else b
    other = b if holder is a else a
    submit(ledger, 9, owner=holder.key, parent=parent.btid)
    scheduling.dispatch(ledger, everyone)
    (child,) = [t for t in ledger.tasks.values() if t.tid == 9]
    assert child.worker == other.key
    _, cancels = ledger.lose_worker(holder, "gone")
    assert cancels == {other.key: [(child.btid,)]}
    assert child.btid not in ledger.tasks
    check(ledger)


def test_given_back_and_resynced_tasks_go_to_the_front_of_the_queue():
    ledger = books()
    w = worker(ledger, "a", 3)
    submit(ledger, 1, 2, 3)
    scheduling.dispatch(ledger, everyone)
    submit(ledger, 4)
    held = sorted(w.assigned)
    ledger.take_back(w, held[1:])
    assert w.credit == 0 and list(ledger.queue)[:2] == held[1:]
    ledger.resync(w, set())  # it said HELLO again holding nothing
    assert next(iter(ledger.queue)) == held[0] and not w.assigned
    check(ledger)


# -------------------------------------------------------- owners going away
def test_cancel_forgets_the_task_wherever_it_is():
    ledger = books()
    w = worker(ledger, "a", 1)
    submit(ledger, 1, 2)
    scheduling.dispatch(ledger, everyone)
    assert ledger.cancel(C, [1, 2, 99]) == {w.key: [(1,)]}
    assert not ledger.tasks and not ledger.keyed() and not w.assigned
    assert not [b for b in ledger.queue if b in ledger.tasks]


def test_a_broken_client_loses_its_tasks_and_refuses_new_ones():
    ledger = books()
    w = worker(ledger, "a", 1)
    submit(ledger, 1, 2)
    scheduling.dispatch(ledger, everyone)
    submit(ledger, 5, owner=w.key, parent=1)  # a sub-task a worker submitted for it
    c = ledger.clients[C]
    cancels, orphans = ledger.break_client(c)
    assert cancels == {w.key: [(1,)]}
    assert [t.tid for t in orphans] == [5]  # its owner, the worker, is told
    assert not ledger.tasks and not ledger.keyed()
    assert refused(ledger, 3)
    assert not refused(ledger, 6, owner=w.key, parent=1)  # its parent is gone: it serves no client


def test_a_client_leaving_after_an_error_has_what_is_not_started_dropped():
    ledger = books()
    w = worker(ledger, "a", 1)
    submit(ledger, 1, 2, 3)
    scheduling.dispatch(ledger, everyone)
    dropped = ledger.drop_unstarted(ledger.clients[C])
    assert sorted(t.tid for t in dropped) == [2, 3]
    assert [t.tid for t in ledger.tasks.values()] == [1]  # started: it runs on
    assert ledger.drop_unstarted(ledger.clients[C]) == []  # once
    (parent,) = ledger.tasks
    assert refused(ledger, 8, owner=w.key, parent=parent), "a sub-task for a client that is leaving"
    ledger.take_back(w, list(w.assigned))  # handed back unstarted: dropped at the next dispatch
    assert [t.tid for t in ledger.drop_closing()] == [1]
    assert refused(ledger, 4)


# ------------------------------------------------------------------ recall
def test_recall_asks_a_busy_worker_once_until_something_moves_there():
    ledger = books()
    busy = worker(ledger, "busy", 3)
    submit(ledger, 1, 2, 3)
    scheduling.dispatch(ledger, everyone)
    worker(ledger, "idle", 1)
    now = 100.0
    assert scheduling.recall(ledger, now) == [busy]
    for step in range(1, 10):
        assert scheduling.recall(ledger, now + step) == [], "asked again with nothing new"
    finish(ledger, busy, min(busy.assigned))  # a result: something moved there
    assert len(busy.assigned) == 2
    assert scheduling.recall(ledger, now + 20) == [busy]  # so it is asked once more ...
    assert scheduling.recall(ledger, now + 30) == []  # ... and only once


def test_recall_is_not_sent_when_nobody_is_idle():
    ledger = books()
    worker(ledger, "busy", 3)
    submit(ledger, 1, 2, 3)
    scheduling.dispatch(ledger, everyone)
    assert scheduling.recall(ledger, 100.0) == []


def test_mark_running_claims_as_many_as_idle_and_starting_workers():
    ledger = books()
    worker(ledger, "idle", 0)
    submit(ledger, 1, 2, 3, 4)
    claimed: list[int] = []
    scheduling.mark_running(ledger, 2, lambda ts: claimed.extend(t.tid for t in ts) or [])
    assert claimed == [1, 2, 3]
    assert [t.marked for t in ledger.tasks.values()] == [True, True, True, False]


def test_owners_ids_are_kept_only_for_owners_that_send_cancel():
    # The index (owner, owner's id) -> broker id costs 50 bytes a task: it is made by an owner's
    # first CANCEL, follows its tasks while it has any, and goes with the last of them.
    ledger = books()
    w = worker(ledger, "a", 10)
    submit(ledger, 1, 2, 3)
    assert not ledger.keyed()
    assert ledger.cancel(C, [3]) == {} and 3 not in [t.tid for t in ledger.tasks.values()]
    submit(ledger, 4)
    assert sorted(ledger.keyed()) == [(C, 1), (C, 2), (C, 4)]
    scheduling.dispatch(ledger, everyone)
    ledger.finish(w, [((b, 0, 0, 0.0, 0.0), []) for b, t in list(ledger.tasks.items()) if t.tid != 2])
    b2 = _btid(ledger, 2)
    assert ledger.keyed() == {(C, 2): b2}
    assert ledger.cancel(C, [2]) == {w.key: [(b2,)]}
    assert not ledger.tasks and not ledger.by_owner


def test_the_snapshot_counts_what_the_status_table_shows():
    ledger = books()
    worker(ledger, "a", 1)
    submit(ledger, 1, 2)
    scheduling.dispatch(ledger, everyone)
    snap = ledger.snapshot()
    assert (snap["queued"], snap["assigned"], snap["tasks"], snap["clients"]) == (1, 1, 2, 1)
    assert snap["workers"][0]["state"] == "busy" and snap["workers"][0]["busy"] == 1


def test_a_clients_held_count_follows_its_tasks_through_every_way_out():
    """ClientState.held (the per-client queue cap, broker/limits.py) is exact: it goes up with
    each task submitted and down by every way a task leaves the books."""
    ledger = books(max_retries=0)
    c = ledger.clients[C]
    w = worker(ledger, "w", credit=100)
    submit(ledger, 1, 2, 3, 4, 5, 6)
    assert c.held == 6
    assert len(scheduling.dispatch(ledger, everyone)) == 1  # all six to w
    done, _ = ledger.finish(w, [((_btid(ledger, 1), 0, 0, 0.0, 0.0), [])])  # a result
    assert len(done) == 1 and c.held == 5
    ledger.cancel(C, [2])  # cancelled by its owner
    assert c.held == 4
    lost, _ = ledger.lose_worker(w, "gone")  # given up with its worker (max_retries=0)
    assert all(given_up for _, given_up in lost) and c.held == 4 - len(lost)
    submit(ledger, 7)
    ledger.drop_unstarted(c)  # its client leaves after an error
    assert c.held == 0 and not ledger.tasks


# ------------------------------------------- found by test_ledger_properties.py
def test_a_worker_back_under_the_same_id_gets_its_tasks_on_its_new_books():
    # Lost with credit left, it stayed in line; back (HELLO, same id), a new WorkerState holds
    # that id.  Dispatch used to hand tasks to the old one (the id matched): the new one's books
    # did not hold them, and when it was lost they were in no queue and held by nobody.
    ledger = books(max_retries=3)
    old = worker(ledger, "a", 2)
    ledger.lose_worker(old, "its connection closed")
    new = worker(ledger, "a", 1)
    submit(ledger, 1)
    ((w, (task,)),) = scheduling.dispatch(ledger, everyone)
    assert w is new and new.assigned == {task.btid} and not old.assigned
    check(ledger)
    ((lost, given_up),), _ = ledger.lose_worker(new, "killed by the test")
    assert lost is task and not given_up and list(ledger.queue) == [task.btid]


def test_a_lost_workers_own_sub_tasks_are_dropped_not_reported_to_it():
    # A worker ran a task and its sub-task: lost, it is owed no LOST for the sub-task (it is gone).
    ledger = books(max_retries=0)
    w = worker(ledger, "a", 1)
    submit(ledger, 1)
    ((_, (parent,)),) = scheduling.dispatch(ledger, everyone)
    submit(ledger, 9, owner=w.key, parent=parent.btid)
    ledger.grant(w, 1)
    scheduling.dispatch(ledger, everyone)
    assert len(w.assigned) == 2
    lost, cancels = ledger.lose_worker(w, "killed by the test")
    assert [(t.tid, given_up) for t, given_up in lost] == [(1, True)]
    assert not ledger.tasks and cancels == {}


# ------------------------------------------ exact texts and fields (mutation survivors)
def test_the_snapshot_gives_every_field_of_each_worker(monkeypatch):
    import scoopexec.broker.ledger as ledger_module

    ledger = books()
    monkeypatch.setattr(ledger_module.time, "time", lambda: 1000.0)
    busy = ledger.add_worker(b"\x01\x02", {"name": "busy", "pid": 7, "host": "h1", "python": "3.11.7"})
    idle = worker(ledger, "idle", 2)
    busy.joined, busy.last_seen, busy.done = 990.12345, 999.5, 4
    idle.joined = idle.last_seen = 1000.0
    ledger.grant(busy, 1)
    busy.last_seen = 999.5
    submit(ledger, 1)
    ((holder, _),) = scheduling.dispatch(ledger, everyone)
    assert holder is idle  # first in line
    ledger.completed = 12
    ledger.dropped["stale result"] += 2
    snap = ledger.snapshot()
    assert {k: v for k, v in snap.items() if k != "workers"} == {
        "queued": 0, "assigned": 1, "tasks": 1, "completed": 12, "clients": 1, "dropped": {"stale result": 2},
        "setups": 1, "shared": 0, "stopped": {}, "faults": {},
    }  # fmt: skip
    assert snap["workers"] == [
        {"id": "0102", "name": "busy", "host": "h1", "pid": 7, "busy": 0, "state": "idle", "done": 4,
         "credit": 1, "last_seen": 0.5, "joined": 9.877, "python": "3.11.7"},
        {"id": "69646c65", "name": "idle", "host": "h", "pid": 1, "busy": 1, "state": "busy", "done": 0,
         "credit": 1, "last_seen": 0.0, "joined": 0.0, "python": None},
    ]  # fmt: skip


def test_a_loss_caused_by_a_task_names_how_many_it_might_be():
    ledger = books(max_retries=0)
    for rc, n, text in [
        (-9, 1, "worker a (pid 1 on h): gone while running this task"),
        (0, 1, "worker a (pid 1 on h): gone while running this task: a task ended the process (os._exit(0), "
               "or exit() in native code); a worker's own exits are announced, and this one was not"),
        (3, 3, "worker a (pid 1 on h): gone while running this task or one of the 2 other(s) it held: a "
               "task ended the process (os._exit(3), or exit() in native code); a worker's own exits are "
               "announced, and this one was not"),
    ]:  # fmt: skip
        w = worker(ledger, "a", n)
        first = max(ledger.tasks, default=0) + 1
        submit(ledger, *range(first, first + n))
        scheduling.dispatch(ledger, everyone)
        lost, _ = ledger.lose_worker(w, "gone", task_rc=rc)
        assert [t.losses[-1] for t, _ in lost] == [text] * n


def test_a_client_that_left_is_marked_broken_and_leaving_twice_is_harmless():
    ledger = books()
    c, cancels = ledger.remove_client(C)
    assert c is not None and c.broken and cancels == {}
    assert c.setup not in ledger.setups  # freed (issue 14): a late SETUP_DONE for it finds nothing
    assert ledger.remove_client(C) == (None, {})


# ------------------------------------------- scheduling's choices, exactly (mutation survivors)
def test_one_task_each_when_there_are_as_many_workers_as_tasks():
    ledger = books()
    a, b = worker(ledger, "a", 4), worker(ledger, "b", 4)
    submit(ledger, 1, 2)
    batches = scheduling.dispatch(ledger, everyone)
    assert [(w.name, len(batch)) for w, batch in batches] == [("a", 1), ("b", 1)]
    assert list(ledger.ready) == [a, b]  # credit left: still in line
    ledger.take_back(a, [])  # RETURN: no credit, yet still in the deque
    submit(ledger, 3, 4, 5, 6, 7)
    assert [(w.name, len(batch)) for w, batch in scheduling.dispatch(ledger, everyone)] == [("b", 3)]
    assert not ledger.ready and not a.in_ready and not b.in_ready  # no credit: out of line


def test_a_cancelled_task_left_in_the_queue_does_not_hold_up_the_rest():
    ledger = books()
    worker(ledger, "a", 3)
    submit(ledger, 1, 2, 3, 4)
    ledger.cancel(C, [1])  # its id stays in the queue until dispatch meets it
    ((_, batch),) = scheduling.dispatch(ledger, everyone)
    assert [t.tid for t in batch] == [2, 3, 4]


def test_a_worker_passes_over_a_child_of_its_parked_task_but_takes_the_next_one():
    ledger = books()
    a, b = worker(ledger, "a", 1), worker(ledger, "b", 0)
    submit(ledger, 1)
    ((_, (parent,)),) = scheduling.dispatch(ledger, everyone)
    ledger.grant(a, 2)
    ledger.grant(b, 1)
    submit(ledger, 7, owner=a.key, parent=parent.btid)
    submit(ledger, 2)
    batches = scheduling.dispatch(ledger, everyone)
    assert [(w.name, [t.tid for t in batch]) for w, batch in batches] == [("a", [2]), ("b", [7])]


def test_a_child_goes_to_its_parents_worker_when_no_other_is_idle():
    ledger = books()
    a, b = worker(ledger, "a", 1), worker(ledger, "b", 1)
    submit(ledger, 1, 2)
    scheduling.dispatch(ledger, everyone)
    parent = next(t for t in ledger.tasks.values() if t.worker == a.key)
    ledger.grant(a, 1)
    ledger.grant(b, 1)
    assert list(ledger.ready) == [a, b] and b.assigned  # b has credit, but is busy: not idle
    submit(ledger, 7, owner=a.key, parent=parent.btid)
    batches = scheduling.dispatch(ledger, everyone)
    assert [(w.name, [t.tid for t in batch]) for w, batch in batches] == [("a", [7])]


def test_mark_running_skips_what_is_marked_gone_or_refused():
    ledger = books()
    worker(ledger, "idle", 0)
    submit(ledger, 1, 2, 3, 4, 5, 6)
    ledger.cancel(C, [1])  # a stale id at the front of the queue
    ledger.tasks[2].marked = True  # told already: counts as running, not asked again
    claimed: list[int] = []

    def claim(ts: list[Task]) -> list[Task]:
        claimed.extend(t.tid for t in ts)
        return [t for t in ts if t.tid == 3]  # its future was cancelled: dropped, it frees its place

    scheduling.mark_running(ledger, 1, claim)  # 1 idle + 1 starting: 2 places
    assert claimed == [3, 4]  # 2 took one place, 3 was refused, 4 took the other
    assert 3 not in ledger.tasks and [t.tid for t in ledger.tasks.values() if t.marked] == [2, 4]
    scheduling.mark_running(ledger, 0, claim)  # 1 place (the idle worker): 2 holds it
    assert claimed == [3, 4]
    ledger.add_worker(b"busy", {}).assigned.add(99)  # a worker that is not idle adds no place
    scheduling.mark_running(ledger, 0, claim)
    assert claimed == [3, 4]


def test_recall_is_paced_and_a_worker_is_asked_at_most_every_fourth_pace():
    ledger = books()
    busy = worker(ledger, "busy", 4)
    submit(ledger, 1, 2, 3, 4)
    scheduling.dispatch(ledger, everyone)
    worker(ledger, "idle", 1)
    every = scheduling.RECALL_EVERY
    assert scheduling.recall(ledger, 100.0) == [busy]
    finish(ledger, busy, min(busy.assigned))  # something moved there: it may be asked again ...
    assert scheduling.recall(ledger, 100.0 + every / 2) == []  # ... not before the next look,
    assert scheduling.recall(ledger, 100.0 + every * 2) == []  # nor within 4 paces of the last ask,
    assert scheduling.recall(ledger, 100.0 + every * 4.5) == [busy]  # but then.
    t = ledger.next_recall
    finish(ledger, busy, min(busy.assigned))
    assert scheduling.recall(ledger, t) == []  # at the next look exactly: within 4 paces
    assert scheduling.recall(ledger, t + every * 5) == [busy]


def test_recall_needs_an_idle_worker_with_credit_and_asks_each_busy_one():
    ledger = books()
    a, b = worker(ledger, "a", 3), worker(ledger, "b", 3)
    submit(ledger, 1, 2, 3, 4, 5, 6)
    scheduling.dispatch(ledger, everyone)
    ledger.grant(a, 1)  # busy, with credit: not idle
    assert scheduling.recall(ledger, 100.0) == []
    idle = worker(ledger, "idle", 1)
    ledger.take_back(idle, [])  # it handed back and has no credit: not idle either
    assert scheduling.recall(ledger, 101.0) == []
    ledger.grant(idle, 1)
    assert scheduling.recall(ledger, 102.0) == [a, b]
    finish(ledger, b, min(b.assigned))
    assert scheduling.recall(ledger, 103.0) == [b]  # a: asked, nothing moved; b: asked again


def test_recall_looks_at_most_once_a_pace():
    ledger = books()
    a = worker(ledger, "a", 2)
    submit(ledger, 1, 2)
    scheduling.dispatch(ledger, everyone)
    worker(ledger, "idle", 1)
    assert scheduling.recall(ledger, 100.0) == [a]
    b = worker(ledger, "b", 3)  # busy now too, never asked
    submit(ledger, 3, 4, 5)
    scheduling.dispatch(ledger, everyone)
    assert b.assigned == {4, 5}  # (3 went to the idle one)
    worker(ledger, "idle2", 1)
    assert scheduling.recall(ledger, 100.0 + scheduling.RECALL_EVERY / 2) == []  # not yet
    assert scheduling.recall(ledger, ledger.next_recall) == [b]  # the next look, exactly


def test_mark_running_with_one_idle_worker_claims_one_task():
    ledger = books()
    worker(ledger, "idle", 0)
    submit(ledger, 1, 2)
    claimed: list[int] = []
    scheduling.mark_running(ledger, 0, lambda ts: claimed.extend(t.tid for t in ts) or [])
    assert claimed == [1]


# ------------------------------------------------------- the in-process client
def test_an_in_process_clients_queue_is_taken_in_whole_as_its_submissions_would_be():
    import collections

    from scoopexec.broker.ledger import LOCAL, MANY, submit_local

    ledger = books()
    local = ledger.add_client(LOCAL, {"role": "client", "local": True}, [b"{}", b""])
    outbox = collections.deque([(1, list(BODY)), (2, [b"fn", b"args", b"buffer"])])
    assert submit_local(ledger, outbox, local) == [] and not outbox
    one, two = (ledger.tasks[b] for b in ledger.queue)
    assert (one.owner, one.tid, one.frames, one.setup, one.parent, one.worker, one.marked) == (
        LOCAL, 1, BODY, local.setup, 0, None, False,
    )  # fmt: skip
    assert (two.tid, two.rest, two.frames) == (2, MANY, [b"fn", b"args", b"buffer"])
    assert one.src is two.src and local.held == 2  # taken in together: one Source
    ledger.cancel(LOCAL, [])  # an index of its tasks by id (made by a first CANCEL) ...
    outbox.append((3, list(BODY)))
    submit_local(ledger, outbox, local)
    assert ledger.cancel(LOCAL, [3]) == {} and [t.tid for t in ledger.tasks.values()] == [1, 2]  # ... kept
    local.closing = True  # leaving after an error: what it queues now is refused, all of it
    outbox.extend([(4, list(BODY)), (5, list(BODY))])
    assert submit_local(ledger, outbox, local) == [4, 5] and not outbox and len(ledger.tasks) == 2


def test_a_batchs_entries_laid_flat_are_each_tasks_entry():
    from scoopexec.broker.ledger import task_entries

    ledger = books()
    submit(ledger, 1)
    assert ledger.submit(C, [((2, 0, 3), [b"fn", b"args", b"buf"])], ledger.clients[C]) == []
    batch = list(ledger.tasks.values())
    batch[0].lose(b"w", "lost")  # attempts lost: their count travels
    batch[0].lose(b"v", "lost")
    batch[1].lose(b"w", "lost")
    frames: list[object] = []
    flat = task_entries(batch, frames, WorkerState(b"w", {}))
    one_by_one: list[object] = []
    assert flat == [v for t in batch for v in t.entry(one_by_one)] and frames == one_by_one
    assert frames == [*BODY, b"fn", b"args", b"buf"] and flat[2::4] == [2, 3] and flat[3::4] == [2, 1]


def test_a_worker_gets_each_clients_set_up_once_before_its_tasks():
    ledger = books()
    other = ledger.add_client(b"other", {"role": "client"}, [b"{}", b""])
    w = worker(ledger, "a", 8)
    submit(ledger, 1, 2)
    assert ledger.submit(b"other", [((1, 0, 2), list(BODY))], other) == []
    batch = list(ledger.tasks.values())
    assert ledger.new_setups(w, batch) == [ledger.clients[C], other]
    assert ledger.new_setups(w, batch) == []  # sent already


def test_a_routing_id_has_one_role():
    # A worker lost would take its connection's fd with it and leave the client for ever.
    ledger = Ledger(3)
    ledger.add_worker(b"w", {})
    ledger.add_client(b"c", {}, [])
    with pytest.raises(ValueError, match="one role"):
        ledger.add_client(b"w", {}, [])
    with pytest.raises(ValueError, match="one role"):
        ledger.add_worker(b"c", {})
    assert set(ledger.workers) == {b"w"} and set(ledger.clients) == {b"c"}


def test_a_cancel_confirm_keeps_a_task_whose_owner_was_told_it_runs():
    # mark_running claims queued tasks for starting workers and tells their owners STARTED; a
    # remote client takes that STARTED as its cancel()'s answer (False).  Dropping the task on
    # the CONFIRM that follows answered it CANCELLED as well: cancel() said False, and the task
    # never ran (caught once by test_cancel_contract's remote test in CI).
    ledger = books()
    submit(ledger, 1, 2)
    scheduling.mark_running(ledger, 1, everyone)  # one worker starting: the first task is claimed
    assert ledger.tasks[_btid(ledger, 1)].marked and not ledger.tasks[_btid(ledger, 2)].marked
    assert ledger.cancel_unstarted(C, [1, 2]) == ([2], [1])
    assert [t.tid for t in ledger.tasks.values()] == [1]
    check(ledger)


def test_a_recall_put_off_by_the_pace_says_when_the_loop_must_look_again():
    # Submissions all within one pace on a worker with credit left, then quiet: without this
    # the loop slept until the next input (that worker's first result), another worker idle.
    ledger = books()
    busy = worker(ledger, "busy", 4)
    submit(ledger, 1, 2, 3)
    scheduling.dispatch(ledger, everyone)
    assert busy.assigned == {1, 2, 3}
    every = scheduling.RECALL_EVERY
    assert scheduling.recall(ledger, 100.0) == []  # nobody idle: nothing to ask
    assert ledger.recall_wake == 0.0
    worker(ledger, "idle", 1)  # (its HELLO, say, within the same pace)
    assert scheduling.recall(ledger, 100.0 + every / 4) == []  # within the pace: put off ...
    assert ledger.recall_wake == 100.0 + every  # ... to the next look
    assert scheduling.recall_wait(ledger, 50) <= math.ceil(every * 1000)  # the poll waits no longer
    assert scheduling.recall(ledger, ledger.recall_wake) == [busy]
    assert ledger.recall_wake == 0.0
    finish(ledger, busy, 1)  # something moved: asked again, but not within 4 paces of the last ask
    assert scheduling.recall(ledger, 100.0 + every * 2) == []
    assert ledger.recall_wake == pytest.approx(100.0 + every * 5)
    assert scheduling.recall(ledger, ledger.recall_wake) == [busy]
    ledger.queue.append(99)  # with tasks queued, dispatch serves the idle one: no cut
    ledger.recall_wake = 1.0
    assert scheduling.recall_wait(ledger, 50) == 50
