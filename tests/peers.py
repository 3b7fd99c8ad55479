"""Protocol-level peers for tests that talk to a broker directly (fuzzing, limits), and a
standalone broker with a hand-started worker group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import zmq

from scoopexec.wire import protocol as P
from scoopexec.wire.security import resolve_credentials


def keyed(sock: zmq.Socket, endpoint: str) -> None:
    """Make ``sock`` a key holder of the pool at ``endpoint`` (every TCP endpoint is CURVE):
    the key the pool wrote for this user's own peers.  A peer without it never gets past the
    handshake, so what it sends would never reach the code under test."""
    keys = resolve_credentials(endpoint, None, "test peer")
    assert keys is not None, f"no key for {endpoint}"
    keys.apply(sock)


def broker_status(endpoint: str) -> dict[str, Any]:
    """The broker's STATUS reply (its JSON), asked for by a key-holding DEALER of its own."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    try:
        s.setsockopt(zmq.LINGER, 0)
        keyed(s, endpoint)
        s.connect(endpoint)
        s.send_multipart([P.header(P.STATUS)])
        assert s.poll(30_000), "the broker does not answer STATUS"
        info = P.decode(s.recv_multipart()).info
        assert isinstance(info, dict)
        return info
    finally:
        s.close(linger=0)
        ctx.term()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def standalone_broker_and_group(*worker_options: str) -> Iterator[str]:
    """A standalone broker process and a worker group of 1 (``-n 1 *worker_options``) on it;
    yields the broker's endpoint, stops both after."""
    from tests.conftest import ROOT

    env = dict(os.environ, PYTHONPATH=ROOT)
    addr = f"tcp://127.0.0.1:{free_port()}"
    broker = subprocess.Popen([sys.executable, "-m", "scoopexec", "broker", "--bind", addr],
                              stdout=subprocess.PIPE, env=env)  # fmt: skip
    group = None
    try:
        assert broker.stdout is not None and "listening on" in broker.stdout.readline().decode()
        group = subprocess.Popen([sys.executable, "-m", "scoopexec", "worker", "--connect", addr, "-n", "1",
                                  *worker_options], env=env)  # fmt: skip
        yield addr
    finally:
        if group is not None:
            group.send_signal(signal.SIGTERM)
            group.wait(20)
        broker.terminate()
        broker.wait(10)
        if broker.stdout is not None:
            broker.stdout.close()
