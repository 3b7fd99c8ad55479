"""Command-line entry points other than the worker's, options shared by command lines, and the launcher.

``python -m scoopexec [-n N] [--hosts H ...] [--hostfile F] script.py [args]``
(``launch_main``) runs a program the way SCOOP's ``python -m scoop`` does, with
a pool active for all of it: the script runs as ``__main__`` in this process;
``scoopexec.futures``, ``scoopexec.map``, ``scoop_map`` and joblib's ``"scoop"``
backend use the pool; ``from scoop import futures, shared`` resolves to
scoopexec's SCOOP-compatible API, here and on the workers.  The exit status
is the script's (1 on an uncaught exception, unlike SCOOP), and every process
the launcher started is stopped when the script ends: tasks not started are
cancelled, running ones finish -- or, when the script failed, are abandoned.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import socket
import sys
import traceback
import types
from typing import Any

from . import pools, scoop_compat
from .__main__ import EXIT_BROKEN_PIPE, SUBCOMMANDS, silence_stdout, stdout_is_broken, version_text
from .broker.limits import add_limit_options, limits_of
from .broker.loop import Broker
from .client.executor import ScoopExecutor
from .deploy.slurm_jobs import SlurmJobs
from .logs import add_verbosity_options, configure_logging
from .trace import TraceRecorder, check_trace_path
from .wire.security import (
    AuthorizedKeys,
    Credentials,
    KeyPair,
    check_endpoint,
    is_loopback,
    publish_local_key,
    read_key_file,
    valid_public_key,
    write_key_file,
)


def add_observe_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--trace FILE``, ``--progress``, ``-v`` and ``-q``: what a command line running a pool offers."""
    parser.add_argument(
        "--trace", metavar="FILE",
        help="record every task and write the timeline to FILE when the pool stops: Chrome/Perfetto JSON "
        "for a name ending in .json, else a compact binary file (python -m scoopexec trace export FILE "
        "out.json); python -m scoopexec report FILE reads both",
    )  # fmt: skip
    parser.add_argument("--progress", action="store_true", help="draw a progress bar for every map")
    add_verbosity_options(parser)


def apply_observe_options(args: argparse.Namespace) -> dict[str, Any]:
    """Set up logging from -v/-q; return the ScoopExecutor arguments for --trace and --progress.

    ``ScoopExecutor(max_workers=n, **apply_observe_options(args))``; a bad
    --trace path raises ValueError (the parser's ``error()`` is the place
    to report it).
    """
    configure_logging(getattr(args, "verbose", 0) - getattr(args, "quiet", 0))
    trace = getattr(args, "trace", None)
    if trace:
        check_trace_path(trace)
    return {"trace": trace or None, "progress": bool(getattr(args, "progress", False))}


def broker_main(argv: list[str]) -> int:
    """``python -m scoopexec broker``: a long-lived pool that clients and workers join."""
    ap = argparse.ArgumentParser(
        prog="python -m scoopexec broker",
        epilog="Every TCP endpoint is encrypted and authenticated with CURVE, loopback included. "
        "On a port of this machine the broker writes a key for this user's own clients and workers "
        "where they find it. For other users or hosts: --authorized-keys (one public key per user, "
        "made with `python -m scoopexec keygen`) and --server-key; see docs/security.md.",
    )
    ap.add_argument("--bind", default="tcp://127.0.0.1:5555", help="endpoint to listen on")
    ap.add_argument(
        "--key-file",
        metavar="FILE",
        help="write a key that clients and workers may use to FILE (mode 0600; new keys at every "
        "start): everyone given FILE shares that one key; prefer --authorized-keys for a broker "
        "that several users share",
    )
    ap.add_argument(
        "--authorized-keys",
        metavar="FILE",
        help="accept the clients and workers whose public key is a line of FILE (a key, then an "
        "optional name; # comments); read again when it changes",
    )
    ap.add_argument(
        "--server-key",
        metavar="FILE",
        help="the broker's own key pair (made with `python -m scoopexec keygen FILE`), so that its "
        "public key, which clients pin, stays the same across restarts (default: a new one each start)",
    )
    ap.add_argument("--heartbeat", type=float, default=1.0)
    ap.add_argument("--heartbeat-timeout", type=float, default=5.0)
    ap.add_argument("--max-retries", type=int, default=3)
    add_limit_options(ap)
    ap.add_argument(
        "--trace", metavar="FILE",
        help="record every task and write the timeline to FILE when the broker stops (JSON for a name "
        "ending in .json, else compact binary; see python -m scoopexec report and trace export)",
    )  # fmt: skip
    add_verbosity_options(ap)
    args = ap.parse_args(argv)
    configure_logging(args.verbose - args.quiet)
    tcp = args.bind.startswith("tcp://")
    given = args.key_file is not None or args.authorized_keys is not None
    try:
        check_endpoint(args.bind, secure=given or (tcp and is_loopback(args.bind)), what="bind endpoint")
    except ValueError as exc:
        ap.error(f"{exc}; for this command: --authorized-keys FILE or --key-file FILE")
    if not tcp and (given or args.server_key):
        ap.error(
            "--key-file, --authorized-keys and --server-key secure TCP endpoints; an ipc:// endpoint is "
            "protected by file permissions"
        )
    if not 0 < args.heartbeat < args.heartbeat_timeout:  # (NaN fails this too)
        ap.error(
            f"need 0 < --heartbeat < --heartbeat-timeout, got {args.heartbeat:g} and "
            f"{args.heartbeat_timeout:g}"
        )
    recorder = None
    if args.trace:
        try:
            recorder = TraceRecorder(args.trace)
        except ValueError as exc:
            ap.error(str(exc))
    server = None
    authorized = None
    try:
        if args.server_key:
            server = read_key_file(args.server_key).pair()
        elif tcp:
            server = KeyPair.new()
        if args.authorized_keys:
            authorized = AuthorizedKeys(args.authorized_keys)
    except ValueError as exc:
        ap.error(str(exc))
    b = Broker(
        args.bind,
        heartbeat=args.heartbeat,
        heartbeat_timeout=args.heartbeat_timeout,
        max_retries=args.max_retries,
        curve=server,
        max_message_size=args.max_message_size,
        limits=limits_of(args),
    )
    published = None
    if server is not None:
        if authorized is not None:
            b.router.authorize(authorized)
        if args.key_file is not None:
            write_key_file(args.key_file, _new_keys(b, server))
        try:
            published = publish_local_key(b.endpoint, _new_keys(b, server))
        except (OSError, ValueError) as exc:
            print(f"scoopexec broker: no key for this user's local clients: {exc}", file=sys.stderr)
    security = ""
    if server is not None:
        security = f", CURVE server key {server.public.decode()}"
        if args.key_file:
            security += f", client key in {args.key_file}"
        if authorized is not None:
            security += f", {len(authorized.keys)} authorized key(s) from {args.authorized_keys}"
    try:
        return _serve(b, recorder, security, argv)
    finally:
        if published is not None:
            try:
                os.unlink(published)
            except OSError:
                pass


def keygen_main(argv: list[str]) -> int:
    """``python -m scoopexec keygen FILE``: a CURVE key pair in a 0600 file; prints its public key."""
    ap = argparse.ArgumentParser(
        prog="python -m scoopexec keygen",
        description="Make a CURVE key pair and write it to FILE (mode 0600). Prints the public key "
        "as a line for a broker's --authorized-keys file. A client or worker key file also needs the "
        "broker's public key (--server), which the broker prints when it starts.",
    )
    ap.add_argument("file", metavar="FILE")
    ap.add_argument(
        "--server", metavar="KEY",
        help="the public key of the broker this key is for (40 characters; as --server=KEY when it "
        "starts with '-'); with an existing FILE, only that is changed",
    )  # fmt: skip
    ap.add_argument("--name", default=None, help="the name after the key (default: USER@HOST)")
    args = ap.parse_args(argv)
    server = (args.server or "").strip().encode()
    if server and (len(server) != 40 or not valid_public_key(server)):
        ap.error(f"--server {args.server!r} is not a CURVE public key (40 Z85 characters)")
    try:
        path = os.path.expanduser(args.file)
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        if os.path.exists(path):
            if not server:
                ap.error(f"{args.file} exists; give --server KEY to set its broker key, or another FILE")
            old = read_key_file(path)
            creds = Credentials(server, old.public, old.secret)
        else:
            creds = Credentials.for_pair(server, KeyPair.new())
        write_key_file(path, creds)
    except (OSError, ValueError) as exc:
        print(f"scoopexec keygen: {exc}", file=sys.stderr)
        return 1
    name = args.name if args.name is not None else f"{getpass.getuser()}@{socket.gethostname()}"
    print(f"{creds.public.decode()} {name}".rstrip(), flush=True)
    return 0


def _new_keys(b: Broker, server: KeyPair) -> Credentials:
    pair = KeyPair.new()
    b.router.allow(pair.public)
    return Credentials.for_pair(server.public, pair)


def _serve(b: Broker, recorder: TraceRecorder | None, security: str, argv: list[str]) -> int:
    b.trace = recorder
    if recorder is not None:
        recorder.meta.update(argv=["python -m scoopexec broker", *argv])
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
        print(f"timeline of {recorder.recorded} task(s) written to {path}", flush=True)
    return 0


_VALUE_OPTIONS = (
    "-n", "--workers", "--hostfile", "--broker", "--trace", "--slurm-jobs", "--slurm-walltime",
    "--task-timeout", "--max-tasks-per-child", "--worker-memory-limit", "--worker-max-lifetime",
)  # fmt: skip
_LIST_OPTIONS = ("--hosts", "--host")


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(launcher options, [script, *its args]): the script is the first non-option word."""
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return argv[:i], argv[i + 1 :]
        if not tok.startswith("-") or tok == "-":
            return argv[:i], argv[i:]
        i += 1
        if tok in _VALUE_OPTIONS:
            i += 1
        elif tok in _LIST_OPTIONS:
            # Host names never end in .py: `--hosts a b prog.py` needs no `--`.
            while i < len(argv) and not argv[i].startswith("-") and not _looks_like_script(argv[i]):
                i += 1
    return argv, []


def _looks_like_script(word: str) -> bool:
    if word.lower().startswith("ssh://"):
        return False  # a host spec (deploy/hosts.py), slashes and all
    return word.endswith((".py", ".pyw")) or os.path.sep in word or os.path.isfile(word)


def _launcher_parser() -> argparse.ArgumentParser:
    epilog = "other commands:\n" + "\n".join(
        f"  python -m scoopexec {name:<8} {text}" for name, (_, _, text) in SUBCOMMANDS.items()
    )
    ap = argparse.ArgumentParser(
        prog="python -m scoopexec",
        usage="%(prog)s [-n N] [--hosts HOST [HOST ...]] [--hostfile FILE] script.py [args ...]",
        description="Run a Python program with a scoopexec pool active (SCOOP's `python -m scoop`).",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("-n", "--workers", type=int, default=None, metavar="N",
                    help="worker processes (default: one per CPU)")
    ap.add_argument("--hosts", "--host", nargs="+", default=None, metavar="HOST",
                    help="run workers on these hosts (passed to ScoopExecutor as hosts=)")
    ap.add_argument("--hostfile", default=None, metavar="FILE",
                    help="read the hosts from FILE (passed to ScoopExecutor as hostfile=)")
    ap.add_argument("--broker", default=None, metavar="ENDPOINT",
                    help="use the pool of a standalone broker (`python -m scoopexec broker`)")
    ap.add_argument("--task-timeout", type=float, default=None, metavar="S",
                    help="stop a task after S seconds: TaskTimeoutError (ScoopExecutor(task_timeout=))")
    ap.add_argument("--max-tasks-per-child", type=int, default=None, metavar="N",
                    help="replace a worker process after N tasks")
    ap.add_argument("--worker-memory-limit", default=None, metavar="SIZE",
                    help="replace a worker process past SIZE bytes (or '2GiB', '500MB')")
    ap.add_argument("--worker-max-lifetime", type=float, default=None, metavar="S",
                    help="replace idle worker processes after about S seconds")
    ap.add_argument("--slurm-jobs", type=int, default=None, metavar="N",
                    help="run workers in up to N SLURM jobs that the pool submits as work comes "
                         "(from a login node; hosts=SlurmJobs(max_jobs=N))")
    ap.add_argument("--slurm-walltime", default=None, metavar="HH:MM:SS",
                    help="the time limit of each of those jobs")
    add_observe_options(ap)
    ap.add_argument("--version", action="version", version=version_text())
    return ap


def _exit_status(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _executor_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """ScoopExecutor's arguments: only the options given (hosts= and hostfile= included)."""
    kwargs: dict[str, Any] = {}
    if args.workers is not None:
        kwargs["max_workers"] = args.workers
    if args.hosts:
        kwargs["hosts"] = args.hosts
    if args.hostfile:
        kwargs["hostfile"] = args.hostfile
    if args.broker:
        kwargs["broker"] = args.broker
    for name in ("task_timeout", "max_tasks_per_child", "worker_memory_limit", "worker_max_lifetime"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if args.slurm_jobs is not None or args.slurm_walltime is not None:
        if args.hosts or args.hostfile:
            raise ValueError("--slurm-jobs cannot be combined with --hosts or --hostfile")
        kwargs["hosts"] = SlurmJobs(max_jobs=args.slurm_jobs or 1, walltime=args.slurm_walltime)
    return kwargs


def launch_main(argv: list[str]) -> int:
    """``python -m scoopexec [options] script.py [args]``: run the script on a pool; its exit status."""

    options, rest = _split(list(argv))
    ap = _launcher_parser()
    args = ap.parse_args(options)
    if not rest:
        ap.error("no script to run")
    script, script_args = rest[0], rest[1:]
    path = os.path.abspath(script)
    if not os.path.isfile(path):
        ap.error(f"can't open file {script!r}: no such file")
    if args.workers is not None and args.workers < 1:
        ap.error("-n must be at least 1")
    try:
        kwargs = _executor_kwargs(args)
        kwargs.update(apply_observe_options(args))
    except ValueError as exc:
        ap.error(str(exc))

    # Become `python script.py`: its own __main__ module, argv and sys.path[0].
    # The pool is made after, so that workers import this script as __mp_main__.
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__builtins__ = __builtins__  # type: ignore[attr-defined]
    main.__spec__ = None
    saved = sys.modules.get("__main__"), sys.argv, list(sys.path)
    sys.modules["__main__"] = main
    sys.argv = [script, *script_args]
    sys.path[0:1] = [os.path.dirname(path)]
    scoop_compat.install(origin=True)
    try:
        try:
            ex = ScoopExecutor(**kwargs)
        except (TypeError, ValueError, OSError) as exc:
            print(f"python -m scoopexec: cannot start the pool: {exc}", file=sys.stderr)
            return 2
        pools.enter(ex)  # what `with ex:` does, without the wait at the end
        status = 0
        try:
            with open(path, "rb") as fh:
                code = compile(fh.read(), path, "exec")
            exec(code, main.__dict__)
        except SystemExit as exc:
            status = _exit_status(exc.code)
        except KeyboardInterrupt:
            traceback.print_exc()
            status = 130
        except BrokenPipeError:
            if not stdout_is_broken():
                traceback.print_exc()
                status = 1
            else:  # `python -m scoopexec prog.py | head`: the reader has all it wanted
                silence_stdout()
                status = EXIT_BROKEN_PIPE
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            pools.leave(ex)
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            if status == 0:
                ex.shutdown(wait=True, cancel_futures=True)
            else:
                ex.abort(f"the program {script} ended with status {status}")
        return status
    finally:
        sys.modules["__main__"], sys.argv, sys.path[:] = saved  # type: ignore[assignment]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(broker_main(sys.argv[1:]))
