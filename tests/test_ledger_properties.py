"""The broker's books under any interleaving of events, checked with Hypothesis (broker/ledger.py,
broker/scheduling.py: plain objects, no sockets).

A state machine drives the real Ledger and scheduling functions the way the broker's loop and
supervision do (loop.py, supervision.py: what each call returns becomes a message), while a model
keeps its own account of every task: who owns it, which client it serves, which worker holds it,
how often it was lost.  Events: clients submit, cancel (queued or running tasks), break, leave
after an error, go away; workers join, ask for tasks, run them and submit sub-tasks, cancel those,
answer (late answers from a worker given up for lost included), hand back what they have not
started, say HELLO again, say BYE, die.  After every event:

* the ledger holds exactly the tasks the model says are alive, each queued or held by one live
  worker, the worker the model says, and each worker holds exactly what it was sent and still has;
* every task got at most one terminal outcome sent to its owner (a result or error, CANCELLED,
  LOST, or its client's BROKEN), or was cancelled by its owner, or was dropped because its owner or
  the client it serves went away, and never two of these; nothing is sent to a peer that is gone;
* every CANCEL the ledger asks for goes to the live worker holding that task, and to no other;
* credits: a worker's credit is what it asked for less what it was sent (0 after it handed tasks
  back), never below 0, and a worker with credit waits in line once;
* a task that lost a worker before is the last of its batch, and nothing goes to its worker
  while that worker holds it.

At the end, workers run whatever is left: then every task has exactly one outcome, none lost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from scoopexec.broker import scheduling
from scoopexec.broker.ledger import LOCAL, Ledger, Task, WorkerState

REMOTE = (b"c0", b"c1", b"c2", b"c3")  # a client that ends does not come back
CLIENTS = (*REMOTE, LOCAL)
WORKERS = (b"w0", b"w1", b"w2")

# Outcomes: sent to the owner by the broker, or finishing the future without a message.
RESULT, ERROR, CANCELLED, LOST, BROKEN = "result", "error", "cancelled", "lost", "broken"
OWNER_CANCELLED, ABANDONED = "owner cancelled", "owner or client gone"


@dataclass
class Model:
    """The test's own account of one task."""

    owner: bytes
    tid: int
    origin: bytes | None  # the client it serves (None: its parent was gone when it came)
    holder: bytes | None = None
    attempts: int = 0
    lost_with: set[bytes] = field(default_factory=set)
    claimed: bool = False


class Books(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.alive: dict[int, Model] = {}  # broker id -> task the ledger must hold
        self.fate: dict[tuple[bytes, int], str] = {}  # (owner, owner's id) -> its one outcome
        self.submitted: list[tuple[bytes, int]] = []
        self.next_tid: dict[bytes, int] = {}
        self.clients: set[bytes] = set()
        self.gone: set[bytes] = set()  # clients that left, and workers that left or died
        self.broken: set[bytes] = set()
        self.closing: set[bytes] = set()
        self.workers: dict[bytes, WorkerState] = {}
        self.held: dict[bytes, set[int]] = {}  # worker -> broker ids it was sent and still has
        self.credit: dict[bytes, int] = {}
        self.running_elsewhere: dict[bytes, set[int]] = {}  # a lost worker's tasks: it may still answer
        self.local_cancelled: set[int] = set()
        self.claims: dict[int, int] = {}
        self.now = 1000.0

    # ------------------------------------------------------------ the loop's glue
    def send(self, owner: bytes, tid: int, outcome: str) -> None:
        """The broker sends (or the owner reaches) a terminal outcome for one task."""
        key = (owner, tid)
        assert owner not in self.gone, f"{outcome} for task {tid} sent to {owner!r}, which is gone"
        before = self.fate.get(key)
        if before == OWNER_CANCELLED and owner == LOCAL and outcome in (CANCELLED, BROKEN):
            return  # the in-process client drops these for a future it cancelled (session.results)
        assert before is None, f"task {tid} of {owner!r}: {outcome} after {before}"
        self.fate[key] = outcome

    def claim(self, tasks: list[Task]) -> list[Task]:
        """scheduling's claim: the in-process client answers; a remote owner is told STARTED."""
        unwanted = []
        for task in tasks:
            self.claims[task.btid] = self.claims.get(task.btid, 0) + 1
            assert self.claims[task.btid] == 1, f"task {task.btid} claimed twice"
            m = self.alive[task.btid]
            if m.owner == LOCAL and m.tid in self.local_cancelled:
                del self.alive[task.btid]  # its future was cancelled: the task is dropped
                unwanted.append(task)
            else:
                m.claimed = True
        return unwanted

    def forgotten(self, cancels: dict[bytes, list[tuple[int]]], gone: list[int]) -> None:
        """The ledger dropped ``gone``: CANCEL goes to exactly the live workers holding them."""
        want: dict[bytes, set[int]] = {}
        for btid in gone:
            m = self.alive.pop(btid)
            if m.holder is not None and m.holder in self.workers:
                want.setdefault(m.holder, set()).add(btid)
        got = {w: {e[0] for e in ids} for w, ids in cancels.items()}
        assert got == want, f"CANCEL sent to {got}, expected {want}"
        for w, btids in want.items():
            self.held[w] -= btids  # the worker drops them

    def new_tid(self, owner: bytes) -> int:
        tid = self.next_tid.get(owner, 0) + 1
        self.next_tid[owner] = tid
        return tid

    def serving(self, pred) -> list[int]:  # type: ignore[no-untyped-def]
        return sorted(b for b, m in self.alive.items() if pred(m))

    # ------------------------------------------------------------------ set-up
    @initialize(retries=st.integers(0, 2))
    def start(self, retries: int) -> None:
        self.ledger = Ledger(retries)
        self.client_joins(b"c0")
        self.worker_joins(b"w0")
        self.ledger.grant(self.workers[b"w0"], 2)
        self.credit[b"w0"] = 2

    # ----------------------------------------------------------------- clients
    @precondition(lambda self: set(CLIENTS) - self.clients - self.gone)
    @rule(data=st.data())
    def a_client_joins(self, data: st.DataObject) -> None:
        self.client_joins(data.draw(st.sampled_from(sorted(set(CLIENTS) - self.clients - self.gone))))

    def client_joins(self, key: bytes) -> None:
        self.ledger.add_client(key, {"role": "client", "local": key == LOCAL}, [b"{}", b""])
        self.clients.add(key)

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), n=st.integers(1, 4))
    def client_submits(self, data: st.DataObject, n: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.clients)))
        c = self.ledger.clients[key]
        tids = [self.new_tid(key) for _ in range(n)]
        before = set(self.ledger.tasks)
        refused = self.ledger.submit(key, [((tid, 0, 2), [b"fn", b"args"]) for tid in tids], c)
        self.submitted += [(key, tid) for tid in tids]
        if key in self.broken or key in self.closing:
            assert refused == tids
            for tid in tids:
                self.send(key, tid, CANCELLED)  # loop._on_submit
            return
        assert refused == []
        new = sorted(set(self.ledger.tasks) - before)
        assert [self.ledger.tasks[b].tid for b in new] == tids
        for btid, tid in zip(new, tids, strict=True):
            self.alive[btid] = Model(key, tid, key)
        if data.draw(st.booleans()):
            self.dispatch(0)  # in the same turn of the loop (or a later one: the queue grows)

    @precondition(lambda self: any(m.owner in REMOTE for m in self.alive.values()))
    @rule(data=st.data())
    def remote_client_cancels(self, data: st.DataObject) -> None:
        """CANCEL from a remote client: of a queued task, or of one a worker has started."""
        mine = self.serving(lambda m: m.owner in REMOTE)
        btids = data.draw(st.lists(st.sampled_from(mine), min_size=1, max_size=3, unique=True))
        owner = self.alive[btids[0]].owner
        btids = [b for b in btids if self.alive[b].owner == owner]
        tids = [self.alive[b].tid for b in btids]
        cancels = self.ledger.cancel(owner, [*tids, 10_000])  # and one it does not have
        for tid in tids:
            self.send(owner, tid, OWNER_CANCELLED)
        self.forgotten(cancels, btids)

    @precondition(lambda self: any(m.owner == LOCAL and not m.claimed for m in self.alive.values()))
    @rule(data=st.data())
    def local_client_cancels(self, data: st.DataObject) -> None:
        """The in-process client cancels a future no worker was given yet: the ledger learns it
        at the task's claim."""
        btid = data.draw(st.sampled_from(self.serving(lambda m: m.owner == LOCAL and not m.claimed)))
        m = self.alive[btid]
        if m.tid not in self.local_cancelled:
            self.local_cancelled.add(m.tid)
            self.send(LOCAL, m.tid, OWNER_CANCELLED)

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), how=st.sampled_from(["breaks", "leaves after an error", "goes away", "", "", ""]))
    def client_ends(self, data: st.DataObject, how: str) -> None:
        """One of the ways a client's tasks end early (rarer than the other events, which then
        have tasks to work on: one rule, which does nothing half the time)."""
        if how == "breaks" and self.clients - self.broken:
            self.client_breaks(data.draw(st.sampled_from(sorted(self.clients - self.broken))))
        elif how == "leaves after an error" and self.clients - self.closing:
            self.client_leaves_after_an_error(data.draw(st.sampled_from(sorted(self.clients - self.closing))))
        elif how == "goes away" and self.clients - {LOCAL}:
            self.client_goes_away(data.draw(st.sampled_from(sorted(self.clients - {LOCAL}))))

    def client_breaks(self, key: bytes) -> None:
        """Its set-up failed: BROKEN fails its futures; a worker's sub-tasks for it are CANCELLED."""
        serving = self.serving(lambda m: m.origin == key)
        owners = {b: (self.alive[b].owner, self.alive[b].tid) for b in serving}
        cancels, orphans = self.ledger.break_client(self.ledger.clients[key])
        self.broken.add(key)
        self.forgotten(cancels, serving)
        assert sorted(t.btid for t in orphans) == [b for b in serving if owners[b][0] != key]
        for btid in serving:
            owner, tid = owners[btid]
            self.send(owner, tid, BROKEN if owner == key else CANCELLED)  # loop.break_client

    def client_leaves_after_an_error(self, key: bytes) -> None:
        self.closing.add(key)
        dropped = self.ledger.drop_unstarted(self.ledger.clients[key])
        self.dropped_unstarted(dropped)

    def dropped_unstarted(self, dropped: list[Task]) -> None:
        want = self.serving(lambda m: m.origin in self.closing and m.holder is None)
        assert sorted(t.btid for t in dropped) == want
        for task in dropped:
            del self.alive[task.btid]
            self.send(task.owner, task.tid, CANCELLED)  # loop.drop_unstarted, loop._dispatch

    def client_goes_away(self, key: bytes) -> None:
        serving = self.serving(lambda m: key in (m.origin, m.owner))
        c, cancels = self.ledger.remove_client(key)
        assert c is not None
        self.clients.discard(key)
        self.gone.add(key)
        for btid in serving:
            m = self.alive[btid]
            self.fate.setdefault((m.owner, m.tid), ABANDONED)
        self.forgotten(cancels, serving)

    # ----------------------------------------------------------------- workers
    @precondition(lambda self: set(WORKERS) - set(self.workers))
    @rule(data=st.data())
    def a_worker_joins(self, data: st.DataObject) -> None:
        """A new worker, or one given up for lost saying HELLO again (it may still answer late)."""
        self.worker_joins(data.draw(st.sampled_from(sorted(set(WORKERS) - set(self.workers)))))

    def worker_joins(self, key: bytes) -> None:
        self.workers[key] = self.ledger.add_worker(key, {"name": key.decode(), "pid": 1, "host": "h"})
        self.gone.discard(key)
        self.held[key] = set()
        self.credit[key] = 0

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), n=st.integers(1, 3))
    def worker_asks(self, data: st.DataObject, n: int) -> None:
        key = data.draw(st.sampled_from(sorted(self.workers)))
        self.ledger.grant(self.workers[key], n)
        self.credit[key] += n
        self.dispatch(0)  # in the same turn of the loop

    @rule(starting=st.integers(0, 2))
    def a_turn(self, starting: int) -> None:
        self.dispatch(starting)

    def dispatch(self, starting: int) -> None:
        """One turn of loop._dispatch."""
        ledger = self.ledger
        if ledger.closing:
            self.dropped_unstarted(ledger.drop_closing())
        for w, batch in scheduling.dispatch(ledger, self.claim):
            assert w.key in self.workers and self.workers[w.key] is w, "tasks sent to a worker that is gone"
            assert 0 < len(batch) <= self.credit[w.key], "more tasks than the worker asked for"
            assert not any(t.attempts for t in batch[:-1]), "a task sent behind one that lost a worker"
            held = [ledger.tasks.get(b) for b in self.held[w.key]]
            assert not any(t.attempts for t in held if t is not None and t.worker == w.key), (
                "a task sent to a worker that holds one that lost a worker"
            )
            self.credit[w.key] -= len(batch)
            for task in batch:
                m = self.alive[task.btid]
                assert m.holder is None, f"task {task.btid} sent again while {m.holder!r} holds it"
                assert m.origin not in self.closing or task.attempts or m.claimed
                m.holder = w.key
                self.held[w.key].add(task.btid)
        if ledger.queue and starting:
            scheduling.mark_running(ledger, starting, self.claim)
        elif not ledger.queue:
            self.now += 1.0
            for w in scheduling.recall(ledger, self.now):
                assert w.key in self.workers

    @precondition(lambda self: any(self.held.get(k) for k in self.workers))
    @rule(data=st.data(), status=st.sampled_from([RESULT, ERROR]), credit=st.integers(0, 1))
    def worker_answers(self, data: st.DataObject, status: str, credit: int) -> None:
        """RESULT, which carries the worker's CREDIT for the next task (loop._on_result)."""
        key = data.draw(st.sampled_from(sorted(k for k in self.workers if self.held[k])))
        btid = data.draw(st.sampled_from(sorted(self.held[key])))
        self.answer(key, btid, status)
        self.ledger.grant(self.workers[key], credit)
        self.credit[key] += credit
        self.dispatch(0)

    @precondition(lambda self: any(self.running_elsewhere.get(k) for k in self.workers))
    @rule(data=st.data())
    def worker_answers_late(self, data: st.DataObject) -> None:
        """A worker given up for lost, back with the same id, answers a task it had then; or a
        worker answers a task it was told to cancel (the CANCEL and the answer crossed)."""
        key = data.draw(st.sampled_from(sorted(k for k in self.workers if self.running_elsewhere.get(k))))
        btid = data.draw(st.sampled_from(sorted(self.running_elsewhere[key])))
        self.running_elsewhere[key].discard(btid)
        self.answer(key, btid, RESULT)

    def answer(self, key: bytes, btid: int, status: str) -> None:
        w = self.workers[key]
        m = self.alive.get(btid)
        accepted = m is not None and (m.holder == key or key in m.lost_with)
        done, others = self.ledger.finish(w, [((btid, int(status == ERROR), 1, 0.0, 0.0), [b"r"])])
        self.held[key].discard(btid)
        if not accepted:
            assert done == [] and others == [], f"an answer for task {btid} that should be dropped was taken"
            return
        assert m is not None
        assert [(t.btid, s) for t, s, _ in done] == [(btid, int(status == ERROR))]
        holder = m.holder
        want = [(holder, btid)] if holder is not None and holder != key and holder in self.workers else []
        assert others == want, f"the worker now holding task {btid}: told {others}, expected {want}"
        if want:
            self.held[holder].discard(btid)  # type: ignore[index]
        del self.alive[btid]
        self.send(m.owner, m.tid, status)

    @precondition(lambda self: any(self.held.get(k) for k in self.workers))
    @rule(data=st.data(), n=st.integers(1, 3))
    def worker_submits_sub_tasks(self, data: st.DataObject, n: int) -> None:
        key = data.draw(st.sampled_from(sorted(k for k in self.workers if self.held[k])))
        parent = data.draw(st.sampled_from(sorted(self.held[key])))
        origin = self.alive[parent].origin
        tids = [self.new_tid(key) for _ in range(n)]
        before = set(self.ledger.tasks)
        refused = self.ledger.submit(key, [((tid, parent, 2), [b"fn", b"args"]) for tid in tids], None)
        self.submitted += [(key, tid) for tid in tids]
        if origin in self.broken or origin in self.closing:
            assert refused == tids
            for tid in tids:
                self.send(key, tid, CANCELLED)
            return
        assert refused == []
        new = sorted(set(self.ledger.tasks) - before)
        for btid, tid in zip(new, tids, strict=True):
            self.alive[btid] = Model(key, tid, origin)

    @precondition(lambda self: any(m.owner in self.workers for m in self.alive.values()))
    @rule(data=st.data())
    def worker_cancels_a_sub_task(self, data: st.DataObject) -> None:
        btid = data.draw(st.sampled_from(self.serving(lambda m: m.owner in self.workers)))
        m = self.alive[btid]
        cancels = self.ledger.cancel(m.owner, [m.tid])
        self.send(m.owner, m.tid, OWNER_CANCELLED)
        self.forgotten(cancels, [btid])

    @precondition(lambda self: any(self.held.get(k) for k in self.workers))
    @rule(data=st.data(), resync=st.booleans())
    def worker_hands_back(self, data: st.DataObject, resync: bool) -> None:
        """RETURN of tasks it has not started (its credit drops to 0), or HELLO again holding fewer."""
        key = data.draw(st.sampled_from(sorted(k for k in self.workers if self.held[k])))
        back = data.draw(st.lists(st.sampled_from(sorted(self.held[key])), unique=True))
        w = self.workers[key]
        if resync:
            self.ledger.resync(w, self.held[key] - set(back))
        else:
            self.ledger.take_back(w, back)
            self.credit[key] = 0
        for btid in back:
            self.held[key].discard(btid)
            self.alive[btid].holder = None
        front = list(self.ledger.queue)[: len(back)]
        if resync:
            assert sorted(front) == sorted(back), "tasks a worker no longer holds go first"
        else:
            assert front == back, "handed-back tasks go first, in order"

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), dies=st.booleans())
    def worker_leaves_or_dies(self, data: st.DataObject, dies: bool) -> None:
        key = data.draw(st.sampled_from(sorted(self.workers)))
        w = self.workers.pop(key)
        held = sorted(self.held.pop(key))
        del self.credit[key]
        self.gone.add(key)
        subs = self.serving(lambda m: m.owner == key)
        for btid in subs:
            m = self.alive[btid]
            self.fate.setdefault((key, m.tid), ABANDONED)
        if dies:  # supervision.lose_worker
            lost, cancels = self.ledger.lose_worker(w, "killed by the test")
            given_up = []
            held = [b for b in held if b not in subs]  # its own sub-tasks are not retried: dropped
            for btid in held:
                m = self.alive[btid]
                m.holder, m.attempts = None, m.attempts + 1
                m.lost_with.add(key)
                if m.attempts > self.ledger.max_retries:
                    given_up.append(btid)
            assert sorted((t.btid, g) for t, g in lost) == [(b, b in given_up) for b in held]
            for btid in given_up:
                m = self.alive.pop(btid)
                self.send(m.owner, m.tid, LOST)
            # It may still be running them, and come back (same id) with an answer.
            self.running_elsewhere.setdefault(key, set()).update(held)
        else:  # BYE: queued again, no attempt spent
            cancels = self.ledger.leave(w)
            for btid in held:
                self.alive[btid].holder = None  # (its own sub-tasks too, then dropped)
        self.forgotten(cancels, subs)

    # -------------------------------------------------------------- invariants
    @invariant()
    def books_match_the_model(self) -> None:
        ledger = self.ledger
        assert set(ledger.tasks) == set(self.alive), "the ledger holds other tasks than it should"
        queued = [b for b in ledger.queue if b in ledger.tasks and ledger.tasks[b].worker is None]
        assert len(queued) == len(set(queued)), "a task queued twice"
        for btid, task in ledger.tasks.items():
            m = self.alive[btid]
            assert (task.owner, task.tid, task.origin) == (m.owner, m.tid, m.origin)
            assert task.worker == m.holder, f"task {btid} held by {task.worker!r}, expected {m.holder!r}"
            if task.worker is None:
                assert btid in queued, f"task {btid} neither queued nor held"
            else:
                assert task.worker in self.workers, f"task {btid} held by a worker that is gone"
        for owner, ids in ledger.by_owner.items():  # an owner indexed for CANCEL: all its tasks, exactly
            held = {t.tid: b for b, t in ledger.tasks.items() if t.owner == owner}
            assert ids == held, f"the ids kept for CANCEL of {owner!r} are not those of its tasks held"
        assert set(ledger.workers) == set(self.workers)
        for key, w in self.workers.items():
            assert ledger.workers[key] is w
            assert w.assigned == self.held[key], (
                f"worker {key!r} holds {w.assigned}, was sent {self.held[key]}"
            )

    @invariant()
    def credits_add_up(self) -> None:
        ready = [w for w in self.ledger.ready if w.key in self.workers and self.workers[w.key] is w]
        assert len(ready) == len({id(w) for w in ready}), "a worker waits in line twice"
        for key, w in self.workers.items():
            assert w.credit == self.credit[key] >= 0
            assert w.in_ready == (w in ready)
            if w.credit > 0:
                assert w.in_ready, f"worker {key!r} has credit but is not in line"

    @invariant()
    def one_outcome_each(self) -> None:
        for btid, m in self.alive.items():
            fate = self.fate.get((m.owner, m.tid))
            assert fate is None or (m.owner == LOCAL and fate == OWNER_CANCELLED and not m.claimed), (
                f"task {btid} is still held after {fate}"
            )

    def teardown(self) -> None:
        """Workers run whatever is left: every task ends with exactly one outcome."""
        if not hasattr(self, "alive"):
            return
        spare = b"spare"
        if spare not in self.workers:
            self.worker_joins(spare)
        for _ in range(1000):
            if not self.alive:
                break
            self.worker_asks_all()
            self.dispatch(0)
            for key in sorted(self.workers):
                for btid in sorted(self.held[key]):
                    self.answer(key, btid, RESULT)
            self.books_match_the_model()
        assert not self.alive, f"tasks never finish: {sorted(self.alive)}"
        assert not self.ledger.tasks
        missing = [k for k in self.submitted if k not in self.fate]
        assert not missing, f"tasks without an outcome: {missing}"

    def worker_asks_all(self) -> None:
        for key, w in self.workers.items():
            self.ledger.grant(w, 4)
            self.credit[key] += 4


# No deadline (the machine is shared).  Under mutmut (once per mutant) no shrinking: a failure is
# all it needs, and shrinking one takes minutes.
_MUTATING = bool(os.environ.get("MUTANT_UNDER_TEST"))
Books.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate] if _MUTATING else list(Phase),
)
test_books = Books.TestCase
