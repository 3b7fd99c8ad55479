"""Runaway tasks (issue 15): task_timeout, on real workers with real signals.

A task past its task_timeout gets KeyboardInterrupt; one that will not stop has its
worker process ended and replaced; what else that worker held runs elsewhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import threading
import time

import pytest

import scoopexec
import scoopexec.errors
from scoopexec import ScoopExecutor, TaskTimeoutError, WorkerLostError
from tests.helpers import ignore_interrupts
from tests.peers import standalone_broker_and_group


def sleeper(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def interrupted_note(seconds: float, path: str) -> int:
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        raise
    return os.getpid()


def stubborn(seconds: float) -> int:
    """Swallows KeyboardInterrupt and keeps going: only ending its process stops it."""
    ignore_interrupts(seconds)
    return os.getpid()


def parked(seconds: float) -> int:
    """Parks its greenlet (an event loop's sleep in a task parks, see worker._TaskSelector)."""
    asyncio.run(asyncio.sleep(seconds))
    return os.getpid()


def test_names_are_public():
    assert scoopexec.TaskTimeoutError is scoopexec.errors.TaskTimeoutError
    assert issubclass(TaskTimeoutError, TimeoutError)
    with pytest.raises(ValueError, match="task_timeout"):
        ScoopExecutor(1, task_timeout=0)
    with pytest.raises(TypeError, match="task_timeout"):
        ScoopExecutor(1, task_timeout="5")


def test_timeout_interrupts_the_task_first(tmp_path):
    note = str(tmp_path / "interrupted")
    with ScoopExecutor(1, task_timeout=0.5) as ex:
        pid = ex.submit(sleeper, 0).result(timeout=60)  # the worker is up
        t0 = time.monotonic()
        fut = ex.submit(interrupted_note, 30, note)
        with pytest.raises(TaskTimeoutError, match=r"interrupted_note.*task_timeout=0.5 s.*Keyboard"):
            fut.result(timeout=60)
        assert time.monotonic() - t0 < 20  # not the task's 30 s
        with open(note) as f:
            assert int(f.read()) == pid  # it saw KeyboardInterrupt, on its worker
        assert ex.submit(sleeper, 0).result(timeout=60) == pid  # that worker lives on
        assert ex.worker_pids == [pid]


def test_parked_task_times_out_too():
    with ScoopExecutor(1, task_timeout=0.5) as ex:
        pid = ex.submit(sleeper, 0).result(timeout=60)
        with pytest.raises(TaskTimeoutError, match="parked"):
            ex.submit(parked, 30).result(timeout=60)
        assert ex.submit(sleeper, 0).result(timeout=60) == pid


def test_stubborn_task_ends_its_worker_which_is_replaced_and_others_rerun():
    # One worker: the parked task and the stubborn one are on the same process.
    with ScoopExecutor(1, max_retries=2) as ex:
        old = ex.submit(sleeper, 0).result(timeout=60)
        other = ex.submit(parked, 2.0)  # parks on that worker for 2 s
        time.sleep(0.3)
        late = list(ex.map(stubborn, [30], task_timeout=0.5, on_timeout="late"))
        assert late == ["late"]
        pid = other.result(timeout=60)  # re-run on the replacement, not failed
        assert pid != old
        assert ex.worker_pids == [pid]  # the pool kept its size
        with pytest.raises(TaskTimeoutError, match="ended"):
            list(ex.map(stubborn, [30], task_timeout=0.5))
        deadline = time.monotonic() + 30
        while len(ex.worker_pids) != 1:  # between the exit seen and the replacement started: none
            assert time.monotonic() < deadline, ex.worker_pids
            time.sleep(0.02)
        assert ex.status().completed >= 2


def test_map_on_timeout_and_chunks():
    with ScoopExecutor(2) as ex:
        assert list(ex.map(sleeper, [0, 30, 0], task_timeout=0.5, on_timeout=-1))[1] == -1
        out = list(ex.map(sleeper, [0, 30, 0], task_timeout=0.5, on_timeout=-1, chunksize=3))
        assert out[1] == -1 and out[0] > 0 and out[2] > 0  # the chunk's other items went on
        it = ex.map(sleeper, [0, 30], task_timeout=0.5)
        assert next(it) > 0
        with pytest.raises(TaskTimeoutError):
            next(it)


def test_scoop_map_on_timeout():
    from scoopexec import scoop_map

    with ScoopExecutor(2):
        out = scoop_map(sleeper, [0, 30], task_timeout=0.5, on_timeout=-1)
        assert out[0] > 0 and out[1] == -1
        with pytest.raises(TaskTimeoutError):
            scoop_map(sleeper, [0, 30], task_timeout=0.5)


def slow_on_one(x: int, d: str) -> int:
    """x * x, leaving a file in d each time it runs; item 1 runs past any short time limit."""
    with open(os.path.join(d, f"{x}-{time.monotonic_ns()}"), "w"):
        pass
    if x == 1:
        time.sleep(30)
    return x * x


def test_journal_and_seed_with_timeouts(tmp_path):
    """A timed-out item reads as on_timeout, is not journaled, and runs again on a resume."""
    journal, marks = tmp_path / "run.journal", tmp_path / "marks"
    marks.mkdir()
    d = [str(marks)] * 3
    with ScoopExecutor(2) as ex:
        opts = {"task_timeout": 0.5, "on_timeout": -1, "journal": journal, "seed": 7}
        assert list(ex.map(slow_on_one, [0, 1, 2], d, **opts)) == [0, -1, 4]
        assert list(ex.map(slow_on_one, [0, 1, 2], d, **opts)) == [0, -1, 4]
    runs = sorted(name.split("-")[0] for name in os.listdir(marks))
    assert runs == ["0", "1", "1", "2"]


def test_a_seeded_maps_timeout_names_the_users_function():
    with ScoopExecutor(1) as ex:
        with pytest.raises(TaskTimeoutError, match=r"sleeper\(\)"):
            list(ex.map(sleeper, [30], task_timeout=0.5, seed=1))


def test_journal_with_on_timeout_records_every_result_of_an_ordered_map(tmp_path):
    """With on_timeout, only the done-callbacks record, and a future wakes its waiter before it
    runs them: the ordered map must wait for the last ones before it closes the journal."""
    from scoopexec.journal import entries

    journal = tmp_path / "j"
    with ScoopExecutor(2) as ex:
        for _ in range(3):
            journal.unlink(missing_ok=True)
            out = list(ex.map(abs, range(-40, 0), task_timeout=5, on_timeout=None, journal=journal))
            assert out == list(range(40, 0, -1))
            assert len(list(entries(journal))) == 40


# ------------------------------------------------------------------ ex.cancel()
def noted(seconds: float, path: str) -> int:
    """Says it started (PATH.started); says it was interrupted (PATH) if it was."""
    with open(path + ".started", "w") as f:
        f.write(str(os.getpid()))
    return interrupted_note(seconds, path)


def parent_of_noted(paths: list[str]) -> list[int]:
    fs = [scoopexec.submit(noted, 30, p) for p in paths]
    return [f.result() for f in fs]


def _wait_for(path: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)
    time.sleep(0.05)  # written
    with open(path) as f:
        return f.read()


def thread_names(_=None) -> list[str]:
    import threading

    return sorted(t.name for t in threading.enumerate())


def test_the_watchdog_thread_starts_with_the_first_limit_not_before():
    # A thread started before a worker's first task delays that task (Thread.start() waits for
    # it to run): a pool without limits runs none; the first task_timeout starts it, and it works.
    with ScoopExecutor(1) as ex:
        assert "scoopexec-watchdog" not in ex.submit(thread_names).result(timeout=60)
        with pytest.raises(TaskTimeoutError):
            list(ex.map(sleeper, [30], task_timeout=0.3))
        assert "scoopexec-watchdog" in ex.submit(thread_names).result(timeout=60)
    with ScoopExecutor(1, worker_max_lifetime=600) as ex:  # a recycler: watched from the start
        assert "scoopexec-watchdog" in ex.submit(thread_names).result(timeout=60)


def test_cancel_pending_is_fut_cancel():
    with ScoopExecutor(1) as ex:
        busy = ex.submit(sleeper, 1.0)
        queued = ex.submit(sleeper, 0)
        assert ex.cancel(queued) is True and queued.cancelled()
        assert busy.result(timeout=60) > 0
        assert ex.cancel(busy) is False  # done: nothing to cancel


def test_cancel_running_interrupts_the_task(tmp_path):
    note = str(tmp_path / "n")
    with ScoopExecutor(1) as ex:
        fut = ex.submit(noted, 30, note)
        pid = int(_wait_for(note + ".started"))
        assert not fut.cancel()  # the stdlib's cancel() cannot stop it
        assert ex.cancel(fut) is True
        assert fut.cancelled()
        assert int(_wait_for(note, 20)) == pid  # KeyboardInterrupt inside the task
        assert ex.submit(sleeper, 0).result(timeout=60) == pid  # its worker lives on


def test_cancel_force_ends_the_process_which_is_replaced(tmp_path):
    note = str(tmp_path / "n")
    with ScoopExecutor(1) as ex:
        other = ex.submit(parked, 2.0)  # parked on the same worker: runs again elsewhere
        fut = ex.submit(noted, 30, note)
        pid = int(_wait_for(note + ".started"))
        assert ex.cancel(fut, force=True) is True and fut.cancelled()
        new = other.result(timeout=60)
        assert new != pid and ex.worker_pids == [new]
        assert not os.path.exists(note)  # ended, not interrupted


def test_cancel_reaches_nested_children(tmp_path):
    paths = [str(tmp_path / f"c{i}") for i in range(2)]
    with ScoopExecutor(3) as ex:
        parent = ex.submit(parent_of_noted, paths)
        for p in paths:
            _wait_for(p + ".started")
        assert ex.cancel(parent) is True
        for p in paths:
            _wait_for(p, 20)  # each child got KeyboardInterrupt


# --------------------------------------------- terminate_workers / kill_workers
@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_break_the_pool(method):
    import psutil

    ex = ScoopExecutor(2)
    try:
        running = [ex.submit(stubborn, 30) for _ in range(2)]
        queued = [ex.submit(sleeper, 0) for _ in range(3)]
        deadline = time.monotonic() + 30
        while not all(f.running() for f in running):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # started there
        procs = [psutil.Process(p) for p in ex.worker_pids]
        getattr(ex, method)()
        _, alive = psutil.wait_procs(procs, timeout=10)  # (their status: the pool reaps them first)
        assert not alive
        for f in running:
            with pytest.raises(cf.BrokenExecutor, match=method):
                f.result(timeout=30)
        for f in queued:
            assert f.cancelled() or isinstance(f.exception(timeout=30), cf.BrokenExecutor)
        with pytest.raises((RuntimeError, cf.BrokenExecutor)):
            ex.submit(sleeper, 0)
        assert ex.broken and method in ex.broken
    finally:
        ex.shutdown(wait=True)


# ------------------------------------------------------------- recycling workers
def grow(step_mib: int, steps: int, pause: float) -> int:
    """Allocates ``steps`` chunks of ``step_mib`` MiB (touched), pausing between them; keeps none."""
    hold = []
    for _ in range(steps):
        hold.append(bytearray(b"\x01") * (step_mib << 20))
        time.sleep(pause)
    return os.getpid()


_LEAK: list[bytearray] = []


def leak(mib: int) -> int:
    """Keeps ``mib`` MiB more in this worker process for good (what a leaking task does)."""
    _LEAK.append(bytearray(b"\x01") * (mib << 20))
    return os.getpid()


def test_max_tasks_per_child_replaces_the_worker_after_n_tasks():
    with ScoopExecutor(1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(sleeper, 0).result(timeout=60) for _ in range(6)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]
        deadline = time.monotonic() + 30
        while len(ex.worker_pids) != 1:  # the last one is being replaced
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_retiring_worker_is_replaced_when_it_exits_not_on_the_brokers_next_tick(monkeypatch):
    # The broker looked for exited workers on its tick only (every 50 ms): max_tasks_per_child=1
    # cost 50 ms a task (60 tasks: 1.5 s, against 0.1 s with multiprocessing.Pool).  With the
    # tick at 30 s here, 4 recycles within the 20 s below need the exit to be looked for at once.
    import scoopexec.broker.loop

    monkeypatch.setattr(scoopexec.broker.loop, "TICK", 30.0)
    with ScoopExecutor(1, max_tasks_per_child=1) as ex:
        ex.submit(sleeper, 0).result(timeout=60)  # (the first tick is behind)
        futs = [ex.submit(sleeper, 0) for _ in range(4)]
        pids = [f.result(timeout=20) for f in futs]
        assert len(set(pids)) == 4


def test_recycling_options_are_checked():
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        ScoopExecutor(1, max_tasks_per_child=0)
    with pytest.raises(ValueError, match=r"worker_memory_limit='2 gigs' is not a size.*GiB"):
        ScoopExecutor(1, worker_memory_limit="2 gigs")
    with pytest.raises(ValueError, match="worker_max_lifetime"):
        ScoopExecutor(1, worker_max_lifetime=-1)


def test_memory_limit_during_a_task_fails_that_task_not_the_others():
    from scoopexec import WorkerMemoryError

    with ScoopExecutor(1, worker_memory_limit="300MiB", max_retries=1) as ex:
        old = ex.submit(sleeper, 0).result(timeout=60)
        other = ex.submit(parked, 2.0)  # on the same worker: runs again on the next
        time.sleep(0.3)
        hog = ex.submit(grow, 50, 12, 0.1)  # up to 600 MiB, 50 MiB at a time
        with pytest.raises(WorkerMemoryError, match=r"worker_memory_limit=314572800 bytes \(300 MiB\)"):
            hog.result(timeout=60)
        assert other.result(timeout=60) != old
        assert ex.submit(grow, 50, 2, 0).result(timeout=60) != old  # a fresh process, and it works


def test_memory_limit_after_tasks_recycles_the_worker():
    from scoopexec import WorkerMemoryError

    with ScoopExecutor(1, worker_memory_limit="250MiB") as ex:
        outcomes = []
        for _ in range(12):  # 40 MiB more each: well past the limit in all
            fut = ex.submit(leak, 40)
            try:
                outcomes.append(fut.result(timeout=60))
            except WorkerMemoryError as exc:  # if it was seen during the task that crossed the limit
                assert "worker_memory_limit" in str(exc)
                outcomes.append(None)
        pids = [p for p in outcomes if p is not None]
        assert len(set(pids)) >= 2  # recycled (a fresh process starts with nothing leaked)
        assert outcomes.count(None) <= 2


def test_max_lifetime_retires_idle_workers_not_running_tasks():
    with ScoopExecutor(2, worker_max_lifetime=1.0) as ex:
        first = set(ex.worker_pids)
        # A task longer than the lifetime is never cut short.
        assert ex.submit(sleeper, 2.5).result(timeout=60) in first
        deadline = time.monotonic() + 30
        while set(ex.worker_pids) & first:
            assert time.monotonic() < deadline, "idle workers did not retire"
            time.sleep(0.1)
        assert ex.submit(sleeper, 0).result(timeout=60) not in first
        while len(ex.worker_pids) != 2:  # replaced (and they retire in turn: about every second)
            assert time.monotonic() < deadline, ex.worker_pids
            time.sleep(0.02)


# -------------------------------------------------------------- a poison task
def poison(x: int) -> int:
    """Kills every worker process it runs on (x == 3); the others return x."""
    if x == 3:
        os.kill(os.getpid(), 9)
        time.sleep(10)
    return x


def test_poison_task_fails_after_max_retries_naming_it_and_the_run_goes_on():
    from scoopexec import WorkerLostError

    with ScoopExecutor(2, max_retries=2) as ex:
        futs = [ex.submit(poison, i) for i in range(8)]
        for i, f in enumerate(futs):
            if i == 3:
                with pytest.raises(WorkerLostError, match=r"poison\(\).*lost 3 times.*max_retries=2") as info:
                    f.result(timeout=120)
                assert "SIGKILL" in str(info.value)
            else:
                assert f.result(timeout=120) == i
        assert list(ex.map(poison, [0, 1, 2], task_timeout=30)) == [0, 1, 2]  # the pool goes on
        deadline = time.monotonic() + 30
        while len(ex.worker_pids) != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_tasks_lost_with_a_poison_task_are_not_lost_with_it_again():
    # Tasks a killed worker held go back to the queue, the poison task among them, and used to
    # go out together again: an innocent one queued behind it, or done but not yet reported
    # before it, was lost with it every time, and failed with WorkerLostError.  A task that lost
    # a worker before now runs with nothing held behind it, and what is done goes out first.
    with ScoopExecutor(2, max_retries=1) as ex:
        assert list(ex.map(poison, range(3))) == [0, 1, 2]  # (its cost known: tasks ahead)
        for _ in range(3):
            futs = [ex.submit(poison, i) for i in range(40)]
            for i, f in enumerate(futs):
                if i == 3:
                    with pytest.raises(WorkerLostError, match=r"lost 2 times"):
                        f.result(timeout=120)
                else:
                    assert f.result(timeout=120) == i


def dies_once_then_nests(marker: str) -> int:
    """Kills its worker the first time; run again, it waits for 4 sub-tasks of its own."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), 9)
        time.sleep(10)
    futs = [scoopexec.submit(abs, -i) for i in range(4)]
    return sum(f.result() for f in futs)


def test_a_retried_task_that_waits_for_its_sub_tasks_on_a_pool_of_one_worker_ends(tmp_path):
    # Nothing goes to a worker while it runs a task that lost a worker before (scheduling.py),
    # but that task's own sub-tasks can run nowhere else here: the hold ends (HOLD_FOR).
    with ScoopExecutor(1, max_retries=2) as ex:
        t = time.monotonic()
        assert ex.submit(dies_once_then_nests, str(tmp_path / "died")).result(timeout=60) == 6
        assert time.monotonic() - t < 30


# ------------------------------------------------ the launcher, status, the timeline
LAUNCHED = """
import os, time
from scoopexec import TaskTimeoutError, futures

def slow(x):
    time.sleep(x)
    return os.getpid()

if __name__ == "__main__":
    pids = list(futures.map(slow, [0, 0, 0, 0]))
    try:
        list(futures.map(slow, [30]))
    except TaskTimeoutError as exc:
        print("timed out:", "task_timeout=0.5 s" in str(exc))
    print("distinct pids:", len(set(pids)))
"""


def test_launcher_takes_the_limits(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = tmp_path / "prog.py"
    script.write_text(LAUNCHED)
    argv = [sys.executable, "-m", "scoopexec", "-n", "1", "--task-timeout", "0.5", "--max-tasks-per-child",
            "1", "--worker-memory-limit", "1GiB", "--worker-max-lifetime", "600", str(script)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(argv, capture_output=True, env=env, timeout=120, cwd=tmp_path, check=False)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert "timed out: True" in out and "distinct pids: 4" in out  # one task per worker process
    bad = subprocess.run([*argv[:3], "--worker-memory-limit", "lots", str(script)], capture_output=True,
                         env=env, timeout=60, cwd=tmp_path, check=False)  # fmt: skip
    assert bad.returncode == 2 and b"worker_memory_limit='lots' is not a size" in bad.stderr


def test_status_and_timeline_show_what_limits_stopped(tmp_path):
    import json

    trace = tmp_path / "run.json"
    with ScoopExecutor(2, max_tasks_per_child=3, trace=str(trace)) as ex:
        assert list(ex.map(sleeper, [0, 30], task_timeout=0.5, on_timeout=-1))[1] == -1
        assert list(ex.map(stubborn, [30], task_timeout=0.5, on_timeout=-1)) == [-1]
        for _ in range(6):
            ex.submit(sleeper, 0).result(timeout=60)
        deadline = time.monotonic() + 30
        while (st := ex.status()).stopped.get("workers recycled", 0) < 2:
            assert time.monotonic() < deadline, st.stopped
            time.sleep(0.05)
        assert st.stopped["timed out"] == 2
        assert "2 timed out" in str(st) and "workers recycled" in str(st)
    events = json.loads(trace.read_text())["traceEvents"]
    statuses = [e["args"]["status"] for e in events if e.get("cat") == "task"]
    assert statuses.count("timed out") == 2 and statuses.count("ok") >= 7


# ---------------------------------------- a standalone broker, a hand-started worker group
def test_limits_through_a_standalone_broker_and_a_worker_group(tmp_path):
    with standalone_broker_and_group("--max-tasks", "2") as addr:
        with ScoopExecutor(broker=addr, task_timeout=5) as ex:
            pids = [ex.submit(sleeper, 0).result(timeout=60) for _ in range(4)]
            assert pids[0] == pids[1] != pids[2] == pids[3], pids  # the group replaced its recycled worker
            late = list(ex.map(stubborn, [30], task_timeout=0.5, on_timeout="late"))  # over ZeroMQ
            assert late == ["late"]
            note = str(tmp_path / "n")
            fut = ex.submit(noted, 30, note)
            pid = int(_wait_for(note + ".started"))
            assert ex.cancel(fut) and fut.cancelled()
            assert int(_wait_for(note, 20)) == pid
            assert ex.submit(sleeper, 0).result(timeout=60) > 0


def logged(path: str, i: int, size: int) -> tuple[int, bytes]:
    """Notes each run of item ``i`` (a line in ``path``); returns ``size`` bytes."""
    with open(path, "a") as f:
        f.write(f"{i}\n")
    return os.getpid(), b"x" * size


def logged_stubborn(path: str, seconds: float) -> int:
    with open(path, "a") as f:
        f.write("stubborn\n")
    return stubborn(seconds)


def test_a_worker_recycled_over_zeromq_delivers_its_last_result_before_it_exits(tmp_path):
    """A worker that retires (--max-tasks) sends its last result and BYE, then exits at once:
    ZeroMQ's I/O thread went with it before sending them (a large result almost always), so the
    broker saw a lost worker and ran that task again on the next one ([A, B, C, D] below, each
    task of the second per worker run twice).  Each task runs once; what the worker held queued
    when it said BYE runs elsewhere, once."""
    runs = str(tmp_path / "runs")
    with standalone_broker_and_group("--max-tasks", "2") as addr:
        with ScoopExecutor(broker=addr) as ex:
            size = 4_000_000
            got = [ex.submit(logged, runs, i, size).result(timeout=60) for i in range(4)]
            pids = [pid for pid, _ in got]
            assert all(len(blob) == size for _, blob in got)
            assert pids[0] == pids[1] != pids[2] == pids[3], pids
            with open(runs) as f:
                assert f.read().split() == ["0", "1", "2", "3"]  # each ran once
            os.remove(runs)
            # Many at once: a retiring worker holds prefetched ones, queued again on its BYE.
            out = list(ex.map(logged, [runs] * 12, range(12), [0] * 12, timeout=120))
            assert len({pid for pid, _ in out}) >= 6  # 2 tasks per worker
            with open(runs) as f:
                assert sorted(int(x) for x in f.read().split()) == list(range(12))  # none lost, none twice
            os.remove(runs)
            # A task that will not stop: its error is sent, then its process ends (the same wait).
            late = list(ex.map(logged_stubborn, [runs], [30], task_timeout=0.5, on_timeout="late"))
            assert late == ["late"]
            with open(runs) as f:
                assert f.read().split() == ["stubborn"]  # not run again elsewhere


class _RecordingExecutor(ScoopExecutor):
    """Overrides submit(), as a subclass that bounds or counts what it runs does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads = []
        self.names = set()

    def submit(self, fn, /, *args, **kwargs):
        self.threads.append(threading.current_thread().name)
        fut = super().submit(fn, *args, **kwargs)
        self.names.add(fut._what)  # (what messages and the timeline call the task)
        return fut


def test_an_overridden_submit_keeps_each_calls_time_limit():
    # map's tasks go through a submit() that a subclass overrides; ScoopExecutor.submit's own
    # limit must then not be put around a whole chunk, nor over the map's own task_timeout.
    with _RecordingExecutor(2, task_timeout=1) as ex:
        assert all(list(ex.map(sleeper, [0.4] * 3, chunksize=3)))  # 1.2 s a chunk, 0.4 a call
        assert all(list(ex.map(sleeper, [1.5], task_timeout=3)))  # the map's limit, not the pool's
        assert all(list(ex.map(sleeper, [0.4] * 3, chunksize="auto")))
        pool = scoopexec.Pool(executor=ex)
        assert all(pool.map(sleeper, [0.4] * 3, chunksize=3))
        pool.close()
        pool.join()
        with pytest.raises(TaskTimeoutError):
            list(ex.map(sleeper, [0.1, 30], chunksize=2))  # (and a call past it still stops)
        assert len(ex.threads) >= 5  # (every map went through it: 1 + 1 + 1 or more + 1 + 1)
        assert ex.names == {"test_limits.sleeper"}  # (named by the user's function, not a wrapper)


def test_the_rest_of_a_chunk_whose_worker_was_ended_is_not_resent_through_an_overridden_submit():
    # The rest of a chunk goes again from a done-callback, on the pool's thread that settles
    # futures: a subclass's submit() may block there (waiting for a slot its results free).
    with _RecordingExecutor(2) as ex:
        out = list(ex.map(stubborn, [0, 30, 0], task_timeout=0.5, on_timeout=-1, chunksize=3))
        assert out[1] == -1 and out[0] != out[2]  # the third ran again, on another process
        assert ex.threads == [threading.current_thread().name]
