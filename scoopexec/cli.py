"""Command-line entry points other than the worker's."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any


def broker_main(argv: list[str]) -> int:
    from .broker import Broker
    from .executor import _check_local_endpoint

    ap = argparse.ArgumentParser(prog="python -m scoopexec broker")
    ap.add_argument("--bind", default="tcp://127.0.0.1:5555", help="endpoint to listen on")
    ap.add_argument("--heartbeat", type=float, default=1.0)
    ap.add_argument("--heartbeat-timeout", type=float, default=5.0)
    ap.add_argument("--max-retries", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        _check_local_endpoint(args.bind)
    except ValueError as exc:
        ap.error(str(exc))
    b = Broker(
        args.bind,
        heartbeat=args.heartbeat,
        heartbeat_timeout=args.heartbeat_timeout,
        max_retries=args.max_retries,
    )
    print(f"scoopexec broker {b.pool_id} listening on {b.endpoint}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: b.stop())
    try:
        b.run()
    except KeyboardInterrupt:
        pass
    return 0


def query_status(endpoint: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a broker for its status (what ``python -m scoopexec status ADDR`` prints)."""
    import os

    import zmq

    from . import protocol as P

    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, b"O" + os.urandom(11))
    try:
        s.connect(endpoint)
        s.send_multipart([P.header(P.HELLO), P.dump_json({"role": P.OBSERVER})])
        s.send_multipart([P.header(P.STATUS)])
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not s.poll(int(left * 1000) + 1):
                raise TimeoutError(f"no scoopexec broker answered at {endpoint} within {timeout:g} s")
            frames = s.recv_multipart()
            mtype, _, _ = P.unpack_header(frames[0])
            if mtype == P.STATUS_REPLY and len(frames) > 1:
                result: dict[str, Any] = P.load_json(frames[1])
                return result
            if mtype == P.ERROR:
                raise RuntimeError(frames[1].decode("utf-8", "replace"))
    finally:
        s.close(linger=0)
        ctx.term()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(broker_main(sys.argv[1:]))
