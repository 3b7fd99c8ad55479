"""The client script's classes on workers: one class at both ends, not a copy, while their state agrees.

cloudpickle sends a class of the script (``__main__``) by value: a worker gets a copy, another
class than the one its own import of the script (or its fork of the client) has.  Then
``pickle`` refuses an instance of it ("not the same object as __main__.Progress", in the feeder
thread of a multiprocessing queue a task puts it on: the item is lost), and the module's own
code (a dict keyed by the class, ``isinstance``, a registry filled by ``__init_subclass__``)
does not recognise it.  A fork of ProcessPoolExecutor's has the one class.

So a pool's set-up names the script's classes by an id, with a :func:`digest` of their state
(mainmodule.class_ids); a worker whose class of that name has the same digest maps the id to
it (mainmodule.track_classes).  Such a class then travels as ``tracked_class(id, copy)``: the
receiver takes its own class of that id as it is (no class is built, nothing of it is set),
or, lacking the id, the copy by value.  In the client a class travels by id only while its
digest is the one the workers checked: once its state changed (an attribute rebound or changed
in place, here or in a base class of the script), it travels by value again, as before, with
its state.  The digest covers the class's data attributes and those of its bases in the script,
and names the functions and classes among them (by module, qualified name and first line); not
the dunders, Enum's ``_sunder_`` tables, abc's registry, nor descriptors (properties,
``cached_property``, static and class methods).  A class whose state does not pickle or is
larger than DIGEST_MAX always travels by value.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import types
from collections.abc import Callable
from typing import Any

__all__ = ["digest", "reduce", "track", "tracked_class", "tracked_id"]

MAIN_NAMES = ("__main__", "__mp_main__")
DIGEST_MAX = 1 << 20  # bytes of a class's state, pickled: past it, the class is not tracked

TRACKED: dict[type, str] = {}  # class -> the id it travels as (read elsewhere, set by track())
_BY_ID: dict[str, type] = {}  # id -> the class it arrives as (several ids may name one class)
_CHECKED: dict[type, str] = {}  # the client's: the digest its workers compared theirs with
_COPIES: dict[type, tuple[str, bytes]] = {}  # class -> (digest, its copy by value then)
_worker = False  # set by a worker's first track(): it sends its classes by id, unchecked


def track(cls: type, tid: str, checked: str | None = None) -> bool:
    """From now on ``tid`` arrives here as ``cls``, and ``cls`` travels as its first id.
    ``checked`` (the client): the digest the workers compare theirs with; False, and nothing
    tracked, when the class's state changed since another pool of this client checked it."""
    global _worker
    if checked is None:
        _worker = True
    else:
        first = _CHECKED.setdefault(cls, checked)
        if first != checked:
            return False
    _BY_ID[tid] = cls
    TRACKED.setdefault(cls, tid)
    return True


def tracked_id(cls: type) -> str | None:
    return TRACKED.get(cls)


def tracked_class(tid: str, copy: bytes) -> type:
    """A tracked class, unpickled: this process's class of that id, else the copy by value."""
    cls = _BY_ID.get(tid)
    return cls if cls is not None else pickle.loads(copy)  # type: ignore[no-any-return]


def reduce(cls: type, by_value: Callable[[type], bytes]) -> tuple[Any, ...] | None:
    """How a tracked class travels (None: by value, as any class): ``tracked_class(id, copy)``."""
    tid = TRACKED.get(cls)
    if tid is None:
        return None
    now = digest(cls)
    if now is None or (not _worker and _CHECKED.get(cls) != now):
        return None  # (changed since the workers checked it: the copy, with its state)
    cached = _COPIES.get(cls)
    if cached is None or cached[0] != now:
        cached = _COPIES[cls] = (now, by_value(cls))
    return tracked_class, (tid, cached[1])


def digest(cls: type) -> str | None:
    """A digest of the state of ``cls`` (see the module's docstring), the same in every process
    where it is the same; None when it does not pickle or is too large."""
    state = []
    for c in cls.__mro__:
        if getattr(c, "__module__", None) in MAIN_NAMES:
            own = c.__dict__.copy()  # (one copy in C: another thread may set an attribute)
            items = sorted((k, v) for k, v in own.items() if _state(k, v))
            named = [(k, _name(v)) for k, v in items if _named(v)]  # (methods, mostly)
            state.append((c.__qualname__, named, [(k, v) for k, v in items if not _named(v)]))
    try:
        for _, _, items in state:
            for _, v in items:
                if _size(v) > DIGEST_MAX:
                    return None
        data = pickle.dumps(state, 4)  # (in C: most classes' state is plain data)
        if b"__main__" in data or b"__mp_main__" in data:
            raise pickle.PicklingError  # functions and classes of the script: by name, below
    except Exception:
        fh = _Capped()
        p = pickle.Pickler(fh, 4)
        p.persistent_id = _name  # type: ignore[method-assign]
        try:
            p.dump(state)
        except Exception:  # (_TooLarge among them)
            return None
        data = fh.getvalue()
    return None if len(data) > DIGEST_MAX else hashlib.sha256(data).hexdigest()[:32]


def _state(name: str, value: Any) -> bool:
    if name.startswith("__") and name.endswith("__"):
        return False  # (pickling an instance caches __slotnames__ on its class, say)
    if (len(name) > 2 and name.startswith("_") and name.endswith("_")) or name == "_abc_impl":
        return False  # (Enum's tables, abc's registry: this process's)
    if _named(value):
        return True  # (a method replaced, a class attribute naming a class)
    return not hasattr(type(value), "__get__")  # (descriptors: properties, cached_property ...)


def _named(value: Any) -> bool:
    return isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type))


def _size(value: Any) -> int:
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if isinstance(value, type):
        return 0
    n = getattr(value, "nbytes", 0)
    return n if isinstance(n, int) else 0


def _name(obj: Any) -> Any:
    """Functions, methods and classes by where they were defined: the script's module is
    ``__main__`` in the client and ``__mp_main__`` in a worker that imported it."""
    if _size(obj) > DIGEST_MAX:
        raise _TooLarge  # (before pickle copies a large array's data)
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    if not _named(obj):
        return None
    module = getattr(obj, "__module__", None)
    code = getattr(obj, "__code__", None)
    return (
        "__main__" if module in MAIN_NAMES else str(module),
        str(getattr(obj, "__qualname__", "")),
        code.co_firstlineno if isinstance(code, types.CodeType) else 0,
    )


class _TooLarge(Exception):
    pass


class _Capped(io.BytesIO):
    def write(self, data: Any) -> int:
        if self.tell() + len(memoryview(data)) > DIGEST_MAX:
            raise _TooLarge
        return super().write(data)
