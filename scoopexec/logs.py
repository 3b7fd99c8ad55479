"""Logging: the ``scoopexec`` logger, -v/-q, and log records that come from workers.

scoopexec logs through the standard ``logging`` module under the logger
``scoopexec`` (``scoopexec.broker``, ``scoopexec.worker``, ...), and is quiet
by default: nothing below WARNING shows unless asked for.  Command lines take
``-v`` (INFO: pools starting and stopping, workers joining and leaving), ``-vv``
(DEBUG) and ``-q`` (errors only); ``configure_logging(verbosity)`` is what
they call, and a program may call it too.

Records that tasks log on a worker travel to the client whose task logged
them and are handled there by the logger of the same name, carrying two
extra attributes, ``host`` and ``worker``.  The levels a worker logs at are
the client's: the root logger's and those set explicitly on named loggers
when the executor starts travel with the client's set-up (``levels()`` here,
``apply_levels()`` on the worker).  When the client has configured no
handler at all, warnings from workers are printed to stderr with where they
come from (``WARNING [worker node1:4250] myapp: ...``), rather than as the
bare message Python's last-resort handler would print.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import argparse  # (annotations only: a client imports no argparse, 2.4 ms)

__all__ = [
    "LOGGER",
    "WorkerAwareFormatter",
    "add_verbosity_options",
    "apply_levels",
    "configure_logging",
    "handle_remote_record",
    "level_for",
    "levels",
]

LOGGER = "scoopexec"
_HANDLER_FLAG = "_scoopexec_handler"


def level_for(verbosity: int) -> int:
    """The logging level for a verbosity: -v counts up, -q counts down, 0 is the default."""
    if verbosity >= 2:
        return logging.DEBUG
    if verbosity == 1:
        return logging.INFO
    if verbosity == 0:
        return logging.WARNING
    if verbosity == -1:
        return logging.ERROR
    return logging.CRITICAL + 1  # -qq: nothing at all


class WorkerAwareFormatter(logging.Formatter):
    """``LEVEL name: message``, with ``[worker W]`` for records a worker sent."""

    def __init__(self, timestamps: bool = False) -> None:
        super().__init__("%(asctime)s %(message)s" if timestamps else "%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line, naming its worker if a worker sent it."""
        worker = getattr(record, "worker", None)
        host = getattr(record, "host", None)
        where = ""
        if worker:
            # Worker names are HOST:PID unless named otherwise: add the host only when it says something.
            where = f" [worker {worker}]"
            if host and str(host) not in str(worker):
                where = f" [worker {worker} on {host}]"
        text = super().format(record)
        return f"{record.levelname}{where} {record.name}: {text}"


def configure_logging(verbosity: int = 0, *, stream: TextIO | None = None, timestamps: bool = False) -> None:
    """Set how much scoopexec says on stderr: the -v/-q of every command line.

    ``verbosity`` is the number of -v minus the number of -q.  Sets the level
    of the ``scoopexec`` logger and, unless the program configured logging
    itself (the root logger has handlers), gives it one stderr handler that
    names the worker of records coming from workers.  Calling it again only
    changes the level.
    """
    level = level_for(verbosity)
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    mine = [h for h in logger.handlers if getattr(h, _HANDLER_FLAG, False)]
    if logging.getLogger().handlers and not mine:
        return  # the program has its own handlers: they will show our records
    if not mine:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        setattr(handler, _HANDLER_FLAG, True)
        handler.setFormatter(WorkerAwareFormatter(timestamps))
        logger.addHandler(handler)
        logger.propagate = False  # shown once, by this handler
    elif stream is not None:
        for h in mine:
            if isinstance(h, logging.StreamHandler):
                h.setStream(stream)


def add_verbosity_options(parser: argparse.ArgumentParser) -> None:
    """Add -v/--verbose and -q/--quiet (counted) to a command line's parser."""
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="say more (-v: pools and workers starting and stopping; -vv: debugging)",
    )  # fmt: skip
    parser.add_argument("-q", "--quiet", action="count", default=0, help="say less (-q: errors only)")


def levels() -> dict[str, int]:
    """The levels workers should log at: the root logger's and every explicitly set one."""
    out = {"": logging.getLogger().level}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            out[name] = logger.level
    return out


def apply_levels(table: Any) -> None:
    """On a worker: take the client's levels (the output of levels(), from JSON)."""
    if not isinstance(table, dict):
        return
    for name, level in table.items():
        if isinstance(name, str) and isinstance(level, int) and not isinstance(level, bool):
            logger = logging.getLogger(name or None)
            if logger.level != level:  # (setLevel clears every logger's cache, a worker's first task waits)
                logger.setLevel(level)


def handle_remote_record(data: bytes) -> None:
    """Re-emit, in the client, a log record a worker sent (JSON from worker._ForwardLogs)."""
    d = json.loads(data)
    if not isinstance(d, dict):
        return
    record = logging.makeLogRecord({k: v for k, v in d.items() if k not in ("msg", "exc_text", "args")})
    record.msg = d.get("msg", "")
    record.args = None
    record.exc_text = d.get("exc_text") or None
    logger = logging.getLogger(record.name)
    if logger.hasHandlers():
        logger.handle(record)
        return
    # Nobody configured logging here: do what the last-resort handler would
    # (WARNING and above, to stderr), but say which worker it came from.
    if record.levelno >= logging.WARNING and logger.filter(record) and sys.stderr is not None:
        try:
            sys.stderr.write(WorkerAwareFormatter().format(record) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
