"""The command line: ``python -m scoopexec {worker,broker} ...``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "worker":
        from .worker import main as worker_main

        return worker_main(argv[1:])
    if argv and argv[0] == "broker":
        from .cli import broker_main

        return broker_main(argv[1:])
    print(
        "usage: python -m scoopexec worker --connect ADDR [-n N]\n"
        "       python -m scoopexec broker --bind ADDR",
        file=sys.stderr,
    )
    return 2


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
