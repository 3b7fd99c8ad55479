"""The command line as a whole: --version, and every command's output cut by its reader (`| head`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import scoopexec
from scoopexec import ScoopExecutor
from tests.conftest import ROOT

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell shows for `yes | head -1`'s yes


def _env():
    return dict(os.environ, PYTHONPATH=ROOT)


def _scoopexec(*args):
    return [sys.executable, "-m", "scoopexec", *map(str, args)]


def _into_a_finished_head(argv, timeout=120):
    """Run ``argv`` with its stdout a pipe into ``head -1`` that has already read its line and
    exited: every write the command makes meets a reader that is gone (deterministically)."""
    r, w = os.pipe()
    try:
        head = subprocess.Popen(["head", "-1"], stdin=r, stdout=subprocess.PIPE)
        os.close(r)
        r = -1
        os.write(w, b"the line head wanted\n")
        out, _ = head.communicate(timeout=30)
        assert head.returncode == 0 and out == b"the line head wanted\n"
        return subprocess.run(
            argv, stdout=w, stderr=subprocess.PIPE, env=_env(), timeout=timeout, check=False
        )
    finally:
        os.close(w)
        if r >= 0:
            os.close(r)


def _shell(pipeline, timeout=120):
    """Run a shell pipeline (``set -o pipefail``: its status is the first command's if it failed)."""
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {pipeline}"],
        capture_output=True, env=_env(), timeout=timeout, check=False,
    )  # fmt: skip


def _quiet(r):
    err = r.stderr.decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    return err


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "run.json"
    with ScoopExecutor(1, trace=str(path)) as ex:
        assert sum(ex.map(abs, range(-300, 0))) == sum(range(1, 301))
    return path


def test_version():
    r = subprocess.run(_scoopexec("--version"), capture_output=True, env=_env(), timeout=60, check=False)
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout.decode() == f"scoopexec {scoopexec.__version__}\n"
    r = subprocess.run(_scoopexec("--help"), capture_output=True, env=_env(), timeout=60, check=False)
    assert r.returncode == 0 and "--version" in r.stdout.decode()
    r = subprocess.run(_scoopexec(), capture_output=True, env=_env(), timeout=60, check=False)
    assert r.returncode == 2 and "--version" in r.stderr.decode()


@pytest.mark.parametrize("flags", [["--heartbeat-timeout", "0"], ["--heartbeat", "5", "--heartbeat-timeout", "2"],
                                   ["--heartbeat", "-1"], ["--heartbeat", "nan"]])  # fmt: skip
def test_broker_refuses_heartbeats_out_of_order(flags, tmp_path):
    """A zero or negative timeout would make the broker PING every peer at every tick (its
    sweep runs every heartbeat_timeout); the executor has always refused these."""
    cmd = _scoopexec("broker", "--bind", f"ipc://{tmp_path}/b", *flags)
    r = subprocess.run(cmd, capture_output=True, env=_env(), timeout=60, check=False)
    assert r.returncode == 2 and "need 0 < --heartbeat < --heartbeat-timeout" in r.stderr.decode(), r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--help"],
        ["report", "--json", "TRACE"],
        ["report", "TRACE"],
        ["report", "--help"],
        ["status", "--help"],
        ["broker", "--help"],
        ["worker", "--help"],
    ],
    ids=lambda a: " ".join(a),
)
def test_every_command_ends_quietly_when_its_reader_is_gone(args, trace_file):
    r = _into_a_finished_head(_scoopexec(*(trace_file if a == "TRACE" else a for a in args)))
    assert _quiet(r) == ""
    if args[-1] == "--help":
        # argparse's --help drops what it cannot write and exits 0 itself on some 3.11 patch
        # releases (pyenv's 3.11.7); on others (Debian's 3.11.2) the write error reaches our
        # handler: either way, quiet and no traceback.
        assert r.returncode in (0, EXIT_BROKEN_PIPE)
    else:
        assert r.returncode == EXIT_BROKEN_PIPE


def test_status_and_broker_end_quietly_when_their_reader_is_gone():
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0") as ex:
        for args in (["status", ex.endpoint], ["status", ex.endpoint, "--json"]):
            r = _into_a_finished_head(_scoopexec(*args))
            assert _quiet(r) == "" and r.returncode == EXIT_BROKEN_PIPE
        r = _shell(f"{' '.join(_scoopexec('status', ex.endpoint, '--watch', '0.05'))} | head -3")
        assert _quiet(r) == "" and r.returncode == EXIT_BROKEN_PIPE
        assert r.stdout.decode().startswith(f"pool {ex.pool_id}")
    r = _into_a_finished_head(_scoopexec("broker", "--bind", "tcp://127.0.0.1:0"))
    assert _quiet(r) == "" and r.returncode == EXIT_BROKEN_PIPE  # its "listening" line had no reader


def test_report_into_head(trace_file):
    r = _shell(f"{' '.join(_scoopexec('report', '--json', trace_file))} | head -1")
    assert _quiet(r) == "" and r.returncode in (0, EXIT_BROKEN_PIPE) and r.stdout == b"{\n"
    r = _into_a_finished_head(_scoopexec("report", "--json", trace_file))
    assert r.returncode == EXIT_BROKEN_PIPE
    full = subprocess.run(_scoopexec("report", "--json", trace_file), capture_output=True, env=_env(),
                          timeout=60, check=True)  # fmt: skip
    assert json.loads(full.stdout)  # and uncut, it is all there


def test_a_launched_program_cut_by_head(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(
        textwrap.dedent(
            """
            import scoopexec
            if __name__ == "__main__":
                for x in scoopexec.map(abs, range(-200000, 0), chunksize=5000):
                    print(x)
            """
        )
    )
    r = _shell(f"{' '.join(_scoopexec('-n', '2', prog))} | head -1")  # 1.4 MB: more than a pipe holds
    assert _quiet(r) == "" and r.returncode == EXIT_BROKEN_PIPE and r.stdout == b"200000\n"
    r = _into_a_finished_head(_scoopexec("-n", "1", prog))
    assert _quiet(r) == "" and r.returncode == EXIT_BROKEN_PIPE


def test_a_broken_pipe_that_is_not_the_output_is_still_an_error(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("import os\nr, w = os.pipe()\nos.close(r)\nos.write(w, b'x')\n")
    r = subprocess.run(_scoopexec("-n", "1", prog), capture_output=True, env=_env(), timeout=120, check=False)
    assert r.returncode == 1 and "BrokenPipeError" in r.stderr.decode()
