"""CURVE: key files, refused keys, peers without keys, and the broker CLI's --key-file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import zmq

from scoopexec import AuthenticationError, ScoopExecutor
from scoopexec.wire import protocol as P
from scoopexec.wire.security import (
    Credentials,
    KeyPair,
    check_endpoint,
    encode_frame,
    read_frame,
    read_key_file,
    write_key_file,
)
from tests import helpers
from tests.cluster_fixtures import env_with_root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def secured_broker(tmp_path):
    """A standalone broker with CURVE on loopback; yields (endpoint, key file)."""
    key = tmp_path / "pool.key"
    addr = f"tcp://127.0.0.1:{_free_port()}"
    p = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "broker", "--bind", addr, "--key-file", str(key),
         "--heartbeat", "0.2", "--heartbeat-timeout", "1.0"],
        stdout=subprocess.PIPE,
        env=env_with_root(),
    )  # fmt: skip
    line = p.stdout.readline().decode()
    assert "listening on" in line and "CURVE" in line, line
    try:
        yield addr, str(key)
    finally:
        p.terminate()
        p.wait(10)
        p.stdout.close()


def _worker(addr, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "worker", "--connect", addr, *args],
        env=env_with_root(),
        stderr=subprocess.PIPE,
    )


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)
    if proc.stderr:
        proc.stderr.close()


def test_key_file_is_private_and_round_trips(tmp_path):
    creds = Credentials.for_pair(KeyPair.new().public, KeyPair.new())
    path = write_key_file(tmp_path / "k", creds)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_key_file(path) == creds
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        read_key_file(path)
    assert "secret" not in repr(creds) and creds.secret.decode() not in repr(creds)


def test_keys_through_a_pipe_stop_at_the_header():
    creds = Credentials.for_pair(KeyPair.new().public, KeyPair.new())
    r, w = os.pipe()
    os.write(w, encode_frame(creds) + b"after")
    os.close(w)
    try:
        assert read_frame(r, timeout=5) == creds
        assert os.read(r, 100) == b"after"  # nothing read past the header
    finally:
        os.close(r)
    r, w = os.pipe()
    os.write(w, b"hello\n")
    os.close(w)
    try:
        with pytest.raises(ValueError, match="key header"):
            read_frame(r, timeout=5)
    finally:
        os.close(r)


def test_non_loopback_needs_security():
    with pytest.raises(ValueError, match="CURVE"):
        check_endpoint("tcp://198.18.0.1:5555", secure=False)
    check_endpoint("tcp://198.18.0.1:5555", secure=True)
    with pytest.raises(ValueError, match="loopback included"):  # issue 14: all TCP is CURVE
        check_endpoint("tcp://127.0.0.1:5555", secure=False)
    check_endpoint("tcp://127.0.0.1:5555", secure=True)
    with pytest.raises(ValueError, match="abstract unix socket"):  # no file permissions
        check_endpoint("ipc://@scoopexec-test", secure=False)
    with pytest.raises(ValueError, match="unsupported"):
        check_endpoint("udp://x:1", secure=True)


def test_secured_broker_serves_clients_and_workers_with_the_key(secured_broker):
    addr, key = secured_broker
    w = _worker(addr, "--key", key, "-n", "2")
    try:
        with ScoopExecutor(broker=addr, key=key) as ex:
            assert ex.submit(pow, 3, 4).result(timeout=60) == 81
            assert sorted(ex.map(abs, range(-20, 0))) == list(range(1, 21))
            assert ex.submit(helpers.fib, 10).result(timeout=60) == 55
    finally:
        _stop(w)


def test_wrong_server_key_fails_fast(secured_broker, tmp_path):
    addr, key = secured_broker
    good = read_key_file(key)
    bad = write_key_file(tmp_path / "bad.key", Credentials(KeyPair.new().public, good.public, good.secret))
    with pytest.raises(AuthenticationError, match="server key"):
        ScoopExecutor(broker=addr, key=bad, connect_timeout=60)
    # a worker with that key exits with a reason instead of retrying forever
    w = _worker(addr, "--key", bad)
    try:
        assert w.wait(60) == 4
        assert b"server key" in w.stderr.read()
    finally:
        _stop(w)


def test_unknown_client_key_is_refused(secured_broker, tmp_path):
    addr, key = secured_broker
    stranger = write_key_file(
        tmp_path / "stranger.key", Credentials.for_pair(read_key_file(key).server, KeyPair.new())
    )
    with pytest.raises(AuthenticationError, match="refused this key"):
        ScoopExecutor(broker=addr, key=stranger, connect_timeout=60)


def test_client_without_key_is_told_to_use_one(secured_broker, tmp_path, monkeypatch):
    addr, _ = secured_broker
    # As another user: the key the broker wrote for its own user is out of reach.
    other = tmp_path / "other-user"
    other.mkdir(mode=0o700)
    monkeypatch.setenv("SCOOPEXEC_RUNTIME_DIR", str(other))
    with pytest.raises(ValueError, match=r"loopback included.*no key for it"):
        ScoopExecutor(broker=addr, connect_timeout=60)


def _rogue(addr: str, keys: Credentials | None) -> zmq.Socket:
    # Its own context, ended after: ZeroMQ's I/O threads must not outlive the test in this
    # process, else its later pools could not be forks of it (deploy/clientfork.py).
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(s)
    s.connect(addr)
    hello = {"role": P.WORKER, "pid": 1, "host": "rogue", "tag": "", "name": "rogue", "held": []}
    s.send_multipart([P.header(P.HELLO), P.dump_json(hello)])
    s.send_multipart([P.header(P.CREDIT, 0, 10)])
    return s


def test_unauthenticated_peers_get_no_task(secured_broker, tmp_path):
    addr, key = secured_broker
    server = read_key_file(key).server
    rogues = [_rogue(addr, None), _rogue(addr, Credentials.for_pair(server, KeyPair.new()))]
    try:
        with ScoopExecutor(broker=addr, key=key) as ex:
            fut = ex.submit(helpers.getpid)
            for r in rogues:
                assert not r.poll(2000), "a peer without an accepted key received something"
            assert not fut.done()
            w = _worker(addr, "--key", key)
            try:
                assert fut.result(timeout=60) == w.pid
            finally:
                _stop(w)
    finally:
        for r in rogues:
            r.close(0)
            r.context.term()


def test_embedded_pool_on_all_interfaces_is_secured(tmp_path):
    with ScoopExecutor(1, bind="tcp://0.0.0.0:0") as ex:
        port = ex.endpoint.rsplit(":", 1)[1]
        addr = f"tcp://127.0.0.1:{port}"
        status = ex._session.broker.status()
        assert {"endpoint": ex.endpoint, "curve": True} in status["endpoints"]
        key = ex.write_key_file(tmp_path / "join.key")
        foreign = tmp_path / "other-user"  # as another user: no access to this user's keys
        foreign.mkdir(mode=0o700)
        plain = subprocess.Popen(
            [sys.executable, "-m", "scoopexec", "worker", "--connect", addr, "--connect-timeout", "30"],
            env=dict(env_with_root(), SCOOPEXEC_RUNTIME_DIR=str(foreign)),
            stderr=subprocess.PIPE,
        )
        joined = _worker(addr, "--key", key)
        try:
            pids = set()
            deadline = time.monotonic() + 60
            while joined.pid not in pids and time.monotonic() < deadline:
                pids |= set(ex.map(helpers.sleep_and_return, [0.05] * 8, [None] * 8)) - {None}
                pids |= {f.result() for f in [ex.submit(helpers.getpid) for _ in range(8)]}
            assert joined.pid in pids, "a worker with the key joins and gets tasks"
            assert plain.pid not in pids
            assert plain.wait(60) == 2, "a worker without a key does not start, and says why"
            assert b"loopback included" in plain.stderr.read()
        finally:
            _stop(plain)
            _stop(joined)


def test_standalone_pool_with_zero_workers_queues_until_a_keyed_worker_joins(secured_broker):
    addr, key = secured_broker
    with ScoopExecutor(broker=addr, key=key) as ex:
        fut = ex.submit(abs, -7)
        time.sleep(1.0)
        assert not fut.done()
        w = _worker(addr, "--key", key)
        try:
            assert fut.result(timeout=60) == 7
        finally:
            ex.shutdown()
            _stop(w)
