"""A standalone broker (python -m scoopexec broker), workers that join it, remote clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from scoopexec import BrokerLostError, ScoopExecutor
from scoopexec.wire.security import Credentials, KeyPair, write_key_file
from tests import helpers
from tests.conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return dict(os.environ, PYTHONPATH=ROOT)


@pytest.fixture
def broker():
    addr = f"tcp://127.0.0.1:{_free_port()}"
    p = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "broker", "--bind", addr],
        stdout=subprocess.PIPE,
        env=_env(),
    )
    line = p.stdout.readline().decode()
    assert "listening on" in line, line
    try:
        yield addr, p
    finally:
        if p.poll() is None:
            p.terminate()
            p.wait(10)
        p.stdout.close()


def _start_workers(addr, n=1):
    return subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "worker", "--connect", addr, "-n", str(n)],
        env=_env(),
    )


def test_remote_client_with_workers_joining(broker):
    addr, _ = broker
    workers = _start_workers(addr, 2)
    try:
        with ScoopExecutor(broker=addr) as ex:
            assert ex.submit(pow, 2, 10).result(timeout=60) == 1024
            assert list(ex.map(abs, range(-20, 0))) == list(range(20, 0, -1))
            assert ex.submit(helpers.fib, 10).result(timeout=60) == 55
            pids = {ex.submit(helpers.getpid).result() for _ in range(20)}
            assert 1 <= len(pids) <= 2
    finally:
        workers.terminate()
        workers.wait(10)


def test_tasks_wait_for_a_worker_to_join(broker):
    addr, _ = broker
    with ScoopExecutor(broker=addr) as ex:
        fut = ex.submit(abs, -5)
        time.sleep(0.5)
        assert not fut.done()  # no worker yet: queued, not failed
        workers = _start_workers(addr, 1)
        try:
            assert fut.result(timeout=60) == 5
        finally:
            ex.shutdown()
            workers.terminate()
            workers.wait(10)


def test_remote_client_with_its_own_local_workers(broker):
    addr, _ = broker
    with ScoopExecutor(2, broker=addr) as ex:
        assert sorted(ex.map(abs, range(-4, 0))) == [1, 2, 3, 4]
        assert len(ex.worker_pids) == 2


def test_two_clients_share_a_pool(broker):
    addr, _ = broker
    workers = _start_workers(addr, 2)
    try:
        with ScoopExecutor(broker=addr) as a, ScoopExecutor(broker=addr) as b:
            fa = [a.submit(helpers.mul, i, 2) for i in range(50)]
            fb = [b.submit(helpers.mul, i, 3) for i in range(50)]
            assert [f.result(timeout=60) for f in fa] == [2 * i for i in range(50)]
            assert [f.result(timeout=60) for f in fb] == [3 * i for i in range(50)]
    finally:
        workers.terminate()
        workers.wait(10)


def test_remote_exceptions_and_cancel(broker):
    addr, _ = broker
    with ScoopExecutor(1, broker=addr) as ex:
        with pytest.raises(ValueError, match="far away"):
            ex.submit(helpers.raise_value_error, "far away").result(timeout=60)
        blocker = ex.submit(time.sleep, 1)
        queued = [ex.submit(abs, -i) for i in range(10)]
        n = sum(f.cancel() for f in queued)
        assert n >= 1
        blocker.result(timeout=60)
        for f in queued:
            assert f.cancelled() or f.result(timeout=60) >= 0


def test_no_broker_there_fails_fast(tmp_path):
    addr = f"tcp://127.0.0.1:{_free_port()}"
    t = time.monotonic()
    with pytest.raises(ValueError, match="no key for it"):  # no broker of ours was ever there
        ScoopExecutor(broker=addr, connect_timeout=1)
    keys = Credentials.for_pair(KeyPair.new().public, KeyPair.new())
    key = write_key_file(tmp_path / "stale.key", keys)  # a broker that has gone
    with pytest.raises(BrokerLostError, match="no scoopexec broker answered"):
        ScoopExecutor(broker=addr, key=key, connect_timeout=1)
    assert time.monotonic() - t < 10


def test_broker_death_fails_pending_futures(broker):
    addr, proc = broker
    workers = _start_workers(addr, 1)
    try:
        ex = ScoopExecutor(broker=addr, heartbeat=0.2, heartbeat_timeout=1.0)
        assert ex.submit(abs, -1).result(timeout=60) == 1
        fut = ex.submit(time.sleep, 30)
        time.sleep(0.3)
        proc.kill()
        proc.wait()
        with pytest.raises(BrokerLostError):
            fut.result(timeout=30)
        ex.shutdown()
        # the workers notice too and exit by themselves
        workers.wait(30)
    finally:
        if workers.poll() is None:
            workers.kill()
            workers.wait()


def test_non_local_endpoints_need_security():
    with pytest.raises(ValueError, match="not on this machine.*CURVE"):
        ScoopExecutor(broker="tcp://10.1.2.3:5555")
    r = subprocess.run(
        [sys.executable, "-m", "scoopexec", "broker", "--bind", "tcp://0.0.0.0:5999"],
        capture_output=True,
        env=_env(),
        timeout=30,
    )
    assert r.returncode != 0 and b"not on this machine" in r.stderr and b"--key-file" in r.stderr


def test_embedded_broker_on_loopback_tcp_accepts_extra_workers():
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0") as ex:
        assert ex.endpoint.startswith("tcp://127.0.0.1:")
        extra = _start_workers(ex.endpoint, 1)
        try:
            pids = set()
            deadline = time.monotonic() + 30
            while len(pids) < 2 and time.monotonic() < deadline:
                pids |= set(ex.map(helpers.sleep_and_return, [0.05] * 8, [None] * 8)) - {None}
                pids |= {f.result() for f in [ex.submit(helpers.getpid) for _ in range(8)]}
            assert len(pids) == 2
        finally:
            ex.shutdown()
            extra.terminate()
            extra.wait(10)


def kills_its_worker(x: int) -> int:
    os.kill(os.getpid(), 9)
    return x


def test_a_clients_max_retries_travels_to_a_standalone_broker(broker):
    from scoopexec import WorkerLostError
    from scoopexec.errors import ProtocolError
    from scoopexec.wire.validate import check_hello

    addr, _ = broker  # started with its own default, max_retries=3
    group = _start_workers(addr, 3)  # the task kills two (a group does not replace them), one is left
    try:
        with ScoopExecutor(broker=addr, max_retries=1) as ex:
            with pytest.raises(WorkerLostError, match=r"lost 2 times.*max_retries=1 allows"):
                ex.submit(kills_its_worker, 1).result(timeout=60)
            assert ex.submit(abs, -3).result(timeout=60) == 3
    finally:
        group.terminate()
        group.wait(20)
    assert check_hello({"role": "client", "max_retries": 0})["max_retries"] == 0
    for bad in (-1, 1001, True, 2.0, "3"):
        with pytest.raises(ProtocolError, match="max_retries"):
            check_hello({"role": "client", "max_retries": bad})


@pytest.mark.parametrize("broker_version", ["older", "newer"])
def test_a_worker_of_another_version_says_so_and_exits(broker_version):
    # Mixed installs (another scoopexec on a host): the broker answers the HELLO of another protocol
    # version with an ERROR in its own; the worker must say why and exit with its own code, not wait.
    from scoopexec.deploy.contract import EXIT_VERSION, REASONS
    from scoopexec.wire import protocol as P

    other = P.VERSION - 1 if broker_version == "older" else P.VERSION + 1
    addr = f"tcp://127.0.0.1:{_free_port()}"
    code = (
        f"import sys, runpy; import scoopexec.wire.protocol as P; P.VERSION = {other}\n"
        f"sys.argv = ['scoopexec', 'broker', '--bind', {addr!r}]\n"
        "runpy.run_module('scoopexec', run_name='__main__')\n"
    )
    b = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=_env())
    try:
        assert b.stdout is not None and "listening on" in b.stdout.readline().decode()
        w = subprocess.run(
            [sys.executable, "-m", "scoopexec", "worker", "--connect", addr],
            env=_env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert w.returncode == EXIT_VERSION, (w.returncode, w.stderr)
        assert f"peer speaks scoopexec protocol version {other}, this side speaks {P.VERSION}" in w.stderr
        assert EXIT_VERSION in REASONS
    finally:
        b.kill()
        b.wait(10)
        if b.stdout is not None:
            b.stdout.close()


def test_a_worker_whose_broker_is_replaced_by_another_version_says_so_and_exits(tmp_path):
    # A long-lived worker, welcomed by its broker, meets a broker of another version at the same
    # address (an upgrade): its HELLO again is answered by an ERROR it cannot decode.
    from scoopexec.deploy.contract import EXIT_VERSION
    from scoopexec.wire import protocol as P

    addr = f"ipc://{tmp_path}/broker.ipc"

    def start_broker(version):
        code = (
            f"import sys, runpy; import scoopexec.wire.protocol as P; P.VERSION = {version}\n"
            f"sys.argv = ['scoopexec', 'broker', '--bind', {addr!r}]\n"
            "runpy.run_module('scoopexec', run_name='__main__')\n"
        )
        b = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=_env())
        assert b.stdout is not None and "listening on" in b.stdout.readline().decode()
        return b

    brokers = [start_broker(P.VERSION)]
    w = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "worker", "--connect", addr],
        env=_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with ScoopExecutor(broker=addr) as ex:  # the worker is welcomed and serves
            assert ex.submit(abs, -3).result(timeout=60) == 3
        brokers[0].kill()
        brokers[0].wait(10)
        brokers.append(start_broker(P.VERSION + 1))
        assert w.wait(30) == EXIT_VERSION
        assert w.stderr is not None and f"version {P.VERSION + 1}, this side speaks" in w.stderr.read()
    finally:
        if w.poll() is None:
            w.kill()
            w.wait(10)
        if w.stderr is not None:
            w.stderr.close()
        for b in brokers:
            if b.poll() is None:
                b.kill()
            b.wait(10)
            if b.stdout is not None:
                b.stdout.close()
