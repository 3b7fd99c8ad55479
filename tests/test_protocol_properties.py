"""Properties of the wire codec (scoopexec.wire.protocol), checked with Hypothesis.

* every message that ``pack`` can make is read back by ``unpack_header`` /
  ``entries`` as exactly what was packed;
* ``unpack_header`` of any bytes either accepts them (and then they are
  exactly the encoding of the type, count, arg and ``entries`` read from them)
  or raises ProtocolError (VersionMismatch is one) and nothing else: the broker
  drops such a message and goes on;
* ``load_json`` of any bytes returns a value or raises ProtocolError.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scoopexec import ProtocolError
from scoopexec.wire import protocol as P

# No per-example deadline: the machine is shared, and speed is not what these check.
SETTINGS = settings(deadline=None, max_examples=300)

U32 = st.integers(0, 2**32 - 1)

_FIELD = {
    "Q": st.integers(0, 2**64 - 1),
    "I": U32,
    "H": st.integers(0, 2**16 - 1),
    "B": st.integers(0, 2**8 - 1),
    "d": st.floats(allow_nan=False),
}


def _entry(layout: struct.Struct) -> st.SearchStrategy[tuple[object, ...]]:
    return st.tuples(*[_FIELD[c] for c in layout.format.lstrip("<")])


BATCH_TYPES = sorted(P.ENTRY_OF)
PLAIN_TYPES = sorted(set(P.TYPE_NAMES) - set(P.ENTRY_OF))


@st.composite
def batches(draw: st.DrawFn) -> tuple[int, list[tuple[object, ...]], int]:
    mtype = draw(st.sampled_from(BATCH_TYPES))
    ents = draw(st.lists(_entry(P.ENTRY_OF[mtype]), max_size=40))
    return mtype, ents, draw(U32)


@SETTINGS
@given(batches())
def test_every_batch_round_trips(batch):
    mtype, ents, arg = batch
    head = P.pack(mtype, ents, arg=arg)
    assert P.unpack_header(head) == (mtype, len(ents), arg)
    assert list(P.entries(mtype, head)) == ents


@SETTINGS
@given(st.sampled_from(PLAIN_TYPES), U32, U32)
def test_every_plain_header_round_trips(mtype, count, arg):
    # header() of a type without entries: the count is carried as it is (CREDIT, SETUP_DONE use it)
    count = min(count, P.MAX_ENTRIES)
    assert P.unpack_header(P.header(mtype, count, arg)) == (mtype, count, arg)


def _decodes_or_refuses(blob: bytes) -> None:
    """Accepted bytes are exactly the encoding of what was read from them; others raise ProtocolError."""
    try:
        mtype, count, arg = P.unpack_header(blob)
    except ProtocolError:
        return
    if mtype in P.ENTRY_OF:
        got = list(P.entries(mtype, blob))
        assert len(got) == count
        assert P.pack(mtype, got, arg=arg) == blob  # nothing before, between or after the entries
    else:
        assert P.header(mtype, count, arg) == blob  # no stray bytes after a plain header


@SETTINGS
@given(st.binary(max_size=200))
@example(b"")
@example(P.HEADER.pack(P.MAGIC, P.VERSION + 1, P.HELLO, 0, 0))
def test_arbitrary_bytes_decode_or_raise_protocol_error(blob):
    _decodes_or_refuses(blob)


@st.composite
def near_misses(draw: st.DrawFn) -> bytes:
    """A well-formed header with some of its fields and tail chosen at random."""
    mtype = draw(st.one_of(st.sampled_from(sorted(P.TYPE_NAMES)), st.integers(0, 255)))
    count = draw(st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1)))
    version = draw(st.one_of(st.just(P.VERSION), st.integers(0, 255)))
    magic = draw(st.one_of(st.just(P.MAGIC), st.binary(min_size=2, max_size=2)))
    layout = P.ENTRY_OF.get(mtype)
    size = count * layout.size if layout is not None and count <= 8 else 0
    tail = draw(st.one_of(st.binary(min_size=size, max_size=size), st.binary(max_size=120)))
    return P.HEADER.pack(magic, version, mtype, count, draw(U32)) + tail


@SETTINGS
@given(near_misses())
def test_near_miss_headers_decode_or_raise_protocol_error(blob):
    _decodes_or_refuses(blob)


@SETTINGS
@given(batches(), st.data())
def test_a_corrupted_batch_decodes_or_raises_protocol_error(batch, data):
    mtype, ents, arg = batch
    head = bytearray(P.pack(mtype, ents, arg=arg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(head) - 1))
        head[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(head)))
    _decodes_or_refuses(bytes(head[:cut]))
    _decodes_or_refuses(bytes(head))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(_JSON)
def test_json_control_frames_round_trip(value):
    assert P.load_json(P.dump_json(value)) == value


@SETTINGS
@given(st.binary(max_size=200))
@example(b"\xff{")
@example(b'{"a": ')
def test_json_of_arbitrary_bytes_loads_or_raises_protocol_error(blob):
    try:
        P.load_json(blob)
    except ProtocolError:
        pass


def test_deeply_nested_json_is_a_protocol_error():
    # A HELLO frame from any peer: RecursionError used to escape the broker's message handler.
    with pytest.raises(ProtocolError, match="nested too deeply"):
        P.load_json(b"[" * 100_000)
    with pytest.raises(ProtocolError, match="nested too deeply"):
        P.load_json(b"[" * 50_000 + b"]" * 50_000)  # valid JSON, which 3.14's json.loads parses


def test_json_nesting_bound_is_the_same_on_every_python():
    deepest = P.MAX_JSON_DEPTH
    assert P.load_json(b"[" * deepest + b"]" * deepest) is not None
    with pytest.raises(ProtocolError, match="nested too deeply"):
        P.load_json(b"{" * (deepest + 1))
    with pytest.raises(ProtocolError, match="nested too deeply"):
        P.load_json(b'{"a":' * (deepest + 1) + b"1" + b"}" * (deepest + 1))
    # brackets inside strings (escaped quotes included) are text, not nesting
    text = '\\"' + "[{" * deepest
    assert P.load_json(P.dump_json({"s": text, "t": [text]})) == {"s": text, "t": [text]}
