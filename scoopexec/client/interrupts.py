"""Ctrl-C held back while a pool is being made, so that it never lands between two steps.

A pool's start makes processes, sockets and a thread, and writes each down where its stop
will find it.  A KeyboardInterrupt raised between making a thing and writing it down (a
worker forked but not yet in the table of workers, a thread launched whose ``start()`` has
not returned) leaves that thing running with nothing to stop it: workers that outlived an
interrupted ``ScoopExecutor()`` by the rest of the program, or a broker closed under its own
thread.

So while a pool starts in the main thread, SIGINT's handler is ours: it writes the signal
down, and the start hands it to the program's handler at a point where everything made is
written down (:meth:`HeldInterrupt.check`), or once the start is over
(:meth:`HeldInterrupt.close`).  A wait that may last (the template's first forks, a
standalone broker's answer, an SSH start) is opened with :func:`allowed`: an interrupt then
goes to the program's handler at once, as before, and the code around that wait knows how to
undo what it made.  Once the program's handler has raised, holding is over: its handler is
back, and the clean-up of the interrupted start is interrupted as any code is.
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
_MAX_PENDING = 8  # interrupts held back, each handed over in turn (asyncio's second one forces)


class HeldInterrupt:
    """Holds SIGINT back from here to :meth:`close` (a no-op outside the main thread, when a
    start already holds it, or when SIGINT's handler is not a Python function: ignored, or the
    default of the OS)."""

    def __init__(self) -> None:
        global _active
        self._old: Any = None  # the program's handler
        self._pending: list[tuple[int, FrameType | None]] = []
        self._open = 0
        if threading.current_thread() is not threading.main_thread() or _active is not None:
            return
        try:
            old = signal.getsignal(signal.SIGINT)
            if not callable(old):
                return
            self._old = old
            signal.signal(signal.SIGINT, self._handler)
        except (ValueError, OSError):  # (not the main interpreter, say)
            self._old = None
            return
        _active = self

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._open:
            self._pending.append((signum, frame))
            self.check()  # a wait that may be interrupted: at once
        elif len(self._pending) < _MAX_PENDING:
            self._pending.append((signum, frame))

    def _swap(self, handler: Any) -> None:
        try:
            signal.signal(signal.SIGINT, handler)
        except (ValueError, OSError):  # pragma: no cover
            pass

    def check(self) -> None:
        """Hand the interrupts held back so far to the program's handler.  While it runs, and
        for good if it raises (KeyboardInterrupt), the handler in place is the program's."""
        old = self._old
        while self._pending and old is not None:
            signum, frame = self._pending.pop(0)
            self._swap(old)
            old(signum, frame)  # (raises: holding is over)
            self._swap(self._handler)  # (it returned: hold on)

    def close(self, failed: bool = False) -> None:
        """Put the program's handler back, and hand it what was held back.  ``failed``: the
        start failed, and its exception is on its way: Python's own handler is then not
        called (it would only replace that exception with a KeyboardInterrupt), a program's
        is."""
        global _active
        old = self._old
        if _active is self:
            _active = None
        if old is None:
            return
        pending, self._pending = self._pending, []
        self._old = None
        try:
            if signal.getsignal(signal.SIGINT) == self._handler:
                self._swap(old)  # (a handler set meanwhile is left in place)
        except (ValueError, OSError):  # pragma: no cover
            pass
        if failed and old is signal.default_int_handler:
            return
        for signum, frame in pending:
            old(signum, frame)

    @contextmanager
    def opened(self) -> Iterator[None]:
        self._open += 1
        try:
            self.check()
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
    """A fork made while a start holds SIGINT (another thread's multiprocessing 'fork', say):
    nobody in the child would ever hand it over, so the child gets the program's handler."""
    global _active
    held, _active = _active, None
    if held is None or held._old is None:
        return
    try:
        if signal.getsignal(signal.SIGINT) == held._handler:
            signal.signal(signal.SIGINT, held._old)
    except (ValueError, OSError):
        pass
    held._old = None
    held._pending = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
