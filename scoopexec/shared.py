"""Constants shared with every worker: SCOOP's ``scoop.shared``, and ``scoopexec.shared(name)``.

``setConst(name=value, ...)`` in the client broadcasts values to every worker
of the pool in use (:func:`scoopexec.ScoopExecutor.share`): workers that join
later receive them too, and every task submitted afterwards sees them.  As in
SCOOP, a constant is written once: setting a name again raises ``TypeError``.
``getConst(name, timeout)`` reads one, in a task or in the client, waiting up
to ``timeout`` seconds for it to arrive and returning None if it does not
(SCOOP's behaviour).

The module is itself callable: ``scoopexec.shared(name)`` is the core's strict
lookup (``KeyError`` when there is no such value), as before it became a module.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import sys
import threading
import time
import types
from typing import Any

from . import api
from .worker.worker import current_worker

__all__ = ["getConst", "setConst"]

_lock = threading.Lock()


def setConst(**kwargs: Any) -> None:
    """Share ``name=value`` pairs with every task of the pool, once each.

    Only the client (the program's main process) can set constants.  Raises
    ``TypeError`` (as SCOOP does) if one of the names is already set, and
    then sets none of them.
    """
    w = current_worker()
    if w is not None:
        raise RuntimeError(
            "setConst() can only be called in the program's main process, not inside a task; "
            "set the constants before submitting the tasks that read them"
        )
    with _lock:
        ex = api.client_pool(start=True)
        assert ex is not None
        for name in kwargs:
            try:
                ex.shared(name)
            except KeyError:
                continue
            raise TypeError(f"This constant already exists: {name}.")
        for name, value in kwargs.items():
            ex.share(name, value)


def _nap(seconds: float) -> None:
    w = current_worker()
    if w is not None and w.in_task():
        never: cf.Future[None] = cf.Future()
        w.wait_until([never], seconds, cf.FIRST_COMPLETED)  # parks this task only
    else:
        time.sleep(seconds)


def getConst(name: str, timeout: float = 0.1) -> Any:
    """The constant ``name``, waiting up to ``timeout`` seconds for it; None if it never came.

    A negative or None ``timeout`` waits without limit.
    """
    deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
    w = current_worker()
    in_task = w is not None and w.current is not None and w.in_task()
    while True:
        try:
            if in_task:
                assert w is not None
                return w.shared(name)
            ex = api.client_pool(start=False)
            if ex is not None and hasattr(ex, "shared"):
                return ex.shared(name)
        except KeyError:
            pass
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        _nap(0.01 if left is None else min(0.01, left))


class _SharedModule(types.ModuleType):
    """This module, callable as ``scoopexec.shared(name)``."""

    def __call__(self, name: str) -> Any:
        """The value shared under ``name`` with ``ScoopExecutor.share`` (KeyError if none)."""
        return api.shared(name)

    def __reduce__(self) -> tuple[Any, ...]:
        # Functions pickled by value (cloudpickle) refer to modules by name.
        return (importlib.import_module, (self.__name__,))


sys.modules[__name__].__class__ = _SharedModule
