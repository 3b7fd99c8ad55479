"""Pickles of functions that travel by value, made again only when what they were made from changed.

A function defined in the script (``__main__``), in a notebook, or in a module that is not
importable, travels by value: cloudpickle writes its code, its defaults and closure, and the
globals its code names, as they are at the submit.  That costs 50-100 us a submit, where a
function of an importable module pickles by name once and is then looked up (serialize.py's
cache).  A script that submits its own function in a loop thus submitted 5,000 tasks at about
15,000 a second, against 190,000-380,000 for a module's function (issue 17).

The pickle of such a function is the same bytes again as long as everything cloudpickle read
to make it is the same: the function's code, defaults, closure and attributes, and the values
of the globals its code names.  When each of those values cannot change in place -- numbers,
strings, bytes, tuples and frozensets of them, modules, and classes and functions that pickle
by name -- "the same" is "the same object", which a look-up per name tells in well under a
microsecond.  A function of the script that names another (a helper) is looked at the same way,
the names of the helper's code included.  So :func:`keep` records, after a function was pickled
by value, what the pickle was made from, unless some of it could change unseen (a list, a dict,
an array, an instance, a class of the script: those functions are pickled at every submit, as
before), and :func:`lookup` returns the pickle while every one of those facts still holds.

Also looked at: the number of modules imported (cloudpickle lists the imported submodules a
function names as attributes of its package), and cloudpickle's registry of modules pickled by
value, which turns the cache off while it is not empty.
"""

from __future__ import annotations

import functools
import itertools
import sys
import types
import weakref
from typing import Any

import cloudpickle

__all__ = ["KEEP_MAX", "MAX_FACTS", "clear", "keep", "lookup"]

KEEP_MAX = 1024  # functions whose pickles are kept, at most (past that, all are forgotten)
MAX_FACTS = 512  # names looked at per function, and functions per pickle, at most (past: pickled each time)
_MAX_ITEMS = 64  # items of a tuple or frozenset looked at, at most

_MISSING = object()
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None), type(Ellipsis)})
_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")  # cloudpickle's, of every function
# cloudpickle's registry of modules pickled by value (register_pickle_by_value adds to it in place)
_BY_VALUE: Any = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)


class _Kept:
    __slots__ = ("data", "groups", "modules", "ref")

    def __init__(self, ref: Any, data: bytes, groups: list[_Group]) -> None:
        self.ref = ref
        self.data = data
        self.groups = groups  # per function pickled by value in it: see _watch
        self.modules = len(sys.modules)


# (a weak reference to the function, the names of the globals it reads, the ids of their values and
# of its facts as _facts() reads them, those of these objects that are no function of the script).
# The functions among them are held weakly, so that no script's namespace is kept alive from here,
# and one that dies drops the pickle (_forget): its id may then be another object's.  The others
# are held, so that their ids stay theirs.
_Group = tuple[Any, tuple[str, ...], tuple[int, ...], list[Any]]
_ANY_MISSING = itertools.repeat(_MISSING)
_kept: dict[int, _Kept] = {}  # id(function) -> its pickle and what it was made from
# id(function) -> (a weak reference to it, refused): pickled once, or found not to be kept
_once: dict[int, tuple[Any, bool]] = {}


def lookup(fn: Any) -> bytes | None:
    """The pickle :func:`keep` recorded for ``fn``, if everything it was made from is unchanged."""
    k = _kept.get(id(fn))
    if k is None or k.ref() is not fn or _BY_VALUE or k.modules != len(sys.modules):
        return None
    for ref, names, ids, _ in k.groups:
        f = ref()
        facts = None if f is None else _facts(f)
        if facts is None or (*map(id, map(f.__globals__.get, names, _ANY_MISSING)), *map(id, facts)) != ids:
            return None
    return k.data


def keep(fn: Any, data: bytes) -> bool:
    """Record that ``data`` is ``fn`` pickled by value, if what it was made from cannot change
    unseen (see the module docstring); True when recorded.  Call it right after pickling.

    Only from ``fn``'s second pickle: looking at what a pickle was made from costs about half
    of what pickling does, and a lambda or closure made for one submit is pickled once.  A
    function found to read what can change in place is not looked at again while it lives.
    """
    key = id(fn)
    if type(fn) is not types.FunctionType or _BY_VALUE:
        return False
    seen = _once.get(key)
    if seen is not None and seen[0]() is fn:
        if seen[1]:  # (refused before)
            return False
    else:
        _mark(key, fn, False)  # pickled once
        return False
    drop = functools.partial(_forget, key)
    groups: list[_Group] = []
    if not _watch(fn, groups, {}, drop):
        _kept.pop(key, None)
        _mark(key, fn, True)
        return False
    _once.pop(key, None)
    if len(_kept) >= KEEP_MAX:
        _kept.clear()
    _kept[key] = _Kept(weakref.ref(fn, drop), data, groups)
    return True


def clear() -> None:
    """Forget every pickle kept, and every function pickled once."""
    _kept.clear()
    _once.clear()


def _forget(key: int, _ref: Any = None) -> None:
    _kept.pop(key, None)


def _forget_once(key: int, _ref: Any = None) -> None:
    _once.pop(key, None)


def _mark(key: int, fn: Any, refused: bool) -> None:
    if len(_once) >= KEEP_MAX:
        _once.clear()
    _once[key] = (weakref.ref(fn, functools.partial(_forget_once, key)), refused)


def _facts(fn: types.FunctionType) -> tuple[Any, ...] | None:
    """What cloudpickle reads of ``fn`` itself, beyond its globals; None when it has attributes
    (or its annotations cannot be read)."""
    if fn.__dict__:
        return None
    try:
        ann = fn.__annotations__  # (evaluated when first read, from Python 3.14)
    except Exception:
        return None
    cells = fn.__closure__ or ()
    return (
        fn.__code__, fn.__defaults__, fn.__kwdefaults__, fn.__name__, fn.__qualname__, fn.__module__,
        fn.__doc__, ann, *ann, *ann.values(), *map(_cell, cells),
    )  # fmt: skip


_FIXED = 8  # _facts()'s items before the annotations' names


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # (not filled yet)
        return _MISSING


def _watch(fn: types.FunctionType, groups: list[_Group], seen: dict[int, bool], drop: Any) -> bool:
    """Add to ``groups`` what ``fn``'s pickle is made from, and the same for each function pickled
    by value that it names; False if some of it could change unseen."""
    if id(fn) in seen:
        return True
    seen[id(fn)] = True
    facts = _facts(fn)
    if facts is None or fn.__kwdefaults__:  # (a dict: it may change in place)
        return False
    ann = facts[_FIXED - 1]
    if not all(map(_frozen, (*(fn.__defaults__ or ()), *ann.values()))):
        return False
    cells = facts[_FIXED + 2 * len(ann) :]
    if not all(v is _MISSING or _stable(v, groups, seen, drop) for v in cells):
        return False
    g = fn.__globals__
    names = (*_code_names(fn.__code__), *_BASE_GLOBALS)
    if len(names) > MAX_FACTS:
        return False
    values = [g.get(name, _MISSING) for name in names]
    if not all(v is _MISSING or _stable(v, groups, seen, drop) for v in values):
        return False
    values.extend(facts)
    held = [weakref.ref(v, drop) if type(v) is types.FunctionType else v for v in values]
    groups.append((weakref.ref(fn, drop), names, tuple(map(id, values)), held))
    return len(groups) <= MAX_FACTS


def _code_names(code: types.CodeType) -> list[str]:
    """Every name ``code`` and the code nested in it use: the globals cloudpickle reads among them."""
    out = dict.fromkeys(code.co_names)
    for const in code.co_consts:
        if type(const) is types.CodeType:
            out.update(dict.fromkeys(_code_names(const)))
    return list(out)


def _stable(value: Any, groups: list[_Group], seen: dict[int, bool], drop: Any) -> bool:
    """Whether ``value`` pickles the same while it is the same object: :func:`_frozen`, or a
    function pickled by value, once its own facts are added."""
    if type(value) is types.FunctionType and not _by_name(value):
        return _watch(value, groups, seen, drop)
    return _frozen(value)


def _frozen(value: Any) -> bool:
    """Whether ``value`` pickles the same while it is the same object, and holds no function
    pickled by value: numbers, strings, bytes, modules, what pickles by name, and tuples and
    frozensets of these."""
    tp = type(value)
    if tp in _SCALARS:
        return True
    if tp is tuple or tp is frozenset:
        return len(value) <= _MAX_ITEMS and all(map(_frozen, value))
    if tp is types.ModuleType:
        return sys.modules.get(value.__name__) is value
    if tp is types.FunctionType or tp is types.BuiltinFunctionType or isinstance(value, type):
        return _by_name(value)
    return False


def _by_name(obj: Any) -> bool:
    """Whether cloudpickle pickles ``obj`` (a function or a class) by name: found under its name in
    an imported module other than ``__main__``."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if type(module_name) is not str or type(qualname) is not str or module_name == "__main__":
        return False
    found: Any = sys.modules.get(module_name)
    if found is None or "<locals>" in qualname:
        return False
    for part in qualname.split("."):
        found = getattr(found, part, _MISSING)
    return found is obj
