"""The wire format, without sockets."""

from __future__ import annotations

import pytest

from scoopexec import ProtocolError
from scoopexec import protocol as P


def test_round_trip_of_every_batch_layout():
    samples = {
        P.SUBMIT: [(1, 0, 2), (2, 7, 3)],
        P.TASKS: [(10, 1, 2, 0), (11, 1, 5, 3)],
        P.RESULT: [(10, 0, 1, 1.5, 0.25)],
        P.RESULTS: [(1, 1, 3)],
        P.CANCEL: [(5,), (6,)],
        P.STARTED: [(9,)],
        P.OUTPUT: [(3, 1)],
        P.LOG: [(0,)],
    }
    for mtype, ents in samples.items():
        head = P.pack(mtype, ents, arg=17)
        assert P.unpack_header(head) == (mtype, len(ents), 17)
        assert list(P.entries(mtype, head)) == ents


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"SX",
        b"XX" + bytes(10),
        P.header(P.SUBMIT, 1),  # announces an entry that is not there
        P.header(P.SUBMIT, 0) + b"junk",
        P.HEADER.pack(P.MAGIC, P.VERSION, 99, 0, 0),
        P.HEADER.pack(P.MAGIC, P.VERSION, P.SUBMIT, P.MAX_ENTRIES + 1, 0),
    ],
)
def test_malformed_headers_are_refused(blob):
    with pytest.raises(ProtocolError):
        P.unpack_header(blob)


def test_other_version_gets_a_clear_error():
    blob = P.HEADER.pack(P.MAGIC, P.VERSION + 1, P.HELLO, 0, 0)
    with pytest.raises(P.VersionMismatch, match="protocol version"):
        P.unpack_header(blob)


def test_frame_counts_must_match():
    P.check_frames([2, 3], 5)
    with pytest.raises(ProtocolError):
        P.check_frames([2, 3], 4)


def test_json_control_frames():
    assert P.load_json(P.dump_json({"a": [1, 2]})) == {"a": [1, 2]}
    with pytest.raises(ProtocolError):
        P.load_json(b"\xff{")
