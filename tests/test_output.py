"""Worker stdout/stderr and log records reach the client."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from scoopexec.wire import protocol as P
from scoopexec.worker.channels import Outbox
from tests.conftest import run_script


def _speak(i):
    print(f"out {i}")
    print(f"err {i}", file=sys.stderr)
    print("partial", end="")
    return i


def test_prints_reach_client_streams(executor, capsys):
    assert executor.submit(_speak, 1).result() == 1
    executor.shutdown()
    out, err = capsys.readouterr()
    assert "out 1\n" in out
    assert "partial" in out
    assert "err 1\n" in err


def _many_lines(n):
    for i in range(n):
        print(f"line {i}")
    return n


def test_lines_in_order_per_worker(one_worker, capsys):
    one_worker.submit(_many_lines, 300).result()
    one_worker.shutdown()
    out, _ = capsys.readouterr()
    lines = [x for x in out.splitlines() if x.startswith("line ")]
    assert lines == [f"line {i}" for i in range(300)]


def _warn():
    logging.getLogger("myapp.sub").warning("careful: %d", 42)
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("myapp").exception("it failed")
    return True


def test_worker_log_records_reach_client_loggers(executor, caplog):
    with caplog.at_level(logging.WARNING):
        assert executor.submit(_warn).result()
        executor.shutdown()
    msgs = {r.name: r for r in caplog.records}
    assert msgs["myapp.sub"].getMessage() == "careful: 42"
    assert "ZeroDivisionError" in (msgs["myapp"].exc_text or "")
    assert msgs["myapp"].worker  # host and worker travel with the record


def test_script_output_ordering():
    r = run_script(
        """
        from scoopexec import ScoopExecutor
        def hello(i):
            print("task", i, flush=True)
            return i
        if __name__ == "__main__":
            with ScoopExecutor(1) as ex:
                for i in range(5):
                    ex.submit(hello, i).result()
            print("end")
        """
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split("\n")[:6] == [f"task {i}" for i in range(5)] + ["end"]


def test_a_flush_racing_a_finishing_task_sends_its_output_before_its_result():
    """A task appends its output, then its result, to the worker's outbox without the worker's
    lock, while the flusher thread may be flushing that outbox.  A result sent before its
    task's output made the broker hand that output to nobody (the task was over): the
    client lost a task's last line or log record (test_prints_reach_client_streams and
    test_lines_in_order_per_worker failed ~1 run in 3 on a busy machine).  Here one thread
    plays the finishing tasks and this one the flusher, with the GIL switching as often
    as it can: every result must come after its task's output."""
    sent: list[list[Any]] = []
    box = Outbox(sent.append)
    n = 20_000
    finished = threading.Event()

    def tasks() -> None:
        for i in range(1, n + 1):
            box.output((i, 1), b"last line\n", 0)
            box.results.append(((i, P.OK, 0, 0.0, 0.0), []))
        finished.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        t = threading.Thread(target=tasks)
        t.start()
        while not finished.is_set():
            box.flush(0)
        t.join()
    finally:
        sys.setswitchinterval(old)
    box.flush(0)
    printed: set[int] = set()
    early = []
    for frames in sent:
        msg = P.decode(frames)
        if msg.kind == P.OUTPUT:
            printed.update(e[0] for e in msg.entries)
        elif msg.kind == P.RESULT:
            early.extend(e[0] for e in msg.entries if e[0] not in printed)
    assert len(printed) == n
    assert not early, f"{len(early)} of {n} results were sent before their task's output"
