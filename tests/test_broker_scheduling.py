"""Who gets which task, and when a worker is asked for tasks back: a real Broker, stepped by hand,
with a fake client and fake workers on real ZeroMQ sockets.

- RECALL: asked once, not again until something moves there.  The recalled worker here never
  answers, as a worker whose held tasks have all started (parked parents) or one that is stuck
  cannot: before issue 18 the broker sent it a RECALL every 20 ms for as long as another worker
  stayed idle (2,649 of them in one stuck nested-joblib run).
- A worker has one place in the line of ready workers: one that gave its credit back (RETURN)
  and asked again used to get a second place, ahead of workers that had waited longer, so a
  child task went to a worker running a long task instead of its parent's free one
  (tests/test_nested.py failed 1 run in 8 that way).
"""

from __future__ import annotations

import os
import time

import pytest
import zmq

from scoopexec.broker.loop import Broker
from scoopexec.wire import protocol as P


class Peer:
    def __init__(self, ctx: zmq.Context, endpoint: str, role: str) -> None:
        self.key = (b"W" if role == P.WORKER else b"C") + os.urandom(7)
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, self.key)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sock.send_multipart([P.header(P.HELLO), P.dump_json({"role": role, "pid": 1, "host": "h"})])
        self.held: list[int] = []
        self.recalls = 0

    def drain(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            mtype = P.unpack_header(frames[0])[0]
            if mtype == P.TASKS:
                self.held += [e[0] for e in P.entries(mtype, frames[0])]
            elif mtype == P.RECALL:
                self.recalls += 1


@pytest.fixture
def pool():
    ctx = zmq.Context()
    broker = Broker("inproc://recall-test", context=ctx)
    peers: list[Peer] = []

    def peer(role: str) -> Peer:
        p = Peer(ctx, broker.endpoint, role)
        peers.append(p)
        return p

    def run(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            broker.step(0.005)
            for p in peers:
                p.drain()

    yield broker, peer, run
    for p in peers:
        p.sock.close(linger=0)
    broker.close()
    ctx.term()


def _three_on_one(peer, run) -> tuple[Peer, Peer]:
    """A client, and a worker holding its 3 tasks (credit for 3): (client, that worker)."""
    client, busy = peer(P.CLIENT), peer(P.WORKER)
    run(0.05)
    busy.sock.send_multipart([P.header(P.CREDIT, 0, 3)])
    client.sock.send_multipart([P.pack(P.SUBMIT, [(t, 0, 2) for t in (1, 2, 3)]), *[b"fn", b"args"] * 3])
    run(0.1)
    assert len(busy.held) == 3
    return client, busy


def test_a_worker_that_does_not_answer_is_recalled_once_until_something_moves(pool):
    _, peer, run = pool
    client, busy = _three_on_one(peer, run)

    idle = peer(P.WORKER)
    run(0.05)
    idle.sock.send_multipart([P.header(P.CREDIT, 0, 1)])  # idle, and nothing is queued
    run(0.5)
    assert busy.recalls == 1, f"{busy.recalls} RECALLs to a worker that had nothing new"

    # It sends a result: something moved there (its next task may now be a long one), so it
    # may be asked once more, and only once.
    first = busy.held.pop(0)
    busy.sock.send_multipart([P.pack(P.RESULT, [(first, P.OK, 1, 0.0, 0.0)], arg=0), b"r"])
    run(0.5)
    assert busy.recalls == 2

    # It is sent a new task (the idle worker takes the other one, then is idle again): asked
    # again, once.
    client.sock.send_multipart([P.pack(P.SUBMIT, [(t, 0, 2) for t in (4, 5)]), *[b"fn", b"args"] * 2])
    busy.sock.send_multipart([P.header(P.CREDIT, 0, 1)])
    run(0.1)
    assert len(busy.held) == 3 and len(idle.held) == 1
    assert busy.recalls == 2  # nobody idle meanwhile
    idle.sock.send_multipart([P.pack(P.RESULT, [(idle.held.pop(), P.OK, 1, 0.0, 0.0)], arg=1), b"r"])
    run(0.5)
    assert busy.recalls == 3


def test_a_worker_that_gave_its_credit_back_does_not_hold_two_places_in_line(pool):
    _, peer, run = pool
    client, w2 = peer(P.CLIENT), peer(P.WORKER)
    run(0.05)
    w2.sock.send_multipart([P.header(P.CREDIT, 0, 1)])
    run(0.05)
    w2.sock.send_multipart([P.pack(P.RETURN, [])])  # starting a long task: credit back to 0
    run(0.05)
    w2.sock.send_multipart([P.header(P.CREDIT, 0, 1)])  # ...and asking again
    run(0.05)
    w1 = peer(P.WORKER)
    run(0.05)
    w1.sock.send_multipart([P.header(P.CREDIT, 0, 1)])  # waits behind w2, once
    run(0.05)
    client.sock.send_multipart([P.pack(P.SUBMIT, [(1, 0, 2)]), b"fn", b"args"])
    run(0.05)
    assert len(w2.held) == 1  # first in line
    w2.sock.send_multipart([P.header(P.CREDIT, 0, 1)])  # it starts that task and asks for the next
    run(0.05)
    client.sock.send_multipart([P.pack(P.SUBMIT, [(2, 0, 2)]), b"fn", b"args"])
    run(0.05)
    assert len(w1.held) == 1, "the second task went to the worker that had just had one"


def test_the_next_single_task_goes_to_the_worker_that_just_ran_one(pool):
    # A worker that still has credit after taking a task keeps the front of the line: a round
    # trip is faster on a warm worker than on one woken from a longer sleep.
    _, peer, run = pool
    client, w1, w2 = peer(P.CLIENT), peer(P.WORKER), peer(P.WORKER)
    run(0.05)
    w1.sock.send_multipart([P.header(P.CREDIT, 0, 8)])
    run(0.05)
    w2.sock.send_multipart([P.header(P.CREDIT, 0, 8)])
    run(0.05)
    for tid in range(1, 6):
        client.sock.send_multipart([P.pack(P.SUBMIT, [(tid, 0, 2)]), b"fn", b"args"])
        run(0.02)
    assert (len(w1.held), len(w2.held)) == (5, 0)


def test_a_recall_put_off_by_the_pace_goes_out_without_waiting_for_input(pool):
    # A burst of submissions on a worker with credit left, an idle worker's credit within the
    # same pace, then quiet: the loop must look again when the pace allows, not sleep until the
    # next input or tick (a whole 50 ms task, in the scaling benchmark's sleeps).
    broker, peer, run = pool
    _, busy = _three_on_one(peer, run)
    assert busy.recalls == 0
    idle = peer(P.WORKER)
    run(0.05)
    broker.ledger.next_recall = time.monotonic() + 0.004  # the last look was just now
    idle.sock.send_multipart([P.header(P.CREDIT, 0, 1)])
    deadline = time.monotonic() + 5
    while not broker.ledger.recall_wake:  # its credit taken in, the recall put off
        broker.step(0.001)
        assert time.monotonic() < deadline
    busy.drain()
    assert busy.recalls == 0
    broker._next_tick = time.monotonic() + 60  # no tick to rescue it
    with broker.lock:
        ms = broker._before_poll(None)
    assert ms <= 1000 * 0.005 + 1  # the loop's poll: until the recall is due, no longer
    broker.step()  # with its own timeout
    busy.drain()
    assert busy.recalls == 1
