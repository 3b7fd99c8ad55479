"""The worker's command line (deploy/contract.py): what launchers build is what the worker reads."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from scoopexec.deploy import contract


def _sample(o: contract.Option):
    if o.kind is bool:
        return True
    if o.kind is float:
        return 2.5
    if o.kind is int:
        return 7
    return "auto" if o.dest == "workers" else f"value-of-{o.dest}"


def test_every_option_built_by_a_launcher_reads_back_the_same():
    values = {o.dest: _sample(o) for o in contract.OPTIONS}
    argv = contract.worker_argv(**values)
    assert argv[:3] == ["-m", "scoopexec", "worker"]
    parsed = vars(contract.parser().parse_args(argv[3:]))
    assert parsed == values


def test_a_launchers_command_line_is_read_as_argparse_reads_it():
    values = {o.dest: _sample(o) for o in contract.OPTIONS}
    cases = [values, {}, {"connect": "ipc:///x", "heartbeat": 0.5, "max_message_size": 10, "key_stdin": True}]
    cases += [{o.dest: _sample(o)} for o in contract.OPTIONS]
    for given in cases:
        argv = contract.worker_argv(**given)[3:]
        assert contract.read_argv(argv) == vars(contract.parser().parse_args(argv)), argv
    assert contract.read_argv(["-n", "2", "--connect", "tcp://h:1"])["workers"] == "2"  # a short flag
    # Any other form is argparse's to read (or to refuse): abbreviations, '=', a value that looks
    # like a flag, a missing or malformed value, a word that is no flag.
    odd_ones = (
        ["--conn", "x"], ["--connect=x"], ["--tag", "-x"], ["--max-message-size", "-1"], ["--heartbeat"],
        ["--heartbeat", "soon"], ["--link-fd", "3.5"], ["stray"], ["--connect", "x", "--"],
    )  # fmt: skip
    for odd in odd_ones:
        assert contract.read_argv(odd) is None, odd


def test_defaults_and_false_switches_are_left_out():
    argv = contract.worker_argv(connect="ipc:///x", ready=False, link_fd=None, heartbeat=1.0)
    assert argv == ["-m", "scoopexec", "worker", "--connect", "ipc:///x", "--heartbeat", "1.0"]
    parsed = contract.parser().parse_args(argv[3:])
    assert parsed.ready is False and parsed.link_fd is None and parsed.heartbeat_timeout == 5.0


def test_a_flag_the_worker_does_not_know_cannot_be_built():
    with pytest.raises(TypeError, match="no option 'colour'"):
        contract.worker_argv(colour="blue")


def test_hidden_flags_stay_out_of_the_help():
    text = contract.parser().format_help()
    for o in contract.OPTIONS:
        shown = o.flags[-1] in text
        assert shown == (o.help != contract.HIDDEN), o.flags
    assert contract.HIDDEN == argparse.SUPPRESS  # (what parser() hands argparse for them)


def test_the_command_line_is_the_one_the_worker_runs_with():
    out = subprocess.run([sys.executable, "-m", "scoopexec", "worker", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out == contract.parser().format_help()


@pytest.mark.parametrize("code", sorted(contract.REASONS))
def test_each_exit_code_is_described_by_its_reason_when_the_worker_said_so(code):
    said = contract.describe_returncode(code, own=True)
    assert said == f"exited with code {code} ({contract.REASONS[code]})"
    assert contract.describe_returncode(code) == f"exited with code {code}"  # a task's os._exit(code)
