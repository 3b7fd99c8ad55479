"""What a worker loads before its first task: its own side of the package, not the client's.

A pool's start to its first result is, nearly all of it, the workers' interpreters starting
and importing (issue 17 measured 0.30-0.40 s of 0.31-0.42 s between ``Popen`` and the
worker's ``main()``; the rest, HELLO to RESULT, was about 10 ms).  Every worker runs
``python -m scoopexec worker``, which imports the package first: when ``scoopexec/__init__``
imported the client (executor, mapping, deploy, journal, status...) and the worker's
channels imported ``zmq.utils.monitor`` (which imports asyncio), a worker paid about 140 ms
of CPU where about 90 ms is its own.  These tests pin the footprint down as behaviour (which
modules are loaded), not as a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scoopexec import ScoopExecutor
from tests.conftest import ROOT
from tests.helpers import loaded_modules

# The client's side, and what only the client needs: none of it is a worker's business.
CLIENT_ONLY = [
    "scoopexec.client.executor",
    "scoopexec.mapping",
    "scoopexec.journal",
    "scoopexec.deploy.groups",
    "scoopexec.deploy.slurm_jobs",
    "scoopexec.status",
    "scoopexec.broker.loop",
    "asyncio",
]


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded once it ran ``code``."""
    code += "; import json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout))


def test_importing_the_worker_loads_nothing_of_the_client() -> None:
    loaded = _modules_after("import scoopexec.worker.main")
    assert "scoopexec.worker.worker" in loaded  # (the check sees what it looks for)
    assert [m for m in CLIENT_ONLY if m in loaded] == []


def test_a_running_worker_has_loaded_nothing_of_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker forked from a fresh template; one forked from the client has what the client had
    # (deploy/clientfork.py) and imports nothing to start.
    monkeypatch.setenv("SCOOPEXEC_WORKER_START", "template")
    with ScoopExecutor(max_workers=1) as ex:
        loaded = set(ex.submit(loaded_modules).result(timeout=60))
    assert "scoopexec.worker.worker" in loaded
    assert [m for m in CLIENT_ONLY if m in loaded] == []


# What a local worker does not need: it talks to its embedded broker over a socketpair.  Each
# pool's template (deploy/forkstart.py) imports the worker before it can fork the first one,
# so every module here is start-up time in the pool's first batch.
# hashlib (OpenSSL) is for seeded maps only; deploy.hosts is the client's host lists.
LOCAL_WORKER_NEEDS_NOT = [
    "zmq",
    "scoopexec.wire.zmqsock",
    "scoopexec.worker.zmqchannel",
    "hashlib",
    "scoopexec.deploy.hosts",
    "argparse",  # (its command line is read without it: contract.read_argv)
]


def test_the_template_loads_no_zmq_nor_hashlib() -> None:
    """What the template imports (as Template starts it) leaves zmq out (it was imported through
    channels.py, framing.py and security.py: about 8 ms of CPU of the ~45 ms the imports took),
    and hashlib (seeding.py) and deploy.hosts (for local_cpu_count, now in contract.py)."""
    loaded = _modules_after("import scoopexec.worker.main; from scoopexec.deploy.forkstart import serve")
    assert "scoopexec.worker.worker" in loaded and "scoopexec.wire.security" in loaded
    assert [m for m in LOCAL_WORKER_NEEDS_NOT if m in loaded] == []


def test_a_local_worker_runs_without_them_and_a_zmq_worker_still_loads_zmq(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCOOPEXEC_WORKER_START", "template")  # (a fork of the client has zmq)
    with ScoopExecutor(max_workers=1) as ex:
        loaded = set(ex.submit(loaded_modules).result(timeout=60))
    assert "scoopexec.worker.worker" in loaded
    assert [m for m in LOCAL_WORKER_NEEDS_NOT if m in loaded] == []
    # The same worker on an ipc endpoint (the comparison transport) loads its ZeroMQ channel.
    code = (
        "import json; from scoopexec import ScoopExecutor; from tests.helpers import loaded_modules\n"
        "with ScoopExecutor(max_workers=1) as ex: print(json.dumps(ex.submit(loaded_modules).result(60)))"
    )
    env = dict(os.environ, SCOOPEXEC_LOCAL_TRANSPORT="zmq")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
        env=env,
        cwd=ROOT,
    )
    assert "scoopexec.worker.zmqchannel" in json.loads(out.stdout.splitlines()[-1])


def test_the_public_names_still_load_on_first_use() -> None:
    code = (
        "import sys, scoopexec; assert 'scoopexec.client.executor' not in sys.modules; "
        "from scoopexec import ScoopExecutor, TaskTimeoutError, futures, map; "
        "assert ScoopExecutor.__module__ == 'scoopexec.client.executor'; "
        "assert scoopexec.futures is futures and callable(scoopexec.shared); "
        "assert set(scoopexec.__all__) <= set(dir(scoopexec)); "
        "from scoopexec import *; "
        "print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    code = "import scoopexec; scoopexec.no_such_name"
    bad = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert "has no attribute 'no_such_name'" in bad.stderr


def test_a_worker_command_line_in_error_is_told_by_a_parser_made_then() -> None:
    """A forked worker reads its launcher's command line without argparse (contract.read_argv),
    so worker.main makes its parser only to parse another form or to say what is wrong: here,
    no --connect, in argparse's words and exit status.  (That a running local worker loaded no
    argparse at all: LOCAL_WORKER_NEEDS_NOT.)"""
    code = (
        "import sys, scoopexec.worker.main as m\n"
        "assert 'argparse' not in sys.modules, 'importing worker.main imported argparse'\n"
        "m.main([])\n"
    )
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr  # main() reached its own check of the arguments
    assert "give the broker's endpoint" in out.stderr and "usage: python -m scoopexec worker" in out.stderr


def test_the_client_loads_no_asyncio_nor_hashlib() -> None:
    """``from scoopexec import ScoopExecutor`` -- in the client, and in every worker whose main
    module has it at the top -- loads no asyncio: pyzmq's zmq.utils.monitor imports it (about
    13 ms), so monitor events are read by wire/zmqsock.py; nor hashlib, which loads OpenSSL
    (about 3 ms): seeded maps and journals import it when they hash; nor argparse (2.4 ms, and
    2.2 to make the worker's parser): command lines parse it when they run."""
    code = "import json, sys; from scoopexec import ScoopExecutor; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(out.stdout))
    assert "scoopexec.client.executor" in loaded and "zmq" in loaded
    never = ("asyncio", "zmq.utils.monitor", "ssl", "hashlib", "_hashlib", "secrets", "hmac", "argparse")
    assert [m for m in never if m in loaded] == []
    # Nor once a pool ran tasks and a map and ended (what its construction and first submit import).
    code = (
        "import json, sys; from scoopexec import ScoopExecutor\n"
        "with ScoopExecutor(max_workers=1) as ex: ex.submit(abs, -1).result(60); list(ex.map(abs, [1, 2]))\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, check=True)
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert "scoopexec.broker.loop" in loaded
    assert [m for m in never if m in loaded] == []


def test_monitor_events_read_as_pyzmq_reads_them() -> None:
    """wire/zmqsock.monitor_event on a real socket monitor's messages (a connection, its
    handshake, a refused CURVE handshake) gives what zmq.utils.monitor gives; junk is refused."""
    import zmq
    from zmq.utils.monitor import parse_monitor_message

    from scoopexec.wire.zmqsock import monitor_event

    ctx = zmq.Context()
    try:
        server = ctx.socket(zmq.ROUTER)
        server.curve_server = True
        server.curve_secretkey = zmq.curve_keypair()[1]
        port = server.bind_to_random_port("tcp://127.0.0.1")
        plain = ctx.socket(zmq.DEALER)  # no CURVE: its handshake fails with a ZMTP mechanism mismatch
        mon = plain.get_monitor_socket()
        plain.connect(f"tcp://127.0.0.1:{port}")
        seen = []
        while mon.poll(5000) and len(seen) < 3:
            frames = mon.recv_multipart()
            assert monitor_event(frames) == dict(parse_monitor_message(frames))
            seen.append(monitor_event(frames)["event"])
        assert zmq.EVENT_CONNECTED in seen  # (and with it a handshake event: the check saw events)
        for junk in ([b"12345"], [b"123", b"e"], [b"1234567", b"e"]):
            with pytest.raises(ValueError, match="monitor event"):
                monitor_event(junk)
        plain.disable_monitor()
        for s in (mon, plain, server):
            s.close(linger=0)
    finally:
        ctx.term()
