"""Logging: the `scoopexec` logger, quiet by default, -v/-q, worker records with host and worker."""

from __future__ import annotations

import io
import logging
import re

from scoopexec import ScoopExecutor
from scoopexec.logs import configure_logging, level_for
from tests.conftest import run_script

POOL = """
import logging, os, signal, sys
from scoopexec import ScoopExecutor
from scoopexec.logs import configure_logging

def die_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()

if __name__ == "__main__":
    configure_logging(int(sys.argv[1]))
    with ScoopExecutor(2) as ex:
        ex.submit(die_once, os.path.join(os.getcwd(), "marker")).result(timeout=60)
    print("pids", *ex.worker_pids)
"""


def test_quiet_by_default_verbose_and_quieter_on_request():
    quiet = run_script(POOL, "-1")
    assert quiet.returncode == 0, quiet.stderr.decode()
    assert quiet.stderr.decode() == ""  # -q: even the lost worker is not mentioned

    default = run_script(POOL, "0")
    assert default.returncode == 0, default.stderr.decode()
    lines = default.stderr.decode().splitlines()
    assert len(lines) == 1, lines  # only the warning: a worker was lost
    lost = r"WARNING scoopexec\.broker: worker \S+ \(pid \d+ on \S+\) was lost with 1 task"
    assert re.match(lost, lines[0])
    assert "killed by signal 9 (SIGKILL)" in lines[0] and "dmesg" in lines[0]

    verbose = run_script(POOL, "1")
    assert verbose.returncode == 0, verbose.stderr.decode()
    err = verbose.stderr.decode()
    started = r"INFO scoopexec: pool \w+: embedded broker at ipc://\S+, 2 worker\(s\) started"
    assert re.search(started, err), err
    assert err.count("INFO scoopexec.broker: worker") >= 2 and "joined" in err
    assert re.search(r"INFO scoopexec: pool \w+ stopped after \d+ task", err), err
    assert "DEBUG" not in err


def test_worker_warnings_name_their_worker_when_logging_is_not_configured():
    r = run_script(
        """
import logging, os
from scoopexec import ScoopExecutor

def warn():
    logging.getLogger("myapp").warning("careful: %d", 42)
    return os.getpid()

if __name__ == "__main__":
    with ScoopExecutor(1) as ex:
        print(ex.submit(warn).result(timeout=60))
"""
    )
    assert r.returncode == 0, r.stderr.decode()
    pid = r.stdout.decode().strip()
    assert re.fullmatch(rf"WARNING \[worker [^\]]+:{pid}\] myapp: careful: 42\n", r.stderr.decode())


def _log_info():
    logging.getLogger("myapp.chatty").info("made %d widgets", 3)
    logging.getLogger("myapp.other").info("not forwarded: this logger was left at the default level")
    return True


def test_workers_log_at_the_levels_the_client_set(caplog):
    # caplog sets the level of "myapp.chatty" (only) to INFO, before the pool starts
    with caplog.at_level(logging.INFO, logger="myapp.chatty"), ScoopExecutor(1) as ex:
        assert ex.submit(_log_info).result(timeout=60)
    chatty = [r for r in caplog.records if r.name == "myapp.chatty"]
    assert len(chatty) == 1 and chatty[0].getMessage() == "made 3 widgets"
    assert chatty[0].levelno == logging.INFO and chatty[0].worker and chatty[0].host
    assert not [r for r in caplog.records if r.name == "myapp.other"]


def test_configure_logging_is_idempotent_and_defers_to_the_programs_handlers():
    logger = logging.getLogger("scoopexec")
    root = logging.getLogger()
    saved = (logger.level, list(logger.handlers), logger.propagate, list(root.handlers))
    try:
        for h in list(root.handlers):
            root.removeHandler(h)
        buf = io.StringIO()
        configure_logging(1, stream=buf)
        configure_logging(2, stream=buf)
        mine = [h for h in logger.handlers if getattr(h, "_scoopexec_handler", False)]
        assert len(mine) == 1 and logger.level == logging.DEBUG
        rec = logging.makeLogRecord(
            {"name": "scoopexec.broker", "levelno": logging.INFO, "levelname": "INFO", "msg": "hello",
             "worker": "node2:77", "host": "node2"}
        )  # fmt: skip
        logger.handle(rec)
        assert buf.getvalue() == "INFO [worker node2:77] scoopexec.broker: hello\n"
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]
        root.handlers[:] = saved[3]
    assert [level_for(v) for v in (-2, -1, 0, 1, 2, 3)] == [
        logging.CRITICAL + 1, logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG, logging.DEBUG,
    ]  # fmt: skip
