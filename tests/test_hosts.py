"""Host specs, hostfiles, bracket ranges and batch allocations (hosts.py), and PBS/SGE over ssh."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from scoopexec import ScoopExecutor
from scoopexec.deploy.hosts import (
    Host,
    detect_allocation,
    distribute,
    expand_ranges,
    note_local_hosts,
    parse_hostfile_lines,
    parse_hosts,
    read_hostfile,
    tasks_per_node,
)
from tests import helpers
from tests.cluster_fixtures import sshd  # noqa: F401
from tests.conftest import ROOT


def names(hosts):
    return [str(h) for h in hosts]


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("node1", ["node1"]),
        ("node[1-3]", ["node1", "node2", "node3"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("gpu[3]-ib", ["gpu3-ib"]),
    ],
)
def test_bracket_ranges(expr, expected):
    assert expand_ranges(expr) == expected


@pytest.mark.parametrize("expr", ["n[1-", "n1-3]", "n[3-1]", "n[a-b]", "n[]", "n[1-100001]"])
def test_bad_ranges(expr):
    with pytest.raises(ValueError, match="where-it-was"):
        expand_ranges(expr, "where-it-was")


def test_spec_forms():
    assert names(parse_hosts(["node1", "node2:8", "alice@node3:4"])) == ["node1", "node2:8", "alice@node3:4"]
    assert names(parse_hosts({"node1": 8, "node[2-3]": 2})) == ["node1:8", "node2:2", "node3:2"]
    assert names(parse_hosts("node[01-02]:2, other  [::1]:3")) == ["node01:2", "node02:2", "other", "[::1]:3"]
    assert parse_hosts(["alice@[fe80::1]:2"])[0].target == "alice@fe80::1"
    # listed twice: counts add up
    assert names(parse_hosts(["a:2", "b", "a:3"])) == ["a:5", "b"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("node2:x", "bad worker count"),
        ("node2:0", "at least 1"),
        ("-oProxyCommand=evil", "bad host name"),
        ("a;rm -rf", "bad host name"),
        ("$(reboot)", "bad host name"),
        ("bad user@h", "bad user name"),
        ("", "empty host name"),
    ],
)
def test_bad_specs_name_the_item(spec, message):
    with pytest.raises(ValueError, match=rf"hosts\[1\].*{message}"):
        parse_hosts(["ok", spec])


def test_specs_type_errors():
    with pytest.raises(TypeError):
        parse_hosts([3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="must be an integer"):
        parse_hosts({"a": 0})
    with pytest.raises(ValueError, match="listed again"):
        parse_hosts(["a", "a:2"])


def test_hostfile(tmp_path):
    f = tmp_path / "hosts.txt"
    f.write_text(
        "# the lab\n"
        "\n"
        "node1 8\n"
        "node2:4   # trailing comment\n"
        "bob@node3 slots=2\n"
        "gpu[1-2] 1\n"
        "fast\n"
    )
    assert names(read_hostfile(f)) == ["node1:8", "node2:4", "bob@node3:2", "gpu1:1", "gpu2:1", "fast"]


@pytest.mark.parametrize(
    "text, line",
    [("node1 4\nnode2 four\n", 2), ("a\nb 1 2\n", 2), ("x[1-\n", 1), ("ok 1\n\n# c\nbad:host:x\n", 4)],
)
def test_hostfile_errors_name_the_line(tmp_path, text, line):
    f = tmp_path / "hosts.txt"
    f.write_text(text)
    with pytest.raises(ValueError, match=rf"hosts.txt line {line}"):
        read_hostfile(f)


def test_hostfile_missing_or_empty(tmp_path):
    with pytest.raises(ValueError, match="cannot read hostfile"):
        read_hostfile(tmp_path / "nope")
    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="names no host"):
        read_hostfile(tmp_path / "empty")


def test_slurm_allocation_from_environment():
    env = {"SLURM_JOB_NODELIST": "node[01-03],gpu7", "SLURM_TASKS_PER_NODE": "2(x3),4"}
    alloc = detect_allocation(env)
    assert alloc is not None and alloc.kind == "slurm"
    assert names(alloc.hosts) == ["node01:2", "node02:2", "node03:2", "gpu7:4"]
    assert alloc.slots == 10
    assert tasks_per_node("3,1(x2)") == [3, 1, 1]
    with pytest.raises(ValueError, match="gives 1 counts"):
        detect_allocation({"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "2"})


def test_pbs_and_sge_allocations(tmp_path):
    pbs = tmp_path / "nodefile"
    pbs.write_text("n1\nn1\nn2\nn1\n")  # one line per slot
    alloc = detect_allocation({"PBS_NODEFILE": str(pbs)})
    assert alloc is not None and alloc.kind == "pbs" and names(alloc.hosts) == ["n1:3", "n2:1"]
    sge = tmp_path / "pe_hostfile"
    sge.write_text("n1.cluster 4 all.q@n1 UNDEFINED\nn2.cluster 2 all.q@n2 UNDEFINED\n")
    alloc = detect_allocation({"PE_HOSTFILE": str(sge)})
    assert alloc is not None and alloc.kind == "sge"
    assert names(alloc.hosts) == ["n1.cluster:4", "n2.cluster:2"]
    assert detect_allocation({}) is None


def test_distribute_deals_workers_in_turn():
    hosts = parse_hosts(["a:2", "b", "c:1"])
    assert names(distribute(hosts, 5)) == ["a:2", "b:2", "c:1"]
    assert names(distribute(hosts, 2)) == ["a:1", "b:1"]
    assert names(distribute(hosts, None)) == ["a:2", "b", "c:1"]
    with pytest.raises(ValueError, match="offer 3 slots"):
        distribute(parse_hosts(["a:2", "c:1"]), 4)


def test_local_names_start_here():
    assert Host("localhost", 2).local and Host("127.0.0.1").local
    assert not Host("localhost", 2, "alice").local  # another user: through ssh
    assert not Host("node1").local


def test_localhost_in_hosts_means_local_workers(caplog):
    with caplog.at_level(logging.INFO, logger="scoopexec"):
        with ScoopExecutor(hosts=["localhost:2"]) as ex:
            assert len(ex.worker_pids) == 2
            assert ex.submit(abs, -1).result(timeout=60) == 1
    said = [r for r in caplog.records if r.name == "scoopexec.hosts"]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    text = said[0].getMessage()
    assert "'localhost:2'" in text and "2 workers start here as local processes, without ssh" in text
    assert "ssh://localhost" in text


def test_the_local_host_note_is_a_warning_only_when_every_host_is_this_machine(caplog):
    with caplog.at_level(logging.INFO, logger="scoopexec"):
        note_local_hosts(parse_hosts(["127.0.0.1:1", "node1:2"]))
        note_local_hosts(parse_hosts(["node1:2", "ssh://localhost:2"]))  # nothing here is local
    said = [r for r in caplog.records if r.name == "scoopexec.hosts"]
    assert [(r.levelno, "'127.0.0.1:1'" in r.getMessage()) for r in said] == [(logging.INFO, True)]


def test_python_dash_m_scoopexec_says_localhost_runs_local_processes(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("print('ran')\n")
    r = subprocess.run(
        [sys.executable, "-m", "scoopexec", "--hosts", "127.0.0.1:1", str(prog)],
        capture_output=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT), check=False,
    )
    assert r.returncode == 0 and r.stdout == b"ran\n", r.stderr.decode()
    assert b"'127.0.0.1:1': this machine, so 1 worker starts here as local processes, without ssh" in r.stderr


def test_ssh_prefix_forces_ssh():
    h = parse_hosts(["ssh://localhost:2"])[0]
    assert (h.name, h.slots, h.user, h.ssh, h.local, str(h)) == ("localhost", 2, None, True, False, "ssh://localhost:2")
    assert parse_hosts("SSH://alice@127.0.0.1")[0].target == "alice@127.0.0.1"
    assert names(parse_hosts(["localhost:1", "ssh://localhost:2", "localhost:3"])) == [
        "localhost:4", "ssh://localhost:2"
    ]  # fmt: skip
    assert names(parse_hostfile_lines(["ssh://node[1-2] 2"], "f")) == ["ssh://node1:2", "ssh://node2:2"]
    with pytest.raises(ValueError, match="only prefix a host spec takes is 'ssh://'"):
        parse_hosts(["tcp://node1"])
    with pytest.raises(ValueError, match="bad host name"):
        parse_hosts(["ssh://"])


def test_the_launcher_takes_ssh_hosts_for_host_specs_not_scripts():
    from scoopexec.cli import _split

    assert _split(["--hosts", "ssh://127.0.0.1:2", "node2", "prog.py", "-x"]) == (
        ["--hosts", "ssh://127.0.0.1:2", "node2"], ["prog.py", "-x"]
    )  # fmt: skip


def test_ssh_prefix_starts_workers_on_this_machine_through_its_sshd(sshd, caplog):  # noqa: F811
    config = sshd.ssh_config(["127.0.0.1", "localhost"], name="ssh_config_loopback")
    with caplog.at_level(logging.INFO, logger="scoopexec"):
        with ScoopExecutor(hosts=["ssh://127.0.0.1:2"], ssh=["ssh", "-F", config]) as ex:
            results = list(ex.map(helpers.slow_where, [0.05] * 20))
            assert not ex.worker_pids  # none started here directly
    assert all(r[1] for r in results), "every task ran in an ssh session"
    assert 1 <= len({r[0] for r in results}) <= 2
    assert not [r for r in caplog.records if r.name == "scoopexec.hosts"]


def test_pbs_and_sge_allocations_start_workers_over_ssh(sshd, tmp_path, monkeypatch):  # noqa: F811
    config = sshd.ssh_config(["node1", "node2"], name="ssh_config_batch")
    for var in ("SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID", "PBS_NODEFILE", "PE_HOSTFILE"):
        monkeypatch.delenv(var, raising=False)
    sge = tmp_path / "pe_hostfile"
    sge.write_text("node1 2 all.q@node1 UNDEFINED\nnode2 1 all.q@node2 UNDEFINED\n")
    monkeypatch.setenv("PE_HOSTFILE", str(sge))
    with ScoopExecutor(hosts="auto", ssh=["ssh", "-F", config]) as ex:
        results = list(ex.map(helpers.slow_where, [0.05] * 20))
        assert all(r[1] for r in results), "started over ssh"
        assert len(ex._session.broker.status()["workers"]) == 3
    monkeypatch.delenv("PE_HOSTFILE")
    pbs = tmp_path / "nodefile"
    pbs.write_text("node1\nnode2\n")
    monkeypatch.setenv("PBS_NODEFILE", str(pbs))
    with ScoopExecutor(hosts="auto", ssh=["ssh", "-F", config]) as ex:
        assert all(r[1] for r in ex.map(helpers.slow_where, [0.05] * 8))
        assert len(ex._session.broker.status()["workers"]) == 2
