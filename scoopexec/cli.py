"""Command-line entry points other than the worker's."""

from __future__ import annotations

import argparse
import signal
import sys


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(broker_main(sys.argv[1:]))
