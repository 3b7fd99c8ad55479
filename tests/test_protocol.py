"""The wire format, without sockets."""

from __future__ import annotations

import pytest

from scoopexec import ProtocolError
from scoopexec.wire import protocol as P


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


# ------------------------------------------------------------ decode: shapes per kind
WELL_FORMED = [
    [P.header(P.HELLO), P.dump_json({"role": "worker"})],
    [P.header(P.HELLO), P.dump_json({"role": "client"}), b"{}", b""],  # a client's set-up frames
    [P.pack(P.SUBMIT, [(1, 0, 2), (2, 5, 3)]), b"f", b"a", b"f", b"a", b"buf"],
    [P.pack(P.TASKS, [(1, 1, 2, 0)]), b"f", b"a"],
    [P.pack(P.RESULT, [(1, 0, 1, 0.0, 0.0)], arg=2), b"r"],
    [P.pack(P.RESULTS, [(1, 1, 2)]), b"e", b"tb"],
    [P.pack(P.CANCEL, [(4,), (5,)])],
    [P.header(P.CREDIT, 0, 3)],
    [P.header(P.SETUP, 0, 1), b"{}", b""],
    [P.header(P.SETUP_DONE, 1, 1)],
    [P.header(P.SETUP_DONE, 0, 1), b"it failed"],
    [P.header(P.SETUP_DONE, 0, 1), b"it failed", b"main"],
    [P.pack(P.OUTPUT, [(1, 1), (0, 2)]), b"out", b"err"],
    [P.pack(P.LOG, [(0,)]), b"{}"],
    [P.header(P.STATUS_REPLY), P.dump_json({"pool": "x"})],
    [P.header(P.SHARE), b"name", b"value"],
    [P.header(P.ERROR), b"words"],
    [P.header(P.STOP)],
]


@pytest.mark.parametrize("frames", WELL_FORMED, ids=lambda f: P.TYPE_NAMES[P.unpack_header(f[0])[0]])
def test_decode_accepts_the_shape_of_each_kind(frames):
    msg = P.decode(frames)
    kind, count, arg = P.unpack_header(frames[0])
    assert (msg.kind, msg.count, msg.arg) == (kind, count, arg)
    assert len(msg.entries) == (count if kind in P.ENTRY_OF else 0)
    if P.SHAPES[kind].frames == P.COUNTED:
        assert [len(body) for _, body in msg.parts()] == [e[2] for e in msg.entries]
    if P.SHAPES[kind].frames == P.JSON:
        assert isinstance(msg.info, dict)


def test_parts_pairs_each_entry_with_its_own_frames():
    # One frame each (the usual RESULT: paired in C) or any other counts (sliced), the
    # same pairs; counts of 0 and 2 that add up to one per entry are not taken for that.
    for counts in ([1, 1, 1], [1], [0, 2, 1], [2, 0, 1], [3, 0, 0], [0, 0, 3]):
        frames = [bytes([i]) for i in range(sum(counts))]
        entries = [(i, 0, n) for i, n in enumerate(counts)]
        msg = P.decode([P.pack(P.RESULTS, entries), *frames])
        got = [(ent[0], list(body)) for ent, body in msg.parts()]
        want, pos = [], 0
        for i, n in enumerate(counts):
            want.append((i, frames[pos : pos + n]))
            pos += n
        assert got == want, counts


@pytest.mark.parametrize(
    "frames, words",
    [
        ([], "empty"),
        ([P.header(P.HELLO)], "JSON frame"),
        ([P.header(P.HELLO), b"[1, 2]"], "not an object"),
        ([P.header(P.HELLO), b"\xff"], "malformed JSON"),
        ([P.pack(P.SUBMIT, [(1, 0, 1)]), b"f"], "at least 2"),
        ([P.pack(P.SUBMIT, [(1, 0, 2)]), b"f"], "announce 2 payload frames"),
        ([P.pack(P.RESULT, [(1, 0, 1, 0.0, 0.0)]), b"r", b"extra"], "announce 1 payload frames"),
        ([P.header(P.CREDIT, 0, 1), b"junk"], "carries no frames"),
        ([P.pack(P.CANCEL, [(1,)]), b"junk"], "carries no frames"),
        ([P.pack(P.OUTPUT, [(1, 1), (1, 1)]), b"one"], "one frame per entry"),
        ([P.header(P.SHARE), b"name"], "name frame and a value"),
        ([P.header(P.SHARE), b"na\xefme", b"value"], "name is not UTF-8"),  # it ended the workers
        ([P.header(P.ERROR), b"a", b"b"], "at most 1 frame"),
        ([P.header(P.SETUP_DONE, 0, 1), b"a", b"main", b"c"], "at most 2 frame"),
        ([P.header(P.BROKEN), b"1"], "not an object"),
    ],
)
def test_decode_refuses_a_wrong_shape_naming_it(frames, words):
    with pytest.raises(ProtocolError, match=words):
        P.decode(frames)


def test_every_kind_has_a_shape_and_the_broker_knows_its_senders():
    assert set(P.SHAPES) == set(P.TYPE_NAMES)
    assert set(P.SENDERS) <= set(P.TYPE_NAMES)
    assert P.SENDERS[P.RESULT] == {P.WORKER} and P.SENDERS[P.SHARE] == {P.CLIENT}


@pytest.mark.parametrize(
    "blob, says",
    [
        (b"SX", "header of 2 bytes is shorter than 12"),
        (b"XX" + bytes(10), "not a scoopexec message (bad magic)"),
        (P.HEADER.pack(P.MAGIC, P.VERSION, 99, 0, 0), "unknown message type 99"),
        (
            P.HEADER.pack(P.MAGIC, P.VERSION, P.SUBMIT, P.MAX_ENTRIES + 1, 0),
            f"{P.MAX_ENTRIES + 1} entries exceeds the limit of {P.MAX_ENTRIES}",
        ),
        (P.header(P.SUBMIT, 1), "SUBMIT header is 12 bytes, expected 32 for 1 entries"),
    ],
)
def test_a_refused_header_says_what_is_wrong(blob, says):
    # the broker logs these texts for the message it dropped
    with pytest.raises(ProtocolError) as info:
        P.unpack_header(blob)
    assert str(info.value) == says


def test_a_version_mismatch_names_both_versions_and_the_fix():
    with pytest.raises(P.VersionMismatch) as info:
        P.unpack_header(P.HEADER.pack(P.MAGIC, P.VERSION + 1, P.HELLO, 0, 0))
    assert info.value.version == P.VERSION + 1
    assert str(info.value) == (
        f"peer speaks scoopexec protocol version {P.VERSION + 1}, this side speaks {P.VERSION}; "
        "install the same scoopexec version on every host"
    )


def test_a_frame_count_mismatch_says_both_counts():
    with pytest.raises(ProtocolError, match=r"^entries announce 5 payload frames, message has 4$"):
        P.check_frames([2, 3], 4)


def test_defaults_are_zero_and_json_is_compact():
    # what peers of the same version read: a header with count 0 and arg 0 unless given
    assert P.header(P.STOP) == P.HEADER.pack(P.MAGIC, P.VERSION, P.STOP, 0, 0)
    assert P.pack(P.CANCEL, [(5,)]) == P.HEADER.pack(P.MAGIC, P.VERSION, P.CANCEL, 1, 0) + P.ID_ENTRY.pack(5)
    assert P.pack(P.STOP) == P.header(P.STOP)
    assert P.dump_json({"a": [1, 2], "b": None}) == b'{"a":[1,2],"b":null}'
    with pytest.raises(ProtocolError, match=r"^malformed JSON control frame: "):
        P.load_json(b"{")


@pytest.mark.parametrize("mtype", [P.TASKS, P.RESULTS, P.SUBMIT, P.CANCEL])
@pytest.mark.parametrize("count", [1, 2, 7])
def test_entries_packed_flat_are_the_bytes_packed_one_by_one(mtype, count):
    # The broker packs a TASKS header from its entries laid one after the other (pack_flat): one
    # struct call per message.  A wrong field order or a lost byte order shows here.
    width = len(P.ENTRY_OF[mtype].format.lstrip("<"))
    ents = [tuple(7 * i + j + 1 for j in range(width)) for i in range(count)]  # (fit in a byte)
    flat = [v for e in ents for v in e]
    assert P.pack_flat(mtype, count, flat, arg=5) == P.pack(mtype, ents, arg=5)
    assert list(P.entries(mtype, P.pack_flat(mtype, count, flat))) == ents


def test_the_struct_of_a_huge_flat_pack_is_not_kept():
    # pack_flat keeps the struct of each (kind, count) it met; a worker granting huge credit made
    # the broker pack, and keep, a struct whose format holds one code per field of every entry.
    count = 5000
    flat = [1] * (count * len(P.ENTRY_OF[P.CANCEL].format.lstrip("<")))
    assert P.pack_flat(P.CANCEL, count, flat) == P.pack(P.CANCEL, [(1,)] * count)
    assert (P.CANCEL, count) not in P._FLAT
    P.pack_flat(P.CANCEL, 3, [1, 2, 3])
    assert (P.CANCEL, 3) in P._FLAT  # small ones are kept: the broker packs the same few often
