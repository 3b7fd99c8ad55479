"""Bounded resources: the message-size limit on every socket and link, and what a broker holds."""

from __future__ import annotations

import socket
import struct
import sys
import time

import pytest
import zmq

from scoopexec import ScoopExecutor
from scoopexec.errors import ProtocolError
from scoopexec.wire import framing
from scoopexec.wire import protocol as P
from scoopexec.wire.validate import DEFAULT_MAX_MESSAGE_SIZE, frame_limit


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


def test_client_and_worker_sockets_have_the_limit():
    """The DEALERs of a remote client and of a worker refuse frames over the limit as well."""
    ctx = zmq.Context()
    try:
        s = framing.dealer(ctx, b"x", "tcp://127.0.0.1:1", linger=0, heartbeat=1.0, heartbeat_timeout=5.0,
                           keys=None, max_message_size=5000)  # fmt: skip
        assert s.getsockopt(zmq.MAXMSGSIZE) == frame_limit(5000)
        s.close()
    finally:
        ctx.term()
    with ScoopExecutor(1, bind="tcp://127.0.0.1:0") as ex:
        with ScoopExecutor(broker=ex.endpoint, max_message_size=123_456) as client:
            assert client._session.sock.getsockopt(zmq.MAXMSGSIZE) == frame_limit(123_456)
            assert client.submit(abs, -2).result(timeout=60) == 2
