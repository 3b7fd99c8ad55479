"""Pickling calls, results and exceptions into frames."""

from __future__ import annotations

import pickle
import threading

import pytest

from scoopexec import RemoteError, SerializationError
from scoopexec.wire import protocol as P
from scoopexec.wire import serialize as S


def test_small_data_stays_in_band():
    frames = S.dumps([1, "two", b"three" * 10])
    assert len(frames) == 1
    assert S.loads(frames) == [1, "two", b"three" * 10]


def test_large_buffers_travel_out_of_band():
    np = pytest.importorskip("numpy")
    a = np.arange(1_000_000, dtype=np.int64)
    frames = S.dumps({"a": a, "small": np.arange(3)})
    assert len(frames) == 2  # the pickle and one 8 MB buffer
    assert len(frames[0]) < 10_000
    out = S.loads([frames[0], memoryview(frames[1])])
    assert (out["a"] == a).all() and out["a"].flags.writeable


def test_large_bytes_out_of_band():
    blob = bytearray(b"x" * (S.OOB_MIN + 1))
    frames = S.dumps(pickle.PickleBuffer(blob))
    assert len(frames) == 2


def test_lambdas_and_closures_use_cloudpickle():
    k = 3
    fn = S.loads_function(S.dumps_function(lambda x: x + k))
    assert fn(1) == 4


def test_main_references_are_pickled_by_value():

    cls = type("Local", (), {"__module__": "__main__"})
    frames = S.dumps(cls)
    assert S.loads(frames).__name__ == "Local"


def test_module_functions_are_cached_by_reference():
    data = S.dumps_function(S.dumps)
    assert len(data) < 100
    assert S.dumps_function(S.dumps) is data


def test_call_encoding_round_trip():
    frames = S.encode_call(divmod, (7, 2), {})
    fn, args, kwargs = S.decode_call(frames)
    assert fn(*args, **kwargs) == (3, 1)
    frames = S.encode_call(dict, (), {"a": 1})
    fn, args, kwargs = S.decode_call(frames)
    assert fn(*args, **kwargs) == {"a": 1}


def test_unpicklable_arguments_raise_serialization_error():
    with pytest.raises(SerializationError, match="arguments") as info:
        S.encode_call(abs, (threading.Lock(),), {})
    assert info.value.__cause__ is not None


def test_exception_outcomes():
    status, frames = S.encode_exception(KeyError("k"), "Traceback: here")
    assert status == P.RAISED
    ok, exc = S.decode_outcome(status, frames)
    assert not ok and isinstance(exc, KeyError)
    assert "Traceback: here" in str(exc.__cause__)


class Unloadable(Exception):
    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("cannot rebuild")


def test_exception_that_cannot_be_unpickled_becomes_remote_error():
    status, frames = S.encode_exception(Unloadable("x"), "remote tb text")
    ok, exc = S.decode_outcome(status, frames)
    assert isinstance(exc, RemoteError)
    assert "Unloadable" in exc.type_name and exc.traceback == "remote tb text"


def test_exception_that_cannot_be_pickled():
    class Local(Exception):
        def __init__(self):
            super().__init__("msg")
            self.lock = threading.Lock()

    status, frames = S.encode_exception(Local(), "tb")
    ok, exc = S.decode_outcome(status, frames)
    assert isinstance(exc, RemoteError) and "Local" in str(exc)


def test_result_that_cannot_be_pickled():
    status, frames = S.encode_result(threading.Lock())
    assert status == P.FAILED
    ok, exc = S.decode_outcome(status, frames)
    assert isinstance(exc, SerializationError) and "lock" in str(exc)
