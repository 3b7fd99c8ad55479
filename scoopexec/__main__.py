"""The command line: ``python -m scoopexec SUBCOMMAND ...`` or ``python -m scoopexec script.py``.

Subcommands are looked up in SUBCOMMANDS (module, function); each function takes the
remaining arguments and returns an exit status.  Anything else is the program launcher
(``scoopexec.cli.launch_main``): ``python -m scoopexec [-n N] script.py [args]`` runs a
program, SCOOP-style, with a pool active.  ``--version`` prints the version.

Every command ends quietly when the reader of its output goes away
(``python -m scoopexec report --json run.json | head -1``): no traceback,
exit status 141 (128 + SIGPIPE, what a shell shows for a program that
SIGPIPE ended).
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import sys

from ._version import __version__

__all__ = [
    "EXIT_BROKEN_PIPE",
    "SUBCOMMANDS",
    "console_main",
    "main",
    "silence_stdout",
    "stdout_is_broken",
    "usage",
    "version_text",
]

SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module, function, one-line help)
    "worker": ("scoopexec.worker.main", "main", "run worker processes that connect to a broker"),
    "broker": ("scoopexec.cli", "broker_main", "run a standalone broker"),
    "status": ("scoopexec.status", "status_main", "show a broker's workers, queue and throughput"),
    "keygen": ("scoopexec.cli", "keygen_main", "make a CURVE key pair for a broker, client or worker"),
    "report": ("scoopexec.report", "report_main", "summarise (and draw) a timeline recorded with --trace"),
    "trace": ("scoopexec.report", "trace_main",
              "convert a timeline to Chrome/Perfetto JSON: trace export IN OUT.json"),
}
LAUNCHER = ("scoopexec.cli", "launch_main")

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""The exit status when the reader of our output went away (``... | head``): 141, as a shell
reports for a program that SIGPIPE ended."""


def stdout_is_broken() -> bool:
    """Whether standard output is a pipe (or socket) whose reader has gone away."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    if not hasattr(select, "poll"):  # pragma: no cover - Windows: no way to ask; assume it is
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def silence_stdout() -> None:
    """Point standard output at the null device, so that what is still buffered (and the
    interpreter's flush at exit) raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (AttributeError, ValueError, OSError):
        pass


def version_text() -> str:
    """What ``python -m scoopexec --version`` prints."""
    return f"scoopexec {__version__}"


def usage() -> str:
    lines = [
        "usage: python -m scoopexec [-n N] [--hosts HOST ...] [--hostfile FILE] script.py [args ...]",
        "       python -m scoopexec SUBCOMMAND [options]",
        "",
        "       python -m scoopexec --version",
        "",
        "  script.py  run a program with a pool active (SCOOP-style; see --help)",
    ]
    for name, (_, _, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m scoopexec ...``: a subcommand, else the program launcher."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        status = _run(argv)
        sys.stdout.flush()  # a reader that went away shows here, not in the flush at exit
        return status
    except BrokenPipeError:
        if not stdout_is_broken():
            raise  # a pipe of ours, not the output: a real error
        silence_stdout()
        return EXIT_BROKEN_PIPE


def _run(argv: list[str]) -> int:
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    if argv == ["--version"]:
        print(version_text())
        return 0
    if argv[0] in SUBCOMMANDS:
        module, func, _ = SUBCOMMANDS[argv[0]]
        argv = argv[1:]
    else:
        module, func = LAUNCHER
    # lazy: each worker process starts here; it loads the worker's command line, not the
    # launcher's, the report's or the status client's
    return int(getattr(importlib.import_module(module), func)(argv) or 0)


def console_main() -> None:
    """The ``scoopexec`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
