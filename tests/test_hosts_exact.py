"""hosts.py at its edges: exact error texts (what the user reads), boundaries, fallbacks.

Written against the survivors of a mutation run (tox -e mutation): each test
here fails for some change of hosts.py that the broader tests in test_hosts.py
let through.
"""

from __future__ import annotations

import socket

import pytest

from scoopexec.deploy.hosts import (
    MAX_EXPANSION,
    Host,
    detect_allocation,
    distribute,
    expand_ranges,
    is_this_machine,
    parse_hosts,
    read_hostfile,
    tasks_per_node,
)


def names(hosts):
    return [str(h) for h in hosts]


def refused(fn, *args, exc=ValueError):
    with pytest.raises(exc) as info:
        fn(*args)
    return str(info.value)


# ------------------------------------------------------------ this machine
@pytest.mark.parametrize(
    "name",
    ["localhost", "LOCALHOST", "localhost.localdomain", "::1", "[::1]", "0:0:0:0:0:0:0:1", "127.0.0.1",
     "127.3.4.5", "127.1", "[0:0:0:0:0:0:0:1]"],
)  # fmt: skip
def test_loopback_names_are_this_machine(name):
    assert is_this_machine(name)


@pytest.mark.parametrize("name", ["127.example.org", "127.0.0.1.example.org", "127-0-0-1", "127.", "127"])
def test_a_name_that_starts_like_a_loopback_address_is_not_this_machine(name):
    assert not is_this_machine(name)  # such a host is reached through ssh


def test_our_own_host_names_are_this_machine():
    here = socket.gethostname()
    assert is_this_machine(here) and is_this_machine(here.upper())
    assert is_this_machine(here.split(".")[0])
    assert is_this_machine(socket.getfqdn()) and is_this_machine(socket.getfqdn().upper())
    assert not is_this_machine("node-that-is-not-here") and not is_this_machine("128.0.0.1")
    assert not is_this_machine("Xlocalhost")  # only brackets are stripped


def test_a_local_spec_has_no_user():
    (h,) = parse_hosts(["localhost:2"])
    assert h.user is None and h.local and h.target == "localhost"


# ------------------------------------------------------------ ranges
def test_range_messages():
    assert refused(expand_ranges, "n[x]") == "bad range 'x' in 'n[x]' (expected N or N-M)"
    assert refused(expand_ranges, "n[3-1]", "here") == "here: range '3-1' in 'n[3-1]' goes downwards"
    assert refused(expand_ranges, "n[1]x]") == "unbalanced brackets in 'n[1]x]'"
    assert refused(expand_ranges, "a[1]b[2]c]") == "unbalanced brackets in 'a[1]b[2]c]'"
    big = f"n[0-{MAX_EXPANSION}]"
    assert refused(expand_ranges, big) == f"range '0-{MAX_EXPANSION}' in {big!r} is too large"


def test_range_size_limits_are_exact():
    assert len(expand_ranges(f"n[1-{MAX_EXPANSION}]")) == MAX_EXPANSION  # one range of exactly the limit
    assert len(expand_ranges("a[1-100]b[1-1000]")) == MAX_EXPANSION  # groups multiplying to exactly it
    assert expand_ranges("n[60000-60001]") == ["n60000", "n60001"]  # large numbers, small range
    assert refused(expand_ranges, "r[1-400]n[1-400]", "w") == (
        f"w: 'r[1-400]n[1-400]' expands to more than {MAX_EXPANSION} hosts"
    )


def test_a_range_may_start_a_name():
    assert names(parse_hosts(["[1-2]n"])) == ["1n", "2n"]
    # a colon inside brackets is a range (and a bad one), not an IPv6 address unless it is all of it
    assert refused(parse_hosts, ["a[1:2]"]) == (
        "hosts[0] 'a[1:2]': bad range '1:2' in 'a[1:2]' (expected N or N-M)"
    )


# ------------------------------------------------------------ specs
@pytest.mark.parametrize(
    "specs, message",
    [
        (["a@b@c"], "hosts[0] 'a@b@c': bad host name 'b@c' in 'a@b@c' (letters, digits, '.', '-', '_'; "
                    "not starting with '-')"),
        ([":4"], "hosts[0] ':4': bad host name '' in ':4' (letters, digits, '.', '-', '_'; "
                 "not starting with '-')"),
        (["node2:x"], "hosts[0] 'node2:x': bad worker count 'x' in 'node2:x' (expected a positive integer)"),
        (["node2:0"], "hosts[0] 'node2:0': worker count in 'node2:0' must be at least 1"),
        (["ok", "b d@h"], "hosts[1] 'b d@h': bad user name 'b d' in 'b d@h'"),
        (["a", "a:2"], "hosts[1] 'a:2': host a is listed again (first at hosts[0] 'a'), and one of the two "
                       "has no worker count: give both a count, or list it once"),
        ([], "hosts: no host given"),
    ],
)  # fmt: skip
def test_spec_messages(specs, message):
    assert refused(parse_hosts, specs) == message


def test_string_and_mapping_messages():
    assert refused(parse_hosts, "a b:x") == (
        "hosts: 'b:x' (item 2): bad worker count 'x' in 'b:x' (expected a positive integer)"
    )
    assert refused(parse_hosts, " , ") == "hosts: no host given"
    assert refused(parse_hosts, {"a:2": 3}) == "hosts['a:2']: 'a:2' gives a worker count twice"
    assert refused(parse_hosts, {"a": "2"}) == "hosts['a']: worker count must be an integer >= 1, not '2'"
    assert refused(parse_hosts, {"a": True}) == "hosts['a']: worker count must be an integer >= 1, not True"
    assert refused(parse_hosts, {3: 1}, exc=TypeError) == "hosts: host names must be strings, not int"
    assert refused(parse_hosts, [b"x"], exc=TypeError) == "hosts[0]: a host spec is a string, not bytes"
    assert refused(parse_hosts, 3, exc=TypeError) == (
        "hosts must be a list of host specs, a string, a mapping or 'auto', not int"
    )
    assert names(parse_hosts({"a": 1})) == ["a:1"]
    (h,) = parse_hosts({"n": 2}, "mine")
    assert h.where == "mine['n']"


# ------------------------------------------------------------ hostfiles
def test_hostfile_details(tmp_path):
    f = tmp_path / "hosts.txt"
    f.write_text("node1 2 # a # b\nnode2 cpu=3\nnode3 slots=1\n")
    assert names(read_hostfile(f)) == ["node1:2", "node2:3", "node3:1"]
    f.write_text("node1 4\nnode1 four\n")
    assert refused(read_hostfile, f) == (
        f"{f} line 2: bad worker count 'four' in 'node1 four' (expected a positive integer)"
    )
    f.write_text("node1 slots=2=3\n")
    assert refused(read_hostfile, f) == (
        f"{f} line 1: bad worker count '2=3' in 'node1 slots=2=3' (expected a positive integer)"
    )
    f.write_text("node1:2 4\n")
    assert refused(read_hostfile, f) == f"{f} line 1: 'node1:2' gives a worker count twice"
    f.write_bytes(b"node\xff\n")
    assert refused(read_hostfile, f).startswith(f"hostfile {str(f)!r} is not UTF-8 text: ")
    missing = tmp_path / "nope"
    assert refused(read_hostfile, missing) == (
        f"cannot read hostfile {str(missing)!r}: No such file or directory"
    )


# ------------------------------------------------------------ allocations
def test_slurm_fallbacks_and_messages():
    alloc = detect_allocation({"SLURM_JOB_ID": "7", "SLURM_NODELIST": "n[1-2]"})
    assert alloc is not None and names(alloc.hosts) == ["n1:1", "n2:1"]
    assert [h.where for h in alloc.hosts] == ["SLURM_JOB_NODELIST[0]", "SLURM_JOB_NODELIST[1]"]
    assert detect_allocation({"SLURM_NODELIST": "n1"}) is None  # not inside a job
    assert detect_allocation({"SLURM_JOB_ID": "7"}) is None
    alloc = detect_allocation({"SLURM_JOB_NODELIST": "a,b", "SLURM_JOB_CPUS_PER_NODE": "4,2"})
    assert alloc is not None and names(alloc.hosts) == ["a:4", "b:2"]
    alloc = detect_allocation({"SLURM_JOB_NODELIST": "a,b", "SLURM_TASKS_PER_NODE": "0,2"})
    assert alloc is not None and names(alloc.hosts) == ["b:2"]  # a node without tasks gets no worker
    assert refused(detect_allocation, {"SLURM_JOB_NODELIST": ","}) == "SLURM_JOB_NODELIST is empty"
    assert refused(detect_allocation, {"SLURM_JOB_NODELIST": "n[1-"}) == (
        "SLURM_JOB_NODELIST: unbalanced brackets in 'n[1-'"
    )
    assert refused(detect_allocation, {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_TASKS_PER_NODE": "2"}) == (
        "SLURM_JOB_NODELIST names 2 nodes but SLURM_TASKS_PER_NODE='2' gives 1 counts"
    )
    assert refused(tasks_per_node, "2(x") == (
        "SLURM_TASKS_PER_NODE: cannot read '2(x' (expected e.g. '2(x3),1')"
    )


def test_pbs_details(tmp_path):
    f = tmp_path / "nodefile"
    f.write_text("n1#slot#2\n\nn1\n")
    alloc = detect_allocation({"PBS_NODEFILE": str(f)})
    assert alloc is not None and names(alloc.hosts) == ["n1:2"]
    f.write_text("n1\nbad;name\n")
    assert refused(detect_allocation, {"PBS_NODEFILE": str(f)}) == (
        f"PBS_NODEFILE {f} line 2: bad host name 'bad;name' in 'bad;name' "
        "(letters, digits, '.', '-', '_'; not starting with '-')"
    )
    f.write_text("# none\n")
    assert refused(detect_allocation, {"PBS_NODEFILE": str(f)}) == f"PBS_NODEFILE {str(f)!r} names no host"
    assert refused(detect_allocation, {"PBS_NODEFILE": str(tmp_path / "x")}) == (
        f"cannot read PBS_NODEFILE {str(tmp_path / 'x')!r}: No such file or directory"
    )


def test_sge_details(tmp_path):
    f = tmp_path / "pe"
    f.write_text("n1 2 q UNDEFINED\n\nn2 1\n")  # a blank line, and a line of two words
    alloc = detect_allocation({"PE_HOSTFILE": str(f)})
    assert alloc is not None and names(alloc.hosts) == ["n1:2", "n2:1"]
    f.write_text("n1 2 q U\nn2\n")
    assert refused(detect_allocation, {"PE_HOSTFILE": str(f)}) == (
        f"PE_HOSTFILE {f} line 2: expected 'host slots queue processors', got 'n2'"
    )
    f.write_text("n1 x q U\n")
    assert refused(detect_allocation, {"PE_HOSTFILE": str(f)}) == (
        f"PE_HOSTFILE {f} line 1: bad worker count 'x' in 'n1 x q U' (expected a positive integer)"
    )
    f.write_text("b;d 1 q U\n")
    assert refused(detect_allocation, {"PE_HOSTFILE": str(f)}).startswith(f"PE_HOSTFILE {f} line 1: bad host")
    f.write_text("\n")
    assert refused(detect_allocation, {"PE_HOSTFILE": str(f)}) == f"PE_HOSTFILE {str(f)!r} names no host"
    assert refused(detect_allocation, {"PE_HOSTFILE": str(tmp_path / "x")}) == (
        f"cannot read PE_HOSTFILE {str(tmp_path / 'x')!r}: No such file or directory"
    )


def test_the_environment_is_read_by_default(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NODELIST", "envnode[1-2]")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "3(x2)")
    alloc = detect_allocation()
    assert alloc is not None and names(alloc.hosts) == ["envnode1:3", "envnode2:3"]


# ------------------------------------------------------------ placement
def test_distribute_edges():
    hosts = [Host("a", 1), Host("b", 3)]
    assert names(distribute(hosts, 4)) == ["a:1", "b:3"]  # all slots, none more on a
    assert names(distribute(hosts, 1)) == ["a:1"]
    assert names(distribute([Host("a"), Host("b")], 3)) == ["a:2", "b:1"]  # no counts: dealt in turn
    assert refused(distribute, hosts, 0) == "the number of workers must be at least 1"
    assert refused(distribute, hosts, 5) == "5 workers asked for, but the hosts offer 4 slots (a:1, b:3)"
    assert names(distribute([Host("a", 2), Host("b")], 5)) == ["a:2", "b:3"]
