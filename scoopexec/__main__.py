"""The command line: ``python -m scoopexec SUBCOMMAND ...`` or ``python -m scoopexec script.py``.

Subcommands are looked up in SUBCOMMANDS (module, function); each function
takes the remaining arguments and returns an exit status.  Anything else is
the program launcher (``scoopexec.cli.launch_main``): ``python -m scoopexec
[-n N] script.py [args]`` runs a program, SCOOP-style, with a pool active.
``--version`` prints the version.

Every command ends quietly when the reader of its output goes away
(``python -m scoopexec report --json run.json | head -1``): no traceback,
exit status 141 (128 + SIGPIPE, what a shell shows for a program that
SIGPIPE ended).
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module, function, one-line help)
    "worker": ("scoopexec.worker", "main", "run worker processes that connect to a broker"),
    "broker": ("scoopexec.cli", "broker_main", "run a standalone broker"),
    "status": ("scoopexec.status", "status_main", "show a broker's workers, queue and throughput"),
    "report": ("scoopexec.report", "report_main", "summarise (and draw) a timeline recorded with --trace"),
}


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
    from .cli import EXIT_BROKEN_PIPE, silence_stdout, stdout_is_broken

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
    if argv and argv[0] in SUBCOMMANDS:
        module, func, _ = SUBCOMMANDS[argv[0]]
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    if argv == ["--version"]:
        from .cli import version_text

        print(version_text())
        return 0
    if argv:
        from .cli import launch_main

        return launch_main(argv)
    print(usage(), file=sys.stderr)
    return 2


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
