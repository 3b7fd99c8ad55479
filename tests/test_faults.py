"""Faults: crashing, exiting, hanging and starving workers; bad tasks; Ctrl-C; dying clients."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time

import psutil
import pytest

from scoopexec import (
    MessageTooLargeError,
    RemoteError,
    ScoopExecutor,
    SerializationError,
    WorkerLostError,
)
from tests import faulty, helpers
from tests.conftest import ROOT


@pytest.fixture
def pool():
    # One pool per test, so that the check that no process is left behind
    # (conftest.py) holds for each: the replacements of crashed workers included.
    ex = ScoopExecutor(2, max_retries=1, heartbeat=0.2, heartbeat_timeout=1.0)
    yield ex
    ex.shutdown(wait=True)


# Crash table, after CPython's test_deadlock and loky's crash cases: what happens when a task or
# its result crashes / exits / raises while being pickled, unpickled or run.  Only the one future
# fails; the pool keeps working (checked after every row).
CRASH_TABLE = [
    ("error at task pickle (client)", id, (faulty.ErrorAtPickle(),), pickle.PicklingError),
    ("error at task unpickle (worker)", id, (faulty.ErrorAtUnpickle(),), SerializationError),
    ("exit at task unpickle (worker)", id, (faulty.ExitAtUnpickle(),), SerializationError),
    ("crash at task unpickle (worker)", id, (faulty.CrashAtUnpickle(),), WorkerLostError),
    ("error during execution", faulty.raise_error, (RuntimeError,), RuntimeError),
    ("exit during execution", faulty.exit_one, (), SystemExit),
    ("os._exit during execution", faulty.hard_exit, (), WorkerLostError),
    ("crash during execution", faulty.crash, (), WorkerLostError),
    ("error at result pickle (worker)", faulty.return_instance, (faulty.ErrorAtPickle,), pickle.PicklingError),
    ("exit at result pickle (worker)", faulty.return_instance, (faulty.ExitAtPickle,), SystemExit),
    ("crash at result pickle (worker)", faulty.return_instance, (faulty.CrashAtPickle,), WorkerLostError),
    ("error at result unpickle (client)", faulty.return_instance, (faulty.ErrorAtUnpickle,), SerializationError),
    ("exit at result unpickle (client)", faulty.return_instance, (faulty.ExitAtUnpickle,), SerializationError),
    ("exception that cannot be unpickled", faulty.raise_unloadable, (), RemoteError),
    ("exception that cannot be pickled", faulty.raise_unpicklable, (), RemoteError),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case,fn,args,expected", CRASH_TABLE, ids=[c[0] for c in CRASH_TABLE])
def test_crash_table(pool, case, fn, args, expected):
    fut = pool.submit(fn, *args)
    with pytest.raises(expected) as info:
        fut.result(timeout=120)
    if expected is WorkerLostError:
        text = str(info.value)
        assert "max_retries=1" in text and "pid" in text, text
    assert pool.submit(abs, -3).result(timeout=120) == 3, f"pool unusable after: {case}"


def test_lost_worker_error_names_task_host_worker_and_cause():
    with ScoopExecutor(1, max_retries=2) as ex:
        first = set(ex.worker_pids)
        with pytest.raises(WorkerLostError) as info:
            ex.submit(faulty.crash).result(timeout=120)
        text = str(info.value)
        assert "crash()" in text  # the task
        assert "signal 11 (SIGSEGV)" in text and "segmentation fault" in text  # the cause
        assert "lost 3 times" in text and "max_retries=2" in text
        assert "pid" in text and " on " in text  # the worker and its host
        assert ex.submit(abs, -1).result(timeout=60) == 1  # replaced, still usable
        assert set(ex.worker_pids).isdisjoint(first)


def test_sigkill_during_task_retries_elsewhere():
    with ScoopExecutor(2) as ex:
        fut = ex.submit(faulty.pid_after, 2.0)
        deadline = time.monotonic() + 30
        while not (fut.running() and _busy(ex)):
            assert time.monotonic() < deadline, "the task never reached a worker"
            time.sleep(0.01)
        (victim,) = _busy(ex)  # the worker that holds the task, and only that one
        os.kill(victim, signal.SIGKILL)
        pid = fut.result(timeout=60)
        assert pid != victim and pid in ex.worker_pids  # run again, on a live worker
        assert ex.submit(abs, -2).result(timeout=30) == 2
        deadline = time.monotonic() + 30
        while len(ex.worker_pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ex.worker_pids) == 2 and victim not in ex.worker_pids  # the dead one was replaced


def test_workers_killed_together_are_all_replaced():
    # The broker waits briefly for a lost worker's exit status, taking in every exit reaped
    # meanwhile; it used to stop at the worker it waited for and drop the exits reaped after it,
    # so killing 4 workers at once left a pool of 1 to 3 for good (4 runs in 4).
    with ScoopExecutor(4) as ex:
        for _ in range(2):
            assert sorted(ex.map(abs, range(-8, 0))) == list(range(1, 9))
            victims = ex.worker_pids
            assert len(victims) == 4
            for pid in victims:  # (the pool's own workers, by pid)
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            def replaced(victims: list[int] = victims) -> bool:
                pids = ex.worker_pids
                return len(pids) == 4 and not set(victims) & set(pids) and len(ex.status().workers) == 4

            while time.monotonic() < deadline and not replaced():
                time.sleep(0.05)
            assert len(ex.worker_pids) == 4 and not set(victims) & set(ex.worker_pids), ex.worker_pids
            assert len(ex.status().workers) == 4


def _busy(ex) -> list[int]:
    """The pids of the workers that hold a task now (from the pool's public status)."""
    return [w.pid for w in ex.status().workers if w.assigned and w.pid is not None]


def _holds_task(ex, pid):
    return pid in _busy(ex)


def test_hung_worker_is_replaced_and_its_task_rerun():
    with ScoopExecutor(2, heartbeat=0.2, heartbeat_timeout=1.0) as ex:
        for _ in range(4):
            ex.submit(abs, 1).result()
        fut = ex.submit(faulty.pid_after, 1.5)
        deadline = time.monotonic() + 30
        while not any(_holds_task(ex, p) for p in ex.worker_pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        (stopped,) = [p for p in ex.worker_pids if _holds_task(ex, p)]
        os.kill(stopped, signal.SIGSTOP)
        try:
            assert fut.result(timeout=60) != stopped
        finally:
            if psutil.pid_exists(stopped):
                try:
                    os.kill(stopped, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while psutil.pid_exists(stopped) and psutil.Process(stopped).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the hung local worker was not ended"
            time.sleep(0.05)


def test_late_result_of_a_resumed_worker_is_discarded(tmp_path):
    release = tmp_path / "release"
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0", heartbeat=0.2, heartbeat_timeout=1.0) as ex:
        ex.submit(abs, 1).result()
        own = set(ex.worker_pids)
        extra = subprocess.Popen(
            [sys.executable, "-m", "scoopexec", "worker", "--connect", ex.endpoint,
             "--heartbeat", "0.2", "--heartbeat-timeout", "30"],
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
        try:
            # Occupy the local worker until the extra one runs the next task (a fixed sleep of the
            # local worker ended first when the extra worker took over a second to start).
            blocker = ex.submit(faulty.wait_for_file, str(release), 60)
            deadline = time.monotonic() + 30
            fut = None
            while time.monotonic() < deadline:
                st = ex._session.broker.status()
                if any(w["pid"] == extra.pid for w in st["workers"]):
                    fut = ex.submit(faulty.pid_after, 1.5)
                    break
                time.sleep(0.05)
            assert fut is not None, "the extra worker never joined"
            while not any(w["pid"] == extra.pid and w["busy"] for w in ex._session.broker.status()["workers"]):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            release.touch()
            os.kill(extra.pid, signal.SIGSTOP)
            assert fut.result(timeout=60) in own  # re-run on the local worker
            blocker.result()
            os.kill(extra.pid, signal.SIGCONT)
            deadline = time.monotonic() + 20
            while ex._session.broker.ledger.dropped["stale result"] + ex._session.broker.ledger.dropped["unknown peer"] == 0:
                assert time.monotonic() < deadline, ex._session.broker.ledger.dropped
                time.sleep(0.05)
            assert ex._session.unmatched == 0  # nothing reached the client twice
        finally:
            release.touch()
            if extra.poll() is None:
                os.kill(extra.pid, signal.SIGCONT)
                extra.terminate()
            extra.wait(10)


def test_task_holding_the_gil_is_not_mistaken_for_a_hang():
    with ScoopExecutor(1, heartbeat=0.2, heartbeat_timeout=1.0) as ex:
        pid = ex.worker_pids[0]
        assert ex.submit(faulty.hold_the_gil, 3).result(timeout=60) == pid
        assert ex.worker_pids == [pid]
        assert not ex._session.broker.ledger.recent_losses


def test_memory_error_under_an_address_space_limit_fails_only_that_task():
    with ScoopExecutor(1, initializer=faulty.limit_address_space, initargs=(1024,)) as ex:
        with pytest.raises(MemoryError):
            ex.submit(faulty.allocate, 4096).result(timeout=60)
        assert ex.submit(faulty.allocate, 8).result(timeout=60) == 8 * 1024 * 1024


class MemoryCgroup:
    """A cgroup made by the test, with a memory limit: cgroup v2 (memory.max) or v1 (memory.limit_in_bytes).

    ``MemoryCgroup.create(limit)`` returns one, or a string that says why it
    cannot be made here (not root, no memory controller, no writable parent).
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls, limit: int) -> MemoryCgroup | str:
        if os.geteuid() != 0:
            return "not root"
        why = []
        for parent, files in _cgroup_parents():
            group = os.path.join(parent, f"scoopexec-oom-{os.getpid()}")
            try:
                os.mkdir(group)
            except OSError as exc:
                why.append(f"mkdir {group}: {exc}")
                continue
            try:
                for name, value in files(limit):
                    if name == "memory.swap.max" and not os.path.exists(os.path.join(group, name)):
                        continue  # no swap accounting: nothing to turn off
                    with open(os.path.join(group, name), "w") as fh:
                        fh.write(value)
            except OSError as exc:
                why.append(f"limit in {group}: {exc}")
                os.rmdir(group)
                continue
            return cls(group)
        return "; ".join(why) or "no cgroup v2 or v1 memory controller found (/proc/self/mountinfo)"

    def add(self, pid: int) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w") as fh:
            fh.write(str(pid))

    def remove(self) -> None:
        for _ in range(100):  # the killed process must be reaped before the group can go
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


def _cgroup_parents():
    """(directory to create a child cgroup in, files that set its memory limit), best first.

    cgroup v2: the nearest ancestor of this process's cgroup (or the root) that
    hands the memory controller to its children (``memory`` in
    cgroup.subtree_control; the root's can be switched on).  cgroup v1: this
    process's cgroup in the memory hierarchy.
    """
    mounts = {}
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fstype, _, options = right.split()[0], right.split()[1], right.split()[-1]
            point = left.split()[4]
            if fstype == "cgroup2":
                mounts.setdefault("v2", point)
            elif fstype == "cgroup" and "memory" in options.split(","):
                mounts.setdefault("v1", point)
    own = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                own[c] = path
    out = []
    v2 = mounts.get("v2")
    if v2 and "memory" in _read(os.path.join(v2, "cgroup.controllers")).split():
        path = os.path.normpath(v2 + own.get("", "/"))
        candidates = []
        while path.startswith(v2):
            candidates.append(path)
            if path == v2:
                break
            path = os.path.dirname(path)
        for c in candidates[1:] + candidates[:1]:  # own cgroup last: it may hold processes
            control = os.path.join(c, "cgroup.subtree_control")
            if "memory" not in _read(control).split() and c == v2:
                try:
                    with open(control, "w") as fh:
                        fh.write("+memory")
                except OSError:
                    continue
            if "memory" in _read(control).split():
                out.append((c, lambda limit: [("memory.max", str(limit)), ("memory.swap.max", "0")]))
                break
    v1 = mounts.get("v1")
    if v1 and "memory" in own:
        v1_files = lambda limit: [("memory.limit_in_bytes", str(limit))]  # noqa: E731
        out.append((os.path.normpath(v1 + own["memory"]), v1_files))
    return out


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


@pytest.mark.timeout(180)
def test_out_of_memory_kill_is_reported_as_such():
    group = MemoryCgroup.create(200 * 1024 * 1024)
    if isinstance(group, str):  # deliberately not on tests/allowed_skips.txt: CI must run this
        pytest.skip(f"cannot create a memory-limited cgroup to trigger a real OOM kill: {group}")
    try:
        with ScoopExecutor(1, max_retries=0) as ex:
            ex.submit(abs, 1).result(timeout=60)
            group.add(ex.worker_pids[0])
            with pytest.raises(WorkerLostError) as info:
                ex.submit(faulty.allocate, 1024).result(timeout=120)
            text = str(info.value)
            assert "SIGKILL" in text and "out-of-memory" in text, text
            assert ex.submit(abs, -5).result(timeout=60) == 5  # replacement, outside the group
    finally:
        group.remove()
    assert not os.path.exists(group.path)


def test_max_message_size_fails_only_the_oversized_task():
    with ScoopExecutor(1, max_message_size=1_000_000) as ex:
        with pytest.raises(MessageTooLargeError, match="max_message_size"):
            ex.submit(len, b"x" * 2_000_000).result(timeout=30)
        with pytest.raises(MessageTooLargeError, match="max_message_size"):
            ex.submit(bytes, 2_000_000).result(timeout=30)  # a 2 MB result
        assert ex.submit(len, b"x" * 1000).result(timeout=30) == 1000
        assert isinstance(MessageTooLargeError("x"), SerializationError)


def test_ctrl_c_in_a_client_exits_quickly_and_stops_workers():
    code = (
        "import signal, time\n"
        # A shell starts background jobs with SIGINT ignored, and that is inherited:
        # give the program the Ctrl-C of an interactive terminal.
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from scoopexec import ScoopExecutor\n"
        "if __name__ == '__main__':\n"
        "    with ScoopExecutor(2) as ex:\n"
        "        print(*ex.worker_pids, flush=True)\n"
        "        list(ex.map(time.sleep, [30] * 6))\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    pids = [int(x) for x in p.stdout.readline().split()]
    time.sleep(1.0)
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()  # reap it and close its pipes
    took = time.monotonic() - t
    assert p.returncode != 0 and b"KeyboardInterrupt" in err
    assert took < 20
    deadline = time.monotonic() + 10
    while any(helpers.running(x) for x in pids):
        assert time.monotonic() < deadline, "workers outlived the interrupted client"
        time.sleep(0.05)


def test_dead_client_tasks_are_dropped_by_a_standalone_broker(tmp_path):
    import socket

    from scoopexec.status import query

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=ROOT)
    broker = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "broker", "--bind", addr,
         "--heartbeat", "0.2", "--heartbeat-timeout", "1.0"],
        stdout=subprocess.PIPE, env=env,
    )
    broker.stdout.readline()
    workers = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "worker", "--connect", addr, "-n", "1"], env=env
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    client = None
    try:
        # 40 tasks of 0.5 s on one worker: 20 s of work, of which the client waits for the first.
        code = (
            "import time\n"
            "from scoopexec import ScoopExecutor\n"
            "from tests.compat_helpers import mark_and_sleep\n"
            f"ex = ScoopExecutor(broker={addr!r})\n"
            f"fs = [ex.submit(mark_and_sleep, {str(marks)!r}, i, 0.5) for i in range(40)]\n"
            "fs[0].result(timeout=60)\n"
            "print('running', flush=True)\n"
            "time.sleep(60)\n"
        )
        client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
        assert client.stdout.readline().strip() == b"running"
        client.kill()
        client.wait()
        client.stdout.close()
        started_before = len(list(marks.glob("start-*")))

        deadline = time.monotonic() + 30
        while True:
            st = query(addr, timeout=5)
            if st.raw["tasks"] == 0 and st.clients == 0:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.1)
        # Another client gets the worker: the dead one's queue is gone, not worked off.
        with ScoopExecutor(broker=addr) as ex:
            assert ex.submit(abs, -7).result(timeout=60) == 7
        time.sleep(1.0)  # a task started now would have marked it by now
        started = sorted(p.name for p in marks.glob("start-*"))
        # At most the one running at the kill and one handed over just then ran after it.
        assert len(started) <= started_before + 2, (started_before, started)
    finally:
        for p in (client, workers, broker):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(10)
        broker.stdout.close()


# The faults for which ProcessPoolExecutor raises BrokenProcessPool (CPython's test_deadlock): the
# error here is a BrokenProcessPool too, so code written for it still catches it, though only the
# one future failed.
BREAKS_A_PROCESS_POOL = [
    "error at task unpickle (worker)",
    "exit at task unpickle (worker)",
    "crash at task unpickle (worker)",
    "crash during execution",
    "crash at result pickle (worker)",
    "error at result unpickle (client)",
    "exit at result unpickle (client)",
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", BREAKS_A_PROCESS_POOL)
def test_faults_that_break_a_process_pool_raise_broken_process_pool(pool, case):
    from concurrent.futures.process import BrokenProcessPool

    _, fn, args, _ = next(row for row in CRASH_TABLE if row[0] == case)
    with pytest.raises(BrokenProcessPool):
        pool.submit(fn, *args).result(timeout=120)
    assert pool.submit(abs, -3).result(timeout=120) == 3
