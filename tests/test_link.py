"""The local link (link.py): framed messages over a real socketpair, and the pools that use it.

Local workers of an embedded broker talk to it over a socketpair rather than ZeroMQ; these tests
check the framing under partial reads and writes, the reuse of large receive buffers, and the
behaviour a user sees: crashes, a stopped worker, many threads submitting at once, large arrays.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import signal
import socket
import sys
import threading
import time

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoopexec import BrokenScoopExecutor, ScoopExecutor, WorkerLostError
from scoopexec.errors import ProtocolError
from scoopexec.wire import framing as link
from tests import faulty
from tests.helpers import link_pair, one_message, sleep_and_return


def _pump(sender: link.Link, receiver: link.Link, messages, want: int, timeout: float = 30.0):
    """Send `messages` without blocking while reading on the other side; return what arrived."""
    got: list[list[bytes]] = []
    pending = list(messages)
    deadline = time.monotonic() + timeout
    while len(got) < want:
        assert time.monotonic() < deadline, f"only {len(got)} of {want} messages arrived"
        if pending:
            sender.send(pending.pop(0))
        else:
            sender.flush()
        for msg in receiver.receive(10):
            # Small frames are cut out as plain bytes (not a subclass, whose making copies twice).
            assert all(type(f) is bytes for f in msg if len(f) < link.BIG)
            got.append([bytes(f) for f in msg])
        assert not receiver.eof
    return got


frame = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([0, 1, link.BIG - 1, link.BIG, link.BIG + 4097, 3 * link.BIG]).map(
        lambda n: bytes(range(256)) * (n // 256) + b"x" * (n % 256)
    ),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(frame, min_size=1, max_size=6), min_size=1, max_size=8))
@pytest.mark.timeout(120)
def test_messages_arrive_whole_and_in_order_through_partial_reads_and_writes(messages):
    with link_pair() as (a, b):
        assert _pump(a, b, messages, len(messages)) == messages
        assert not a.wants_write


@pytest.mark.timeout(60)
def test_more_frames_than_one_sendmsg_takes():
    with link_pair() as (a, b):
        msg = [i.to_bytes(4, "little") * (i % 5) for i in range(3 * link.IOV_MAX + 7)]
        assert _pump(a, b, [msg, [b"after"]], 2) == [msg, [b"after"]]


@pytest.mark.timeout(60)
def test_small_frames_of_every_buffer_kind_arrive_as_their_bytes():
    # A message of small frames is sent as one buffer (framing.JOIN_BELOW): each frame's bytes
    # as sendmsg would have sent them, whatever object holds them.
    import array

    grid = memoryview(bytes(range(12))).cast("B", (3, 4))  # two dimensions, C-contiguous
    ints = memoryview(array.array("i", [1, -2, 3]))  # items of four bytes
    msg = [b"head", bytearray(b"ba"), grid, ints, pickle.PickleBuffer(b"pb"), b""]
    want = [b"head", b"ba", bytes(range(12)), array.array("i", [1, -2, 3]).tobytes(), b"pb", b""]
    with link_pair() as (a, b):
        assert _pump(a, b, [msg, msg[:2], [b"x" * (link.JOIN_BELOW + 1), b"y", b"z"]], 3) == [
            want, want[:2], [b"x" * (link.JOIN_BELOW + 1), b"y", b"z"]
        ]


@pytest.mark.timeout(60)
def test_a_blocking_sender_waits_for_a_slow_reader():
    big = os.urandom(8 << 20)
    got: list[list[bytes]] = []
    with link_pair(blocking_send=True) as (a, b):

        def read_slowly():
            while not got:
                time.sleep(0.01)
                got.extend([bytes(f) for f in m] for m in b.receive(1))

        t = threading.Thread(target=read_slowly)
        t.start()
        a.send([b"head", big])  # returns only when all of it is in the socket
        t.join(30)
        assert got == [[b"head", big]]


@pytest.mark.timeout(30)
def test_end_of_file_and_garbage_are_reported():
    with link_pair() as (a, b):
        a.send([b"last words"])
        a.close()
        assert [bytes(f) for f in b.receive()[0]] == [b"last words"]
        assert b.receive() == [] and b.eof  # seen on the next read: the fd stays readable

    raw, other = socket.socketpair()
    lk = link.Link(other, shared=False)
    raw.sendall((0).to_bytes(4, "little"))  # a message of no frames
    with pytest.raises(ProtocolError):
        lk.receive()
    raw.close()
    lk.close()

    raw, other = socket.socketpair()
    lk = link.Link(other)  # there, no frames is a note about segments: of a kind that is not one
    raw.sendall((0).to_bytes(4, "little") + (9).to_bytes(4, "little") + (0).to_bytes(4, "little"))
    with pytest.raises(ProtocolError, match="unknown kind"):
        lk.receive()
    raw.close()
    lk.close()

    raw, other = socket.socketpair()
    lk = link.Link(other)
    raw.sendall((1).to_bytes(4, "little") + (1 << 62).to_bytes(8, "little"))  # an impossible length
    with pytest.raises(ProtocolError, match="cannot be received"):
        lk.receive()
    raw.close()
    lk.close()


@pytest.mark.timeout(30)
def test_large_frames_reuse_a_buffer_once_nothing_refers_to_it():
    pool = link.BufferPool(keep=4, idle_bytes=1 << 30, idle_seconds=60)
    with link_pair(pool=pool, shared=False) as (a, b):  # (frames of a size sent again: no segments)
        data = os.urandom(2 * link.BIG)
        (first,) = one_message(a, b, [b"h", data])[1:]
        assert bytes(first) == data and isinstance(first, link.BigFrame)
        (second,) = one_message(a, b, [b"h", data])[1:]
        assert second is not first  # `first` is still held here
        first_id = id(first)
        del first
        (third,) = one_message(a, b, [b"h", data[::-1]])[1:]
        assert id(third) == first_id and bytes(third) == data[::-1]
        assert (pool.reused, pool.allocated) == (1, 2)
        del second, third
        pool.idle_seconds = 0.0
        time.sleep(0.01)
        pool.expire()
        assert len(pool) == 0  # unused buffers are let go of


# ------------------------------------------------------------------ pools over links


@pytest.mark.timeout(60)
def test_local_workers_use_links_and_need_no_ipc_connection():
    with ScoopExecutor(2) as ex:
        assert ex.submit(abs, -3).result() == 3
        broker = ex._session.broker
        _wait_for_workers(ex, 2)
        assert len(broker.links.links) == 2
        assert set(broker.links.links) == set(broker.ledger.workers)


@pytest.mark.timeout(60)
def test_the_zeromq_ipc_transport_can_still_be_chosen(monkeypatch):
    monkeypatch.setenv("SCOOPEXEC_LOCAL_TRANSPORT", "zmq")
    with ScoopExecutor(2) as ex:
        assert sorted(ex.map(abs, range(-50, 0))) == list(range(1, 51))
        _wait_for_workers(ex, 2)
        assert not ex._session.broker.links.links


@pytest.mark.timeout(60)
def test_a_mistyped_transport_is_refused_not_taken_for_the_default(monkeypatch):
    monkeypatch.setenv("SCOOPEXEC_LOCAL_TRANSPORT", "zmqq")
    with pytest.raises(ValueError, match="SCOOPEXEC_LOCAL_TRANSPORT='zmqq': expected one of link"):
        ScoopExecutor(1)
    monkeypatch.setenv("SCOOPEXEC_LOCAL_TRANSPORT", "link")
    with ScoopExecutor(1) as ex:
        assert ex.submit(abs, -1).result(timeout=30) == 1


def _wait_for_workers(ex, n):
    deadline = time.monotonic() + 30
    while len(ex._session.broker.ledger.workers) < n:
        assert time.monotonic() < deadline, "the workers did not all say HELLO"
        time.sleep(0.02)


@pytest.mark.timeout(90)
def test_many_threads_submitting_at_once_lose_nothing():
    # Threads race the broker's loop for its lock (a submitting thread dispatches
    # itself while the loop sleeps); done-callbacks submit from the loop's thread.
    with ScoopExecutor(2) as ex:
        results: dict[int, list[int]] = {}
        chained: list = []
        lock = threading.Lock()

        def chain(f):
            with lock:
                chained.append(ex.submit(abs, -f.result()))

        def work(k: int) -> None:
            out = []
            for i in range(400):
                fut = ex.submit(abs, -(k * 1000 + i))
                if i % 50 == 0:
                    fut.add_done_callback(chain)
                out.append(fut.result(timeout=60))
            results[k] = out

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(80)
        assert all(results[k] == [k * 1000 + i for i in range(400)] for k in range(8))
        deadline = time.monotonic() + 30
        while len(chained) < 64:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert sorted(f.result(timeout=30) for f in chained) == sorted(
            k * 1000 + i for k in range(8) for i in range(0, 400, 50)
        )


@pytest.mark.timeout(120)
def test_large_arrays_travel_both_ways_and_arrive_writable():
    np = pytest.importorskip("numpy")
    with ScoopExecutor(2) as ex:
        for n in (1, 1 << 17, 3 << 20):  # 8 bytes to 24 MiB: in-band, small and large frames
            a = np.arange(n, dtype=np.float64)
            out = list(ex.map(np.negative, [a, a * 2, a * 3]))
            for k, b in enumerate(out, 1):
                assert b.shape == a.shape and np.array_equal(b, -k * a)
                b[0] = 1.0  # received arrays are writable, as with ProcessPoolExecutor


@pytest.mark.timeout(60)
def test_a_worker_killed_during_a_task_over_a_link_is_replaced():
    with ScoopExecutor(1) as ex:
        pid = ex.worker_pids[0]
        fut = ex.submit(faulty.pid_after, 5.0)
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        assert fut.result(timeout=30) != pid  # re-run on its replacement
        assert ex.submit(abs, -1).result() == 1


def _wait_until_running_a_task(ex, pid, timeout=60.0):
    """Until the worker `pid` said HELLO and holds a task (it may still be starting on a busy machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(w.pid == pid and w.assigned for w in ex.status(timeout=30).workers):
            return
        time.sleep(0.02)
    raise AssertionError(f"worker {pid} never took the task")


@pytest.mark.timeout(90)
def test_a_stopped_local_worker_is_seen_in_its_process_state():
    with ScoopExecutor(1, heartbeat=0.2, heartbeat_timeout=1.0, max_retries=0) as ex:
        pid = ex.worker_pids[0]
        fut = ex.submit(sleep_and_return, 5.0, "never")
        _wait_until_running_a_task(ex, pid)  # stopped after HELLO: its task is lost with it
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(WorkerLostError, match=r"stopped for [\d.]+ s \(SIGSTOP"):
                fut.result(timeout=30)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert ex.submit(abs, -2).result(timeout=30) == 2


SLOW_START = """
import os, time
if os.environ.get("SCOOPEXEC_TEST_START_SLEEP"):
    time.sleep(float(os.environ["SCOOPEXEC_TEST_START_SLEEP"]))  # before the worker can say HELLO
"""


@pytest.fixture
def slow_start(tmp_path):
    """env= for workers that sleep in a sitecustomize before they start (and so before HELLO)."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_START)
    return lambda seconds: {"PYTHONPATH": str(tmp_path), "SCOOPEXEC_TEST_START_SLEEP": str(seconds)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(90)
def test_a_worker_stopped_before_it_said_hello_is_killed_and_replaced(slow_start, caplog, monkeypatch):
    # It sleeps 3 s at start, so the SIGSTOP surely comes before its HELLO.  Started by command:
    # a worker forked from a template would have slept in the template and say HELLO at once.
    monkeypatch.setenv("SCOOPEXEC_WORKER_START", "spawn")
    caplog.set_level("WARNING", logger="scoopexec.broker")
    with ScoopExecutor(1, heartbeat=0.2, heartbeat_timeout=1.0, env=slow_start(3)) as ex:
        pid = ex.worker_pids[0]
        os.kill(pid, signal.SIGSTOP)
        try:
            fut = ex.submit(os.getpid)
            assert fut.result(timeout=60) != pid  # run by its replacement, not waited on forever
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    said = [r.getMessage() for r in caplog.records if r.name == "scoopexec.broker"]
    assert any(
        re.fullmatch(rf"worker process \S+ \(pid {pid}\) was stopped for [\d.]+ s before it said hello to "
                     r"the broker \(SIGSTOP or a debugger\) and was killed", m) for m in said
    ), said


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(90)
def test_workers_stuck_at_start_up_are_killed_and_the_pool_says_why(slow_start):
    with ScoopExecutor(1, env=slow_start(120)) as ex:  # (killed long before)
        ex._session.workers.local.start_timeout = 1.0  # (60 s by default) of no CPU used without HELLO
        fut = ex.submit(abs, -1)
        with pytest.raises(BrokenScoopExecutor) as info:
            fut.result(timeout=60)
    text = str(info.value)
    assert "no worker is left" in text, text
    assert re.search(r"did not say hello to the broker, and used no CPU for \d+ s, \d+ s after it "
                     r"started: it was killed \(stuck at start-up", text), text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="links are used on Linux")
@pytest.mark.timeout(60)
def test_worker_exits_when_its_link_closes():
    import subprocess

    a, b = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "worker", "--connect", "ipc:///nonexistent", "--link-fd",
         str(b.fileno())],
        pass_fds=(b.fileno(),),
        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    b.close()
    lk = link.Link(a)
    deadline = time.monotonic() + 30
    hello = []
    while not hello:
        assert time.monotonic() < deadline, "no HELLO over the link"
        hello = lk.receive(1)
        time.sleep(0.01)
    lk.close()
    assert proc.wait(30) == 3  # EXIT_LOST: its broker is gone


@pytest.mark.timeout(60)
def test_sending_to_a_closed_peer_raises_even_where_sigpipe_would_kill():
    import subprocess

    code = (
        "import signal, socket\n"
        "from scoopexec.wire import framing as link\n"
        "signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # what some command-line programs do\n"
        "a, b = socket.socketpair()\n"
        "lk = link.Link(a)\n"
        "b.close()\n"
        "try:\n"
        "    lk.send([b'x' * 100])\n"
        "except BrokenPipeError:\n"
        "    print('raised')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, PYTHONPATH=root), check=False)
    assert out.returncode == 0 and out.stdout.strip() == "raised", (out.returncode, out.stderr)


def _link_fd_inheritable():
    from scoopexec.worker.worker import current_worker

    return os.get_inheritable(current_worker().chan.fd)


@pytest.mark.timeout(60)
def test_programs_a_task_starts_do_not_inherit_the_link():
    # A long-lived grandchild holding the link open would hide its worker's death.
    with ScoopExecutor(1) as ex:
        assert ex.submit(_link_fd_inheritable).result(timeout=30) is False


def _close_my_link_and_linger():
    from scoopexec.worker.worker import current_worker

    # The link's descriptor now names a socket nobody writes to: the broker reads EOF, and this
    # process lives on.  (Closing it instead made this worker's own threads fail on it within
    # milliseconds and exit "lost its broker" first, on a busy machine: 6 runs of 12 failed.)
    quiet, keep = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    os.dup2(quiet.fileno(), current_worker().chan.fd)
    time.sleep(20)
    keep.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="links are used on Linux")
@pytest.mark.timeout(60)
def test_a_worker_that_closes_its_link_without_exiting_is_described_as_such():
    with ScoopExecutor(1, max_retries=0) as ex:
        with pytest.raises(WorkerLostError) as info:
            ex.submit(_close_my_link_and_linger).result(timeout=30)
        assert ex.submit(abs, -3).result(timeout=30) == 3
    text = str(info.value)
    assert "its connection closed, but its process had not exited 0.1 s later and was killed" in text, text
    assert "heartbeat" not in text, text


def test_links_handed_to_a_stopping_broker_are_closed():
    """A replacement worker started as the pool stops hands its link to the broker after the
    loop's last turn: the link sat in LinkPort.new, never closed (an unclosed-socket
    ResourceWarning, raised by the garbage collector in whatever test ran next), and its
    worker waited for the pool's own stop to end it.  Links added just before the loop's
    close and after it are both closed now: their workers see end of file."""
    ex = ScoopExecutor(1)
    broker = ex._session.broker
    port = broker.links
    ours_before, theirs_before = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours_after, theirs_after = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def last_turn() -> None:  # in the loop's thread, as LocalWorkers.replace() is in a tick
        broker.stop()
        port.add(ours_before)  # the loop ends after this turn: it registers this link no more

    try:
        assert ex.submit(int, 1).result(timeout=60) == 1
        broker.call_soon(last_turn).result(timeout=60)
        ex.shutdown(wait=True)
        port.add(ours_after)  # after the loop's end
        for sock in (ours_before, ours_after):
            assert sock.fileno() == -1, "a link given to the broker was left open"
        for theirs in (theirs_before, theirs_after):
            theirs.settimeout(10)
            while theirs.recv(1 << 16):  # (a STOP, if the loop took the link in before its end)
                pass  # then the worker's end sees end of file
    finally:
        ex.shutdown(wait=True)
        for sock in (ours_before, theirs_before, ours_after, theirs_after):
            sock.close()
