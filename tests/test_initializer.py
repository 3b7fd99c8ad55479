"""initializer/initargs run in every worker; a failing one breaks the executor clearly."""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import time

import pytest

from scoopexec import InitializerError, ScoopExecutor
from scoopexec.errors import SerializationError
from tests import helpers


def test_initializer_runs_in_every_worker():
    with ScoopExecutor(max_workers=2, initializer=helpers.init, initargs=("initialized",)) as ex:
        futures = [ex.submit(helpers.get_init_status) for _ in range(8)]
        assert [f.result() for f in futures] == ["initialized"] * 8


def test_failing_initializer_breaks_the_executor(caplog):
    ex = ScoopExecutor(max_workers=2, initializer=helpers.init_fail)
    try:
        with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
            try:
                fut = ex.submit(helpers.get_init_status)
            except cf.BrokenExecutor:
                pass
            else:
                with pytest.raises(cf.BrokenExecutor):
                    fut.result(timeout=30)
            deadline = time.monotonic() + 30
            while not ex._broken and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ex._broken
            with pytest.raises(InitializerError, match="initializer"):
                ex.submit(helpers.get_init_status)
        assert any("ValueError: error in initializer" in r.getMessage() for r in caplog.records), [
            r.getMessage() for r in caplog.records
        ]
        # Said once, by the client: the worker's own record of it is for its own handlers only.
        said = [r for r in caplog.records if r.getMessage().startswith("Exception in initializer")]
        assert len(said) == 1, [r.getMessage() for r in said]
    finally:
        ex.shutdown(wait=True)


def _exit_unless_marked(marker):
    # The first worker to run it ends its process; the ones after it find the mark and return.
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)


@pytest.mark.timeout(120)
def test_an_initializer_that_ends_its_process_breaks_the_pool_instead_of_killing_workers_for_ever(tmp_path):
    # Before: each task was blamed for its worker's end and run again (WorkerLostError after 4
    # tries, "a task ended the process"), and a new worker was started for each: 84 processes
    # for 21 tasks.  ProcessPoolExecutor breaks its pool (BrokenProcessPool).
    with ScoopExecutor(2, initializer=os._exit, initargs=(1,)) as ex:
        futs = [ex.submit(abs, -i) for i in range(20)]
        with pytest.raises(InitializerError, match="ended 3 worker processes in a row before it returned") as info:
            futs[0].result(timeout=60)
        assert "exit" in str(info.value)
        for f in futs:
            assert isinstance(f.exception(timeout=60), cf.BrokenExecutor)
    # One worker ending in its initializer is survived: its tasks run on the next.
    marker = str(tmp_path / "mark")
    with ScoopExecutor(2, initializer=_exit_unless_marked, initargs=(marker,)) as ex:
        assert sorted(ex.map(abs, range(-20, 0))) == list(range(1, 21))


def test_initializer_must_be_callable_and_picklable():
    import multiprocessing
    import threading

    from scoopexec.worker import handover

    held = dict(handover._INHERITED)  # (what live pools of other tests hand over, if any)
    with pytest.raises(TypeError):
        ScoopExecutor(max_workers=1, initializer=42)  # type: ignore[arg-type]
    lock = threading.Lock()
    # Workers that start fresh cannot have a threading lock (forks of the client inherit it)...
    spawn = multiprocessing.get_context("spawn")
    with pytest.raises(SerializationError, match=r"cannot send the initializer to workers: TypeError.*lock"):
        ScoopExecutor(max_workers=1, initializer=helpers.init, initargs=(lock,), mp_context=spawn)
    # ... nor a Queue made in a fork context (Debian 12's Python 3.11.2 pickled its locks for a
    # spawned process, whose first put() then crashed it: SIGSEGV, until max_retries gave up).
    fork_queue = multiprocessing.get_context("fork").Queue()
    with pytest.raises(SerializationError, match=r"nor as to a spawned process: .*made in a fork context"):
        ScoopExecutor(max_workers=1, initializer=helpers.init, initargs=(fork_queue,), mp_context=spawn)
    fork_queue.close()
    # ... nor can workers that are not local: what only a process's start passes stays here.
    with pytest.raises(SerializationError, match="reaches local workers only"):
        ScoopExecutor(max_workers=1, initializer=helpers.init, initargs=(lock,), bind="tcp://127.0.0.1:0")
    # A refused pool keeps nothing of what it would have handed over to its workers.
    assert handover._INHERITED == held


START_WAYS = {
    "client fork": ({}, None),  # the default: workers forked from a fork of the client inherit it
    "spawn context": ({}, "spawn"),  # a fresh template: pickled for a spawned child, fds passed
    "by command": ({"SCOOPEXEC_WORKER_START": "spawn"}, "spawn"),  # each worker its own interpreter
}


@pytest.mark.parametrize("way", list(START_WAYS))
def test_initializer_is_handed_a_multiprocessing_queue(way, monkeypatch):
    # ProcessPoolExecutor's users pass a multiprocessing.Queue to the initializer (the logging
    # cookbook's recipe); it refuses to be pickled but for a process's start (worker/handover.py).
    import multiprocessing

    env, ctx_name = START_WAYS[way]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ctx = multiprocessing.get_context(ctx_name) if ctx_name else multiprocessing.get_context()
    q = ctx.Queue()
    kw = {"mp_context": ctx} if ctx_name else {}
    with ScoopExecutor(max_workers=2, initializer=helpers.init, initargs=(q,), **kw) as ex:
        assert list(ex.map(helpers.put_status, range(20))) == list(range(20))
        got = [q.get(timeout=30) for _ in range(20)]
    assert sorted(x for _, x in got) == list(range(20))
    assert os.getpid() not in {p for p, _ in got}  # put by the workers
    q.close()


def test_a_worker_without_the_clients_descriptors_refuses_the_initializer(tmp_path):
    # What was pickled for a spawned child names the client's descriptors; a process that does
    # not have them at those numbers (here: a fresh one, not started by the pool) says so.
    import multiprocessing
    import subprocess
    import sys

    from scoopexec.worker import handover

    q = multiprocessing.get_context("spawn").Queue()
    plain, data = handover.prepare(helpers.init, (q,), "RuntimeError: only through inheritance")
    try:
        assert plain["fds"] and data
        (tmp_path / "plain.json").write_text(json.dumps(plain))
        (tmp_path / "init.pickle").write_bytes(data)
        code = (
            "import json, sys; from scoopexec.worker import handover; "
            f"d = {str(tmp_path)!r}; "
            "plain = json.load(open(d + '/plain.json')); data = open(d + '/init.pickle', 'rb').read()\n"
            "try:\n    handover.receive(plain, data)\nexcept ValueError as e:\n    print(e)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        assert "only the client's local workers receive; this worker does not have it" in out.stdout, out
    finally:
        handover.forget(plain)
        q.close()


def test_initializer_gets_a_large_array_with_its_buffers():
    # initargs with a NumPy array large enough to travel out of band (serialize.OOB_MIN): its
    # buffer used to be left behind ("not enough out-of-band buffers" on every worker).
    import numpy as np

    with ScoopExecutor(max_workers=2, initializer=helpers.init, initargs=(np.ones(1_000_000),)) as ex:
        assert set(ex.map(helpers.status_sum, range(8))) == {1_000_000.0}


def test_a_failing_initializer_logs_in_the_worker_as_process_pool_executors_do():
    # CPython's own test: the initializer sends the worker's concurrent.futures records to a
    # queue, then fails; the worker logs "Exception in initializer" with its traceback there.
    import multiprocessing
    import queue

    q = multiprocessing.get_context().Queue()
    ex = ScoopExecutor(max_workers=1, initializer=helpers.init_fail_logging, initargs=(q,))
    try:
        with pytest.raises(cf.BrokenExecutor):
            ex.submit(helpers.get_init_status).result(timeout=60)
        record = q.get(timeout=30)
        assert record.levelname == "CRITICAL" and "ValueError: error in initializer" in record.getMessage()
        with pytest.raises(queue.Empty):  # once
            q.get(timeout=0.5)
    finally:
        ex.shutdown(wait=True)
        q.close()


def test_what_a_failing_initializer_put_in_a_queue_is_there_once_the_pool_is_broken():
    # CPython's test reads its log queue with get_nowait() as soon as the executor is broken:
    # the worker reports the failure only once its queues' feeder threads have written what was
    # put (here an item that takes 0.5 s to pickle, then the log record).
    import multiprocessing

    q = multiprocessing.get_context().Queue()
    ex = ScoopExecutor(max_workers=1, initializer=helpers.init_fail_after_slow_put, initargs=(q,))
    try:
        with pytest.raises(cf.BrokenExecutor):
            ex.submit(helpers.get_init_status).result(timeout=60)
        assert q.get_nowait() == "put before failing"
        assert "ValueError: error in initializer" in q.get_nowait().getMessage()
    finally:
        ex.shutdown(wait=True)
        q.close()


def test_lambda_initializer():
    with ScoopExecutor(max_workers=1, initializer=lambda: helpers.init("from lambda")) as ex:
        assert ex.submit(helpers.get_init_status).result() == "from lambda"


def test_process_pool_executor_arguments_in_its_order():
    # ScoopExecutor(max_workers, mp_context, initializer, initargs), as ProcessPoolExecutor.
    import multiprocessing

    with ScoopExecutor(1, multiprocessing.get_context("spawn"), helpers.init, ("positional",)) as ex:
        assert ex.submit(helpers.get_init_status).result(timeout=60) == "positional"


@pytest.fixture
def client_state(monkeypatch):
    """A module global the client changes at run time: a fork of it sees the change, a fresh
    interpreter the module's own value."""
    monkeypatch.setattr(helpers, "INIT_STATUS", "set in the client")


def test_a_fork_context_makes_forks_of_the_client_even_while_it_runs_threads(client_state):
    # ProcessPoolExecutor(mp_context=get_context("fork")): code written for 3.14's forkserver
    # default passes it to keep fork's inheritance, as do CPython's own fork-mixin tests.
    import multiprocessing
    import threading
    import warnings

    fork = multiprocessing.get_context("fork")
    with warnings.catch_warnings():  # (a thread an earlier test left would make it warn)
        warnings.simplefilter("ignore", DeprecationWarning)
        with ScoopExecutor(1, fork) as ex:
            assert ex.submit(helpers.get_init_status).result(timeout=60) == "set in the client"
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with ScoopExecutor(1) as ex:  # by default: another thread runs, so a fresh interpreter
            assert ex.submit(helpers.get_init_status).result(timeout=60) == "uninitialized"
        with pytest.warns(DeprecationWarning, match=r"is multi-threaded .*mp_context='fork'") as seen:
            ex = ScoopExecutor(1, fork)
        with ex:
            assert ex.submit(helpers.get_init_status).result(timeout=60) == "set in the client"
        assert seen[0].filename == __file__  # (the line that made the pool)
    finally:
        stop.set()
        thread.join()


def test_a_fork_context_whose_warning_is_an_error_leaves_no_process():
    import multiprocessing
    import threading
    import warnings

    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            with pytest.raises(DeprecationWarning, match="is multi-threaded"):
                ScoopExecutor(1, multiprocessing.get_context("fork"))
    finally:
        stop.set()
        thread.join()
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_fork_context_beside_a_running_pool_keeps_nothing_of_it_open():
    # The fork for the second pool copies the first one's pipes: its template held the first
    # template's stdin open, so that template never saw its end of file and was killed after 2 s.
    import multiprocessing

    with ScoopExecutor(1) as first:
        assert first.submit(helpers.get_init_status).result(timeout=60) == "uninitialized"
        template = first._session.workers.local.template
        with pytest.warns(DeprecationWarning, match="is multi-threaded"):
            second = ScoopExecutor(1, multiprocessing.get_context("fork"))
        with second:
            assert second.submit(helpers.get_init_status).result(timeout=60) == "uninitialized"
            first.shutdown()
            assert template.proc.returncode == 0, "the first pool's template ended on its own"


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"worker_memory_limit": "1G"}, "worker_memory_limit= is set"),
        ({"env": {"PYTHONPATH": "."}}, "env= sets PYTHONPATH"),
        ({"python": "/usr/bin/python3-other"}, "is another interpreter"),
        ({"broker": "tcp://127.0.0.1:1"}, "with broker=: a standalone broker's local workers start fresh"),
    ],
)
def test_a_fork_context_with_an_option_that_needs_fresh_workers_is_refused(options, why):
    import multiprocessing

    with pytest.raises(ValueError, match=f"'fork' start method cannot be honoured.*{why}"):
        ScoopExecutor(1, multiprocessing.get_context("fork"), **options)


def test_mp_context_that_cannot_be_honoured_is_refused():
    class Odd:
        def get_start_method(self):
            return "threads"

    with pytest.raises(ValueError, match="'threads' start method cannot be honoured"):
        ScoopExecutor(1, mp_context=Odd())
    with pytest.raises(TypeError, match="mp_context must be a multiprocessing context"):
        ScoopExecutor(1, mp_context="spawn")


SCRIPT_GLOBALS = """
import os, sys
from scoopexec import ScoopExecutor

G = None
COUNT = None
CACHE = {}


def init(x):
    global G, COUNT
    G = x
    COUNT = 0
    CACHE["k"] = x  # changed in place, not rebound


def get(_):
    return G, CACHE.get("k")


def count(_):
    global COUNT
    COUNT += 1
    return os.getpid(), COUNT


if __name__ == "__main__":
    with ScoopExecutor(max_workers=1, initializer=init, initargs=(42,)) as ex:
        print(list(ex.map(get, range(4))))
        print([c for _, c in (ex.submit(count, i).result() for i in range(5))])
"""


@pytest.mark.parametrize("start", ["fork", "template"])
def test_a_scripts_initializer_sets_globals_its_tasks_read(tmp_path, start):
    # ProcessPoolExecutor's usual pattern, all in the script: the initializer sets a global, the
    # tasks read it.  Both travel by value (cloudpickle), each with globals of its own: the tasks
    # saw the client's G (None), silently.  What a task sets there afterwards stays (COUNT).
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = tmp_path / "script_globals.py"
    script.write_text(SCRIPT_GLOBALS)
    env = dict(os.environ, PYTHONPATH=ROOT, SCOOPEXEC_WORKER_START=start)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[(42, 42), (42, 42), (42, 42), (42, 42)]", "[1, 2, 3, 4, 5]"], out


POOL_CHUNKS = """
import asyncio
from scoopexec import Pool, ScoopExecutor

G = "the client's"


def init(x):
    global G
    G = x


def get(*_):
    return G


async def amap(ex, **kw):
    return {r async for r in ex.amap(get, range(40), **kw)}


class Counting(ScoopExecutor):
    calls = 0

    def submit(self, fn, /, *args, **kwargs):
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


N = 0


def count(_):
    global N
    N += 1
    return N


if __name__ == "__main__":
    for limit in (None, 60):  # (with a task limit, each call of a chunk runs inside one)
        with Pool(2, initializer=init, initargs=("the worker's",), task_timeout=limit) as p:
            print(sorted(set(p.map(get, range(100)))))  # (chunks of 13)
            print(sorted(set(p.map(get, range(100), chunksize=1))))
            print(sorted(set(p.imap(get, range(100), chunksize=10))))
            print(sorted(set(p.starmap(get, [(i, i) for i in range(100)], chunksize=7))))
        with ScoopExecutor(2, initializer=init, initargs=("the worker's",), task_timeout=limit) as ex:
            print(sorted(asyncio.run(amap(ex, chunksize=4))))
            print(sorted(set(ex.map(get, range(100), chunksize=9))))
    for limit in (None, 60):  # one worker's module globals, from chunk to chunk, as in multiprocessing
        with Pool(1, task_timeout=limit) as p:
            print(p.map(count, range(20), chunksize=5))
    for limit in (None, 60):  # the same through a submit() that a subclass overrides
        with Counting(2, initializer=init, initargs=("the worker's",), task_timeout=limit) as ex:
            print(sorted(set(ex.map(get, range(100), chunksize=9))))
            print(sorted(set(ex.map(get, range(100), chunksize="auto"))))
            p = Pool(executor=ex)
            print(sorted(set(p.map(get, range(100)))))
            p.close()
            p.join()
            assert ex.calls > 10
    with Counting(1, task_timeout=60) as ex:
        p = Pool(executor=ex)
        print(p.map(count, range(20), chunksize=5))
        p.close()
        p.join()
"""


def test_a_pools_maps_in_chunks_see_the_globals_its_initializer_set(tmp_path):
    # multiprocessing's usual pattern with Pool.map: its default chunks ran the function as an
    # argument of a chunk runner, which the worker looked at for the script's namespace: the
    # initializer's globals went nowhere, and the tasks saw the client's G, silently (amap's
    # chunks too).  The function was unpickled afresh for each chunk, too: a global it counts
    # in started over at each chunk.
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = tmp_path / "pool_chunks.py"
    script.write_text(POOL_CHUNKS)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT), check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[:12] == ["[\"the worker's\"]"] * 12, out.stdout
    assert lines[12:14] == [str(list(range(1, 21)))] * 2, out.stdout
    assert lines[14:20] == ["[\"the worker's\"]"] * 6, out.stdout  # (through an overridden submit)
    assert lines[20] == str(list(range(1, 21))), out.stdout


TWO_POOLS = """
import sys
from scoopexec import ScoopExecutor

G = "the client's"


def init(x):
    global G
    G = x


def get(_):
    return G


if __name__ == "__main__":
    with ScoopExecutor(broker=sys.argv[1], initializer=init, initargs=("pool A's",)) as ex:
        print(ex.submit(get, 0).result(timeout=60))
    with ScoopExecutor(broker=sys.argv[1]) as ex:  # the same worker, no initializer
        print(ex.submit(get, 0).result(timeout=60))
"""


def test_a_pools_initializer_globals_stay_in_that_pool(tmp_path):
    # One worker serves two pools of a standalone broker: functions with the same pickle are
    # re-used across pools, and the first pool's initializer globals must not reach the second.
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.peers import standalone_broker_and_group

    script = tmp_path / "two_pools.py"
    script.write_text(TWO_POOLS)
    with standalone_broker_and_group() as addr:
        out = subprocess.run(
            [sys.executable, str(script), addr], capture_output=True, text=True, timeout=120,
            env=dict(os.environ, PYTHONPATH=ROOT), check=False,
        )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["pool A's", "the client's"], out


def test_a_pool_whose_initializer_was_handed_over_grows_on_this_host_only():
    import multiprocessing

    q = multiprocessing.get_context().Queue()
    with ScoopExecutor(max_workers=1, initializer=helpers.init, initargs=(q,)) as ex:
        with pytest.raises(SerializationError, match="reaches local workers only"):
            ex.add_workers(hosts=["node-that-is-not-here:1"])  # refused before any ssh
        ex.add_workers(1)
        assert sorted(ex.map(helpers.put_status, range(6))) == list(range(6))
        assert sorted(q.get(timeout=30)[1] for _ in range(6)) == list(range(6))
    q.close()


def test_what_workers_put_on_a_handed_over_queue_arrives_after_shutdown():
    # A worker's multiprocessing queue flushes its buffer in a thread of its own; multiprocessing
    # joins it as the process exits, and our workers end with os._exit (or a fork's dropped
    # atexit): 39-147 of 200 items of 20 KB arrived, when a thread drained the queue as here.
    import multiprocessing
    import queue
    import threading

    q = multiprocessing.get_context().Queue()
    got: list[int] = []

    def drain() -> None:
        while len(got) < 200:
            try:
                got.append(q.get(timeout=20)[0])
            except queue.Empty:
                return

    with ScoopExecutor(max_workers=2, initializer=helpers.init, initargs=(q,)) as ex:
        t = threading.Thread(target=drain)  # (after the pool's construction: it forks the client)
        t.start()
        assert sorted(ex.map(helpers.put_payload, range(200))) == list(range(200))
    t.join(30)
    assert sorted(got) == list(range(200))
    q.close()


def test_hosts_naming_only_this_host_count_as_local_workers():
    # hosts="localhost:1" starts its worker here, after the pool's broker (so fresh): a
    # spawn-context queue reaches it like any local worker's.
    import multiprocessing

    q = multiprocessing.get_context("spawn").Queue()
    with ScoopExecutor(hosts="localhost:1", initializer=helpers.init, initargs=(q,)) as ex:
        assert sorted(ex.map(helpers.put_status, range(4))) == list(range(4))
        assert sorted(q.get(timeout=30)[1] for _ in range(4)) == list(range(4))
    q.close()


def _wait_gone(pid: int, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while helpers.running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_workers_that_only_a_fork_can_set_up_are_not_replaced_by_fresh_ones_once_the_template_ended():
    # The pool's initializer holds a fork-context Queue: only inheritance passes it.  With its
    # template gone, a worker started by command failed its set-up and the pool broke with
    # InitializerError ("fix the initializer"): misleading, as nothing was wrong with it.
    import multiprocessing
    import signal

    q = multiprocessing.get_context("fork").Queue()
    ex = ScoopExecutor(max_workers=2, initializer=helpers.init, initargs=(q,))
    try:
        assert sorted(ex.map(helpers.put_status, range(4))) == list(range(4))
        template = ex._session.workers.local.template
        assert template is not None and template.origin == "client"
        os.kill(template.proc.pid, signal.SIGKILL)  # (the pool's own child: its pid, from the pool)
        _wait_gone(template.proc.pid)
        first, second = ex.worker_pids
        os.kill(first, signal.SIGKILL)
        _wait_gone(first)
        # One worker is left: the pool runs on with it, and says why the other is not replaced.
        deadline = time.monotonic() + 30  # (the broker learns the exit of a fork of a dead template late)
        while (len(ex.status().workers) > 1 or ex.worker_pids != [second]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(ex.map(helpers.put_status, range(4, 8))) == list(range(4, 8))
        assert ex.worker_pids == [second]  # (no replacement was started)
        os.kill(second, signal.SIGKILL)
        with pytest.raises(cf.BrokenExecutor) as info:
            ex.submit(helpers.put_status, 8).result(timeout=60)
        assert not isinstance(info.value, InitializerError), info.value
        text = str(info.value)
        assert "lost workers cannot be replaced: the pool's worker template (pid " in text, text
        assert "has ended, and a worker started otherwise cannot get the pool's initializer" in text, text
        assert "Queue objects should only be shared between processes through inheritance" in text, text
    finally:
        ex.shutdown(wait=True)
    q.close()  # (what the killed workers put may be lost with them: a queue's feeder thread sends it)


@pytest.mark.parametrize("attempt", range(3))  # (the broker used to miss exits reaped together: 2 runs in 5)
def test_a_pool_whose_lost_workers_cannot_be_replaced_breaks_when_all_die_at_once(attempt):
    import multiprocessing
    import signal

    q = multiprocessing.get_context("fork").Queue()
    ex = ScoopExecutor(max_workers=4, initializer=helpers.init, initargs=(q,))
    try:
        assert sorted(ex.map(helpers.put_status, range(8))) == list(range(8))
        template = ex._session.workers.local.template
        os.kill(template.proc.pid, signal.SIGKILL)
        _wait_gone(template.proc.pid)
        pids = ex.worker_pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        refused = "lost workers cannot be replaced: the pool's worker template"
        with pytest.raises(cf.BrokenExecutor, match=refused):
            ex.submit(helpers.put_status, 8).result(timeout=30)  # (a TimeoutError: the pool hung)
    finally:
        ex.shutdown(wait=True)
    q.close()
