"""Worker stdout/stderr and log records reach the client."""

from __future__ import annotations

import logging
import sys

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
