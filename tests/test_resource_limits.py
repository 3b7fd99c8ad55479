"""Bounded resources: the message-size limit on every socket and link, and what a broker holds."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time

import pytest
import zmq

from scoopexec import ScoopExecutor
from scoopexec.errors import ProtocolError
from scoopexec.wire import framing, zmqsock
from scoopexec.wire import protocol as P
from scoopexec.wire.validate import DEFAULT_MAX_MESSAGE_SIZE, frame_limit
from tests.conftest import ROOT
from tests.peers import broker_status, free_port, keyed


def test_a_bogus_length_header_on_a_link_is_an_error_not_an_allocation():
    """A local link announcing a frame above its limit is refused at once: before, a 64 MiB
    buffer was taken for it and the link waited for bytes that never come."""
    pool = framing.BufferPool()
    a, b = socket.socketpair()
    try:
        link = framing.Link(b, pool=pool, max_frame=1 << 20)
        a.sendall(framing.COUNT.pack(1) + struct.pack("<Q", 64 << 20) + b"x" * 100)
        time.sleep(0.05)
        with pytest.raises(ProtocolError, match="more than the limit"):
            link.receive()
        assert len(pool) == 0
    finally:
        a.close()
        b.close()


def test_the_default_limit_has_room_for_the_benchmarks_arrays():
    assert DEFAULT_MAX_MESSAGE_SIZE >= (64 << 20) + (1 << 20)
    assert frame_limit(DEFAULT_MAX_MESSAGE_SIZE) > DEFAULT_MAX_MESSAGE_SIZE
    assert frame_limit(-1) == -1


def _print_big(n):
    sys.stdout.write("y" * n + "\n")
    return n


def test_task_output_larger_than_the_limit_is_cut_into_frames(capsys):
    """A task printing more than max_message_size in one line: the output arrives whole, cut
    in frames; before, the one frame was over the link's limit and cost the worker."""
    with ScoopExecutor(1, max_message_size=1_000_000) as ex:
        assert ex.submit(_print_big, 3_500_000).result(timeout=60) == 3_500_000
    out, _ = capsys.readouterr()
    assert out.count("y") == 3_500_000


def test_a_frame_over_the_limit_disconnects_only_its_sender():
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0", max_message_size=1_000_000) as ex:
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        try:
            s.setsockopt(zmq.LINGER, 0)
            keyed(s, ex.endpoint)
            s.connect(ex.endpoint)
            s.send_multipart([P.header(P.HELLO), b'{"role": "client"}', b"z" * (3 << 20)])
            # The connection is dropped with the HELLO unread; the DEALER connects again.
            s.send_multipart([P.header(P.STATUS)])
            assert s.poll(30_000)
            assert P.decode(s.recv_multipart()).kind == P.STATUS_REPLY
            assert ex.status().clients == 1  # the in-process client only: that HELLO never came
        finally:
            s.close(linger=0)
            ctx.term()
        assert ex.submit(abs, -5).result(timeout=60) == 5


def _big_result(n):
    return b"r" * n


def test_a_worker_socket_takes_the_limit_and_a_client_gets_results_the_pool_allows():
    """dealer() sets the limit on a worker's socket (--max-message-size; an embedded pool
    passes its own to its local workers).  A client's socket has none of its own: what it
    receives is bounded by its pool's limit, which may be larger than its own
    max_message_size (that one bounds what it sends), and a guard there would drop the
    connection and hang its futures."""
    ctx = zmq.Context()
    try:
        s = zmqsock.dealer(ctx, b"x", "tcp://127.0.0.1:1", linger=0, heartbeat=1.0, heartbeat_timeout=5.0,
                           keys=None, max_message_size=5000)  # fmt: skip
        assert s.getsockopt(zmq.MAXMSGSIZE) == frame_limit(5000)
        s.close()
    finally:
        ctx.term()
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0") as ex:
        with ScoopExecutor(broker=ex.endpoint, max_message_size=1_000_000) as client:
            assert len(client.submit(_big_result, 3_000_000).result(timeout=60)) == 3_000_000


_CLIENT = """
import sys, time
from scoopexec import ScoopExecutor
from tests.helpers import wait_for_file
if __name__ == "__main__":
    ex = ScoopExecutor(broker=sys.argv[1], initializer=len, initargs=("x" * 100_000,))
    ex.share("big", b"v" * 1_000_000)
    ex.share("big", b"w" * 1_000_000)
    futs = [ex.submit(wait_for_file, sys.argv[2]) for _ in range(50)]
    print("ready", flush=True)
    time.sleep(120)
"""




@pytest.mark.timeout(120)
def test_a_killed_clients_setup_shared_values_and_tasks_are_freed(tmp_path):
    """A client of a standalone broker shares a value twice (the second replaces the first),
    has tasks queued, and is SIGKILLed: the broker's status shows its set-up, shared values
    and tasks gone.  Before, the set-up stayed (Ledger.setups) and sharing again appended."""
    addr = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, PYTHONPATH=ROOT)
    broker = subprocess.Popen([sys.executable, "-m", "scoopexec", "broker", "--bind", addr],
                              stdout=subprocess.PIPE, env=env)  # fmt: skip
    workers = client = None
    try:
        assert b"listening on" in broker.stdout.readline()
        workers = subprocess.Popen([sys.executable, "-m", "scoopexec", "worker", "--connect", addr], env=env)
        script = tmp_path / "client.py"
        script.write_text(_CLIENT)
        gate = tmp_path / "gate"
        argv = [sys.executable, str(script), addr, str(gate)]
        client = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
        assert client.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 30
        while True:
            st = broker_status(addr)
            if st["tasks"] == 50 and st["shared"] == 1:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.1)
        assert st["clients"] == 1 and st["setups"] == 1
        client.kill()
        client.wait(10)
        while True:
            st = broker_status(addr)
            if st["clients"] == 0:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.1)
        assert (st["setups"], st["shared"], st["tasks"], st["queued"]) == (0, 0, 0, 0), st
        gate.touch()  # the task its worker was running ends
        # The pool serves the next client as before.
        with ScoopExecutor(broker=addr) as ex:
            assert ex.submit(abs, -4).result(timeout=60) == 4
    finally:
        for p in (client, workers, broker):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(10)
        for p in (client, broker):
            if p is not None:
                p.stdout.close()


_EMFILE = """
import os, resource, signal, sys, time
from scoopexec import ScoopExecutor
if __name__ == "__main__":
    with ScoopExecutor(2) as ex:
        assert [ex.submit(abs, -i).result(timeout=60) for i in range(4)] == [0, 1, 2, 3]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # From here this process can open no more files: a new worker cannot be started.
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")), hard))
        victim = ex.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not ex.status().raw["faults"].get("worker start failed"):
            assert time.monotonic() < deadline, ex.status().raw
            time.sleep(0.05)
        print("refused", flush=True)
        assert [ex.submit(abs, -i).result(timeout=60) for i in range(10)] == list(range(10))
        print("served", flush=True)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        while len(ex.worker_pids) < 2 or victim in ex.worker_pids:
            assert time.monotonic() < deadline, ex.status().raw
            time.sleep(0.05)
        print("replaced", flush=True)
"""


@pytest.mark.timeout(120)
def test_out_of_file_descriptors_while_replacing_a_worker_is_survived(tmp_path):
    """A local worker dies while its pool's process can open no more files (a real
    RLIMIT_NOFILE): the broker logs it, counts it in the status, serves with the worker it
    has, and starts the replacement once it can.  Before, the EMFILE from starting the
    replacement ended the broker's thread."""
    script = tmp_path / "emfile.py"
    script.write_text(_EMFILE)
    r = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, timeout=100,
                       env=dict(os.environ, PYTHONPATH=ROOT))  # fmt: skip
    out, err = r.stdout.decode(), r.stderr.decode()
    assert out.split() == ["refused", "served", "replaced"], (out, err[-3000:])
    assert r.returncode == 0, err[-3000:]
    assert "could not start a worker to replace" in err and "Too many open files" in err


_NOFILE = """
import errno, os, resource, sys, time
from scoopexec import ScoopExecutor
if __name__ == "__main__":
    n = int(sys.argv[1])
    t = time.monotonic()
    try:
        with ScoopExecutor(n) as ex:
            assert sorted(ex.map(abs, range(-500, 500))) == sorted(abs(i) for i in range(-500, 500))
            pids = len(ex.worker_pids)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            print("served", pids, soft, hard, flush=True)
    except OSError as exc:
        print("refused", exc.errno == errno.EMFILE, f"{time.monotonic() - t:.1f}", flush=True)
        print(exc, flush=True)
"""


def _under_nofile(tmp_path, soft, hard, workers):
    import resource

    script = tmp_path / "nofile.py"
    script.write_text(_NOFILE)
    r = subprocess.run(
        [sys.executable, str(script), str(workers)], check=False, capture_output=True, timeout=100,
        env=dict(os.environ, PYTHONPATH=ROOT),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )  # fmt: skip
    return r.returncode, r.stdout.decode().splitlines(), r.stderr.decode()


@pytest.mark.timeout(120)
def test_a_pool_too_large_for_the_open_file_limit_says_so_before_it_starts(tmp_path):
    """32 local workers keep about 100 descriptors in the client, over a hard limit of 64:
    an error that says what is needed and what to do, before any worker starts (before, a
    bare 'Too many open files' from a pipe, part-way through starting them)."""
    rc, out, err = _under_nofile(tmp_path, 64, 64, 32)
    assert rc == 0 and out[0].split()[:2] == ["refused", "True"], (out, err[-3000:])
    assert float(out[0].split()[2]) < 5
    text = out[1]
    assert "starting 32 local worker(s) needs about" in text and "open files in this process" in text
    assert "limit allows: 64, and 64 at most" in text and "start fewer workers" in text and "ulimit -n" in text
    # A pool that fits (without the margin the soft limit is raised with) starts, as it always did.
    rc, out, err = _under_nofile(tmp_path, 64, 64, 12)
    assert rc == 0 and out and out[0].split()[:2] == ["served", "12"], (out, err[-3000:])


@pytest.mark.timeout(120)
def test_a_pool_raises_its_soft_open_file_limit_as_far_as_the_hard_one_allows(tmp_path):
    """The same pool with a soft limit of 64 and a hard one of 4096 (a login shell's 1024 and
    a node's hundreds of CPUs, in small): the client raises its soft limit to what the
    workers need and all of them serve."""
    rc, out, err = _under_nofile(tmp_path, 64, 4096, 32)
    assert rc == 0 and out and out[0].split()[0] == "served", (out, err[-3000:])
    _, pids, soft, hard = out[0].split()
    assert int(pids) == 32 and int(hard) == 4096
    assert 32 * 3 < int(soft) < 4096  # what they need, not all the hard limit allows


_FEW_LEFT = """
import errno, os, resource, sys, time
from scoopexec import ScoopExecutor
if __name__ == "__main__":
    free = int(sys.argv[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = []
    while len(os.listdir("/proc/self/fd")) - 1 < soft - free:
        held.append(os.open(os.devnull, os.O_RDONLY))
    try:
        with ScoopExecutor(2) as ex:
            print("served", ex.submit(abs, -3).result(timeout=60), flush=True)
    except OSError as exc:
        print("refused", exc.errno == errno.EMFILE, flush=True)
        print(exc, flush=True)
"""


@pytest.mark.timeout(200)
def test_a_pool_with_few_descriptors_left_refuses_to_start_and_never_hangs_or_aborts(tmp_path):
    """With 7 to 24 descriptors left under a hard limit, ScoopExecutor(2) hung for ever (a
    broker that failed part-way left a socket its context's term() waited for), died of
    libzmq's assertion (SIGABRT), or raised a bare EMFILE from inside ZeroMQ: the check before
    the start counts the pool's own descriptors now, and a failure inside still raises."""
    script = tmp_path / "few.py"
    script.write_text(_FEW_LEFT)
    # Before: 8-13 a bare EMFILE, 14 and 18 an exit status 1, 15-17 SIGABRT, 19-21 a hang.
    for free in (8, 12, 14, 15, 17, 19, 20, 21, 60):
        r = subprocess.run(
            [sys.executable, str(script), str(free)], check=False, capture_output=True, timeout=60,
            env=dict(os.environ, PYTHONPATH=ROOT),
            preexec_fn=lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_NOFILE, (128, 128)),
        )  # fmt: skip
        out, err = r.stdout.decode().splitlines(), r.stderr.decode()
        assert r.returncode == 0, (free, r.returncode, out, err[-2000:])
        if free <= 21:
            assert out[:1] == ["refused True"], (free, out, err[-2000:])
            assert "for the pool" in out[1] and "limit allows: 128, and 128 at most" in out[1], out
        if free >= 60:
            assert out == ["served 3"], (free, out, err[-2000:])


def test_making_room_never_lowers_the_limit_and_stops_at_the_hard_one():
    # (in a child: it changes its process's limits)
    code = """
import resource
from scoopexec.deploy.local import make_room_for
N = resource.RLIMIT_NOFILE
resource.setrlimit(N, (4000, 4000))
make_room_for(10)
a = resource.getrlimit(N)
resource.setrlimit(N, (200, 4000))
make_room_for(100)
b = resource.getrlimit(N)
make_room_for(1)
c = resource.getrlimit(N)
print(a[0], b[0], c[0], b[1])
"""
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT))  # fmt: skip
    assert r.returncode == 0, r.stderr
    untouched, raised, after_small, hard = map(int, r.stdout.split())
    assert untouched == 4000 and hard == 4000
    assert 300 < raised < 4000  # what 100 workers need and the margin, not all the hard limit allows
    assert after_small == raised  # a smaller pool later does not lower it


def test_room_for_segment_descriptors_is_made_when_it_can_be_and_never_refuses_a_pool():
    # ``spare``: descriptors each worker may use (its link's segment mappings before 3.13) and
    # may go without: the soft limit is raised for them, but a hard limit too low for them is
    # not an error when the pool itself fits.
    code = """
import resource
from scoopexec.deploy.local import make_room_for
N = resource.RLIMIT_NOFILE
resource.setrlimit(N, (200, 4000))
make_room_for(50, 3, 0, 0)
plain = resource.getrlimit(N)[0]
resource.setrlimit(N, (200, 4000))
make_room_for(50, 3, 0, 4)
spared = resource.getrlimit(N)[0]
resource.setrlimit(N, (200, 260))
make_room_for(50, 3, 0, 4)  # 150 fit under 260, 350 do not: no error
capped = resource.getrlimit(N)[0]
print(plain, spared, capped)
"""
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT))  # fmt: skip
    assert r.returncode == 0, r.stderr
    plain, spared, capped = map(int, r.stdout.split())
    assert spared - plain == 50 * 4  # room for 4 more a worker
    assert capped == 260  # as far as the hard limit goes


def _start_broker(*options):
    addr = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "scoopexec", "broker", "--bind", addr, *options],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    assert b"listening on" in p.stdout.readline()
    return addr, p


def _stop(*procs):
    for p in procs:
        if p is not None and p.poll() is None:
            p.terminate()
            p.wait(10)
        for f in (p.stdout, p.stderr) if p is not None else ():
            if f is not None:
                f.close()


def _closed_within(sock, seconds):
    """Whether the broker closes this raw TCP connection within ``seconds``."""
    sock.settimeout(0.2)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionError:
            return True
    return False


def _raw(addr):
    host, port = addr[len("tcp://") :].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


@pytest.mark.timeout(120)
def test_a_connection_that_never_says_hello_is_closed():
    """--handshake-timeout: a peer that connects and says nothing is cut; one that said HELLO
    stays.  Before, the half-open connection stayed for ever (a descriptor each)."""
    addr, broker = _start_broker("--handshake-timeout", "1")
    workers = silent = None
    try:
        silent = _raw(addr)
        env = dict(os.environ, PYTHONPATH=ROOT)
        workers = subprocess.Popen([sys.executable, "-m", "scoopexec", "worker", "--connect", addr], env=env)
        with ScoopExecutor(broker=addr) as ex:
            assert _closed_within(silent, 15)
            assert ex.submit(abs, -1).result(timeout=60) == 1  # its connection is alive, so is the worker's
            time.sleep(1.5)
            assert ex.submit(abs, -2).result(timeout=60) == 2
        assert broker_status(addr)["dropped"].get("handshake timeout", 0) >= 1
    finally:
        if silent is not None:
            silent.close()
        _stop(workers, broker)


@pytest.mark.timeout(120)
def test_connections_beyond_the_cap_are_closed_and_others_served():
    addr, broker = _start_broker("--max-connections", "3", "--handshake-timeout", "0")
    socks = []
    try:
        socks = [_raw(addr) for _ in range(6)]
        closed = [_closed_within(s, 3) for s in socks]
        assert sum(closed) >= 3, closed
        for s in socks:
            s.close()
        time.sleep(0.5)
        st = broker_status(addr)  # a connection of its own: there is room again
        assert st["dropped"].get("too many connections", 0) >= 3
    finally:
        for s in socks:
            s.close()
        _stop(broker)


_GREEDY = """
import sys
from scoopexec import ScoopExecutor
from tests.helpers import wait_for_file
if __name__ == "__main__":
    with ScoopExecutor(broker=sys.argv[1]) as ex:
        held = [ex.submit(wait_for_file, sys.argv[2]) for _ in range(10)]
        print("held", flush=True)
        sys.stdin.readline()  # the test has seen them in the broker
        more = [ex.submit(wait_for_file, sys.argv[2]) for _ in range(5)]
        for f in more:
            try:
                f.result(timeout=60)
                print("accepted", flush=True)
            except Exception as exc:
                print("refused", type(exc).__name__, "max_queued=10" in str(exc), flush=True)
        print("done", sum(f.result(timeout=60) is None for f in held), flush=True)
"""


@pytest.mark.timeout(120)
def test_a_client_over_its_queue_cap_gets_an_error_and_others_are_served(tmp_path):
    addr, broker = _start_broker("--max-queued", "10")
    env = dict(os.environ, PYTHONPATH=ROOT)
    workers = greedy = None
    try:
        workers = subprocess.Popen([sys.executable, "-m", "scoopexec", "worker", "--connect", addr], env=env)
        script, gate = tmp_path / "greedy.py", tmp_path / "gate"
        script.write_text(_GREEDY)
        greedy = subprocess.Popen([sys.executable, str(script), addr, str(gate)], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert greedy.stdout.readline() == b"held\n"
        deadline = time.monotonic() + 30
        while broker_status(addr)["tasks"] < 10:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        greedy.stdin.write(b"go\n")
        greedy.stdin.flush()
        with ScoopExecutor(broker=addr) as other:  # another client's tasks are taken
            f = other.submit(abs, -6)
            lines = [greedy.stdout.readline().decode().split() for _ in range(5)]
            assert lines == [["refused", "RemoteError", "True"]] * 5, lines
            gate.touch()
            assert f.result(timeout=60) == 6
        assert greedy.stdout.readline() == b"done 10\n"
        assert greedy.wait(30) == 0
    finally:
        if greedy is not None and greedy.poll() is None:
            greedy.kill()
            greedy.wait(10)
        if greedy is not None:
            greedy.stdin.close()
            greedy.stdout.close()
        _stop(workers, broker)


@pytest.mark.timeout(120)
def test_out_of_file_descriptors_while_accepting_is_survived():
    """A standalone broker with few descriptors (a real RLIMIT_NOFILE) and a crowd of
    connections: the accepts ZeroMQ cannot make are counted, and once the crowd is gone the
    broker answers as before."""
    addr = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, PYTHONPATH=ROOT)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "from scoopexec.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = [sys.executable, "-c", code, "broker", "--bind", addr, "--max-connections", "0"]
    broker = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    crowd = []
    try:
        assert b"listening on" in broker.stdout.readline()
        for _ in range(100):
            crowd.append(_raw(addr))
        time.sleep(1.0)
        assert broker.poll() is None
        for s in crowd:
            s.close()
        crowd.clear()
        deadline = time.monotonic() + 30
        while True:
            try:
                st = broker_status(addr)
                break
            except AssertionError:
                assert time.monotonic() < deadline
        assert st["dropped"].get("accept failed", 0) > 0, st["dropped"]
        assert broker.poll() is None
    finally:
        for s in crowd:
            s.close()
        _stop(broker)
