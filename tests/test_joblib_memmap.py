"""joblib's memory maps of NumPy arrays on the "scoop" backend (integrations/joblib_memmap.py).

joblib's process backends give workers a memory map of the file behind an np.memmap argument,
and of a file they write once for every array above max_nbytes.  The "scoop" backend sent copies:
joblib's own recipe for writing results into a shared np.memmap lost every write, silently, and
n workers reading one large array held n copies of it.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading

import pytest
from joblib import Parallel, delayed, parallel_backend

from scoopexec import ScoopExecutor

np = pytest.importorskip("numpy")

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon is Linux's"),
]


def fill(out, i):
    out[i] = i * 2.0


def fill_row(out, i):
    out[i, :] = i


def describe(a, *_ignored):
    """What a task received, and the worker's private memory once it has read all of it."""
    return {
        "memmap": isinstance(a, np.memmap),
        "writeable": bool(a.flags.writeable),
        "sum": float(a.sum()),
        "anon": _rss_anon(),
    }


def _rss_anon() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon")


def test_results_written_into_a_shared_memmap_reach_the_client(tmp_path):
    # joblib's documented recipe: an np.memmap opened "w+" in the client, filled by the tasks.
    out = np.memmap(tmp_path / "out", dtype=float, shape=16, mode="w+")
    with parallel_backend("scoop", n_jobs=2):
        Parallel()(delayed(fill)(out, i) for i in range(16))
    assert out.tolist() == [i * 2.0 for i in range(16)]
    # On a pool of the program's own, and through views of the map: a column of a 2-D map,
    # a reversed slice (negative strides), a transposed one.
    grid = np.memmap(tmp_path / "grid", dtype=np.int32, shape=(6, 4), mode="w+")
    with ScoopExecutor(2), parallel_backend("scoop"):
        Parallel(n_jobs=2)(delayed(fill_row)(grid, i) for i in range(6))
        Parallel(n_jobs=2)(delayed(fill)(grid[:, 1], i) for i in range(6))
        Parallel(n_jobs=2)(delayed(fill)(grid[::-1, 2], i) for i in range(6))
        Parallel(n_jobs=2)(delayed(fill_row)(grid.T, i) for i in (3,))
    assert grid[:, 0].tolist() == list(range(6))
    assert grid[:, 1].tolist() == [i * 2 for i in range(6)]
    assert grid[:, 2].tolist() == [i * 2 for i in reversed(range(6))]
    assert grid[:, 3].tolist() == [3] * 6


def test_a_large_array_is_mapped_read_only_not_copied_into_each_worker(tmp_path):
    big = np.arange(8_000_000, dtype=np.float64)  # 64 MB
    with parallel_backend("scoop", n_jobs=2):
        seen = Parallel(temp_folder=str(tmp_path))(delayed(describe)(big) for _ in range(4))
        assert os.listdir(tmp_path) == []  # removed at the end of the call
        copies = Parallel(max_nbytes=None)(delayed(describe)(big) for _ in range(2))
    expected = float(big.sum())
    for got in seen:
        assert got["memmap"] and not got["writeable"] and got["sum"] == expected, got
    for got in copies:  # max_nbytes=None: copies, as before (the usual out-of-band transfer)
        assert not got["memmap"] and got["sum"] == expected, got
    # A map's pages are the file's, shared by the workers; a copy is each worker's own.
    assert max(g["anon"] for g in seen) + (48 << 20) < min(g["anon"] for g in copies), (seen, copies)
    # A small array (under joblib's default max_nbytes of 1 MB) travels as a copy too.
    with parallel_backend("scoop", n_jobs=2):
        (small,) = Parallel()(delayed(describe)(np.ones(1000)) for _ in range(1))
    assert not small["memmap"] and small["sum"] == 1000.0


def test_the_folder_lives_as_long_as_the_parallel_block_and_mmap_mode_is_honoured(tmp_path):
    a = np.ones(100)
    with parallel_backend("scoop", n_jobs=2):
        with Parallel(max_nbytes=1, temp_folder=str(tmp_path), mmap_mode="c") as par:
            got = par(delayed(describe)(a) for _ in range(3))
            assert len(os.listdir(tmp_path)) == 1  # one folder, one file written once for 3 tasks
            (folder,) = os.listdir(tmp_path)
            assert len(os.listdir(tmp_path / folder)) == 1
            assert oct(os.stat(tmp_path / folder).st_mode & 0o777) == "0o700"
        assert os.listdir(tmp_path) == []
    assert all(g["memmap"] and g["writeable"] for g in got), got  # copy-on-write: writeable
    with pytest.raises(ValueError, match="mmap_mode must be None, 'r', 'r\\+', 'w\\+' or 'c', not 'rw'"):
        with parallel_backend("scoop", n_jobs=2):
            Parallel(mmap_mode="rw", max_nbytes=1)(delayed(describe)(a) for _ in range(2))


def test_the_folder_of_a_killed_client_is_removed_by_the_next(tmp_path):
    from scoopexec.integrations import joblib_memmap

    here = joblib_memmap._here()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"scoopexec-joblib-{here}-{dead.pid}-0123abcd"  # a client killed here
    left.mkdir()
    (left / "0-x.npy").write_bytes(b"x" * 1000)
    kept = [
        f"scoopexec-joblib-{here}-{os.getpid()}-live",  # a live process's
        f"scoopexec-joblib-0123456789ab-{dead.pid}-elsewhere",  # another host's or pid namespace's
        f"scoopexec-joblib-{here}-99999999999999999999",  # a name that is no pid (a file, anyone's)
        f"scoopexec-joblib-{here}-\u00b2",
        "not-ours",
    ]
    for name in kept[:2]:
        (tmp_path / name).mkdir()
    for name in kept[2:]:
        (tmp_path / name).write_text("")
    with parallel_backend("scoop", n_jobs=2):
        got = Parallel(max_nbytes=1, temp_folder=str(tmp_path))(delayed(describe)(np.ones(10)) for _ in range(2))
    assert [g["memmap"] for g in got] == [True, True]
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_an_array_that_cannot_be_written_says_so_and_an_unpicklable_part_is_named(tmp_path):
    (tmp_path / "a-file").write_text("")
    with parallel_backend("scoop", n_jobs=2):
        with pytest.raises(OSError, match="cannot make a folder for arrays the workers map") as info:
            Parallel(max_nbytes=1, temp_folder=str(tmp_path / "a-file"))(delayed(describe)(np.ones(10)) for _ in range(2))
        assert not isinstance(info.value, pickle.PicklingError)
        with pytest.raises(TypeError, match=r"batch\.items\[0\]\[1\]\[1\] \(a _thread\.lock\)"):
            Parallel(max_nbytes=1)(delayed(describe)(np.ones(10), threading.Lock()) for _ in range(2))


def test_a_pool_that_workers_may_join_from_elsewhere_gets_copies(tmp_path):
    big = np.ones(300_000)
    with ScoopExecutor(2, bind="tcp://127.0.0.1:0"), parallel_backend("scoop"):
        got = Parallel(n_jobs=2, max_nbytes=1, temp_folder=str(tmp_path))(delayed(describe)(big) for _ in range(2))
    assert [g["memmap"] for g in got] == [False, False]
    assert os.listdir(tmp_path) == []
