"""Workers on "other hosts" through a real OpenSSH server on 127.0.0.1 (host keys checked)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from scoopexec import LaunchError, ScoopExecutor
from tests import helpers
from tests.cluster_fixtures import env_with_root, keygen, sshd  # noqa: F401

pytestmark = pytest.mark.timeout(180)


def _pool(sshd, hosts, **kw):  # noqa: F811
    config = sshd.ssh_config(["node1", "node2", "node3"])
    return ScoopExecutor(hosts=hosts, ssh=["ssh", "-F", config], **kw)


def _remote_pids(ex, n=40):
    return {r[0] for r in ex.map(helpers.slow_where, [0.02] * n) if r[1]}


def test_pool_over_ssh_runs_tasks(sshd, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    with _pool(sshd, ["node1:2", "node2:1"], env={"SCOOPEXEC_TEST_MARK": "over-ssh"}) as ex:
        results = list(ex.map(helpers.slow_where, [0.05] * 30))
        pids = {r[0] for r in results}
        assert all(r[1] for r in results), "every task ran in an ssh session"
        assert {r[2] for r in results} == {str(tmp_path)}, "same working directory as the client"
        assert {r[3] for r in results} == {"over-ssh"}, "env= reaches remote workers"
        assert 1 <= len(pids) <= 3 and not pids & set(ex.worker_pids)
        assert ex.submit(helpers.fib, 12).result(timeout=60) == 144  # nested tasks on remote workers
        with pytest.raises(ValueError, match="remote boom"):
            ex.submit(helpers.raise_value_error, "remote boom").result(timeout=60)
        status = ex._session.broker.status()
        assert len(status["workers"]) == 3
        assert any(e["curve"] and e["endpoint"].startswith("tcp://") for e in status["endpoints"])
    # the ssh sessions ended with the pool
    deadline = time.monotonic() + 30
    while sshd.sessions() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sshd.sessions()


def test_hostfile_over_ssh(sshd, tmp_path):  # noqa: F811
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("# lab machines\nnode1 2\n\nnode2:1   # the small one\n")
    config = sshd.ssh_config(["node1", "node2"])
    with ScoopExecutor(hostfile=str(hostfile), ssh=["ssh", "-F", config]) as ex:
        assert ex._max_workers == 3
        assert sorted(ex.map(abs, range(-10, 0))) == list(range(1, 11))
        # the map may be done before the last worker's ssh session connects: wait for it
        deadline = time.monotonic() + 60
        while len(ex.status().workers) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ex.status().workers) == 3


def test_wrong_host_key_is_refused(sshd, tmp_path):  # noqa: F811
    other = keygen(str(tmp_path / "other_host_key"), "not-the-server")
    known = sshd.write_known_hosts("known_hosts_wrong", other)
    config = sshd.ssh_config(["node1"], name="ssh_config_wrong", known_hosts=known)
    refused = r"node1[\s\S]*(HOST IDENTIFICATION HAS CHANGED|Host key verification failed)"
    with pytest.raises(LaunchError, match=refused):
        ScoopExecutor(hosts=["node1:1"], ssh=["ssh", "-F", config])


def test_unknown_host_key_is_refused(sshd, tmp_path):  # noqa: F811
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    config = sshd.ssh_config(["node1"], name="ssh_config_unknown", known_hosts=str(empty))
    with pytest.raises(LaunchError, match=r"node1[\s\S]*Host key verification failed"):
        ScoopExecutor(hosts=["node1:1"], ssh=["ssh", "-F", config])


def test_refused_authentication_names_the_host(sshd, tmp_path):  # noqa: F811
    keygen(str(tmp_path / "stranger"), "stranger")
    config = sshd.ssh_config(["node3"], name="ssh_config_stranger", identity=str(tmp_path / "stranger"))
    with pytest.raises(LaunchError, match=r"node3[\s\S]*Permission denied"):
        ScoopExecutor(hosts=["node2:1", "node3:1"], ssh=["ssh", "-F", config])


def test_unreachable_host_fails_fast(sshd):  # noqa: F811
    from tests.cluster_fixtures import free_ports

    config = sshd.ssh_config(["node1"], name="ssh_config_closed", port=free_ports(1)[0])
    with pytest.raises(LaunchError, match=r"node1[\s\S]*Connection refused"):
        ScoopExecutor(hosts=["node1:1"], ssh=["ssh", "-F", config], connect_timeout=5)


def test_missing_python_or_directory_is_reported(sshd, tmp_path):  # noqa: F811
    with pytest.raises(LaunchError, match=r"node1[\s\S]*/no/such/python"):
        _pool(sshd, ["node1:1"], python="/no/such/python")
    with pytest.raises(LaunchError, match=r"node1[\s\S]*/no/such/dir"):
        _pool(sshd, ["node1:1"], cwd="/no/such/dir")


def test_killing_the_client_leaves_no_remote_worker(sshd, tmp_path):  # noqa: F811
    config = sshd.ssh_config(["node1", "node2"], name="ssh_config_kill")
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from scoopexec import ScoopExecutor
            from tests import helpers
            if __name__ == "__main__":
                ex = ScoopExecutor(hosts=["node1:2", "node2:1"], ssh=["ssh", "-F", {config!r}])
                pids = set()
                while len(pids) < 3:
                    pids |= {{r[0] for r in ex.map(helpers.slow_where, [0.05] * 12)}}
                print(" ".join(map(str, sorted(pids))), flush=True)
                ex.submit(time.sleep, 600)
                time.sleep(600)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, env=env_with_root(), cwd=str(tmp_path)
    )
    try:
        line = proc.stdout.readline().decode()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 3, line
        assert all(psutil.pid_exists(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    # The ssh clients get EOF on stdin, the remote groups EOF from sshd: all workers exit.
    deadline = time.monotonic() + 60
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _running(p)]
        time.sleep(0.2)
    assert not alive, f"remote workers left behind: {alive}"
    # the orphaned ssh clients (children of the killed client) end too
    deadline = time.monotonic() + 30
    while sshd.sessions() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not sshd.sessions()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_elastic_pool_over_ssh(sshd):  # noqa: F811
    config = sshd.ssh_config(["node1", "node2"], name="ssh_config_elastic")
    with ScoopExecutor(1, ssh=["ssh", "-F", config]) as ex:
        assert _remote_pids(ex, 8) == set()
        ex.add_workers(hosts=["node1:2"])
        deadline = time.monotonic() + 60
        seen = set()
        while len(seen) < 2 and time.monotonic() < deadline:
            seen |= _remote_pids(ex)
        assert len(seen) == 2, "the broker uses workers that join at once"
        assert ex.remove_workers(["node1"]) == 1
        # no remote worker is left; the pool carries on locally
        deadline = time.monotonic() + 30
        while any(_running(p) for p in seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(p) for p in seen)
        assert _remote_pids(ex, 8) == set()


def test_zero_worker_pool_queues_until_a_worker_joins(sshd):  # noqa: F811
    config = sshd.ssh_config(["node1", "node2"], name="ssh_config_zero")
    with ScoopExecutor(hosts=["node1:1"], ssh=["ssh", "-F", config]) as ex:
        ex.remove_workers(["node1"])
        deadline = time.monotonic() + 30
        while ex._session.broker.status()["workers"] and time.monotonic() < deadline:
            time.sleep(0.05)
        fut = ex.submit(helpers.where_am_i)
        time.sleep(1.0)
        assert not fut.done(), "queued, not failed, while the pool has no worker"
        ex.add_workers(hosts=["node2:1"])
        assert fut.result(timeout=60)[1], "ran on the worker that joined over ssh"


def test_bad_host_specs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"hosts\[1\].*bad worker count"):
        ScoopExecutor(hosts=["node1", "node2:x"])
    bad = tmp_path / "hosts.txt"
    bad.write_text("node1 4\nnode2 four\n")
    with pytest.raises(ValueError, match=r"hosts.txt line 2"):
        ScoopExecutor(hostfile=str(bad))
    with pytest.raises(ValueError, match="not both"):
        ScoopExecutor(hosts=["a"], hostfile=str(bad))
    with pytest.raises(ValueError, match="offer 3 slots"):
        ScoopExecutor(5, hosts=["a:2", "b:1"])


def test_host_without_count_runs_one_worker_per_cpu_and_crashed_workers_are_replaced(sshd):  # noqa: F811
    from scoopexec import WorkerLostError
    from scoopexec.deploy.hosts import local_cpu_count as _default_workers

    with _pool(sshd, ["node1"], max_retries=1) as ex:
        deadline = time.monotonic() + 60
        while len(ex._session.broker.status()["workers"]) < _default_workers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ex._session.broker.status()["workers"]) == _default_workers()
        with pytest.raises(WorkerLostError):
            ex.submit(helpers.crash_worker).result(timeout=120)
        # the remote worker group started replacements: the pool is whole again
        deadline = time.monotonic() + 60
        while len(ex._session.broker.status()["workers"]) < _default_workers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ex._session.broker.status()["workers"]) == _default_workers()
        assert all(r[1] for r in ex.map(helpers.slow_where, [0.01] * 8))


def test_remote_command_line_is_quoted(sshd, tmp_path):  # noqa: F811
    odd = tmp_path / "dir with 'quotes' $HOME; and spaces"
    odd.mkdir()
    value = "a b; echo pwned $(id) `id` \"x\" 'y' \\ end"
    with _pool(sshd, ["node1:1"], cwd=str(odd), env={"SCOOPEXEC_TEST_MARK": value}) as ex:
        _pid, ssh_conn, cwd, mark, _node = ex.submit(helpers.where_am_i).result(timeout=60)
        assert ssh_conn and mark == value
        assert cwd == str(odd), "cwd= is where remote tasks run"


def test_cwd_applies_to_local_workers_too(tmp_path):
    with ScoopExecutor(1, cwd=str(tmp_path)) as ex:
        assert ex.submit(helpers.where_am_i).result(timeout=60)[2] == str(tmp_path)
    with ScoopExecutor(1) as ex:
        assert ex.submit(helpers.where_am_i).result(timeout=60)[2] == os.getcwd()
