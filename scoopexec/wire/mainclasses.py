"""The script's classes, sent by reference to the workers that inherited them (issue 17).

cloudpickle pickles a class of the script (``__main__``) by value: an instance of the script's
dataclass among a task's arguments brought the whole class along, pickled again at every submit
(about 140 us here), made again by the worker (45 us), and the same on the way back in the
result.  Tasks of ``noop(Params(i))`` ran at 1,400 a second, a seventh of ProcessPoolExecutor's
rate, which sends the class by name: its workers are forks of the script.

So are a local pool's workers, when its template is a fork of the client
(deploy/clientfork.py): each has the script's classes as they were at the pool's construction.
A :class:`Table`, made just before that fork, lists the script's plain classes then (those of
metaclass ``type`` bound under their own name in ``__main__``); after the fork, before the pool is
handed to its user, :meth:`Table.snapshot` notes what each is made from (wire/byvalue.py's walk of
a class: its namespace, the functions and classes it reads, their globals, the containers among
them).  A class whose snapshot still holds at a submit is what the workers have, and travels as
``load(token, index, blob)``: the table's token (random), the class's place in it, and its pickle
by value, made once (for a worker that did not inherit it: one started by hand, or on another
host).  A class changed since (a method replaced, a global its methods read rebound, a container
they read changed in place) travels by value from then on, as before, even if changed back.

Classes travel by reference in a task's arguments, which the client pickles (serialize.dumps'
``names``), and in its result, which a forked worker pickles with its pool's table
(:func:`active`) without that look: the client receives its own class, not a copy (cloudpickle
made one, or overwrote the client's class with the worker's).  A worker's sub-tasks' arguments
go by value, as before (a worker does not know what its pool's table noted).

Before the fork each listed class also gets its cloudpickle tracker id, so that the workers know
it under that id: a function of the script that reads the class, pickled by value, then finds the
inherited class rather than making a second one, whose instances the arguments' would not be.

``load`` of a token this process does not know loads the blob, once per class.
"""

from __future__ import annotations

import copyreg
import os
import pickle
import sys
import threading
import time
import weakref
from typing import Any

import cloudpickle

from . import byvalue

__all__ = ["MAX_CLASSES", "SNAPSHOT_BUDGET", "Table", "active", "load", "set_active"]

MAX_CLASSES = 64  # classes a table lists at most (the first found, in the script's order)
SNAPSHOT_BUDGET = 0.005  # seconds a pool's start spends noting them at most (the rest go by value)
_LOADED_MAX = 1024  # classes load() made from blobs, kept at most
_tracker_id: Any = getattr(cloudpickle.cloudpickle, "_get_or_create_tracker_id", None)
_slotnames: Any = getattr(copyreg, "_slotnames", None)

_tables: weakref.WeakValueDictionary[bytes, Table] = weakref.WeakValueDictionary()
_active: Table | None = None  # in a worker forked from its client's template: its pool's table
_loaded: dict[tuple[bytes, int], type] = {}  # (token, index) -> the class load() made from its blob
_lock = threading.Lock()


class Table:
    """The script's classes a pool's forked workers inherit, and what each was made from."""

    __slots__ = ("__weakref__", "blobs", "checks", "classes", "index", "plans", "token")

    def __init__(self) -> None:
        """List the script's classes now (just before the fork that the workers come from)."""
        self.token = os.urandom(16)
        self.checks = True  # False in a worker: its results' classes go by reference unlooked at
        self.classes: list[type] = []
        main = sys.modules.get("__main__")
        if _tracker_id is not None and main is not None:
            for name, value in list(vars(main).items()):
                if (
                    type(value) is type
                    and value.__module__ == "__main__"
                    and value.__qualname__ == name
                    and len(self.classes) < MAX_CLASSES
                ):
                    self.classes.append(value)
                    _tracker_id(value)
                    # (the first pickle of an instance notes its class's __slotnames__ in it: noted
                    # now, for the workers too, else that change would send the class by value)
                    if _slotnames is not None:
                        try:
                            _slotnames(value)
                        except Exception:  # (odd __slots__: pickling the instance would fail too)
                            pass
        self.index = {id(cls): i for i, cls in enumerate(self.classes)}
        self.plans: list[Any] = [None] * len(self.classes)  # byvalue's snapshot; None: by value
        self.blobs: list[bytes | None] = [None] * len(self.classes)
        _tables[self.token] = self

    def __bool__(self) -> bool:
        return bool(self.classes)

    def snapshot(self) -> None:
        """Note what each class is made from: in the client, after the fork, before any code of
        the user's runs (what the workers inherited is what is noted)."""
        end = time.perf_counter() + SNAPSHOT_BUDGET  # (~0.1-0.5 ms a class: a notebook may have many)
        self.plans = [byvalue.snapshot_class(c) if time.perf_counter() < end else None for c in self.classes]

    def reference(self, cls: type) -> tuple[Any, tuple[bytes, int, bytes]] | None:
        """The reduce tuple of ``cls`` by reference, if the table lists it and (in the client) it
        is unchanged since the snapshot; else None (it goes by value)."""
        i = self.index.get(id(cls))
        if i is None or self.classes[i] is not cls:
            return None
        if self.checks:
            plan = self.plans[i]
            if plan is None:
                return None
            if not byvalue.still(plan):
                self.plans[i] = None  # changed: by value from now on
                return None
        blob = self.blobs[i]
        if blob is None:
            blob = cloudpickle.dumps(cls, pickle.HIGHEST_PROTOCOL)
            if self.checks and not byvalue.still(self.plans[i]):
                self.plans[i] = None  # changed while it was pickled
                return None
            self.blobs[i] = blob
        return load, (self.token, i, blob)


def set_active(table: Table | None) -> None:
    """In a worker template forked from the client: ``table`` is its pool's (its results' classes
    go by reference, unlooked at)."""
    global _active
    if table is not None:
        table.checks = False
    _active = table


def active() -> Table | None:
    """This worker's pool's table, if it inherited one (else None)."""
    return _active


def load(token: bytes, index: int, blob: bytes) -> type:
    """A class sent by reference (Table.reference): the inherited one, or the one its blob makes
    (once per class: cloudpickle's tracker id, which the blob carries, makes it the same class as
    those pickled by value in the same pool's other pickles)."""
    if type(token) is not bytes or type(index) is not int or type(blob) is not bytes:
        raise pickle.UnpicklingError("a class reference of the wrong shape")
    table = _tables.get(token)
    if table is not None and 0 <= index < len(table.classes):
        return table.classes[index]
    key = (token, index)
    cls = _loaded.get(key)
    if cls is None:
        made = pickle.loads(blob)
        if not isinstance(made, type):
            what = type(made).__name__
            raise pickle.UnpicklingError(f"a class reference's pickle holds {what}, not a class")
        with _lock:
            if len(_loaded) >= _LOADED_MAX:
                _loaded.clear()
            cls = _loaded.setdefault(key, made)
    return cls
