"""The script's functions that a pool's workers have already travel by name (wire/serialize.py,
deploy/clientfork.py MainSnapshot).

A function of the client's script travelled by value with every task, and with it every global of
the script it reads: a task of a function reading a 200 MB array sent 200 MB (20 submits took 10 s,
a map of 200 items 41 s; ProcessPoolExecutor 0.01 s), the script's classes in a task were copies
("not the same object as __main__.Progress" when a task pickled one), and two task functions did
not share the script's globals.  Each script runs in a child interpreter: what is tested is the
client's own __main__.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import run_script

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a fork of the client is Linux's"),
]

_SCRIPT = """
import json, multiprocessing, pickle, sys
from scoopexec import ScoopExecutor
from scoopexec.wire import serialize

DATA = bytearray(50_000_000)  # 50 MB the task function reads
COUNT = 100
SETTING = "at the start"


class Progress:
    def __init__(self, i):
        self.i = i


def read(i):
    return DATA[i] + len(DATA)


def bump():
    global COUNT
    COUNT += 1
    return COUNT


def read_count():
    return COUNT


def setting():
    return SETTING


def first_byte():
    return DATA[0]


def progress(i):
    return len(pickle.dumps(Progress(i))), type(Progress(i)) is sys.modules["__main__"].Progress


def frame(fn):
    return sum(len(f) if isinstance(f, bytes) else memoryview(f).nbytes for f in serialize.encode_call(fn, (1,), {}))


if __name__ == "__main__":
    out = {}
    with ScoopExecutor(1) as ex:
        out["frame"] = frame(read)
        out["read"] = [ex.submit(read, i).result(timeout=60) for i in range(3)]
        out["map"] = sum(ex.map(read, range(100)))
        out["shared"] = [ex.submit(bump).result(timeout=60) for _ in range(3)] + [ex.submit(read_count).result(timeout=60)]
        out["class"] = ex.submit(progress, 3).result(timeout=60)[1]
        SETTING = "rebound"  # rebound since the start: by value, the new one
        out["rebound"] = ex.submit(setting).result(timeout=60)
        out["rebound_frame"] = frame(setting)

        def later():  # defined since the start: by value
            return "later"

        out["later"] = ex.submit(later).result(timeout=60)
        DATA[0] = 7  # changed in place since the start: not seen, as with ProcessPoolExecutor
        out["in_place"] = ex.submit(first_byte).result(timeout=60)
        with ScoopExecutor(1) as other:  # two pools: which one gets a task is not known here
            out["two_pools_frame"] = frame(read)
            out["two_pools"] = other.submit(read, 1).result(timeout=60)
    print(json.dumps(out))
"""


def test_a_scripts_function_the_workers_have_travels_by_name():
    res = run_script(_SCRIPT, timeout=150)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    out = json.loads(res.stdout.decode().splitlines()[-1])
    assert out["frame"] < 1000, out  # by name, not 50 MB
    assert out["read"] == [50_000_000] * 3 and out["map"] == 100 * 50_000_000
    assert out["shared"] == [101, 102, 103, 103]  # one namespace for the script, as in a process pool
    assert out["class"] is True  # the script's class itself: a task can pickle its instances
    assert out["rebound"] == "rebound" and out["rebound_frame"] > 0
    assert out["later"] == "later"
    assert out["in_place"] == 0
    assert out["two_pools_frame"] > 50_000_000 and out["two_pools"] == 50_000_000


_QUEUE = """
import multiprocessing
from scoopexec import ScoopExecutor


class Progress:
    def __init__(self, i):
        self.i = i


def init(q):
    global Q
    Q = q


def work(i):
    Q.put(Progress(i))
    return i


if __name__ == "__main__":
    q = multiprocessing.Queue()
    with ScoopExecutor(2, initializer=init, initargs=(q,)) as ex:
        assert sorted(ex.map(work, range(4))) == [0, 1, 2, 3]
    print(sorted(q.get(timeout=20).i for _ in range(4)))
"""


def test_objects_of_the_scripts_classes_reach_a_multiprocessing_queue():
    # The queue's feeder thread pickles what a task puts: a copy of the class could not be
    # pickled ("not the same object as __main__.Progress") and each item was dropped.
    res = run_script(_QUEUE, timeout=120)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    assert res.stdout.decode().split("\n")[-2] == "[0, 1, 2, 3]", res.stdout.decode()
