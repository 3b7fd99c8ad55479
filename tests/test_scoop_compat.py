"""SCOOP programs unchanged: the launcher, `from scoop import futures, shared`, and their semantics."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import operator
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import scoopexec
from scoopexec import ScoopExecutor, futures, shared
from scoopexec.cli import _executor_kwargs, _launcher_parser, _split
from tests import compat_helpers as h
from tests.conftest import ROOT


def launch(tmp_path, code, *args, launcher=("-n", "2"), timeout=120, env=None, pids=False):
    """Run ``code`` as a script under ``python -m scoopexec``; return CompletedProcess.

    With ``pids``, the script also gets ``worker_pids()``: its pool's worker processes.
    """
    path = tmp_path / "prog.py"
    path.write_text((PIDS if pids else "") + textwrap.dedent(code))
    e = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, *(env or {}).pop("EXTRA_PATH", [])]))
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "scoopexec", *launcher, str(path), *args],
        capture_output=True, check=False, timeout=timeout, cwd=str(tmp_path), env=e,
    )


def _alive(pids):
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


PIDS = """
import scoopexec
def worker_pids():
    return scoopexec.current_executor().worker_pids
"""


# ----------------------------------------------------------------- the launcher
def test_runs_a_scoop_program_as_main_with_a_pool(tmp_path):
    r = launch(
        tmp_path,
        """
        import os, sys
        from scoop import futures
        import scoop

        def square(x):
            return x * x

        def nested(n):
            return sum(futures.map(square, range(n)))   # `from scoop import futures` on a worker

        def pid(_):
            return os.getpid()

        if __name__ == "__main__":
            print(__name__, os.path.basename(sys.argv[0]), sys.argv[1:], scoop.IS_ORIGIN)
            print(list(futures.map(square, range(6))))
            print(list(futures.map(nested, range(5))))
            print(len(worker_pids()), os.getpid() not in futures.map(pid, range(4)))
            print("pids", *worker_pids())
        """,
        "a", "--b",
        pids=True,
    )
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[:4] == [
        "__main__ prog.py ['a', '--b'] True",
        "[0, 1, 4, 9, 16, 25]",
        "[0, 0, 1, 5, 14]",
        "2 True",
    ]
    assert not _alive(int(p) for p in lines[4].split()[1:]), "workers outlived the launcher"


@pytest.mark.parametrize(
    "ending, status, stderr_has",
    [
        ("sys.exit(0)", 0, ""),
        ("sys.exit(3)", 3, ""),
        ("sys.exit('bad input file')", 1, "bad input file"),
        ("raise LookupError('no such thing')", 1, "LookupError: no such thing"),
        ("pass", 0, ""),
    ],
)
def test_exit_status_is_the_scripts(tmp_path, ending, status, stderr_has):
    r = launch(
        tmp_path,
        f"""
        import sys
        from scoop import futures
        if __name__ == "__main__":
            assert list(futures.map(abs, [-1, -2])) == [1, 2]
            {ending}
        """,
    )
    assert r.returncode == status, r.stderr.decode()
    assert stderr_has in r.stderr.decode()


def test_a_failing_script_abandons_running_tasks_at_once(tmp_path):
    r = launch(
        tmp_path,
        f"""
        import os, time
        from scoop import futures
        from tests.compat_helpers import mark_and_sleep

        if __name__ == "__main__":
            print("pids", *worker_pids(), flush=True)
            futures.submit(mark_and_sleep, {str(tmp_path)!r}, 1, 60)
            while not os.path.exists({str(tmp_path / "start-1")!r}):
                time.sleep(0.02)
            raise RuntimeError("the program failed")
        """,
        pids=True,
    )
    assert r.returncode == 1
    assert "RuntimeError: the program failed" in r.stderr.decode()
    assert not (tmp_path / "end-1").exists()
    assert not _alive(int(p) for p in r.stdout.decode().split()[1:])


@pytest.mark.parametrize("ending", ["pass", "raise SystemExit(4)"])
def test_processes_started_by_tasks_are_stopped_too(tmp_path, ending):
    marker = tmp_path / "grandchild.pid"
    r = launch(
        tmp_path,
        f"""
        from scoop import futures
        from tests.compat_helpers import start_a_grandchild

        if __name__ == "__main__":
            futures.submit(start_a_grandchild, {str(marker)!r}).result()
            {ending}
        """,
    )
    # the script's own exit status, whichever way it ended
    assert r.returncode == (4 if "SystemExit" in ending else 0), r.stderr.decode()
    assert not _alive([int(marker.read_text())]), "a process started by a task outlived the pool"


def test_a_finished_script_lets_running_tasks_finish(tmp_path):
    r = launch(
        tmp_path,
        f"""
        import os, time
        from scoop import futures
        from tests.compat_helpers import mark_and_sleep

        if __name__ == "__main__":
            futures.submit(mark_and_sleep, {str(tmp_path)!r}, 1, 0.5)
            while not os.path.exists({str(tmp_path / "start-1")!r}):
                time.sleep(0.02)
        """,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "end-1").exists()


def test_an_unguarded_script_gets_a_clear_error(tmp_path):
    r = launch(
        tmp_path,
        """
        from scoop import futures
        def square(x):
            return x * x
        print(list(futures.map(square, range(3))))   # no __main__ guard: workers run this too
        """,
    )
    assert r.returncode == 1
    assert '__name__ == "__main__"' in r.stderr.decode()


def test_only_scoops_public_api_is_provided(tmp_path):
    r = launch(
        tmp_path,
        """
        import scoop, scoop.futures, scoop.shared
        assert scoop.futures is __import__("scoopexec").futures
        try:
            import scoop._control
        except ModuleNotFoundError as exc:
            print(exc)
        """,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert "scoop.futures and scoop.shared" in r.stdout.decode()


def test_a_real_scoop_package_is_not_shadowed_outside_the_launcher(tmp_path):
    fake = tmp_path / "site" / "scoop"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("WHO = 'the real scoop'\n")
    code = "import scoopexec, scoopexec.futures, scoop; print(getattr(scoop, 'WHO', 'scoopexec'))\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path / "site")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False, timeout=60, env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "the real scoop"
    r = launch(tmp_path, code, env={"EXTRA_PATH": [str(tmp_path / "site")]})
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "scoopexec"
    # With no scoop on the path, importing scoopexec must not make one appear; where SCOOP itself
    # is installed (a benchmark peer), `import scoop` must find that one, not scoopexec's stand-in.
    r = subprocess.run(
        [sys.executable, "-c", "import scoopexec\ntry:\n import scoop\nexcept ImportError: print('none')\n"
         "else: print(scoop.__file__)"],
        capture_output=True, check=False, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    found = r.stdout.decode().strip()
    assert found == "none" or not os.path.abspath(found).startswith(os.path.join(ROOT, "scoopexec")), found


def test_the_scoop_style_deap_island_program_runs_unchanged(tmp_path):
    example = os.path.join(ROOT, "examples", "scoop_islands.py")
    r = subprocess.run(
        [sys.executable, "-m", "scoopexec", "-n", "2", example, "--epochs", "2", "--islands", "3"],
        capture_output=True, check=False, timeout=300, cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert r.returncode == 0, r.stderr.decode()
    assert [line.split(":")[0] for line in r.stdout.decode().splitlines()] == ["epoch 0", "epoch 1"]


def test_command_line_errors(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "scoopexec", *args], capture_output=True, check=False, timeout=60,
            env=dict(os.environ, PYTHONPATH=ROOT), cwd=str(tmp_path),
        )

    r = run()
    assert r.returncode == 2 and "script.py" in r.stderr.decode()
    r = run("-n", "2", "missing.py")
    assert r.returncode == 2 and "missing.py" in r.stderr.decode()
    r = run("-n", "0", "missing.py")
    assert r.returncode == 2
    r = run("--help")
    assert r.returncode == 0 and "broker" in r.stdout.decode() and "--hostfile" in r.stdout.decode()


def test_splitting_the_command_line():
    assert _split(["-n", "4", "prog.py", "-n", "x"]) == (["-n", "4"], ["prog.py", "-n", "x"])
    assert _split(["--hosts", "a", "b", "prog.py", "1"]) == (["--hosts", "a", "b"], ["prog.py", "1"])
    assert _split(["--hosts", "a", "--", "prog", "1"]) == (["--hosts", "a"], ["prog", "1"])
    assert _split(["--hostfile", "hf", "-n4", "dir/prog", "--x"]) == (
        ["--hostfile", "hf", "-n4"],
        ["dir/prog", "--x"],
    )


@pytest.mark.parametrize("options", [("--hosts", "localhost", "-n", "2"), ("--hostfile", "HOSTFILE")])
def test_host_options_reach_the_executor(tmp_path, options):
    (tmp_path / "hosts.txt").write_text("# this machine, twice\nlocalhost 2\n")
    options = tuple(str(tmp_path / "hosts.txt") if o == "HOSTFILE" else o for o in options)
    r = launch(
        tmp_path,
        """
        from scoop import futures
        if __name__ == "__main__":
            print(len(worker_pids()), sum(futures.map(abs, range(-5, 0))))
        """,
        launcher=options,
        pids=True,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["2", "15"]
    r = launch(tmp_path, "print('never')", launcher=("--hostfile", str(tmp_path / "missing.txt")))
    assert r.returncode == 2 and "missing.txt" in r.stderr.decode()


def test_host_options_are_passed_only_when_given():
    ap = _launcher_parser()
    assert _executor_kwargs(ap.parse_args([])) == {}
    assert _executor_kwargs(ap.parse_args(["-n", "3"])) == {"max_workers": 3}
    assert _executor_kwargs(ap.parse_args(["--hosts", "a:2", "b", "--hostfile", "f"])) == {
        "hosts": ["a:2", "b"], "hostfile": "f",
    }


# ----------------------------------------------------------------- futures API
def test_futures_map_is_ordered_and_lazy(executor):
    with executor:
        it = futures.map(h.slow_square, range(6), [0.05] * 6)
        assert next(it) == 0  # a generator: results come as they are ready
        assert list(it) == [1, 4, 9, 16, 25]
        assert list(futures.map(pow, [2, 3], [5, 2])) == [32, 9]


def test_keywords_scoop_ignores_are_ignored_with_a_warning(executor):
    with executor:
        with pytest.warns(UserWarning, match=r"map\(\) ignores the keyword argument parallelLevel, as SCOOP"):
            assert list(futures.map(h.square, range(3), parallelLevel=2)) == [0, 1, 4]
        with pytest.warns(UserWarning, match="map_as_completed.*arguments a, b,"):
            assert sorted(futures.map_as_completed(h.square, range(3), b=1, a=2)) == [0, 1, 4]
        with pytest.warns(UserWarning, match="mapReduce"):
            assert futures.mapReduce(h.square, operator.add, range(4), x=1) == 14
        with pytest.warns(UserWarning, match="mapScan"):
            assert futures.mapScan(h.square, operator.add, range(3), x=1) == [0, 1, 5]
        with pytest.raises(TypeError):
            futures.map(h.square, range(3), timeout="soon")  # known keywords are still checked


def test_scoop_worker_and_size_under_the_launcher(tmp_path):
    r = launch(
        tmp_path,
        """
        import os, socket
        import scoop
        from scoop import futures, SIZE  # at import, on the workers too

        def who(_):
            import time
            time.sleep(0.05)
            return scoop.worker, scoop.SIZE, os.getpid(), scoop.IS_ORIGIN

        if __name__ == "__main__":
            assert SIZE == scoop.SIZE == 3, SIZE
            assert scoop.worker == f"{socket.gethostname()}:{os.getpid()}".encode(), scoop.worker
            for ident, size, pid, origin in futures.map(who, range(12)):
                assert isinstance(ident, bytes) and ident.endswith(b":%d" % pid), (ident, pid)
                assert size == 3 and origin is False
            print("ok", len({r[0] for r in futures.map(who, range(12))}) >= 1)
        """,
        launcher=("-n", "3"),
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == ["ok", "True"]


def test_map_as_completed_yields_in_completion_order(executor, tmp_path):
    gate = str(tmp_path / "gate")
    with executor:
        it = futures.map_as_completed(h.wait_for_file, [gate, "/", "/"], ["slow", "a", "b"])
        assert sorted([next(it), next(it)]) == ["a", "b"]
        open(gate, "w").close()
        assert list(it) == ["slow"]


def test_timeouts_are_honoured(executor, tmp_path):
    gate = str(tmp_path / "gate")  # the tasks block until the test opens the gate
    with executor:
        with pytest.raises(futures.TimeoutError):
            list(futures.map(h.wait_for_file, [gate], [1], timeout=0.2))
        with pytest.raises(futures.TimeoutError):
            list(futures.map_as_completed(h.wait_for_file, [gate], [1], timeout=0.2))
        f = futures.submit(h.wait_for_file, gate, 2)
        with pytest.raises(futures.TimeoutError):
            f.result(timeout=0.1)
        done, not_done = futures.wait([f], timeout=0.1)
        assert not done and not_done == {f}
        with pytest.raises(futures.TimeoutError):
            list(futures.as_completed([f], timeout=0.1))
        with pytest.raises(futures.TimeoutError):
            futures.mapReduce(h.wait_for_file, operator.add, [gate, gate], [1, 2], timeout=0.3)
        assert shared.getConst("never set", timeout=0.05) is None
        open(gate, "w").close()
        assert f.result(timeout=60) == 2


def test_timeouts_are_honoured_inside_tasks(executor, tmp_path):
    gate = str(tmp_path / "gate")
    with executor:
        assert futures.submit(h.futures_map_with_timeout, gate).result(timeout=60) == "timeout"
        assert futures.submit(h.get_const, "missing", 0.05).result(timeout=60) is None
        open(gate, "w").close()


def test_submit_wait_as_completed_and_callbacks(executor):
    with executor:
        fs = [futures.submit(h.square, i) for i in range(5)]
        assert all(isinstance(f, futures.Future) for f in fs)
        done, not_done = futures.wait(fs, timeout=-1)  # SCOOP: negative means no limit
        assert len(done) == 5 and not not_done
        assert sorted(f.result() for f in futures.as_completed(fs)) == [0, 1, 4, 9, 16]
        called = []
        f = futures.submit(h.square, 7)
        f.add_done_callback(lambda fut: called.append(fut.result()))
        futures.wait([f], return_when=futures.FIRST_COMPLETED)
        deadline = time.monotonic() + 30
        while not called and time.monotonic() < deadline:
            time.sleep(0.01)
        assert called == [49]
        assert futures.submit(h.nested_futures_map, 5).result() == [0, 1, 4, 9, 16]


def test_map_reduce_and_map_scan_fold_in_order(executor):
    words = ["a", "b", "c", "d", "e", "f"]
    with executor:
        assert futures.mapReduce(str.upper, h.concat, words) == "ABCDEF"  # not commutative
        assert futures.mapScan(str.upper, h.concat, words) == list(itertools.accumulate("ABCDEF"))
        assert futures.mapScan(h.square, operator.add, range(5)) == [0, 1, 5, 14, 30]
        assert futures.mapReduce(h.square, operator.add, range(100), chunksize=9) == sum(
            i * i for i in range(100)
        )
        assert futures.mapScan(h.square, operator.add, []) == []
        with pytest.raises(TypeError, match="empty"):
            futures.mapReduce(h.square, operator.add, [])
        with pytest.raises(ValueError, match="failed on purpose"):
            futures.mapReduce(h.fail_soon, operator.add, [0, 0])


def test_shutdown_leaves_an_active_executor_running(executor):
    with executor:
        futures.submit(h.square, 2)
        futures.shutdown()
        assert futures.submit(h.square, 3).result() == 9


def test_default_pool_outside_the_launcher_and_shutdown(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(
            """
            import os
            import scoopexec
            from scoopexec import futures
            from tests.compat_helpers import getpid
            print(os.getpid() not in set(futures.map(getpid, range(20))))
            pids = scoopexec.api.default_executor().worker_pids
            futures.shutdown()
            import psutil
            print(any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids))
            print(list(futures.map(abs, [-1, -2])))   # a new default pool
            """
        )],
        capture_output=True, check=False, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split("\n")[:3] == ["True", "False", "[1, 2]"]


# -------------------------------------------------------------------- shared
def test_set_const_reaches_every_worker_once(executor):
    with executor:
        shared.setConst(table={"a": 1}, factor=3)
        seen = {}
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            for f in [futures.submit(h.pid_and_const_slowly, "table") for _ in range(6)]:
                pid, value = f.result()
                seen[pid] = value
        assert set(seen) == set(executor.worker_pids) and all(v == {"a": 1} for v in seen.values())
        assert shared.getConst("factor") == 3  # in the client too
        with pytest.raises(TypeError, match="This constant already exists: factor"):
            shared.setConst(fresh=1, factor=4)
        assert shared.getConst("fresh", timeout=0) is None  # all or nothing
        assert futures.submit(h.get_const, "factor", 0).result() == 3
        with pytest.raises(RuntimeError, match="main process"):
            futures.submit(h.set_const_in_task, 0).result()


def test_get_const_waits_for_a_constant_set_after_the_task_started(one_worker, tmp_path):
    marker = str(tmp_path / "started")
    with one_worker:
        f = futures.submit(h.start_then_get_const, marker, "late", 60)
        deadline = time.monotonic() + 60
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        shared.setConst(late=7)
        assert f.result(timeout=60) == 7
        assert futures.submit(h.get_const, "missing", 0.05).result() is None


def test_constants_reach_workers_that_join_later():
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0") as ex:
        shared.setConst(k=42)
        first = futures.submit(h.pid_and_const, "k").result()
        assert first[1] == 42
        late = subprocess.Popen(
            [sys.executable, "-m", "scoopexec", "worker", "--connect", ex.endpoint],
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
        try:
            seen = {}
            deadline = time.monotonic() + 60
            while len(seen) < 2 and time.monotonic() < deadline:
                for f in [futures.submit(h.pid_and_const_slowly, "k") for _ in range(6)]:
                    pid, value = f.result()
                    seen[pid] = value
            assert len(seen) == 2 and set(seen.values()) == {42}
        finally:
            ex.shutdown()
            late.terminate()
            late.wait(10)


def test_shared_is_still_callable_and_picklable(executor):
    import pickle

    assert callable(scoopexec.shared) and scoopexec.shared is shared
    assert pickle.loads(pickle.dumps(shared)) is shared
    with executor:
        executor.share("x", [1])
        assert executor.submit(h.read_shared, "x").result() == [1]
        with pytest.raises(KeyError):
            scoopexec.shared("not there")  # the strict lookup, as before
    assert isinstance(futures.Future(), cf.Future)
