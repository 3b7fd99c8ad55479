"""Ctrl-C held back while a pool is being made, so that it never lands between two steps.

A pool's start makes processes, sockets and a thread, and writes each down where its stop
will find it.  A KeyboardInterrupt raised between making a thing and writing it down (a
worker forked but not yet in the table of workers, a thread started that has not yet said
so) leaves that thing running with nothing to stop it: workers that outlived an interrupted
``ScoopExecutor()`` by the rest of the program, or a broker closed under its own thread.

So while a pool starts in the main thread, SIGINT's handler is ours: it writes the signal
down, and the start raises it at a point where everything made is written down
(:meth:`HeldInterrupt.check`), or once the start is over (:meth:`HeldInterrupt.close`).  A
wait that may last (the template's first forks, an SSH start) is opened with
:func:`allowed`: an interrupt then is raised at once, as before, and the code around that
wait already knows how to undo what it made.  The handler in place before (Python's own, a
user's, asyncio's) is the one called, and is put back afterwards.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["HeldInterrupt", "allowed"]

_active: HeldInterrupt | None = None  # (only the main thread holds: one at a time)


class HeldInterrupt:
    """Holds SIGINT back from here to :meth:`close` (a no-op outside the main thread, or when
    SIGINT's handler is not a Python function: ignored, or the default of the OS)."""

    def __init__(self) -> None:
        global _active
        self._old: Any = None
        self._pending: tuple[int, FrameType | None] | None = None
        self._open = 0
        if threading.current_thread() is not threading.main_thread() or _active is not None:
            return
        try:
            old = signal.getsignal(signal.SIGINT)
            if not callable(old):
                return
            signal.signal(signal.SIGINT, self._handler)
        except (ValueError, OSError):  # (not the main interpreter, say)
            return
        self._old = old
        _active = self

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._open:
            self._old(signum, frame)  # a wait that may be interrupted: at once
        elif self._pending is None:
            self._pending = (signum, frame)

    def check(self) -> None:
        """Raise (call the handler for) an interrupt held back so far."""
        pending, self._pending = self._pending, None
        if pending is not None and self._old is not None:
            self._old(*pending)

    def close(self, deliver: bool = True) -> None:
        """Put the former handler back; then, with ``deliver``, call it for an interrupt held
        back (``deliver`` False: an exception is on its way already, and the interrupt is
        dropped with it)."""
        global _active
        old = self._old
        if old is None:
            return
        if _active is self:
            _active = None
        try:
            if signal.getsignal(signal.SIGINT) == self._handler:
                signal.signal(signal.SIGINT, old)  # (a handler set meanwhile is left in place)
        except (ValueError, OSError):  # pragma: no cover
            pass
        pending, self._pending, self._old = self._pending, None, None
        if deliver and pending is not None:
            old(*pending)

    @contextmanager
    def opened(self) -> Iterator[None]:
        self.check()
        self._open += 1
        try:
            yield
        finally:
            self._open -= 1


@contextmanager
def allowed() -> Iterator[None]:
    """A wait that Ctrl-C may interrupt, inside a start that holds it back (else a no-op)."""
    held = _active
    if held is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    with held.opened():
        yield


def _forget_in_child() -> None:
    global _active
    _active = None  # (a fork's SIGINT handler is its own: the template resets it, deploy/clientfork.py)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
