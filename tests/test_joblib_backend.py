"""The joblib backend "scoop": registration, pools, nesting, generators, timeouts, aborts."""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import joblib
import psutil
import pytest
from joblib import Parallel, delayed, parallel_backend, parallel_config
from scoopexec.integrations.joblib_backend import shared_pool, shutdown_shared_pool

from scoopexec import InitializerError, ScoopExecutor
from tests import compat_helpers as h
from tests.conftest import ROOT, run_script
from tests.helpers import run_installed


def _live_children():
    """Our live descendants but the template a pool forks its workers from (deploy/forkstart.py):
    our child with that command line, or with ours (a fork of this process, deploy/clientfork.py);
    its workers, forks of it, have it too but are its children."""
    out = set()
    ours = psutil.Process().cmdline()
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = p.cmdline()
            template = p.ppid() == os.getpid() and ("scoopexec.deploy.forkstart" in " ".join(cmd) or cmd == ours)
            if p.status() != psutil.STATUS_ZOMBIE and not template:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture
def new_children():
    """Children started during the test (other tests' session fixtures, e.g. an sshd, excluded)."""
    before = _live_children()
    return lambda: _live_children() - before


def _run(code, timeout=90):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, check=False, timeout=timeout, env=env,
    )


# ----------------------------------------------------------------- registration
def test_import_scoopexec_registers_without_importing_joblib():
    r = _run(
        """
        import sys
        import scoopexec
        assert "joblib" not in sys.modules, "import scoopexec imported joblib"
        assert not any(m.startswith("scoopexec.integrations") for m in sys.modules)
        import joblib
        from scoopexec.integrations.joblib_backend import ScoopBackend
        assert joblib.parallel.BACKENDS["scoop"] is ScoopBackend
        print(joblib.Parallel(n_jobs=1, backend="scoop")(joblib.delayed(abs)(-i) for i in range(3)))
        """
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "[0, 1, 2]"


def test_registered_when_joblib_was_imported_first():
    r = _run(
        """
        import joblib
        import scoopexec
        from scoopexec.integrations.joblib_backend import ScoopBackend
        assert joblib.parallel.BACKENDS["scoop"] is ScoopBackend
        with joblib.parallel_config(backend="scoop", n_jobs=2):
            print(joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(4)))
        """
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "[0, 1, 2, 3]"





def test_joblib_knows_scoop_in_a_program_that_never_imports_scoopexec(tmp_path):
    """The installed scoopexec_joblib.pth (setup.py): what joblib's own `python -c` tests do."""
    r = run_installed(
        """
        import sys
        import joblib
        assert "scoopexec" not in sys.modules, "import joblib imported scoopexec"
        from joblib import Parallel, delayed, parallel_config

        def square(x):
            return x ** 2

        print(Parallel(n_jobs=2, backend="scoop")(delayed(square)(i) for i in range(5)))
        from scoopexec.integrations.joblib_backend import ScoopBackend
        assert joblib.parallel.BACKENDS["scoop"] is ScoopBackend, "the class did not replace the factory"
        with parallel_config(backend="scoop", n_jobs=2):
            print(Parallel()(delayed(square)(i) for i in range(3)))
        """,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["[0,", "1,", "4,", "9,", "16]", "[0,", "1,", "4]"]
    # parallel_config first, in a fresh process: it resolves the name through the same factory
    r = run_installed(
        """
        import joblib
        with joblib.parallel_config(backend="scoop", n_jobs=2):
            print(joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(4)))
        """,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "[0, 1, 2, 3]"


def test_the_pth_line_is_silent_without_its_module_and_installs_the_hook_with_it(tmp_path):
    """The installed .pth line, as site.py runs it: an editable checkout that lost the module (an
    older commit) must not print a traceback at every start; with the module, the finder is set."""
    import site

    (pth,) = [p for d in site.getsitepackages() if os.path.isfile(p := os.path.join(d, "scoopexec_joblib.pth"))]
    alone = tmp_path / "alone"
    alone.mkdir()
    line = pathlib.Path(pth).read_text()
    (alone / "scoopexec_joblib.pth").write_text(line)
    both = tmp_path / "both"
    both.mkdir()
    (both / "scoopexec_joblib.pth").write_text(line)
    (both / "_scoopexec_joblib.py").write_text(pathlib.Path(ROOT, "_scoopexec_joblib.py").read_text())
    code = (
        "import site, sys; site.addsitedir(sys.argv[1]); "
        "print('_scoopexec_joblib' in sys.modules, type(sys.meta_path[0]).__name__)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCOOPEXEC_NO_JOBLIB_HOOK")}
    for where, expected in ((alone, "False"), (both, "True JoblibFinder")):
        r = subprocess.run([sys.executable, "-S", "-c", code, str(where)], capture_output=True, timeout=60,
                           env=env, cwd=str(where), check=False)  # fmt: skip
        assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
        assert r.stdout.decode().startswith(expected), r.stdout.decode()


def test_the_joblib_hook_can_be_turned_off(tmp_path):
    r = run_installed(
        """
        import joblib
        assert "scoop" not in joblib.parallel.BACKENDS
        try:
            joblib.Parallel(n_jobs=2, backend="scoop")
        except ValueError as e:
            print(e)
        """,
        tmp_path,
        SCOOPEXEC_NO_JOBLIB_HOOK="1",
    )
    assert r.returncode == 0, r.stderr.decode()
    assert "Invalid backend: scoop" in r.stdout.decode()
    r = run_installed('import joblib; assert "scoop" in joblib.parallel.BACKENDS', tmp_path,
                       SCOOPEXEC_NO_JOBLIB_HOOK="0")  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()


# ------------------------------------------------------------------------ pools
def test_parallel_calls_share_one_pool_until_it_is_shut_down(new_children):
    with parallel_config(backend="scoop", n_jobs=2):
        pids = Parallel()(delayed(h.getpid)() for _ in range(20))
        assert os.getpid() not in pids
        workers = new_children()
        assert len(workers) == 2, "the backend's pool did not outlive the Parallel call"
        assert Parallel()(delayed(h.square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
        assert set(Parallel()(delayed(h.getpid)() for _ in range(20))) <= workers
    assert new_children() == workers == set(shared_pool().worker_pids)  # no second pool either
    shutdown_shared_pool()
    assert shared_pool() is None and not new_children()
    assert Parallel(n_jobs=2, backend="scoop")(delayed(h.square)(i) for i in range(3)) == [0, 1, 4]


def test_the_shared_pool_stops_at_interpreter_exit():
    r = _run(
        """
        import os, joblib, scoopexec
        from scoopexec.integrations.joblib_backend import shared_pool
        for _ in range(2):
            pids = joblib.Parallel(n_jobs=2, backend="scoop")(joblib.delayed(os.getpid)() for _ in range(8))
        print(*shared_pool().worker_pids)
        """
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr.decode() == ""
    pids = [int(p) for p in r.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if psutil.pid_exists(p)], "workers outlived the interpreter"


def test_n_jobs_changes_grow_or_replace_the_shared_pool(new_children):
    with parallel_config(backend="scoop", n_jobs=2, inner_max_num_threads=1):
        assert Parallel()(delayed(h.square)(i) for i in range(4)) == [0, 1, 4, 9]
    pool = shared_pool()
    assert pool.max_workers == 2
    with parallel_backend("scoop", n_jobs=3, inner_max_num_threads=1):  # more: the pool grows
        pids = set(Parallel(batch_size=1)(delayed(h.pid_after)(0.2) for _ in range(12)))
    assert shared_pool() is pool and pool.max_workers == 3 and len(pool.worker_pids) == 3
    assert pids <= set(pool.worker_pids)
    with parallel_config(backend="scoop", n_jobs=2, inner_max_num_threads=1):  # fewer: a new pool
        pids = set(Parallel()(delayed(h.getpid)() for _ in range(10)))
    smaller = shared_pool()
    assert smaller is not pool and smaller.max_workers == 2 and pids <= set(smaller.worker_pids)
    assert new_children() == set(smaller.worker_pids), "the old pool was not stopped"
    with parallel_config(backend="scoop", n_jobs=2, initializer=h.init, initargs=("other",)):
        assert set(Parallel()(delayed(h.get_init_status)() for _ in range(4))) == {"other"}
    assert shared_pool() is not smaller  # other ScoopExecutor arguments: another pool
    assert new_children() == set(shared_pool().worker_pids)


def test_a_broken_shared_pool_is_replaced(tmp_path, new_children):
    flag = str(tmp_path / "failed-once")
    with parallel_config(backend="scoop", n_jobs=2, initializer=h.init_fails_once, initargs=(flag,)):
        assert Parallel()([]) == []  # starts the shared pool; its initializer has not run yet
        pool = shared_pool()
        with pytest.raises(InitializerError):  # the pool breaks between two Parallel calls
            pool.submit(h.square, 2).result(timeout=60)
        assert pool.broken
        assert Parallel()(delayed(h.square)(i) for i in range(4)) == [0, 1, 4, 9]
        assert shared_pool() is not pool and not shared_pool().broken
        assert new_children() == set(shared_pool().worker_pids)  # the broken one was stopped
        flag_again = str(tmp_path / "fails-in-a-call")
    with parallel_config(backend="scoop", n_jobs=2, initializer=h.init_fails_once, initargs=(flag_again,)):
        with pytest.raises(InitializerError):  # during a call: aborted, and replaced by the next
            Parallel()(delayed(h.square)(i) for i in range(4))
        assert Parallel()(delayed(h.square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_a_call_needing_another_pool_while_the_shared_one_is_busy_gets_its_own(tmp_path, new_children):
    gate = str(tmp_path / "gate")
    first = Parallel(n_jobs=2, backend="scoop", return_as="generator", batch_size=1)(
        delayed(h.wait_for_file)(gate, i) for i in range(4)
    )
    pool = shared_pool()
    pids = set(Parallel(n_jobs=3, backend="scoop")(delayed(h.getpid)() for _ in range(12)))
    assert shared_pool() is pool and not pids & set(pool.worker_pids)
    assert new_children() == set(pool.worker_pids), "the private pool outlived its call"
    open(gate, "w").close()
    assert list(first) == [0, 1, 2, 3]
    same = set(Parallel(n_jobs=2, backend="scoop")(delayed(h.getpid)() for _ in range(2)))
    assert shared_pool() is pool and same <= set(pool.worker_pids)


def test_closing_a_generator_does_not_stop_another_calls_batches(tmp_path):
    gate = str(tmp_path / "gate")
    first = Parallel(n_jobs=2, backend="scoop", return_as="generator", batch_size=1)(
        delayed(h.slow_square)(i, 0.5) for i in range(8)
    )
    assert next(first) == 0
    second = Parallel(n_jobs=2, backend="scoop", return_as="generator", batch_size=1)(
        delayed(h.wait_for_file)(gate, i) for i in range(3)
    )
    with pytest.warns(UserWarning, match="still being processed"):  # joblib's
        first.close()  # aborts the first call: its running batches are left to finish
    open(gate, "w").close()
    assert list(second) == [0, 1, 2]
    assert Parallel(n_jobs=2, backend="scoop")(delayed(h.square)(i) for i in range(3)) == [0, 1, 4]


def test_parallel_backend_old_spelling():
    with parallel_backend("scoop", n_jobs=2):
        assert Parallel()(delayed(h.square)(i) for i in range(6)) == [i * i for i in range(6)]


def test_managed_parallel_keeps_its_pool_until_the_block_ends(new_children):
    with Parallel(n_jobs=2, backend="scoop") as p:
        ex = p._backend._workers
        assert isinstance(ex, ScoopExecutor)
        assert p(delayed(h.square)(i) for i in range(4)) == [0, 1, 4, 9]
        assert p(delayed(h.getpid)() for _ in range(8))
        assert p._backend._workers is ex
    assert p._backend._workers is None
    assert new_children() == set(ex.worker_pids)  # the shared pool, for the calls to come
    shutdown_shared_pool()
    assert not new_children()


def test_active_executor_is_used_and_left_running():
    with ScoopExecutor(2) as ex:
        with parallel_config(backend="scoop"):
            pids = set(Parallel()(delayed(h.getpid)() for _ in range(30)))
            assert pids <= set(ex.worker_pids)
            assert Parallel(n_jobs=-1)._effective_n_jobs() == 2
        assert ex.submit(h.square, 3).result() == 9  # not shut down by the backend


def test_explicit_executor_argument():
    with ScoopExecutor(2) as ex:
        with parallel_config(backend="scoop", executor=ex):
            assert set(Parallel()(delayed(h.getpid)() for _ in range(10))) <= set(ex.worker_pids)


def test_n_jobs_negative_counts_from_the_pool_size():
    with ScoopExecutor(3):
        assert Parallel(n_jobs=-1, backend="scoop")._effective_n_jobs() == 3
        assert Parallel(n_jobs=-2, backend="scoop")._effective_n_jobs() == 2
        with parallel_config(backend="scoop"):
            assert joblib.effective_n_jobs() == 3
    with pytest.raises(ValueError, match="n_jobs == 0"):
        Parallel(n_jobs=0, backend="scoop")._initialize_backend()


def test_executor_arguments_pass_through():
    with parallel_config(backend="scoop", n_jobs=2, initializer=h.init, initargs=("ready",)):
        assert set(Parallel()(delayed(h.get_init_status)() for _ in range(6))) == {"ready"}
    with pytest.raises(TypeError, match=r"ScoopExecutor.*no_such_option"):
        with parallel_config(backend="scoop", n_jobs=2, no_such_option=1):
            Parallel()(delayed(h.square)(i) for i in range(2))


def test_executor_arguments_with_an_active_executor_are_refused():
    with ScoopExecutor(1):
        with pytest.raises(ValueError, match="initializer"):
            Parallel(n_jobs=2, backend="scoop", initializer=h.init, initargs=("x",))(
                delayed(h.square)(1) for _ in range(2)
            )


def test_worker_threads_are_limited_like_loky():
    def env_of(_):
        return os.environ.get("OMP_NUM_THREADS"), os.environ.get("OPENBLAS_NUM_THREADS")

    with parallel_config(backend="scoop", n_jobs=2, inner_max_num_threads=1):
        assert set(Parallel()(delayed(env_of)(i) for i in range(4))) == {("1", "1")}


# ------------------------------------------------------------- joblib features
def test_auto_batching_groups_tiny_tasks():
    with ScoopExecutor(2):
        p = Parallel(n_jobs=2, backend="scoop", batch_size="auto")
        assert sum(p(delayed(h.square)(i) for i in range(20000))) == sum(i * i for i in range(20000))
        assert p.n_dispatched_batches < p.n_dispatched_tasks  # batches grew past one task


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_generators(return_as):
    with ScoopExecutor(2):
        gen = Parallel(n_jobs=2, backend="scoop", return_as=return_as)(
            delayed(h.square)(i) for i in range(50)
        )
        out = list(gen)
    expected = [i * i for i in range(50)]
    assert (out if return_as == "generator" else sorted(out)) == expected


def test_generator_unordered_yields_completed_results_first(tmp_path):
    gate = str(tmp_path / "gate")
    with ScoopExecutor(2):
        gen = Parallel(n_jobs=2, backend="scoop", return_as="generator_unordered", batch_size=1)(
            delayed(h.wait_for_file)(gate, "slow") if i == 1 else delayed(h.square)(i) for i in range(10)
        )
        first = [next(gen) for _ in range(9)]  # would hang if the blocked item came first
        assert "slow" not in first
        open(gate, "w").close()
        assert list(gen) == ["slow"]


def test_timeout_raises_and_stops_the_backend_pool(tmp_path, new_children):
    import multiprocessing

    with pytest.raises(multiprocessing.TimeoutError):  # what joblib raises
        Parallel(n_jobs=2, backend="scoop", timeout=0.5, batch_size=1)(
            delayed(h.mark_and_sleep)(str(tmp_path), i, 30) for i in range(4)
        )
    assert not new_children()
    assert not list(tmp_path.glob("end-*")), "tasks ran to completion after the timeout"


def test_abort_stops_running_batches_of_its_own_pool(tmp_path, new_children):
    with pytest.raises(ValueError, match="item 0 fails"):
        Parallel(n_jobs=2, backend="scoop", batch_size=1)(
            delayed(h.fail_at_zero)(str(tmp_path), i, 30) for i in range(6)
        )
    assert not new_children()
    assert not list(tmp_path.glob("end-*")), "running batches were not stopped"
    assert Parallel(n_jobs=2, backend="scoop")(delayed(h.square)(i) for i in range(3)) == [0, 1, 4]


def test_abort_cancels_batches_not_started_on_a_shared_pool(tmp_path):
    with ScoopExecutor(2) as ex:
        with pytest.raises(ValueError, match="item 0 fails"):
            Parallel(n_jobs=2, backend="scoop", batch_size=1, pre_dispatch="all")(
                delayed(h.fail_at_zero)(str(tmp_path), i, 0.5) for i in range(40)
            )
        ex.shutdown(wait=True)  # everything that did start has finished now
    started = len(list(tmp_path.glob("start-*")))
    assert started < 39, f"{started} of 39 items ran: the rest of the call was not cancelled"


def test_abort_with_a_managed_backend_leaves_a_working_pool():
    with Parallel(n_jobs=2, backend="scoop") as p:
        with pytest.raises(ValueError):
            p(delayed(h.fail_soon)(0.01) for _ in range(4))
        # Aborted and replaced if batches were still running, else kept: working either way.
        ex = p._backend._workers
        assert ex is not None and not ex.broken
        assert p(delayed(h.square)(i) for i in range(5)) == [0, 1, 4, 9, 16]


def test_task_errors_carry_the_remote_traceback():
    with ScoopExecutor(2):
        with pytest.raises(ValueError, match="failed on purpose") as info:
            Parallel(n_jobs=2, backend="scoop")(delayed(h.fail_soon)(0) for _ in range(3))
    assert "fail_soon" in str(info.value.__cause__)


# --------------------------------------------------------------------- nesting
def test_nested_parallel_runs_on_the_same_pool_through_nested_futures():
    with ScoopExecutor(2) as ex:
        with parallel_config(backend="scoop"):
            out = Parallel(n_jobs=2)(delayed(h.inner_pids)(4) for _ in range(6))
        workers = set(ex.worker_pids)
    for pid, backend_name, level, pids in out:
        assert pid in workers
        assert backend_name == "ScoopBackend" and level == 1
        assert set(pids) <= workers


def test_nested_parallel_on_the_shared_pool_stays_on_it():
    with parallel_config(backend="scoop", n_jobs=2):
        out = Parallel()(delayed(h.inner_pids)(4) for _ in range(6))
    workers = set(shared_pool().worker_pids)
    for pid, backend_name, level, pids in out:
        assert pid in workers and backend_name == "ScoopBackend" and level == 1
        assert set(pids) <= workers


def test_nested_parallel_on_a_single_worker_does_not_deadlock():
    with ScoopExecutor(1):
        with parallel_config(backend="scoop"):
            assert Parallel(n_jobs=2)(delayed(h.inner_sum)(n) for n in range(8)) == [
                sum(i * i for i in range(n)) for n in range(8)
            ]
            assert Parallel(n_jobs=2)(delayed(h.nested_sum)(3, 2) for _ in range(2)) == [8, 8]


def test_batches_dispatched_from_callbacks_in_a_task_keep_its_client():
    with ScoopExecutor(2) as ex:
        ex.share("k", 5)
        with parallel_config(backend="scoop"):
            out = Parallel(n_jobs=2)(delayed(h.inner_reads_shared)("k", 20) for _ in range(3))
    assert out == [[5] * 20] * 3


def test_identical_batches_do_not_share_objects_on_a_worker():
    with ScoopExecutor(1):
        out = Parallel(n_jobs=2, backend="scoop", batch_size=1)(
            delayed(h.count_uses_of_my_backend)() for _ in range(6)
        )
    assert out == [1] * 6


def test_parallel_config_state_is_per_task_on_a_worker():
    with ScoopExecutor(1):
        out = Parallel(n_jobs=2, backend="scoop", batch_size=1)(
            delayed(h.config_survives_parking)(i) for i in range(8)
        )
    for mine, seen, after in out:
        assert seen == {"scoop": "ScoopBackend", "threading": "ThreadingBackend"}[mine]
        assert after == "ScoopBackend"  # the outer call's nested backend, restored


def test_parallel_by_name_inside_a_task_whose_worker_never_saw_joblib():
    with ScoopExecutor(1) as ex:
        assert ex.submit(h.import_joblib_and_run, 5).result(timeout=60) == [0, 1, 4, 9, 16]


def test_nested_backend_pickles_without_the_pool():
    with ScoopExecutor(2):
        p = Parallel(n_jobs=2, backend="scoop")
        p._initialize_backend()
        nested, n_jobs = p._backend.get_nested_backend()
        data = pickle.dumps(nested)
        assert len(data) < 2000 and n_jobs is None
        copy = pickle.loads(data)
        assert copy.nesting_level == 1 and copy._pool_size == 2 and copy._workers is None
        p._backend.terminate()


# ----------------------------------------------- functions defined in __main__
def test_interactively_defined_functions_and_lambdas():
    r = run_script(
        """
        import joblib, scoopexec

        def square(x):
            return x ** 2

        class Box:
            def __init__(self, v):
                self.v = v

        if __name__ == "__main__":
            with joblib.parallel_config(backend="scoop", n_jobs=2):
                print(joblib.Parallel()(joblib.delayed(square)(i) for i in range(5)))
                print(joblib.Parallel()(joblib.delayed(lambda b: b.v + 1)(Box(i)) for i in range(3)))
        """
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split("\n")[:2] == ["[0, 1, 4, 9, 16]", "[1, 2, 3]"]


def test_python_dash_c():
    r = _run(
        """
        import joblib, scoopexec
        def square(x):
            return x ** 2
        print(joblib.Parallel(n_jobs=2, backend="scoop")(joblib.delayed(square)(i) for i in range(5)))
        """
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "[0, 1, 4, 9, 16]"


def test_callbacks_do_not_run_on_the_broker_thread():
    names = []
    with ScoopExecutor(2):
        p = Parallel(n_jobs=2, backend="scoop", batch_size=1, pre_dispatch="2")
        backend = p._backend

        def spy(out):
            names.append(threading.current_thread().name)
            return type(backend).retrieve_result_callback(backend, out)

        backend.retrieve_result_callback = spy
        assert p(delayed(h.square)(i) for i in range(10)) == [i * i for i in range(10)]
    assert names and set(names) == {"scoopexec-joblib"}


def test_n_jobs_minus_one_on_a_standalone_broker_counts_its_workers():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=ROOT)
    broker = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "broker", "--bind", f"tcp://127.0.0.1:{port}"],
        stdout=subprocess.PIPE, env=env,
    )
    try:
        assert b"listening" in broker.stdout.readline()
        with ScoopExecutor(broker=f"tcp://127.0.0.1:{port}") as ex:
            workers = subprocess.Popen(
                [sys.executable, "-m", "scoopexec", "worker", "--connect", ex.endpoint, "-n", "3"],
                env=env,
            )
            try:
                deadline = time.monotonic() + 60
                while len(ex.status().workers) < 3 and time.monotonic() < deadline:
                    time.sleep(0.05)
                with parallel_config(backend="scoop"):
                    assert Parallel(n_jobs=-1)._effective_n_jobs() == 3
                    assert Parallel()(delayed(h.square)(i) for i in range(6)) == [0, 1, 4, 9, 16, 25]
            finally:
                workers.terminate()
                workers.wait(30)
    finally:
        broker.terminate()
        broker.wait(30)
        broker.stdout.close()
