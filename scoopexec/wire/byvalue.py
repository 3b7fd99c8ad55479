"""Pickles of functions that travel by value, made again only when what they were made from changed.

A function defined in the script (``__main__``), in a notebook, or in a module that is not
importable, travels by value: cloudpickle writes its code, its defaults and closure, and the
globals its code reads, as they are at the submit.  That costs 40-100 us a submit, where a
function of an importable module pickles by name once and is then looked up (serialize.py's
cache).  A script that submits its own function in a loop thus submitted 5,000 tasks at about
14,000 a second, against 100,000 and more for a module's function (issue 17).

The pickle of such a function is the same bytes again as long as everything cloudpickle read to
make it is the same: the function's code, defaults, closure, names, doc and attributes, and the
values of the globals its code reads.  Of a value that cannot change in place -- numbers, strings,
bytes, modules, classes, functions and sentinels that pickle by name, tuples, frozensets and
frozendicts of these -- "the same" is "the same object", which an id tells.  A value that can -- a
dict (keyword-only defaults are one), a list, a set, dataclasses' fields -- is the same while its
items are, compared at each look-up (their ids, in the order the pickle takes them).  A function of
the script that the function reads (a helper) is looked at the same way, its own globals included,
and so is a class of the script it reads (metaclass ``type``, one base, no ``__slots__``; a
dataclass too): its namespace, its name and base, and its base's values for the same names (a
value shared with the base is left out of the pickle).  So, from a function's second pickle (the
first may be a lambda's made for one submit), :func:`prepare` notes before pickling what the
pickle is made from, unless some of it cannot be looked at (an array, an object, an enum, a class
with another metaclass, a descriptor, more than MAX_ITEMS items in containers and class
namespaces: those functions are pickled at every submit, as before, and not looked at again while
they live), :func:`keep` keeps the pickle if all of it still holds after pickling (another thread
may rebind a global meanwhile), and :func:`lookup` returns the pickle while all of it holds.  What
is looked at is held, so that its id stays its own: the script's functions and classes weakly (one
that dies drops the pickle), the rest strongly, until the function's pickle is made again or the
function dies (a container held so holds what it holds: a function in a list is alive while the
list is held).

A class of the script among a task's arguments is not kept here: it and its instances are one
pickle.  A pool whose workers are forks of the client sends it by reference while it is as they
inherited it (wire/mainclasses.py, with :func:`snapshot_class` and :func:`still`); other pools
pickle it with the arguments each time.

Looked at too, on every look-up:
* whether what was pickled by name still is (found under its name: not after a reload, a mock's
  patch, or a rename), and the script's functions still are not;
* the modules imported (their number, the latest one, and the entries cloudpickle looks at for
  the imported submodules of a package the function reads, which its pickle lists), the sizes of
  copyreg's table and extension registry (which may change how a value pickles; a reducer
  replaced in place is not seen), and cloudpickle's registry of modules pickled by value (the
  cache is off while it is not empty);
* the source that travels with code whose file is not on disk (a notebook cell's, from
  ``linecache``: serialize._memory_source).  Whether the file is on disk is looked at once, when
  the pickle is made: not seen are a script's file deleted from the disk while it runs, or a
  relative file name after a change of directory, for which a fresh pickle would take the lines
  from ``linecache`` (for tracebacks only).

A function whose kept pickle keeps changing before its second use (a global rebound before each
submit) is pickled at every submit after STRIKES such pickles, as it would be without this.

One race is left: a global that another thread rebinds, and rebinds back to the very same object,
while the function is being pickled; the kept pickle then holds what the global was in between.
"""

from __future__ import annotations

import builtins
import copyreg
import functools
import itertools
import linecache
import operator
import os
import sys
import time
import types
import weakref
from typing import Any

import cloudpickle

__all__ = [
    "BY_VALUE_MODULES", "KEEP_MAX", "MAX_FACTS", "MAX_ITEMS", "STRIKES", "clear", "holds", "keep", "lookup",
    "namespaces_still", "prepare", "snapshot_class", "still",
]  # fmt: skip

KEEP_MAX = 1024  # functions whose pickles are kept, at most (past that, all are forgotten)
MAX_FACTS = 512  # names looked at per function, and functions per pickle, at most (past: pickled each time)
MAX_ITEMS = 256  # items of containers and class namespaces looked at per pickle, at most (past: each time)
STRIKES = 3  # kept pickles in a row that changed before their second use: then pickled each time

_MISSING = object()
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None), type(Ellipsis)})
# Python 3.15's sentinel type (PEP 661: dataclasses.MISSING is one): pickled by its __name__.
_SENTINEL: Any = getattr(builtins, "sentinel", None)
_FROZENDICT: Any = getattr(builtins, "frozendict", None)  # 3.15 (PEP 814): a Field's default metadata
# (and classes): by name, when found under it
_NAMED = (types.FunctionType, types.BuiltinFunctionType) + ((_SENTINEL,) if _SENTINEL is not None else ())
_EXTENSIONS: Any = getattr(copyreg, "_extension_registry", {})  # copyreg.add_extension's
_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")  # cloudpickle's, of every function
# cloudpickle's registry of modules pickled by value (register_pickle_by_value adds to it in place;
# serialize.py looks at it too)
BY_VALUE_MODULES: Any = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
_BY_VALUE = BY_VALUE_MODULES
# The names of the globals a code object reads, as cloudpickle finds them (its global load, store
# and delete instructions, nested code included); every name it uses, where cloudpickle has none.
_global_names: Any = getattr(cloudpickle.cloudpickle, "_extract_code_globals", None)


class _Kept:
    """A pickle and what it was made from (see _holds)."""

    __slots__ = (
        "by_name",
        "data",
        "deep",
        "groups",
        "held",
        "hits",
        "ref",
        "sources",
        "strikes",
        "subs",
        "world",
    )

    def __init__(self, ref: Any, strikes: int) -> None:
        self.ref = ref
        self.data = b""
        self.world = _world()
        self.hits = 0  # look-ups that returned it
        self.strikes = strikes  # kept pickles of this function before it that changed before a second use
        # Per function or class pickled by value in it: (a weak reference to it, the names of the
        # globals a function reads (_CLASS for a class), the ids of what _function_ids() or
        # _class_ids() read of it, whether its module is not __main__: then it must still not
        # pickle by name).
        self.groups: list[tuple[Any, Any, tuple[int, ...], bool]] = []
        # Containers that may change in place: (it, what reads its items, their ids).
        self.deep: list[tuple[Any, Any, tuple[int, ...]]] = []
        # What pickled by name (and must still, under the same name), by id: (it, module, qualname).
        self.by_name: dict[int, tuple[Any, str, str]] = {}
        self.sources: list[tuple[str, Any]] = []  # (file, linecache's entry) of code whose source travels
        self.subs: list[tuple[str, Any]] = []  # entries of sys.modules a submodule list is made from
        # What the ids above are of: held, so that they stay theirs; the functions and classes of the
        # script weakly (no script's namespace is kept alive from here), and one that dies drops the
        # pickle (_forget), as its id may then be another object's.
        self.held: list[Any] = []


_CLASS = "class"  # a group of a class, in place of a function's names
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
        _kept.pop(key, None)  # (a weak reference may have dropped it meanwhile, in another thread)
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
    the pickle; None when it is not to be kept (its first pickle, or it reads what cannot be looked
    at: see the module docstring)."""
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
    plan = _Kept(weakref.ref(fn, drop), seen[2])
    try:
        watched = _watch(fn, _Walk(plan, drop))
    except Exception:  # (RecursionError: functions and classes that read each other, hundreds deep)
        watched = False
    if not watched:
        _mark(key, fn, True, 0)
        return None
    return plan


def snapshot_class(cls: type, deadline: float | None = None) -> _Kept | None:
    """What a pickle of the script's class ``cls`` by value would be made from, now (its
    namespace, and the functions, classes and containers it reads, as :func:`prepare` notes a
    function's); None when some of it cannot be looked at, or the walk is still going at
    ``deadline`` (time.perf_counter()).  :func:`still` tells whether all of it is unchanged since
    (wire/mainclasses.py: what a pool's forked workers inherited)."""
    if type(cls) is not type or _BY_VALUE:
        return None
    plan = _Kept(weakref.ref(cls), 0)
    walk = _Walk(plan, None)
    walk.deadline = deadline
    try:
        watched = _watch_class(cls, walk)
    except Exception:  # (RecursionError, as in prepare)
        watched = False
    return plan if watched else None


def still(plan: _Kept) -> bool:
    """Whether everything :func:`snapshot_class` noted in ``plan`` is unchanged.  Unlike a kept
    pickle's, the modules imported since and the source lines ``linecache`` holds for code not
    on disk do not count: they change how a pickle is written (a traceback's lines), not what the
    class and what it reads are (a worker's ``linecache`` takes the lines of every function it
    receives by value: a dataclass's generated methods share one file name, ``<string>``)."""
    try:
        return plan.ref() is not None and _same(plan, False)
    except Exception:
        return False


def namespaces_still(plan: _Kept) -> bool:
    """Whether the namespaces of the classes :func:`snapshot_class` noted in ``plan`` (the class,
    and the classes of the script it reads or derives from) are unchanged: the part of
    :func:`still`'s look that leaves out the containers and the functions' globals and facts, at
    about a seventh of its cost.  What sets a class from a pickle by value (cloudpickle sets each
    attribute anew), or sets an attribute of it, changes its namespace."""
    try:
        for ref, names, ids, _elsewhere in plan.groups:
            obj = ref()
            if obj is None:
                return False  # (a method replaced, and gone: its id may be its successor's)
            if names is _CLASS and _class_ids(obj) != ids:
                return False
        return True
    except Exception:
        return False


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
    """Whether everything ``k``'s pickle was made from is unchanged (an error reading it: not)."""
    try:
        return _unchanged(k)
    except Exception:  # (a dataclass field's slot deleted, say: the pickle is made again, and says why)
        return False


def _unchanged(k: _Kept) -> bool:
    return _world() == k.world and _same(k)


def _same(k: _Kept, sources: bool = True) -> bool:
    if _BY_VALUE:
        return False
    for ref, names, ids, elsewhere in k.groups:
        obj = ref()
        if obj is None or (_class_ids(obj) if names is _CLASS else _function_ids(obj, names)) != ids:
            return False
        if elsewhere and _by_name(obj):  # (of __main__, as its unchanged __module__ says: never by name)
            return False
    for obj, read, ids in k.deep:
        if tuple(map(id, read(obj))) != ids:
            return False
    for obj, module, qualname in k.by_name.values():
        if obj.__module__ != module or _qualname(obj) != qualname or not _by_name(obj):
            return False
    cache, mods = linecache.cache, sys.modules
    for name, entry in k.sources if sources else ():
        if cache.get(name) is not entry:
            return False
    for name, module in k.subs:
        if mods.get(name, _MISSING) is not module:
            return False
    return True


def _function_ids(fn: types.FunctionType, names: tuple[str, ...]) -> tuple[int, ...] | None:
    """The ids of the values of the globals ``names`` of ``fn``, and of its facts."""
    facts = _facts(fn)
    if facts is None:
        return None
    return (*map(id, map(fn.__globals__.get, names, _ANY_MISSING)), *map(id, facts))


def _facts(fn: types.FunctionType) -> tuple[Any, ...] | None:
    """What cloudpickle reads of ``fn`` itself, beyond its globals (its attributes' namespace: the
    attributes are looked at as a container's items); None when its annotations cannot be read."""
    try:
        ann = fn.__annotations__  # (evaluated when first read, from Python 3.14)
    except Exception:
        return None
    cells = fn.__closure__ or ()
    return (
        fn.__code__, fn.__defaults__, fn.__kwdefaults__, fn.__name__, fn.__qualname__, fn.__module__,
        fn.__doc__, fn.__dict__, len(fn.__dict__), ann, *ann, *ann.values(), *map(_cell, cells),
    )  # fmt: skip


_FIXED = 10  # _facts()'s items before the annotations' names


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # (not filled yet)
        return _MISSING


def _class_ids(cls: type) -> tuple[int, ...] | None:
    """The ids of _class_parts(cls)."""
    parts = _class_parts(cls)
    return None if parts is None else tuple(map(id, parts))


def _class_parts(cls: type) -> tuple[Any, ...] | None:
    """What cloudpickle reads of a class to pickle it by value: its metaclass, names and base, its
    own namespace (names and values), and its base's values for the same names (a value it shares
    with its base is left out of the pickle); None for a class of more than one base."""
    bases = cls.__bases__
    if len(bases) != 1:
        return None
    d, inherited = cls.__dict__, bases[0].__dict__
    return (
        type(cls),
        cls.__name__,
        cls.__qualname__,
        *bases,
        *d,
        *d.values(),
        *map(inherited.get, d, _ANY_MISSING),
    )


class _Walk:
    """prepare()'s walk through what a pickle is made from, into its plan."""

    __slots__ = ("budget", "deadline", "drop", "plan", "seen")

    def __init__(self, plan: _Kept, drop: Any) -> None:
        self.plan = plan
        self.drop = drop
        self.seen: set[int] = set()  # functions, classes and containers walked already
        self.budget = MAX_ITEMS  # items of containers left to walk
        self.deadline: float | None = None  # (time.perf_counter()) past it, the walk gives up

    def late(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def hold(self, values: Any) -> None:
        drop, held = self.drop, self.plan.held
        for v in values:
            held.append(weakref.ref(v, drop) if type(v) is types.FunctionType or type(v) is type else v)


def _watch(fn: types.FunctionType, w: _Walk) -> bool:
    """Add to ``w``'s plan what ``fn``'s pickle is made from, and the same for each function or
    class pickled by value that it reads; False if some of it cannot be looked at."""
    if id(fn) in w.seen:
        return True
    w.seen.add(id(fn))
    if w.late():
        return False
    facts = _facts(fn)
    if facts is None or type(fn.__module__) is not str:
        return False
    code = fn.__code__
    name = code.co_filename
    if name and not os.path.isfile(name):  # its source travels with it (serialize._memory_source)
        w.plan.sources.append((name, linecache.cache.get(name)))
    ann = facts[_FIXED - 1]
    w.budget -= len(ann)
    if w.budget < 0:
        return False
    cells = facts[_FIXED + 2 * len(ann) :]
    # (its attributes: their number is among its facts, so that an empty namespace costs no look)
    attributes = (fn.__dict__,) if fn.__dict__ else ()
    # (its keyword-only defaults: a dict, which may change in place, looked at as any dict)
    kwdefaults = (fn.__kwdefaults__,) if fn.__kwdefaults__ is not None else ()
    own = (fn.__defaults__ or (), *kwdefaults, fn.__name__, fn.__qualname__, fn.__module__, fn.__doc__)
    own = (*own, *attributes, *ann, *ann.values(), *cells)
    if not all(_snap(v, w) for v in own):
        return False
    g = fn.__globals__
    names = (*(_global_names(code) if _global_names is not None else _all_names(code)), *_BASE_GLOBALS)
    if len(names) > MAX_FACTS:
        return False
    values = [g.get(name, _MISSING) for name in names]
    if not all(_snap(v, w) for v in values):
        return False
    w.plan.subs.extend(_submodules(code, (*values, *cells)))
    values.extend(facts)
    w.hold(values)
    elsewhere = fn.__module__ != "__main__"
    w.plan.groups.append((weakref.ref(fn, w.drop), names, tuple(map(id, values)), elsewhere))
    return len(w.plan.groups) <= MAX_FACTS


def _watch_class(cls: type, w: _Walk) -> bool:
    """As _watch, for a class pickled by value: a plain one (``type`` its metaclass, one base, no
    ``__slots__``), a dataclass included."""
    if id(cls) in w.seen:
        return True
    w.seen.add(id(cls))
    if w.late():
        return False
    if type(cls) is not type or "__slots__" in cls.__dict__ or len(cls.__bases__) != 1:
        return False
    if type(cls.__dict__.get("__module__")) is not str:  # (cloudpickle would look for it in every module)
        return False
    d = cls.__dict__
    w.budget -= len(d)
    if w.budget < 0 or not _snap(cls.__bases__[0], w):
        return False
    # Its __dict__ and __weakref__ descriptors are left out of its pickle by cloudpickle: they are
    # compared by id, not walked.  The class's own (to Python 3.14) are not held either, as they
    # hold the class (compared by id, they are the class's for as long as it lives); from 3.15
    # they are shared by every class (their __objclass__ is object).
    plain = {id(d[k]) for k in _OWN if type(d.get(k)) is types.GetSetDescriptorType}
    if any(k in d and id(d[k]) not in plain for k in _OWN):
        return False  # (a __dict__ that is something else: a property, cloudpickle would send; refused)
    own = {id(d[k]) for k in _OWN if id(d.get(k)) in plain and d[k].__objclass__ is cls}
    # (From Python 3.14, the function that makes its annotations is left out of its pickle too.)
    skip = plain | {id(d["__annotate_func__"])} if "__annotate_func__" in d else plain
    if not all(id(v) in skip or _snap(v, w) for v in d.values()):
        return False
    parts = _class_parts(cls)
    if parts is None:  # (never: one base, looked at above)
        return False
    w.hold(v for v in parts if id(v) not in own)
    elsewhere = d.get("__module__") != "__main__"  # (its __module__ is in its namespace: compared)
    w.plan.groups.append((weakref.ref(cls, w.drop), _CLASS, tuple(map(id, parts)), elsewhere))
    return len(w.plan.groups) <= MAX_FACTS


def _submodules(code: types.CodeType, values: Any) -> list[tuple[str, Any]]:
    """The entries of sys.modules that cloudpickle looks at for the submodules a function's pickle
    lists (those of a package among ``values`` whose names are among ``code``'s), with their values
    now (a module, or None, or whatever a test put there)."""
    names = set(code.co_names)
    out = []
    for package in values:
        if type(package) is types.ModuleType and getattr(package, "__package__", None):
            prefix = package.__name__ + "."
            for name, module in list(sys.modules.items()):
                if type(name) is not str:  # (as cloudpickle skips it)
                    continue
                if name.startswith(prefix) and not set(name[len(prefix) :].split(".")) - names:
                    out.append((name, module))
    return out


def _all_names(code: types.CodeType) -> list[str]:
    """Every name ``code`` and the code nested in it use (more than the globals it reads)."""
    out = dict.fromkeys(code.co_names)
    for const in code.co_consts:
        if type(const) is types.CodeType:
            out.update(dict.fromkeys(_all_names(const)))
    return list(out)


def _mapping_items(obj: Any) -> tuple[Any, ...]:
    return (*obj.keys(), *obj.values())


def _attribute_items(obj: Any) -> tuple[Any, ...]:
    """An object pickled as its class, by name, and its attributes: those (the class walked too,
    so that it must still be found under its name, and compared, so that its swap is seen)."""
    return (type(obj), *_mapping_items(vars(obj)))


# What reads the items of a container that may change in place, in the order it pickles them
# (dataclasses' Field and _DataclassParams, whose state is their slots, are added when seen).
_READERS: dict[type, Any] = {
    dict: _mapping_items, types.MappingProxyType: _mapping_items, list: tuple, set: tuple,
    staticmethod: operator.attrgetter("__func__", "__func__"),
    classmethod: operator.attrgetter("__func__", "__func__"),
    property: operator.attrgetter("fget", "fset", "fdel", "__doc__"),
}  # fmt: skip
_CONSTANTS: tuple[type, ...] = ()  # stdlib sentinels pickled by name (dataclasses.MISSING, ...)
_OWN = ("__dict__", "__weakref__")  # a class's own descriptors, which cloudpickle leaves out
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement (or type()), not in C
# The types cloudpickle pickles by their names among the built-in ones (types.CodeType, say).
_BUILTIN_TYPES: Any = getattr(cloudpickle.cloudpickle, "_BUILTIN_TYPE_NAMES", {})


def _dataclass_types() -> None:
    """Add dataclasses' slotted types to _READERS, and its sentinels to _CONSTANTS, once imported."""
    global _CONSTANTS
    dc = sys.modules.get("dataclasses")
    if dc is None or _CONSTANTS:
        return
    for name in ("Field", "_DataclassParams"):
        tp = getattr(dc, name, None)
        if isinstance(tp, type):
            slots = [s for t in tp.__mro__ for s in getattr(t, "__slots__", ())]
            _READERS[tp] = operator.attrgetter(*slots, *slots[:1])  # (twice the first: a tuple, always)
    # Two objects of dataclasses whose pickle is their class, by name, and their attributes (none):
    # the default of a field with a default_factory in __init__ (_HAS_DEFAULT_FACTORY), and from
    # Python 3.15 a dataclass's __doc__ until first read (an _AutoDocstring; then the text it
    # makes).  Read as those attributes, they no longer refuse the dataclasses that have them.
    for name in ("_HAS_DEFAULT_FACTORY_CLASS", "_AutoDocstring"):
        tp = getattr(dc, name, None)
        if isinstance(tp, type) and "__slots__" not in tp.__dict__:
            _READERS[tp] = _attribute_items
    _CONSTANTS = tuple(
        t
        for t in (getattr(dc, n, None) for n in ("_MISSING_TYPE", "_FIELD_BASE", "_KW_ONLY_TYPE"))
        if isinstance(t, type)
    )


def _snap(value: Any, w: _Walk) -> bool:
    """Add to ``w`` what ``value`` pickles from, if it can be told unchanged while it is the same
    object: numbers, strings, bytes, modules, what pickles by name (and must still), functions
    and classes pickled by value (walked in turn), tuples and frozensets of these, and dicts,
    lists, sets and dataclasses' fields, whose items are compared at each look-up (MAX_ITEMS
    items in all, at most)."""
    tp = type(value)
    if tp in _SCALARS or value is _MISSING:
        return True
    if tp is types.ModuleType:
        return sys.modules.get(value.__name__) is value
    if tp in _NAMED or isinstance(value, type):
        if _by_name(value):
            w.plan.by_name[id(value)] = (value, value.__module__, _qualname(value))
            return True
        if tp is types.FunctionType:
            return _watch(value, w)
        if tp is type and not value.__flags__ & _HEAP_TYPE:
            return value in _BUILTIN_TYPES  # (types.CodeType and the like: by their names)
        return tp is type and _watch_class(value, w)  # (a class of the script)
    if id(value) in w.seen:
        return True
    w.seen.add(id(value))
    _dataclass_types()
    if tp is tuple or tp is frozenset:
        items: Any = value
    elif tp is _FROZENDICT:  # (immutable as a tuple is: its items are walked, not compared again)
        items = _mapping_items(value)
    elif tp in _READERS:
        read = _READERS[tp]
        try:
            items = tuple(read(value))
        except AttributeError:  # (a slot not set)
            return False
        w.plan.deep.append((value, read, tuple(map(id, items))))
        w.hold((value, *items))
    elif tp in _CONSTANTS:
        return True
    else:
        return False
    w.budget -= len(items)
    return w.budget >= 0 and all(_snap(v, w) for v in items)


def _qualname(obj: Any) -> Any:
    """The name pickle looks ``obj`` up by in its module: its __qualname__ (a sentinel's __name__)."""
    if type(obj) is _SENTINEL:
        return getattr(obj, "__name__", None)
    return getattr(obj, "__qualname__", None)


def _by_name(obj: Any) -> bool:
    """Whether cloudpickle pickles ``obj`` (a function or a class) by name: found under its name in
    an imported module other than ``__main__``."""
    module_name = getattr(obj, "__module__", None)
    qualname = _qualname(obj)
    if type(module_name) is not str or type(qualname) is not str or module_name == "__main__":
        return False
    found: Any = sys.modules.get(module_name)
    if found is None or "<locals>" in qualname:
        return False
    for part in qualname.split("."):
        found = getattr(found, part, _MISSING)
    return found is obj
