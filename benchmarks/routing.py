"""How many tasks per second the broker itself can route.

Definition used in the tables: a standalone broker process (``python -m
scoopexec broker``) between one client and one worker that both speak the
wire protocol directly (protocol.py) and do nothing else: the client keeps
``window`` tasks in flight, submitting them in SUBMIT batches of ``batch``
pre-pickled no-op tasks (a function frame and an arguments frame each); the
worker answers every TASKS message at once with one RESULT message holding a
pre-pickled ``None`` per task, and grants the credit back with it.  No Python
pickling, unpickling or task execution is in the loop, so what is measured is
the broker's work per task: SUBMIT in, TASKS out, RESULT in, RESULTS (and
STARTED) out.

Two figures come out:

* ``rate``: tasks completed per second of wall-clock time, first SUBMIT to
  last RESULTS.  On a 2-core machine the client and the worker share the
  cores with the broker, so this understates what a broker with a core to
  itself routes.
* ``capacity``: tasks per CPU-second of the broker process (its user+system
  CPU time over the run, from psutil): the rate the broker would sustain if
  its peers were infinitely fast.

Run by ``benchmarks/run.py``; ``python -m benchmarks.routing worker ENDPOINT``
is the protocol-level worker it starts.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scoopexec.wire import protocol as P  # noqa: E402


def _dealer(ctx: zmq.Context[Any], ident: bytes, endpoint: str) -> zmq.Socket[Any]:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.ROUTING_ID, ident)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 1_000_000)
    s.setsockopt(zmq.RCVHWM, 1_000_000)
    s.connect(endpoint)
    return s  # type: ignore[no-any-return]


def fake_worker(endpoint: str, credit: int) -> None:
    """A worker that answers every task at once with a pre-pickled None."""
    ctx: zmq.Context[Any] = zmq.Context()
    s = _dealer(ctx, b"W" + os.urandom(11), endpoint)
    hello = {"role": P.WORKER, "pid": os.getpid(), "host": "bench", "tag": "", "name": "fake", "held": []}
    s.send_multipart([P.header(P.HELLO), P.dump_json(hello)])
    none = pickle.dumps(None, 5)
    poller = zmq.Poller()
    poller.register(s, zmq.POLLIN)
    while True:
        if not poller.poll(30_000):
            break  # the broker went away without STOP
        frames = s.recv_multipart(copy=False)
        head = frames[0].bytes
        mtype, _count, arg = P.unpack_header(head)
        if mtype == P.TASKS:
            ents = [(btid, P.OK, 1, 0.0, 0.0) for btid, _setup, _n, _att in P.entries(mtype, head)]
            s.send_multipart([P.pack(P.RESULT, ents, arg=len(ents)), *([none] * len(ents))])
        elif mtype == P.WELCOME:
            s.send(P.header(P.CREDIT, 0, credit))
        elif mtype == P.SETUP:
            s.send(P.header(P.SETUP_DONE, 1, arg))
        elif mtype == P.STOP:
            break
    s.close(linger=0)
    ctx.term()


def measure(
    tasks: int = 200_000, batch: int = 64, window: int = 4096, credit: int = 512, timeout: float = 120.0
) -> dict[str, float]:
    """Route ``tasks`` no-op tasks through a standalone broker; see the module docstring."""
    import psutil

    from benchmarks.tasks import noop

    tmp = tempfile.mkdtemp(prefix="scoopexec-route-")
    endpoint = f"ipc://{tmp}/broker"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
    broker = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "broker", "--bind", endpoint],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    worker: subprocess.Popen[bytes] | None = None
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        assert broker.stdout is not None
        line = broker.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"the broker did not start: {line!r}")
        worker = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.routing", "worker", endpoint, str(credit)], env=env, cwd=ROOT
        )
        s = _dealer(ctx, b"C" + os.urandom(11), endpoint)
        setup = [P.dump_json({"sys_path": [], "cwd": "", "main": {}}), b""]
        s.send_multipart([P.header(P.HELLO), P.dump_json({"role": P.CLIENT, "pid": os.getpid()}), *setup])
        fn = pickle.dumps(noop, 5)
        args = pickle.dumps(((0,), None), 5)
        poller = zmq.Poller()
        poller.register(s, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        welcomed = False
        while not welcomed:
            if not poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                raise RuntimeError("no WELCOME from the broker")
            welcomed = P.unpack_header(s.recv_multipart()[0])[0] == P.WELCOME
        bproc = psutil.Process(broker.pid)
        cpu0 = sum(bproc.cpu_times()[:2])
        t0 = time.perf_counter()
        sent = done = 0
        next_tid = 1
        while done < tasks:
            while sent < tasks and sent - done < window:
                k = min(batch, tasks - sent)
                head = P.pack(P.SUBMIT, [(next_tid + i, 0, 2) for i in range(k)])
                s.send_multipart([head, *([fn, args] * k)])
                next_tid += k
                sent += k
            if not poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                raise RuntimeError(f"routing stalled after {done} of {tasks} tasks")
            while True:
                try:
                    frames = s.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                mtype, count, _ = P.unpack_header(frames[0].bytes)
                if mtype == P.RESULTS:
                    done += count
        elapsed = time.perf_counter() - t0
        cpu = sum(bproc.cpu_times()[:2]) - cpu0
        s.close(linger=0)
        return {
            "rate": tasks / elapsed,
            "capacity": tasks / cpu if cpu > 0 else float("nan"),
            "broker_cpu_us_per_task": 1e6 * cpu / tasks,
            "tasks": tasks,
            "batch": batch,
        }
    finally:
        broker.terminate()  # SIGTERM: the broker stops its loop and sends STOP to the worker
        for p in (broker, worker):
            if p is None:
                continue
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "worker":
        fake_worker(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 512)
    else:
        print(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000))
