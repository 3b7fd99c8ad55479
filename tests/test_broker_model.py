"""A hypothesis state machine over the real Broker: fake clients and workers on real sockets.

The broker is stepped by hand (Broker.step), so every interleaving hypothesis picks is
reproducible.  Invariants: each task is in exactly one place (queued, or assigned to one live
worker), attempts never exceed max_retries, no result reaches its owner twice, and nothing a live
client submitted is lost: it is either still in the broker or was delivered exactly once.
"""

from __future__ import annotations

import collections
import itertools
import os

import pytest
import zmq
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from scoopexec.broker.loop import Broker
from scoopexec.wire import protocol as P

MAX_RETRIES = 2
_ids = itertools.count()


class FakePeer:
    def __init__(self, ctx: zmq.Context, endpoint: str, role: str) -> None:
        self.key = (b"W" if role == P.WORKER else b"C") + os.urandom(7)
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, self.key)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sock.send_multipart([P.header(P.HELLO), P.dump_json({"role": role, "pid": 1, "host": "h"})])
        self.held: dict[int, int] = {}  # worker: broker id -> attempt
        self.done: list[int] = []  # worker: ids it answered
        self.submitted: set[int] = set()  # client: its task ids
        self.received: collections.Counter[int] = collections.Counter()  # client: results per id
        self.next_tid = 1

    def drain(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            mtype, count, arg = P.unpack_header(frames[0])
            if mtype == P.TASKS:
                for btid, _setup, _n, attempt in P.entries(mtype, frames[0]):
                    self.held[btid] = attempt
            elif mtype == P.RESULTS:
                for tid, _status, _n in P.entries(mtype, frames[0]):
                    self.received[tid] += 1
            elif mtype == P.CANCEL:
                for (btid,) in P.entries(mtype, frames[0]):
                    self.held.pop(btid, None)


class BrokerModel(RuleBasedStateMachine):
    clients = Bundle("clients")
    workers = Bundle("workers")

    def __init__(self) -> None:
        super().__init__()
        self.ctx = zmq.Context()
        self.endpoint = f"inproc://broker-model-{next(_ids)}"
        self.broker = Broker(self.endpoint, context=self.ctx, max_retries=MAX_RETRIES)
        self.peers: list[FakePeer] = []
        self.gone_clients: set[bytes] = set()

    def teardown(self) -> None:
        for p in self.peers:
            p.sock.close(linger=0)
        self.broker.close()
        self.ctx.term()

    def pump(self) -> None:
        for _ in range(3):
            self.broker.step(0)
            for p in self.peers:
                p.drain()

    # ---------------------------------------------------------------- rules
    @rule(target=clients)
    def add_client(self) -> FakePeer:
        c = FakePeer(self.ctx, self.endpoint, P.CLIENT)
        self.peers.append(c)
        self.pump()
        return c

    @rule(target=workers, credit=st.integers(1, 4))
    def add_worker(self, credit: int) -> FakePeer:
        w = FakePeer(self.ctx, self.endpoint, P.WORKER)
        self.peers.append(w)
        self.pump()
        w.sock.send_multipart([P.header(P.CREDIT, 0, credit)])
        self.pump()
        return w

    @rule(c=clients, n=st.integers(1, 6))
    def submit(self, c: FakePeer, n: int) -> None:
        if c.key in self.gone_clients:
            return
        ents, frames = [], []
        for _ in range(n):
            tid = c.next_tid
            c.next_tid += 1
            c.submitted.add(tid)
            ents.append((tid, 0, 2))
            frames += [b"fn", b"args"]
        c.sock.send_multipart([P.pack(P.SUBMIT, ents), *frames])
        self.pump()

    @rule(w=workers, credit=st.integers(1, 4))
    def grant(self, w: FakePeer, credit: int) -> None:
        w.sock.send_multipart([P.header(P.CREDIT, 0, credit)])
        self.pump()

    @rule(w=workers, data=st.data())
    def complete(self, w: FakePeer, data: st.DataObject) -> None:
        if not w.held:
            return
        picked = data.draw(st.lists(st.sampled_from(sorted(w.held)), min_size=1, unique=True))
        ents = [(b, P.OK, 1, 0.0, 0.0) for b in picked]
        for b in picked:
            del w.held[b]
            w.done.append(b)
        credit = data.draw(st.integers(0, 3))
        w.sock.send_multipart([P.pack(P.RESULT, ents, arg=credit), *[b"r"] * len(ents)])
        self.pump()

    @rule(w=workers)
    def duplicate_result(self, w: FakePeer) -> None:
        if w.done:
            b = w.done[-1]
            w.sock.send_multipart([P.pack(P.RESULT, [(b, P.OK, 1, 0.0, 0.0)]), b"again"])
            self.pump()

    @rule(w=workers, btid=st.integers(1, 200))
    def foreign_result(self, w: FakePeer, btid: int) -> None:
        if btid not in w.held:
            w.sock.send_multipart([P.pack(P.RESULT, [(btid, P.OK, 1, 0.0, 0.0)]), b"forged"])
            self.pump()

    @rule(w=workers)
    def give_back(self, w: FakePeer) -> None:
        back = sorted(w.held)
        w.held.clear()
        w.sock.send_multipart([P.pack(P.RETURN, [(b,) for b in back])])
        self.pump()

    @rule(w=consumes(workers))
    def worker_dies(self, w: FakePeer) -> None:
        w.sock.close(linger=0)
        self.peers.remove(w)
        self.broker.supervisor.peer_gone(w.key, "killed by the test")
        self.pump()

    @rule(c=consumes(clients))
    def client_leaves(self, c: FakePeer) -> None:
        c.sock.send_multipart([P.header(P.BYE)])
        self.pump()
        self.gone_clients.add(c.key)
        c.sock.close(linger=0)
        self.peers.remove(c)

    # ----------------------------------------------------------- invariants
    @invariant()
    def each_task_in_exactly_one_place(self) -> None:
        b = self.broker
        queued = set(b.ledger.queue)
        for btid, task in b.ledger.tasks.items():
            if task.worker is None:
                assert btid in queued, f"task {btid} is neither queued nor assigned"
            else:
                w = b.ledger.workers.get(task.worker)
                assert w is not None, f"task {btid} assigned to a worker that is gone"
                assert btid in w.assigned
            assert task.attempts <= MAX_RETRIES
        for key, w in b.ledger.workers.items():
            for btid in w.assigned:
                assert btid in b.ledger.tasks and b.ledger.tasks[btid].worker == key

    @invariant()
    def nothing_delivered_twice_nothing_lost(self) -> None:
        for c in self.peers:
            if not c.submitted:
                continue
            assert all(n == 1 for n in c.received.values()), c.received
            pending = {t.tid for t in self.broker.ledger.tasks.values() if t.owner == c.key}
            assert c.submitted == set(c.received) | pending
            assert not (set(c.received) & pending)


TestBrokerModel = BrokerModel.TestCase
TestBrokerModel.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def no_process_left_behind():
    yield  # no processes here
