"""How a worker process ends, and what the process that started it may conclude: defined once.

A worker exits with one of its own codes (below) only for a reason of its own.  A task can end
the process too -- ``os._exit(5)``, ``exit()`` called by native code -- with any code, these
included, so a code alone proves nothing.  A worker started with ``--exit-fd N`` therefore writes
on that pipe, once the broker welcomed it and just before it exits for a reason of its own::

    b"welcomed\\n"
    b"<code> <one line of text>\\n"      (its exit note)

and whoever started it (launch.LocalWorkers: the embedded broker's local workers, and the
``python -m scoopexec worker -n N`` group on a remote host) reads them after the exit.  An exit
without a note is what it looks like: the process ended, most likely by its task's hand.  A
worker that was welcomed reached its broker: its end is not a failure to start.

A worker group's own exit status (what its ssh session reports) is the group's verdict,
never a task's: the group returns one of these codes only when each of its workers left a note.
"""

from __future__ import annotations

import os
import signal

EXIT_LOST = 3  # the broker went away
EXIT_AUTH = 4  # the broker refused our keys, or we do not have its key
EXIT_UNREACHABLE = 5  # no broker answered within --connect-timeout

START_TIMEOUT = 60.0
"""s a starting worker may go without using any CPU before it said HELLO: then it is stuck
(a sitecustomize, a .pth file or an import waiting on something) and its starter kills it."""

REASONS: dict[int, str] = {
    EXIT_LOST: "it lost its broker",
    EXIT_AUTH: "the broker refused its keys, or it has the wrong broker key",
    EXIT_UNREACHABLE: "no broker answered at the address it was given",
}
"""Why a worker exits with each of its own codes (and is not started again: the next would fail alike)."""

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
