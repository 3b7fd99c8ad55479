"""Turning calls, results and exceptions into frames, and back.

Objects are pickled with protocol 5.  Buffers of at least ``OOB_MIN`` bytes
(NumPy arrays, bytes, memoryviews, anything exposing ``PickleBuffer``) leave
the pickle as separate frames, which ZeroMQ sends without copying and which
the receiver hands straight back to ``pickle.loads`` (the resulting arrays
are writable and share the received frame's memory).

The standard C pickler is tried first because it is several times faster
than cloudpickle on plain data; cloudpickle takes over whenever the object
refers to ``__main__`` (whose top-level names might not exist on a worker)
or holds something the standard pickler cannot handle (lambdas, closures,
interactively defined classes).
"""

from __future__ import annotations

import functools
import pickle
import traceback
import types
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from typing import Any

import cloudpickle

from .. import errors
from ..errors import DeserializationError, RemoteError, SerializationError, remote_traceback
from . import protocol

PROTOCOL = 5
OOB_MIN = 64 * 1024  # buffers this large or larger travel as their own frames

Frames = list[Any]  # bytes, pickle.PickleBuffer or zmq.Frame

_CACHEABLE = (types.FunctionType, types.BuiltinFunctionType, type)
_fn_cache: dict[Any, bytes] = {}
_loaded_fns: dict[bytes, Any] = {}
_CACHE_MAX = 2048


def _by_value_modules() -> bool:
    registry = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
    return bool(registry)


def dumps(obj: Any) -> Frames:
    """Pickle ``obj``; return [pickle, *out-of-band buffers]."""
    bufs: list[pickle.PickleBuffer] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes >= OOB_MIN:
            bufs.append(buf)
            return False
        return True  # small: stays inside the pickle

    try:
        data = pickle.dumps(obj, PROTOCOL, buffer_callback=keep)
    except Exception:
        pass
    else:
        if b"__main__" not in data and not _by_value_modules():
            return [data, *bufs]
    bufs.clear()
    data = cloudpickle.dumps(obj, PROTOCOL, buffer_callback=keep)
    return [data, *bufs]


def loads(frames: Sequence[Any]) -> Any:
    """Inverse of dumps: frames[0] is the pickle, the rest its buffers."""
    return pickle.loads(frames[0], buffers=frames[1:])


def dumps_function(fn: Callable[..., Any]) -> bytes:
    """Pickle a callable; module-level functions are cached (they pickle by name)."""
    cacheable = type(fn) in _CACHEABLE
    if cacheable:
        cached = _fn_cache.get(fn)
        if cached is not None:
            return cached
        try:
            data = pickle.dumps(fn, PROTOCOL)
        except Exception:
            pass
        else:
            if b"__main__" not in data and not _by_value_modules():
                if len(_fn_cache) >= _CACHE_MAX:
                    _fn_cache.clear()
                _fn_cache[fn] = data
                return data
    data = cloudpickle.dumps(fn, PROTOCOL)
    return bytes(data)


def loads_function(data: bytes | memoryview) -> Any:
    """Unpickle a callable, re-using the object for identical bytes when that is safe.

    Functions, built-ins and classes are re-used (a map's chunks send the same
    bytes again and again); other callables -- objects with state, partials
    binding arguments -- are unpickled afresh for every task, as each task
    would see them with any other executor.
    """
    key = data if type(data) is bytes else bytes(data)
    fn = _loaded_fns.get(key)
    if fn is None:
        fn = pickle.loads(key)
        if _reusable(fn):
            if len(_loaded_fns) >= _CACHE_MAX:
                _loaded_fns.clear()
            _loaded_fns[key] = fn
    return fn


_REUSABLE = (types.FunctionType, types.BuiltinFunctionType, types.BuiltinMethodType, type)


def _reusable(fn: Any) -> bool:
    if type(fn) in _REUSABLE:
        return True
    # map()'s chunk runners: a partial of our own function around the user's.
    if type(fn) is functools.partial and not fn.keywords and len(fn.args) == 1:
        return getattr(fn.func, "__module__", "") == "scoopexec.mapping" and type(fn.args[0]) in _REUSABLE
    return False


def encode_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Frames:
    """Frames of one task: [function, arguments, *buffers].  Raises SerializationError."""
    return [encode_function(fn), *encode_args(args, kwargs)]


def encode_function(fn: Callable[..., Any]) -> bytes:
    """The function frame of a task; SerializationError naming the function if it cannot travel."""
    try:
        return dumps_function(fn)
    except Exception as exc:
        raise SerializationError(
            f"cannot send the function {describe(fn)} to a worker: {type(exc).__name__}: {exc} "
            "(a function defined at the top level of a module always travels)"
        ) from exc


def encode_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Frames:
    """The arguments frames of a task; SerializationError saying what cannot travel."""
    try:
        return dumps((args, kwargs or None))
    except Exception as exc:
        raise SerializationError(
            f"cannot send the arguments to a worker: {type(exc).__name__}: {exc} (arguments must "
            "pickle; open files, locks, sockets, generators and database connections cannot travel "
            "to another process: pass what is needed to recreate them instead)"
        ) from exc


def decode_call(
    frames: Sequence[Any], fn_bytes: bytes | None = None
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    fn = loads_function(fn_bytes if fn_bytes else frames[0])
    args, kwargs = pickle.loads(frames[1], buffers=frames[2:])
    return fn, args, kwargs or {}


def describe(fn: Any) -> str:
    """``module.qualname`` of a callable, for messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    mod = getattr(fn, "__module__", None)
    if name:
        return f"{mod}.{name}" if mod else str(name)
    return repr(fn)[:200]


def encode_result(value: Any, where: str = "") -> tuple[int, Frames]:
    """OK and the result's frames, or FAILED saying why it cannot be sent (``where``: on which worker)."""
    try:
        return protocol.OK, dumps(value)
    except Exception as exc:
        return protocol.FAILED, failure_frames(
            "result",
            f"the task's result of type {_qualname(type(value))} cannot be pickled{where}: "
            f"{type(exc).__name__}: {exc} (return plain data the client can rebuild it from)",
            traceback.format_exc(),
        )
    except BaseException as exc:  # SystemExit, KeyboardInterrupt while pickling
        return encode_exception(exc, traceback.format_exc())


def encode_exception(exc: BaseException, tb_text: str) -> tuple[int, Frames]:
    meta = protocol.dump_json({"type": _qualname(type(exc)), "message": _safe_str(exc)})
    try:
        data = dumps(exc)
    except BaseException:
        return protocol.FAILED, [meta, tb_text.encode("utf-8", "replace")]
    return protocol.RAISED, [*data[:1], tb_text.encode("utf-8", "replace"), meta, *data[1:]]


def frame_size(frame: Any) -> int:
    return len(frame) if isinstance(frame, bytes) else memoryview(frame).nbytes


def oversized(frames: Frames, limit: int) -> int:
    """The size of the largest frame if it exceeds ``limit`` (> 0), else 0."""
    if limit <= 0:
        return 0
    biggest = max(frame_size(f) for f in frames)
    return biggest if biggest > limit else 0


def failure_frames(kind: str, message: str, tb_text: str = "") -> Frames:
    meta = protocol.dump_json({"type": kind, "message": message, "kind": kind})
    return [meta, tb_text.encode("utf-8", "replace")]


def decode_outcome(status: int, frames: Sequence[Any]) -> tuple[bool, Any]:
    """(True, value) or (False, exception) for a result message's frames."""
    if status == protocol.OK:
        try:
            return True, loads(frames)
        except BaseException as exc:  # even SystemExit: this runs in the client's I/O thread
            err = DeserializationError(
                f"the task's result could not be unpickled here: {type(exc).__name__}: {exc} "
                "(the module defining its type must be importable in this process too)"
            )
            err.__cause__ = exc
            return False, err
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
            raised = RemoteError(meta.get("type", "?"), meta.get("message", ""), tb)
            raised.__context__ = load_error
        raised.__cause__ = remote_traceback(tb)
        return False, raised
    if status == protocol.CANCELLED:
        return False, CancelledError(
            "the broker dropped this task: the task or client that submitted it had gone away"
        )
    meta = protocol.load_json(frames[0]) if frames else {}
    tb = bytes(frames[1]).decode("utf-8", "replace") if len(frames) > 1 else ""
    failure = _failure_exception(status, meta)
    if tb:
        failure.__cause__ = remote_traceback(tb)
    return False, failure


def _failure_exception(status: int, meta: dict[str, Any]) -> BaseException:
    message = str(meta.get("message", "task failed"))
    kind = meta.get("kind")
    if status == protocol.LOST:
        return errors.WorkerLostError(message)
    if kind == "size":
        return errors.MessageTooLargeError(message)
    if kind == "call":
        return errors.DeserializationError(message)
    if kind == "result":
        return errors.SerializationError(message)
    if kind == "initializer":
        return errors.InitializerError(message)
    if kind == "broken":
        return errors.BrokenScoopExecutor(message)
    if kind == "exception" or kind is None:
        return RemoteError(str(meta.get("type", "?")), message)
    return RemoteError(str(kind), message)


def _qualname(tp: type) -> str:
    mod = getattr(tp, "__module__", "")
    name = getattr(tp, "__qualname__", tp.__name__)
    return name if mod in ("builtins", None, "") else f"{mod}.{name}"


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)[:4000]
    except Exception:
        return f"<str() of {type(exc).__name__} failed>"
