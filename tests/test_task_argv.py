"""Inside a task, sys.argv is the client's, as in ProcessPoolExecutor's spawned workers.

Workers are started as ``python -m scoopexec worker --connect ...``; code in a task (or at the top
level of the client's script, which workers import) that reads its arguments must not see that.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import textwrap

import pytest

from scoopexec import ScoopExecutor
from tests.cluster_fixtures import env_with_root, keygen, sshd  # noqa: F401
from tests.conftest import ROOT, run_script
from tests.test_standalone import _start_workers, broker  # noqa: F401

SCRIPT = """
import json, sys
from scoopexec import ScoopExecutor

AT_IMPORT = list(sys.argv)  # evaluated again on each worker, importing this script


def argv_in_task(_):
    return list(sys.argv), AT_IMPORT


if __name__ == "__main__":
    with ScoopExecutor(2) as ex:
        seen = list(ex.map(argv_in_task, range(8)))
    print(json.dumps({"client": sys.argv, "tasks": seen}))
"""

LAUNCHED = """
import json, sys
import scoopexec


def argv_in_task(_):
    return list(sys.argv)


if __name__ == "__main__":
    seen = list(scoopexec.map(argv_in_task, range(8)))
    print(json.dumps({"client": sys.argv, "tasks": seen}))
"""


def _last_json(stdout: bytes) -> dict:
    return json.loads(stdout.decode().strip().splitlines()[-1])


@pytest.mark.timeout(120)
def test_tasks_see_the_client_scripts_argv():
    r = run_script(SCRIPT, "alpha", "--beta", "3 4")
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    out = _last_json(r.stdout)
    assert out["client"][1:] == ["alpha", "--beta", "3 4"]
    for in_task, at_import in out["tasks"]:
        assert in_task == out["client"]
        assert at_import == out["client"]  # the script's top level, run on the worker, saw it too


@pytest.mark.timeout(120)
def test_tasks_see_the_scripts_argv_under_the_launcher(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(LAUNCHED))
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(
        [sys.executable, "-m", "scoopexec", "-n", "2", str(script), "in", "-x", "--", "out"],
        capture_output=True,
        timeout=90,
        check=False,
        cwd=str(tmp_path),
        env=env,
    )
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    out = _last_json(r.stdout)
    assert out["client"] == [str(script), "in", "-x", "--", "out"]
    assert all(seen == out["client"] for seen in out["tasks"])


def _argv(_=None):
    return list(sys.argv)


def _argv_around_a_park(t):
    before = list(sys.argv)
    cf.wait([cf.Future()], timeout=t)  # parks the task: the worker runs other clients' tasks
    return before, list(sys.argv)


@pytest.mark.timeout(120)
def test_tasks_see_the_argv_of_the_client_that_submitted_them(broker, monkeypatch):  # noqa: F811
    # One worker serves two clients whose tasks interleave (each parks mid-way).
    addr, _ = broker
    workers = _start_workers(addr, 1)
    try:
        monkeypatch.setattr(sys, "argv", ["client-a", "1"])
        with ScoopExecutor(broker=addr) as a:
            monkeypatch.setattr(sys, "argv", ["client-b", "2"])
            with ScoopExecutor(broker=addr) as b:
                fa = [a.submit(_argv_around_a_park, 0.05) for _ in range(10)]
                fb = [b.submit(_argv_around_a_park, 0.05) for _ in range(10)]
                assert [f.result(timeout=60) for f in fa] == [(["client-a", "1"],) * 2] * 10
                assert [f.result(timeout=60) for f in fb] == [(["client-b", "2"],) * 2] * 10
    finally:
        workers.terminate()
        workers.wait(30)


@pytest.mark.timeout(180)
def test_remote_workers_see_the_clients_argv(sshd, monkeypatch):  # noqa: F811
    monkeypatch.setattr(sys, "argv", ["over-ssh.py", "--flag", "é"])
    config = sshd.ssh_config(["node1"])
    with ScoopExecutor(hosts=["node1:2"], ssh=["ssh", "-F", config]) as ex:
        seen = list(ex.map(_argv, range(6)))
        assert not set(ex.worker_pids)  # no local worker: these ran in the ssh session
    assert seen == [["over-ssh.py", "--flag", "é"]] * 6
