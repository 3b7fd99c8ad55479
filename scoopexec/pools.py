"""The pools of this process, in one place: which is current, which exist, stopping them at exit.

Several modules need to know about the process's pools: the executor registers itself,
the module-level API (api.py) and SCOOP's (futures.py, shared.py) look for "the pool you
are in", the launcher (cli.py) makes its pool current, executor handles pickled into
tasks find their pool again, and interpreter exit stops them all.  They share that state
through these functions, and nothing else holds it:

* :func:`enter`, :func:`leave`, :func:`innermost`: executors made current by ``with``
  (and the launcher's pool), innermost last;
* :func:`register`, :func:`find`: executors by pool id, while they exist;
* :func:`track`, :func:`untrack`, :func:`shutting_down`: the live sessions (a client's
  connection to its broker and the threads behind it), which interpreter exit stops --
  letting pending work finish, or abandoning it after Ctrl-C.

The default pool (started on first use when no pool is current) belongs to api.py.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from typing import Any, Protocol

__all__ = ["enter", "find", "innermost", "leave", "register", "shutting_down", "track", "untrack"]


class _Live(Protocol):
    abort_at_exit: bool

    def close(self, wait: bool = True) -> str: ...
    def abort(self, reason: str, timeout: float = 10.0) -> str: ...
    def forked(self, parent: int) -> None: ...


log = logging.getLogger("scoopexec")

_entered: list[Any] = []  # executors entered with `with`, innermost last
_by_id: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_live: set[_Live] = set()
_live_lock = threading.Lock()
_shutting_down = False


def enter(executor: Any) -> None:
    """``executor`` is the current pool (``with executor:``) until :func:`leave`."""
    _entered.append(executor)


def leave(executor: Any) -> None:
    """The ``with`` block of ``executor`` ended (harmless if it was not entered)."""
    try:
        _entered.remove(executor)
    except ValueError:
        pass


def innermost() -> Any:
    """The innermost executor entered with ``with`` in this process, or None."""
    return _entered[-1] if _entered else None


def register(pool_id: str, executor: Any) -> None:
    """Make ``executor`` findable by its pool id while it exists."""
    _by_id[pool_id] = executor


def find(pool_id: str) -> Any:
    """The executor of pool ``pool_id`` in this process, or None."""
    return _by_id.get(pool_id)


def track(session: _Live) -> None:
    """A live session: stopped at interpreter exit unless :func:`untrack`-ed before."""
    with _live_lock:
        _live.add(session)


def untrack(session: _Live) -> None:
    with _live_lock:
        _live.discard(session)


def shutting_down() -> bool:
    """Interpreter exit has begun: no new pool, no new work."""
    return _shutting_down


def _at_exit() -> None:
    """At interpreter exit: refuse new work, let pending futures finish, stop every pool.

    When the program is ending because of Ctrl-C (an uncaught KeyboardInterrupt),
    or a second Ctrl-C arrives while waiting, pending work is abandoned instead; so it is for
    the pool of a scoopexec.Pool still running (multiprocessing terminates its pools at exit).
    """
    global _shutting_down
    _shutting_down = True
    with _live_lock:
        live = list(_live)
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    interrupted = isinstance(last, KeyboardInterrupt)
    for session in live:
        try:
            if interrupted:
                why = session.abort("the program was interrupted (KeyboardInterrupt)")
            elif session.abort_at_exit:
                why = session.abort("the program ended with its scoopexec.Pool running (terminated)")
            else:
                why = session.close(wait=True)
            if why:
                log.error("%s", why)
        except KeyboardInterrupt:
            for other in live:
                other.abort("the program was interrupted (KeyboardInterrupt)")
            raise


def _after_fork_in_child() -> None:
    """A fork of this process (multiprocessing's default start on Linux before 3.14, os.fork())
    has copies of the pools' objects but none of their threads: each pool belongs to the parent.
    The child must not stop them at its exit (that stopped the parent's workers and failed its
    futures), and its calls on them get a clear error instead of a hang."""
    global _live_lock
    _live_lock = threading.Lock()  # (another thread of the parent may have held it at the fork)
    live, parent = list(_live), os.getppid()
    _live.clear()
    for session in live:
        session.forked(parent)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

# Before threading's own shutdown joins non-daemon threads (as concurrent.futures does).
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_at_exit)
else:  # pragma: no cover
    import atexit

    atexit.register(_at_exit)
