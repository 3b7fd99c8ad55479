"""A real SLURM cluster on this machine (munged, slurmctld, three slurmd): hosts="auto" uses srun."""

from __future__ import annotations

import os
import textwrap

import pytest

from tests.cluster_fixtures import slurm  # noqa: F401
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(300)

PROGRAM = """
import collections, os, sys
from scoopexec import ScoopExecutor
from tests import helpers

if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else None
    with ScoopExecutor(n, hosts="auto") as ex:
        results = list(ex.map(helpers.slow_where, [0.3] * 40))
        nodes = collections.Counter(r[4] for r in results)
        pids = {r[0] for r in results}
        print("WORKERS", ex._max_workers, len(pids), flush=True)
        print("NODES", " ".join(f"{k}={v}" for k, v in sorted(nodes.items())), flush=True)
        print("NESTED", ex.submit(helpers.fib, 10).result(timeout=60), flush=True)
"""


def _program(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent(PROGRAM))
    return path


def _env(cluster):
    return dict(cluster.env, PYTHONPATH=ROOT)


def _parse(out: str) -> dict[str, list[str]]:
    lines = [line.split() for line in out.splitlines() if line[:1].isupper() and " " in line]
    return {words[0]: words[1:] for words in lines}


def test_sbatch_job_spreads_tasks_over_the_allocation(slurm, tmp_path):  # noqa: F811
    import sys

    prog = _program(tmp_path)
    script = f"#!/bin/bash\ncd {tmp_path}\nexec {sys.executable} {prog}\n"
    code, out = slurm.sbatch(script, "-N3", "-n6", env=_env(slurm))
    got = _parse(out)
    assert code == 0, out
    assert got["WORKERS"] == ["6", "6"], out
    nodes = dict(item.split("=") for item in got["NODES"])
    assert set(nodes) == {"node1", "node2", "node3"}, out  # every task reports SLURMD_NODENAME
    assert got["NESTED"] == ["55"], out


def test_salloc_with_a_worker_cap(slurm, tmp_path):  # noqa: F811
    import sys

    prog = _program(tmp_path)
    r = slurm.run(
        ["salloc", "-N2", "-n4", sys.executable, str(prog), "3"], env=_env(slurm), cwd=str(tmp_path)
    )
    got = _parse(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert got["WORKERS"] == ["3", "3"], r.stdout
    nodes = dict(item.split("=") for item in got["NODES"])
    assert set(nodes) <= {"node1", "node2"} and nodes, r.stdout


def test_outside_an_allocation_auto_means_local(monkeypatch):
    from scoopexec import ScoopExecutor

    for var in list(os.environ):
        if var.startswith(("SLURM_", "PBS_", "PE_HOSTFILE")):
            monkeypatch.delenv(var)
    with ScoopExecutor(2, hosts="auto") as ex:
        assert len(ex.worker_pids) == 2
        assert ex.submit(abs, -3).result(timeout=60) == 3


def test_killing_the_client_in_an_allocation_leaves_no_worker(slurm, tmp_path):  # noqa: F811
    import signal
    import subprocess
    import sys
    import time

    prog = tmp_path / "client.py"
    prog.write_text(
        textwrap.dedent(
            """
            import os, time
            from scoopexec import ScoopExecutor
            from tests import helpers
            if __name__ == "__main__":
                ex = ScoopExecutor(hosts="auto")
                pids = set()
                while len(pids) < 3:
                    pids |= {r[0] for r in ex.map(helpers.slow_where, [0.05] * 12)}
                print(os.getpid(), *sorted(pids), flush=True)
                ex.submit(time.sleep, 600)
                time.sleep(600)
            """
        )
    )
    proc = subprocess.Popen(
        ["salloc", "-N3", "-n3", sys.executable, str(prog)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=_env(slurm),
        cwd=str(tmp_path),
    )
    try:
        client, *workers = (int(p) for p in proc.stdout.readline().split())
        assert len(workers) == 3
        os.kill(client, signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    deadline = time.monotonic() + 60
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [p for p in workers if _running(p)]
        time.sleep(0.2)
    assert not alive, f"workers left behind: {alive}"


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


ENV_PROGRAM = """
import sys
from scoopexec import ScoopExecutor


def use_module(_):
    import h14b_srun_env_mod

    return h14b_srun_env_mod.VALUE


if __name__ == "__main__":
    with ScoopExecutor(hosts="auto", env={"PYTHONPATH": sys.argv[1]}) as ex:
        print("VALUES", *sorted(set(ex.map(use_module, range(8)))), flush=True)
"""


def test_env_pythonpath_under_srun_is_merged(slurm, tmp_path):  # noqa: F811
    """env={"PYTHONPATH": ...} once raised TypeError (two PYTHONPATH arguments) when srun started workers."""
    import sys

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "h14b_srun_env_mod.py").write_text("VALUE = 'from-the-env-path'\n")
    prog = tmp_path / "envprog.py"
    prog.write_text(textwrap.dedent(ENV_PROGRAM))
    r = slurm.run(
        ["salloc", "-N2", "-n2", sys.executable, str(prog), str(mods)], env=_env(slurm), cwd=str(tmp_path)
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert _parse(r.stdout)["VALUES"] == ["from-the-env-path"], r.stdout
