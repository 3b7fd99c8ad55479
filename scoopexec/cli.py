"""Command-line entry points other than the worker's, and options shared by command lines."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any


def add_observe_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--trace FILE``, ``--progress``, ``-v`` and ``-q``: what a command line running a pool offers."""
    from .logs import add_verbosity_options

    parser.add_argument(
        "--trace", metavar="FILE",
        help="record every task and write the timeline to FILE when the pool stops "
        "(open it in ui.perfetto.dev, or: python -m scoopexec report FILE)",
    )  # fmt: skip
    parser.add_argument("--progress", action="store_true", help="draw a progress bar for every map")
    add_verbosity_options(parser)


def apply_observe_options(args: argparse.Namespace) -> dict[str, Any]:
    """Set up logging from -v/-q; return the ScoopExecutor arguments for --trace and --progress.

    ``ScoopExecutor(max_workers=n, **apply_observe_options(args))``; a bad
    --trace path raises ValueError (the parser's ``error()`` is the place
    to report it).
    """
    from .logs import configure_logging
    from .trace import check_trace_path

    configure_logging(getattr(args, "verbose", 0) - getattr(args, "quiet", 0))
    trace = getattr(args, "trace", None)
    if trace:
        check_trace_path(trace)
    return {"trace": trace or None, "progress": bool(getattr(args, "progress", False))}


def broker_main(argv: list[str]) -> int:
    """``python -m scoopexec broker``: a long-lived pool that clients and workers join."""
    from .broker import Broker
    from .logs import add_verbosity_options, configure_logging
    from .security import Credentials, KeyPair, check_endpoint, write_key_file

    ap = argparse.ArgumentParser(prog="python -m scoopexec broker")
    ap.add_argument("--bind", default="tcp://127.0.0.1:5555", help="endpoint to listen on")
    ap.add_argument(
        "--key-file",
        metavar="FILE",
        help="secure the endpoint with CURVE and write the key that clients and workers need to FILE "
        "(mode 0600; new keys at every start); required unless the endpoint is loopback or ipc",
    )
    ap.add_argument("--heartbeat", type=float, default=1.0)
    ap.add_argument("--heartbeat-timeout", type=float, default=5.0)
    ap.add_argument("--max-retries", type=int, default=3)
    ap.add_argument(
        "--trace", metavar="FILE",
        help="record every task and write the timeline to FILE when the broker stops "
        "(see python -m scoopexec report)",
    )  # fmt: skip
    add_verbosity_options(ap)
    args = ap.parse_args(argv)
    configure_logging(args.verbose - args.quiet)
    secure = args.key_file is not None
    try:
        check_endpoint(args.bind, secure=secure, what="bind endpoint")
    except ValueError as exc:
        ap.error(f"{exc}; for this command: --key-file FILE")
    recorder = None
    if args.trace:
        from .trace import TraceRecorder

        try:
            recorder = TraceRecorder(args.trace)
        except ValueError as exc:
            ap.error(str(exc))
    if secure and args.bind.startswith("ipc://"):
        ap.error("--key-file secures TCP endpoints; an ipc:// endpoint is protected by file permissions")
    server = KeyPair.new() if secure else None
    b = Broker(
        args.bind,
        heartbeat=args.heartbeat,
        heartbeat_timeout=args.heartbeat_timeout,
        max_retries=args.max_retries,
        curve=server,
    )
    if server is not None:
        peer = KeyPair.new()
        b.allow(peer.public)
        write_key_file(args.key_file, Credentials.for_pair(server.public, peer))
    b.trace = recorder
    if recorder is not None:
        recorder.meta.update(argv=["python -m scoopexec broker", *argv])
    security = f", CURVE key in {args.key_file}" if secure else ""
    print(f"scoopexec broker {b.pool_id} listening on {b.endpoint}{security}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: b.stop())
    try:
        b.run()
    except KeyboardInterrupt:
        pass
    if recorder is not None:
        try:
            path = recorder.write()
        except OSError as exc:
            where = recorder.path
            print(f"scoopexec broker: could not write the timeline to {where}: {exc}", file=sys.stderr)
            return 1
        print(f"timeline of {len(recorder.records)} task(s) written to {path}", flush=True)
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
