"""Resumable maps (journal=PATH): the file format, its damage cases, keys, and maps resumed.

The process-kill cases (a real client SIGKILLed at several points, one of them in the
middle of writing a record) are in test_journal_kill.py.
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import zlib

import pytest

import scoopexec
from scoopexec import JournalError, ScoopExecutor
from scoopexec import journal as J
from scoopexec.worker.worker import current_worker
from tests.conftest import ROOT, run_script

KEY_A = b"A" * 16
KEY_B = b"B" * 16
KEY_C = b"C" * 16


def _write(path, records):
    j = J.Journal(path)
    for key, value in records:
        j.append(key, J._result_bytes(value))
    j.close()


def _boundaries(path):
    """Offsets where records start (and the end), read with the format's own layout."""
    data = path.read_bytes()
    off, out = J.HEADER_SIZE, [J.HEADER_SIZE]
    while off < len(data):
        (plen,) = struct.unpack_from("<Q", data, off)
        off += J.RECORD_HEADER + plen
        out.append(off)
    return out


def test_records_round_trip_and_survive_reopening(tmp_path):
    path = tmp_path / "j"
    _write(path, [(KEY_A, 1), (KEY_B, {"x": [1, 2]})])
    j = J.Journal(path)
    try:
        assert j.records == 2 and KEY_A in j and KEY_C not in j
        assert j.get(KEY_A) == 1 and j.get(KEY_B) == {"x": [1, 2]}
        j.append(KEY_C, J._result_bytes("three"))
    finally:
        j.close()
    assert dict(J.entries(path)) == {KEY_A: 1, KEY_B: {"x": [1, 2]}, KEY_C: "three"}


def test_a_torn_last_record_is_ignored_and_cut_at_every_offset(tmp_path, caplog):
    path = tmp_path / "j"
    _write(path, [(KEY_A, "first"), (KEY_B, "second" * 50)])
    whole = path.read_bytes()
    start, end = _boundaries(path)[1:3]
    assert end == len(whole)
    for cut in range(start + 1, end):  # every byte of the last record's header and payload
        path.write_bytes(whole[:cut])
        with caplog.at_level(logging.WARNING, "scoopexec"):
            j = J.Journal(path)
        try:
            assert j.records == 1 and j.get(KEY_A) == "first" and KEY_B not in j
        finally:
            j.close()
        assert os.path.getsize(path) == start, cut  # cut back to the last whole record
        assert f"incomplete last record at byte {start}" in caplog.text
        caplog.clear()
    # and appending after the cut gives a whole journal
    _write(path, [(KEY_C, 3)])
    assert dict(J.entries(path)) == {KEY_A: "first", KEY_C: 3}


def test_a_torn_header_of_a_new_journal_starts_it_again(tmp_path):
    path = tmp_path / "j"
    J.Journal(path).close()
    header = path.read_bytes()
    for cut in range(len(header)):
        path.write_bytes(header[:cut])
        J.Journal(path).close()
        assert path.read_bytes() == header


def test_zeros_after_a_machine_crash_are_a_torn_tail(tmp_path):
    path = tmp_path / "j"
    _write(path, [(KEY_A, 1)])
    size = os.path.getsize(path)
    with open(path, "ab") as fh:
        fh.write(b"\0" * 4096)  # the file grew, its data never reached the disk
    j = J.Journal(path)
    j.close()
    assert j.records == 1 and os.path.getsize(path) == size


def test_a_last_record_with_a_bad_payload_checksum_is_a_torn_tail(tmp_path):
    path = tmp_path / "j"
    _write(path, [(KEY_A, 1), (KEY_B, "payload")])
    start = _boundaries(path)[1]
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    j = J.Journal(path)
    j.close()
    assert j.records == 1 and os.path.getsize(path) == start


@pytest.mark.parametrize("where", ["header", "payload", "length"])
def test_a_damaged_record_in_the_middle_fails_naming_file_record_and_offset(tmp_path, where):
    path = tmp_path / "j"
    _write(path, [(KEY_A, "a" * 40), (KEY_B, "b" * 40), (KEY_C, "c" * 40)])
    bounds = _boundaries(path)
    second = bounds[1]
    data = bytearray(path.read_bytes())
    pos = {"header": second + 20, "payload": second + J.RECORD_HEADER + 5, "length": second + 2}[where]
    data[pos] ^= 0x40
    path.write_bytes(bytes(data))
    before = bytes(data)
    with pytest.raises(JournalError) as info:
        J.Journal(path)
    text = str(info.value)
    assert str(path) in text and "record 1" in text and f"byte {second}" in text, text
    assert path.read_bytes() == before  # nothing cut, nothing rewritten


def test_bad_headers_fail_clearly(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(b"hello, this is not a journal at all\n")
    with pytest.raises(JournalError, match="not a scoopexec journal") as info:
        J.Journal(path)
    assert str(path) in str(info.value)
    head = struct.pack("<8sI", J.MAGIC, 99)
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)))
    with pytest.raises(JournalError, match="format version 99; this scoopexec reads version 1"):
        J.Journal(path)
    head = struct.pack("<8sI", J.MAGIC, 1)
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head) ^ 1))
    with pytest.raises(JournalError, match="damaged header"):
        J.Journal(path)
    path.write_bytes(b"XY")
    with pytest.raises(JournalError, match="not a scoopexec journal"):
        J.Journal(path)


def test_one_map_at_a_time_per_journal(tmp_path):
    path = tmp_path / "j"
    j = J.Journal(path)
    try:
        with pytest.raises(JournalError, match="in use by another map"):
            J.Journal(path)
        code = f"""
            from scoopexec import journal
            try:
                journal.Journal({str(path)!r})
            except Exception as exc:
                print(type(exc).__name__, exc)
        """
        out = run_script(code).stdout.decode()
        assert "JournalError" in out and "in use" in out, out
    finally:
        j.close()
    J.Journal(path).close()  # free again


# ------------------------------------------------------------------ identities
def _identity_in_a_process(tmp_path, body, hashseed):
    script = tmp_path / "ident.py"
    script.write_text(
        "import dataclasses\n"
        "from scoopexec import journal\n"
        "@dataclasses.dataclass\n"
        "class Params:\n"
        "    a: int\n"
        "LIMITS = {'lo': 1, 'hi': 2}\n"
        "def helper(x):\n"
        "    return x + 1\n"
        f"{body}\n"
        "if __name__ == '__main__':\n"
        "    print(journal.function_identity(f).hex(),\n"
        "          journal.item_key(journal.function_identity(f), b'', (Params(3), {'k', 'v'})).hex())\n"
    )
    env = dict(os.environ, PYTHONHASHSEED=str(hashseed), PYTHONPATH=ROOT)
    argv = [sys.executable, str(script)]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


BODY = (
    "def f(p, tags):\n"
    "    if p.a in {'x', 'y', 'z'}:\n"  # a frozenset constant: its order follows the hash seed
    "        return None\n"
    "    return helper(p.a) * LIMITS['hi'], sorted(tags)\n"
)


def test_function_identity_is_the_same_in_every_process_and_changes_with_the_code(tmp_path):
    first = _identity_in_a_process(tmp_path, BODY, 1)
    assert _identity_in_a_process(tmp_path, BODY, 2)[0] == first[0]
    assert _identity_in_a_process(tmp_path, "\n\n# moved down\n" + BODY, 3)[0] == first[0]  # lines moved
    changed = BODY.replace("* LIMITS['hi']", "* LIMITS['lo']")
    assert _identity_in_a_process(tmp_path, changed, 1)[0] != first[0]
    helper_changed = BODY + "def helper(x):\n    return x + 2\n"
    assert _identity_in_a_process(tmp_path, helper_changed, 1)[0] != first[0]  # a helper of the script


def test_importable_functions_are_known_by_name_and_bytecode():
    from tests import journal_helpers as jh

    assert J.function_identity(jh.square) == J.function_identity(jh.square)
    assert J.function_identity(jh.square) != J.function_identity(jh.cube)
    twin = type(jh.square)(jh.cube.__code__, jh.square.__globals__, "square")
    twin.__qualname__ = "square"
    assert J.function_identity(twin) != J.function_identity(jh.square)  # same name, other code


def test_a_function_holding_the_random_modules_generator_keeps_its_identity_across_draws():
    # partial(random.uniform, ...) (a DEAP ephemeral constant) pickled the generator's state,
    # which every draw changes: a journaled run saw a new function at every generation.
    import functools
    import random

    import numpy as np

    for fn in (functools.partial(random.uniform, -1.0, 1.0), np.random.random):
        before = J.function_identity(fn)
        random.random(), np.random.random()
        assert J.function_identity(fn) == before
    other = random.Random(3)  # any other generator is its state
    before = J.function_identity(other.random)
    other.random()
    assert J.function_identity(other.random) != before


# ------------------------------------------------------------------ maps resumed
@pytest.fixture
def pool():
    with ScoopExecutor(max_workers=2) as ex:
        yield ex


def _runs(d, before=()):
    """The items that ran (one file each time), leaving out the files listed in ``before``."""
    return sorted(int(float(name.split("-")[0])) for name in set(os.listdir(d)) - set(before))


@pytest.mark.parametrize(
    "options", [{}, {"chunksize": 3}, {"buffersize": 2}, {"chunksize": 4, "buffersize": 1}]
)
def test_a_map_run_again_runs_only_the_items_without_a_record(tmp_path, pool, options):
    from tests import journal_helpers as jh

    path, d = tmp_path / "j", tmp_path / "runs"
    d.mkdir()
    done = [0, 1, 2, 5, 8, 9, 13]
    assert list(pool.map(jh.counted, done, [str(d)] * len(done), journal=path, **options)) == [
        x * x for x in done
    ]
    assert _runs(d) == done
    xs = list(range(15))
    before = os.listdir(d)
    out = list(pool.map(jh.counted, xs, [str(d)] * 15, journal=path, **options))
    assert out == [x * x for x in xs]
    assert _runs(d, before) == [x for x in xs if x not in done]
    # everything recorded now: nothing runs, results still in order
    before = os.listdir(d)
    assert list(pool.map(jh.counted, xs, [str(d)] * 15, journal=path, **options)) == [x * x for x in xs]
    assert _runs(d, before) == []


def test_unordered_maps_resume_too(tmp_path, pool):
    from tests import journal_helpers as jh

    path, d = tmp_path / "j", tmp_path / "r"
    d.mkdir()
    list(pool.map(jh.counted, [3, 4], [str(d)] * 2, journal=path))
    before = os.listdir(d)
    out = list(pool.map(jh.counted, range(8), [str(d)] * 8, journal=path, unordered=True))
    assert sorted(out) == [x * x for x in range(8)]
    assert _runs(d, before) == [0, 1, 2, 5, 6, 7]


def test_a_changed_function_item_or_seed_never_reuses_a_record(tmp_path, pool):
    from tests import journal_helpers as jh

    path, d = tmp_path / "j", tmp_path / "r"
    d.mkdir()
    assert list(pool.map(jh.counted, [1, 2, 3], [str(d)] * 3, journal=path)) == [1, 4, 9]
    # another function, same items: computed
    assert list(pool.map(jh.counted_cube, [1, 2, 3], [str(d)] * 3, journal=path)) == [1, 8, 27]
    assert _runs(d) == [1, 1, 2, 2, 3, 3]
    # an item changed (2 -> 2.0 pickles differently): only it runs
    assert list(pool.map(jh.counted, [1, 2.0, 3], [str(d)] * 3, journal=path)) == [1, 4.0, 9]
    assert _runs(d) == [1, 1, 2, 2, 2, 3, 3]
    # seeded: other records (the seed and the index are part of the key)
    assert list(pool.map(jh.counted, [1, 2], [str(d)] * 2, journal=path, seed=1)) == [1, 4]
    assert list(pool.map(jh.counted, [1, 2], [str(d)] * 2, journal=path, seed=1)) == [1, 4]
    assert list(pool.map(jh.counted, [1, 2], [str(d)] * 2, journal=path, seed=2)) == [1, 4]
    assert _runs(d) == [1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3]


def test_an_item_that_raised_is_not_recorded_and_runs_again(tmp_path, pool):
    from tests import journal_helpers as jh

    path, d = tmp_path / "j", tmp_path / "r"
    d.mkdir()
    it = pool.map(jh.counted_fails_on_3, range(6), [str(d)] * 6, journal=path, chunksize=2)
    assert [next(it) for _ in range(3)] == [0, 1, 4]
    with pytest.raises(ValueError, match="three"):
        next(it)
    # Recorded: what arrived before the map stopped at item 3 -- items 0 to 2 at least (the
    # chunk [2, 3] kept item 2), maybe 4 and 5; never 3.
    recorded = {int(v**0.5) for _, v in J.entries(path)}
    assert {0, 1, 2} <= recorded <= {0, 1, 2, 4, 5}
    before = os.listdir(d)
    with pytest.raises(ValueError, match="three"):
        list(pool.map(jh.counted_fails_on_3, range(6), [str(d)] * 6, journal=path, chunksize=2))
    ran = _runs(d, before)  # 4 and 5, if not recorded, may or may not have started by now
    assert 3 in ran and set(ran) <= {3, 4, 5} - recorded, (ran, recorded)


class OnlyPicklesOnAWorker:
    """Arrives in the client fine, but cannot be pickled again there."""

    def __reduce__(self):
        if current_worker() is None:
            raise TypeError("this object stays where it is")
        return (OnlyPicklesOnAWorker, ())


def make_unrecordable(x):
    return OnlyPicklesOnAWorker() if x == 2 else x


def test_a_result_that_cannot_be_recorded_fails_clearly(tmp_path, pool):
    path = tmp_path / "j"
    it = pool.map(make_unrecordable, range(4), journal=path)
    assert next(it) == 0 and next(it) == 1
    with pytest.raises(JournalError) as info:
        next(it)
    text = str(info.value)
    assert "OnlyPicklesOnAWorker" in text and str(path) in text and "stays where it is" in text, text


def test_a_damaged_journal_fails_the_map_before_anything_runs(tmp_path, pool):
    from tests import journal_helpers as jh

    path, d = tmp_path / "j", tmp_path / "r"
    d.mkdir()
    list(pool.map(jh.counted, range(4), [str(d)] * 4, journal=path))
    second = _boundaries(path)[1]
    data = bytearray(path.read_bytes())
    data[second + J.RECORD_HEADER + 1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match=f"record 1 \\(byte {second}\\)"):
        pool.map(jh.counted, range(4), [str(d)] * 4, journal=path)
    assert _runs(d) == [0, 1, 2, 3]  # nothing ran again


def test_scoop_map_takes_journal_and_seed(tmp_path, pool):
    from scoopexec import scoop_map
    from tests import journal_helpers as jh

    path, d = tmp_path / "j", tmp_path / "r"
    d.mkdir()
    first = scoop_map(jh.draw, range(6), journal=path, seed=7)
    assert scoop_map(jh.draw, range(6), journal=path, seed=7) == first
    assert len(list(J.entries(path))) == 6
    assert scoop_map(jh.draw, range(6), seed=7) == first  # the same values, computed
    assert scoop_map(jh.draw, range(6), seed=8) != first
    assert list(scoopexec.futures.map(jh.draw, range(6), seed=7)) == first


# ------------------------------------------------------------------ the index file
def test_the_index_file_is_used_only_while_it_matches_the_journal(tmp_path, caplog):
    path, idx = tmp_path / "j", tmp_path / "j.idx"
    _write(path, [(KEY_A, 1), (KEY_B, 2)])
    assert idx.exists()
    j = J.Journal(path)
    try:
        assert j._indexed == os.path.getsize(path) and j.records == 2 and j.get(KEY_B) == 2
        j.append(KEY_C, J._result_bytes(3))
    finally:
        j.close()
    # records appended after the index was written are walked on top of it
    stale = idx.read_bytes()
    _write(path, [(b"D" * 16, 4)])
    idx.write_bytes(stale)  # an index that covers only the first three records
    j = J.Journal(path)
    try:
        assert j.records == 4 and {j.get(k) for k in (KEY_A, KEY_B, KEY_C, b"D" * 16)} == {1, 2, 3, 4}
    finally:
        j.close()
    # a damaged index, or one of another journal, is ignored: the journal is walked
    data = bytearray(idx.read_bytes())
    data[40] ^= 1
    idx.write_bytes(bytes(data))
    assert dict(J.entries(path)) == {KEY_A: 1, KEY_B: 2, KEY_C: 3, b"D" * 16: 4}
    other = tmp_path / "other"
    _write(other, [(KEY_A, "other")])
    idx.write_bytes((tmp_path / "other.idx").read_bytes())
    assert dict(J.entries(path)) == {KEY_A: 1, KEY_B: 2, KEY_C: 3, b"D" * 16: 4}
    # and a journal cut back below what the index covers is walked too
    first_two = _boundaries(path)[2]
    path.write_bytes(path.read_bytes()[:first_two])
    assert dict(J.entries(path)) == {KEY_A: 1, KEY_B: 2}


def test_an_item_that_cannot_be_pickled_fails_as_without_a_journal(tmp_path, pool):
    import threading

    from scoopexec import SerializationError
    from tests import journal_helpers as jh

    path, d = tmp_path / "j", tmp_path / "r"
    d.mkdir()
    list(pool.map(jh.counted, [0, 1], [str(d)] * 2, journal=path))
    items = [0, 1, threading.Lock()]
    with pytest.raises(SerializationError, match=r"cannot send item 2 of map\(.*counted.*a _thread\.lock"):
        list(pool.map(jh.counted, items, [str(d)] * 3, journal=path))


def test_a_journal_that_cannot_be_written_fails_the_map_at_that_item(tmp_path):
    # A real write failure: the client may not grow files past 40 kB (RLIMIT_FSIZE, EFBIG).
    code = f"""
        import resource, signal
        from scoopexec import ScoopExecutor, JournalError

        def big(x):
            return bytes(10_000)

        if __name__ == "__main__":
            with ScoopExecutor(max_workers=1) as ex:
                ex.submit(abs, 1).result()  # the worker is up before the limit
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
                got = 0
                try:
                    for _ in ex.map(big, range(10), journal={str(tmp_path / "j")!r}):
                        got += 1
                except JournalError as exc:
                    print("after", got, "results:", exc)
    """
    r = run_script(code, timeout=120)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert "cannot write to the journal" in out and str(tmp_path / "j") in out, out
    assert "File too large" in out, out
    assert 1 <= int(out.split()[1]) < 10, out


def test_an_unordered_map_raises_for_a_result_it_could_not_record(tmp_path, pool):
    with pytest.raises(JournalError, match="OnlyPicklesOnAWorker"):
        list(pool.map(make_unrecordable, range(4), journal=tmp_path / "j", unordered=True))
    with pytest.raises(JournalError, match="OnlyPicklesOnAWorker"):
        list(pool.map(make_unrecordable, [2], journal=tmp_path / "j2", unordered=True))  # the last one


RESUME_WITH_SETS = """
import os, sys
from scoopexec import ScoopExecutor

def tagged(item, d=sys.argv[2]):
    with open(os.path.join(d, str(os.getpid()) + "-" + str(id(item)) + "-" + str(len(os.listdir(d)))), "w"):
        pass
    n, tags = item
    return n, sorted(tags)

if __name__ == "__main__":
    items = [(n, {"alpha", "beta", "gamma", "delta", str(n)}) for n in range(6)]
    items.append((6, frozenset({("x", frozenset({"p", "q", "r"})), ("y", 1)})))
    with ScoopExecutor(1) as ex:
        out = list(ex.map(tagged, items, journal=sys.argv[1]))
    print(out[0], len(os.listdir(sys.argv[2])))
"""


def test_a_map_over_items_with_sets_resumes_under_another_hash_seed(tmp_path):
    journal_path, runs = str(tmp_path / "j"), tmp_path / "runs"
    runs.mkdir()
    def run(hashseed: str):  # the same script file: its functions' identity is that of this one
        env = {"PYTHONHASHSEED": hashseed}
        return run_script(RESUME_WITH_SETS, journal_path, str(runs), env=env, timeout=99, script_dir=tmp_path)

    first = run("1")
    assert first.returncode == 0, first.stderr.decode()
    assert first.stdout.decode().split()[-1] == "7"  # every item ran
    second = run("2")
    assert second.returncode == 0, second.stderr.decode()
    assert second.stdout.decode().split()[-1] == "7"  # none ran again: every record was found
    assert second.stdout.decode().split(")")[0] == first.stdout.decode().split(")")[0]
