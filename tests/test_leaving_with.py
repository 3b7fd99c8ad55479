"""Leaving `with ScoopExecutor()`, shutdown(), and done-callbacks: every wait bounded or interruptible.

- An exception leaving the block cancels what has not started and waits only for what runs,
  saying which tasks it waits for; Ctrl-C then abandons them (before issue 18: 20 queued tasks of
  3 s on 2 workers, all run, 30 s, silently).
- A normal exit and shutdown(wait=True) still wait for every pending task, as any Executor.
- A shutdown never waits on a stuck I/O thread for ever: it says where the thread is stuck.
- Done-callbacks, output and log handlers run with no scoopexec lock held, and may shut the pool
  down themselves.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from scoopexec import BrokenScoopExecutor, ScoopExecutor
from tests import faulty, helpers
from tests.conftest import ROOT
from tests.helpers import sleep_and_return, touch_then_wait


def _log_warning(msg: str) -> str:
    logging.getLogger("test.task").warning(msg)
    return msg


@pytest.mark.timeout(60)
def test_an_exception_leaving_with_cancels_queued_tasks_and_names_the_running_ones(caplog, tmp_path):
    caplog.set_level(logging.WARNING, logger="scoopexec")
    gate = tmp_path / "gate"
    started = [tmp_path / f"started-{i}" for i in range(20)]
    opener = threading.Timer(2.5, gate.touch)  # the running tasks end after the first report
    with pytest.raises(ZeroDivisionError):
        with ScoopExecutor(2) as ex:
            assert ex.submit(abs, -1).result(timeout=60) == 1  # both workers are up
            fs = [ex.submit(touch_then_wait, str(s), str(gate)) for s in started]
            while sum(s.exists() for s in started) < 2:
                time.sleep(0.01)
            t0 = time.monotonic()
            opener.start()
            1 / 0  # noqa: B018
    took = time.monotonic() - t0
    opener.join()
    ran = [i for i, s in enumerate(started) if s.exists()]
    assert len(ran) == 2
    assert [f.result(timeout=0) for i, f in enumerate(fs) if i in ran] == [str(started[i]) for i in ran]
    assert all(f.cancelled() for i, f in enumerate(fs) if i not in ran), "queued tasks were not cancelled"
    assert took < 20  # the running tasks' 2.5 s, not those of every task
    said = [r.getMessage() for r in caplog.records if "leaving the `with" in r.getMessage()]
    assert said, "it waited for running tasks without saying so"
    assert "because of ZeroDivisionError" in said[0]
    assert "cancelled 18 task(s) that had not started" in said[0]
    assert "waiting for 2 running task(s) to finish: touch_then_wait() running for" in said[0]


@pytest.mark.timeout(60)
def test_a_normal_exit_and_shutdown_still_wait_for_every_task():
    with ScoopExecutor(2) as ex:
        fs = [ex.submit(sleep_and_return, 0.05, i) for i in range(30)]
    assert [f.result(timeout=0) for f in fs] == list(range(30))
    ex = ScoopExecutor(2)
    fs = [ex.submit(sleep_and_return, 0.05, i) for i in range(30)]
    ex.shutdown(wait=True, cancel_futures=False)
    assert [f.result(timeout=0) for f in fs] == list(range(30))


@pytest.mark.timeout(60)
def test_ctrl_c_while_waiting_for_running_tasks_gets_out(tmp_path):
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as in a terminal
        "from scoopexec import ScoopExecutor\n"
        "import os, sys\n"
        "from tests.helpers import touch_then_wait\n"
        "if __name__ == '__main__':\n"
        "    tmp = sys.argv[1]\n"
        "    with ScoopExecutor(2) as ex:\n"
        "        print(*ex.worker_pids, flush=True)\n"
        "        started = [os.path.join(tmp, str(i)) for i in range(6)]\n"
        "        fs = [ex.submit(touch_then_wait, s, os.path.join(tmp, 'never')) for s in started]\n"
        "        while sum(os.path.exists(s) for s in started) < 2:\n"
        "            time.sleep(0.01)\n"
        "        raise ValueError('the error that leaves the block')\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT,
    )  # fmt: skip
    try:
        pids = [int(x) for x in p.stdout.readline().split()]
        assert len(pids) == 2
        seen = b""
        while b"Ctrl-C stops waiting" not in seen:  # it says what it waits for
            line = p.stderr.readline()
            assert line, seen.decode()
            seen += line
        assert b"waiting for 2 running task(s)" in seen
        t = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        took = time.monotonic() - t
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode != 0
    assert b"KeyboardInterrupt" in err and b"the error that leaves the block" in err
    assert took < 20  # the running tasks never end by themselves
    deadline = time.monotonic() + 10
    while any(helpers.running(x) for x in pids):
        assert time.monotonic() < deadline, "workers outlived the interrupted client"
        time.sleep(0.05)


def _wait_forever_in_a_callback(release: threading.Event, entered: list[str]):
    def stuck_callback(_f: cf.Future) -> None:
        entered.append(threading.current_thread().name)
        if entered[0] == "scoopexec-broker":  # (elsewhere: the test's assertion says so, at once)
            release.wait(30)  # past the test's wait for shutdown's report (it fails if none came)

    return stuck_callback


@pytest.mark.timeout(60)
def test_shutdown_says_where_a_stuck_io_thread_is_instead_of_waiting_for_ever(tmp_path):
    release = threading.Event()
    entered: list[str] = []
    go = tmp_path / "go"
    ex = ScoopExecutor(1)
    thread = ex._session.thread
    try:
        ex._session.stuck_after = 1.0  # seconds without a turn of its loop (30 s by default)
        # The callback must run on the pool's I/O thread, so nothing here waits on `first`: a
        # thread waiting on a result may read it in itself (broker/leader.py) and then runs its
        # callbacks (it did once, on a loaded machine: this test's main thread stuck 60 s).  The
        # task holds its worker until the callback is added (a future done before runs it at once).
        first = ex.submit(faulty.wait_for_file, str(go), 60)
        first.add_done_callback(_wait_forever_in_a_callback(release, entered))
        go.touch()
        deadline = time.monotonic() + 30
        while not entered:
            assert time.monotonic() < deadline, "the done-callback never ran"
            time.sleep(0.01)
        assert entered == ["scoopexec-broker"]
        later = ex.submit(abs, -2)  # its result cannot be delivered: the I/O thread is stuck
        t = time.monotonic()
        with pytest.raises(BrokenScoopExecutor, match=r"stuck_callback\(\) at test_leaving_with\.py"):
            ex.shutdown(wait=True)
        assert time.monotonic() - t < 20
        with pytest.raises(BrokenScoopExecutor, match="has not come back to its loop"):
            later.result(timeout=0)
        ex.shutdown(wait=True)  # again: harmless
    finally:
        release.set()
    thread.join(30)
    assert not thread.is_alive()


@pytest.mark.timeout(60)
def test_shutdown_from_a_done_callback_and_twice(tmp_path):
    ex = ScoopExecutor(2)
    thread = ex._session.thread
    called = threading.Event()
    errors: list[BaseException] = []

    where: list[str] = []

    def stop(_f: cf.Future) -> None:
        where.append(threading.current_thread().name)
        try:
            ex.shutdown(wait=True, cancel_futures=True)
            ex.shutdown(wait=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        called.set()

    # On the pool's I/O thread: the task holds its worker until the callback is added (one done
    # before would run it here at once), and nothing here waits on it (a waiting thread may
    # complete it itself: test_shutdown_says_where_a_stuck_io_thread_is_...).
    go = tmp_path / "go"
    f = ex.submit(faulty.wait_for_file, str(go), 60)
    f.add_done_callback(stop)
    queued = [ex.submit(sleep_and_return, 0.2, i) for i in range(10)]
    go.touch()
    assert called.wait(30)
    assert where == ["scoopexec-broker"]
    assert not errors
    ex.shutdown(wait=True)
    ex.shutdown(wait=False)
    assert f.result() is None
    assert all(q.done() for q in queued)
    assert not thread.is_alive() and ex._session.thread is None  # (joined: let go of)


@pytest.mark.timeout(60)
def test_callbacks_and_handlers_run_with_no_scoopexec_lock_held():
    held: list[tuple[str, bool]] = []

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name == "test.task":
                held.append(("log handler", lock.locked()))

    handler = Watch()
    logging.getLogger("test.task").addHandler(handler)
    try:
        with ScoopExecutor(2) as ex:
            lock = ex._session.broker.lock
            fs = [ex.submit(sleep_and_return, 0.01, i) for i in range(20)]
            for f in fs:
                f.add_done_callback(lambda _f: held.append(("done-callback", lock.locked())))
            assert ex.submit(_log_warning, "from a task").result(timeout=60) == "from a task"
            cf.wait(fs, timeout=60)
    finally:
        logging.getLogger("test.task").removeHandler(handler)
    assert ("log handler", False) in held
    assert sum(1 for what, _ in held if what == "done-callback") == 20
    assert not [h for h in held if h[1]], f"run under the broker's lock: {held}"


@pytest.mark.timeout(60)
def test_a_cancelled_futures_callback_runs_outside_its_lock():
    # Another thread may look at the future while its done-callback runs (cancel() used to run
    # the callbacks holding the future's condition: that thread waited until they ended).
    with ScoopExecutor(1) as ex:
        ex.submit(sleep_and_return, 0.5)
        f = ex.submit(sleep_and_return, 0)
        answered = threading.Event()

        def callback(fut: cf.Future) -> None:
            t = threading.Thread(target=lambda: (fut.done(), answered.set()))
            t.start()
            t.join(5)

        f.add_done_callback(callback)
        assert f.cancel()
        assert answered.is_set(), "the callback ran holding the future's lock"
