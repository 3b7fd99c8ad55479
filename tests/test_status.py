"""Live status: ex.status() (embedded and remote) and `python -m scoopexec status ADDR`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from scoopexec import ScoopExecutor
from scoopexec.status import PoolStatus, query
from scoopexec.wire.security import Credentials, KeyPair, write_key_file
from tests import faulty, helpers
from tests.conftest import ROOT
from tests.test_standalone import _free_port, _start_workers


def _env():
    return dict(os.environ, PYTHONPATH=ROOT)


def _cli(*args, **env):
    """Run `python -m scoopexec ARGS` in a fresh interpreter (``env``: more variables)."""
    cmd = [sys.executable, "-m", "scoopexec", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, env=dict(_env(), **env), timeout=60, check=False)


def _until(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_embedded_pool_status_shows_workers_queue_and_rate():
    with ScoopExecutor(1) as ex:
        assert sum(ex.map(helpers.mul, range(50), range(50))) == sum(i * i for i in range(50))
        blocker = ex.submit(helpers.sleep_and_return, 5, "done")
        queued = [ex.submit(abs, -i) for i in range(5)]

        def busy_with_six():
            # Tasks wait in the broker's queue or, prefetched, on the worker (which
            # asks for several at a time once it has seen that tasks are short).
            st = ex.status()
            return st if st.busy == 1 and st.queued + st.assigned == 6 else None

        st = _until(busy_with_six, "one busy worker and six tasks in the pool")
        assert isinstance(st, PoolStatus)
        (w,) = st.workers
        assert w.state == "busy" and w.assigned == st.assigned >= 1
        assert w.pid in ex.worker_pids and w.host == socket.gethostname()
        assert w.done >= 50 and 0 <= w.last_seen < 60 and w.joined >= w.last_seen
        assert st.completed >= 50 and st.clients == 1
        assert st.tasks_per_second >= 0 and st.uptime > 0
        assert st.pool == ex.pool_id and st.endpoint == ex.endpoint and st.trace is None
        text = str(st)
        assert f"{st.queued} queued" in text and f"{st.assigned} on workers" in text
        assert str(w.pid) in text and "busy" in text
        assert blocker.result(timeout=60) == "done"
        assert [f.result(timeout=60) for f in queued] == [0, 1, 2, 3, 4]
        st = _until(lambda: (s := ex.status()).busy == 0 and s, "the worker to become idle")
        assert st.queued == 0 and st.workers[0].state == "idle" and st.workers[0].done >= 51
        json.dumps(st.as_dict())  # plain data


def test_rate_is_measured_while_tasks_complete():
    with ScoopExecutor(2) as ex:
        fs = [ex.submit(helpers.sleep_and_return, 0.01) for _ in range(300)]
        rates = []
        while not all(f.done() for f in fs):
            rates.append(ex.status().tasks_per_second)
            time.sleep(0.1)
        assert max(rates, default=0) > 0
        assert ex.status().completed >= 300


def _status_from_callback(ex, box, fut):
    box.append(ex.status(timeout=10))


def test_status_from_a_done_callback_in_the_broker_thread(tmp_path):
    with ScoopExecutor(1) as ex:
        box: list = []
        where: list[str] = []
        # The callback must run on the broker's thread, so nothing here waits on `fut` (a thread
        # waiting on a result may complete it itself, and run its callbacks), and the task holds
        # its worker until the callback is added (a future done before would run it here at once).
        go = tmp_path / "go"
        fut = ex.submit(faulty.wait_for_file, str(go), 60)

        def callback(f):
            where.append(threading.current_thread().name)
            _status_from_callback(ex, box, f)

        fut.add_done_callback(callback)
        go.touch()
        _until(lambda: box, "the callback")
        assert where == ["scoopexec-broker"]
        assert len(box[0].workers) == 1


def test_status_after_shutdown_says_so():
    ex = ScoopExecutor(1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        ex.status()


@pytest.fixture
def standalone():
    addr = f"tcp://127.0.0.1:{_free_port()}"
    broker = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "broker", "--bind", addr], stdout=subprocess.PIPE, env=_env()
    )
    workers = None
    try:
        assert "listening on" in broker.stdout.readline().decode()
        workers = _start_workers(addr, 2)
        yield addr, workers
    finally:
        if workers is not None:
            workers.terminate()
            workers.wait(10)
        broker.terminate()
        broker.wait(10)
        broker.stdout.close()


def test_remote_client_status_and_the_status_command(standalone):
    addr, _ = standalone
    with ScoopExecutor(broker=addr) as ex:
        st = _until(lambda: s if len((s := ex.status()).workers) == 2 else None, "two workers to join")
        pids = {w.pid for w in st.workers}
        assert len(pids) == 2 and all(w.host == socket.gethostname() for w in st.workers)
        assert sorted(ex.map(abs, range(-40, 0))) == list(range(1, 41))
        st = ex.status()
        assert st.completed >= 40 and sum(w.done for w in st.workers) >= 40 and st.clients == 1

        r = _cli("status", addr)
        assert r.returncode == 0, r.stderr.decode()
        out = r.stdout.decode()
        assert f"at {addr}" in out and "2 workers" in out and "1 client" in out
        assert "WORKER" in out and "LAST HEARD" in out
        for pid in pids:
            assert str(pid) in out

        r = _cli("status", addr, "--json")
        assert r.returncode == 0, r.stderr.decode()
        data = json.loads(r.stdout)
        assert {w["pid"] for w in data["workers"]} == pids and data["completed"] >= 40
        assert data["pool"] == ex.pool_id

    # The status client does not join the pool: asking twice changes nothing.
    assert query(addr).clients == 0
    assert query(addr).clients == 0


def test_status_command_against_nothing_fails_fast_with_advice(tmp_path):
    addr = f"tcp://127.0.0.1:{_free_port()}"
    t = time.monotonic()
    # No key for it: a runtime directory of its own (in the user's, an earlier pool may have
    # left a key for that address: the port is reused; that failed a CI run once).
    empty = tmp_path / "runtime"
    empty.mkdir(mode=0o700)
    r = _cli("status", addr, "--timeout", "1", SCOOPEXEC_RUNTIME_DIR=str(empty))
    assert r.returncode == 2 and "no key for it" in r.stderr.decode()
    stale = write_key_file(tmp_path / "stale.key", Credentials.for_pair(KeyPair.new().public, KeyPair.new()))
    r = _cli("status", addr, "--timeout", "1", "--key", stale)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"no scoopexec broker answered at {addr} within 1 s" in err and "key file" in err
    assert time.monotonic() - t < 30
    r = _cli("status", "tcp://10.9.8.7:5555")
    assert r.returncode == 2 and "not on this machine" in r.stderr.decode()


def test_status_of_an_embedded_broker_from_another_process():
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0") as ex:
        ex.submit(abs, 1).result(timeout=60)
        r = _cli("status", ex.endpoint, "--json")
        assert r.returncode == 0, r.stderr.decode()
        data = json.loads(r.stdout)
        assert data["pool"] == ex.pool_id and [w["pid"] for w in data["workers"]] == ex.worker_pids


def test_status_of_a_curve_secured_broker_needs_its_key(tmp_path):
    key = tmp_path / "pool.key"
    addr = f"tcp://127.0.0.1:{_free_port()}"
    broker = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "broker", "--bind", addr, "--key-file", str(key)],
        stdout=subprocess.PIPE, env=_env(),
    )  # fmt: skip
    try:
        assert "CURVE" in broker.stdout.readline().decode()
        r = _cli("status", addr, "--key", key, "--json")
        assert r.returncode == 0, r.stderr.decode()
        data = json.loads(r.stdout)
        assert data["workers"] == [] and data["endpoints"][0]["curve"] is True
        other = tmp_path / "other-user"  # as another user: the broker's key for its user is out of reach
        other.mkdir(mode=0o700)
        cmd = [sys.executable, "-m", "scoopexec", "status", addr, "--timeout", "1"]
        env = dict(_env(), SCOOPEXEC_RUNTIME_DIR=str(other))
        r = subprocess.run(cmd, capture_output=True, env=env, timeout=60, check=False)
        assert r.returncode == 2 and "no key for it" in r.stderr.decode()
        r = _cli("status", addr, "--key", tmp_path / "missing.key")
        assert r.returncode == 2 and "cannot read key file" in r.stderr.decode()
    finally:
        broker.terminate()
        broker.wait(10)
        broker.stdout.close()


def test_status_says_workers_are_starting_until_they_join(tmp_path):
    gate = tmp_path / "gate"
    python = tmp_path / "slow-python"
    python.write_text(
        "#!/bin/sh\n"
        f"i=0; while [ ! -e '{gate}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n"
        f"exec '{sys.executable}' \"$@\"\n"
    )
    python.chmod(0o755)
    with ScoopExecutor(2, python=str(python), bind="tcp://127.0.0.1:0") as ex:
        st = ex.status()
        assert st.workers == [] and st.starting == 2
        assert "no workers connected yet: 2 workers are starting" in str(st)
        assert "start some" not in str(st)
        r = _cli("status", ex.endpoint)
        assert r.returncode == 0, r.stderr.decode()
        assert "no workers connected yet: 2 workers are starting" in r.stdout.decode()
        r = _cli("status", ex.endpoint, "--json")
        assert json.loads(r.stdout)["starting"] == 2
        gate.touch()
        st = _until(lambda: s if len((s := ex.status()).workers) == 2 else None, "two workers to join")
        assert st.starting == 0 and "starting" not in str(st)
        assert ex.submit(abs, -3).result(timeout=60) == 3


def test_status_counts_workers_still_starting_next_to_those_connected():
    st = PoolStatus.from_dict(
        {"pool": "p", "endpoint": "e", "host": "h", "starting": 1,
         "workers": [{"name": "h:1", "host": "h", "pid": 1, "busy": 0, "done": 0, "last_seen": 0.1}]}
    )  # fmt: skip
    assert "1 worker (0 busy), 1 starting" in str(st)
    assert "no workers connected" not in str(st)


def test_escape_sequences_in_names_are_shown_escaped():
    evil = "\x1b]0;owned\x07\x1b[2J\u202eevil"
    st = PoolStatus.from_dict(
        {"pool": "p\x1b[31m", "endpoint": "tcp://x", "host": evil, "queued": 0, "completed": 0, "clients": 0,
         "workers": [{"name": evil, "host": evil, "pid": 1, "state": "idle\x1b[0m", "busy": 0, "done": 0}]}
    )  # fmt: skip
    text = str(st)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b]0;owned\\x07\\x1b[2J\\u202eevil" in text and "p\\x1b[31m" in text


def test_the_status_command_escapes_a_worker_named_with_escape_sequences():
    name = "\x1b]0;title\x07\x1b[31mred"
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0") as ex:
        w = subprocess.Popen(
            [sys.executable, "-m", "scoopexec", "worker", "--connect", ex.endpoint, "--name", name],
            env=_env(),
        )
        try:
            _until(lambda: len(ex.status().workers) == 2, "the named worker to join")
            r = _cli("status", ex.endpoint)
            assert r.returncode == 0, r.stderr.decode()
            out = r.stdout.decode()
            assert "\x1b" not in out and "\x07" not in out
            assert "\\x1b]0;title\\x07\\x1b[31mred" in out
        finally:
            w.terminate()
            w.wait(10)
