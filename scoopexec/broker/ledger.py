"""The broker's books: every task in flight, its attempts, the workers and the clients.

Plain objects, no sockets: the loop (loop.py) turns messages into calls here and sends
what the calls return; scheduling.py decides who gets which task from what is here.
tests/test_ledger.py exercises it alone.

Every task the broker holds is in exactly one place: queued (its broker id in
``queue``, ``task.worker`` None) or assigned (``task.worker`` is a live worker's key,
and the id is in that worker's ``assigned``).  A task leaves the books when its result
comes (:meth:`Ledger.finish`), when its owner cancels it or goes away
(:meth:`Ledger.cancel`, :meth:`Ledger.forget_peer`, :meth:`Ledger.break_client`: one
way out, :meth:`Ledger._forget`, which says which workers hold what must be cancelled),
or when it was lost with its workers more than ``max_retries`` times
(:meth:`Ledger.lose_worker`).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..wire.fnframes import HEAD, MIN_SIZE, Held, head_of

__all__ = [
    "EXIT_UNKNOWN", "LOCAL", "MANY", "ClientState", "Ledger", "Peer", "Source", "Task", "WorkerState",
    "submit_local", "task_entries",
]  # fmt: skip

EXIT_UNKNOWN = 1 << 16  # lose_worker()'s task_rc when the process ended and how is not known
LOCAL = b""  # the peer key of the in-process client (an embedded broker's ScoopExecutor)
CLIENT = "client"
WORKER = "worker"

# Queues at least this long keep their new tasks' frames compactly (_compact): a copy of each
# small frame costs the broker's loop about as much as a task's other bookkeeping, worth it
# only when many tasks wait.
COMPACT_QUEUED = 10_000
COMPACT_BELOW = 4096  # frames shorter than this are kept as bytes
CLOCK_GRAIN = 5e-5  # s: a client's tasks taken in this close together share one Source
# ... and 1 ms behind a queue of COMPACT_QUEUED or more (tasks taken in one at a time, an embedded
# client's, would cost a Source each 50 us; each waits for 10,000 others, far longer than 1 ms)
QUEUED_GRAIN = 1e-3

# Worker key -> broker ids to cancel there (the payload of one CANCEL message each).
Cancels = dict[bytes, list[tuple[int]]]


MANY: Any = object()  # Task.rest when the task has other than two frames (Task.frames)
# Attempts lost in this process, by any ledger (Task.lose): while 0, no task's ``lost`` holds one,
# and the timeline's bulk path (tracebulk.sizes) need not look at each task's.
LOST_ATTEMPTS = [0]
_new = object.__new__


class Source:
    """What the tasks taken in together share: the parent that submitted them, the client they
    serve and its set-up, when they came.  One object for a SUBMIT's tasks (per parent, for a
    worker's sub-tasks), so that a queued task keeps one reference instead of four fields."""

    __slots__ = ("origin", "parent", "setup", "submitted")

    def __init__(self, parent: int, origin: bytes | None, setup: int, submitted: float) -> None:
        self.parent = parent  # the broker id of the task that submitted them (0: none)
        self.origin = origin  # the client they ultimately serve (whose set-up they need); None: unknown
        self.setup = setup
        self.submitted = submitted


class Task:
    """A task in the broker's books.  A million may be queued, so it is small: eight slots
    (96 bytes), no list of its frames when it has the usual two (the function's and the
    arguments'), what it shares with the tasks taken in with it in one :class:`Source`,
    and one field, ``lost``, for whether its owner was told it runs and what is known of
    its lost attempts."""

    __slots__ = ("btid", "first", "lost", "owner", "rest", "src", "tid", "worker")

    def __init__(
        self,
        btid: int,
        owner: bytes,
        tid: int,
        parent: int,
        origin: bytes | None,
        setup: int,
        frames: list[Any],
        submitted: float = 0.0,
        src: Source | None = None,
    ) -> None:
        self.btid = btid  # the broker's id
        self.owner = owner  # who submitted it (a client, or a worker for a sub-task) and gets the result
        self.tid = tid  # the owner's id for it
        # parent, origin, set-up and submit time (given, or shared: Ledger.submit)
        self.src = src if src is not None else Source(parent, origin, setup, submitted or time.time())
        if len(frames) == 2:  # its frames: function and arguments, or all of them in `first`
            self.first, self.rest = frames
        else:
            self.first, self.rest = frames, MANY
        self.worker: bytes | None = None
        # None until its owner is told it runs (marked); then a tuple of (worker, why) for each
        # attempt lost with its worker: every task a worker holds was marked first (dispatch).
        self.lost: tuple[tuple[bytes, str], ...] | None = None

    @property
    def parent(self) -> int:
        """The broker id of the task that submitted it (0: none)."""
        return self.src.parent

    @property
    def origin(self) -> bytes | None:
        """The client it ultimately serves (whose set-up it needs); None: unknown."""
        return self.src.origin

    @property
    def setup(self) -> int:
        return self.src.setup

    @property
    def submitted(self) -> float:
        """When the broker took it in (time.time(); shared by tasks taken in together)."""
        return self.src.submitted

    @property
    def marked(self) -> bool:
        """Its owner was told it is running (scheduling.dispatch, mark_running)."""
        return self.lost is not None

    @marked.setter
    def marked(self, value: bool) -> None:
        if not value:
            raise ValueError("a task's owner cannot be untold that it runs")
        if self.lost is None:
            self.lost = ()

    @property
    def attempts(self) -> int:
        """How many of its attempts were lost with their worker."""
        lost = self.lost
        return len(lost) if lost else 0

    def lose(self, worker: bytes, why: str) -> None:
        """An attempt was lost with ``worker``."""
        LOST_ATTEMPTS[0] += 1  # (first: a task whose ``lost`` holds an attempt is never missed)
        self.lost = (*(self.lost or ()), (worker, why))

    @property
    def frames(self) -> list[Any]:
        """The task's frames, as submitted (a new list: see add_frames)."""
        rest = self.rest
        return self.first if rest is MANY else [self.first, rest]  # type: ignore[no-any-return]

    def add_frames(self, out: list[Any]) -> int:
        """Append the task's frames to ``out``; return how many."""
        rest = self.rest
        if rest is MANY:
            out.extend(self.first)
            return len(self.first)
        out.append(self.first)
        out.append(rest)
        return 2

    def entry(self, out: list[Any]) -> tuple[int, int, int, int]:
        """Append the task's frames to ``out``; return its entry in a TASKS message:
        (broker id, set-up, number of frames, attempts lost)."""
        rest, lost = self.rest, self.lost
        if rest is MANY:
            out.extend(self.first)
            n = len(self.first)
        else:
            out.append(self.first)
            out.append(rest)
            n = 2
        return self.btid, self.src.setup, n, len(lost) if lost else 0

    def function_frame(self) -> Any:
        """The frame of the pickled function (every task's first)."""
        return self.first if self.rest is not MANY else self.first[0]

    @property
    def prev(self) -> tuple[bytes, ...]:
        """The workers it was lost with (their late result is accepted)."""
        return tuple(k for k, _ in self.lost or ())

    @property
    def losses(self) -> tuple[str, ...]:
        """Why each attempt was lost."""
        return tuple(why for _, why in self.lost or ())


def task_entries(
    batch: Iterable[Task], out: list[Any], w: WorkerState, sent: list[tuple[int, int]] | None = None
) -> list[int]:
    """Task.entry for each task of ``batch``, flat, for worker ``w``: append their frames to
    ``out`` and return their TASKS entries one after the other (protocol.pack_flat takes them
    so: one call to pack them all, not one per task).  A large function frame that ``w``
    holds already goes as its head alone (wire/fnframes.py); ``sent`` (the timeline's) gets
    (broker id, bytes of the function frame as it went) for each task that has such a frame."""
    flat: list[int] = []
    for t in batch:
        rest, lost, first = t.rest, t.lost, t.first
        if rest is MANY:
            n = len(first[0])
            if n >= MIN_SIZE or n == HEAD:  # (fnframes.worth_a_look, inline: per task)
                fn = _function_frame(w, t.src.setup, first[0])
                out.append(fn)
                out.extend(first[1:])
                if sent is not None:
                    sent.append((t.btid, len(fn)))
            else:
                out.extend(first)
            flat += (t.btid, t.src.setup, len(first), len(lost) if lost else 0)
        else:
            n = len(first)
            if n >= MIN_SIZE or n == HEAD:  # (fnframes.worth_a_look, inline: per task)
                first = _function_frame(w, t.src.setup, first)
                if sent is not None:
                    sent.append((t.btid, len(first)))
            out += (first, rest)  # (one call, not two appends)
            flat += (t.btid, t.src.setup, 2, len(lost) if lost else 0)
    return flat


FORGED = b"\x00" * (HEAD + 1)  # what goes in place of a head that came from a submitter (see below)


def _function_frame(w: WorkerState, setup: int, frame: Any) -> Any:
    """What goes to ``w`` for a function frame of HEAD or MIN_SIZE bytes and more: its head
    alone when ``w`` holds the whole marked frame, else the frame (now held, if marked).  A
    head alone is only ever the broker's to send: from a client it would stand for a frame
    it never sent, so the worker gets a frame that fails to unpickle instead."""
    head = head_of(frame)
    if head is None:
        return frame
    if len(frame) == HEAD:
        return FORGED
    held = w.fns
    if held is None:
        held = w.fns = Held()
    key = (setup, head)
    if held.get(key) is not None:
        return head
    held.add(key, len(frame))
    return frame


class Peer:
    __slots__ = ("info", "joined", "key", "role")

    def __init__(self, key: bytes, role: str, info: dict[str, Any]) -> None:
        self.key = key
        self.role = role
        self.info = info
        self.joined = time.time()


class WorkerState(Peer):
    __slots__ = (
        "assigned", "credit", "done", "draining", "fns", "hold", "hold_until", "in_ready", "last_seen",
        "name", "recall_mark", "recalled", "sent", "set_up", "setups", "tag",
    )  # fmt: skip

    def __init__(self, key: bytes, info: dict[str, Any]) -> None:
        super().__init__(key, WORKER, info)
        self.credit = 0
        self.in_ready = False  # in Ledger.ready (once: a second entry would jump the queue)
        self.assigned: set[int] = set()
        self.setups: set[int] = set()  # the set-ups sent to it
        self.set_up: set[int] = set()  # those it said it applied (SETUP_DONE)
        self.done = 0
        self.sent = 0  # tasks sent to it (a new one may wait there unstarted)
        self.last_seen = time.time()
        self.recalled = 0.0  # monotonic time of the last RECALL sent to it
        self.recall_mark = (-1, -1)  # (sent, done) when that RECALL went out
        self.tag = str(info.get("tag") or "")
        self.draining = False  # its batch job ends soon: it gets no task any more (Ledger.drain)
        self.name = str(info.get("name") or key.hex())
        self.fns: Held | None = None  # the large function frames it holds (wire/fnframes.py)
        self.hold = 0  # a task sent to it that lost a worker before: none goes behind it (scheduling)
        self.hold_until = 0.0  # ... for so long at most (monotonic)

    @property
    def where(self) -> str:
        """``worker NAME (pid P on HOST)``, for messages."""
        return f"worker {self.name} (pid {self.info.get('pid', '?')} on {self.info.get('host', '?')})"


class ClientState(Peer):
    __slots__ = ("broken", "closing", "held", "setup", "setup_deaths", "setup_frames", "shares")

    def __init__(self, key: bytes, info: dict[str, Any], setup: int, frames: list[Any]) -> None:
        super().__init__(key, CLIENT, info)
        self.setup = setup
        self.setup_frames = frames
        self.setup_deaths = 0  # local worker processes that ended while applying it, in a row
        self.broken = False
        self.closing = False  # leaving after an error: what no worker has started is dropped
        self.shares: dict[bytes, list[Any]] = {}  # name -> value shared with every worker, in order
        self.held = 0  # tasks it submitted that the broker holds (a remote client's: see limits.py)


class Ledger:
    """Tasks, workers and clients of one broker (see the module docstring)."""

    def __init__(self, max_retries: int = 3) -> None:
        self.max_retries = max_retries
        self.tasks: dict[int, Task] = {}
        self.queue: collections.deque[int] = collections.deque()
        # owner -> {owner's id: broker id} of its tasks held, for CANCEL: made by an owner's first
        # CANCEL, kept up to date while it has tasks here, dropped when it has none (most owners
        # never cancel by id, and a million queued tasks would cost 50 MB of index)
        self.by_owner: dict[bytes, dict[int, int]] = {}
        self._fns: dict[bytes, bytes] = {}  # a queued task's function frame, kept once (_compact)
        self.workers: dict[bytes, WorkerState] = {}
        self.clients: dict[bytes, ClientState] = {}
        self.observers: set[bytes] = set()
        # (owner, owner's id, broker's id) of the task last handed to a worker: broker/leader.py
        # finds a round trip's worker by it (ids, not the Task, whose payload it would keep alive).
        self.last_assigned: tuple[bytes, int, int] = (b"", 0, 0)
        self.setups: dict[int, ClientState] = {}
        self.ready: collections.deque[WorkerState] = collections.deque()  # workers with credit
        self.dropped: collections.Counter[str] = collections.Counter()  # messages refused, by reason
        self.stopped: collections.Counter[str] = collections.Counter()  # tasks and workers stopped by a limit
        self.faults: collections.Counter[str] = collections.Counter()  # what failed and was survived
        self.completed = 0
        self.recent_losses: collections.deque[str] = collections.deque(maxlen=50)
        self.next_recall = 0.0  # scheduling.recall's pace
        self.recall_wake = 0.0  # when the loop must call it again without input (0: no need)
        self.closing = False  # some client is leaving after an error (drop_unstarted)
        self._rate = 0.0  # completions per second over the last second or so
        self._rate_t = time.monotonic()
        self._rate_n = 0
        self._next_btid = 1
        self._next_setup = 1
        self._src = Source(0, None, 0, 0.0)  # the last client's tasks' (submit)

    # ------------------------------------------------------------------ peers
    def peer(self, key: bytes) -> WorkerState | ClientState | None:
        return self.workers.get(key) or self.clients.get(key)

    def add_client(self, key: bytes, info: dict[str, Any], setup_frames: list[Any]) -> ClientState:
        if key in self.workers:
            raise ValueError("a worker said HELLO as a client (one routing id, one role)")
        sid = self._next_setup
        self._next_setup += 1
        c = ClientState(key, info, sid, list(setup_frames))
        self.clients[key] = c
        self.setups[sid] = c
        return c

    def add_worker(self, key: bytes, info: dict[str, Any]) -> WorkerState:
        # A peer with two roles would be forgotten in one (a worker lost, its fd with it) and
        # kept in the other for ever: a client nothing is ever sent to, so nothing fails.
        if key in self.clients:
            raise ValueError("a client said HELLO as a worker (one routing id, one role)")
        w = WorkerState(key, info)
        self.workers[key] = w
        return w

    # ------------------------------------------------------------- tasks in
    def submit(
        self, owner: bytes, parts: Iterable[tuple[tuple[Any, ...], list[Any]]], client: ClientState | None
    ) -> list[int]:
        """Queue the tasks of one SUBMIT from ``owner``, each given as ((tid, parent, ...), frames).

        ``client``: the submitting client itself (its tasks serve it, with its set-up), or None
        when a worker submits sub-tasks (each serves its parent's client, with that set-up; none
        when the parent is gone).  Returns the ids of the tasks refused, nothing queued: those
        that serve a client that is broken or leaving.
        """
        if client is not None and (client.broken or client.closing):
            return [ent[0] for ent, _ in parts]
        tasks, queue, clients = self.tasks, self.queue, self.clients
        ids = self.by_owner.get(owner)
        compact = owner != LOCAL and len(queue) >= COMPACT_QUEUED  # (LOCAL's frames are bytes, its list)
        refused: list[int] = []
        btid = self._next_btid
        now = time.time()  # a task's ``submitted``: one Source for all the tasks taken in
        shared: Source | None = None  # what they share: one for a client's, one per parent for sub-tasks
        if client is not None:
            # The last client Source serves again within CLOCK_GRAIN s: tasks taken in one at a
            # time (an embedded client's) would otherwise cost one each.
            shared, setup = self._src, client.setup
            grain = CLOCK_GRAIN if len(queue) < COMPACT_QUEUED else QUEUED_GRAIN
            if now - shared.submitted >= grain or shared.origin != owner or shared.setup != setup:
                shared = self._src = Source(0, owner, setup, now)
            now = shared.submitted
        subs: dict[int, Source | None] = {}
        for ent, body in parts:
            tid, parent = ent[0], ent[1]
            src = shared
            if parent or src is None:
                if parent in subs:
                    src = subs[parent]
                elif client is not None:
                    src = subs[parent] = Source(parent, owner, client.setup, now)
                else:
                    ptask = tasks.get(parent)
                    if ptask is None:
                        src = Source(parent, None, 0, now)
                    else:
                        origin = ptask.origin
                        c = clients.get(origin) if origin is not None else None
                        if c is None or not (c.broken or c.closing):
                            src = Source(parent, origin, ptask.setup, now)
                    subs[parent] = src
                if src is None:  # it serves a client that is broken or leaving
                    refused.append(tid)
                    continue
            if compact:
                _compact(body, self._fns)
            tasks[btid] = Task(btid, owner, tid, 0, None, 0, body, 0.0, src)
            if ids is not None:
                ids[tid] = btid
            queue.append(btid)
            btid += 1
        if client is not None:
            client.held += btid - self._next_btid
        self._next_btid = btid
        return refused

    def grant(self, w: WorkerState, credit: int) -> None:
        """The worker wants ``credit`` more tasks."""
        w.last_seen = time.time()
        if credit <= 0 or w.draining:
            return
        if not w.in_ready:
            w.in_ready = True
            self.ready.append(w)
        w.credit += credit

    def assign(self, w: WorkerState, batch: Iterable[Task]) -> None:
        key = w.key
        n = 0
        t = None
        for t in batch:
            t.worker = key
            w.assigned.add(t.btid)
            n += 1
        w.sent += n
        if t is not None:
            self.last_assigned = (t.owner, t.tid, t.btid)

    def drain(self, w: WorkerState) -> None:
        """The worker's batch job ends soon: no task goes to it any more (it RETURNs what it has
        not started; what it runs finishes there, or is queued again if the job ends first)."""
        w.draining = True
        w.credit = 0

    def take_back(self, w: WorkerState, btids: list[int], lost_frames: bool = False) -> None:
        """RETURN: the worker hands back tasks it has not started; its credit drops to 0.
        ``lost_frames`` (arg 1): large function frames go to it whole again (wire/fnframes.py)."""
        w.credit, w.fns = 0, (None if lost_frames else w.fns)
        for btid in reversed(btids):
            task = self.tasks.get(btid)
            if task is not None and task.worker == w.key:
                task.worker = None
                w.assigned.discard(btid)
                self.queue.appendleft(btid)

    def resync(self, w: WorkerState, held: set[int]) -> None:
        """A worker that said HELLO again holds only ``held``: queue again what it lost (and
        send it large function frames whole again: messages to it may have been lost too)."""
        w.fns = None
        for btid in list(w.assigned):
            if btid not in held:
                w.assigned.discard(btid)
                task = self.tasks.get(btid)
                if task is not None and task.worker == w.key:
                    task.worker = None
                    self.queue.appendleft(btid)

    # ------------------------------------------------------------ tasks out
    def finish(
        self,
        w: WorkerState,
        results: Iterable[tuple[tuple[Any, ...], Sequence[Any]]],
        out: dict[bytes, list[tuple[int, int, Sequence[Any]]]] | None = None,
        finished: list[Task] | None = None,
    ) -> tuple[list[tuple[Task, int, Sequence[Any]]], list[tuple[bytes, int]]]:
        """A RESULT from ``w``, each result given as ((btid, status, ...), frames).

        Returns the results to deliver, as (task, status, frames) (the others are dropped and
        counted: stale, or from a worker that did not have the task), and (worker, btid) for each
        task that another worker holds too (a late answer won): that worker must cancel it.
        With ``out``, the results to deliver go there instead, as the broker batches them: under
        their owner's key, (the owner's id, status, frames) each; the list returned is empty.
        ``finished`` gets the tasks of the results delivered, in order (the timeline's: trace.py).
        """
        tasks, by_owner, workers, assigned, key = self.tasks, self.by_owner, self.workers, w.assigned, w.key
        done: list[tuple[Task, int, Sequence[Any]]] = []
        others: list[tuple[bytes, int]] = []
        clients, n = self.clients, 0
        last, c, owned = None, None, list[Any]()  # (the last owner, its client and batch in ``out``)
        for ent, body in results:
            btid = ent[0]
            task = tasks.get(btid)
            assigned.discard(btid)
            if task is None:
                self.dropped["stale result"] += 1
                continue
            holder = task.worker
            if holder != key and key not in task.prev:
                self.dropped["result from a worker that did not have the task"] += 1
                continue
            del tasks[btid]
            if finished is not None:
                finished.append(task)
            if by_owner:
                self._unkey(task)
            owner = task.owner
            if owner is not last:  # (a message's results mostly serve one owner: looked up once)
                last, c = owner, clients.get(owner)
                owned = out.setdefault(owner, []) if out is not None else owned
            if c is not None:
                c.held -= 1
            if holder is not None and holder != key:
                # A late answer from a worker we gave up on: first result wins;
                # the worker now holding the task may drop it.
                o = workers.get(holder)
                if o is not None:
                    o.assigned.discard(btid)
                    others.append((o.key, btid))
            if out is None:
                done.append((task, ent[1], body))
            else:
                owned.append((task.tid, ent[1], body))
            n += 1
        w.done += n
        return done, others

    def _forget(self, btid: int, cancels: Cancels) -> Task:
        """Drop a task wherever it is; its worker, if any, goes into ``cancels``."""
        task = self.tasks.pop(btid)
        self._unkey(task)
        self._release(task)
        if task.worker is not None:
            w = self.workers.get(task.worker)
            if w is not None:
                w.assigned.discard(btid)
                cancels.setdefault(w.key, []).append((btid,))
        return task

    def keyed(self) -> dict[tuple[bytes, int], int]:
        """``by_owner`` flattened: (owner, owner's id) -> broker id, for the owners indexed."""
        return {(o, tid): b for o, ids in self.by_owner.items() for tid, b in ids.items()}

    def _ids(self, owner: bytes) -> dict[int, int]:
        """The index of ``owner``'s tasks for CANCEL, made now if it has none (one look at every task)."""
        ids = self.by_owner.get(owner)
        if ids is None:
            ids = {t.tid: b for b, t in self.tasks.items() if t.owner == owner}
            if ids:
                self.by_owner[owner] = ids
        return ids

    def _unkey(self, task: Task) -> None:
        ids = self.by_owner.get(task.owner)
        if ids is not None:
            ids.pop(task.tid, None)
            if not ids:
                del self.by_owner[task.owner]

    def _release(self, task: Task) -> None:
        """A task leaves the books: its owner, if a client, holds one fewer."""
        c = self.clients.get(task.owner)
        if c is not None:
            c.held -= 1

    def cancel(self, owner: bytes, tids: Iterable[int]) -> Cancels:
        """CANCEL from an owner: forget those of its tasks that are still here."""
        cancels: Cancels = {}
        ids = self._ids(owner)
        for tid in tids:
            btid = ids.get(tid)
            if btid is not None and btid in self.tasks:
                self._forget(btid, cancels)
        return cancels

    def cancel_unstarted(self, owner: bytes, tids: Iterable[int]) -> tuple[list[int], list[int]]:
        """CANCEL with CONFIRM: drop ``owner``'s tasks ``tids`` that no worker holds or held and whose
        owner was not told they run (a task claimed for a starting worker was: its STARTED answered
        that cancel() with False); returns (those ids, the others')."""
        dropped: list[int] = []
        kept: list[int] = []
        ids = self._ids(owner)
        for tid in tids:
            task = self.tasks.get(ids.get(tid, -1))
            if task is not None and task.worker is None and not task.marked:  # (a lost attempt marks too)
                self._forget(task.btid, {})
                dropped.append(tid)
            else:
                kept.append(tid)
        return dropped, kept

    def cancel_tree(self, owner: bytes, tids: Iterable[int]) -> tuple[Cancels, Cancels, list[Task]]:
        """ex.cancel() of running tasks: forget ``owner``'s tasks ``tids`` and every task they
        submitted, at any depth.  Returns the cancels of the tasks, those of their descendants,
        and the descendants (whose owners, the workers running their parents, are told)."""
        wanted = set(tids)
        top: Cancels = {}
        gone = {b for b, t in self.tasks.items() if t.owner == owner and t.tid in wanted}
        for btid in gone:
            self._forget(btid, top)
        below: Cancels = {}
        kids: list[Task] = []
        while gone:
            gone = {b for b, t in self.tasks.items() if t.parent in gone}
            kids.extend(self._forget(btid, below) for btid in gone)
        return top, below, kids

    def forget_peer(self, key: bytes) -> Cancels:
        """A client or worker is gone: the tasks it submitted, or that serve it, have nobody to report to."""
        cancels: Cancels = {}
        for btid in [b for b, t in self.tasks.items() if key in (t.origin, t.owner)]:
            self._forget(btid, cancels)
        self.by_owner.pop(key, None)
        return cancels

    def break_client(self, c: ClientState) -> tuple[Cancels, list[Task]]:
        """The client's pool is broken: drop the tasks that serve it; return the cancels and the
        dropped tasks whose owner is someone else (a worker's sub-tasks: it is told CANCELLED)."""
        c.broken = True
        cancels: Cancels = {}
        orphans = []
        for btid in [b for b, t in self.tasks.items() if t.origin == c.key]:
            task = self._forget(btid, cancels)
            if task.owner != c.key:
                orphans.append(task)
        return cancels, orphans

    def drop_unstarted(self, c: ClientState) -> list[Task]:
        """The client leaves after an error: drop its tasks no worker holds, now and later
        (drop_closing, at every dispatch).  Returns the dropped tasks (they are answered CANCELLED)."""
        if c.closing:
            return []
        c.closing = self.closing = True
        return self.drop_closing()

    def drop_closing(self) -> list[Task]:
        """Drop the queued tasks of clients leaving after an error; return them."""
        tasks, clients = self.tasks, self.clients
        kept: collections.deque[int] = collections.deque()
        dropped = []
        for btid in self.queue:
            task = tasks.get(btid)
            if task is None:
                continue
            c = clients.get(task.origin) if task.origin is not None else None
            if c is not None and c.closing and task.worker is None:
                del tasks[btid]
                self._unkey(task)
                self._release(task)
                dropped.append(task)
            else:
                kept.append(btid)
        self.queue = kept
        return dropped

    def remove_client(self, key: bytes) -> tuple[ClientState | None, Cancels]:
        """The client left or was lost: (it, the cancels for its tasks)."""
        c = self.clients.pop(key, None)
        if c is None:
            return None, {}
        c.broken = True
        # What it sent to serve its tasks goes with it: no task of it is left to need them.
        self.setups.pop(c.setup, None)
        c.setup_frames, c.shares = [], {}
        cancels = self.forget_peer(key)
        tasks = self.tasks
        self.queue = collections.deque(b for b in self.queue if b in tasks)  # not only skipped later
        return c, cancels

    def leave(self, w: WorkerState) -> Cancels:
        """BYE from a worker: what it held is queued again (no attempt spent); its sub-tasks go."""
        self.workers.pop(w.key, None)
        for btid in list(w.assigned):
            task = self.tasks.get(btid)
            if task is not None and task.worker == w.key:
                task.worker = None
                self.queue.appendleft(btid)
        return self.forget_peer(w.key)

    def lose_worker(
        self, w: WorkerState, reason: str, task_rc: int | None = None
    ) -> tuple[list[tuple[Task, bool]], Cancels]:
        """The worker is lost: each task it held is queued again, or given up when it has been lost
        more than max_retries times.  Returns (task, given up) for each, and the cancels for the
        sub-tasks it had submitted.  ``task_rc``: the exit status of its process, which ended not
        for a reason of its own (deploy/contract.py): what it was running most likely ended it."""
        self.workers.pop(w.key, None)
        lost = f"{w.where}: {reason}"
        held = len(w.assigned)
        by_task = task_rc is not None and held > 0
        self.recent_losses.append(f"{lost} while running a task" if by_task else lost)
        ended = _ended_by_task(held, task_rc) if by_task and task_rc is not None else ""
        out = []
        for btid in sorted(w.assigned, reverse=True):  # (to the queue's front in their first order)
            task = self.tasks.get(btid)
            if task is None or task.worker != w.key or task.owner == w.key:
                continue  # (its own sub-task: nobody to report to; forget_peer drops it)
            task.worker = None
            task.lose(w.key, lost + ended)
            given_up = task.attempts > self.retries_for(task)
            if given_up:
                del self.tasks[btid]
                self._unkey(task)
                self._release(task)
            else:
                self.queue.appendleft(btid)
            out.append((task, given_up))
        out.reverse()
        w.assigned.clear()
        return out, self.forget_peer(w.key)

    def retries_for(self, task: Task) -> int:
        """How many times ``task`` may be sent again after losing its worker: its client's
        max_retries (a HELLO field, checked by wire/validate.py), else the broker's."""
        client = self.setups.get(task.setup)
        limit = client.info.get("max_retries") if client is not None else None
        return limit if isinstance(limit, int) else self.max_retries

    # ------------------------------------------------------------- routing
    def new_setups(self, w: WorkerState, batch: Iterable[Task]) -> list[ClientState]:
        """The clients whose set-up ``w`` must get before ``batch`` (noted as sent)."""
        out = []
        setups, last = w.setups, None
        for t in batch:
            src = t.src
            if src is last:  # (tasks taken in together share one: look once)
                continue
            last, sid = src, src.setup
            if sid and sid not in setups:
                c = self.setups.get(sid)
                if c is not None:
                    out.append(c)
                setups.add(sid)
        return out

    def route_output(
        self, items: Iterable[tuple[tuple[Any, ...], Any]]
    ) -> dict[bytes | None, list[tuple[tuple[Any, ...], Any]]]:
        """OUTPUT / LOG entries (broker id of the task, ...) by the client they are for (None: none)."""
        routes: dict[bytes | None, list[tuple[tuple[Any, ...], Any]]] = {}
        default: bytes | None = LOCAL if LOCAL in self.clients else None
        if default is None and len(self.clients) == 1:
            default = next(iter(self.clients))
        for ent, frame in items:
            task = self.tasks.get(ent[0]) if ent[0] else None
            origin = task.origin if task is not None else default
            routes.setdefault(origin, []).append((ent, frame))
        return routes

    # ---------------------------------------------------------------- status
    def measure_rate(self, now: float) -> None:
        """On a tick (monotonic ``now``): the completion rate over the last second or more."""
        if now - self._rate_t >= 1.0:
            self._rate = (self.completed - self._rate_n) / (now - self._rate_t)
            self._rate_t, self._rate_n = now, self.completed

    def rate(self, uptime: float) -> float:
        """Completions per second (since the start when no full second has passed yet)."""
        if uptime < 1.0 and self.completed:
            return self.completed / max(uptime, 1e-3)
        return self._rate

    def known(self, key: bytes) -> bool:
        """A worker, client or observer of this broker."""
        return key in self.workers or key in self.clients or key in self.observers

    def snapshot(self) -> dict[str, Any]:
        """The books' part of the broker's status (status.PoolStatus names the fields)."""
        now = time.time()
        return {
            "queued": len(self.queue),
            "assigned": sum(len(w.assigned) for w in self.workers.values()),
            "tasks": len(self.tasks),
            "completed": self.completed,
            "clients": len(self.clients),
            "setups": len(self.setups),  # clients' set-ups held (each client's, until it leaves)
            "shared": sum(len(c.shares) for c in self.clients.values()),  # values shared, held
            "dropped": dict(self.dropped),
            "stopped": dict(self.stopped),
            "faults": dict(self.faults),
            "workers": [
                {
                    "id": w.key.hex(),
                    "name": w.name,
                    "host": w.info.get("host"),
                    "pid": w.info.get("pid"),
                    "busy": len(w.assigned),
                    "state": "busy" if w.assigned else "idle",
                    "done": w.done,
                    "credit": w.credit,
                    "last_seen": round(now - w.last_seen, 3),
                    "joined": round(now - w.joined, 3),
                    "python": w.info.get("python"),
                }
                for w in self.workers.values()
            ],
        }


def submit_local(
    ledger: Ledger, outbox: collections.deque[tuple[int, list[Any]]], client: ClientState
) -> list[int]:
    """Queue in ``ledger`` what the in-process client (key LOCAL) queued: (its id, frames)
    pairs, taken from ``outbox`` until it is empty (its threads may append meanwhile).
    Ledger.submit for tasks that have no parent, less the SUBMIT entries: one loop, no tuple
    per task.  Returns the ids refused (all of them when the client is broken or leaving)."""
    if client.broken or client.closing:
        refused = []
        while outbox:
            refused.append(outbox.popleft()[0])
        return refused
    tasks, queue, ids = ledger.tasks, ledger.queue, ledger.by_owner.get(LOCAL)
    src, setup, now = ledger._src, client.setup, time.time()
    grain = CLOCK_GRAIN if len(queue) < COMPACT_QUEUED else QUEUED_GRAIN
    if now - src.submitted >= grain or src.origin != LOCAL or src.setup != setup:
        src = ledger._src = Source(0, LOCAL, setup, now)
    first = btid = ledger._next_btid
    pop = outbox.popleft
    while outbox:
        tid, body = pop()
        # Task(btid, LOCAL, tid, 0, None, 0, body, 0.0, src), inline: a class call with
        # __init__ costs some 40 % more than making the object and setting its slots here.
        task = tasks[btid] = _new(Task)
        task.btid = btid
        task.owner = LOCAL
        task.tid = tid
        task.src = src
        task.worker = task.lost = None
        if len(body) == 2:
            task.first, task.rest = body
        else:
            task.first, task.rest = body, MANY
        if ids is not None:
            ids[tid] = btid
        btid += 1
    queue.extend(range(first, btid))  # (queued in one call, not one append per task)
    client.held += btid - first
    ledger._next_btid = btid
    return []


def _compact(body: list[Any], fns: dict[bytes, bytes]) -> list[Any]:
    """A queued task's frames (a list of its own, changed in place) as they are best kept:
    small frames as bytes (a zmq.Frame costs some 200 bytes more than its content), the
    function's frame once for all the tasks that send the same bytes (a map's tasks do)."""
    for i, f in enumerate(body):
        if f.__class__ is not bytes:
            if len(f) >= COMPACT_BELOW:
                continue
            body[i] = bytes(f)
        if i == 0:  # the function
            if len(fns) >= 1024:
                fns.clear()
            body[0] = fns.setdefault(body[0], body[0])
    return body


def _ended_by_task(held: int, rc: int) -> str:
    """For a task lost with a worker whose process ended, not for a reason of its own."""
    which = "this task" if held == 1 else f"this task or one of the {held - 1} other(s) it held"
    if rc < 0 or rc == EXIT_UNKNOWN:
        return f" while running {which}"
    return (
        f" while running {which}: a task ended the process (os._exit({rc}), or exit() in native "
        "code); a worker's own exits are announced, and this one was not"
    )
