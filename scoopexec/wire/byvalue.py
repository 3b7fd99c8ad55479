"""Pickles of functions that travel by value, made again only when what they were made from changed.

A function defined in the script (``__main__``), in a notebook, or in a module that is not
importable, travels by value: cloudpickle writes its code, its defaults and closure, and the
globals its code reads, as they are at the submit.  That costs 40-100 us a submit, where a
function of an importable module pickles by name once and is then looked up (serialize.py's
cache).  A script that submits its own function in a loop thus submitted 5,000 tasks at about
14,000 a second, against 100,000 and more for a module's function (issue 17).

The pickle of such a function is the same bytes again as long as everything cloudpickle read
to make it is the same: the function's code, defaults, closure, names and doc, and the values of
the globals its code reads.  When each of those values cannot change in place -- numbers,
strings, bytes, tuples and frozensets of them, modules, and classes and functions that pickle by
name -- "the same" is "the same object", which a look-up per name tells in a fraction of a
microsecond.  A function of the script that the function reads (a helper) is looked at the same
way, its own globals included.  So, from a function's second pickle (the first may be a lambda's
made for one submit), :func:`prepare` notes before pickling what the pickle is made from, unless
some of it could change unseen (a list, a dict, an array, an instance, a class of the script,
function attributes: those functions are pickled at every submit, as before, and not looked at
again while they live), :func:`keep` keeps the pickle if all of it still holds after pickling
(another thread may rebind a global meanwhile), and :func:`lookup` returns the pickle while all
of it holds.

Looked at too, on every look-up:
* whether what was pickled by name still is (found under its name: not after a reload, a mock's
  patch, or a rename), and the script's functions still are not;
* the modules imported (their number, the latest one, and the entries cloudpickle looks at for
  the imported submodules of a package the function reads, which its pickle lists), the sizes of
  copyreg's table and extension registry (which may change how a value pickles; a reducer
  replaced in place is not seen), and cloudpickle's registry of modules pickled by value (the
  cache is off while it is not empty);
* the source that travels with code whose file is not on disk (a notebook cell's, from
  ``linecache``: serialize._memory_source).  Not: a script's file deleted from the disk while
  it runs, whose lines a fresh pickle would then take from ``linecache`` (tracebacks only).

A function whose kept pickle keeps changing before its second use (a global rebound before each
submit) is pickled at every submit after STRIKES such pickles, as it would be without this.

One race is left: a global that another thread rebinds, and rebinds back to the very same object,
while the function is being pickled; the kept pickle then holds what the global was in between.
"""

from __future__ import annotations

import copyreg
import functools
import itertools
import linecache
import os
import sys
import types
import weakref
from typing import Any

import cloudpickle

__all__ = [
    "KEEP_MAX", "MAX_FACTS", "MAX_ITEMS", "STRIKES", "clear", "holds", "keep", "lookup", "prepare",
    "registered_by_value",
]  # fmt: skip

KEEP_MAX = 1024  # functions whose pickles are kept, at most (past that, all are forgotten)
MAX_FACTS = 512  # names looked at per function, and functions per pickle, at most (past: pickled each time)
MAX_ITEMS = 256  # items of tuples and frozensets looked at per value, at most (past: pickled each time)
STRIKES = 3  # kept pickles in a row that changed before their second use: then pickled each time

_MISSING = object()
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None), type(Ellipsis)})
_NAMED = (types.FunctionType, types.BuiltinFunctionType)  # (and classes): by name, when found under it
_EXTENSIONS: Any = getattr(copyreg, "_extension_registry", {})  # copyreg.add_extension's
_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")  # cloudpickle's, of every function
# cloudpickle's registry of modules pickled by value (register_pickle_by_value adds to it in place)
_BY_VALUE: Any = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
# The names of the globals a code object reads, as cloudpickle finds them (its global load, store
# and delete instructions, nested code included); every name it uses, where cloudpickle has none.
_global_names: Any = getattr(cloudpickle.cloudpickle, "_extract_code_globals", None)


def registered_by_value() -> bool:
    """Whether some module is registered with ``cloudpickle.register_pickle_by_value``."""
    return bool(_BY_VALUE)


class _Kept:
    __slots__ = ("data", "groups", "hits", "ref", "strikes", "world")

    def __init__(self, ref: Any, groups: list[_Group], strikes: int) -> None:
        self.ref = ref
        self.data = b""
        self.groups = groups  # per function pickled by value in it: see _watch
        self.world = _world()
        self.hits = 0  # look-ups that returned it
        self.strikes = strikes  # kept pickles of this function before it that changed before a second use


# (a weak reference to the function, the names of the globals it reads, the ids of their values and
# of its facts as _facts() reads them, those of these objects that are no function of the script,
# what was found to pickle by name, (file name, linecache's entry) when its code's source travels
# with it, else None, and the entries of sys.modules its pickle may list: see _submodules).  The
# functions among them are held weakly, so that no script's namespace is kept alive from here, and
# one that dies drops the pickle (_forget): its id may then be another object's.  The others are
# held, so that their ids stay theirs.
_Group = tuple[
    Any,
    tuple[str, ...],
    tuple[int, ...],
    list[Any],
    list[Any],
    "tuple[str, Any] | None",
    tuple[tuple[str, Any], ...],
]
_ANY_MISSING = itertools.repeat(_MISSING)
_kept: dict[int, _Kept] = {}  # id(function) -> its pickle and what it was made from
# id(function) -> (a weak reference to it, refused, strikes): pickled once (or since its kept
# pickle changed), or found not to be kept
_once: dict[int, tuple[Any, bool, int]] = {}


def lookup(fn: Any) -> bytes | None:
    """The pickle kept for ``fn``, if everything it was made from is unchanged."""
    key = id(fn)
    k = _kept.get(key)
    if k is None or k.ref() is not fn:
        return None
    if not _holds(k):
        # Something changed: made again from the next pickle on, unless that keeps happening before
        # a kept pickle is used twice (a global rebound before each submit): then never again.
        del _kept[key]
        strikes = k.strikes + 1 if k.hits < 2 else 0
        _mark(key, fn, strikes >= STRIKES, strikes)
        return None
    k.hits += 1
    return k.data


def holds(plan: _Kept) -> bool:
    """Whether everything the pickle :func:`prepare` gave ``plan`` for is made from is unchanged."""
    return plan.ref() is not None and _holds(plan)


def prepare(fn: Any) -> _Kept | None:
    """Before ``fn`` is pickled by value: what its pickle is made from, to give :func:`keep` with
    the pickle; None when it is not to be kept (its first pickle, or it reads what can change in
    place: see the module docstring)."""
    key = id(fn)
    if type(fn) is not types.FunctionType or _BY_VALUE:
        return None
    seen = _once.get(key)
    if seen is None or seen[0]() is not fn:
        _mark(key, fn, False, 0)  # pickled once: maybe made for one call
        return None
    if seen[1]:
        return None  # refused before
    drop = functools.partial(_forget, key)
    groups: list[_Group] = []
    if not _watch(fn, groups, {}, drop):
        _mark(key, fn, True, 0)
        return None
    return _Kept(weakref.ref(fn, drop), groups, seen[2])


def keep(fn: Any, data: bytes, plan: _Kept) -> bool:
    """Keep ``data``, ``fn`` pickled after :func:`prepare` gave ``plan``, if what it was made from
    is still the same (another thread may have rebound a global meanwhile); True when kept."""
    key = id(fn)
    if plan.ref() is not fn or not _holds(plan):
        return False
    plan.data = data
    _once.pop(key, None)
    if len(_kept) >= KEEP_MAX:
        _kept.clear()
    _kept[key] = plan
    return True


def clear() -> None:
    """Forget every pickle kept, and every function pickled once."""
    _kept.clear()
    _once.clear()


def _forget(key: int, _ref: Any = None) -> None:
    _kept.pop(key, None)


def _forget_once(key: int, _ref: Any = None) -> None:
    _once.pop(key, None)


def _mark(key: int, fn: Any, refused: bool, strikes: int) -> None:
    if len(_once) >= KEEP_MAX:
        _once.clear()
    _once[key] = (weakref.ref(fn, functools.partial(_forget_once, key)), refused, strikes)


def _world() -> tuple[Any, ...]:
    """What, outside the function, changes how it pickles: the modules imported (their number and
    the latest; the entries a function's pickle lists are looked at apart: _submodules), the sizes
    of copyreg's table and extension registry (a reducer replaced in place is not seen)."""
    mods = sys.modules
    return len(mods), next(reversed(mods), None), len(copyreg.dispatch_table), len(_EXTENSIONS)


def _holds(k: _Kept) -> bool:
    """Whether everything ``k``'s pickle was made from is unchanged."""
    if _BY_VALUE or _world() != k.world:
        return False
    cache, mods = linecache.cache, sys.modules
    for ref, names, ids, _, by_name, source, subs in k.groups:
        f = ref()
        facts = None if f is None else _facts(f)
        if facts is None or (*map(id, map(f.__globals__.get, names, _ANY_MISSING)), *map(id, facts)) != ids:
            return False
        if _by_name(f) or not all(map(_by_name, by_name)):
            return False
        if source is not None and cache.get(source[0]) is not source[1]:
            return False
        for name, module in subs:
            if mods.get(name, _MISSING) is not module:
                return False
    return True


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
    by value that it reads; False if some of it could change unseen."""
    if id(fn) in seen:
        return True
    seen[id(fn)] = True
    facts = _facts(fn)
    if facts is None or fn.__kwdefaults__ is not None or type(fn.__module__) is not str:
        return False  # (kwdefaults: a dict, which may change in place)
    code = fn.__code__
    name = code.co_filename
    # Its source travels with it when its file is not on disk (serialize._memory_source).
    source = None if not name or os.path.isfile(name) else (name, linecache.cache.get(name))
    ann = facts[_FIXED - 1]
    by_name: list[Any] = []
    fixed = (
        fn.__defaults__ or (),
        fn.__name__,
        fn.__qualname__,
        fn.__module__,
        fn.__doc__,
        *ann,
        *ann.values(),
    )
    if not all(_frozen(v, by_name) for v in fixed):
        return False
    cells = facts[_FIXED + 2 * len(ann) :]
    if not all(v is _MISSING or _stable(v, groups, seen, drop, by_name) for v in cells):
        return False
    g = fn.__globals__
    names = (*(_global_names(code) if _global_names is not None else _all_names(code)), *_BASE_GLOBALS)
    if len(names) > MAX_FACTS:
        return False
    values = [g.get(name, _MISSING) for name in names]
    if not all(v is _MISSING or _stable(v, groups, seen, drop, by_name) for v in values):
        return False
    subs = _submodules(code, (*values, *cells))
    values.extend(facts)
    held = [weakref.ref(v, drop) if type(v) is types.FunctionType else v for v in values]
    groups.append((weakref.ref(fn, drop), names, tuple(map(id, values)), held, by_name, source, subs))
    return len(groups) <= MAX_FACTS


def _submodules(code: types.CodeType, values: Any) -> tuple[tuple[str, Any], ...]:
    """The entries of sys.modules that cloudpickle looks at for the submodules a function's pickle
    lists (those of a package among ``values`` whose names are among ``code``'s), with their values
    now (a module, or None, or whatever a test put there)."""
    names = set(code.co_names)
    out = []
    for package in values:
        if type(package) is types.ModuleType and getattr(package, "__package__", None):
            prefix = package.__name__ + "."
            for name, module in list(sys.modules.items()):
                if name.startswith(prefix) and not set(name[len(prefix) :].split(".")) - names:
                    out.append((name, module))
    return tuple(out)


def _all_names(code: types.CodeType) -> list[str]:
    """Every name ``code`` and the code nested in it use (more than the globals it reads)."""
    out = dict.fromkeys(code.co_names)
    for const in code.co_consts:
        if type(const) is types.CodeType:
            out.update(dict.fromkeys(_all_names(const)))
    return list(out)


def _stable(value: Any, groups: list[_Group], seen: dict[int, bool], drop: Any, by_name: list[Any]) -> bool:
    """Whether ``value`` pickles the same while it is the same object: :func:`_frozen`, or a
    function pickled by value, once its own facts are added."""
    if type(value) is types.FunctionType and not _by_name(value):
        return _watch(value, groups, seen, drop)
    return _frozen(value, by_name)


def _frozen(value: Any, by_name: list[Any]) -> bool:
    """Whether ``value`` pickles the same while it is the same object and what it holds pickles by
    name as it did: numbers, strings, bytes, modules, what pickles by name (added to ``by_name``),
    and tuples and frozensets of these (MAX_ITEMS items in all, at most)."""
    todo, budget, walked = [value], MAX_ITEMS, set()
    while todo:
        v = todo.pop()
        tp = type(v)
        if tp in _SCALARS:
            continue
        if tp is tuple or tp is frozenset:
            if id(v) not in walked:
                walked.add(id(v))
                budget -= len(v)
                if budget < 0:
                    return False
                todo.extend(v)
        elif tp is types.ModuleType:
            if sys.modules.get(v.__name__) is not v:
                return False
        elif (tp in _NAMED or isinstance(v, type)) and _by_name(v):
            by_name.append(v)
        else:
            return False
    return True


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
