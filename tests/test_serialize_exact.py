"""serialize.py at its edges: which callables are re-used, buffer sizes, failure decoding, error texts.

Written against the survivors of a mutation run (tox -e mutation): each test
fails for some change of serialize.py that test_serialize.py lets through.
"""

from __future__ import annotations

import functools
import inspect
import pickle
import random
import threading
from concurrent.futures import CancelledError

import pytest

from scoopexec import errors
from scoopexec.mapping import _run_chunk, _run_chunk1
from scoopexec.wire import protocol
from scoopexec.wire import serialize as S
from tests import helpers

# abs()'s parameter is named 'x' up to Python 3.14 and 'number' from 3.15: the message names it
# as the running interpreter does.
ABS_PARAMETER = next(iter(inspect.signature(abs).parameters))


def test_module_functions_are_pickled_once_and_unpickled_once():
    assert S.dumps_function(helpers.mul) is S.dumps_function(helpers.mul)  # cached bytes
    data = S.dumps_function(helpers.mul)
    assert S.loads_function(data) is S.loads_function(bytearray(data)) is helpers.mul


def _named(p, name):
    """A partial named as DEAP's Toolbox.register names its aliases (or given some other attribute)."""
    p.__name__ = name
    p.__doc__ = None
    return p


@pytest.mark.parametrize(
    "fn",
    [abs, helpers.mul, helpers.MyObject, functools.partial(_run_chunk, helpers.mul),
     functools.partial(_run_chunk1, abs),
     # partials that bind only what no task can change (DEAP's toolbox makes one of each function)
     functools.partial(helpers.mul, 3), functools.partial(helpers.mul, y=(1, "a", None)),
     _named(functools.partial(helpers.mul), "evaluate"), functools.partial(helpers.mul, abs),
     functools.partial(_run_chunk, functools.partial(helpers.mul, 2.5)), random.random,
     functools.partial(helpers.mul, random.random), functools.partial(helpers.mul, len)],
)  # fmt: skip
def test_functions_classes_and_chunk_runners_are_reused(fn):
    data = S.dumps_function(fn)
    assert S.loads_function(data) is S.loads_function(data)


@pytest.mark.parametrize(
    "fn",
    [
        helpers.Tally(),  # an object with state: each task gets its own copy
        functools.partial(helpers.mul, [3]),  # a partial binding what a task may change
        functools.partial(helpers.mul, (1, [2])),  # ... inside a tuple
        functools.partial(helpers.mul, helpers.Tally()),  # ... an object with state
        _named(functools.partial(helpers.mul), [1]),  # ... as an attribute of the partial
        functools.partial(functools.partial(helpers.mul, [3])),  # ... a partial within
        functools.partial(helpers.mul, [].append),  # ... a built-in method of an object with state
        [].append,  # (the same, as the task's function)
        functools.partial(helpers.mul, b"x" * 5000),  # a task's data: made for one call
        functools.partial(helpers.mul, ((tuple(range(64)),) * 64,) * 64),  # more than it looks at
        functools.partial(_run_chunk, helpers.mul, chunk=[]),  # keywords bound
        functools.partial(_run_chunk, helpers.mul, []),  # two arguments bound
        functools.partial(_run_chunk, helpers.Tally()),  # a chunk runner around a stateful object
    ],
)
def test_other_callables_are_unpickled_for_every_task(fn):
    data = S.dumps_function(fn)
    assert S.loads_function(data) is not S.loads_function(data)


def test_buffers_from_oob_min_bytes_travel_out_of_band():
    assert len(S.dumps(pickle.PickleBuffer(bytearray(S.OOB_MIN)))) == 2
    assert len(S.dumps(pickle.PickleBuffer(bytearray(S.OOB_MIN - 1)))) == 1
    big = pickle.PickleBuffer(bytearray(b"x" * S.OOB_MIN))
    frames = S.dumps((lambda: None, big))  # a lambda: cloudpickle's path; the buffer still leaves
    assert len(frames) == 2 and bytes(S.loads(frames)[1]) == b"x" * S.OOB_MIN


def test_decode_call_uses_the_cached_function_bytes():
    frames = S.encode_call(helpers.mul, (6,), {"y": 7})
    fn, args, kwargs = S.decode_call(frames, fn_bytes=S.dumps_function(helpers.mul))
    assert fn is helpers.mul and args == (6,) and kwargs == {"y": 7}
    fn, args, kwargs = S.decode_call(S.encode_call(abs, (-1,), {}))
    assert (fn, args, kwargs) == (abs, (-1,), {})


def test_oversized():
    assert S.oversized([b"ab", memoryview(b"abcd")], 3) == 4
    assert S.oversized([b"ab", memoryview(b"abcd")], 4) == 0
    assert S.oversized([b"x" * 100], 0) == 0  # no limit
    assert S.frame_size(memoryview(bytearray(10))) == 10 and S.frame_size(b"abc") == 3


@pytest.mark.parametrize(
    "status, kind, expected",
    [
        (protocol.LOST, "size", errors.WorkerLostError),
        (protocol.FAILED, "size", errors.MessageTooLargeError),
        (protocol.FAILED, "call", errors.DeserializationError),
        (protocol.FAILED, "result", errors.SerializationError),
        (protocol.FAILED, "initializer", errors.InitializerError),
        (protocol.FAILED, "broken", errors.BrokenScoopExecutor),
    ],
)
def test_failures_become_the_documented_exceptions(status, kind, expected):
    frames = S.failure_frames(kind, "what happened", "Traceback: here")
    ok, exc = S.decode_outcome(status, frames)
    assert not ok and type(exc) is expected and str(exc) == "what happened"
    assert "Traceback: here" in str(exc.__cause__)


def test_other_failures_are_remote_errors_named_after_their_type():
    ok, exc = S.decode_outcome(protocol.FAILED, [protocol.dump_json({"type": "KeyError", "message": "k"})])
    assert not ok and isinstance(exc, errors.RemoteError) and exc.__cause__ is None
    assert "KeyError" in str(exc) and "k" in str(exc)
    ok, exc = S.decode_outcome(protocol.FAILED, [protocol.dump_json({"kind": "odd", "message": "m"})])
    assert isinstance(exc, errors.RemoteError) and "odd" in str(exc) and "m" in str(exc)
    ok, exc = S.decode_outcome(protocol.FAILED, [])
    assert isinstance(exc, errors.RemoteError) and str(exc) == "?: task failed"


def test_a_result_decodes_as_ok():
    assert S.decode_outcome(protocol.OK, S.dumps([1, "two"])) == (True, [1, "two"])


def test_a_cancelled_outcome_says_why():
    ok, exc = S.decode_outcome(protocol.CANCELLED, [])
    assert not ok and type(exc) is CancelledError
    assert str(exc) == "the broker dropped this task: the task or client that submitted it had gone away"


def test_a_raised_non_exception_becomes_a_remote_error():
    meta = protocol.dump_json({"type": "ValueError", "message": "boom"})
    ok, exc = S.decode_outcome(protocol.RAISED, [pickle.dumps(42), b"Traceback: there", meta])
    assert not ok and isinstance(exc, errors.RemoteError)
    assert isinstance(exc.__context__, TypeError)
    assert str(exc.__context__) == "unpickled a int, not an exception"
    assert "Traceback: there" in str(exc.__cause__)


def test_an_unloadable_result_says_what_to_do():
    ok, exc = S.decode_outcome(protocol.OK, [b"not a pickle"])
    assert not ok and isinstance(exc, errors.DeserializationError) and exc.__cause__ is not None
    assert str(exc).startswith("the result could not be unpickled here: UnpicklingError: ")
    assert str(exc).endswith("(the module defining its type must be importable in this process too)")


def test_encoded_exceptions_carry_their_qualified_type_and_message():
    status, frames = S.encode_exception(errors.RemoteError("T", "m"), "tb")
    assert status == protocol.RAISED
    meta = protocol.load_json(frames[2])
    assert meta["type"] == "scoopexec.errors.RemoteError" and "m" in meta["message"]
    status, frames = S.encode_exception(KeyError("k"), "tb")
    assert protocol.load_json(frames[2])["type"] == "KeyError"

    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    status, frames = S.encode_exception(Unpicklable("u"), "tb text")
    assert status == protocol.FAILED and frames[1] == b"tb text"
    assert protocol.load_json(frames[0])["type"].endswith("Unpicklable")


def test_error_texts_name_the_function_or_its_repr():
    lock = threading.Lock()

    def holds_a_lock():
        return lock

    with pytest.raises(errors.SerializationError) as info:
        S.encode_call(holds_a_lock, (), {})
    assert str(info.value).startswith(
        f"cannot send the function {__name__}.test_error_texts_name_the_function_or_its_repr.<locals>."
        "holds_a_lock (defined at "
    )
    assert "(a _thread.lock), which cannot be pickled: TypeError: " in str(info.value)
    assert str(info.value).endswith(
        "(a function defined at the top level of a module travels by name; a lambda, closure, method "
        "or callable object travels with everything it refers to, which must pickle too)"
    )

    class Holder:
        def __init__(self):
            self.lock = lock

        def __call__(self):
            return None

        def __repr__(self):
            return "<holder>"

    # a callable object is named by its type, not its repr (which may be huge)
    with pytest.raises(errors.SerializationError, match=r"^cannot send the function \S+Holder object to a worker"):
        S.encode_call(Holder(), (), {})
    with pytest.raises(errors.SerializationError) as info:
        S.encode_call(abs, (lock,), {})
    assert str(info.value).startswith(
        f"cannot send argument '{ABS_PARAMETER}' (position 0, a _thread.lock) of abs() to a worker"
    )
    status, frames = S.encode_result(lock, " on worker w1")
    assert status == protocol.FAILED
    assert protocol.load_json(frames[0])["message"].startswith(
        "the result (a _thread.lock) cannot be pickled on worker w1: TypeError: "
    )


def test_traceback_text_that_is_not_unicode_still_travels():
    bad = "line \ud800 end"  # a lone surrogate, as a traceback of undecodable bytes can hold
    assert S.failure_frames("k", "m", bad)[1] == b"line ? end"
    status, frames = S.encode_exception(ValueError("v"), bad)
    assert status == protocol.RAISED and frames[1] == b"line ? end"

    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    status, frames = S.encode_exception(Unpicklable("u"), bad)
    assert status == protocol.FAILED and frames[1] == b"line ? end"


def test_large_buffers_in_calls_and_exceptions_travel_out_of_band_and_back():
    blob = bytearray(b"y" * S.OOB_MIN)
    frames = S.encode_call(abs, (pickle.PickleBuffer(blob), 2), {"k": 3})
    assert len(frames) == 3  # function, arguments, the buffer
    _, args, kwargs = S.decode_call(frames)
    assert bytes(args[0]) == bytes(blob) and args[1:] == (2,) and kwargs == {"k": 3}

    status, frames = S.encode_exception(ValueError(pickle.PickleBuffer(blob), "x"), "tb")
    assert status == protocol.RAISED and len(frames) == 4  # pickle, traceback, meta, the buffer
    ok, exc = S.decode_outcome(status, frames)
    assert not ok and type(exc) is ValueError
    assert bytes(exc.args[0]) == bytes(blob) and exc.args[1] == "x"


def test_an_exception_that_cannot_be_loaded_keeps_its_type_name_and_message():
    meta = protocol.dump_json({"type": "pkg.Oops", "message": "it broke"})
    ok, exc = S.decode_outcome(protocol.RAISED, [b"not a pickle", b"tb", meta])
    assert not ok
    assert isinstance(exc, errors.RemoteError) and str(exc).startswith("pkg.Oops: it broke (raised by the task; ")
    assert "could not be rebuilt here" in str(exc)
    assert exc.type_name == "pkg.Oops" and exc.message == "it broke" and exc.traceback == "tb"
    _, exc = S.decode_outcome(protocol.RAISED, [b"not a pickle", b"tb", protocol.dump_json({})])
    assert str(exc).startswith("? (raised by the task; ") and exc.message == ""


def test_a_large_buffer_after_small_ones_leaves_in_every_pickler():
    # dumps() first pickles with no closure to collect buffers, and again when one turns out
    # large (serialize._OutOfBand): the small ones stay inside, the large one leaves, in both.
    small, big = pickle.PickleBuffer(bytearray(b"s" * 10)), pickle.PickleBuffer(bytearray(b"z" * S.OOB_MIN))
    for compact in (False, True):
        frames = S.dumps([small, big, 3], compact)
        assert len(frames) == 2 and len(frames[0]) < 200, compact
        out = S.loads(frames)
        assert (bytes(out[0]), bytes(out[1]), out[2]) == (b"s" * 10, b"z" * S.OOB_MIN, 3)


def test_one_int_argument_is_written_directly_and_reads_back_exactly():
    # One int argument of 32 bits gets its pickle written by struct (serialize._one_int), on
    # every path a task takes (submit, a map's items); beyond 32 bits, or a bool, dumps() writes it.
    fn_frame = S.encode_function(abs)
    for v in (0, 1, -1, 255, 256, 65536, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 10**30, True, False):
        for frames in (
            S.encode_call(abs, (v,), {}),
            S.encode_named(abs, (v,), {})[1],
            S.encode_named(abs, (v,), {})[1],  # (its function cached now)
            S.encode_task(fn_frame, (v,), {}),
            [fn_frame, *S.encode_args((v,), {})],
        ):
            fn, args, kwargs = S.decode_call(frames)
            assert (fn, args, kwargs) == (abs, (v,), {}) and type(args[0]) is type(v), v
            short = type(v) is int and -(2**31) <= v < 2**31
            assert (len(frames[1]) == 11) == short, (v, frames[1])  # PROTO, BININT, 4 bytes, 4 opcodes


def test_encode_named_refuses_a_frame_over_the_limit_on_every_path():
    # submit() leaves the size check to encode_named (max_message_size); for a function sent
    # before and one int argument it knows the size without a look: the limit still holds.
    fn_size = len(S.encode_function(divmod))
    S.encode_named(divmod, (1,), {})  # (cached now)
    for args, kwargs in [((1,), {}), ((1, 2), {}), (("x" * 50,), {}), (([1],), {}), ((1,), {"b": 2})]:
        for fn in (divmod, lambda a, b=0: a):  # cached by name, and pickled by value each time
            with pytest.raises(errors.MessageTooLargeError, match="max_message_size"):
                S.encode_named(fn, args, kwargs, len(S.encode_function(fn)) - 1)
            for limit in (-1, 0, 10**6):
                assert S.encode_named(fn, args, kwargs, limit)[1] == S.encode_call(fn, args, kwargs)
    big = len(S.encode_args((b"x" * 1000,), {})[0])  # (the largest frame is named)
    with pytest.raises(errors.MessageTooLargeError, match=f"a {big}-byte message"):
        S.encode_named(divmod, (b"x" * 1000,), {}, fn_size + 20)


def test_an_int_result_is_written_directly_and_reads_back_exactly():
    for v in (0, 1, -1, 255, 256, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 10**30, True, False):
        status, frames = S.encode_result(v)
        value = S.decode_outcome(status, frames)[1]
        assert status == protocol.OK and value == v and type(value) is type(v), v
        short = type(v) is int and -(2**31) <= v < 2**31
        assert (len(frames[0]) == 8) == short, v  # PROTO 5, BININT and its 4 bytes, STOP


def test_a_none_result_is_the_same_bytes_and_is_not_unpickled_again():
    # A worker sends None as dumps() would; the client reads those bytes as None without
    # unpickling (client/future.settle_all), and anything else as its pickle says.
    assert S.encode_result(None) == (protocol.OK, [pickle.dumps(None, 5)]) == (protocol.OK, [S.NONE_PICKLE])
    from scoopexec.client.future import ScoopFuture, settle_all

    values = [None, b"\x80\x05N.", 0, "", False]  # (the bytes of NONE_PICKLE, as a value: not None)
    futs = {tid: ScoopFuture(None, tid, "f") for tid in range(len(values))}
    items = [(tid, protocol.OK, S.encode_result(v)[1]) for tid, v in enumerate(values)]
    assert settle_all(dict(futs), items, cancels_dropped=True) == (0, 0)
    got = [futs[tid].result(0) for tid in range(len(values))]
    assert got == values and [type(g) for g in got] == [type(v) for v in values]


def test_plain_arguments_pickle_as_dumps_pickles_them():
    # Plain arguments (int, float, str, bytes, bool, None) and results are pickled straight away
    # (serialize._plain_args, encode_result): the same bytes as dumps(), a str naming __main__ included
    # (but for one int argument: see above).
    args = (1, 2.5, "__main__", b"x", None, True)
    assert S.encode_call(abs, args, {}) == [S.dumps_function(abs), S.dumps((args, None))[0]]
    assert S.encode_args(args, {}) == S.dumps((args, None))
    assert S.decode_call(S.encode_call(abs, args, {}))[1:] == (args, {})
    for value in args:  # a worker's result: the same shortcut (an int of 32 bits: see below)
        if type(value) is not int:
            assert S.encode_result(value) == (protocol.OK, S.dumps(value))
    main_cls = type("Local", (), {"__module__": "__main__"})
    frames = S.encode_call(abs, (1, main_cls), {})  # not plain: cloudpickle's path, by value
    assert S.decode_call(frames)[1][1].__name__ == "Local"


_EPHEMERAL = functools.partial(random.uniform, -1.0, 1.0)  # what a DEAP primitive set holds


def test_a_function_frame_holding_the_random_modules_generator_stays_the_same_bytes():
    # A script's function (by value) whose globals reach random.uniform: its frame no longer
    # holds the generator's state, which changed with every draw (workers kept no copy of it).
    import numpy as np

    def draw():
        return _EPHEMERAL() + np.random.random()

    draw.__module__ = "__main__"  # (pickled by value, as a script's function)
    np.random.random()  # (numpy loads numpy.random on first use, and cloudpickle lists it then)
    before = S._cloud_dumps(draw, frame=True)
    random.random(), np.random.random()
    assert S._cloud_dumps(draw, frame=True) == before
    copy = pickle.loads(before)
    assert copy.__globals__["_EPHEMERAL"].func.__self__ is random.random.__self__
    assert pickle.loads(S._cloud_dumps(np.random.random, frame=True)).__self__ is np.random.mtrand._rand
    other = random.Random(5)  # any other generator travels with its state, as before
    assert pickle.loads(S._cloud_dumps(other.random, frame=True))() == random.Random(5).random()
    # arguments are data: what they hold travels as it is
    assert pickle.loads(S._cloud_dumps(random.random)).__self__ is not random.random.__self__


class _Ambiguous:
    """A global such as a pandas DataFrame: its truth value raises (and here its size too)."""

    def __bool__(self):
        raise ValueError("the truth value is ambiguous")

    @property
    def nbytes(self):
        raise ValueError("no size")


_AMBIGUOUS = _Ambiguous()


def test_the_large_function_warning_survives_globals_that_raise():
    def reads():
        return _AMBIGUOUS

    with pytest.warns(errors.LargeFunctionWarning, match="is pickled by value"):
        S._warn_large(reads, 10**8)
