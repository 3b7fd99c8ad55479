"""``python -m scoopexec worker``: join a broker, alone or as a group of N processes.

The command line is deploy/contract.py's; a group (``-n N``) is deploy/local.py's
run_worker_group, which starts N of these.
"""

from __future__ import annotations

import functools
import multiprocessing.process
import os
import signal
import socket
import types

from ..deploy.contract import check_env, local_cpu_count, parser, read_argv
from ..deploy.local import run_worker_group
from ..wire import fnframes
from ..wire.security import read_key_file, read_launch_frame, resolve_credentials
from . import lifeline, limits
from .worker import Worker

__all__ = ["main"]

# The command line's parser, made when first needed: to parse a command line not in a launcher's
# form, or to say what is wrong with one.  A forked worker reads its launcher's form without it
# (contract.read_argv), and a client, which imports this module for its template, makes none
# (argparse's import and 21 options: 4.6 ms of its import).
_parser = functools.cache(parser)


def _connect_back(port: int) -> str:
    """The broker's endpoint when it is the far end of the ssh session we run in."""
    conn = os.environ.get("SSH_CONNECTION", "").split()
    if len(conn) < 4:
        raise ValueError("--connect-back needs SSH_CONNECTION: it is for workers started through ssh")
    addr = conn[0]
    if addr.startswith("::ffff:") and "." in addr:
        addr = addr[len("::ffff:") :]  # an IPv4 client seen by an IPv6 server
    if addr == "::1":
        addr = "127.0.0.1"
    return f"tcp://[{addr}]:{port}" if ":" in addr else f"tcp://{addr}:{port}"


def main(argv: list[str] | None = None) -> int:
    """``python -m scoopexec worker``: join a broker, alone or as a group of N processes."""
    values = read_argv(argv) if argv is not None else None  # (a launcher's form: no argparse)
    args = types.SimpleNamespace(**values) if values is not None else _parser().parse_args(argv)
    if (args.connect is None) == (args.connect_back is None):
        _parser().error("give the broker's endpoint: --connect ADDR")
    if args.key and args.key_stdin:
        _parser().error("--key and --key-stdin exclude each other")
    try:
        connect = args.connect or _connect_back(args.connect_back)
        creds = None
        env: dict[str, str] = {}  # env= of a launcher (ssh), sent with the keys: for the workers
        if args.key:
            creds = read_key_file(args.key)
        elif args.key_stdin:
            creds, env = read_launch_frame(0)
            check_env(env)
        creds = resolve_credentials(connect, creds, "broker endpoint")
    except ValueError as exc:
        _parser().error(str(exc))
    n = None
    if args.workers is not None:
        if args.workers == "auto":
            n = local_cpu_count()
        elif args.workers.isdigit() and int(args.workers) >= 1:
            n = int(args.workers)
        else:
            _parser().error(f"-n takes a number of workers >= 1 or 'auto', not {args.workers!r}")
    if n is not None and (n != 1 or args.ready):
        return run_worker_group(args, connect, creds, n, env)
    if (args.max_tasks or args.memory_limit or args.max_lifetime) and args.exit_fd is None:
        # It recycles itself and nobody would start the next: a group of 1 does (unannounced).
        return run_worker_group(args, connect, creds, 1, env, announce=False)
    if env:
        os.environ.update(env)  # one worker without a group: its own environment (and its tasks')
    signal.signal(signal.SIGINT, signal.SIG_IGN) if args.watch_stdin else None
    if args.exit_fd is not None:
        try:
            lifeline.set_exit_fd(args.exit_fd)  # programs that tasks start must not write on it
        except OSError as exc:
            _parser().error(f"--exit-fd {args.exit_fd}: {exc}")
    link = None
    if args.link_fd is not None:
        try:
            link = socket.socket(fileno=args.link_fd)
            link.set_inheritable(False)  # programs that tasks start must not keep it open
        except OSError as exc:
            _parser().error(f"--link-fd {args.link_fd}: {exc}")
        lifeline.note_client(link)
    # What multiprocessing and logging's %(processName)s say in a task: which worker this is, not
    # "MainProcess" (a forked worker had the client's name).
    multiprocessing.process.current_process().name = f"ScoopWorker-{os.getpid()}"
    fnframes.retain(False)  # (a sub-task's large function frames: nothing says when to let go)
    worker = Worker(
        connect,
        link=link,
        tag=args.tag,
        name=args.name,
        heartbeat=args.heartbeat,
        heartbeat_timeout=args.heartbeat_timeout,
        max_message_size=args.max_message_size,
        watch_stdin=args.watch_stdin,
        forward_output=not args.no_forward_output,
        curve=creds,
        ready=args.ready,
        connect_timeout=args.connect_timeout,
        keep_cwd=args.keep_cwd,
    )
    try:
        limits.install(worker, args.max_tasks, args.memory_limit, args.max_lifetime)
    except ValueError as exc:
        _parser().error(str(exc))
    worker.serve()
    return 0
