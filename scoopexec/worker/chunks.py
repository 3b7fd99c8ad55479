"""How far a running chunk of a map got, for when its worker must end in the middle of it.

A chunk (``map(chunksize=N)``, ``chunksize="auto"``) is one task that runs several items.
When one of them runs past its ``task_timeout`` and ignores its KeyboardInterrupt, the
watchdog ends the process (worker/limits.py).  The items that finished before it must not be
lost with it, so a chunk runner (mapping.py, autochunk.py) registers its progress here while
it runs::

    runner: start(fn, out, size, shape)   the watchdog, about to end the process:
      out.append(fn(item)) ...              progress(task greenlet).cut(error, stand_in)
    end(token)                              -> the chunk's result, sent as the task's result

The chunk's result then holds the results of the items that finished and, for the item that
timed out, its TaskTimeoutError (``map`` raises it at that item) or, with ``on_timeout``,
that value; the items after it have not run: they come back as :class:`Cut`, which the
client's map sends again as a new task of those items only (mapping.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import greenlet

__all__ = ["RAISE", "Cut", "Progress", "end", "progress", "start"]

RAISE: Any = object()  # cut(): the item that timed out raises (no on_timeout given)

# (the results so far, (error, traceback text) or None, seconds it ran) -> the runner's result
Shape = Callable[[list[Any], "tuple[BaseException, str] | None", float], Any]


class Cut:
    """A chunk's result when its worker was ended before its items from ``rest`` on ran:
    ``value`` is the runner's result for the items before ``rest``."""

    __slots__ = ("rest", "value")

    def __init__(self, value: Any, rest: int) -> None:
        self.value = value
        self.rest = rest

    def __reduce__(self) -> tuple[Any, ...]:
        return (Cut, (self.value, self.rest))


class Progress:
    """A running chunk: ``out`` the results of its items so far."""

    __slots__ = ("fn", "out", "shape", "size", "started")

    def __init__(self, fn: Any, out: list[Any], size: int, shape: Shape) -> None:
        self.fn = fn
        self.out = out
        self.size = size
        self.shape = shape
        self.started = time.perf_counter()

    def cut(self, error: BaseException, stand_in: Any) -> Any:
        """The chunk's result now that its item ``len(out)`` timed out with ``error``: that item
        raises it (``stand_in`` is RAISE) or reads as ``stand_in``; a Cut if items are left."""
        done = list(self.out)
        seconds = time.perf_counter() - self.started
        if stand_in is RAISE:
            return self.shape(done, (error, f"{type(error).__name__}: {error}\n"), seconds)
        done.append(stand_in)
        value = self.shape(done, None, seconds)
        return value if len(done) >= self.size else Cut(value, len(done))


_running: dict[Any, Progress] = {}  # task greenlet -> its chunk (one per greenlet at a time)


def start(fn: Any, out: list[Any], size: int, shape: Shape) -> Any:
    """A chunk starts running in this greenlet; returns the token for end()."""
    g = greenlet.getcurrent()
    prev = _running.get(g)
    _running[g] = Progress(fn, out, size, shape)
    return g, prev


def end(token: Any) -> None:
    g, prev = token
    if prev is None:
        _running.pop(g, None)
    else:  # a chunk run inside an item of another (a map called in a task, run in place)
        _running[g] = prev


def progress(g: Any) -> Progress | None:
    """The chunk running in greenlet ``g``, if any (from the watchdog's thread)."""
    return _running.get(g)
