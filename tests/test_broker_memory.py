"""The broker gives back the memory a burst of input left free (broker/memory.py).

Run in a fresh process each: the trim is process-wide, and what the allocator holds depends
on everything the process did before."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")

_SCRIPT = """
import json, sys, threading, time
import psutil
from scoopexec.broker import memory

def rss():
    return psutil.Process().memory_info().rss

def burst():
    # What a backlog of received messages leaves: many malloc'd buffers (1 KiB: past
    # pymalloc's small objects) made in a thread's arena, a few kept, the rest freed.
    made = [bytes(1024) + bytes([i % 251]) for i in range(200_000)]
    kept.extend(made[::500])

kept = []
t = threading.Thread(target=burst)
t.start()
t.join()
trim, off = memory.IntakeTrim(), memory.IntakeTrim(enabled=False)
t0 = time.monotonic()
rules = [
    trim.tick(t0, memory.AFTER_TASKS - 1),  # input moved
    trim.tick(t0 + 9, memory.AFTER_TASKS - 1),  # paused, but too few tasks taken in
    trim.tick(t0 + 10, memory.AFTER_TASKS),  # input moved
    trim.tick(t0 + 10 + memory.QUIET / 2, memory.AFTER_TASKS),  # not paused long enough
    off.tick(t0, memory.AFTER_TASKS),
    off.tick(t0 + 10, memory.AFTER_TASKS),  # a broker in a client's process: never
]
before = rss()
done = trim.tick(t0 + 10 + memory.QUIET, memory.AFTER_TASKS)
after = rss()
now = time.monotonic()
trim.tick(now, 10 * memory.AFTER_TASKS)
again = trim.tick(now + memory.QUIET, 10 * memory.AFTER_TASKS)  # too soon after the last
print(json.dumps({"before": before, "after": after, "rules": rules, "done": done, "again": again,
                  "trims": trim.trims, "off": off.trims, "kept": len(kept)}))
"""


def _run(tmp_path) -> dict:
    script = tmp_path / "trim.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_trim_after_a_burst_gives_the_free_pages_back(tmp_path) -> None:
    from scoopexec.broker import memory

    if memory._malloc_trim() is None:
        pytest.skip("this C library has no malloc_trim")
    got = _run(tmp_path)
    assert got["rules"] == [False] * 6 and got["done"] and not got["again"], got
    assert got["trims"] == 1 and got["off"] == 0, got
    # ~200 MB were freed; the allocator kept most of it until the trim.
    assert got["before"] - got["after"] > 50 * 2**20, got


def test_a_broker_of_its_own_trims_on_its_tick_once_a_burst_of_tasks_pauses(monkeypatch) -> None:
    """The wiring: Broker._tick hands the tasks taken in to its IntakeTrim, which a broker
    with no in-process client has enabled (thresholds lowered for the test)."""
    import time

    import zmq

    from scoopexec.broker import memory
    from scoopexec.broker.loop import Broker
    from scoopexec.wire import protocol as P

    if memory._malloc_trim() is None:
        pytest.skip("this C library has no malloc_trim")
    monkeypatch.setattr(memory, "AFTER_TASKS", 5)
    monkeypatch.setattr(memory, "QUIET", 0.2)
    monkeypatch.setattr(memory, "EVERY", 0.0)
    ctx = zmq.Context()
    b = Broker("inproc://trim-wiring", context=ctx)
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    try:
        assert b.trim.enabled
        client.connect(b.endpoint)
        client.send_multipart([P.header(P.HELLO), P.dump_json({"role": P.CLIENT, "pid": 1, "host": "h"})])
        client.send_multipart([P.pack(P.SUBMIT, [(t, 0, 2) for t in range(8)]), *[b"fn", b"args"] * 8])
        end = time.monotonic() + 10
        while not b.trim.trims and time.monotonic() < end:
            b.step(0.02)
        assert len(b.ledger.tasks) == 8, "the burst was taken in"
        assert b.trim.trims == 1 and b.trim.at == 8
    finally:
        client.close(linger=0)
        b.close()
        ctx.term()


def test_a_broker_in_a_clients_process_does_not_trim() -> None:
    """Its heap is the user's: a trim would walk all of it (tens of ms per GB)."""
    from scoopexec import ScoopExecutor

    with ScoopExecutor(1) as ex:
        assert ex.submit(abs, -1).result(timeout=60) == 1
        assert ex._session.broker.trim.enabled is False
