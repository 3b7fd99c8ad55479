"""A client with a journaled map SIGKILLed at several points, then run again to the end.

Each run is a real client process (its own embedded broker and workers).  A task leaves
a file named after the run each time it executes, so the test knows what every run
executed.  After each kill the journal is read as it is on disk; the next run must
execute only the items it has no record of, and the last run returns every result in
order.  One case kills the client in the middle of writing a (large) record.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import time

import psutil
import pytest

from scoopexec import journal as J
from tests.conftest import ROOT

CLIENT = """
import os, sys, time, uuid
from scoopexec import ScoopExecutor

def work(x, size):
    time.sleep(0.05 + 0.05 * (x % 3))
    marks = os.environ["MARKS"]
    with open(os.path.join(marks, os.environ["RUN"] + "-" + str(x) + "-" + uuid.uuid4().hex), "w"):
        pass
    return (x, b"r" * size)

if __name__ == "__main__":
    journal, n, size, run = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    env = {"MARKS": os.environ["MARKS"], "RUN": run}
    with ScoopExecutor(max_workers=2, env=env) as ex:
        out = list(ex.map(work, range(n), [size] * n, journal=journal, chunksize=int(sys.argv[5])))
    assert out == [(x, b"r" * size) for x in range(n)], "wrong results"
    print("complete", len(out))
"""


def _recorded(path) -> tuple[set[int], int]:
    """The items with a whole record in the journal on disk, and the bytes after the last one."""
    data = path.read_bytes() if path.exists() else b""
    off, items = J.HEADER_SIZE, set()
    while off + J.RECORD_HEADER <= len(data):
        (plen,) = struct.unpack_from("<Q", data, off)
        end = off + J.RECORD_HEADER + plen
        if end > len(data):
            break
        items.add(pickle.loads(data[off + J.RECORD_HEADER : end])[0])
        off = end
    return items, max(0, len(data) - off)


def _executed(marks, run) -> list[int]:
    return sorted(int(n.split("-")[1]) for n in os.listdir(marks) if n.startswith(run + "-"))


class Client:
    def __init__(self, tmp_path, journal, n, size, run, chunksize=1):
        script = tmp_path / "client.py"
        script.write_text(CLIENT)
        env = dict(os.environ, PYTHONPATH=ROOT, MARKS=str(tmp_path / "marks"))
        argv = [sys.executable, str(script), str(journal), str(n), str(size), run, str(chunksize)]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def kill(self) -> None:
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            family = []
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)
        # Its workers see their stdin close and end; wait for them (they are no longer our children).
        _gone, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, f"workers of the killed client still running: {alive}"

    def finish(self) -> str:
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err.decode()[-3000:]
        return out.decode()


def _wait_for(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("chunksize", [1, 3])
def test_killed_at_several_points_then_resumed_runs_each_item_once(tmp_path, chunksize):
    journal, marks, n = tmp_path / "run.journal", tmp_path / "marks", 40
    marks.mkdir()
    recorded: set[int] = set()
    # Kill points: once the journal exists (no record yet, or hardly any), after some records,
    # after most of them.
    for run, records_before_kill in (("a", 0), ("b", 8), ("c", 30)):
        client = Client(tmp_path, journal, n, 10, run, chunksize)
        if records_before_kill == 0:
            _wait_for(lambda: journal.exists() and journal.stat().st_size >= J.HEADER_SIZE, "the journal")
        else:
            _wait_for(lambda k=records_before_kill: len(_recorded(journal)[0]) >= k, "records")
        client.kill()
        ran = _executed(marks, run)
        assert not set(ran) & recorded, f"run {run} executed items already recorded: {set(ran) & recorded}"
        now, _torn = _recorded(journal)
        assert recorded <= now  # nothing recorded was lost
        assert now - recorded <= set(ran)  # new records are of items this run executed
        recorded = now
    assert len(recorded) < n
    out = Client(tmp_path, journal, n, 10, "final", chunksize).finish()
    assert f"complete {n}" in out
    final = _executed(marks, "final")
    assert final == sorted(set(range(n)) - recorded), "the last run must execute exactly the unrecorded items"
    assert _recorded(journal) == (set(range(n)), 0)


@pytest.mark.timeout(300)
def test_killed_while_writing_a_record_then_resumed(tmp_path):
    journal, marks, n, size = tmp_path / "big.journal", tmp_path / "marks", 6, 48 * 1024 * 1024
    marks.mkdir()
    record = J.RECORD_HEADER + len(pickle.dumps((0, b"r" * size), 5))

    def mid_record() -> bool:
        try:
            grown = journal.stat().st_size - J.HEADER_SIZE
        except FileNotFoundError:
            return False
        return grown > 0 and grown % record != 0

    torn = 0
    for attempt in range(6):
        run = f"k{attempt}"
        before, _ = _recorded(journal)
        client = Client(tmp_path, journal, n, size, run)
        _wait_for(mid_record, "a record being written", timeout=120)
        client.kill()
        after, torn = _recorded(journal)
        assert not set(_executed(marks, run)) & before
        if torn:
            break
    assert torn, "never caught the client in the middle of writing a record"
    out = Client(tmp_path, journal, n, size, "final").finish()
    assert f"complete {n}" in out
    assert _executed(marks, "final") == sorted(set(range(n)) - after)
    assert _recorded(journal) == (set(range(n)), 0)  # the torn record was cut, the rest appended
