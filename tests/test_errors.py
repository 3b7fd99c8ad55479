"""Errors people can act on: each says what happened, where (host, worker, task) and what to do."""

from __future__ import annotations

import inspect
import os
import pickle
import re
import signal
import socket
import sys
import threading
import time
import types

import pytest

from scoopexec import (
    BrokenScoopExecutor,
    InitializerError,
    RemoteError,
    ScoopExecutor,
    SerializationError,
    WorkerLostError,
)
from scoopexec.deploy.contract import describe_returncode
from tests.conftest import run_script

M = __name__  # this module, as workers and messages name it
ME = re.escape(M)


# abs()'s parameter is named 'x' up to Python 3.14 and 'number' from 3.15: the message names it
# as the running interpreter does.
ABS_PARAMETER = next(iter(inspect.signature(abs).parameters))


def _kill_my_worker():
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_task_that_kills_its_worker_names_the_task_the_worker_the_signal_and_the_remedy():
    host = socket.gethostname()
    with ScoopExecutor(2, max_retries=0) as ex:  # two workers: the pool survives the loss
        pids = ex.worker_pids
        with pytest.raises(WorkerLostError) as info:
            ex.submit(_kill_my_worker).result(timeout=60)
    text = str(info.value)
    assert "_kill_my_worker(): task" in text  # the task, named by the client
    assert "was lost 1 time with its worker, more than max_retries=0 allows" in text
    where = re.search(rf"last: worker \S+ \(pid (\d+) on {re.escape(host)}\)", text)
    assert where and int(where.group(1)) in pids, text
    assert "was killed by signal 9 (SIGKILL) - often the out-of-memory killer" in text
    assert f"see `dmesg` on {host}" in text
    assert "raise max_retries" in text


def test_exit_descriptions():
    assert describe_returncode(-9, "node2") == (
        "was killed by signal 9 (SIGKILL) - often the out-of-memory killer (see `dmesg` on node2) "
        "or a kill -9"
    )
    assert "segmentation fault in native code" in describe_returncode(-11)
    assert describe_returncode(3) == "exited with code 3"  # maybe a task's os._exit(3)
    assert describe_returncode(3, own=True) == "exited with code 3 (it lost its broker)"
    assert describe_returncode(1) == "exited with code 1"


def test_unpicklable_arguments_say_what_cannot_travel(one_worker):
    with pytest.raises(SerializationError) as info:
        one_worker.submit(abs, threading.Lock()).result(timeout=60)
    text = str(info.value)
    assert text.startswith(
        f"cannot send argument '{ABS_PARAMETER}' (position 0, a _thread.lock) of abs() to a worker"
    )
    assert "TypeError: cannot pickle '_thread.lock' object" in text
    assert "pass what is needed to recreate them instead" in text


class _RefusesToTravel:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def __reduce__(self):
        raise self.error


class _NeedsTwo(Exception):
    def __init__(self, a, b):
        super().__init__(a, b)


class _Prefixed(Exception):
    def __init__(self, name):
        super().__init__(f"bad {name}")


def test_what_cannot_be_pickled_is_also_caught_as_the_original_error(one_worker):
    # ProcessPoolExecutor and multiprocessing.Pool raise pickle's own error (TypeError: cannot
    # pickle '_thread.lock' object, or whatever a __reduce__ raised); code that catches it keeps
    # working, and still gets our message and type.
    with pytest.raises(TypeError) as info:
        one_worker.submit(abs, threading.Lock()).result(timeout=60)
    err = info.value
    assert isinstance(err, SerializationError) and isinstance(err, pickle.PicklingError)
    assert type(err).__name__ == "SerializationError" and type(err).__module__ == "scoopexec.errors"
    assert str(err).startswith(f"cannot send argument '{ABS_PARAMETER}' (position 0, a _thread.lock)")
    assert repr(err).startswith("SerializationError(\"cannot send argument")  # (the message quotes the name)
    assert isinstance(err.__cause__, TypeError) and not isinstance(err.__cause__, SerializationError)
    again = pickle.loads(pickle.dumps(err))  # (it can travel back from a task that submitted)
    assert isinstance(again, SerializationError) and isinstance(again, TypeError) and str(again) == str(err)
    # A map's item whose __reduce__ raises: that error's type; KeyError's str() does not quote ours.
    for error in (RuntimeError("no"), KeyError("no")):
        with pytest.raises(type(error)) as info:
            list(one_worker.map(abs, [1, _RefusesToTravel(error)]))
        assert isinstance(info.value, SerializationError)
        assert str(info.value).startswith(f"cannot send item 1 (a {M}._RefusesToTravel) of map(abs, ...)")
    # A function that refers to a lock: the error of the part the message names (the lock's).
    lock = threading.Lock()
    with pytest.raises(TypeError, match="^cannot send the function .* it refers to the variable lock"):
        one_worker.submit(lambda: lock).result(timeout=60)
    # The part that cannot travel decides, not the order: a lambda before the lock changes nothing.
    with pytest.raises(TypeError, match=r"argument 2 \(a _thread\.lock\)"):
        one_worker.submit(_simulate, lambda: 1, 2, lock).result(timeout=60)
    # An open file: the standard pickle module's TypeError (ProcessPoolExecutor's), although the
    # message gives cloudpickle's more telling PicklingError.
    with open(os.devnull, "w") as fh, pytest.raises(TypeError) as info:
        one_worker.submit(abs, fh).result(timeout=60)
    assert isinstance(info.value, SerializationError) and "PicklingError: Cannot pickle files" in str(info.value)
    # Not mixed in: a type of the program's (its __init__ would run on our message), StopIteration
    # (a loop would end on it), TimeoutError (it would look like a wait that timed out).
    for error in (_NeedsTwo(1, 2), _Prefixed("x"), StopIteration("no"), TimeoutError("no")):
        with pytest.raises(SerializationError) as info:
            one_worker.submit(abs, _RefusesToTravel(error)).result(timeout=60)
        assert type(info.value) is SerializationError
        assert f"{type(error).__name__}: {error}" in str(info.value)
        assert str(info.value).startswith(f"cannot send argument '{ABS_PARAMETER}'")
    # Inside a task: the sub-task's error fails the task, and arrives as both here.
    with pytest.raises(TypeError) as info:
        one_worker.submit(_submit_a_lock).result(timeout=60)
    assert isinstance(info.value, SerializationError)
    assert "keyword argument 'log' (a _thread.lock)" in str(info.value)


def _a_lock_inside():
    return {"fine": 1, "lock": threading.Lock()}


def _refuses(error):
    return _RefusesToTravel(error)


def test_a_result_that_cannot_be_pickled_is_also_the_standard_error(one_worker):
    # ProcessPoolExecutor's worker sends back the pickling error itself (TypeError: cannot
    # pickle '_thread.lock' object): `except TypeError` around result() caught it; ours was a
    # SerializationError only.
    with pytest.raises(TypeError) as info:
        one_worker.submit(threading.Lock).result(timeout=60)
    assert isinstance(info.value, SerializationError)
    assert str(info.value).startswith("the result of ") and "cannot be pickled" in str(info.value)
    # The part that fails decides; a __reduce__'s own error (a built-in type) is that type.
    with pytest.raises(TypeError, match=r"its part result\['lock'\] \(a _thread.lock\) fails"):
        one_worker.submit(_a_lock_inside).result(timeout=60)
    with pytest.raises(RuntimeError) as info:
        one_worker.submit(_refuses, RuntimeError("no")).result(timeout=60)
    assert isinstance(info.value, SerializationError)
    # A program's own type is not mixed in (its __init__ would run on our message).
    with pytest.raises(SerializationError) as info:
        one_worker.submit(_refuses, _Prefixed("x")).result(timeout=60)
    assert type(info.value) is SerializationError


def _submit_a_lock():
    import scoopexec

    return scoopexec.submit(_simulate, 1, log=threading.Lock()).result()


def _simulate(params, seed=0, *rest, **options):
    return params


def _line() -> int:
    return sys._getframe(1).f_lineno


def test_an_unpicklable_argument_is_named_with_its_part_its_type_and_the_submitting_line(one_worker):
    here = os.path.abspath(__file__)
    lock = threading.Lock()
    cases = [  # (args, kwargs, what the message must name)
        (({"k": [1, lock]},), {}, f"argument 'params' (position 0) of {M}._simulate() to a "
         "worker, submitted at {site}: its part params['k'][1] (a _thread.lock) cannot be pickled"),
        ((1, 2, 3, lock), {}, f"argument 3 (a _thread.lock) of {M}._simulate()"),
        ((1,), {"seed": 2, "log": lock}, f"keyword argument 'log' (a _thread.lock) of {M}._simulate()"),
    ]
    for args, kwargs, expected in cases:
        fut, line = one_worker.submit(_simulate, *args, **kwargs), _line()
        with pytest.raises(SerializationError) as info:
            fut.result(timeout=60)
        assert expected.replace("{site}", f"{here}:{line}") in str(info.value)
        assert f"submitted at {here}:{line}:" in str(info.value)
        assert isinstance(info.value.__cause__, TypeError)  # pickle's own error, chained
    # An object's attribute, a few levels down.
    holder = types.SimpleNamespace(name="x", inner=types.SimpleNamespace(lock=lock))
    with pytest.raises(SerializationError, match=r"its part params\.inner\.lock \(a _thread\.lock\)"):
        one_worker.submit(_simulate, holder).result(timeout=60)


def test_a_map_names_the_item_that_cannot_travel(one_worker):
    here = os.path.abspath(__file__)
    items = [[1], [2], [3], [threading.Lock()], [5]]
    for chunksize in (1, 2):
        with pytest.raises(SerializationError) as info:
            it, line = one_worker.map(len, items, chunksize=chunksize), _line()
            list(it)
        text = str(info.value)
        assert f"cannot send item 3 of map(len, ...) to a worker, submitted at {here}:{line}: " in text, text
        assert "its part items[3][0] (a _thread.lock) cannot be pickled" in text


def test_a_future_passed_as_an_argument_is_refused_at_once_naming_the_argument(one_worker):
    first = one_worker.submit(abs, -1)
    with pytest.raises(TypeError) as info:
        one_worker.submit(_simulate, first)  # raised by submit() itself, not later by result()
    text = str(info.value)
    assert text.startswith(f"argument 'params' (position 0) of {M}._simulate() is a Future")
    assert "`fut.result()`" in text and "submit one task that submits the first step" in text
    assert info.value.__cause__ is None
    with pytest.raises(TypeError, match=r"keyword argument 'seed', at seed\[1\], of .* is a Future"):
        one_worker.submit(_simulate, 1, seed=[0, first])
    with pytest.raises(TypeError, match=rf"^item 1 of map\({ME}\._simulate, \.\.\.\) is a Future"):
        list(one_worker.map(_simulate, [0, first]))
    assert first.result(timeout=60) == 1  # the pool is fine


def _finished_unwaited_subfuture_travels():
    """In a task: submit() refuses a finished sub-task's future that nothing waited on."""
    from scoopexec import submit

    first = submit(abs, -2)  # (runs on the other worker: this one keeps running this task)
    deadline = time.monotonic() + 30
    while not first.done() and time.monotonic() < deadline:  # (done() makes no condition)
        time.sleep(0.002)
    out = []
    for make in (lambda: submit(id, first), lambda: submit(first.result)):
        try:
            make()
        except TypeError as exc:
            out.append(str(exc).split(":")[0])
    return out


def test_a_finished_future_nothing_waited_on_is_refused_too(one_worker):
    # A future makes its condition (the lock that never pickles) only when something waits on
    # it; one that finished before anything did used to pickle, and the task ran on a copy.
    first = one_worker.submit(abs, -1)
    deadline = time.monotonic() + 60
    while not first.done() and time.monotonic() < deadline:  # (not result(): it would wait)
        time.sleep(0.005)
    refused = rf"^argument 'params' \(position 0\) of {M}\._simulate\(\) is a Future"
    with pytest.raises(TypeError, match=refused):
        one_worker.submit(_simulate, first)
    with pytest.raises(TypeError, match=r"^self of the function .*Future\.result is a Future"):
        one_worker.submit(first.result)
    with pytest.raises(TypeError, match=r"^cannot pickle a ScoopFuture"):
        pickle.dumps(first)
    # copy.copy() still works, sharing the state, as a concurrent.futures.Future's does
    import copy

    twin = copy.copy(first)
    assert twin is not first and twin.done() and twin.result(timeout=0) == 1


def test_inside_a_task_a_finished_future_nothing_waited_on_is_refused_too(executor):
    # (A guard of the wording: a WorkerFuture did not pickle before ScoopFuture.__reduce__ either,
    # its holder refuses; serialize's search names it a Future either way.)
    assert executor.submit(_finished_unwaited_subfuture_travels).result(timeout=60) == [
        "argument 'obj' (position 0) of id() is a Future",
        "self of the function scoopexec.worker.waiting.WorkerFuture.result is a Future",
    ]


class _Holder:
    def __init__(self):
        self.lock = threading.Lock()

    def method(self, x):
        return x

    def __call__(self, x):
        return x


def test_an_unpicklable_function_names_itself_where_it_was_defined_and_what_it_refers_to(one_worker):
    with pytest.raises(SerializationError) as info:
        one_worker.submit(_Holder().method, 1).result(timeout=60)
    text = str(info.value)
    defined = _Holder.method.__code__.co_firstlineno
    assert text.startswith(
        f"cannot send the function {M}._Holder.method (defined at {os.path.abspath(__file__)}:"
        f"{defined}) to a worker, submitted at "
    ), text
    assert "it refers to self.lock (a _thread.lock), which cannot be pickled" in text
    lock = threading.Lock()

    def is_locked():  # a closure: travels by value, with the lock it captured
        return lock.locked()

    with pytest.raises(SerializationError, match=r"it refers to the variable lock \(a _thread\.lock\)"):
        one_worker.submit(is_locked).result(timeout=60)
    with pytest.raises(SerializationError, match=rf"^cannot send the function {ME}\._Holder object to a worker, "
                       r"submitted at .*: it refers to self\.lock \(a _thread\.lock\)"):
        one_worker.submit(_Holder(), 1).result(timeout=60)
    with pytest.raises(TypeError, match=r"^self of the function .*Future\.result is a Future"):
        one_worker.submit(one_worker.submit(abs, 1).result)


def _raise_two_arg(x):
    raise TwoArgError(x, "why")


class TwoArgError(Exception):
    def __init__(self, code, reason):
        super().__init__(f"{code}: {reason}")  # args no longer match __init__: cannot be rebuilt


def test_an_exception_that_cannot_be_rebuilt_names_the_task_and_says_why(one_worker):
    with pytest.raises(RemoteError) as info:
        one_worker.submit(_raise_two_arg, 7).result(timeout=60)
    text = str(info.value)
    assert text.startswith(f"{M}.TwoArgError: 7: why (raised by {M}._raise_two_arg(); ")
    assert "missing 1 required positional argument: 'reason'" in text
    assert "pass every argument of __init__ on to super().__init__(), or define __reduce__" in text


def _raise_unpicklable():
    exc = ValueError("has a lock")
    exc.lock = threading.Lock()
    raise exc


def test_an_exception_that_cannot_be_pickled_names_the_task_and_why(one_worker):
    with pytest.raises(RemoteError) as info:
        one_worker.submit(_raise_unpicklable).result(timeout=60)
    text = str(info.value)
    assert text.startswith(f"ValueError: has a lock (raised by {M}._raise_unpicklable(); it "
                           "could not be pickled on the worker"), text
    assert "TypeError: cannot pickle '_thread.lock' object" in text


def test_a_function_whose_module_workers_cannot_import_is_named_with_where_it_is_here(one_worker, tmp_path):
    (tmp_path / "added_late.py").write_text("def late(x):\n    return x\n")
    sys.path.insert(0, str(tmp_path))  # after the pool started: its workers do not have it
    try:
        import added_late

        with pytest.raises(SerializationError) as info:
            one_worker.submit(added_late.late, 1).result(timeout=60)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("added_late", None)
    text = str(info.value)
    assert text.startswith("added_late.late(): the task could not be unpickled on worker"), text
    assert "No module named 'added_late'" in text
    assert f"here it is {tmp_path / 'added_late.py'}: put its folder on sys.path" in text
    assert "worker.py" not in str(info.value.__cause__)  # scoopexec's own frames are noise


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def _return_unpicklable():
    return _Unpicklable()


def _return_unpicklable_inside():
    return {"ok": 1, "bad": [_Unpicklable()]}


def test_unpicklable_result_names_the_task_its_type_and_worker(one_worker):
    with pytest.raises(SerializationError) as info:
        one_worker.submit(_return_unpicklable).result(timeout=60)
    text = str(info.value)
    pid = one_worker.worker_pids[0]
    assert text.startswith(
        f"the result of {M}._return_unpicklable() (a {M}._Unpicklable) cannot "
        f"be pickled on worker {socket.gethostname()}:{pid} (pid {pid} on "
    ), text
    assert "TypeError: this object refuses to be pickled (return plain data" in text
    assert "serialize.py" not in str(info.value.__cause__)  # the user's __reduce__, not our frames
    assert "in __reduce__" in str(info.value.__cause__)
    with pytest.raises(SerializationError, match=r"\(a dict\) cannot be pickled on worker .*: its part "
                       rf"result\['bad'\]\[0\] \(a {ME}\._Unpicklable\) fails: TypeError"):
        one_worker.submit(_return_unpicklable_inside).result(timeout=60)


def _submit_from_a_task():
    import scoopexec

    fut, line = scoopexec.submit(_simulate, 1, log=threading.Lock()), _line()
    try:
        fut.result()
    except SerializationError as exc:
        return str(exc), line
    return "no error", line


def test_a_sub_task_submitted_with_an_unpicklable_argument_names_it_and_the_line(one_worker):
    text, line = one_worker.submit(_submit_from_a_task).result(timeout=60)
    assert text.startswith(f"cannot send keyword argument 'log' (a _thread.lock) of {M}._simulate() "
                           f"to a worker, submitted at {os.path.abspath(__file__)}:{line}: "), text


def _bad_init():
    raise OSError("no licence server")


def test_initializer_failure_says_where_and_what_to_do():
    with ScoopExecutor(1, initializer=_bad_init) as ex:
        with pytest.raises(InitializerError) as info:
            ex.submit(abs, 1).result(timeout=60)
    text = str(info.value)
    assert "fix the initializer (its traceback follows) and start a new executor" in text
    assert "OSError: no licence server" in text and f"on {socket.gethostname()})" in text


def test_tasks_left_at_shutdown_say_why():
    ex = ScoopExecutor(1)
    fut = ex.submit(__import__("time").sleep, 30)
    ex._session.request_stop()  # the pool goes away under the future
    ex.shutdown(wait=True)
    with pytest.raises(BrokenScoopExecutor, match=r"shut down before this task completed .*wait=True"):
        fut.result(timeout=60)


def test_bad_heartbeat_settings_show_the_values():
    with pytest.raises(ValueError, match=r"got heartbeat=2 and heartbeat_timeout=1"):
        ScoopExecutor(1, heartbeat=2, heartbeat_timeout=1)


def test_a_function_sent_with_megabytes_of_what_it_refers_to_is_warned_about_once(one_worker):
    # A function of the script, a lambda or a closure is pickled by value with what it refers
    # to, at every submit: a task reading a 200 MB global of the script cost 0.5 s each, silently.
    from scoopexec.errors import LargeFunctionWarning

    data = bytearray(3_000_000)
    fn = lambda i: data[i] + 1  # noqa: E731
    with pytest.warns(LargeFunctionWarning, match=r"is pickled by value .* 3\.0 MB at every submit \(once per map; each worker receives it once") as seen:
        assert one_worker.submit(fn, 1).result(timeout=60) == 1
    assert seen[0].filename == __file__  # the line that submitted
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", LargeFunctionWarning)  # said once: not again
        assert list(one_worker.map(fn, range(3))) == [1, 1, 1]
        assert one_worker.submit(lambda: 2).result(timeout=60) == 2  # a small one: nothing
    out = run_script(
        """
        import warnings
        from scoopexec import ScoopExecutor
        DATA = bytearray(2_000_000)
        def f(i):
            return DATA[i]
        if __name__ == "__main__":
            with ScoopExecutor(1) as ex, warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                [ex.submit(f, i).result() for i in range(3)]
            print(len(w), str(w[0].message))
        """,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    text = out.stdout.decode()
    assert text.startswith("1 __main__.f is pickled by value") and "the globals it reads: DATA (2.0 MB)" in text, text
