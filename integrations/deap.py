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
imported scoopexec (workers included), makes DEAP re-use the existing class
when the definition is the same (a different one is created as DEAP does).
An argument that cannot be pickled -- typically a toolbox sent whole, holding
an open file or a process pool -- fails with ``SerializationError`` naming the
attribute, e.g. ``toolbox.log (an _io.TextIOWrapper)``.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

import scoopexec
from scoopexec import futures
from scoopexec.errors import SerializationError, serialization_error
from scoopexec.wire import serialize

__all__ = ["register", "scoop_map"]

_NOT_GIVEN: Any = object()


def scoop_map(
    func: Callable[..., Any],
    *iterables: Iterable[Any],
    chunksize: int | str = "auto",
    timeout: float | None = None,
    task_timeout: float | None = None,
    on_timeout: Any = _NOT_GIVEN,
    seed: int | tuple[int, ...] | None = None,
    journal: str | os.PathLike[str] | None = None,
) -> list[Any]:
    """``list(map(func, *iterables))`` with the calls run as tasks on the current pool.

    Results come back in order.  ``chunksize`` calls travel per task; by
    default ("auto") the first calls go singly and later tasks carry a share
    of what remains, shrinking to about 5 ms of calls at the cost measured (less
    at the end of a long map)
    (scoopexec/autochunk.py), so that cheap evaluations are not swamped by the
    cost of a task and the workers finish together;
    ``timeout`` (seconds) bounds the whole map.  A call's exception is raised
    here with the remote traceback as its ``__cause__``.  ``task_timeout``
    (seconds) stops each call that runs longer; such an item is ``on_timeout``
    (a worst fitness, say, so that the run goes on) or, without it, raises
    ``TaskTimeoutError``.  ``seed=S`` makes each
    call's random draws depend only on S and its position (``random``, numpy,
    ``scoopexec.task_rng()``); ``journal=PATH`` records the results so that a
    run restarted after a crash computes only what is missing.  In a GA, pass
    the generation too: ``functools.partial(scoop_map, seed=(S, gen),
    journal=PATH)`` (see docs/long-runs.md).
    """
    if not iterables:
        raise TypeError("scoop_map() needs at least one iterable, like map()")
    seqs = [it if isinstance(it, (list, tuple)) else list(it) for it in iterables]
    try:
        opts: dict[str, Any] = {"chunksize": chunksize, "timeout": timeout, "seed": seed, "journal": journal}
        if task_timeout is None and on_timeout is _NOT_GIVEN:
            return list(futures.map(func, *seqs, **opts))
        opts["task_timeout"] = task_timeout
        if on_timeout is not _NOT_GIVEN:
            opts["on_timeout"] = on_timeout
        ex = scoopexec.current_executor()
        assert ex is not None
        return list(ex.map(func, *seqs, **opts))
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
        # (as the error it replaces: also the standard pickle module's error type, see errors.py)
        raise serialization_error(
            f"scoop_map cannot send {where} ({_describe(obj)}) to the workers: "
            f"{type(error).__name__}: {error}",
            exc,
        ) from exc


def _label(func: Any) -> str:
    name = getattr(func, "__name__", None)
    if isinstance(func, functools.partial) and name:
        return f"toolbox.{name}"  # what Toolbox.register makes
    return str(getattr(func, "__qualname__", None) or type(func).__name__)


def _picklable(obj: Any) -> Exception | None:
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
def register() -> None:
    """Make ``deap.creator.meta_create`` re-use an existing class with the same definition.

    DEAP (>= 1.4) pickles a creator class as ``meta_create(name, base, attrs)``;
    the replacement keeps that name, so pickles -- checkpoints included --
    stay loadable where scoopexec is not installed.
    """
    from deap import creator

    original = getattr(creator, "meta_create", None)
    if original is None or getattr(original, "__scoopexec__", False):
        return  # DEAP < 1.4 pickles classes by reference: nothing to do

    def meta_create(name: str, base: type, dct: dict[str, Any]) -> Any:
        existing = getattr(creator, name, None)
        args = getattr(existing, "reduce_args", None)
        if isinstance(existing, creator.MetaCreator) and args is not None and args[1] is base:
            try:
                same = bool(args[2] == dct)
            except Exception:  # e.g. NumPy arrays among the attributes: no plain equality
                same = False
            if same:
                return existing
        return original(name, base, dct)

    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(meta_create, attr, getattr(original, attr))
    meta_create.__scoopexec__ = True  # type: ignore[attr-defined]
    creator.meta_create = meta_create


if "deap.creator" in sys.modules:
    register()  # else the import hook calls it when DEAP's creator is imported
