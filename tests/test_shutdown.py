"""shutdown(), context managers and interpreter exit (modelled on CPython's tests)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import psutil
import pytest

from scoopexec import ScoopExecutor
from scoopexec.client import interrupts
from scoopexec.deploy import local
from tests import helpers
from tests.conftest import run_script
from tests.helpers import sleep_and_return


def test_run_after_shutdown(executor):
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(pow, 2, 5)


def test_shutdown_is_idempotent(executor):
    executor.shutdown()
    executor.shutdown()
    executor.shutdown(wait=False, cancel_futures=True)


def test_shutdown_waits_for_pending_work():
    ex = ScoopExecutor(max_workers=2)
    fs = [ex.submit(time.sleep, 0.1) for _ in range(20)]
    ex.shutdown()
    for f in fs:
        assert f.done()
        f.result()


def test_shutdown_stops_workers_and_threads():
    before = threading.active_count()
    ex = ScoopExecutor(max_workers=2)
    pids = ex.worker_pids
    assert list(ex.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    ex.shutdown(wait=True)
    assert threading.active_count() == before
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_context_manager_shutdown():
    with ScoopExecutor(max_workers=2) as ex:
        pids = ex.worker_pids
        assert list(ex.map(abs, range(-3, 3))) == [3, 2, 1, 0, 1, 2]
    with pytest.raises(RuntimeError):
        ex.submit(abs, 1)
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_cancel_futures():
    ex = ScoopExecutor(max_workers=2)
    fs = [ex.submit(time.sleep, 0.1) for _ in range(50)]
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) > 20
    others = [f for f in fs if not f.cancelled()]
    for f in others:
        assert f.done()
        assert f.exception() is None
    assert others


def test_shutdown_no_wait_still_completes_work():
    ex = ScoopExecutor(max_workers=2)
    thread = ex._session.thread
    res = ex.map(abs, range(-5, 5))
    ex.shutdown(wait=False)
    assert list(res) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_hang_after_cancel_then_shutdown():
    ex = ScoopExecutor(max_workers=1)
    ex.submit(int).result()
    old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(RuntimeError("timed out")))
    try:
        signal.alarm(10)
        ex.submit(int).cancel()
        ex.shutdown(wait=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_garbage_collected_executor_stops_its_pool():
    import gc

    ex = ScoopExecutor(max_workers=1)
    link = ex._session
    assert ex.submit(abs, -2).result() == 2
    del ex
    gc.collect()
    assert link.closed.wait(30)


def test_interpreter_exit_waits_for_pending_work():
    r = run_script(
        """
        from scoopexec import ScoopExecutor
        from tests.helpers import sleep_and_print
        if __name__ == "__main__":
            t = ScoopExecutor(2)
            t.submit(sleep_and_print, 1.0, "apple")
        """
    )
    assert r.stderr == b"", r.stderr.decode()
    assert r.stdout.strip() == b"apple"
    assert r.returncode == 0


def test_interpreter_exit_after_shutdown_without_wait():
    r = run_script(
        """
        from scoopexec import ScoopExecutor
        from tests.helpers import sleep_and_print
        if __name__ == "__main__":
            t = ScoopExecutor(max_workers=2)
            t.submit(sleep_and_print, 1.0, "apple")
            t.shutdown(wait=False)
        """
    )
    assert r.stderr == b"", r.stderr.decode()
    assert r.stdout.strip() == b"apple"


def test_submit_after_interpreter_shutdown():
    r = run_script(
        """
        import atexit
        @atexit.register
        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise
        from scoopexec import ScoopExecutor
        if __name__ == "__main__":
            t = ScoopExecutor(2)
            t.submit(id, 42).result()
        """
    )
    assert "RuntimeError: cannot schedule new futures" in r.stderr.decode()
    assert r.stdout.strip() == b"runtime-error"


def test_exit_without_shutdown_leaves_no_worker():
    r = run_script(
        """
        import os, sys
        from scoopexec import ScoopExecutor
        if __name__ == "__main__":
            ex = ScoopExecutor(2)
            print(*ex.worker_pids)
            ex.submit(abs, 1).result()
            os._exit(0)  # no atexit, no shutdown: workers must notice and leave
        """
    )
    pids = [int(p) for p in r.stdout.split()]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.05)
    assert not any(psutil.pid_exists(p) for p in pids)


def test_sigkill_of_client_leaves_no_worker():
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import time, sys\n"
        "from scoopexec import ScoopExecutor\n"
        "ex = ScoopExecutor(2)\n"
        "print(ex._session._ipc_dir, *ex.worker_pids, flush=True)\n"
        "ex.submit(time.sleep, 60)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    ipc_dir, *rest = p.stdout.readline().split()
    pids = [int(x) for x in rest]
    assert len(pids) == 2 and os.path.isdir(ipc_dir)
    time.sleep(0.5)
    p.kill()
    p.wait()
    p.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        helpers.running(x) for x in pids
    ):
        time.sleep(0.05)
    alive = [x for x in pids if helpers.running(x)]
    assert not alive
    # Removed by the last of the client's processes to notice (the template may end after the
    # workers): wait for it within the same bound (it was seen still there on 3.14 in CI).
    while time.monotonic() < deadline and os.path.exists(ipc_dir):
        time.sleep(0.05)
    assert not os.path.exists(ipc_dir), "the killed client's private ipc directory was left in /tmp"


def test_pending_futures_fail_if_pool_stops_under_them():
    ex = ScoopExecutor(max_workers=1)
    f = ex.submit(sleep_and_return, 0.2, 1)
    ex.shutdown(wait=True)
    assert f.result() == 1
    assert isinstance(f, cf.Future)


def _fork_a_sleeper():
    """A task that leaves a child behind (a daemon it started, say): its pid, and its worker's."""
    with warnings.catch_warnings():  # (3.12+ warns of a fork of a process with threads: the worker)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    return pid, os.getpid()


def test_shutdown_ends_what_a_task_left_running(monkeypatch):
    asked = []  # the shutdown's looks at the worker's group, 20 ms apart, for 1 s at most

    def end_group(pgid, sig, _end=local._end_group):
        asked.append((pgid, sig))
        return _end(pgid, sig)

    monkeypatch.setattr(local, "_end_group", end_group)
    with ScoopExecutor(1) as ex:
        child, worker = ex.submit(_fork_a_sleeper).result(timeout=60)
        assert psutil.Process(child).status() != psutil.STATUS_ZOMBIE
    # It ended on SIGTERM: a look or two found only its zombie (the whole second's 50 before).
    assert (worker, signal.SIGTERM) in asked and asked.count((worker, 0)) < 20
    assert (worker, signal.SIGKILL) not in asked
    # Ended with its worker's group; its zombie may stay (this sandbox's PID 1 reaps nothing).
    try:
        assert psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
    assert local.running_groups([worker]) == []


def test_a_group_of_zombies_is_not_running():
    # A signal 0 to a group finds its zombies too: the shutdown waited 1 s for the group of a
    # worker whose task's child had ended, unreaped by its new parent (a container's PID 1).
    p = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while local.process_state(p.pid) != b"Z":  # ended, not reaped yet: we are its parent
            assert time.monotonic() < deadline, "the child did not end"
            time.sleep(0.01)
        os.killpg(p.pid, 0)  # (what the shutdown's wait asked: it answers that something is there)
        assert local.running_groups([p.pid, os.getpgrp()]) == [os.getpgrp()]
    finally:
        p.wait()
    assert local.running_groups([p.pid]) == []


def test_a_forked_child_leaves_its_parents_pool_alone_and_cannot_use_it():
    # A child forked while a pool is alive (multiprocessing's "fork", os.fork()) ran the
    # pool's at-exit stop when it ended: the parent's workers were stopped and its next map
    # hung.  The child gets a clear error instead, and the parent's pool goes on.
    r = run_script(
        """
        import multiprocessing as mp, sys
        from scoopexec import ScoopExecutor, BrokenScoopExecutor

        def child(ex, q):
            try:
                ex.submit(abs, -1)
                q.put("no error")
            except BrokenScoopExecutor as exc:
                q.put(str(exc))

        if __name__ == "__main__":
            ctx = mp.get_context("fork")
            with ScoopExecutor(2) as ex:
                assert list(ex.map(abs, [-1, -2])) == [1, 2]
                q = ctx.Queue()
                for _ in range(2):
                    p = ctx.Process(target=child, args=(ex, q))
                    p.start()
                    p.join(30)
                    assert p.exitcode == 0, p.exitcode
                    print("child:", q.get(timeout=5))
                print("parent:", list(ex.map(abs, range(-3, 0))))
        """,
        timeout=90,
    )
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, err
    assert out.count("child: this pool belongs to process") == 2, out
    assert "a forked child process cannot use it" in out
    assert "parent: [3, 2, 1]" in out
    assert "ended without stopping the pool" not in err, err


_LEFT_RUNNING = """
def left_running(me, within):
    \"\"\"The pool threads and live child processes still there after up to ``within`` s.\"\"\"
    def left():
        threads = [t.name for t in threading.enumerate() if t.name.startswith("scoopexec")]
        return threads, [p.pid for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    deadline = time.monotonic() + within
    while any(left()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left()
"""


_CTRL_C_DURING_START = """
import os, signal, sys, threading, time
import psutil
from scoopexec import ScoopExecutor
""" + _LEFT_RUNNING + """

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (a background job ignores SIGINT)
    other = threading.Event()
    threading.Thread(target=other.wait, daemon=True).start()  # a fresh-interpreter template: a longer start
    me = psutil.Process()
    interrupted = 0
    for delay_ms in [int(a) for a in sys.argv[1:]]:
        timer = threading.Timer(delay_ms / 1000, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            ex = ScoopExecutor(2)
        except KeyboardInterrupt:
            interrupted += 1
            timer.join()
        else:
            while True:  # (the interrupt comes after the start)
                try:
                    timer.join()
                    time.sleep(0.05)
                    break
                except KeyboardInterrupt:
                    pass
            ex.shutdown(wait=True)
        threads, children = left_running(me, 15)
        print(delay_ms, "left", threads, children, flush=True)
    print("interrupted", interrupted, flush=True)
"""


@pytest.mark.timeout(200)
def test_ctrl_c_while_a_pool_starts_leaves_nothing_running():
    """A real SIGINT at 5 to 200 ms into ScoopExecutor(2) (a client running another thread:
    the template is a fresh interpreter, the start takes longer).  Before, each interrupt left
    the broker's thread, the template and both workers running until the program ended (an
    interrupted cell in a notebook), and the program's exit could fail to join that thread."""
    out = run_script(_CTRL_C_DURING_START, "5", "8", "12", "20", "40", "70", "100", "140", "200", timeout=180)
    lines = out.stdout.decode().splitlines()
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    assert len(lines) == 10 and lines[-1].startswith("interrupted"), lines
    assert int(lines[-1].split()[1]) >= 1, lines  # (the interrupt came during the start at least once)
    for line in lines[:-1]:
        assert line.endswith("left [] []"), lines
    assert "cannot join thread" not in out.stderr.decode()


@pytest.mark.parametrize("broken", [False, True])
def test_a_shut_down_pool_leaves_no_thread_object_for_the_garbage_collector(broken):
    # CPython's executor tests count the Thread objects still alive after each test
    # (threading._dangling) and report a "dangling thread" (an altered environment) until a
    # collection frees them: the pool's thread sat in the session's reference cycles.
    import gc

    gc.collect()
    gc.disable()
    try:
        kwargs = {"initializer": helpers.init_fail} if broken else {}
        ex = ScoopExecutor(max_workers=1, **kwargs)
        try:
            ex.submit(abs, -1).result(timeout=60)
        except cf.BrokenExecutor:
            assert broken
        ex.shutdown(wait=True)
        del ex
        left = [t for t in threading._dangling if t.name.startswith("scoopexec")]  # type: ignore[attr-defined]
        assert left == []
    finally:
        gc.enable()


def test_the_pools_thread_under_process_pool_executors_private_name():
    # CPython's test_shutdown_deadlock_pickle joins executor._executor_manager_thread after the
    # pool's with-block; ProcessPoolExecutor's is None once shut down.
    with ScoopExecutor(max_workers=1) as ex:
        ex.submit(abs, -1).result(timeout=60)
        t = ex._executor_manager_thread
        assert isinstance(t, threading.Thread) and t.is_alive()
    t.join(30)
    assert not t.is_alive() and ex._executor_manager_thread is None


def test_a_shut_down_pool_runs_nothing_in_its_loop():
    # Its thread is let go of once joined: a call meant for its loop must not then run on the
    # caller's thread against the closed broker (a ZeroMQ error, or worse).
    ex = ScoopExecutor(max_workers=1)
    ex.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="shut down"):
        ex._session._in_loop(lambda: None)


_CTRL_C_AT_A_MOMENT = """
import os, signal, sys, threading, time
import psutil
from scoopexec import ScoopExecutor
from scoopexec.deploy import forkstart
""" + _LEFT_RUNNING + """

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # (a background job ignores SIGINT)
    if sys.argv[1] == "fresh":  # another thread: the template is a fresh interpreter
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    calls = []
    def own(signum, frame):
        calls.append(signum)
    if sys.argv[2] == "own":
        signal.signal(signal.SIGINT, own)
    sig = getattr(signal, "SIG" + (sys.argv[4] if len(sys.argv) > 4 else "INT"))
    def terminate(signum, frame):  # (as a program run by systemd or SLURM may do)
        raise SystemExit(143)
    signal.signal(signal.SIGTERM, terminate)
    times = int(sys.argv[5]) if len(sys.argv) > 5 else 1  # (Ctrl-C pressed again before the first is seen)
    sent = []
    def interrupt():
        if not sent:  # (once)
            sent.append(1)
            for _ in range(times):
                os.kill(os.getpid(), sig)
                time.sleep(0.01)
    if sys.argv[3] == "fork":  # the moment the first worker is forked, before the start notes it
        fork = forkstart.Template.fork
        def fork_then_interrupt(self, *args):
            proc = fork(self, *args)
            interrupt()
            return proc
        forkstart.Template.fork = fork_then_interrupt
    else:  # the moment the broker's thread is launched, before Thread.start() returns
        name = "_start_joinable_thread"  # (Python 3.13+; before: _start_new_thread)
        name = name if hasattr(threading, name) else "_start_new_thread"
        launch = getattr(threading, name)
        def launch_then_interrupt(*args, **kwargs):
            out = launch(*args, **kwargs)
            if getattr(getattr(args[0], "__self__", None), "name", "") == "scoopexec-broker":
                interrupt()
            return out
        setattr(threading, name, launch_then_interrupt)
    me = psutil.Process()
    try:
        with ScoopExecutor(2) as ex:
            print("made", list(ex.map(abs, [-1, -2])), flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    except SystemExit:
        print("terminated", flush=True)
    handler = signal.getsignal(signal.SIGINT)
    named = {own: "own", signal.default_int_handler: "default"}
    print("handler", named.get(handler, handler))
    print("calls", calls)
    print("left", *left_running(me, 15), flush=True)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["fork", "thread", "fork-twice"])
@pytest.mark.parametrize("template", ["fresh", "client"])
def test_ctrl_c_at_the_worst_moment_of_a_start_leaves_nothing_running(template, where):
    """A SIGINT that lands the moment the template has forked a worker, before the start notes
    it down, or the moment the broker's thread is launched, before Thread.start() returns (the
    window where a real Ctrl-C, 2-15 ms into a start, closed the broker under its running thread
    and left workers running until the program ended, and once hung the start for minutes): the
    start holds it back until its pieces are all noted, then raises it and stops them all;
    SIGINT's handler is Python's again."""
    times = "2" if where.endswith("-twice") else "1"  # (the second must not cut the clean-up short)
    r = run_script(_CTRL_C_AT_A_MOMENT, template, "default", where.split("-")[0], "INT", times, timeout=100)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert "interrupted" in out and "made" not in out, out
    assert "handler default" in out, out
    assert "left [] []" in out, out
    assert "Traceback" not in r.stderr.decode(), r.stderr.decode()[-3000:]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("template", ["fresh", "client"])
def test_another_signal_that_raises_as_the_brokers_thread_is_launched_leaves_nothing_running(template):
    """SIGTERM turned into SystemExit by the program, landing inside Thread.start() of the
    broker's thread (only SIGINT is held back): the start must still see that the thread runs,
    and not close the broker under it (which left the thread, or the workers, running)."""
    r = run_script(_CTRL_C_AT_A_MOMENT, template, "default", "thread", "TERM", timeout=100)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert "terminated" in out and "made" not in out, out
    assert "left [] []" in out, out
    assert "Traceback" not in r.stderr.decode(), r.stderr.decode()[-3000:]


@pytest.mark.timeout(120)
def test_ctrl_c_during_a_start_calls_the_programs_own_handler_once():
    """A program with a SIGINT handler of its own (that does not raise): it is called once for
    the Ctrl-C that came during the start, the pool starts and runs, and the handler stays."""
    r = run_script(_CTRL_C_AT_A_MOMENT, "client", "own", "fork", timeout=100)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert "made [1, 2]" in out and "interrupted" not in out, out
    assert "handler own" in out and "calls [2]" in out, out
    assert "left [] []" in out, out


@pytest.mark.timeout(30)
def test_a_held_interrupt_comes_at_close_or_at_once_in_a_wait_that_allows_it():
    def interrupt(times=1):
        for _ in range(times):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # (handled meanwhile, if held back)

    def holding():
        held = interrupts.HeldInterrupt()
        held.hold()
        return held

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        held = holding()
        second = interrupts.HeldInterrupt()
        second.hold()  # (one at a time: a second holds nothing)
        interrupt()
        second.close()
        with pytest.raises(KeyboardInterrupt):
            held.close()  # the one held back, once the start is over
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        held.close()  # (twice: nothing more)

        held = holding()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            with interrupts.allowed():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(10)  # (interrupted at once)
        assert time.monotonic() - t0 < 5
        # Holding is over once the program's handler raised: the clean-up may be interrupted.
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        held.close()

        held = holding()
        interrupt(2)
        with pytest.raises(KeyboardInterrupt):
            with interrupts.allowed():  # a held interrupt comes as the wait opens
                pytest.fail("not reached")
        with interrupts.unheld():  # (holding is over: the second is not raised in the clean-up)
            time.sleep(0.01)
        held.close()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

        held = holding()
        interrupt()
        with pytest.raises(KeyboardInterrupt):
            with interrupts.unheld():  # a clean-up: the program's handler, at once
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(10)
        with pytest.raises(KeyboardInterrupt):
            held.close()  # and the one held before it, at the end
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

        calls = []

        def gentle(signum, frame):  # "the first Ctrl-C stops gently, the second at once"
            calls.append(signum)
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGINT, gentle)
        held = holding()
        interrupt(2)
        with pytest.raises(KeyboardInterrupt):
            held.close()
        assert calls == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

        # A Ctrl-C that lands as close() puts the program's handler back: nothing stays held.
        real = signal.signal

        def signal_then_interrupt(signum, handler):
            prev = real(signum, handler)
            if handler is signal.default_int_handler:
                signal.signal = real
                signal.raise_signal(signal.SIGINT)
            return prev

        held = holding()
        signal.signal = signal_then_interrupt
        try:
            with pytest.raises(KeyboardInterrupt):
                held.close()
        finally:
            signal.signal = real
        assert interrupts._active is None and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        held = holding()
        assert signal.getsignal(signal.SIGINT) == held._handler  # (the next start holds again)
        held.close()

        # A Ctrl-C pending as hold() puts our handler in: the program's runs first (inside
        # signal.signal) and sets another, which stays; nothing is held.
        signal.signal(signal.SIGINT, gentle)
        calls.clear()

        def interrupt_then_signal(signum, handler):
            signal.signal = real
            signal.raise_signal(signal.SIGINT)
            return real(signum, handler)

        held = interrupts.HeldInterrupt()
        signal.signal = interrupt_then_signal
        try:
            held.hold()
        finally:
            signal.signal = real
        assert calls == [signal.SIGINT] and interrupts._active is None
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        held.close()

        other = []
        thread = threading.Thread(target=lambda: other.append(holding()._old))
        thread.start()
        thread.join()
        assert other == [None]  # (outside the main thread: nothing is held)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)

_FORK_WHILE_HELD = """
import os, signal, time
from scoopexec.client import interrupts

signal.signal(signal.SIGINT, signal.default_int_handler)
held = interrupts.HeldInterrupt()
held.hold()
pid = os.fork()  # (another thread's multiprocessing 'fork' while a pool starts, say)
if pid == 0:
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        os._exit(1)  # (the interrupt was swallowed)
    except KeyboardInterrupt:
        os._exit(0 if interrupts._active is None else 2)
held.close()
print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.mark.timeout(60)
def test_a_fork_made_while_a_start_holds_ctrl_c_gets_the_programs_handler():
    r = run_script(_FORK_WHILE_HELD, timeout=30)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    assert r.stdout.decode().split() == ["child", "0"], r.stdout.decode()


def test_a_fork_of_the_client_holds_none_of_the_pools_pipes(executor):
    # A child of the program's own fork (and a fork context's template) kept the pool's pipes
    # open: the pool's template never saw its stdin end, and its shutdown waited 2 s to kill it.
    import warnings

    with executor:
        executor.submit(abs, -1).result(timeout=60)
        fd = executor._session.workers.local.template.proc.stdin.fileno()
        r, w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # (a fork of a process with threads)
            pid = os.fork()
        if pid == 0:
            ok = os.readlink(f"/proc/self/fd/{fd}") == os.devnull and not os.get_inheritable(fd)
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
        os.close(w)
        try:
            assert os.read(r, 1) == b"1"
        finally:
            os.close(r)
            os.waitpid(pid, 0)
