"""The script's classes, sent by reference to the workers that inherited them (issue 17).

cloudpickle pickles a class of the script (``__main__``) by value: an instance of the script's
dataclass among a task's arguments brought the whole class along, pickled again at every submit
(about 140 us here), made again by the worker (45 us), and the same on the way back in the
result.  Tasks of ``noop(Params(i))`` ran at 1,400 a second, a seventh of ProcessPoolExecutor's
rate, which sends the class by name: its workers are forks of the script.

So are a local pool's workers, when its template is a fork of the client
(deploy/clientfork.py): each has the script's classes as they were at the pool's construction.
A :class:`Table`, made just before that fork (the client runs one thread then, and the collector
is off), lists the script's plain classes (those of metaclass ``type`` bound under their own name
in ``__main__``) and notes what each is made from (wire/byvalue.py's walk of a class: its
namespace, the functions and classes it reads, their globals, the containers among them).  The
template and the workers inherit the table, notes included: a fork keeps every object where it
was, so the notes hold there as here until something changes.

A class whose notes still hold at a submit is what the workers have, and travels as
``load(token, index, blob, True)``: the table's token (random), the class's place in it, its
pickle by value (made once, while the notes hold: for a worker that did not inherit it, one
started by hand or on another host), and whether the sender looked.  A class changed since (a
method replaced, a global its methods read rebound, a container they read changed in place)
travels by value from then on, as before, even if changed back.  A forked worker looks at its own
copy too, when it loads a class the client looked at: cloudpickle sets a class it receives by
value over the one it has under the same tracker id (a function of the script that reads the
class brings it so, as do a share, an initializer, a sub-task's arguments), and a task may
change the class.  A copy whose namespace (or that of a class of the script it reads) is no
longer as noted is set from the blob, as a pickle by value would set it, and from then on at
every such load (as a pickle by value sets it at every task: a copy that changed once is taken
to change again).  That look leaves out what a task changes in place in its worker (a class-level
dict, a list the methods read, a method's defaults, code or closure, a helper function's) and the
globals of the worker's own main module: those changes
stay in that worker, as in a fork's (ProcessPoolExecutor's), where a pickle by value would bring
the client's again.

A forked worker's results send the classes it inherited by reference too (:func:`active`), unlooked
at (``False``): the client receives its own class, not a copy (cloudpickle made one, or set the
client's class from the worker's).  So do a worker's that did not inherit them, for the classes
it received by reference (:class:`Received`).  A worker's sub-tasks' arguments go by value, as
before.

Before the fork each listed class also gets its cloudpickle tracker id, so that the workers know
it under that id: a function of the script that reads the class, pickled by value, then finds the
inherited class rather than making a second one, whose instances the arguments' would not be.

``load`` of a token this process does not know sets the class from the blob: at each load the
client looked at (as a pickle by value would), once for a result's.
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

__all__ = ["MAX_CLASSES", "SNAPSHOT_BUDGET", "Names", "Received", "Table", "active", "load", "set_active"]

MAX_CLASSES = 64  # classes a table lists at most (the first found, in the script's order)
SNAPSHOT_BUDGET = 0.005  # seconds a pool's start spends noting them at most (the rest go by value)
# (about 0.15-0.3 ms a class: before the fork, so the workers start that much later)
_LOADED_MAX = 1024  # classes load() made from blobs, kept at most
_tracker_id: Any = getattr(cloudpickle.cloudpickle, "_get_or_create_tracker_id", None)
_slotnames: Any = getattr(copyreg, "_slotnames", None)

_tables: weakref.WeakValueDictionary[bytes, Table] = weakref.WeakValueDictionary()
_active: Table | None = None  # in a worker forked from its client's template: its pool's table
_loaded: dict[tuple[bytes, int], type] = {}  # (token, index) -> the class load() made from its blob
_lock = threading.Lock()


class Received:
    """In a worker that did not inherit a pool's table (started by hand, on another host): the
    classes it received by reference, which its results send back the same way (else by value,
    which would set the client's class from this worker's copy)."""

    __slots__ = ("by_id",)

    def __init__(self) -> None:
        self.by_id: dict[int, tuple[type, bytes, int, bytes]] = {}  # id -> (class, token, index, blob)

    def __bool__(self) -> bool:
        return bool(self.by_id)

    def note(self, cls: type, token: bytes, index: int, blob: bytes) -> None:
        with _lock:
            if len(self.by_id) >= _LOADED_MAX:
                self.by_id.clear()
            self.by_id[id(cls)] = (cls, token, index, blob)

    def reference(self, cls: type, dump: Any) -> tuple[Any, tuple[bytes, int, bytes, bool]] | None:
        found = self.by_id.get(id(cls))
        if found is None or found[0] is not cls:
            return None
        return load, (found[1], found[2], found[3], False)


_received = Received()


class Table:
    """The script's classes a pool's forked workers inherit, and what each was made from."""

    __slots__ = ("__weakref__", "blobs", "changed", "checks", "classes", "index", "plans", "token")

    def __init__(self) -> None:
        """List the script's classes now, and note what each is made from (just before the fork
        that the workers come from)."""
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
        end = time.perf_counter() + SNAPSHOT_BUDGET  # (a notebook may have many)
        # byvalue's notes of each; None: it goes by value (it cannot be looked at, or changed)
        self.plans: list[Any] = [
            byvalue.snapshot_class(cls, end) if time.perf_counter() < end else None for cls in self.classes
        ]
        self.blobs: list[bytes | None] = [None] * len(self.classes)
        self.changed = [False] * len(self.classes)  # in a worker: its copy was found changed once
        _tables[self.token] = self

    def __bool__(self) -> bool:
        return bool(self.classes)

    def reference(self, cls: type, dump: Any) -> tuple[Any, tuple[bytes, int, bytes, bool]] | None:
        """The reduce tuple of ``cls`` by reference, if the table lists it and (in the client) it
        is unchanged since it was noted; else None (it goes by value).  In a worker (no look):
        always, its blob made from the class as it is then.  ``dump``: what makes a blob (the
        serializer's cloudpickle, which keeps the code's file names and a notebook's lines)."""
        i = self.index.get(id(cls))
        if i is None or self.classes[i] is not cls:
            return None
        blob = self.blobs[i]
        if self.checks:
            plan = self.plans[i]
            if plan is None:
                return None
            if not byvalue.still(plan):
                self.plans[i] = None  # changed: by value from now on
                return None
            if blob is None:
                blob = dump(cls)
                if not byvalue.still(plan):
                    return None  # changed while it was pickled (the blob must be the class as noted)
                self.blobs[i] = blob
        elif blob is None:
            blob = self.blobs[i] = dump(cls)
        return load, (self.token, i, blob, self.checks)

    def looked_at(self, i: int, blob: bytes) -> type:
        """Class ``i``, which the client found as noted, in this worker: its copy, if as noted too;
        else the class set from the blob, as a pickle of it by value would set it (then at every
        such load, as a pickle by value at every task: a copy changed once, by a task or by another
        pickle of the class, is taken to change again)."""
        if not self.changed[i]:
            plan = self.plans[i]
            # (the namespaces only, on every task, at about 3 us: what a task changes in place in
            # this worker, a class-level dict, a list the methods read, a method's defaults or
            # code, or a global of this worker's own main module it rebinds, is not seen, and
            # stays, as in a fork's)
            if plan is not None and byvalue.namespaces_still(plan):
                return self.classes[i]
            self.changed[i] = True
        return _from_blob(blob)


def set_active(table: Table | None) -> None:
    """In a worker template forked from the client: ``table`` is its pool's (its results' classes
    go by reference, unlooked at)."""
    global _active
    if table is not None:
        table.checks = False
    _active = table


def active() -> Names | None:
    """This worker's pool's table, if it inherited one; else the classes it received by reference,
    if any; else None."""
    if _active is not None:
        return _active
    return _received if _received else None


def load(token: bytes, index: int, blob: bytes, looked: bool) -> type:
    """A class sent by reference (Table.reference): the inherited one, or the one its blob makes
    (cloudpickle's tracker id, which the blob carries, makes it the same class as those pickled
    by value in the same pool's other pickles).  ``looked``: the sender (the client) found the
    class as noted, so this worker's copy must be as noted too (Table.looked_at); a worker that
    did not inherit it sets it from the blob each time, as a pickle by value does."""
    if (type(token), type(index), type(blob), type(looked)) != (bytes, int, bytes, bool):
        raise pickle.UnpicklingError("a class reference of the wrong shape")
    table = _tables.get(token)
    if table is not None and 0 <= index < len(table.classes):
        if looked and table is _active:
            return table.looked_at(index, blob)
        return table.classes[index]
    if looked:
        cls = _from_blob(blob)
    else:
        key = (token, index)  # (a result's, in a process that did not inherit it: made once)
        found = _loaded.get(key)
        if found is None:
            made = _from_blob(blob)
            with _lock:
                if len(_loaded) >= _LOADED_MAX:
                    _loaded.clear()
                found = _loaded.setdefault(key, made)
        cls = found
    if _active is None:
        _received.note(cls, token, index, blob)
    return cls


def _from_blob(blob: bytes) -> type:
    made = pickle.loads(blob)
    if not isinstance(made, type):
        what = type(made).__name__
        raise pickle.UnpicklingError(f"a class reference's pickle holds {what}, not a class")
    return made


Names = Table | Received  # what serialize.dumps sends the script's classes by reference with
