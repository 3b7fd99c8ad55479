"""Issue 14, part B: every TCP endpoint is CURVE, the broker's key is pinned, no silent fallback.

Real processes throughout: standalone brokers, workers, a squatter bound to the port,
a pool started under a TMPDIR too long for a unix socket path.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import zmq

from scoopexec import AuthenticationError, ScoopExecutor
from scoopexec.wire import protocol as P
from scoopexec.wire.security import (
    AuthorizedKeys,
    Credentials,
    KeyPair,
    is_loopback,
    local_key_path,
    parse_authorized_keys,
    publish_local_key,
    read_key_file,
    runtime_dir,
    write_key_file,
)
from tests.cluster_fixtures import env_with_root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    """This user's private runtime directory, of this test alone (here and in its subprocesses)."""
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("SCOOPEXEC_RUNTIME_DIR", str(d))
    return d


def _env(**extra: str) -> dict[str, str]:
    return dict(env_with_root(), **extra)


FAST_HEARTBEAT = ("--heartbeat", "0.2", "--heartbeat-timeout", "1.0")


def _broker(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "broker", *args, *FAST_HEARTBEAT],
        stdout=subprocess.PIPE,
        env=_env(),
    )
    assert p.stdout is not None
    line = p.stdout.readline().decode()
    assert "listening on" in line, line
    return p, line


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    for f in (p.stdout, p.stderr):
        if f is not None:
            f.close()


def _worker(addr: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "worker", "--connect", addr, *args],
        env=env or _env(),
        stderr=subprocess.PIPE,
    )


def _close(sock: zmq.Socket[bytes]) -> None:
    sock.close(0)
    sock.context.term()


def _keyless_peer(addr: str) -> zmq.Socket[bytes]:
    """A local process's DEALER with no keys, posing as a worker that wants tasks.  Its own
    context (ended by _close): ZeroMQ's I/O threads must not outlive the test in this process,
    else its later pools could not be forks of it (deploy/clientfork.py)."""
    s: zmq.Socket[bytes] = zmq.Context().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(addr)
    hello = {"role": P.WORKER, "pid": 1, "host": "x", "tag": "", "name": "x", "held": []}
    s.send_multipart([P.header(P.HELLO), P.dump_json(hello)])
    s.send_multipart([P.header(P.CREDIT, 0, 10)])
    return s


# ----------------------------------------------------------- loopback is CURVE
def test_standalone_broker_on_loopback_is_curve_and_its_user_needs_no_key_argument(runtime):
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    broker, line = _broker("--bind", addr)
    peer = None
    try:
        assert "CURVE" in line
        key = local_key_path(port)
        assert key.startswith(str(runtime)) and os.path.exists(key)
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o700
        peer = _keyless_peer(addr)  # another local user: no key, no task
        w = _worker(addr, "-n", "1")  # this user's worker finds the key
        try:
            with ScoopExecutor(broker=addr) as ex:
                assert ex.submit(pow, 2, 5).result(timeout=60) == 32
                assert list(ex.map(abs, range(-5, 0))) == [5, 4, 3, 2, 1]
                st = ex.status()
                assert st.raw["endpoints"] == [{"endpoint": addr, "curve": True}]
                assert st.raw["refused_keys"] >= 0
            assert not peer.poll(500), "a peer without a key received something"
        finally:
            _stop(w)
    finally:
        if peer is not None:
            _close(peer)
        _stop(broker)
    assert not os.path.exists(key), "the broker removes its local key when it stops"


def test_embedded_bind_on_loopback_is_curve(runtime):
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0") as ex:
        status = ex.status().raw
        assert {"endpoint": ex.endpoint, "curve": True} in status["endpoints"]
        peer = _keyless_peer(ex.endpoint)
        try:
            futs = [ex.submit(abs, -i) for i in range(20)]
            assert [f.result(timeout=60) for f in futs] == list(range(20))
            assert not peer.poll(500), "a peer without a key received a task"
        finally:
            _close(peer)
        port = int(ex.endpoint.rsplit(":", 1)[1])
        assert os.path.exists(local_key_path(port))  # for this user's hand-started workers
    assert not os.path.exists(local_key_path(port))


# ------------------------------------------------------------------ squatters
SQUATTER = textwrap.dedent(
    """
    import sys, zmq
    mode, addr = sys.argv[1], sys.argv[2]
    s = zmq.Context().socket(zmq.ROUTER)
    if mode == "curve":  # a CURVE server with a key of its own, accepting anyone
        s.curve_server = True
        s.curve_secretkey = zmq.curve_keypair()[1]
    s.bind(addr)
    print("ready", flush=True)
    while True:
        print("got", len(s.recv_multipart()), flush=True)
    """
)


@pytest.mark.parametrize(
    "mode, words",
    # A plain squatter is told apart at once, unless it closes first (then: failed 3 times).
    [("curve", "server key in the key file is not that broker's"),
     ("null", "does not use CURVE|server key in the key file is not that broker's")],
)
def test_a_squatter_on_the_port_gets_nothing_and_the_client_fails_fast(runtime, mode, words):
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    # This user's broker on that port was killed (-9): its key, with its public key pinned, stays.
    publish_local_key(addr, Credentials.for_pair(KeyPair.new().public, KeyPair.new()))
    squatter = subprocess.Popen(
        [sys.executable, "-c", SQUATTER, mode, addr], stdout=subprocess.PIPE, env=_env()
    )
    try:
        assert squatter.stdout is not None and squatter.stdout.readline() == b"ready\n"
        t = time.monotonic()
        with pytest.raises(AuthenticationError) as err:
            ScoopExecutor(broker=addr, connect_timeout=60)
        assert time.monotonic() - t < 30, "fails on the handshake, not on the 60 s timeout"
        assert addr in str(err.value) and re.search(words, str(err.value))
        r = subprocess.run(
            [sys.executable, "-m", "scoopexec", "status", addr, "--timeout", "60"],
            capture_output=True, env=_env(), timeout=90, check=False,
        )  # fmt: skip
        err_text = r.stderr.decode()
        assert r.returncode == 1 and addr in err_text and re.search(words, err_text), err_text
        w = _worker(addr)
        try:
            assert w.wait(60) == 4
            assert w.stderr is not None and addr.encode() in w.stderr.read()
        finally:
            _stop(w)
    finally:
        squatter.terminate()
        out, _ = squatter.communicate(timeout=10)
    assert b"got" not in out, "the squatter received a message"


# ---------------------------------------------------------- no silent fallback
LONG_TMPDIR_PROGRAM = textwrap.dedent(
    """
    import json, os, stat, sys
    from scoopexec import ScoopExecutor
    with ScoopExecutor(2) as ex:
        s = ex._session
        out = {
            "endpoint": ex.endpoint,
            "results": list(ex.map(abs, range(-10, 0))),
            "status": ex.status().raw["endpoints"],
            "pids": ex.worker_pids,
            "secret": (s.workers.local.keys.secret.decode() if s.workers.local.keys else None),
        }
        if ex.endpoint.startswith("ipc://"):
            d = os.path.dirname(ex.endpoint[len("ipc://"):])
            out["mode"] = stat.S_IMODE(os.stat(d).st_mode)
        leaks = []
        for pid in ex.worker_pids:
            for what in ("cmdline", "environ"):
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    if out["secret"] and out["secret"].encode() in f.read():
                        leaks.append((pid, what))
        out["leaks"] = leaks
    print(json.dumps(out))
    """
)


def _run_pool(tmp_path, **env: str) -> dict:
    import json

    r = subprocess.run(
        [sys.executable, "-c", LONG_TMPDIR_PROGRAM],
        capture_output=True,
        env=_env(SCOOPEXEC_LOCAL_TRANSPORT="zmq", **env),  # workers connect to the private endpoint
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout.decode().splitlines()[-1])


def test_long_tmpdir_keeps_a_private_socket_directory(tmp_path, runtime):
    long_tmp = tmp_path / ("t" * 90)
    long_tmp.mkdir()
    assert len(str(long_tmp)) > 68
    out = _run_pool(tmp_path, TMPDIR=str(long_tmp))
    assert out["endpoint"].startswith(f"ipc://{runtime}/"), out  # was tcp://127.0.0.1 without keys
    assert out["mode"] == 0o700
    assert out["results"] == list(range(10, 0, -1))


def test_no_short_socket_path_at_all_means_curve_tcp_with_private_keys(tmp_path):
    long_tmp = tmp_path / ("t" * 90)
    long_run = tmp_path / ("r" * 90)
    long_tmp.mkdir()
    long_run.mkdir(mode=0o700)
    out = _run_pool(tmp_path, TMPDIR=str(long_tmp), SCOOPEXEC_RUNTIME_DIR=str(long_run))
    assert out["endpoint"].startswith("tcp://127.0.0.1:"), out
    assert out["status"][0]["curve"] is True
    assert out["results"] == list(range(10, 0, -1))
    assert out["secret"] and len(out["pids"]) == 2
    assert out["leaks"] == [], "a worker's keys are on its command line or in its environment"


# ------------------------------------------------------------ authorized keys
def _keygen(*args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "scoopexec", "keygen", *args],
        capture_output=True, env=_env(), timeout=60, check=False,
    )
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().split()[0]


def test_shared_broker_accepts_only_the_authorized_keys(tmp_path, runtime):
    server = _keygen(str(tmp_path / "broker.key"), "--name", "broker")
    alice = _keygen(str(tmp_path / "alice.key"), f"--server={server}", "--name", "alice")
    bob = _keygen(str(tmp_path / "bob.key"), f"--server={server}")
    assert len({server, alice, bob}) == 3
    for f in ("broker.key", "alice.key", "bob.key"):
        assert stat.S_IMODE(os.stat(tmp_path / f).st_mode) == 0o600
    auth = tmp_path / "authorized_keys"
    auth.write_text(f"# users of this broker\n\n{alice} alice\n")
    addr = f"tcp://127.0.0.1:{_free_port()}"
    broker, line = _broker(
        "--bind", addr, "--server-key", str(tmp_path / "broker.key"), "--authorized-keys", str(auth)
    )
    try:
        assert server in line and "1 authorized key" in line
        w = _worker(addr, "--key", str(tmp_path / "alice.key"), "-n", "1")
        try:
            with ScoopExecutor(broker=addr, key=tmp_path / "alice.key") as ex:
                assert ex.submit(pow, 3, 3).result(timeout=60) == 27
            with pytest.raises(AuthenticationError, match="refused this key"):
                ScoopExecutor(broker=addr, key=tmp_path / "bob.key", connect_timeout=60)
            wb = _worker(addr, "--key", str(tmp_path / "bob.key"))
            try:
                assert wb.wait(60) == 4
                assert wb.stderr is not None and b"refused this key" in wb.stderr.read()
            finally:
                _stop(wb)
            # Adding a line lets bob in, without restarting the broker.
            with auth.open("a") as fh:
                fh.write(f"{bob} bob\n")
            time.sleep(1.2)
            with ScoopExecutor(broker=addr, key=tmp_path / "bob.key") as ex:
                assert ex.submit(pow, 2, 3).result(timeout=60) == 8
        finally:
            _stop(w)
    finally:
        _stop(broker)


def test_authorized_keys_file_format(tmp_path):
    a, b = KeyPair.new().public, KeyPair.new().public
    keys = parse_authorized_keys(b"# c\n\n  " + a + b"  alice smith\n" + b + b"\n", "f")
    assert keys == {a: "alice smith", b: ""}
    with pytest.raises(ValueError, match="f, line 2: not a CURVE public key"):
        parse_authorized_keys(b"# c\nsecret-looking-word alice\n", "f")
    p = tmp_path / "auth"
    p.write_bytes(a + b"\n")
    ak = AuthorizedKeys(p)
    assert a in ak and b not in ak
    p.write_bytes(b"garbage\n")  # a broken edit keeps the keys read before
    ak.reload()
    assert a in ak.keys and "line 1" in ak.problem
    with pytest.raises(ValueError, match="cannot read the authorized keys"):
        AuthorizedKeys(tmp_path / "missing")


def test_keygen_keeps_an_existing_key(tmp_path):
    server = KeyPair.new().public.decode()
    path = str(tmp_path / "k")
    first = _keygen(path)
    r = subprocess.run(
        [sys.executable, "-m", "scoopexec", "keygen", path],
        capture_output=True, env=_env(), timeout=60, check=False,
    )
    assert r.returncode == 2 and b"exists" in r.stderr
    assert _keygen(path, f"--server={server}") == first  # only the broker key is set
    sock = zmq.Context().socket(zmq.DEALER)
    try:
        with pytest.raises(ValueError, match="no broker key"):
            Credentials(b"", b"x" * 40, b"y" * 40).apply(sock)
    finally:
        _close(sock)


# ----------------------------------------------------------------- addresses
def test_only_literal_loopback_addresses_are_loopback():
    assert is_loopback("tcp://127.0.0.1:1") and is_loopback("tcp://127.9.8.7:1")
    assert is_loopback("tcp://[::1]:1") and is_loopback("ipc:///tmp/x")
    for host in ("127.0.0.1.nip.io", "127.example.com", "127.1", "10.0.0.1", "0.0.0.0", "*", "lo"):
        assert not is_loopback(f"tcp://{host}:1"), host
    assert is_loopback("tcp://localhost:1") == all(
        info[4][0] in ("127.0.0.1", "::1") for info in socket.getaddrinfo("localhost", None)
    )


def test_standalone_ipc_socket_is_private_whatever_the_umask(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # like /tmp
    for sock in (shared / "b.sock", shared / "new" / "b.sock"):
        p = subprocess.Popen(
            [sys.executable, "-m", "scoopexec", "broker", "--bind", f"ipc://{sock}"],
            stdout=subprocess.PIPE,
            env=_env(),
            preexec_fn=lambda: os.umask(0),  # noqa: PLW1509 - the child's umask, before exec
        )
        try:
            assert p.stdout is not None and b"listening" in p.stdout.readline()
            if sock.parent != shared:
                assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700  # it made the directory
            else:
                assert stat.S_IMODE(os.stat(sock).st_mode) & 0o077 == 0
        finally:
            _stop(p)


def test_a_runtime_directory_others_may_enter_is_refused_not_used(tmp_path, monkeypatch, caplog):
    shared = tmp_path / "shared-run"
    shared.mkdir()
    os.chmod(shared, 0o755)  # e.g. made by someone else, or by hand
    monkeypatch.setenv("SCOOPEXEC_RUNTIME_DIR", str(shared))
    with pytest.raises(ValueError, match="mode 0700"):
        runtime_dir()
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0") as ex:  # the pool still runs, and says why
        assert ex.submit(abs, -3).result(timeout=60) == 3
    assert "no key for workers started by hand" in caplog.text
    assert os.listdir(shared) == [], "no key written where others could read it"


def test_keys_of_brokers_that_ended_are_removed_by_the_next_one(runtime):
    """A broker killed with -9 cannot remove its tcp-PORT.key; the next broker to publish does."""
    ended = subprocess.Popen(["true"])
    ended.wait()  # a pid no process has now (reaped)
    pair = Credentials.for_pair(KeyPair.new().public, KeyPair.new())
    ns = os.readlink("/proc/self/ns/pid")
    with open("/proc/sys/kernel/random/boot_id") as fh:
        boot = fh.read().strip()
    here = {"pid_ns": ns, "boot_id": boot}
    dead = write_key_file(runtime / "tcp-1001.key", pair, pid=ended.pid, **here)
    alive = write_key_file(runtime / "tcp-1002.key", pair, pid=os.getpid(), **here)
    elsewhere = write_key_file(runtime / "tcp-1003.key", pair, pid=ended.pid, pid_ns="pid:[1]", boot_id=boot)
    other_host = write_key_file(runtime / "tcp-1004.key", pair, pid=ended.pid, pid_ns=ns, boot_id="another")
    legacy = write_key_file(runtime / "tcp-1005.key", pair)  # written before keys named their writer
    other = write_key_file(runtime / "client.key", pair, pid=ended.pid, **here)  # not a local key
    # Nothing in the directory may make a broker's start fail or hang:
    (runtime / "tcp-1006.key").write_text("[" * 5000)  # json.loads: RecursionError
    huge_pid = write_key_file(runtime / "tcp-1007.key", pair, pid=2**31, **here)  # os.kill: OverflowError
    os.mkfifo(runtime / "tcp-1008.key")  # open() would block
    os.symlink(dead, runtime / "tcp-1009.key")  # a link to a dead broker's key: not followed
    port = _free_port()
    mine = publish_local_key(f"tcp://127.0.0.1:{port}", pair)
    assert mine == local_key_path(port)
    assert not os.path.exists(dead)
    for kept in (alive, elsewhere, other_host, legacy, other, huge_pid, mine):
        assert os.path.exists(kept), kept
    assert os.path.lexists(runtime / "tcp-1009.key") and (runtime / "tcp-1008.key").exists()
    assert read_key_file(mine).public == pair.public  # the extra fields do not disturb readers
    assert read_key_file(alive).public == pair.public


def test_a_real_broker_killed_leaves_a_key_that_the_next_broker_removes(runtime):
    def cmd():
        return [sys.executable, "-m", "scoopexec", "broker", "--bind", f"tcp://127.0.0.1:{_free_port()}"]

    first = subprocess.Popen(cmd(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.monotonic() + 60
        while not list(runtime.glob("tcp-*.key")) and time.monotonic() < deadline:
            time.sleep(0.05)
        (key,) = runtime.glob("tcp-*.key")
    finally:
        first.kill()
        first.wait(30)
    assert key.exists()  # killed: it could not remove it
    second = subprocess.Popen(cmd(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.monotonic() + 60
        while len(list(runtime.glob("tcp-*.key"))) != 1 or key.exists():
            assert time.monotonic() < deadline, sorted(runtime.iterdir())
            time.sleep(0.05)
    finally:
        second.terminate()
        second.wait(30)
    assert not list(runtime.glob("tcp-*.key"))  # and the second removed its own at its end
