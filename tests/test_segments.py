"""Large frames through shared memory on a local link (wire/segments.py).

Real socketpairs and real memfds in this process for the link's rules (a frame's first
size through the socket, a held frame never written over, releases, limits, expiry, what a
receiver refuses), then real pools for what a user sees: arrays that come back right
however long they are kept, by the client or by a task, and no descriptor left behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import subprocess
import sys
import time
import warnings

import psutil
import pytest

from scoopexec import ScoopExecutor
from scoopexec.errors import ProtocolError
from scoopexec.wire import framing, segments
from tests.helpers import link_pair, one_message

pytestmark = pytest.mark.skipif(not segments.available(), reason="segments need memfd and SCM_RIGHTS (Linux)")

MIB = 1 << 20


def _data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.timeout(60)
def test_a_size_sent_again_goes_through_a_segment_and_a_held_frame_is_never_written_over():
    with link_pair() as (a, b):
        first = one_message(a, b, [b"h", _data(2 * MIB, 1)])[1]
        assert isinstance(first, framing.BigFrame) and not isinstance(first, segments.SharedFrame)
        second = one_message(a, b, [b"h", _data(2 * MIB, 2)])[1]
        assert isinstance(second, segments.SharedFrame) and bytes(second) == _data(2 * MIB, 2)
        # b still holds `second`: the next frame of that size needs another segment
        third = one_message(a, b, [b"h", _data(2 * MIB, 3)])[1]
        assert isinstance(third, segments.SharedFrame) and third is not second
        assert bytes(second) == _data(2 * MIB, 2) and bytes(third) == _data(2 * MIB, 3)
        assert len(a.seg.own) == 2 and all(e[1] for e in a.seg.own.values())  # both lent
        del second
        b.seg._next_look = time.monotonic() + 60  # a small message looks at most every LOOK_EVERY:
        one_message(b, a, [b"reply"])  # not now ...
        assert sorted(e[1] for e in a.seg.own.values()) == [True, True]
        b.seg._next_look = 0.0
        one_message(b, a, [b"reply"])  # ... now: b no longer refers to it, and says so first
        assert sorted(e[1] for e in a.seg.own.values()) == [False, True]
        b.settle()  # (a worker about to wait, or the broker's tick, looks too: nothing more)
        assert a.receive() == []
        fourth = one_message(a, b, [b"h", _data(2 * MIB, 4)])[1]
        assert len(a.seg.own) == 2  # the released one, used again
        assert bytes(fourth) == _data(2 * MIB, 4) and bytes(third) == _data(2 * MIB, 3)
        assert (a.seg.sent_shared, b.seg.received_shared) == (3, 3)


@pytest.mark.timeout(60)
def test_only_a_link_that_carried_a_large_frame_reads_with_recvmsg():
    # recvmsg costs more than recv_into on every read: a link of small messages never pays it
    with link_pair() as (a, b):
        for _ in range(3):
            one_message(a, b, [b"small", b"x" * 5000])
            one_message(b, a, [b"small"])
        assert not (a.seg.expecting or b.seg.expecting or a.seg.announced or b.seg.announced)
        assert not (a._fds or b._fds)  # both read with recv_into
        one_message(a, b, [b"h", _data(MIB, 0)])
        assert b.seg.expecting and a.seg.announced and not a.seg.expecting
        assert b._fds and not a._fds


@pytest.mark.timeout(60)
def test_two_frames_of_one_new_size_in_one_message_arrive():
    # the second is of a size "sent before", but the first's EXPECT rides on this same message:
    # a descriptor sent with it would reach a reader still using recv_into, and be lost
    with link_pair() as (a, b):
        got = one_message(a, b, [_data(MIB, 0), _data(MIB, 1), b"t"])
        assert [bytes(f) for f in got] == [_data(MIB, 0), _data(MIB, 1), b"t"]
        got = one_message(a, b, [_data(MIB, 2), _data(MIB, 3)])
        assert [type(f) for f in got] == [segments.SharedFrame] * 2
        assert [bytes(f) for f in got] == [_data(MIB, 2), _data(MIB, 3)]


@pytest.mark.timeout(60)
def test_no_new_segment_while_the_message_announcing_them_waits_to_be_sent():
    # Its EXPECT is queued behind another message: a descriptor sent now would ride on bytes
    # before the note, which the receiver still reads with recv_into, and be lost.
    with link_pair() as (a, b):
        # more than the socket holds, in frames too small for segments (so no EXPECT): the rest
        # waits in a's queue
        first = [_data(MIB // 2, k) for k in range(16)]
        a.send(first)
        assert a.wants_write
        a.send([b"1", _data(MIB, 1)])  # a new size: EXPECT, queued
        a.send([b"2", _data(MIB, 2)])  # the same size again, still queued: not a new segment
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 3:
            a.flush()
            got += [[bytes(f) for f in m] for m in b.receive(10)]
            assert time.monotonic() < deadline and not b.eof
        assert got == [first, [b"1", _data(MIB, 1)], [b"2", _data(MIB, 2)]]
        third = one_message(a, b, [b"3", _data(MIB, 3)])  # now idle, announced: a segment
        assert isinstance(third[1], segments.SharedFrame) and bytes(third[1]) == _data(MIB, 3)


class _FailingOnce(socket.socket):
    """A real socket whose next sendmsg carrying descriptors fails as the kernel may (ENOBUFS),
    the one error a test cannot make the kernel give on demand."""

    fail = 0

    def sendmsg(self, buffers, ancdata=(), *args):  # type: ignore[override]
        if ancdata and self.fail:
            self.fail -= 1
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return super().sendmsg(buffers, ancdata, *args)


@pytest.mark.timeout(60)
def test_a_message_that_never_left_leaves_no_descriptor_or_lent_segment_behind():
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    failing = _FailingOnce(fileno=os.dup(a_sock.fileno()))
    a_sock.close()
    a, b = framing.Link(failing), framing.Link(b_sock)
    try:
        one_message(a, b, [_data(MIB, 0)])  # its size's first: the socket, EXPECT
        held = one_message(a, b, [_data(MIB, 1)])[0]  # a segment, held by b
        failing.fail = 1
        with pytest.raises(OSError, match="No buffer space"):
            a.send([b"lost", _data(MIB, 2)])  # a second segment made, its sendmsg fails
        assert a.seg.fds_out == [] and len(a.seg.own) == 1  # undone
        assert one_message(a, b, [b"small"]) == [b"small"]
        got = one_message(a, b, [_data(MIB, 3)])[0]
        assert isinstance(got, segments.SharedFrame) and bytes(got) == _data(MIB, 3)
        assert bytes(held) == _data(MIB, 1)
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(30)
def test_a_stray_descriptor_before_a_new_segment_is_skipped_by_its_inode():
    raw, lk = _raw_link()
    try:
        stray, real = _memfd(MIB, seal=True), _memfd(MIB, seal=True)
        os.pwrite(real, b"real", 0)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, stray.to_bytes(4, sys.byteorder))]
        raw.sendmsg([(1).to_bytes(4, "little") + (1).to_bytes(8, "little") + b"s"], anc)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, real.to_bytes(4, sys.byteorder))]
        raw.sendmsg([_descriptor_message(MIB, 1, 1, real)], anc)
        msgs = lk.receive() + lk.receive()  # (a read stops after bytes that bring descriptors)
        assert [bytes(m[0][:4]) for m in msgs] == [b"s", b"real"]
        assert not lk.seg.fds_in  # the stray closed, the real one mapped (and closed)
        os.close(stray)
        os.close(real)
    finally:
        raw.close()
        lk.close()


@pytest.mark.timeout(60)
def test_frames_held_by_the_receiver_beyond_the_limit_go_through_the_socket():
    with link_pair() as (a, b):
        kept = [one_message(a, b, [_data(MIB, i)])[0] for i in range(segments.KEEP + 3)]
        shared = [f for f in kept if isinstance(f, segments.SharedFrame)]
        assert len(shared) == segments.KEEP and len(a.seg.own) == segments.KEEP
        assert [bytes(f) for f in kept] == [_data(MIB, i) for i in range(segments.KEEP + 3)]


@pytest.mark.timeout(60)
def test_a_worker_like_settle_releases_and_idle_segments_are_forgotten_on_both_ends(monkeypatch):
    with link_pair() as (a, b):
        one_message(a, b, [_data(MIB, 0)])
        got = one_message(a, b, [_data(MIB, 1)])[0]
        assert isinstance(got, segments.SharedFrame)
        assert b.settle() == -1  # b owns nothing; `got` is still held: nothing to say
        assert not b.wants_write and b.seg.held
        del got
        b.settle()  # as a worker does before it waits
        assert a.receive() == [] and not a.seg.own[1][1]  # the note arrived: free again
        monkeypatch.setattr(segments, "IDLE_SECONDS", 0.0)
        assert a.settle() == -1  # free too long: closed, and b told
        assert not a.seg.own
        assert b.receive() == [] and not b.seg.peer


@pytest.mark.timeout(60)
def test_many_messages_both_ways_with_frames_kept_at_random_arrive_intact():
    rnd = random.Random(7)
    sizes = [MIB, MIB + 4096, 3 * MIB]
    with link_pair() as (a, b):
        kept = {id(a): [], id(b): []}  # (frame, the bytes it must hold)
        for i in range(120):
            src, dst = (a, b) if rnd.random() < 0.5 else (b, a)
            data = _data(rnd.choice(sizes), i)
            msg = one_message(src, dst, [b"%d" % i, data, b"t"])
            assert bytes(msg[1]) == data and bytes(msg[0]) == b"%d" % i
            mine = kept[id(dst)]
            mine.append((msg[1], data))
            del msg
            rnd.shuffle(mine)
            del mine[rnd.randrange(0, 4) :]  # keep 0-3 frames, drop the rest
            for frame, want in kept[id(a)] + kept[id(b)]:
                assert bytes(frame) == want  # never written over while held
        assert a.seg.sent_shared + b.seg.sent_shared > 40
        for s in (a.seg, b.seg):
            assert len(s.own) <= segments.KEEP and len(s.peer) <= segments.PEER_SEGMENTS


def _raw_link():
    """A link, and a raw socket as its other end, which has said EXPECT (descriptors may come)."""
    raw, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    lk = framing.Link(other)
    raw.sendall(segments.NOTE.pack(0, segments.EXPECT, 0))
    assert lk.receive() == [] and lk.seg.expecting
    return raw, lk


def _descriptor_message(size: int, sid: int, fresh: int, fd: int = -1) -> bytes:
    word = (segments.SHARED | size).to_bytes(8, "little")
    inode = os.fstat(fd).st_ino if fd >= 0 else 0
    return (1).to_bytes(4, "little") + word + segments.DESCRIPTOR.pack(sid, fresh, inode)


def _memfd(size: int, seal: bool) -> int:
    fd = os.memfd_create("t", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "case, match",
    [
        ("unknown", "not known"),
        ("no descriptor", "without its descriptor"),
        ("unsealed", "not sealed"),
        ("wrong size", "holds"),
        ("release unlent", "not lent"),
        ("forget held", "forgotten while not free"),
    ],
)
def test_a_receiver_refuses_what_its_peer_could_not_have_sent(case, match):
    raw, lk = _raw_link()
    try:
        if case == "unknown":
            raw.sendall(_descriptor_message(MIB, 5, 0))
        elif case == "no descriptor":
            raw.sendall(_descriptor_message(MIB, 5, 1))
        elif case in ("unsealed", "wrong size"):
            fd = _memfd(MIB if case == "unsealed" else 2 * MIB, seal=case == "wrong size")
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))]
            raw.sendmsg([_descriptor_message(MIB, 1, 1, fd)], anc)
            os.close(fd)
        elif case == "release unlent":
            raw.sendall(segments.NOTE.pack(0, segments.RELEASE, 1) + (3).to_bytes(4, "little"))
        else:
            fd = _memfd(MIB, seal=True)
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))]
            raw.sendmsg([_descriptor_message(MIB, 1, 1, fd)], anc)
            os.close(fd)
            (_held,) = lk.receive(1)[0]
            raw.sendall(segments.NOTE.pack(0, segments.FORGET, 1) + (1).to_bytes(4, "little"))
        with pytest.raises(ProtocolError, match=match):
            lk.receive()
    finally:
        raw.close()
        lk.close()


@pytest.mark.timeout(30)
def test_a_sender_over_the_process_limit_sends_through_the_socket(monkeypatch):
    monkeypatch.setattr(segments, "PROCESS_SEGMENTS", segments._BUDGET.segments + 1)
    with link_pair() as (a, b):
        got = [one_message(a, b, [_data(MIB, i)])[0] for i in range(4)]
        assert [type(f) is segments.SharedFrame for f in got] == [False, True, False, False]
        assert [bytes(f) for f in got] == [_data(MIB, i) for i in range(4)]
    assert segments._BUDGET.segments == 0 or segments._BUDGET.segments < segments.PROCESS_SEGMENTS


# ------------------------------------------------------------------ pools


def keep(a, store=[]):  # noqa: B006 - the worker's module-level list: it keeps the argument
    store.append(a)
    return float(a[-1])


def echo(a):
    return a


@pytest.mark.timeout(120)
def test_arrays_kept_by_the_client_and_by_tasks_stay_right():
    np = pytest.importorskip("numpy")
    n = 2 * MIB // 8
    proc = psutil.Process()
    with ScoopExecutor(2) as ex:
        fds = proc.num_fds()
        out = []
        for i in range(12):  # the client keeps every result: each a segment of its own, or a frame
            out.append(ex.submit(echo, np.full(n, float(i))).result())
        for i, r in enumerate(out):
            assert r.shape == (n,) and r[0] == i and r[-1] == i
        r = out[3]
        r[:] = -1.0  # writable, and nobody else's
        assert all(o[-1] == i for i, o in enumerate(out) if i != 3)
        del out, r
        # tasks that keep their argument: the client's segments stay lent, later ones are others
        kept = [ex.submit(keep, np.full(n, float(i))).result() for i in range(10)]
        assert kept == [float(i) for i in range(10)]
        for i in range(6):
            a = np.full(n, float(i) + 0.5)
            assert ex.submit(echo, a).result()[-1] == float(i) + 0.5
        links = ex._session.broker.links.links.values()
        assert sum(lk.seg.sent_shared for lk in links) > 0 and sum(lk.seg.received_shared for lk in links) > 0
        # each end owns at most KEEP per link: the client maps at most that many of each worker's
        assert proc.num_fds() <= fds + 2 * 2 * segments.FDS_PER_LINK + 2
    assert segments._BUDGET.segments == 0


def relay(n, i):
    import numpy as np

    from scoopexec import submit

    return submit(echo, np.full(n, float(i))).result()[-1]


@pytest.mark.timeout(120)
def test_a_worker_killed_while_holding_a_segment_costs_a_retry_and_sub_tasks_relay_arrays():
    np = pytest.importorskip("numpy")
    n = 2 * MIB // 8
    with ScoopExecutor(1) as ex:
        for i in range(4):
            assert ex.submit(echo, np.full(n, float(i))).result()[-1] == i
        assert [ex.submit(relay, n, i).result() for i in range(4)] == [0.0, 1.0, 2.0, 3.0]
        for i in range(3):  # the worker keeps these: the client's segments stay lent to it
            assert ex.submit(keep, np.full(n, float(i))).result() == i
        (link,) = ex._session.broker.links.links.values()
        assert any(e[1] for e in link.seg.own.values())
        victim = ex.submit(os.getpid).result()
        os.kill(victim, 9)
        for i in range(6):  # on its replacement, through new segments
            assert ex.submit(echo, np.full(n, float(i))).result()[-1] == i
        (link,) = ex._session.broker.links.links.values()
        assert link.seg.sent_shared > 0


@pytest.mark.timeout(30)
def test_an_end_told_not_to_send_through_segments_still_takes_them(monkeypatch):
    a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    monkeypatch.setenv("SCOOPEXEC_SHARED_FRAMES", "0")
    a = framing.Link(a_sock)  # as a worker started with the variable set would
    monkeypatch.delenv("SCOOPEXEC_SHARED_FRAMES")
    b = framing.Link(b_sock)
    try:
        for _ in range(3):
            assert type(one_message(a, b, [_data(MIB, 0)])[0]) is framing.BigFrame
        got = [one_message(b, a, [_data(MIB, i)])[0] for i in range(3)]
        assert [type(f) for f in got] == [framing.BigFrame, segments.SharedFrame, segments.SharedFrame]
        assert [bytes(f) for f in got] == [_data(MIB, i) for i in range(3)]
    finally:
        a.close()
        b.close()


def test_the_reader_sees_expect_before_any_descriptor_can_reach_it():
    # (segments.py, "Reading with recvmsg"): the read that takes the EXPECT note takes at most
    # READ_SIZE bytes, and at least one frame of SHARED_FROM bytes follows the note
    assert segments.SHARED_FROM > framing.READ_SIZE
    assert segments.SHARED >= 1 << 63 and segments.SHARED_FROM >= framing.BIG


def _child_reads_after(box: list, parent_work) -> float:
    """Fork; the child waits for the parent's `parent_work()` (which empties `box` in the parent),
    then reports box[0][0], as the fork left it, and exits."""
    rd, wr = os.pipe()
    out_r, out_w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (3.12+: a fork with threads running)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(wr)
            os.read(rd, 1)
            os.write(out_w, repr(float(box[0][0])).encode())
        finally:
            os._exit(0)
    os.close(rd)
    os.close(out_w)
    try:
        parent_work()
        os.write(wr, b"x")
        return float(os.read(out_r, 100))
    finally:
        os.close(wr)
        os.close(out_r)
        os.waitpid(pid, 0)


@pytest.mark.timeout(120)
def test_an_array_held_when_the_process_forks_stays_right_in_the_child():
    # The child shares the segment's pages (not copy-on-write): had the parent handed it back,
    # the worker would have written the next arrays into the child's.
    np = pytest.importorskip("numpy")
    n = 2 * MIB // 8
    with ScoopExecutor(1) as ex:
        box = [ex.submit(echo, np.full(n, float(i))).result() for i in range(3)][-1:]
        (link,) = ex._session.broker.links.links.values()
        assert link.seg.held

        def more():
            box.clear()  # the parent's last reference: its segment could go back now
            recent = []  # two results kept at a time: the worker needs each of its segments
            for k in range(12):
                recent.append(ex.submit(echo, np.full(n, 100.0 + k)).result())
                assert recent[-1][-1] == 100.0 + k
                del recent[:-2]
                link.settle()

        assert _child_reads_after(box, more) == 2.0


EMFILE_SCRIPT = """
import os, resource, numpy as np
from scoopexec import ScoopExecutor
n = (2 << 20) // 8
def echo(a):
    return a
if __name__ == "__main__":
    with ScoopExecutor(1) as ex:
        ex.submit(echo, 1).result()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        filler = []
        try:
            while True:
                filler.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        for fd in filler[-3:]:
            os.close(fd)
        del filler[-3:]
        kept = [ex.submit(echo, np.full(n, float(i))).result(timeout=30) for i in range(8)]
        print([float(k[0]) for k in kept])
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        print(ex.submit(echo, 5).result(timeout=30))
"""


@pytest.mark.timeout(120)
def test_a_client_out_of_descriptors_copies_instead_of_mapping(tmp_path):
    # Results the client keeps, each in a new segment of its worker's, while it has 3
    # descriptors to spare: before 3.13 each mapping holds one, so some cannot be mapped;
    # those are copied and the worker makes no more (REFUSE), and nothing is lost.
    pytest.importorskip("numpy")
    script = tmp_path / "emfile.py"
    script.write_text(EMFILE_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100, env=env,
                       check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split("\n")[:2] == [str([float(i) for i in range(8)]), "5"]


def _large_function(k: int):
    data = bytes([k]) * (2 * MIB)

    def f(x):
        return data[0] + data[-1] + x

    return f


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore::scoopexec.errors.LargeFunctionWarning")
def test_a_large_function_the_worker_keeps_does_not_keep_a_segment_lent():
    # A function pickled by value and sent again is kept by the worker (wire/fnframes.py): one
    # that came through a segment is copied, and the segment goes back to the client.
    with ScoopExecutor(1) as ex:
        for k in (1, 2, 3):
            fn = _large_function(k)
            assert [ex.submit(fn, 1).result() for _ in range(3)] == [2 * k + 1] * 3
        (link,) = ex._session.broker.links.links.values()
        assert link.seg.sent_shared > 0
        deadline = time.monotonic() + 20
        while any(e[1] for e in link.seg.own.values()):  # the worker's settle brings them back
            assert time.monotonic() < deadline, {k: e[1] for k, e in link.seg.own.items()}
            time.sleep(0.05)


def sleep_then_first(a):
    time.sleep(0.02)
    return float(a[0])


def sleep_then_array(i):
    import numpy as np

    time.sleep(0.02)
    return np.full(2 * MIB // 8, float(i))


@pytest.mark.timeout(120)
def test_segments_go_back_when_only_one_end_sends_large_frames():
    # A map of large arguments with small results, and the other way round: the end that
    # receives them hands segments back with its small messages (at most every LOOK_EVERY)
    # and before it waits, so that most of them are used again. (Before, 8 and 19 of 40.)
    np = pytest.importorskip("numpy")
    n = 2 * MIB // 8
    with ScoopExecutor(2) as ex:
        args = [np.full(n, float(i)) for i in range(40)]
        assert list(ex.map(sleep_then_first, args)) == list(map(float, range(40)))
        links = list(ex._session.broker.links.links.values())
        sent = sum(lk.seg.sent_shared for lk in links)
        assert [r[-1] for r in ex.map(sleep_then_array, range(40))] == list(map(float, range(40)))
        received = sum(lk.seg.received_shared for lk in links)
    assert sent >= 26 and received >= 26, (sent, received)  # of 40; 38 when every one could


@pytest.mark.timeout(60)
def test_a_message_interrupted_after_the_kernel_took_it_keeps_its_segment_lent():
    # A signal's KeyboardInterrupt is raised at the next call after sendmsg returned: here,
    # the first call that follows it on this path, the segments' commit(), raises it once.
    with link_pair() as (a, b):
        one_message(a, b, [_data(MIB, 0)])
        first = one_message(a, b, [_data(MIB, 1)])[0]
        del first
        b.settle()
        assert a.receive() == [] and not any(e[1] for e in a.seg.own.values())  # free again
        real = a.seg.commit

        def interrupted() -> None:
            del a.seg.commit  # (once)
            raise KeyboardInterrupt

        a.seg.commit = interrupted
        with pytest.raises(KeyboardInterrupt):
            a.send([_data(MIB, 2)])  # the free segment again: sent, then interrupted
        assert a.seg.commit == real
        deadline = time.monotonic() + 30
        got = []
        while not got:
            got = b.receive(1)
            assert time.monotonic() < deadline
        held = got[0][0]
        assert bytes(held) == _data(MIB, 2)
        after = one_message(a, b, [_data(MIB, 3)])[0]  # not into the segment b holds
        assert bytes(after) == _data(MIB, 3) and bytes(held) == _data(MIB, 2)
