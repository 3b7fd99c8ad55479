"""A pool's worker template is a fork of the client when the client runs one thread
(deploy/clientfork.py), else a fresh interpreter.

Issue 17: a fresh template cost ~0.13 s (interpreter start and imports) before the first
worker, and each worker then imported the user's main module again; ProcessPoolExecutor's
workers are forks of the client.  These tests pin down which path is taken and what a fork of
the client must not carry over: the client's atexit handlers, signal handlers, logging
handlers, the import of the main module, and the template's own stdin pipe (its end of file
is how it learns the client is gone).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from scoopexec import ScoopExecutor
from scoopexec.deploy import clientfork
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork start is Linux only")


def _origin(ex: ScoopExecutor) -> str:
    return ex._session.workers.local.template.origin


def getsignal_is_default(sig: int) -> bool:
    return signal.getsignal(sig) == signal.SIG_DFL


def root_handlers() -> list[str]:
    return [type(h).__name__ for h in logging.getLogger().handlers]


def _single_threaded(within: float = 10.0) -> bool:
    """Whether this process runs one thread, once what an earlier test left has ended."""
    deadline = time.monotonic() + within
    while not clientfork.single_threaded() and time.monotonic() < deadline:
        time.sleep(0.05)
    return clientfork.single_threaded()


@pytest.fixture(autouse=True)
def _settled() -> None:
    # pyzmq's garbage-collector thread, if an earlier test's large send started it (a pool's
    # start stops it too, but these tests count threads before that)
    clientfork._stop_idle_zmq_collector()
    _single_threaded()  # (a thread an earlier test left, ending: these tests need one thread)


def test_a_single_threaded_client_forks_the_template() -> None:
    # pytest runs no thread of its own, and the conftest loads numpy without BLAS threads: the
    # pools of the test suite take the default path.
    assert _single_threaded(), [t.name for t in threading.enumerate()]
    with ScoopExecutor(max_workers=2) as ex:
        assert _origin(ex) == "client"
        template = ex._session.workers.local.template.proc.pid
        assert psutil.Process(template).ppid() == os.getpid()
        assert sorted(ex.map(abs, range(-8, 0))) == list(range(1, 9))
        assert {psutil.Process(p).ppid() for p in ex.worker_pids} == {template}


def test_another_thread_running_means_a_fresh_template() -> None:
    release = threading.Event()
    t = threading.Thread(target=release.wait, args=(60,), daemon=True)
    t.start()
    try:
        assert not clientfork.single_threaded()
        with ScoopExecutor(max_workers=2) as ex:
            assert _origin(ex) == "interpreter"
            assert sorted(ex.map(abs, range(-8, 0))) == list(range(1, 9))
    finally:
        release.set()
        t.join(10)


def test_a_fresh_template_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # mp_context= a 'spawn' context: workers that inherit nothing, as ProcessPoolExecutor's.
    with ScoopExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as ex:
        assert _origin(ex) == "interpreter"
        assert ex.submit(abs, -3).result(timeout=60) == 3
    monkeypatch.setenv("SCOOPEXEC_WORKER_START", "template")
    with ScoopExecutor(max_workers=1) as ex:
        assert _origin(ex) == "interpreter"
    monkeypatch.setenv("SCOOPEXEC_WORKER_START", "forks")
    with pytest.raises(ValueError, match="SCOOPEXEC_WORKER_START='forks': expected one of fork, template, spawn"):
        ScoopExecutor(max_workers=1)


def env_value(name: str) -> str | None:
    return os.environ.get(name)


def import_only_there() -> str:
    import only_on_workers_path  # type: ignore[import-not-found]

    return only_on_workers_path.WHERE


def test_env_read_at_start_up_means_a_fresh_template(tmp_path) -> None:
    # A fork has started already: PYTHONPATH in env= would not reach its sys.path.
    (tmp_path / "only_on_workers_path.py").write_text("WHERE = 'found'\n")
    with ScoopExecutor(max_workers=1, env={"PYTHONPATH": str(tmp_path)}) as ex:
        assert _origin(ex) == "interpreter"
        assert ex.submit(import_only_there).result(timeout=60) == "found"
    assert _single_threaded()  # (the first pool's thread has ended)
    with ScoopExecutor(max_workers=1, env={"MY_SETTING": "1"}) as ex:  # one read later: a fork will do
        assert _origin(ex) == "client"
        assert ex.submit(env_value, "MY_SETTING").result(timeout=60) == "1"


def test_the_workers_get_fresh_signal_and_logging_handlers() -> None:
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    try:
        with ScoopExecutor(max_workers=1) as ex:
            assert _origin(ex) == "client"
            assert ex.submit(getsignal_is_default, signal.SIGUSR1).result(timeout=60)
            assert "StreamHandler" not in ex.submit(root_handlers).result(timeout=60)
    finally:
        logging.getLogger().removeHandler(handler)
        signal.signal(signal.SIGUSR1, previous)


def test_the_template_ends_on_its_stdin_alone() -> None:
    # It holds no copy of its stdin pipe's other end (else it would never see its end of file,
    # and would outlive a client that died).
    ex = ScoopExecutor(max_workers=1)
    try:
        template = ex._session.workers.local.template
        assert template.origin == "client"
        assert ex.submit(abs, -1).result(timeout=60) == 1
        workers = ex.worker_pids
        template.proc.stdin.close()  # what the client's death does; the template kills its workers
        template.proc.wait(30)
        assert not [p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    finally:
        ex.shutdown(wait=True)


SCRIPT = """
import atexit, functools, os, sys, textwrap
from scoopexec import ScoopExecutor

IMPORTS, EXITS = sys.argv[1], sys.argv[2]
with open(IMPORTS, "a") as fh:  # each process that runs this module's top level says so
    fh.write(f"{os.getpid()}\\n")


def record_exit():
    with open(EXITS, "a") as fh:
        fh.write(f"{os.getpid()}\\n")


def square(x):
    return x * x


if __name__ == "__main__":
    atexit.register(record_exit)
    textwrap.MARK = "set by the client before the pool"  # a module the task is sent by reference
    with ScoopExecutor(max_workers=2) as ex:
        assert ex._session.workers.local.template.origin == "client"
        print(ex.submit(functools.partial(getattr, textwrap, "MARK")).result(60))
        print(sorted(ex.map(square, range(6))))
        print(len(set(ex.worker_pids)), flush=True)
"""


def test_a_forked_worker_has_the_main_module_and_runs_none_of_the_clients_exit(tmp_path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    imports, exits = tmp_path / "imports", tmp_path / "exits"
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("SCOOPEXEC_WORKER_START", None)
    p = subprocess.run(
        [sys.executable, str(script), str(imports), str(exits)],
        capture_output=True, text=True, timeout=90, env=env, cwd=str(tmp_path), check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["set by the client before the pool", "[0, 1, 4, 9, 16, 25]", "2"]
    # Imported once, by the client: the workers have it from the fork (with a fresh template
    # each worker imported it again as __mp_main__: 1 + 2 lines).
    (client,) = imports.read_text().split()
    # The client's atexit handler ran in the client only, not in the template or a worker.
    assert exits.read_text().split() == [client]


def test_the_launchers_workers_still_import_the_script(tmp_path) -> None:
    """The launcher (python -m scoopexec script.py) makes the pool before the script runs: a
    fork then has none of it, so its workers import the script, as before."""
    script = tmp_path / "launched.py"
    script.write_text(
        textwrap.dedent(
            """
            import functools, textwrap
            import scoop.futures as futures
            textwrap.LAUNCHED = 5  # top level: run by whoever imports the script
            if __name__ == "__main__":
                print(list(futures.map(functools.partial(getattr, textwrap), ["LAUNCHED"] * 4)))
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("SCOOPEXEC_WORKER_START", None)
    p = subprocess.run(
        [sys.executable, "-m", "scoopexec", "-n", "2", str(script)],
        capture_output=True, text=True, timeout=90, env=env, cwd=str(tmp_path), check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[5, 5, 5, 5]"


_BLAS_SCRIPT = """
import json, os, sys
import numpy
from scoopexec import ScoopExecutor
from scoopexec.deploy import threadlibs


def on_worker():
    product = numpy.ones((64, 64)) @ numpy.ones((64, 64))
    return threadlibs.blas_threads(), float(product[0, 0])


if __name__ == "__main__":
    threadlibs.limit(2, None)  # this client's BLAS runs 2 threads, whatever the machine's cores
    threads = len(os.listdir("/proc/self/task"))
    with ScoopExecutor(max_workers=2) as ex:
        origin = ex._session.workers.local.template.origin
        seen = sorted(set(ex.map(lambda _: on_worker(), range(8))))
    print(json.dumps({"threads": threads, "origin": origin, "seen": seen, "client": threadlibs.blas_threads()}))
"""


def test_a_client_running_numpys_blas_threads_forks_and_its_workers_get_their_share(tmp_path) -> None:
    """NumPy's OpenBLAS starts its pool when it loads: a client that imported NumPy runs more
    than one thread.  OpenBLAS stops that pool around a fork, so the client is still forked,
    and its workers' BLAS gets the pool's share of the cores, as a fresh worker's environment
    gives it (a forked worker's OpenBLAS was loaded by the client, with the client's count)."""
    numpy = pytest.importorskip("numpy")
    from scoopexec.deploy import threadlibs

    if threadlibs.blas_threads() is None:
        pytest.skip(f"numpy {numpy.__version__} is not built with an OpenBLAS that can be asked")
    script = tmp_path / "blas_client.py"
    script.write_text(_BLAS_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.endswith(("NUM_THREADS", "MAXIMUM_THREADS"))}
    env["PYTHONPATH"] = ROOT
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, env=env, cwd=str(tmp_path)
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert got["threads"] == 2 and got["client"] == 2, got  # the client's pool: one thread besides its own
    assert got["origin"] == "client", got
    assert got["seen"] == [[share, 64.0]], got


# Reproductions from the review of the client fork (each failed before its fix).
SCRIPT_DUP = textwrap.dedent(
    """
    import contextlib, io
    from scoopexec import ScoopExecutor
    if __name__ == "__main__":
        print("written by the client once")  # stdout a file: block-buffered, not flushed yet
        with contextlib.redirect_stdout(io.StringIO()):
            with ScoopExecutor(max_workers=2) as ex:
                list(ex.map(abs, [-1, -2, -3]))
    """
)


def test_client_stdout_buffer_written_once(tmp_path):
    """The client's output still buffered in sys.__stdout__ (sys.stdout redirected) is written
    by the client alone, not again by the template and each forked worker when they end."""
    script = tmp_path / "dup.py"
    script.write_text(SCRIPT_DUP)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.pop("SCOOPEXEC_WORKER_START", None)
    env["PYTHONPATH"] = ROOT
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=100
    ).stdout
    assert out.count("written by the client once") == 1, out


SCRIPT_MASK = textwrap.dedent(
    """
    import faulthandler, os
    import numpy  # OpenBLAS pthreads pool: get_num_threads() - 1 threads, started at load
    from scoopexec.deploy import clientfork, threadlibs
    pid = os.fork()  # OpenBLAS's atfork handler stops its pool; it restarts only when next used
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    extra = (threadlibs.pool_threads() or 0)
    faulthandler.dump_traceback_later(600)  # a native thread that is no OpenBLAS thread
    print(len(os.listdir("/proc/self/task")), extra, clientfork.fork_safe())
    """
)


def test_fork_safe_not_fooled_by_dormant_openblas_pool():
    """After a fork, OpenBLAS's pool is stopped until next used: a thread of another kind must
    not pass for it (fork_safe starts the pool again before it counts)."""
    pytest.importorskip("numpy")
    env = {k: v for k, v in os.environ.items() if not k.endswith(("NUM_THREADS", "MAXIMUM_THREADS"))}
    env["PYTHONPATH"] = ROOT
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT_MASK], capture_output=True, text=True, timeout=100, env=env
    ).stdout.split()
    threads, pool, safe = int(out[0]), int(out[1]), out[2]
    if pool != 1:
        pytest.skip("the masking needs exactly one OpenBLAS pool thread (2 cores) for one watchdog")
    assert threads >= 2 and safe == "False", "a non-OpenBLAS native thread runs, yet fork_safe() says True"


SCRIPT_PY = textwrap.dedent(
    """
    import sys
    from scoopexec import ScoopExecutor
    def where(_):
        return sys.prefix
    if __name__ == "__main__":
        with ScoopExecutor(max_workers=1, python=sys.argv[1]) as ex:
            try:
                print(ex.submit(where, 0).result(timeout=60))
            except Exception as exc:  # the other venv lacks scoopexec: workers fail to start
                print("no worker:", type(exc).__name__)
    """
)


def test_python_of_another_venv_is_not_replaced_by_a_fork(tmp_path):
    """A second venv made from the same base Python resolves to the same binary: python= it
    must still give workers of that venv (a fresh template), not forks of this client."""
    base = os.path.realpath(sys.executable)
    other = tmp_path / "venv2"
    subprocess.run([base, "-m", "venv", "--without-pip", str(other)], check=True, timeout=60)
    script = tmp_path / "py.py"
    script.write_text(SCRIPT_PY)
    env = {k: v for k, v in os.environ.items() if k != "SCOOPEXEC_WORKER_START"}
    env["PYTHONPATH"] = ROOT
    out = subprocess.run(
        [sys.executable, str(script), str(other / "bin" / "python")],
        env=env, capture_output=True, text=True, timeout=100,
    ).stdout.strip()
    assert out != sys.prefix, "python= another venv was ignored: the worker ran in the client's venv"


SCRIPT_TZ = textwrap.dedent(
    """
    import time
    from scoopexec import ScoopExecutor
    def tz(_):
        return time.tzname[0]
    if __name__ == "__main__":
        with ScoopExecutor(max_workers=1, env={"TZ": "Asia/Tokyo"}) as ex:
            print(ex.submit(tz, 0).result(timeout=60))
    """
)


def test_env_tz_reaches_the_workers(tmp_path):
    """TZ is read when `time` loads (and LANG, LC_*, MALLOC_* at start-up): a fork keeps the
    client's, so env= naming one takes the fresh template."""
    script = tmp_path / "tz.py"
    script.write_text(SCRIPT_TZ)
    env = {k: v for k, v in os.environ.items() if k not in ("SCOOPEXEC_WORKER_START", "TZ")}
    env["PYTHONPATH"] = ROOT
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=100
    ).stdout.strip()
    assert out == "JST", out


def _record_order(monkeypatch: pytest.MonkeyPatch, fail_broker: bool = False) -> tuple[list[str], list[int]]:
    """Record when the pool makes its local workers and its broker (and, with ``fail_broker``,
    the pids of the template and its workers as the broker fails to be made)."""
    from scoopexec.client import embedded
    from scoopexec.deploy import forkstart

    order: list[str] = []
    pids: list[int] = []
    made: list[embedded.LocalWorkers] = []

    class Workers(embedded.LocalWorkers):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            order.append("workers")
            made.append(self)

    class FailingBroker(embedded.Broker):
        def __init__(self, *args, **kwargs):
            order.append("broker")
            if fail_broker:
                procs = [p for p in made[0].procs.values() if isinstance(p, forkstart.ForkedProcess)]
                forkstart.await_pids(procs, 30)
                pids.extend([made[0].template.proc.pid, *(p.pid for p in procs)])
                raise RuntimeError("no broker today")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(embedded, "LocalWorkers", Workers)
    monkeypatch.setattr(embedded, "Broker", FailingBroker)
    return order, pids


def test_the_template_forks_the_first_workers_while_the_broker_is_made(monkeypatch) -> None:
    # The workers' start (the template's forks, their set-up, HELLO on their links) overlaps the
    # broker's making; their links reach the broker once it exists, and the pool uses them all.
    order, _ = _record_order(monkeypatch)
    with ScoopExecutor(max_workers=2) as ex:
        assert _origin(ex) == "client"
        assert order == ["workers", "broker"]
        assert len(set(ex.map(_pid_after, [0.3] * 4, timeout=60))) == 2  # each of the two ran tasks
    order.clear()
    monkeypatch.setenv("SCOOPEXEC_WORKER_START", "template")  # a fresh one: started with the first worker
    with ScoopExecutor(max_workers=2) as ex:
        assert order == ["broker", "workers"]
        assert len(set(ex.map(_pid_after, [0.3] * 4, timeout=60))) == 2


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_workers_forked_before_a_broker_that_fails_are_ended_with_their_template(monkeypatch) -> None:
    _, pids = _record_order(monkeypatch, fail_broker=True)
    with pytest.raises(RuntimeError, match="no broker today"):
        ScoopExecutor(max_workers=2)
    assert len(pids) == 3
    assert [p for p in pids if _running(p)] == []  # ended before the error reached us, not after a grace


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_workers_asked_before_a_context_that_fails_are_ended_with_their_template(monkeypatch) -> None:
    # The template is asked for the workers before anything else of the pool is made (Session's
    # state, the ZeroMQ context): a failure there too ends them, and the template, at once.
    from scoopexec.client import embedded
    from scoopexec.deploy import forkstart

    made: list[embedded.LocalWorkers] = []
    pids: list[int] = []

    class Workers(embedded.LocalWorkers):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    def no_context() -> None:
        procs = [p for p in made[0].procs.values() if isinstance(p, forkstart.ForkedProcess)]
        forkstart.await_pids(procs, 30)
        pids.extend([made[0].template.proc.pid, *(p.pid for p in procs)])
        raise RuntimeError("no context today")

    monkeypatch.setattr(embedded, "LocalWorkers", Workers)
    monkeypatch.setattr(embedded.zmq, "Context", no_context)
    with pytest.raises(RuntimeError, match="no context today"):
        ScoopExecutor(max_workers=2)
    assert len(pids) == 3
    assert [p for p in pids if _running(p)] == []


def test_threads_polling_the_template_at_once_all_see_its_exit_status() -> None:
    # The broker's thread and a thread stopping the pool may poll() the template together; the
    # one that lost the race to waitpid() used to record exit status 1 over the real one (a
    # quarter of the rounds here, before ClientFork took a lock around its waitpid()).
    for _ in range(60):
        r, w = os.pipe()
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 7"], os.environ)  # (no fork of pytest)
        os.close(r)
        proc = clientfork.ClientFork(pid, w)
        seen: list[int | None] = []

        def poll_until_done(proc: clientfork.ClientFork = proc, seen: list[int | None] = seen) -> None:
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                pass
            seen.append(proc.returncode)

        pollers = [threading.Thread(target=poll_until_done) for _ in range(4)]
        for t in pollers:
            t.start()
        for t in pollers:
            t.join(15)
        proc.stdin.close()
        assert seen == [7, 7, 7, 7], seen


_AFTER_A_LARGE_SEND = """
import json, threading, sys
from scoopexec import ScoopExecutor

def big(n):
    return b"r" * n

if __name__ == "__main__":
    # An embedded pool serving a remote client sends it a large result without copying it:
    # pyzmq's garbage-collector thread starts, and lives on after both are closed.
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0") as ex:
        with ScoopExecutor(broker=ex.endpoint) as client:
            assert len(client.submit(big, 3_000_000).result(timeout=60)) == 3_000_000
    left = [t.name for t in threading.enumerate()]
    with ScoopExecutor(2, bind="tcp://127.0.0.1:0") as ex:
        origin = ex._session.workers.local.template.origin
        with ScoopExecutor(broker=ex.endpoint) as client:  # (pyzmq starts its thread again)
            again = len(client.submit(big, 3_000_000).result(timeout=60))
    print(json.dumps({"left": left, "origin": origin, "again": again}))
"""


def test_a_pool_after_a_large_zero_copy_send_still_forks_the_client(tmp_path) -> None:
    """pyzmq's garbage-collector thread (a zero-copy send of a large frame starts it, and it
    never ends by itself) is stopped when it is the only other thread and holds nothing: the
    next pool's template is a fork of the client, not a fresh interpreter (0.13 s more)."""
    script = tmp_path / "after_send.py"
    script.write_text(_AFTER_A_LARGE_SEND)
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("SCOOPEXEC_WORKER_START", None)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, env=env, cwd=str(tmp_path)
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(got["left"]) == 2, got  # the main thread and pyzmq's: the case this is about
    assert got["origin"] == "client", got
    assert got["again"] == 3_000_000, got
