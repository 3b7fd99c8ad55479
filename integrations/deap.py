"""DEAP on scoopexec: ``toolbox.register("map", scoop_map)`` and nothing else changes.

::

    from scoopexec import scoop_map
    toolbox.register("map", scoop_map)
    pop, log = algorithms.eaSimple(pop, toolbox, cxpb=0.5, mutpb=0.2, ngen=40)

``scoop_map(func, *iterables)`` returns ``list(map(func, *iterables))``, each
call a task on "the pool you are in": the executor of the innermost ``with
ScoopExecutor()`` block (or the ``python -m scoopexec`` launcher's pool); inside
a task, the pool that task runs in (so DEAP's island model, which maps whole
``eaSimple`` runs whose own ``toolbox.map`` fans out again, runs nested maps
that park instead of blocking a worker); otherwise a default local pool started
on first use and stopped at exit.

Classes made with ``creator.create`` at the top level of the script exist on
workers, which import the script (as ``__mp_main__``); DEAP >= 1.4 also
pickles creator classes by value, so ones made inside ``main()`` work too.
DEAP re-creates such a class -- and rebinds ``creator.<name>`` -- every time
one is unpickled, so that after the first results came back a client's
``creator.Individual`` was no longer the class its toolbox and population
refer to (and the stale class cannot be pickled again by value).
``register()``, run as soon as ``deap.creator`` is imported in a process that
imported scoopexec (workers included), makes unpickling reuse the existing
class when its definition is the same; a different definition is created as
DEAP does.
An argument that cannot be pickled -- typically a toolbox sent whole, holding
an open file or a process pool -- fails with ``SerializationError`` naming the
attribute, e.g. ``toolbox.log (an _io.TextIOWrapper)``.
"""

from __future__ import annotations

import copyreg
import functools
import types
from collections.abc import Callable, Iterable
from typing import Any

from scoopexec import futures
from scoopexec.errors import SerializationError

__all__ = ["register", "scoop_map"]


def scoop_map(
    func: Callable[..., Any],
    *iterables: Iterable[Any],
    chunksize: int = 1,
    timeout: float | None = None,
) -> list[Any]:
    """``list(map(func, *iterables))`` with every call a task on the current pool.

    Results come back in order.  ``chunksize`` calls travel per task (worth
    raising when each evaluation takes well under a millisecond);
    ``timeout`` (seconds) bounds the whole map.  A call's exception is raised
    here with the remote traceback as its ``__cause__``.
    """
    if not iterables:
        raise TypeError("scoop_map() needs at least one iterable, like map()")
    seqs = [it if isinstance(it, (list, tuple)) else list(it) for it in iterables]
    try:
        return list(futures.map(func, *seqs, chunksize=chunksize, timeout=timeout))
    except SerializationError as exc:
        culprit = _find_unpicklable(func, _label(func), set())
        if culprit is None:
            for i, args in enumerate(zip(*seqs, strict=False)):
                culprit = _find_unpicklable(args, f"item {i} of the map", set())
                if culprit is not None:
                    break
        if culprit is None:
            raise
        where, obj, error = culprit
        raise SerializationError(
            f"scoop_map cannot send {where} ({_describe(obj)}) to the workers: "
            f"{type(error).__name__}: {error}"
        ) from exc


def _label(func: Any) -> str:
    name = getattr(func, "__name__", None)
    if isinstance(func, functools.partial) and name:
        return f"toolbox.{name}"  # what Toolbox.register makes
    return str(getattr(func, "__qualname__", None) or type(func).__name__)


def _picklable(obj: Any) -> Exception | None:
    from scoopexec import serialize

    try:
        serialize.dumps(obj)
    except Exception as exc:
        return exc
    return None


def _describe(obj: Any) -> str:
    tp = type(obj)
    name = tp.__qualname__ if tp.__module__ in ("builtins", None) else f"{tp.__module__}.{tp.__qualname__}"
    article = "an" if name[:1].lower() in "aeiou_" else "a"
    return f"{article} {name}"


def _find_unpicklable(
    obj: Any, where: str, seen: set[int], depth: int = 0
) -> tuple[str, Any, Exception] | None:
    """The innermost part of ``obj`` that cannot be pickled, as (name, part, error); None if none."""
    if id(obj) in seen or depth > 12:
        return None
    seen.add(id(obj))
    error = _picklable(obj)
    if error is None:
        return None
    children: list[tuple[str, Any]] = []
    owner = getattr(obj, "__self__", None)
    if isinstance(obj, functools.partial):
        children.append((where, obj.func))  # toolbox.<name> is the partial Toolbox.register made
        children += [(f"{where} argument {i}", a) for i, a in enumerate(obj.args)]
        children += [(f"{where} argument {k}=", v) for k, v in obj.keywords.items()]
    elif owner is not None and not isinstance(owner, types.ModuleType) and callable(obj):
        children.append((f"{where}.__self__", owner))  # a bound method, Python or built-in
    elif isinstance(obj, (list, tuple)):
        children += [(f"{where}[{i}]", v) for i, v in enumerate(obj)]
    elif isinstance(obj, dict):
        children += [(f"{where}[{k!r}]", v) for k, v in obj.items()]
    elif hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType, types.FunctionType)):
        base = "toolbox" if type(obj).__name__ == "Toolbox" else where
        children += [(f"{base}.{k}", v) for k, v in vars(obj).items()]
    for child_where, child in children:
        found = _find_unpicklable(child, child_where, seen, depth + 1)
        if found is not None:
            return found
    return where, obj, error


# ----------------------------------------------------------- creator classes
def _creator_class(name: str, base: type, dct: dict[str, Any]) -> type:
    """Unpickle a class made by ``creator.create``: the existing one if it is the same definition."""
    from deap import creator

    existing = getattr(creator, name, None)
    args = getattr(existing, "reduce_args", None)
    if isinstance(existing, creator.MetaCreator) and args is not None and args[1] is base:
        try:
            same = bool(args[2] == dct)
        except Exception:  # e.g. NumPy arrays among the attributes: no plain equality
            same = False
        if same:
            return existing  # type: ignore[no-any-return]
    made: type = creator.meta_create(name, base, dct)
    return made


def _reduce_creator_class(cls: Any) -> tuple[Any, ...]:
    return (_creator_class, cls.reduce_args)


def register() -> None:
    """Pickle ``creator.create`` classes so that unpickling re-uses identical classes (see above)."""
    from deap import creator

    meta = getattr(creator, "MetaCreator", None)
    if meta is not None and hasattr(creator, "meta_create"):  # DEAP >= 1.4 pickles classes by value
        copyreg.pickle(meta, _reduce_creator_class)
