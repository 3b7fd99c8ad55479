"""Pickling calls, results and exceptions into frames."""

from __future__ import annotations

import dataclasses
import enum
import functools
import linecache
import pickle
import sys
import threading
import traceback
from typing import Any

import pytest

from scoopexec import RemoteError, SerializationError, autochunk
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


def test_numpy_scalars_travel_as_their_python_values():
    """NumPy 2 reduces a scalar to ``scalar(dtype, raw bytes)`` at ~3 us a value: a map chunk of
    300 DEAP individuals of 30 floats took ~27 ms to pickle (issue 17).  A scalar with an exact
    Python counterpart travels as ``numpy.float64(1.5)``: the same type and bits arrive."""
    np = pytest.importorskip("numpy")
    values = [
        np.float64(-0.0), np.float64("nan"), np.float64(0.1), np.float32(1.1), np.float16(0.1),
        np.int8(-3), np.int64(-5), np.uint64(2**64 - 1), np.bool_(True), np.complex64(1 + 2j),
        np.complex128(-1j), np.longdouble(1) / 3, np.datetime64("2020-01-01"), np.str_("x"),
    ]  # fmt: skip
    out = S.loads(S.dumps(values, compact=True))
    assert [type(v) for v in out] == [type(v) for v in values]
    assert [v.tobytes() for v in out] == [v.tobytes() for v in values]
    many = [np.float64(i) / 7 for i in range(1000)]
    for obj in (many, [type("Local", (), {"__module__": "__main__"}), *many]):  # C pickler, cloudpickle
        frames = S.dumps(obj, compact=True)
        assert b"multiarray" not in frames[0]  # NumPy's reconstructor (multiarray.scalar), once per value
        assert len(frames[0]) < 16 * 1000  # (NumPy's own reduction: ~19 bytes a value)
        assert S.loads(frames)[-1000:] == many


class _Genome(list):  # type: ignore[type-arg]
    """A list subclass reduced the default way, with state: the shape of a DEAP individual."""


class _OwnReduce(list):  # type: ignore[type-arg]
    def __reduce__(self):
        return (_OwnReduce, (list(self),), {"marked": True})


def test_list_subclass_of_one_scalar_type_travels_packed():
    np = pytest.importorskip("numpy")
    ind = _Genome(np.random.default_rng(1).random(30))
    ind.fitness = (3.5,)
    frames = S.dumps([ind, ind], compact=True)
    assert len(frames[0]) < 30 * 8 + 250  # the items' raw bytes (one by one: ~15 bytes each)
    a, b = S.loads(frames)
    assert a is b and type(a) is _Genome and a == ind and a.fitness == (3.5,)
    assert [type(x) for x in a] == [np.float64] * 30
    # mixed types, or too few items: one by one, every type kept
    for other in ([np.float64(1), 2.0, np.float32(3), np.float64(4), np.float64(5)], [np.int16(7)]):
        out = S.loads(S.dumps(_Genome(other), compact=True))
        assert [type(x) for x in out] == [type(x) for x in other] and out == other
    own = S.loads(S.dumps(_OwnReduce(np.arange(10.0)), compact=True))  # its own reduction is used
    assert own.marked and list(own) == list(range(10))


def test_map_chunks_and_their_results_are_pickled_compactly():
    """What the executors' map sends (encode_args with chunk=True) and what a chunk runner
    returns (encode_result of a partial of autochunk.run_timed or mapping's runners)."""
    np = pytest.importorskip("numpy")
    items = [(_Genome(np.arange(8.0)),) for _ in range(50)]
    assert b"multiarray" not in S.encode_args((items,), {}, None, 0, True)[0]
    runner = functools.partial(autochunk.run_timed, sum)
    status, frames = S.encode_result(autochunk.run_timed(sum, items), "", runner)
    assert status == P.OK and b"multiarray" not in frames[0]
    assert S.loads(frames)[1] == [np.float64(28.0)] * 50


class _Fitness:
    def __init__(self) -> None:
        self.values = (1.0,)


class _Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass
class _Point:
    x: int


class _Slots:
    __slots__ = ("a",)

    def __init__(self) -> None:
        self.a = 1


class _ByProtocol:
    def __reduce_ex__(self, protocol):  # type: ignore[no-untyped-def]
        return (_ByProtocol, (), {"protocol": protocol})


def _profiled_calls(fn: Any, name: str) -> int:
    """How many times a Python function named ``name`` is called while ``fn()`` runs."""
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        if event == "call" and frame.f_code.co_name == name:
            calls += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def test_compact_pickles_of_other_objects_are_the_standard_pickles():
    """The compact pickler's table keeps what it decided for a type (a chunk of DEAP individuals
    of ints paid ~2 us an individual for a Python lookup that raised KeyError each time): what
    it keeps must reduce exactly as the standard pickler does, the first time and after."""
    pytest.importorskip("numpy")
    import abc
    import collections
    import datetime
    import decimal
    import fractions

    genome = _Genome([1, 0, 1, 1, 0])
    genome.fitness = _Fitness()
    objects = [
        genome, _Genome([]), _Fitness(), _Slots(), _ByProtocol(), fractions.Fraction(1, 3),
        decimal.Decimal("1.5"), datetime.datetime(2020, 1, 2, 3, 4), collections.OrderedDict(a=1),
        collections.deque([1, 2]), _Colour.RED, _Point(1), abc.ABC, abc.ABCMeta, len,
        S.dumps, range(3), slice(1, 2), complex(1, 2), P.OK, type(None), NotImplemented,
    ]  # fmt: skip
    for _ in range(2):  # the first time decides, the second uses what was kept
        for obj in objects:
            assert S.dumps([obj, obj], compact=True)[0] == pickle.dumps([obj, obj], S.PROTOCOL), obj
    chunk = [(_Genome([1, 0] * 50),) for _ in range(200)]
    for (g,) in chunk:
        g.fitness = _Fitness()
    S.dumps(chunk, compact=True)
    assert _profiled_calls(lambda: S.dumps(chunk, compact=True), "__missing__") == 0


class _Registered:
    pass


def _rebuild_registered() -> str:
    return "by copyreg"


def test_a_copyreg_registration_after_a_compact_pickle_is_seen():
    """DEAP's creator and user code may call copyreg.pickle at any time."""
    pytest.importorskip("numpy")
    import copyreg

    assert isinstance(S.loads(S.dumps([_Registered()], compact=True))[0], _Registered)
    copyreg.pickle(_Registered, lambda obj: (_rebuild_registered, ()))
    try:
        assert S.loads(S.dumps([_Registered()], compact=True)) == ["by copyreg"]
    finally:
        del copyreg.dispatch_table[_Registered]
    assert isinstance(S.loads(S.dumps([_Registered()], compact=True))[0], _Registered)


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


def test_a_named_call_is_the_call_and_its_name_first_and_again():
    # submit() takes the function's name and its frames in one call (encode_named), from one
    # cache once the function was sent: the same bytes as describe() and encode_call().
    for fn, args, kwargs in [
        (divmod, (7, 2), {}),
        (divmod, (9, 4), {}),  # (cached now)
        (sorted, ([3, 1],), {"reverse": True}),
        (sorted, ([2, 5],), {}),  # not plain arguments: pickled as usual
        (sorted, ("ba",), {}),
        (lambda x: x, (1,), {}),  # pickled by value: not cached
    ]:
        assert S.encode_named(fn, args, kwargs) == (S.describe(fn), S.encode_call(fn, args, kwargs))
    fn, args, kwargs = S.decode_call(S.encode_named(divmod, (7, 2), {})[1])
    assert fn(*args, **kwargs) == (3, 1)
    with pytest.raises(SerializationError, match="arguments"):
        S.encode_named(divmod, (threading.Lock(),), {})


def test_a_maps_task_is_its_function_frame_and_its_arguments_frames():
    fn_frame = S.encode_function(divmod)
    cases = [((7, 2), {}, False), (([1, 2],), {}, True), ((7,), {"b": 2}, False), (([3],), {}, False)]
    for args, kwargs, chunk in cases:
        want = [fn_frame, *S.encode_args(args, kwargs, None, 0, chunk, "divmod")]
        assert S.encode_task(fn_frame, args, kwargs, 0, chunk, "divmod") == want
    with pytest.raises(SerializationError, match="item 4"):
        S.encode_task(fn_frame, (threading.Lock(),), {}, 4, False, "divmod")


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


def _define(source: str, filename: str, name: str, in_memory: bool) -> Any:
    """Compile ``source`` as file ``filename`` (as IPython does a cell) and return its ``name``."""
    if in_memory:  # IPython's way: an entry with no mtime, which linecache.checkcache keeps
        lines = source.splitlines(keepends=True)
        linecache.cache[filename] = (len(source), None, lines, filename)
    namespace: dict[str, Any] = {"__name__": "not_an_importable_module"}  # so it travels by value
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


_CELL = '''\
import math

def first(x):
    # the first function of the cell
    return math.sqrt(x) / 0

def second(x):
    return first(x) + 1
'''


def test_code_sent_by_value_keeps_its_file_name_and_lines():
    fn = _define(_CELL, "/nonexistent/analysis.py", "second", in_memory=False)
    copy = S.loads(S.dumps(fn))
    assert copy.__code__.co_filename == "/nonexistent/analysis.py"  # cloudpickle alone: <dynamic-code>
    assert copy.__code__.co_firstlineno == 7
    with pytest.raises(ZeroDivisionError) as info:
        copy(4.0)
    frames = [(f.filename, f.lineno) for f in traceback.extract_tb(info.value.__traceback__)[1:]]
    assert frames == [("/nonexistent/analysis.py", 8), ("/nonexistent/analysis.py", 5)]


def test_source_that_exists_only_in_memory_travels_with_the_function_into_linecache():
    name = "<ipython-input-7-test-serialize>"
    fn = _define(_CELL, name, "first", in_memory=True)
    data = S.dumps(fn)
    del linecache.cache[name]  # as on a worker, which never saw the cell
    copy = S.loads(data)
    assert linecache.getline(name, 5) == "    return math.sqrt(x) / 0\n"
    assert linecache.getline(name, 3) == "def first(x):\n"
    linecache.checkcache(name)  # what traceback does first: the entry must survive it
    with pytest.raises(ZeroDivisionError) as info:
        copy(4.0)
    assert "    return math.sqrt(x) / 0\n" in "".join(traceback.format_tb(info.value.__traceback__))
    # A second function of the same cell adds its lines; the first one's stay.
    S.loads(S.dumps(_define(_CELL, name, "second", in_memory=True)))
    assert linecache.getline(name, 8) == "    return first(x) + 1\n"
    assert linecache.getline(name, 5) == "    return math.sqrt(x) / 0\n"
    del linecache.cache[name]


def test_source_on_disk_and_huge_source_do_not_travel(tmp_path):
    path = tmp_path / "on_disk.py"
    path.write_text(_CELL)
    fn = _define(_CELL, str(path), "first", in_memory=False)
    assert b"the first function of the cell" not in S.dumps(fn)[0]  # a worker reads the file itself
    name = "<ipython-input-8-huge>"
    huge = "def big():\n" + "".join(f"    x{i} = {i}  # {'-' * 60}\n" for i in range(2000)) + "    return 1\n"
    assert len(huge) > S.SOURCE_MAX
    data = S.dumps(_define(huge, name, "big", in_memory=True))
    assert len(data[0]) < S.SOURCE_MAX  # bounded: the lines stayed behind
    del linecache.cache[name]
    assert S.loads(data)() == 1 and not linecache.getlines(name)


class _Proxy:
    def __call__(self, x):
        return x

    def __getattr__(self, name):  # (a proxy that fails on what it does not know)
        raise RuntimeError(f"no attribute {name}")


def test_describe_names_a_callable_whose_attributes_raise_by_its_type():
    # Pool's maps name their function before submitting anything: a proxy object whose
    # attributes raise must not make them fail half-registered (imap's feeder died: a hang).
    assert S.describe(_Proxy()).endswith("test_serialize._Proxy object")
