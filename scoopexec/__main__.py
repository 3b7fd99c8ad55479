"""The command line: ``python -m scoopexec SUBCOMMAND ...`` or ``python -m scoopexec script.py``.

Subcommands are looked up in SUBCOMMANDS (module, function); each function takes the
remaining arguments and returns an exit status.  Anything else is the program launcher
(``scoopexec.cli.launch_main``): ``python -m scoopexec [-n N] script.py [args]`` runs a
program, SCOOP-style, with a pool active.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["SUBCOMMANDS", "console_main", "main", "usage"]

SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    # name: (module, function, one-line help)
    "worker": ("scoopexec.worker.main", "main", "run worker processes that connect to a broker"),
    "broker": ("scoopexec.cli", "broker_main", "run a standalone broker"),
    "status": ("scoopexec.status", "status_main", "show a broker's workers, queue and throughput"),
    "report": ("scoopexec.report", "report_main", "summarise (and draw) a timeline recorded with --trace"),
}
LAUNCHER = ("scoopexec.cli", "launch_main")


def usage() -> str:
    lines = [
        "usage: python -m scoopexec [-n N] [--hosts HOST ...] [--hostfile FILE] script.py [args ...]",
        "       python -m scoopexec SUBCOMMAND [options]",
        "",
        "  script.py  run a program with a pool active (SCOOP-style; see --help)",
    ]
    for name, (_, _, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m scoopexec ...``: a subcommand, else the program launcher."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
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
