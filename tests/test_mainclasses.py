"""The script's classes travel by reference to the workers that inherited them (wire/mainclasses.py).

Each test runs a real script (its classes belong to ``__main__``) with a real pool: the classes
must arrive as the client has them, changes made after the pool's start must reach the workers,
and a worker that did not inherit them (one started by hand) must get them all the same.
"""

from __future__ import annotations

import dataclasses
import gc
import linecache
import pickle
import time

import pytest

from scoopexec.wire import byvalue, mainclasses
from tests.conftest import run_script

pytestmark = pytest.mark.timeout(180)

HEAD = """
    import dataclasses, os, sys
    from scoopexec import ScoopExecutor
    from scoopexec.wire import serialize

    SCALE = 2.0
    WEIGHTS = [1.0]

    @dataclasses.dataclass
    class Params:
        a: float
        b: int = 2

        def value(self):
            return self.a * SCALE * WEIGHTS[0] + self.b

    class Box:
        def __init__(self, item):
            self.item = item

    def by_reference(frames):  # (by value, cloudpickle's pickle names no module of scoopexec's)
        return b"scoopexec.wire.mainclasses" in bytes(frames[0])

    def run(p):
        # the argument's class is the one this function reads; the result's goes back by reference
        back = Params(p.a + 1)
        return isinstance(p, Params), p.value(), back, by_reference(serialize.encode_result(back)[1])
"""


def _lines(r) -> list[str]:
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return r.stdout.decode().splitlines()


def test_arguments_and_results_of_the_scripts_classes_travel_by_reference_and_arrive_as_the_clients():
    code = HEAD + """
    if __name__ == "__main__":
        with ScoopExecutor(2) as ex:
            sent = serialize.encode_args((Params(1.0), Box(Params(3.0))), {}, names=ex._names)
            print("args by reference", by_reference(sent))
            same, value, back, result_by_reference = ex.submit(run, Params(1.0)).result(timeout=60)
            print("submit", same, value, type(back) is Params, back == Params(2.0), result_by_reference)
            out = list(ex.map(run, [Params(float(i)) for i in range(50)]))
            same = all(type(o[2]) is Params for o in out)
            print("map", all(o[0] for o in out), [o[1] for o in out[:3]], same)
            out = list(ex.map(run, [Params(float(i)) for i in range(6)], chunksize=1))
            print("map1", [o[2].a for o in out])
            box = ex.submit(lambda b: Box(b.item), Box(Params(5.0))).result(timeout=60)
            print("box", type(box) is Box, type(box.item) is Params, box.item.a)
        with ScoopExecutor(1, task_timeout=60) as ex:
            print("timeout", ex.submit(run, Params(4.0)).result(timeout=60)[:2])
        with ScoopExecutor(1) as ex:
            # a worker's first result, from a function that brings the class by value (which sets
            # the worker's copy): by reference all the same, the client's class left as it is
            method = Params.value
            made = ex.submit(lambda a: Params(a), 2.0).result(timeout=60)
            sent = serialize.encode_args((Params(1.0),), {}, names=ex._names)
            print("made", type(made) is Params, Params.value is method, by_reference(sent))
    """
    assert _lines(run_script(code, timeout=150)) == [
        "args by reference True",
        "submit True 4.0 True True True",
        "map True [2.0, 4.0, 6.0] True",
        "map1 [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]",
        "box True True 5.0",
        "timeout (True, 10.0)",
        "made True True True",
    ]


def test_each_change_after_the_pools_start_reaches_the_workers():
    code = HEAD + """
    def show(p):
        return p.value()

    if __name__ == "__main__":
        with ScoopExecutor(1) as ex:
            def step(label):
                sent = serialize.encode_args((Params(1.0),), {}, names=ex._names)
                print(label, by_reference(sent), ex.submit(show, Params(1.0)).result(timeout=60))
            step("start")
            WEIGHTS[0] = 10.0             # a list a method reads, changed in place
            step("list")
            WEIGHTS[0] = 1.0              # and changed back: by value from now on all the same
            step("back")
        with ScoopExecutor(1) as ex:      # a new pool's workers inherit the class as it is now
            step("new pool")
            SCALE = 3.0                   # a global a method reads, rebound
            step("global")
        with ScoopExecutor(1) as ex:
            step("new pool")
            Params.value = lambda self: -self.a   # a method replaced
            step("method")
        with ScoopExecutor(1) as ex:
            step("new pool")
            Params.b = 7                  # a class attribute (the field's default) set
            step("attribute")
        with ScoopExecutor(1) as ex:
            old = Params
            @dataclasses.dataclass
            class Params:                 # the name rebound to a new class
                a: float
                def value(self):
                    return 100 + self.a
            step("rebound")
            back = ex.submit(lambda p: p, old(2.0)).result(timeout=60)
            sent = serialize.encode_args((old(1.0),), {}, names=ex._names)
            print("old class", type(back) is old, by_reference(sent))
    """
    assert _lines(run_script(code, timeout=150)) == [
        "start True 4.0",
        "list False 22.0",
        "back False 4.0",
        "new pool True 4.0",
        "global False 5.0",
        "new pool True 5.0",
        "method False -1.0",
        "new pool True -1.0",
        "attribute False -1.0",
        "rebound False 101.0",
        "old class True True",
    ]


def test_a_worker_that_did_not_inherit_the_classes_gets_them_from_the_reference():
    code = HEAD + """
    import subprocess, time

    def bump(p):
        type(p).b += 10  # (the class attribute: the field's default)
        return type(p).b, os.getpid()

    def wait_for(path):
        while not os.path.exists(path):
            time.sleep(0.01)
        return os.getpid()

    if __name__ == "__main__":
        method = Params.value
        with ScoopExecutor(1, bind="tcp://127.0.0.1:0") as ex:
            gate = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gate")
            own = ex.submit(os.getpid).result(timeout=60)
            extra = subprocess.Popen([sys.executable, "-m", "scoopexec", "worker", "--connect", ex.endpoint])
            try:
                blocker = ex.submit(wait_for, gate)  # the forked worker is busy: the extra one runs the rest
                deadline = time.monotonic() + 60
                while not any(w["pid"] == extra.pid for w in ex._session.broker.status()["workers"]):
                    assert time.monotonic() < deadline, "the extra worker never joined"
                    time.sleep(0.05)
                out = []  # (one at a time: each to the idle worker, none queued behind the busy one)
                for i in range(3):
                    f = ex.submit(lambda p: (run(p), os.getpid()), Params(float(i)))
                    out.append(f.result(timeout=60))
                # (a task's change to the class does not last: by value, each task has the client's)
                bumped = [ex.submit(bump, Params(1.0)).result(timeout=60) for _ in range(3)]
                open(gate, "w").close()
                assert blocker.result(timeout=60) == own
                on_extra = [o[1] == extra.pid for o in out + bumped]
                print(on_extra, [o[0][:2] for o in out], [o[0] for o in bumped])
                print(all(type(o[0][2]) is Params for o in out), [o[0][2].a for o in out])
                # (its results brought the class back by reference: the client's is as it was)
                sent = serialize.encode_args((Params(1.0),), {}, names=ex._names)
                print(Params.value is method, Params.b, by_reference(sent))
            finally:
                open(gate, "w").close()
                extra.terminate()
                extra.wait(30)
    """
    assert _lines(run_script(code, timeout=150)) == [
        "[True, True, True, True, True, True] [(True, 2.0), (True, 4.0), (True, 6.0)] [12, 12, 12]",
        "True [1.0, 2.0, 3.0]",
        "True 2 True",
    ]


def test_a_workers_copy_changed_by_a_pickle_by_value_or_by_a_task_is_set_back_to_the_clients():
    # (a cold review's cases) A function of the script that reads the class carries it by value,
    # which sets the worker's copy: once the client's class is as it was again, the worker's copy
    # must be too.  A task that changes the class in its worker: the next task has the client's.
    code = HEAD + """
    from unittest import mock

    def uses_class():
        return Params(2.0).value()

    def show(p):
        return p.value()

    def bump(p):
        type(p).b *= 10
        return p.value()

    if __name__ == "__main__":
        with ScoopExecutor(1) as ex:
            print("before", ex.submit(show, Params(1.0)).result(timeout=60))
            with mock.patch.object(Params, "value", lambda self: -self.a):
                print("patched", ex.submit(uses_class).result(timeout=60))
            print("after", ex.submit(show, Params(1.0)).result(timeout=60))
            p = Params(1.0)
            del p.b  # (the class attribute, then: what the task changes)
            print("bumped", [ex.submit(bump, p).result(timeout=60) for _ in range(3)], Params.b)
    """
    assert _lines(run_script(code, timeout=150)) == [
        "before 4.0", "patched -2.0", "after 4.0", "bumped [22.0, 22.0, 22.0] 2",
    ]


def test_what_the_client_changes_around_the_fork_is_what_the_workers_see():
    # An at-fork hook of the user's runs in the client after the fork: the class is noted before.
    code = HEAD + """
    def show(p):
        return p.value()

    if __name__ == "__main__":
        os.register_at_fork(after_in_parent=lambda: WEIGHTS.__setitem__(0, 10.0))
        with ScoopExecutor(1) as ex:
            print(Params(1.0).value(), ex.submit(show, Params(1.0)).result(timeout=60))
    """
    assert _lines(run_script(code, timeout=150)) == ["22.0 22.0"]


def test_a_reducer_registered_after_a_map_applies_to_the_next_maps_chunks():
    code = HEAD + """
    import copyreg

    def show(p):
        return p.b

    if __name__ == "__main__":
        with ScoopExecutor(1) as ex:
            print(list(ex.map(show, [Params(1.0, 5)], chunksize=2)))
            copyreg.pickle(Params, lambda p: (Params, (p.a,)))  # from now on without b
            one = ex.submit(show, Params(1.0, 5)).result(timeout=60)
            print(one, list(ex.map(show, [Params(1.0, 5)], chunksize=2)))
    """
    assert _lines(run_script(code, timeout=150)) == ["[5]", "2 [2]"]


def test_a_class_set_from_its_reference_keeps_its_file_for_tracebacks():
    # (a third review's case) Once a worker's copy changed, each reference sets it from the blob:
    # its methods' code must keep the script's file name, as a pickle by value keeps it.
    code = HEAD + """
    import traceback

    @dataclasses.dataclass
    class Failing:
        a: float

        def fail(self):
            raise ValueError(self.a)

    def where(f):
        try:
            f.result(timeout=60)
        except ValueError as e:
            lines = "".join(traceback.format_exception(e)).splitlines()
            return [os.path.basename(line.split('"')[1]) for line in lines if line.endswith("in fail")]

    if __name__ == "__main__":
        with ScoopExecutor(1) as ex:
            print(where(ex.submit(lambda p: p.fail(), Failing(1.0))))
            ex.submit(lambda: Failing(0.0).a).result(timeout=60)  # (brings the class by value)
            print(where(ex.submit(lambda p: p.fail(), Failing(2.0))))
    """
    assert _lines(run_script(code, timeout=150)) == ["['script.py']", "['script.py']"]


def test_a_reference_of_the_wrong_shape_or_holding_no_class_is_refused():
    with pytest.raises(pickle.UnpicklingError, match="wrong shape"):
        mainclasses.load("token", 0, b"", True)  # type: ignore[arg-type]
    with pytest.raises(pickle.UnpicklingError, match="holds int, not a class"):
        mainclasses.load(b"unknown token", 0, pickle.dumps(3), True)


def _dataclass():
    ns: dict = {"__name__": "__main__", "dataclasses": dataclasses}
    exec("@dataclasses.dataclass\nclass P:\n    a: float\n    def m(self):\n        return self.a\n", ns)
    return ns["P"]


def test_a_walk_past_its_deadline_notes_nothing():
    cls = _dataclass()
    assert byvalue.snapshot_class(cls, time.perf_counter() + 10) is not None
    assert byvalue.snapshot_class(cls, time.perf_counter() - 1) is None


def test_the_lines_linecache_holds_do_not_count_in_a_classs_look_but_its_namespace_does():
    cls = _dataclass()
    plan = byvalue.snapshot_class(cls)
    assert plan is not None and byvalue.still(plan) and byvalue.namespaces_still(plan)
    entry = linecache.cache.get("<string>")
    linecache.cache["<string>"] = (1, None, ["x\n"], "<string>")  # (as a worker's, given a function)
    try:
        assert byvalue.still(plan)
    finally:
        if entry is None:
            linecache.cache.pop("<string>", None)
        else:
            linecache.cache["<string>"] = entry
    cls.m = lambda self: -self.a  # the noted method replaced, and gone
    gc.collect()
    assert not byvalue.namespaces_still(plan) and not byvalue.still(plan)
