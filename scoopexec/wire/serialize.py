"""Turning calls, results and exceptions into frames, and back.

Objects are pickled with protocol 5.  Buffers of at least ``OOB_MIN`` bytes
(NumPy arrays, anything that pickles to a ``pickle.PickleBuffer``) leave the
pickle as separate frames, which ZeroMQ sends without copying and which the
receiver hands straight back to ``pickle.loads`` (the resulting arrays are
writable and share the received frame's memory).  ``bytes`` and ``bytearray``
stay inside the pickle (the pickler writes exact ``bytes`` itself, without
asking a reducer; a ``bytearray`` could be sent apart, and is not).

The standard C pickler is tried first because it is several times faster
than cloudpickle on plain data; cloudpickle takes over whenever the object
refers to ``__main__`` (whose top-level names might not exist on a worker)
or holds something the standard pickler cannot handle (lambdas, closures,
interactively defined classes).  The exception is a class of the script that
the pool's workers inherited, unchanged (a pool forked from the client): it
travels by reference, in the standard pickler (wire/mainclasses.py).

Code that cloudpickle sends by value keeps its file name and line numbers
(cloudpickle 3.1 would rename it ``<dynamic-code>``), so that tracebacks on
workers point at the user's file; when that file exists only in this
process's memory (a notebook cell, an IPython session), the function's own
lines travel with it and enter the worker's ``linecache``.

When something cannot be pickled, the error names it: the function, which
argument (position or keyword, or which item of a map), the part of it that
failed and its type, and the line of the user's code that submitted it.
"""

from __future__ import annotations

import concurrent.futures as cf
import copyreg
import functools
import inspect
import io
import itertools
import linecache
import operator
import os
import pickle
import random
import re
import struct
import sys
import traceback
import types
import warnings
import weakref
from collections import ChainMap
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from typing import Any

import cloudpickle

from .. import errors
from ..errors import DeserializationError, RemoteError, SerializationError, remote_traceback
from . import byvalue, fnframes, mainclasses, protocol

PROTOCOL = 5
OOB_MIN = 64 * 1024  # buffers this large or larger travel as their own frames

Frames = list[Any]  # bytes, pickle.PickleBuffer or zmq.Frame

_CACHEABLE = (types.FunctionType, types.BuiltinFunctionType, type)
_fn_cache: dict[Any, bytes] = {}
_loaded_fns: dict[bytes | tuple[int, bytes], Any] = {}
_CACHE_MAX = 2048


# ------------------------------------------------- code by value, with its source
SOURCE_MAX = 64 * 1024  # characters of in-memory source that may travel with one function
_cloud_code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _reduce_code(code: types.CodeType) -> tuple[Any, ...]:
    """cloudpickle's reduction of a code object, with the real file name (and maybe source)."""
    rv = _cloud_code_reduce(code)
    ctor, args = rv[0], rv[1]
    name = code.co_filename
    if name not in args:  # cloudpickle replaced it (3.1: "<dynamic-code>"): put it back
        for i, arg in enumerate(args):
            if type(arg) is str and arg == "<dynamic-code>":
                args = (*args[:i], name, *args[i + 1 :])
                break
    source = _memory_source(code)
    if source is None:
        return (ctor, args)
    return (_code_with_source, (ctor, args, *source))


def _memory_source(code: types.CodeType) -> tuple[int, list[str]] | None:
    """(first line, lines) of ``code`` when its file exists only in memory here, else None.

    Source that is a file is read by the worker as for any module; a notebook
    cell or an interactive session lives in this process's ``linecache`` only.
    """
    name = code.co_filename
    if not name or os.path.isfile(name):
        return None
    lines = linecache.getlines(name)
    if not lines:
        return None
    first = code.co_firstlineno
    span = lines[first - 1 : _last_line(code)]
    if not span or sum(len(line) for line in span) > SOURCE_MAX:
        return None
    return first, span


def _last_line(code: types.CodeType) -> int:
    last = code.co_firstlineno
    for _, _, line in code.co_lines():
        if line is not None and line > last:
            last = line
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            last = max(last, _last_line(const))
    return last


def _code_with_source(ctor: Any, args: tuple[Any, ...], first: int, lines: list[str]) -> Any:
    """Rebuild a code object (on a worker) and let ``linecache`` show its source lines."""
    code = ctor(*args)
    remember_source(code.co_filename, first, lines)
    return code


def remember_source(filename: str, first: int, lines: list[str]) -> None:
    """Enter ``lines`` (starting at line ``first``) into linecache for ``filename``.

    The entry has no modification time, so ``linecache.checkcache`` keeps it
    (as IPython does for its cells); lines of other functions of the same
    file, received earlier, stay.
    """
    entry = linecache.cache.get(filename)
    known = list(entry[2]) if entry is not None and len(entry) == 4 and entry[1] is None else []
    end = first - 1 + len(lines)
    if len(known) < end:
        known.extend(["\n"] * (end - len(known)))
    known[first - 1 : end] = lines
    linecache.cache[filename] = (sum(len(line) for line in known), None, known, filename)


# ------------------------------------------------------------------ NumPy scalars
# NumPy 2 reduces each scalar to ``scalar(dtype, raw bytes)``, which costs ~3 us a value to
# pickle: a map chunk of 300 DEAP individuals built from an array's rows (lists of 30
# numpy.float64) took ~27 ms, several times what evaluating them takes.  Here, in the pickles of
# a map's chunks and their results (dumps(compact=True); the user's own pickles are left alone):
# * a scalar with an exact Python counterpart travels as its type called on that value
#   (``numpy.float64(1.5)``): the same type and bits arrive, ~7x faster, in fewer bytes;
# * a list subclass reduced the default way (a DEAP individual) whose items are all scalars of
#   one such type travels as the raw bytes of those items, rebuilt by rebuild_scalar_list;
# Extended precision, dates and strings keep NumPy's own reduction.  Plain lists are pickled by
# the C pickler itself (no hook), their scalars one by one.
_EXACT_SCALARS = {
    bool: ("bool_",),
    int: ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
    float: ("float16", "float32", "float64"),
    complex: ("complex64", "complex128"),
}
PACK_MIN = 4  # items of a list subclass from which its scalars travel packed


def _scalar_reducer(tp: type, python: type) -> Callable[[Any], tuple[Any, tuple[Any]]]:
    def reduce(value: Any) -> tuple[Any, tuple[Any]]:
        return tp, (python(value),)

    return reduce


_packable: dict[type, Any] = {}  # NumPy scalar type -> its little-endian dtype
_LIST_REDUCTION = (object.__reduce_ex__, object.__reduce__)


def _reduce_list(obj: list[Any]) -> Any:
    """A list subclass instance, its scalars packed when they are all of one exact type (its
    items as its own ``__iter__`` gives them, as the default reduction takes them)."""
    dtype = _packable.get(type(next(iter(obj), None)))  # type: ignore[arg-type]
    if dtype is None:  # the first item is no NumPy scalar (a list of ints, of floats): as usual
        return obj.__reduce_ex__(PROTOCOL)
    items = list(obj)
    n = len(items)
    tp = type(items[0])
    if n >= PACK_MIN and list(map(type, items)) == [tp] * n:
        np = sys.modules["numpy"]
        raw = np.fromiter(items, dtype, n).tobytes()
        return rebuild_scalar_list, (type(obj), tp, raw), obj.__getstate__()
    return obj.__reduce_ex__(PROTOCOL)


def _deap_array(tp: type) -> bool:
    """Whether ``tp`` is a DEAP creator class over numpy.ndarray, reduced as DEAP reduces them: the
    class called on ``list(individual)``, then its ``__dict__`` (its fitness)."""
    reduce = getattr(tp, "__reduce__", None)
    np = sys.modules.get("numpy")
    return (
        getattr(reduce, "__qualname__", "") == "_numpy_array.__reduce__"
        and getattr(reduce, "__module__", "") == "deap.creator"
        and np is not None
        and getattr(tp, "__reduce_ex__", None) is np.ndarray.__reduce_ex__  # (else it is the class's own)
    )


def _reduce_deap_array(obj: Any) -> Any:
    """A DEAP individual over numpy.ndarray (_deap_array) as its bytes, dtype and shape: DEAP's
    reduction to ``list(obj)`` pickled every element as a NumPy scalar of its own, ~15 us an
    individual of 30 floats (DEAP's eda/emna with ``scoop_map``: 2.9x the built-in map's time).
    Arrays of another kind, of another byte order, or empty (which list() does not rebuild as
    they were) take DEAP's way."""
    dtype = obj.dtype
    if dtype.kind not in "biufc" or not dtype.isnative or obj.ndim == 0 or obj.size == 0:
        return obj.__reduce__()
    return rebuild_deap_array, (type(obj), obj.tobytes(), dtype.str, obj.shape), obj.__dict__


def rebuild_deap_array(cls: type, raw: bytes, dtype: str, shape: tuple[int, ...]) -> Any:
    """Unpickle what _reduce_deap_array made: what ``cls(list_of_its_elements)`` makes (a new
    C-ordered array of that dtype viewed as ``cls``, then DEAP's __init__, which sets a new
    fitness; the pickle's state replaces it after)."""
    import numpy  # (the individual's class is numpy's: NumPy is imported already)

    obj: Any = numpy.frombuffer(raw, numpy.dtype(dtype)).reshape(shape).copy().view(cls)
    cls.__init__(obj, obj)  # type: ignore[misc]
    return obj


def rebuild_scalar_list(cls: type[list[Any]], tp: type, raw: bytes) -> list[Any]:
    """Unpickle what _reduce_list packed: ``cls`` made as the default reduction makes it (no
    ``__init__``), then extended with the scalars (the state is set by the pickle after)."""
    import numpy  # (the pickle named tp: NumPy is imported already)

    obj = cls.__new__(cls)
    obj.extend(list(numpy.frombuffer(raw, numpy.dtype(tp).newbyteorder("<"))))
    return obj


# What the C pickler does with an object whose type has no entry in its dispatch table and is no
# class: calls its __reduce_ex__ with the protocol.  Written as a C callable, so that an entry
# holding it costs no Python frame.
_default_reduce = operator.methodcaller("__reduce_ex__", PROTOCOL)


class _Dispatch(dict[type, Any]):
    """The pickler's table: NumPy's scalar types, then (``copyreg_too``) copyreg's table as it is
    when a type is looked up (``copyreg.pickle`` may register more at any time: DEAP's creator
    does on import), then list subclasses reduced the default way (see _reduce_list).

    The pickler looks every object's type up here (its own table replaces copyreg's), and a
    type found nowhere made ``__missing__`` run and raise KeyError for each such object: ~2 us
    an individual for a map chunk of DEAP individuals, most of the chunk's pickling.  With
    ``copyreg_too``, what ``__missing__`` decides for a type is therefore kept: a list subclass
    gets _reduce_list, any other type that is no class and has no copyreg entry gets
    _default_reduce (what the pickler would do anyway).  copyreg's entries are not kept, and
    ``current()`` forgets the rest when copyreg's table has grown, so a later ``copyreg.pickle``
    is still seen.  cloudpickle's table (``copyreg_too=False``) keeps nothing: it comes first
    in a chain with cloudpickle's own reductions, which a kept default would hide."""

    def __init__(self, copyreg_too: bool) -> None:
        super().__init__()
        self.copyreg_too = copyreg_too
        self.kept: list[type] = []  # the types whose entries __missing__ added
        self.copyreg_size = len(copyreg.dispatch_table)

    def current(self) -> None:
        """Forget what was kept if copyreg registered something since (once per pickle)."""
        if len(copyreg.dispatch_table) != self.copyreg_size:
            for tp in self.kept:
                self.pop(tp, None)
            self.kept.clear()
            self.copyreg_size = len(copyreg.dispatch_table)

    def __missing__(self, tp: type) -> Any:
        if self.copyreg_too:
            found = copyreg.dispatch_table.get(tp)
            if found is not None:
                return found
        if (
            issubclass(tp, list)
            and (tp.__reduce_ex__, tp.__reduce__) == _LIST_REDUCTION
            and not hasattr(tp, "__getnewargs_ex__")
            and not hasattr(tp, "__getnewargs__")
        ):
            found = _reduce_list
        elif self.copyreg_too and _deap_array(tp):
            found = _reduce_deap_array
        elif self.copyreg_too and not issubclass(tp, type) and len(self.kept) < _KEPT_MAX:
            found = _default_reduce
        else:
            raise KeyError(tp)
        if self.copyreg_too and len(self.kept) < _KEPT_MAX:
            self[tp] = found
            self.kept.append(tp)
        return found


_KEPT_MAX = 4096  # types _Dispatch keeps at most (a program that makes classes without end)
_scalars = _Dispatch(copyreg_too=True)
_cloud_scalars = _Dispatch(copyreg_too=False)  # cloudpickle's own table holds copyreg's
_scalars_of: Any = None  # the numpy module _scalars was filled from


class _ScalarPickler(pickle.Pickler):
    dispatch_table = _scalars


def _numpy_scalars() -> bool:
    """True when NumPy is imported here (then _scalars holds its scalar types)."""
    global _scalars_of
    np = sys.modules.get("numpy")
    if np is None:
        return False
    if _scalars_of is not np:
        for python, names in _EXACT_SCALARS.items():
            for tp in (getattr(np, name, None) for name in names):
                if isinstance(tp, type):
                    _scalars[tp] = _cloud_scalars[tp] = _scalar_reducer(tp, python)
                    _packable[tp] = np.dtype(tp).newbyteorder("<")
        _scalars_of = np
    return True


def _reduce_generator(gen: Any) -> Any:
    """A random generator as pickle reduces it, but for the ``random`` module's own and NumPy's
    legacy global one (_SHARED_GENERATORS), which travel by name.

    ``random.uniform`` and ``numpy.random.random`` are methods of those objects: pickled by
    value, a task calling one drew from a copy of this process's state as it was when pickled
    (the same numbers in every task, as ProcessPoolExecutor's do), and the pickle changed with
    every draw here, so workers could never keep it (a DEAP toolbox whose primitive set has an
    ephemeral constant, ``partial(random.uniform, -1, 1)``, was sent and unpickled again at each
    generation).  By name, it draws from its worker's generator, as a task calling
    ``random.uniform()`` itself does: a seeded map's item from its own stream (seeding.py)."""
    name = shared_generator(gen)
    return name if name is not None else gen.__reduce_ex__(PROTOCOL)  # (a name: a global of its module)


def shared_generator(obj: Any) -> str | None:
    """The name of ``obj`` in its module when it is one of the shared generators (random's
    ``_inst``, NumPy's ``_rand``), else None: what function frames (and journal keys) name."""
    if _numpy_generator_of is None:
        _note_numpy_generator()
    shared = _SHARED_GENERATORS.get(type(obj))
    return shared[1] if shared is not None and shared[0] is obj else None


# type -> (the module's shared instance, its name in the module of the type); NumPy's once imported
_SHARED_GENERATORS: dict[type, tuple[Any, str]] = {
    random.Random: (random.random.__self__, "_inst")  # type: ignore[attr-defined]  # (random._inst)
}
_numpy_generator_of: Any = None  # the numpy.random.mtrand module _SHARED_GENERATORS knows


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's pickler, but code keeps its file name (see _reduce_code), and NumPy
    scalars travel as their Python values (see _Dispatch)."""

    dispatch_table = ChainMap(
        {types.CodeType: _reduce_code}, _cloud_scalars, cloudpickle.Pickler.dispatch_table
    )


class _FramePickler(_Pickler):
    """_Pickler for function frames: the shared random generators travel by name (see
    _reduce_generator).  Arguments and results are data: what they hold travels as it is."""

    dispatch_table = ChainMap({random.Random: _reduce_generator}, *_Pickler.dispatch_table.maps)


def _note_numpy_generator() -> None:
    """Add NumPy's legacy global RandomState to _SHARED_GENERATORS once numpy.random is loaded."""
    global _numpy_generator_of
    mtrand = sys.modules.get("numpy.random.mtrand")
    if mtrand is None or mtrand is _numpy_generator_of:
        return
    gen = getattr(mtrand, "_rand", None)
    if gen is not None and type(gen).__module__ == mtrand.__name__:
        _SHARED_GENERATORS[type(gen)] = (gen, "_rand")
        _FramePickler.dispatch_table.maps[0][type(gen)] = _reduce_generator
    _numpy_generator_of = mtrand  # (last: a pickle made meanwhile in another thread looks again)


def _cloud_dumps(
    obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], bool] | None = None, frame: bool = False
) -> bytes:
    """cloudpickle's pickle of ``obj``; ``frame``: a function frame's (_FramePickler)."""
    pickler: type[_Pickler] = _Pickler
    if frame:
        if _numpy_generator_of is None:
            _note_numpy_generator()  # (its type in _FramePickler's table before the pickle begins)
        pickler = _FramePickler
    with io.BytesIO() as fh:
        pickler(fh, PROTOCOL, buffer_callback=buffer_callback).dump(obj)
        return fh.getvalue()


class _OverridingPickler(_Pickler):
    def __init__(self, fh: Any, override: Callable[[Any], Any], buffer_callback: Callable[..., Any]) -> None:
        super().__init__(fh, PROTOCOL, buffer_callback=buffer_callback)
        self._override = override

    def reducer_override(self, obj: Any) -> Any:
        found = self._override(obj)
        return super().reducer_override(obj) if found is None else found


def dumps_overriding(
    obj: Any, override: Callable[[Any], Any], buffer_callback: Callable[[pickle.PickleBuffer], Any]
) -> bytes:
    """``obj`` pickled as task arguments are (cloudpickle, buffers out of band), but each object
    goes to ``override`` first: its reduce tuple, or None for the usual way (the joblib backend's
    memory maps of arrays)."""
    with io.BytesIO() as fh:
        _OverridingPickler(fh, override, buffer_callback).dump(obj)
        return fh.getvalue()


_BY_VALUE: Any = byvalue.BY_VALUE_MODULES  # cloudpickle's registry of modules pickled by value


class _OutOfBand(Exception):
    """A buffer large enough to travel as its own frame: dumps() pickles again, collecting them."""


def _in_band(buf: pickle.PickleBuffer) -> bool:
    if buf.raw().nbytes >= OOB_MIN:
        raise _OutOfBand
    return True  # small: stays inside the pickle


def _pickled(obj: Any, compact: bool, buffers: Callable[[pickle.PickleBuffer], bool]) -> bytes:
    """The standard library's pickle of ``obj`` (NumPy scalars compact if asked and loaded),
    each buffer handed to ``buffers`` (True: it stays inside the pickle)."""
    if compact and _numpy_scalars():
        _scalars.current()
        with io.BytesIO() as fh:
            _ScalarPickler(fh, PROTOCOL, buffer_callback=buffers).dump(obj)
            return fh.getvalue()
    return pickle.dumps(obj, PROTOCOL, buffer_callback=buffers)


class _ReferencePickler(pickle.Pickler):
    """The standard pickler, but the script's classes a pool's workers inherited travel by
    reference (wire/mainclasses.py)."""

    def __init__(
        self, fh: Any, names: mainclasses.Names, compact: bool, buffers: Callable[[pickle.PickleBuffer], bool]
    ) -> None:
        super().__init__(fh, PROTOCOL, buffer_callback=buffers)
        if compact:
            self.dispatch_table = _scalars
        self._names = names
        self.blobs: list[bytes] = []  # those written: the only "__main__" the pickle may hold

    def reducer_override(self, obj: Any) -> Any:
        cls = obj.__class__
        if cls is type and obj.__module__ == "__main__":
            found = self._names.reference(obj, _cloud_dumps)
            if found is None:
                raise _ByValue  # (not listed, or changed: cloudpickle's, without finishing this)
            self.blobs.append(found[1][2])
            return found
        if cls is types.FunctionType and obj.__module__ == "__main__":
            raise _ByValue
        return NotImplemented


class _ByValue(Exception):
    """Something of the script in a pickle by reference that must go by value."""


def _by_reference(
    obj: Any, names: mainclasses.Names, compact: bool, buffers: Callable[[pickle.PickleBuffer], bool]
) -> bytes | None:
    """``obj`` pickled with the script's classes by reference; None when something of the script
    is still in it by name (a function, a class the table does not list or that changed)."""
    compact = compact and _numpy_scalars()  # (as _pickled: _scalars only while NumPy is loaded)
    if compact:
        _scalars.current()
    with io.BytesIO() as fh:
        p = _ReferencePickler(fh, names, compact, buffers)
        p.dump(obj)
        data = fh.getvalue()
    if data.count(b"__main__") != sum(blob.count(b"__main__") for blob in p.blobs):
        return None
    return data


def dumps(obj: Any, compact: bool = False, names: mainclasses.Names | None = None) -> Frames:
    """Pickle ``obj``; return [pickle, *out-of-band buffers].

    ``compact``: NumPy scalars travel compactly (see _Dispatch); for a map's chunks and their
    results, where many items travel together: the pickler it takes costs ~0.6 us more than
    ``pickle.dumps``, more than a small task's whole pickle, so single tasks go without.
    ``names``: the table of the pool's workers' inherited classes of the script, which then
    travel by reference (wire/mainclasses.py); else those go by value.
    """
    # On every task and result: no closure to collect buffers until one turns out large.
    try:
        data = _standard(obj, compact, names, _in_band)
    except _OutOfBand:
        return _dumps_out_of_band(obj, compact, names=names)
    if data is not None:
        return [data]
    return _dumps_out_of_band(obj, compact, cloud=True)


def _standard(
    obj: Any,
    compact: bool,
    names: mainclasses.Names | None,
    buffers: Callable[[pickle.PickleBuffer], bool],
    bufs: list[pickle.PickleBuffer] | None = None,
) -> bytes | None:
    """The standard pickler's pickle of ``obj``, or with ``names`` the script's classes by
    reference; None when cloudpickle's is needed.  ``bufs``: what ``buffers`` collected, emptied
    before a second try.  _OutOfBand (from ``buffers``) goes through."""
    try:
        data: bytes | None = _pickled(obj, compact, buffers)
    except _OutOfBand:
        raise
    except Exception:
        data = None  # (a class of the script whose name is now another's, say: by reference still)
    if _BY_VALUE:
        return None
    # (find(), not ``in``: bytes.__contains__ first tries the needle as an int, an exception)
    if data is not None and data.find(b"__main__") < 0:
        return data
    if not names:
        return None
    if bufs is not None:
        bufs.clear()
    try:
        return _by_reference(obj, names, compact, buffers)
    except _OutOfBand:  # (past where the standard pickle failed)
        raise
    except Exception:
        return None


def _dumps_out_of_band(
    obj: Any, compact: bool, cloud: bool = False, names: mainclasses.Names | None = None
) -> Frames:
    """dumps() of what holds a large buffer (it travels as its own frame), or needs cloudpickle."""
    bufs: list[pickle.PickleBuffer] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes >= OOB_MIN:
            bufs.append(buf)
            return False
        return True  # small: stays inside the pickle

    if not cloud:
        data = _standard(obj, compact, names, keep, bufs)
        if data is not None:
            return [data, *bufs]
        bufs.clear()
    data = _cloud_dumps(obj, keep)
    return [data, *bufs]


def loads(frames: Sequence[Any]) -> Any:
    """Inverse of dumps: frames[0] is the pickle, the rest its buffers."""
    return pickle.loads(frames[0], buffers=frames[1:])


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Pickle a callable; module-level functions are cached (they pickle by name).  A frame
    of its large buffers too is packed (wire/fnframes.py: PACKED)."""
    parts = _function_parts(fn)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _function_parts(fn: Callable[..., Any]) -> list[Any]:
    """dumps_function()'s frame in parts: [pickle], or a packed frame's [head, pickle, *buffers]."""
    kind = type(fn)
    cacheable = kind in _CACHEABLE and (kind is not types.BuiltinFunctionType or _module_level(fn))
    if cacheable:
        cached = _fn_cache.get(fn)
        if cached is not None:
            return [cached]
        kept = byvalue.lookup(fn)  # (a script's function, pickled by value before: byvalue.py)
        if kept is not None:
            return [kept]
        named = _pickled_by_name(fn)
        if named is not None:
            return [named]
    elif kind.__name__ == "TimeLimit" and kind.__module__ in _LIMITS:
        return _limited_parts(fn)
    plan = byvalue.prepare(fn) if cacheable else None  # (what the pickle is made from, to keep it)
    parts = _cloud_parts(fn)
    if plan is not None and len(parts) == 1 and len(parts[0]) < fnframes.MIN_SIZE:
        byvalue.keep(fn, parts[0], plan)  # (a large one has its own way: wire/fnframes.py)
    return parts


def _module_level(fn: Any) -> bool:
    """Whether a built-in function is a module's (``len``, ``math.sqrt``), not a method bound to an
    object (``config.get``), whose pickle holds the object as it is now."""
    bound = getattr(fn, "__self__", None)
    return bound is None or type(bound) is types.ModuleType


def _pickled_by_name(fn: Any) -> bytes | None:
    """The standard pickle of ``fn`` when it is by name (kept for good, in _fn_cache), else None."""
    try:
        data = pickle.dumps(fn, PROTOCOL)
    except Exception:
        return None
    if b"__main__" in data or _BY_VALUE:
        return None
    if len(_fn_cache) >= _CACHE_MAX:
        _fn_cache.clear()
    _fn_cache[fn] = data
    return data


def _cloud_parts(obj: Any) -> list[Any]:
    """``obj`` pickled by cloudpickle, in parts: [pickle], or [head, pickle, *buffers] when large
    buffers travel after it (wire/fnframes.py)."""
    raws: list[memoryview] = []

    def apart(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes >= OOB_MIN:
            raws.append(raw)
            return False
        return True  # small: stays inside the pickle

    data = _cloud_dumps(obj, apart, frame=True)
    if len(raws) > fnframes.MAX_BUFFERS:  # (more than a worker takes: in band, as before)
        return [_cloud_dumps(obj, frame=True)]
    return [fnframes.pack_head(data, raws), data, *raws] if raws else [data]


# id(function) -> (a weak reference to it, (type, value) of the limit's seconds, what the limit's
# pickle was made from (the function's pickle by name, or byvalue's plan), the limit's pickle)
_limited: dict[int, tuple[Any, tuple[type, Any], Any, bytes]] = {}


def _forget_limited(key: int, _ref: Any = None) -> None:
    _limited.pop(key, None)


def _limited_parts(limit: Any) -> list[Any]:
    """_function_parts() of a TimeLimit (worker/limits.py), which every submit of a pool with a
    task_timeout makes anew around its function: its pickle is made again only when the
    function's own pickle would be (by name: never; by value: when wire/byvalue.py says
    something it was made from changed).

    Pickled each time, the TimeLimit held such a pool's submits of a module's function to about
    a third of its rate without a limit, and of a script's function to a fifth.
    """
    fn, seconds = limit.fn, limit.seconds
    if _BY_VALUE or type(fn) not in (types.FunctionType, type) or type(seconds) not in (int, float):
        return _cloud_parts(limit)
    key = (type(seconds), seconds)  # (30 and 30.0 pickle apart)
    hit = _limited.get(id(fn))
    if (
        hit is not None
        and hit[0]() is fn
        and hit[1] == key
        and (type(hit[2]) is bytes or byvalue.holds(hit[2]))
    ):
        return [hit[3]]
    made_from: Any = _fn_cache.get(fn) or _pickled_by_name(fn) or byvalue.prepare(fn)
    parts = _cloud_parts(limit)
    if made_from is None or len(parts) != 1 or len(parts[0]) >= fnframes.MIN_SIZE:
        return parts
    if type(made_from) is bytes or byvalue.holds(made_from):  # (unchanged while it was pickled)
        if len(_limited) >= _CACHE_MAX:
            _limited.clear()
        drop = functools.partial(_forget_limited, id(fn))  # (its entry goes when it dies)
        _limited[id(fn)] = (weakref.ref(fn, drop), key, made_from, parts[0])
    return parts


def loads_function(data: bytes | memoryview, scope: int | None = None, key: Any = None) -> Any:
    """Unpickle a callable, re-using the object for identical bytes when that is safe.

    Functions, built-ins and classes are re-used (a map's chunks send the same
    bytes again and again), and partials of them that bind only small immutable
    values (_reusable); other callables -- objects with state, partials binding
    them or a task's data -- are unpickled afresh for every task, as each task
    would see them with any other executor.  ``scope``: re-used only within it (a
    pool whose script functions get its initializer's globals: worker/setup.py).
    ``key``: what stands for the bytes (a large frame's, wire/fnframes.py: set-up
    id and head, so within its client's set-up already).
    """
    if key is not None:
        return _loads_large(data, key)
    data = data if type(data) is bytes else bytes(data)
    key = data if scope is None else (scope, data)
    fn = _loaded_fns.get(key)
    if fn is None:
        fn = _unpickle_function(data)
        if _reusable(fn) and len(data) < fnframes.MIN_SIZE:  # (a large one unmarked: made for one call)
            if len(_loaded_fns) >= _CACHE_MAX:
                _loaded_fns.clear()
            _loaded_fns[key] = fn
    return fn


_loaded_large = fnframes.Held()  # loads_function's for large frames, by key: bounded as a worker's frames


def _loads_large(data: Any, key: Any) -> Any:
    entry = _loaded_large.get(key)
    if entry is not None:
        return entry[1]
    fn = _unpickle_function(data)
    if _reusable(fn):
        _loaded_large.add(key, len(data), fn)  # (its pickle's size: what its globals hold, roughly)
    return fn


def _unpickle_function(data: Any) -> Any:
    """The callable of a function frame: a pickle, or a packed one (fnframes.unpack)."""
    if len(data) and data[0] == fnframes.PACKED:
        pickled, buffers = fnframes.unpack(data)
        return pickle.loads(pickled, buffers=buffers)
    return pickle.loads(data)


_REUSABLE = (types.FunctionType, types.BuiltinFunctionType, types.BuiltinMethodType, type)


def _reusable(fn: Any, budget: list[int] | None = None) -> bool:
    """Whether the callable of a function frame may be unpickled once and re-used for the same
    bytes: a plain function (within a task limit: its state is the limit), a built-in that is a
    module's (``len``) or a method of a shared generator (``random.random``: _reduce_generator),
    a partial of one that binds only small values no task can change (DEAP's toolbox.register
    makes such a partial of every function it is given), or a map's chunk runner around either
    (map()'s, Pool's, amap's: a partial of our own function).  ``budget``: the values still to
    look at, shared by the partials within (_FIXED_ITEMS in all)."""
    fn = _unlimited(fn)
    tp = type(fn)
    if tp in _REUSABLE:
        if tp is not types.BuiltinFunctionType or _module_level(fn) or isinstance(fn.__self__, type):
            return True
        return shared_generator(fn.__self__) is not None  # (a bound method of an object: its state)
    if tp is not functools.partial:
        return False
    if budget is None:
        budget = [_FIXED_ITEMS]
    budget[0] -= 1  # (a partial counts too: partials of partials are not flattened once named)
    if budget[0] < 0:
        return False
    if getattr(fn.func, "__module__", "") in RUNNER_MODULES:
        return not fn.keywords and len(fn.args) == 1 and _reusable(fn.args[0], budget)
    attributes = vars(fn).values()  # (DEAP's __name__ and __doc__: any length)
    return (
        _reusable(fn.func, budget)
        and _fixed([*fn.args, *fn.keywords.values()], budget)
        and all(type(v) in _ATOMS or _reusable(v, budget) for v in attributes)
    )


_ATOMS = frozenset((type(None), bool, int, float, complex, str, bytes, range, type(Ellipsis)))
_FIXED_ITEMS = 64  # values a partial's arguments are made of, looked at, at most (partials within too)
_FIXED_BYTES = 4096  # bytes of strings among them, at most: a partial around a task's data is made
# for one call, and a worker keeps nothing of it (a cache of 2,048 of them would hold their data)


def _fixed(values: list[Any], budget: list[int]) -> bool:
    """Whether the arguments a partial binds are the same for every task that calls it: immutable
    atoms (strings and bytes _FIXED_BYTES in all), tuples and frozensets of them, or re-usable
    callables (_reusable); at most ``budget[0]`` values looked at, shared with partials within."""
    size = 0
    stack = values
    while stack:
        value = stack.pop()
        budget[0] -= 1
        if budget[0] < 0:
            return False
        tp = type(value)
        if tp is str or tp is bytes:
            size += len(value)
            if size > _FIXED_BYTES:
                return False
        elif tp is tuple or tp is frozenset:
            stack.extend(value)
        elif tp not in _ATOMS and not _reusable(value, budget):
            return False
    return True


def _unlimited(fn: Any) -> Any:
    """``fn`` without the task limits around it (worker/limits.py: TimeLimit, OnTimeout)."""
    return _unwrapped(fn, _LIMITS, ())


def encode_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    names: mainclasses.Names | None = None,
) -> Frames:
    """Frames of one task: [function, arguments, *buffers] (``names``: as dumps()').

    Raises SerializationError naming what cannot be pickled, or TypeError for
    a future passed as an argument.
    """
    fn_frame = encode_function(fn)
    if not kwargs:
        plain = _plain_args(args)
        if plain is not None:
            return [fn_frame, plain]
    frames = encode_args(args, kwargs, fn, names=names)
    if len(frames) == 1:  # the usual task: a list of exactly two (no spare room: it may wait queued)
        return [fn_frame, frames[0]]
    frames.insert(0, fn_frame)
    return frames


_named: dict[Any, tuple[str, bytes, int]] = {}  # fn -> (describe(fn), its frame, the frame's size + 11)


def encode_named(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    limit: int = -1,
    names: mainclasses.Names | None = None,
) -> tuple[str, Frames]:
    """(describe(fn), encode_call(fn, args, kwargs)): what a submit() needs, in one call and,
    for a function already sent with plain arguments, one look-up (on every submit).

    With ``limit`` > 0, a message larger than that raises MessageTooLargeError (too_large);
    for a function already sent and one int argument, its size is known without a look.
    """
    named = _named.get(fn) if fn.__class__ in _CACHEABLE else None
    if named is not None:
        if not kwargs:
            if len(args) == 1 and args[0].__class__ is int and (named[2] <= limit or limit <= 0):
                try:  # (_plain_args' first case, inline)
                    return named[0], [named[1], _one_int(_INT_HEAD, args[0], _INT_TAIL)]
                except struct.error:
                    pass  # beyond 32 bits
            plain = _plain_args(args)
            if plain is not None:
                if named[2] - 11 + len(plain) <= limit or limit <= 0:  # (the size, without a call)
                    return named[0], [named[1], plain]
                return named[0], _checked([named[1], plain], limit)
        what, frames = named[0], encode_call(fn, args, kwargs, names)
    else:
        # (a task limit around it, as a map gives an overridden submit: named by the user's function)
        what = describe_user(fn) if fn.__class__.__module__ in _LIMITS else describe(fn)
        frames = encode_call(fn, args, kwargs, names)
        data = _fn_cache.get(fn) if fn.__class__ in _CACHEABLE else None
        if data is not None:  # (cached by dumps_function: it pickles by name)
            if len(_named) >= _CACHE_MAX:
                _named.clear()
            _named[fn] = (what, data, len(data) + 11)  # (11: _one_int's pickle)
    return what, _checked(frames, limit)


def _checked(frames: Frames, limit: int) -> Frames:
    """``frames``, unless one is larger than ``limit`` (> 0): then MessageTooLargeError."""
    if limit > 0 and (len(frames) != 2 or len(frames[0]) + len(frames[1]) > limit):
        big = oversized(frames, limit)
        if big:
            raise too_large(big, limit)
    return frames


def too_large(size: int, limit: int) -> errors.MessageTooLargeError:
    """The error of a task with a frame of ``size`` bytes, more than ``limit``."""
    return errors.MessageTooLargeError(
        f"the task needs a {size}-byte message, more than this executor's max_message_size={limit}; "
        "send less data (share it once with ex.share(), or pass a file path) or raise the limit"
    )


def encode_function(fn: Callable[..., Any], repeats: bool = False, each: bool = False) -> bytes:
    """The function frame of a task; SerializationError (TypeError for a Future) naming what cannot travel.
    ``repeats``: a map's, which its chunks send again and again; ``each``: made again for each of
    them (a lazy map's: imap, amap), so not marked beyond what workers hold, as a submit's."""
    if fn.__class__ in _CACHEABLE:  # (dumps_function's cache, looked at here: on every task)
        data = _fn_cache.get(fn)
        if data is not None:
            return data
    try:
        parts = _function_parts(fn)
    except Exception as exc:
        err = _function_error(fn, exc)
        cause = exc if isinstance(err, SerializationError) else None  # a future: the pickling error is noise
        raise err from cause
    size = sum(len(p) for p in parts) if len(parts) > 1 else len(parts[0])
    if size >= fnframes.MIN_SIZE:
        if size >= LARGE_FUNCTION:
            _warn_large(fn, size)
        if repeats and not (each and size + fnframes.HEAD > fnframes.HELD_BYTES):
            # A map's: its chunks send it again and again (a new id each time, beyond what a
            # client keeps, would push out what workers hold: a lazy map's is made each time).
            _sent_before(fn)  # (and its later submits are marked)
            return fnframes.mark(parts)  # (each worker receives it once: wire/fnframes.py)
        if size + fnframes.HEAD <= fnframes.HELD_BYTES and fnframes.retaining() and _sent_before(fn):
            return fnframes.mark(parts)  # (found among the frames marked lately, if unchanged)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _sent_before(fn: Any) -> bool:
    """Whether this callable (the user's, inside a task limit) went with a large pickle before:
    its pickle is then likely the same bytes again, which workers are to hold.  A callable made
    for one call (a partial or lambda around its data, joblib's batch) is not: workers would hold
    data they never see again (wire/fnframes.py)."""
    return _sent_large.seen(_remembered(fn))


def _remembered(fn: Any) -> Any:
    """What stands for ``fn`` from one submit to the next: the user's callable inside a task
    limit, and a bound method's object (a bound method is made anew at every attribute access)."""
    user = _user_function(fn)
    return user.__self__ if type(user) is types.MethodType else user


class _Seen:
    """The callables seen before, by identity, held weakly: neither hashed nor compared, so an
    unhashable one counts too (a class that defines ``__eq__`` without ``__hash__``, as a
    dataclass does: a callable model holding its data is often one), and an equal one made
    anew does not (made for one call, as a partial is).  At most _CACHE_MAX (past that, all are
    forgotten); one that cannot be referred to weakly is never seen."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref[Any]] = {}

    def seen(self, obj: Any) -> bool:
        """Whether ``obj`` was seen before; remember it if not."""
        refs = self._refs
        key = id(obj)
        ref = refs.get(key)
        if ref is not None and ref() is obj:
            return True

        def gone(r: weakref.ref[Any]) -> None:
            # (Not another object's, given the same id since.  Another thread could put one there
            # between these two steps and lose it: that object would go unmarked once more.)
            if refs.get(key) is r:
                refs.pop(key, None)

        try:
            ref = weakref.ref(obj, gone)
        except TypeError:
            return False
        if len(refs) >= _CACHE_MAX:
            refs.clear()
        refs[key] = ref
        return False


_sent_large = _Seen()


LARGE_FUNCTION = 1 << 20  # bytes of a function frame (pickled at every submit) worth a warning
_warned_large = _Seen()  # (once per function)


def _warn_large(fn: Any, size: int) -> None:
    """Say once that ``fn`` is pickled with ``size`` bytes, and which of the globals it reads
    are the large ones: a function reading a 200 MB array of the script costs 17 ms a submit
    (its array out of band, compared with what was sent; 0.14 s a submit in band, for a 200 MB
    list), and a copy in each worker (ProcessPoolExecutor's forked workers look it up by name)."""
    if _warned_large.seen(_remembered(fn)):  # (one not weakly referable: said each time)
        return
    user = inner = _user_function(fn)
    for _ in range(_DEPTH):  # (a partial's function: DEAP's toolbox holds such partials)
        if type(inner) is not functools.partial:
            break
        inner = inner.func
    names = []
    g = getattr(inner, "__globals__", None)
    code = getattr(inner, "__code__", None)
    if isinstance(g, dict) and code is not None:
        try:  # (user objects: whatever their __len__ or __bool__ raises must not fail the submit)
            sizes = [(_rough_size(g[n]), n) for n in set(global_names(code)) if n in g]
        except Exception:
            sizes = []
        big = [(b, n) for b, n in sorted(sizes, reverse=True) if b >= LARGE_FUNCTION // 4]
        names = [f"{n} ({b / 1e6:.1f} MB)" for b, n in big[:3]]
    which = f", with the globals it reads: {', '.join(names)}" if names else ""
    warnings.warn(
        f"{describe(user)} is pickled by value with everything it refers to, {size / 1e6:.1f} MB at "
        f"every submit (once per map; each worker receives it once while its bytes stay the same, "
        f"when mapped or submitted again){which}; "
        "send large data once (ex.share('name', value), and scoopexec.shared('name') in the task) "
        "or pass a file path",
        errors.LargeFunctionWarning,
        stacklevel=_user_stacklevel(),  # (the line that submitted)
    )


def _user_stacklevel() -> int:
    """warnings.warn's stacklevel, for a warning of the caller, of the innermost frame of the
    user's code on this stack."""
    found = _user_frame(sys._getframe(1))
    return found[1] if found is not None else 1


def _rough_size(value: Any, depth: int = 0) -> int:
    """About how many bytes ``value`` holds: an array's, a string's, or a container's with what
    it holds two levels down (estimated from its first items: a list of rows of a data set)."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, (bytes, bytearray, str, memoryview)):
        return len(value)
    try:
        size = sys.getsizeof(value)
    except Exception:
        return 0
    tp = type(value)
    if depth < 2 and (tp is list or tp is tuple or tp is dict or tp is set or tp is frozenset) and value:
        items = list(itertools.islice(value.values() if tp is dict else value, 16))
        size += len(value) * sum(_rough_size(x, depth + 1) for x in items) // len(items)
    return size


def encode_args(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    fn: Any = None,
    item: int = -1,
    chunk: bool = False,
    what: str = "",
    names: mainclasses.Names | None = None,
) -> Frames:
    """Pickle a task's arguments (``names``: as dumps()').

    For the error message: ``fn`` or ``what`` name the function; ``item`` >= 0
    says they are a map's items from that index on (``chunk``: args[0] is a
    list of them).
    """
    if not kwargs and not chunk:
        plain = _plain_args(args)
        if plain is not None:
            return [plain]
    try:
        return dumps((args, kwargs or None), chunk, names)
    except Exception as exc:
        err = _arguments_error(fn, args, kwargs, exc, item, chunk, what)
        cause = exc if isinstance(err, SerializationError) else None  # a future: the pickling error is noise
    raise err from cause


def encode_task(
    fn_frame: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    item: int = -1,
    chunk: bool = False,
    what: str = "",
    names: mainclasses.Names | None = None,
) -> Frames:
    """``[fn_frame, *encode_args(args, kwargs, ...)]``: the frames of a task whose function is
    pickled already (a map's), in one call (on every item of a map)."""
    if not kwargs and not chunk:
        plain = _plain_args(args)
        if plain is not None:
            return [fn_frame, plain]
    return [fn_frame, *encode_args(args, kwargs, None, item, chunk, what, names)]


_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})
NONE_PICKLE = pickle.dumps(None, PROTOCOL)  # the commonest result (a client need not unpickle it)
# The pickle of ((a,), None) for one int argument of 32 bits, written directly: PROTO 5, BININT a,
# TUPLE1, NONE, TUPLE2, STOP.  pickle.loads reads it as it reads dumps()' (which adds a FRAME and
# a MEMOIZE opcode and picks the shortest int opcode); pickle.dumps costs four times as much.
_one_int = struct.Struct("<3si4s").pack
_INT_HEAD, _INT_TAIL = b"\x80\x05J", b"\x85N\x86."
_int_result = struct.Struct("<3si1s").pack  # an int result of 32 bits: PROTO 5, BININT, STOP


def _plain_args(args: tuple[Any, ...]) -> bytes | None:
    """The pickle of ``(args, None)`` when every argument is a plain int, float, str, bytes,
    bool or None: no buffer to send apart, no reference to __main__ to look for (a str holding
    "__main__" is no reference).  None otherwise.  dumps()' own bytes, but for a single int
    argument of 32 bits (the commonest task: one index), which gets shorter ones (_one_int)."""
    if len(args) == 1 and args[0].__class__ is int:
        try:
            return _one_int(_INT_HEAD, args[0], _INT_TAIL)
        except struct.error:
            pass  # beyond 32 bits
    for a in args:
        if a.__class__ not in _PLAIN:
            return None
    return pickle.dumps((args, None), PROTOCOL)


# ------------------------------------------------------- what cannot be pickled
_ARG_ADVICE = (
    "arguments must pickle; open files, locks, sockets, generators and database connections cannot "
    "travel to another process: pass what is needed to recreate them instead"
)
_FN_ADVICE = (
    "a function defined at the top level of a module travels by name; a lambda, closure, method or "
    "callable object travels with everything it refers to, which must pickle too"
)
_SEARCH_BUDGET = 2000  # pickling attempts while looking for the part that fails
_INTERNAL_MODULES = ("scoopexec", "concurrent.futures", "joblib", "loky", "deap", "functools", "threading")


def _function_error(fn: Any, exc: Exception) -> Exception:
    user_fn = _user_function(fn)
    head = f"cannot send the function {describe(user_fn)}{_defined_at(user_fn)} to a worker{_submitted_at()}"
    found = _find_quietly(fn, "", _function_children)
    if found is not None and found[0]:
        where, part, error = found
        if isinstance(part, cf.Future):
            return _future_error(f"{where} of the function {describe(user_fn)}", "")
        return errors.serialization_error(
            f"{head}: it refers to {where.lstrip('.')} ({_a(part)}), which cannot be pickled: "
            f"{type(error).__name__}: {error} ({_FN_ADVICE})",
            _standard_error(part, exc),
        )
    return errors.serialization_error(
        f"{head}: {type(exc).__name__}: {exc} ({_FN_ADVICE})", _standard_error(fn, exc)
    )


class _Discard:
    """A file that keeps nothing: _standard_error's pickle costs no memory for what it writes."""

    def write(self, data: Any) -> int:
        return len(data)


def _standard_error(obj: Any, fallback: Exception) -> BaseException:
    """What the standard pickle module raises for ``obj`` (the part a message names), the type
    ProcessPoolExecutor and multiprocessing.Pool raise for it (TypeError for an open file,
    where cloudpickle's is a PicklingError); ``fallback`` if it pickles, or runs out of memory.
    On the error path only; large buffers are not copied (protocol 5, out of band)."""
    try:
        pickle.Pickler(_Discard(), PROTOCOL, buffer_callback=_out_of_band).dump(obj)
    except MemoryError:
        return fallback
    except Exception as exc:
        return exc
    return fallback


def _out_of_band(buf: pickle.PickleBuffer) -> bool:
    return False


def _arguments_error(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception, item: int, chunk: bool, what: str
) -> Exception:
    if fn is not None:
        what = describe(_user_function(fn))
    of = f" of {what}()" if what else ""
    if item >= 0:
        of = f" of map({what}, ...)" if what else " of the map"
    for name, detail, root, value in _labelled_arguments(fn, args, kwargs, item, chunk):
        found = _find_quietly(value, root, _data_children)
        if found is None:
            continue
        where, part, error = found
        label = f"{name} ({detail})" if detail else name
        if isinstance(part, cf.Future):
            return _future_error(label if where == root else f"{label}, at {where},", of)
        if where == root:  # the argument itself: say its type with it
            label = f"{name} ({detail}, {_a(part)})" if detail else f"{name} ({_a(part)})"
        head = f"cannot send {label}{of} to a worker{_submitted_at()}"
        original = _standard_error(part, exc)
        if where == root:
            return errors.serialization_error(
                f"{head}: {type(error).__name__}: {error} ({_ARG_ADVICE})", original
            )
        return errors.serialization_error(
            f"{head}: its part {where} ({_a(part)}) cannot be pickled: {type(error).__name__}: {error} "
            f"({_ARG_ADVICE})",
            original,
        )
    return errors.serialization_error(
        f"cannot send the arguments{of} to a worker{_submitted_at()}: {type(exc).__name__}: {exc} "
        f"({_ARG_ADVICE})",
        _standard_error((args, kwargs or None), exc),
    )


def _future_error(label: str, of: str) -> TypeError:
    return TypeError(
        f"{label}{of} is a Future: a future cannot travel to a worker. Pass its value "
        "(`fut.result()`), or submit one task that submits the first step itself and waits on it "
        "(inside a task, `.result()` parks only that task)"
    )


def _labelled_arguments(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], item: int, chunk: bool
) -> Iterator[tuple[str, str, str, Any]]:
    """(label and detail for the message, root of a path into it, value) for each argument."""
    if item >= 0:  # a map's items; with several iterables each is a tuple (path items[n][k])
        if chunk:
            values = list(args[0]) if args else []
        else:
            values = [args if len(args) > 1 else args[0]] if args else []
        for j, value in enumerate(values):
            yield f"item {item + j}", "", f"items[{item + j}]", value
        return
    names = _parameter_names(fn, len(args))
    for i, value in enumerate(args):
        name = names[i] if i < len(names) else None
        if name:
            yield f"argument {name!r}", f"position {i}", name, value
        else:
            yield f"argument {i}", "", f"args[{i}]", value
    for key, value in kwargs.items():
        yield f"keyword argument {key!r}", "", key, value


def _parameter_names(fn: Any, n: int) -> list[str | None]:
    try:
        params = list(inspect.signature(_user_function(fn)).parameters.values())
    except (TypeError, ValueError):
        return []
    names: list[str | None] = []
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            names.extend([None] * (n - len(names)))
            break
    return names


def _find_quietly(
    obj: Any, root: str, children: Callable[[Any, str], list[tuple[str, Any]]]
) -> tuple[str, Any, BaseException] | None:
    """find_unpicklable, but a failure while searching only means "not found"."""
    try:
        return find_unpicklable(obj, root, children)
    except KeyboardInterrupt:
        raise
    except BaseException:  # a __reduce__ that exits or raises oddly on a second try
        return None


def find_unpicklable(
    obj: Any,
    path: str,
    children: Callable[[Any, str], list[tuple[str, Any]]] | None = None,
) -> tuple[str, Any, BaseException] | None:
    """The innermost part of ``obj`` that cannot be pickled, as (path, part, error); None if none.

    ``path`` names ``obj``; parts are named by appending ``[i]``, ``['key']``
    or ``.attr``.  A future is reported at once (it never pickles).
    """
    budget = [_SEARCH_BUDGET]
    return _search(obj, path, children or _data_children, set(), budget, 0)


def _search(
    obj: Any,
    path: str,
    children: Callable[[Any, str], list[tuple[str, Any]]],
    seen: set[int],
    budget: list[int],
    depth: int,
) -> tuple[str, Any, BaseException] | None:
    if isinstance(obj, cf.Future):
        return path, obj, TypeError("a Future cannot be pickled")
    if id(obj) in seen or budget[0] <= 0:
        return None
    seen.add(id(obj))
    budget[0] -= 1
    try:
        dumps(obj)
    except Exception as exc:
        error: BaseException = exc
    else:
        return None
    if depth < 12:
        for child_path, child in children(obj, path):
            found = _search(child, child_path, _data_children, seen, budget, depth + 1)
            if found is not None:
                return found
    return path, obj, error


def _data_children(obj: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(obj, (str, bytes, bytearray, int, float, complex, types.ModuleType, type)):
        return []
    if isinstance(obj, (types.FunctionType, types.MethodType, functools.partial)):
        return _function_children(obj, path)
    if isinstance(obj, (list, tuple)):
        return [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return [(f"{path}[{k!r}]", v) for k, v in obj.items()]
    if isinstance(obj, (set, frozenset)):
        return [(f"{path} item", v) for v in obj]
    state = getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        return [(f"{path}.{k}", v) for k, v in state.items()]
    return []


def _function_children(fn: Any, path: str) -> list[tuple[str, Any]]:
    """What pickling a callable by value also pickles: its object, closure, globals, bound arguments."""
    if isinstance(fn, functools.partial):
        out = [(f"{path}.func", fn.func)]
        out += [(f"{path}.args[{i}]", a) for i, a in enumerate(fn.args)]
        out += [(f"{path}.keywords[{k!r}]", v) for k, v in fn.keywords.items()]
        return out
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType):
        return [(f"{path}.__self__" if path else "self", owner)]
    if isinstance(fn, types.FunctionType):
        out = []
        code = fn.__code__
        prefix = f"{path} " if path else "the "
        for name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
            try:
                out.append((f"{prefix}variable {name}", cell.cell_contents))
            except ValueError:  # an empty cell
                pass
        for name in global_names(code):
            if name in fn.__globals__:
                out.append((f"{prefix}global {name}", fn.__globals__[name]))
        return out
    if not isinstance(fn, type):  # a callable object
        return _data_children(fn, path or "self")
    return []


def global_names(code: types.CodeType) -> Iterator[str]:
    """The names ``code`` and the code nested in it look up (its globals among them)."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from global_names(const)


_LIMITS = ("scoopexec.worker.limits",)  # task limits (TimeLimit, OnTimeout), which hold the call as .fn
WRAPPER_MODULES = (*_LIMITS, "scoopexec.seeding")  # classes that hold the user's as .fn
RUNNER_MODULES = ("scoopexec.mapping", "scoopexec.autochunk", "scoopexec.pool")  # partial(runner, fn)
_DEPTH = 16  # runners and wrappers looked through, at most (a map's nest 4 deep: runner, limits, seeding)


def _is_runner(fn: Any) -> bool:
    """``fn`` runs a chunk of a map (its result holds the chunk's results)."""
    return type(fn) is functools.partial and getattr(fn.func, "__module__", "") in RUNNER_MODULES


def _user_function(fn: Any) -> Any:
    """The user's function inside a map's chunk runners, task limits (worker/limits.py) and a
    seeded map's call (seeding.SeededCall), in any order: a map puts the limit inside its
    runner, submit() puts it around whatever it is given."""
    return _unwrapped(fn, WRAPPER_MODULES, RUNNER_MODULES)


def _unwrapped(fn: Any, wrappers: tuple[str, ...], runners: tuple[str, ...]) -> Any:
    """``fn`` out of the objects of ``wrappers`` (modules whose classes hold a callable as .fn)
    and the partials of ``runners``' functions around it, in any order, at most _DEPTH deep (an
    object may be its own .fn)."""
    for _ in range(_DEPTH):
        if type(fn) is functools.partial and fn.args and getattr(fn.func, "__module__", "") in runners:
            fn = fn.args[0]
        elif type(fn).__module__ in wrappers and hasattr(fn, "fn"):
            fn = fn.fn
        else:
            break
    return fn


user_function = _user_function  # (for the worker: setup.script_globals)
user_stacklevel = _user_stacklevel  # (for a warning of the pool's start: deploy/clientfork.py)


def _defined_at(fn: Any) -> str:
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__func__", None), "__code__", None)
    if not isinstance(code, types.CodeType):
        return ""
    return f" (defined at {code.co_filename}:{code.co_firstlineno})"


def _submitted_at() -> str:
    """", submitted at FILE:LINE": the innermost frame of the user's code on this stack."""
    found = _user_frame(sys._getframe(1))
    return f", submitted at {found[0].f_code.co_filename}:{found[0].f_lineno}" if found is not None else ""


def _user_frame(frame: types.FrameType | None) -> tuple[types.FrameType, int] | None:
    """The innermost frame of the user's code from ``frame`` outwards, and how many frames out
    it is (``frame`` itself: 1); None if there is none."""
    level = 1
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not isinstance(module, str) or not any(
            module == m or module.startswith(m + ".") for m in _INTERNAL_MODULES
        ):
            return frame, level
        frame, level = frame.f_back, level + 1
    return None


def _a(obj: Any) -> str:
    """'a _thread.lock', 'an io.TextIOWrapper': the type of ``obj`` with an article."""
    tp = type(obj)
    if isinstance(obj, cf.Future):
        name = "concurrent.futures.Future"
    else:
        name = _qualname(tp)
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def decode_call(
    frames: Sequence[Any], fn_bytes: Any = None, scope: int | None = None
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    """The function and arguments of a task's frames.  ``fn_bytes``: frames[0] as bytes, or,
    for a large function frame, its key (a tuple: wire/fnframes.py)."""
    if fn_bytes.__class__ is tuple:
        fn = loads_function(frames[0], scope, fn_bytes)
    else:
        fn = loads_function(fn_bytes if fn_bytes else frames[0], scope)
    if len(frames) == 2:  # the usual task: no buffers (no slice, no keyword to parse)
        args, kwargs = pickle.loads(frames[1])
    else:
        args, kwargs = pickle.loads(frames[1], buffers=frames[2:])
    return fn, args, kwargs or {}


def describe_user(fn: Any) -> str:
    """describe() of the user's function inside map()'s wrappers (chunk runners, limits, seeding)."""
    return describe(_user_function(fn))


_names: dict[Any, str] = {}  # describe() of functions and classes (as _fn_cache)


def describe(fn: Any) -> str:
    """'module.qualname' of a callable, for messages (interned: a million futures of one
    function hold one string)."""
    cacheable = fn.__class__ in _CACHEABLE
    if cacheable:  # (on every submit)
        text = _names.get(fn)
        if text is not None:
            return text
    try:
        name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
        mod = getattr(fn, "__module__", None)
    except Exception:  # (a proxy whose attributes raise something else than AttributeError)
        name = mod = None
    if type(fn) is functools.partial and "__module__" not in vars(fn):
        # (DEAP names its partials after their alias: "functools.evaluate" says nothing)
        text = f"partial({describe(fn.func)})"
    elif isinstance(name, str):
        text = f"{mod}.{name}" if mod and mod != "builtins" else name
    elif isinstance(fn, functools.partial):
        text = f"partial({describe(fn.func)})"
    else:
        text = f"{_qualname(type(fn))} object"  # a callable object (its repr may be huge, or fail)
    text = sys.intern(text)
    if cacheable:
        if len(_names) >= _CACHE_MAX:
            _names.clear()
        _names[fn] = text
    return text


def encode_result(value: Any, where: str = "", fn: Any = None) -> tuple[int, Frames]:
    """OK and the result's frames, or FAILED saying why it cannot be sent.

    ``where``: on which worker; ``fn``: the task's function.
    """
    if value.__class__ in _PLAIN:  # (on every task: as dumps() would, less its look for __main__)
        if value is None:
            return protocol.OK, [NONE_PICKLE]
        if value.__class__ is int:
            try:  # PROTO 5, BININT, STOP (as _one_int: loads() reads it as dumps()' own)
                return protocol.OK, [_int_result(_INT_HEAD, value, b".")]
            except struct.error:
                pass  # beyond 32 bits
        return protocol.OK, [pickle.dumps(value, PROTOCOL)]
    try:
        # (a forked worker's: the script's classes it inherited go back by reference)
        compact = type(fn) is functools.partial and _is_runner(fn)
        return protocol.OK, dumps(value, compact, mainclasses.active())
    except Exception as exc:
        tb_text = user_traceback(exc)  # a __reduce__ of the user's that raised, if any
        of = f" of {describe(_user_function(fn))}()" if fn is not None else ""
        text = f"the result{of} ({_a(value)}) cannot be pickled{where}: "
        found = _find_quietly(value, "result", _data_children)
        part = value
        if found is not None and found[0] != "result":
            text += f"its part {found[0]} ({_a(found[1])}) fails: "
            part, exc = found[1], found[2]  # type: ignore[assignment]
        # The client's error is also the built-in error the standard pickle module raises for
        # that part, as ProcessPoolExecutor's (TypeError for a lock): named, for it to rebuild.
        original = type(_standard_error(part, exc))
        return protocol.FAILED, failure_frames(
            "result",
            f"{text}{type(exc).__name__}: {exc} (return plain data the client can rebuild it from)",
            tb_text,
            original=original.__name__ if original.__module__ == "builtins" else "",
        )
    except BaseException as exc:  # SystemExit, KeyboardInterrupt while pickling
        return encode_exception(exc, traceback.format_exc())


def encode_exception(exc: BaseException, tb_text: str) -> tuple[int, Frames]:
    fields = {"type": _qualname(type(exc)), "message": _safe_str(exc)}
    try:
        data = dumps(exc, names=mainclasses.active())  # (a worker's: as its results)
    except BaseException as error:
        fields["why"] = f"{type(error).__name__}: {_safe_str(error)}"
        return protocol.FAILED, [protocol.dump_json(fields), tb_text.encode("utf-8", "replace")]
    meta = protocol.dump_json(fields)
    return protocol.RAISED, [*data[:1], tb_text.encode("utf-8", "replace"), meta, *data[1:]]


def frame_size(frame: Any) -> int:
    return len(frame) if isinstance(frame, bytes) else memoryview(frame).nbytes


def oversized(frames: Frames, limit: int) -> int:
    """The size of the largest frame if it exceeds ``limit`` (> 0), else 0."""
    if limit <= 0:
        return 0
    for f in frames:  # on every submit (the limit is on by default): a plain loop, no generator
        if (len(f) if f.__class__ is bytes else memoryview(f).nbytes) > limit:
            return max(frame_size(g) for g in frames)
    return 0


def failure_frames(kind: str, message: str, tb_text: str = "", original: str = "") -> Frames:
    fields = {"type": kind, "message": message, "kind": kind}
    if original:
        fields["original"] = original  # a built-in exception type's name (serialization_error)
    return [protocol.dump_json(fields), tb_text.encode("utf-8", "replace")]


def decode_outcome(status: int, frames: Sequence[Any], what: str = "") -> tuple[bool, Any]:
    """(True, value) or (False, exception) for a result message's frames.

    ``what``: the task's function, named in the messages of failures.
    """
    if status == protocol.OK:
        try:  # loads(), inline: every result (client/future.settle has its own copy of this)
            if len(frames) == 1:
                return True, pickle.loads(frames[0])
            return True, pickle.loads(frames[0], buffers=frames[1:])
        except BaseException as exc:  # even SystemExit: this runs in the client's I/O thread
            return False, unpickling_error(exc, what)
    if status == protocol.RAISED:
        tb = bytes(frames[1]).decode("utf-8", "replace")
        raised: BaseException
        try:
            loaded = pickle.loads(frames[0], buffers=frames[3:])
            if not isinstance(loaded, BaseException):
                raise TypeError(f"unpickled a {type(loaded).__name__}, not an exception")
            raised = loaded
        except BaseException as load_error:
            meta = protocol.load_json(frames[2])
            by = f" by {what}()" if what else " by the task"
            note = (
                f"raised{by}; it could not be rebuilt here, so it arrives as a "
                f"RemoteError: {type(load_error).__name__}: {_safe_str(load_error)}. "
                + _rebuild_advice(load_error)
            )
            raised = RemoteError(meta.get("type", "?"), meta.get("message", ""), tb, note=note)
            raised.__context__ = load_error
        raised.__cause__ = remote_traceback(tb)
        return False, raised
    if status == protocol.CANCELLED:
        return False, CancelledError(
            "the broker dropped this task: the task or client that submitted it had gone away"
        )
    meta = protocol.load_json(frames[0]) if frames else {}
    tb = bytes(frames[1]).decode("utf-8", "replace") if len(frames) > 1 else ""
    failure = _failure_exception(status, meta, what)
    if tb:
        failure.__cause__ = remote_traceback(tb)
    return False, failure


def unpickling_error(exc: BaseException, what: str = "") -> DeserializationError:
    """The error of a result that cannot be unpickled here (``exc``: why; ``what``: the task's function)."""
    of = f" of {what}()" if what else ""
    err = DeserializationError(
        f"the result{of} could not be unpickled here: {type(exc).__name__}: {exc} "
        "(the module defining its type must be importable in this process too)"
    )
    err.__cause__ = exc
    return err


def _rebuild_advice(error: BaseException) -> str:
    if isinstance(error, (ImportError, AttributeError)):
        return "The module defining the exception's class must be importable in this process too"
    return (
        "An exception is rebuilt by calling its class with its args: pass every argument of "
        "__init__ on to super().__init__(), or define __reduce__"
    )


def _failure_exception(status: int, meta: dict[str, Any], what: str = "") -> BaseException:
    message = str(meta.get("message", "task failed"))
    kind = meta.get("kind")
    if status == protocol.LOST:
        return errors.WorkerLostError(message)
    if kind == "size":
        return errors.MessageTooLargeError(message)
    if kind == "call":
        if what:
            message = f"{what}(): {message}{_missing_module_hint(message)}"
        return errors.DeserializationError(message)
    if kind == "result":
        return errors.builtin_serialization_error(message, meta.get("original"))
    if kind == "initializer":
        return errors.InitializerError(message)
    if kind == "broken":
        return errors.BrokenScoopExecutor(message)
    if kind == "exception" or kind is None:
        why = meta.get("why")
        note = ""
        if why:
            by = f" by {what}()" if what else " by the task"
            note = (
                f"raised{by}; it could not be pickled on the worker, so it arrives as a "
                f"RemoteError: {why}"
            )
        return RemoteError(str(meta.get("type", "?")), message, note=note)
    return RemoteError(str(kind), message)


_CLOUDPICKLE_DIR = os.path.dirname(os.path.abspath(cloudpickle.__file__))
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # scoopexec/, every folder in it


def user_traceback(exc: BaseException) -> str:
    """``exc`` formatted from the first frame of the user's code on ("" if there is none).

    Leading frames of scoopexec itself, cloudpickle, pickle, copyreg and runpy
    (how the code was reached) say nothing to the user and are left out.
    """
    tb = exc.__traceback__
    while tb is not None and _internal_file(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    if tb is None:
        return ""
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _internal_file(filename: str) -> bool:
    path = os.path.abspath(filename)
    if os.path.dirname(path) == _CLOUDPICKLE_DIR or path.startswith(_PACKAGE_DIR + os.sep):
        return True
    stdlib = path.startswith(sys.base_prefix)
    return stdlib and os.path.basename(path) in ("pickle.py", "copyreg.py", "runpy.py")


def _missing_module_hint(message: str) -> str:
    """For 'No module named X' on a worker: where X is in this process."""
    m = re.search(r"No module named '([\w.]+)'", message)
    if not m:
        return ""
    module = sys.modules.get(m.group(1))
    path = getattr(module, "__file__", None)
    if not path:
        return ""
    return (
        f"; here it is {path}: put its folder on sys.path before the executor starts, or in "
        "PYTHONPATH, so that workers find it too"
    )


def _qualname(tp: type) -> str:
    mod = getattr(tp, "__module__", "")
    name = getattr(tp, "__qualname__", tp.__name__)
    return name if mod in ("builtins", None, "") else f"{mod}.{name}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)[:4000]
    except Exception:
        return f"<str() of {type(exc).__name__} failed>"
