"""The worker's command line, defined once: its flags, what it prints, how it exits.

``python -m scoopexec worker`` is how every worker starts, whoever starts it: a
ScoopExecutor on its own machine (local.py), an ssh session (ssh.py), an srun job
step (slurm.py), or a user by hand.  Launchers build the command with
:func:`worker_argv`, the worker reads it with :func:`parser`; both come from the one
table :data:`OPTIONS`, so a launcher cannot pass a flag the worker does not know.

What a worker tells its launcher:

* with ``--ready``, a line ``SCOOPEXEC-READY <tag>`` on stdout once connected
  (:data:`READY_MARK`); a group (``-n N``) first prints ``SCOOPEXEC-GROUP <N>``
  (:data:`GROUP_MARK`);
* how it ended.  A worker exits with one of its own codes (:data:`EXIT_LOST`,
  :data:`EXIT_AUTH`, :data:`EXIT_UNREACHABLE`; :data:`REASONS`) only for a reason of
  its own, after which starting it again would fail alike.  A task can end the process
  too -- ``os._exit(5)``, ``exit()`` called by native code -- with any code, these
  included, so a code alone proves nothing.  A worker started with ``--exit-fd N``
  therefore writes on that pipe, once the broker welcomed it and just before it exits
  for a reason of its own::

      b"welcomed\n"
      b"<code> <one line of text>\n"      (its exit note)

  and whoever started it (local.LocalWorkers: the embedded broker's local workers, and
  the ``python -m scoopexec worker -n N`` group on a remote host) reads them after the
  exit (:func:`read_notes`).  An exit without a note is what it looks like: the process
  ended, most likely by its task's hand.  A worker that was welcomed reached its
  broker: its end is not a failure to start.  A worker group's own exit status (what
  its ssh session reports) is the group's verdict, never a task's: the group returns
  one of these codes only when each of its workers left a note.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

__all__ = [
    "EXIT_AUTH",
    "EXIT_LOST",
    "EXIT_RECYCLED",
    "EXIT_UNREACHABLE",
    "EXIT_VERSION",
    "GROUP_MARK",
    "OPTIONS",
    "READY_MARK",
    "REASONS",
    "START_TIMEOUT",
    "LaunchOptions",
    "Option",
    "check_env",
    "describe_returncode",
    "local_cpu_count",
    "parser",
    "read_argv",
    "read_notes",
    "worker_argv",
    "write_note",
    "write_welcomed",
]

READY_MARK = b"SCOOPEXEC-READY"  # printed on stdout once connected (--ready), then the worker's tag
GROUP_MARK = b"SCOOPEXEC-GROUP"  # printed first by a group (-n N, --ready), then N

EXIT_LOST = 3  # the broker went away
EXIT_AUTH = 4  # the broker refused our keys, or we do not have its key
EXIT_UNREACHABLE = 5  # no broker answered within --connect-timeout
EXIT_RECYCLED = 6  # it stopped itself to be replaced (a task would not stop: worker/limits.py)
EXIT_VERSION = 7  # its broker speaks another protocol version (another scoopexec version)

REASONS: dict[int, str] = {
    EXIT_LOST: "it lost its broker",
    EXIT_AUTH: "the broker refused its keys, or it has the wrong broker key",
    EXIT_UNREACHABLE: "no broker answered at the address it was given",
    EXIT_RECYCLED: "it stopped itself to be replaced, see its note",
    EXIT_VERSION: "its broker runs another version of scoopexec",
}
"""Why a worker exits with each of its own codes (and is not started again: the next would fail alike,
except after :data:`EXIT_RECYCLED`, whose very point is a fresh process)."""

START_TIMEOUT = 60.0
"""s a starting worker may go without using any CPU before it said HELLO: then it is stuck
(a sitecustomize, a .pth file or an import waiting on something) and its starter kills it."""


@dataclass(frozen=True)
class Option:
    """One flag of the worker's command line."""

    dest: str
    flags: tuple[str, ...]
    kind: type  # bool: a switch
    default: Any = None
    help: str | None = None  # None: no help text; HIDDEN: none shown (options for launchers only)
    metavar: str | None = None


HIDDEN = "==SUPPRESS=="  # an option's help that hides it (argparse.SUPPRESS's value, as parser() passes it)


OPTIONS: tuple[Option, ...] = (
    Option("connect", ("--connect",), str, None, "the broker's endpoint", "ADDR"),
    Option(
        "connect_back", ("--connect-back",), int, None,
        "connect to PORT on the host this ssh session comes from (launchers use it)", "PORT",
    ),
    Option(
        "key", ("--key",), str, None,
        "the pool's key file (0600), needed for a broker on another host", "FILE",
    ),
    Option("key_stdin", ("--key-stdin",), bool, False, HIDDEN),
    Option("ready", ("--ready",), bool, False, HIDDEN),
    Option("link_fd", ("--link-fd",), int, None, HIDDEN),  # one end of a socketpair (local.py)
    Option("exit_fd", ("--exit-fd",), int, None, HIDDEN),  # its exit notes (read_notes)
    Option("keep_cwd", ("--keep-cwd",), bool, False, "stay in the working directory started in"),
    Option(
        "connect_timeout", ("--connect-timeout",), float, 0.0,
        "give up when no broker answered within S seconds (default: keep trying)", "S",
    ),
    Option("tag", ("--tag",), str, "", HIDDEN),
    Option("name", ("--name",), str, ""),
    Option("heartbeat", ("--heartbeat",), float, 1.0),
    Option("heartbeat_timeout", ("--heartbeat-timeout",), float, 5.0),
    Option(
        "max_message_size", ("--max-message-size",), int, -1,
        "refuse frames from the broker above BYTES (plus 1 MiB); the pool's own max_message_size "
        "(an embedded pool passes it to its local workers; default: no limit)", "BYTES",
    ),
    Option("watch_stdin", ("--watch-stdin",), bool, False, "exit when stdin closes"),
    Option("no_forward_output", ("--no-forward-output",), bool, False),
    Option(
        "max_tasks", ("--max-tasks",), int, None,
        "exit after N tasks, to be replaced (max_tasks_per_child)", "N",
    ),
    Option(
        "memory_limit", ("--memory-limit",), str, None,
        "bytes (or '2GiB'): past it after a task, exit to be replaced; past it during one, that task "
        "fails with WorkerMemoryError", "SIZE",
    ),
    Option("max_lifetime", ("--max-lifetime",), float, None, "retire when idle after about S seconds", "S"),
    Option(
        "workers", ("-n", "--workers"), str, None,
        "run N worker processes under one supervisor (N or 'auto': one per CPU)", "N",
    ),
)  # fmt: skip
_BY_DEST = {o.dest: o for o in OPTIONS}
_BY_FLAG = {flag: o for o in OPTIONS for flag in o.flags}


def parser() -> argparse.ArgumentParser:
    """The parser of ``python -m scoopexec worker``.  Made on demand: a forked worker reads a
    launcher's form of the command line without it (:func:`read_argv`), and a client imports no
    argparse (2.4 ms) nor makes the parser (2.2 ms) for it."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m scoopexec worker")
    for o in OPTIONS:
        shown = argparse.SUPPRESS if o.help == HIDDEN else o.help
        if o.kind is bool:
            ap.add_argument(*o.flags, dest=o.dest, action="store_true", help=shown)
        else:
            ap.add_argument(
                *o.flags, dest=o.dest, type=o.kind, default=o.default, help=shown, metavar=o.metavar
            )
    return ap


def worker_argv(**values: Any) -> list[str]:
    """``-m scoopexec worker`` and the flags for ``values`` (OPTIONS' names), for a launcher.

    A switch is given when true; other options when not None.  The interpreter
    comes first, from the caller (it differs between here and a remote host).
    """
    argv = ["-m", "scoopexec", "worker"]
    for dest, value in values.items():
        o = _BY_DEST.get(dest)
        if o is None:
            raise TypeError(f"the worker command line has no option {dest!r}")
        if o.kind is bool:
            if value:
                argv.append(o.flags[0])
        elif value is not None:
            argv += [o.flags[0], repr(value) if o.kind is float else str(value)]
    return argv


def read_argv(argv: list[str]) -> dict[str, Any] | None:
    """What :func:`parser` reads from ``argv`` written as :func:`worker_argv` writes it (each flag
    whole, then its value), read without argparse; None for any other form, which argparse then
    reads (and refuses in its words).  Parsing cost a forked worker ~0.8 ms of CPU before its
    first task, half of it compiling argparse's patterns, on the way to a pool's first batch."""
    values = {o.dest: o.default for o in OPTIONS}
    i = 0
    while i < len(argv):
        o = _BY_FLAG.get(argv[i])
        if o is None:
            return None
        if o.kind is bool:
            values[o.dest] = True
            i += 1
            continue
        if i + 1 >= len(argv) or argv[i + 1].startswith("-"):  # (argparse's own rules, then)
            return None
        try:
            values[o.dest] = o.kind(argv[i + 1])
        except ValueError:
            return None
        i += 2
    return values


@dataclass(frozen=True)
class LaunchOptions:
    """How to start workers anywhere: interpreter, environment, directory, liveness, patience."""

    python: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "."
    keep_cwd: bool = False  # cwd= was given: workers stay there rather than following the client
    ssh: tuple[str, ...] = ("ssh",)
    heartbeat: float = 1.0
    heartbeat_timeout: float = 5.0
    connect_timeout: float = 10.0  # for ssh to connect to a host
    launch_timeout: float = 60.0  # for launched workers to connect to the broker
    recycle: dict[str, Any] = field(default_factory=dict)  # max_tasks, memory_limit, max_lifetime (OPTIONS)
    fork_client: bool = True  # local workers may descend from a fork of the client (deploy/clientfork.py)
    force_fork: bool = False  # ... and must, threads or not (mp_context='fork')
    pass_fds: tuple[int, ...] = ()  # the client's descriptors every local worker gets (worker/handover.py)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """``env=`` for workers, checked: names a shell accepts, string values."""
    out: dict[str, str] = {}
    for k, v in (env or {}).items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise ValueError(f"env: {k!r} is not a valid environment variable name")
        if not isinstance(v, str):
            raise TypeError(f"env[{k!r}] must be a string, not {type(v).__name__}")
        out[k] = v
    return out


_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: " - often the out-of-memory killer (see `dmesg` on {host}) or a kill -9",
    signal.SIGSEGV: " - a segmentation fault in native code (a C extension, ctypes)",
    signal.SIGBUS: " - a bus error in native code, or a truncated memory-mapped file",
    signal.SIGABRT: " - native code aborted (a failed assertion or a corrupted heap)",
    signal.SIGTERM: " - something asked it to terminate",
}


def describe_returncode(rc: int, host: str = "that host", *, own: bool = False) -> str:
    """Words for a process's exit status, with the likely cause of a fatal signal (on ``host``).

    ``own``: the exit code is scoopexec's verdict (a worker's exit note said so, or it is a
    worker group's status), so one of the codes above is explained; otherwise it is just a code.
    """
    if rc < 0:
        try:
            sig: signal.Signals | int = signal.Signals(-rc)
            name = signal.Signals(-rc).name
        except ValueError:
            sig, name = -rc, f"signal {-rc}"
        hint = _SIGNAL_HINTS.get(int(sig), "").format(host=host)
        return f"was killed by signal {-rc} ({name}){hint}"
    if own and rc in REASONS:
        return f"exited with code {rc} ({REASONS[rc]})"
    return f"exited with code {rc}"


WELCOMED = b"welcomed\n"


def write_welcomed(fd: int) -> None:
    """Say on ``fd`` that the broker welcomed this worker (once, from the worker)."""
    try:
        os.write(fd, WELCOMED)
    except OSError:
        pass


def write_note(fd: int, code: int, message: str) -> None:
    """Leave an exit note on ``fd`` (a worker, just before it exits for a reason of its own)."""
    line = f"{code} {' '.join(message.split())}"[:2000] + "\n"
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    except OSError:
        pass


def read_notes(fd: int) -> tuple[bool, tuple[int, str] | None]:
    """What an exited worker left on the non-blocking pipe ``fd``: (welcomed, its exit note)."""
    try:
        data = os.read(fd, 8192)
    except OSError:  # nothing written (BlockingIOError), or the pipe is gone
        return False, None
    welcomed = False
    note = None
    for line in data.decode("utf-8", "replace").splitlines():
        if line == WELCOMED.decode().strip():
            welcomed = True
            continue
        code, _, text = line.partition(" ")
        try:
            note = int(code), text.strip()
        except ValueError:
            pass
    return welcomed, note


def local_cpu_count() -> int:
    """The CPUs this process may run on: ``-n auto``, and the workers a host without a count gets."""
    if hasattr(os, "process_cpu_count"):
        n = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:  # pragma: no cover
        n = os.cpu_count()
    return n or 1
