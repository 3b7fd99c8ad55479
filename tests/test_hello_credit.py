"""A worker's first task comes with its WELCOME: its HELLO asks for it (``"credit": 1``).

Before, a new worker said HELLO, waited for WELCOME, then sent CREDIT and waited again for
its first task: one more round trip through the broker's thread on the way to a pool's
first batch (cpu_parity.py's first batch against ProcessPoolExecutor).  Both sides are
tested against the real other side's messages: the broker with a fake worker, a real
worker process with a fake broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import zmq

from scoopexec.broker.loop import Broker
from scoopexec.wire import protocol as P
from tests.conftest import ROOT


def _recv(sock: zmq.Socket, timeout: float = 10.0) -> P.Message | None:
    if not sock.poll(int(timeout * 1000)):
        return None
    return P.decode(sock.recv_multipart())


@pytest.fixture
def broker():
    ctx = zmq.Context()
    b = Broker("inproc://hello-credit", context=ctx)
    socks: list[zmq.Socket] = []

    def peer(role: str) -> zmq.Socket:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.ROUTING_ID, (b"W" if role == P.WORKER else b"C") + os.urandom(7))
        s.setsockopt(zmq.LINGER, 0)
        s.connect(b.endpoint)
        socks.append(s)
        return s

    yield b, peer
    for s in socks:
        s.close(linger=0)
    b.close()
    ctx.term()


def _step_until(b: Broker, sock: zmq.Socket, kind: int, seconds: float = 5.0) -> list[P.Message]:
    """Step the broker; what ``sock`` received, up to and including a message of ``kind``."""
    got: list[P.Message] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        b.step(0.005)
        msg = _recv(sock, 0)
        if msg is not None:
            got.append(msg)
            if msg.kind == kind:
                break
    return got


def test_the_broker_hands_a_task_out_with_the_welcome_of_a_hello_that_asks(broker):
    b, peer = broker
    client = peer(P.CLIENT)
    client.send_multipart([P.header(P.HELLO), P.dump_json({"role": P.CLIENT, "pid": 1, "host": "h"})])
    assert [m.kind for m in _step_until(b, client, P.WELCOME)] == [P.WELCOME]
    client.send_multipart([P.pack(P.SUBMIT, [(t, 0, 2) for t in (1, 2, 3)]), *[b"fn", b"args"] * 3])
    for _ in range(5):
        b.step(0.005)
    asking = peer(P.WORKER)
    asking.send_multipart([P.header(P.HELLO), P.dump_json({"role": P.WORKER, "pid": 2, "credit": 2})])
    got = _step_until(b, asking, P.TASKS)
    assert got[0].kind == P.WELCOME and got[0].info["granted"] == 2
    assert [m.kind for m in got[1:]] == [P.SETUP, P.TASKS]  # no CREDIT sent: its HELLO's
    assert got[-1].count == 2
    # A HELLO without it (an older worker) gets its tasks once it sends CREDIT, as before.
    plain = peer(P.WORKER)
    plain.send_multipart([P.header(P.HELLO), P.dump_json({"role": P.WORKER, "pid": 3})])
    got = _step_until(b, plain, P.TASKS, 0.3)
    assert [m.kind for m in got] == [P.WELCOME] and "granted" not in got[0].info
    plain.send_multipart([P.header(P.CREDIT, 0, 1)])
    assert [m.kind for m in _step_until(b, plain, P.TASKS)] == [P.SETUP, P.TASKS]


@pytest.mark.parametrize("credit", [-1, 65, True, 1.5, "1"])
def test_a_hello_asking_for_a_credit_out_of_bounds_is_refused(broker, credit, caplog):
    b, peer = broker
    w = peer(P.WORKER)
    w.send_multipart([P.header(P.HELLO), P.dump_json({"role": P.WORKER, "pid": 2, "credit": credit})])
    assert _step_until(b, w, P.WELCOME, 0.5) == []  # dropped, with the reason logged
    assert not b.ledger.workers
    assert "HELLO field 'credit'" in caplog.text


def test_a_worker_asks_with_its_hello_and_counts_what_the_welcome_granted(tmp_path):
    """A real worker process and a fake broker: its HELLO asks for one task; once WELCOME says
    that credit was taken, it sends no CREDIT (it would be handed a second task, to give back);
    a WELCOME that does not say so (an older broker), or says it with a value that is no
    credit it asked for, gets its CREDIT, as before."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/b"
    router.bind(endpoint)
    procs = []
    try:
        for granted in (1, None, "1", [1], 2, -1):
            env = {**os.environ, "PYTHONPATH": ROOT}
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "scoopexec", "worker", "--connect", endpoint, "--heartbeat", "30",
                     "--heartbeat-timeout", "60"],
                    env=env, stdin=subprocess.DEVNULL,
                )
            )  # fmt: skip
            assert router.poll(30_000), "the worker said nothing"
            ident, *frames = router.recv_multipart()
            hello = P.decode(frames)
            assert hello.kind == P.HELLO and hello.info["credit"] == 1
            welcome = {"pool": "p", "id": ident.hex(), "version": P.VERSION, "heartbeat": 30.0,
                       "heartbeat_timeout": 60.0, "max_message_size": -1, "host": "h"}  # fmt: skip
            asks = granted != 1  # it took no credit of the HELLO (or a value that is none)
            if granted is not None:
                welcome["granted"] = granted
            router.send_multipart([ident, P.header(P.WELCOME), P.dump_json(welcome)])
            kinds = []
            end = time.monotonic() + (10.0 if asks else 1.0)
            while time.monotonic() < end and P.CREDIT not in kinds:
                if router.poll(50):
                    kinds.append(P.decode(router.recv_multipart()[1:]).kind)
            assert (P.CREDIT in kinds) == asks, (granted, kinds)
            procs[-1].kill()
            procs[-1].wait(10)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        router.close(linger=0)
        ctx.term()
