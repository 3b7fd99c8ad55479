"""Ctrl-C held back while a pool is being made, so that it never lands between two steps.

A pool's start makes processes, sockets and a thread, and writes each down where its stop
will find it.  A KeyboardInterrupt raised between making a thing and writing it down (a
worker forked but not yet in the table of workers, a thread launched whose ``start()`` has
not returned) leaves that thing running with nothing to stop it: workers that outlived an
interrupted ``ScoopExecutor()`` by the rest of the program, or a broker closed under its own
thread.

So while a pool starts in the main thread, SIGINT's handler is ours: it writes the signal
down, and the start hands it to the program's handler once the start is over
(:meth:`HeldInterrupt.close`), when everything it made is written down.  A wait that may
last (the template's first forks, a standalone broker's answer, an SSH start) is opened with
:func:`allowed`: an interrupt then goes to the program's handler at once, as before, and the
code around that wait knows how to undo what it made.  Holding is over once the program's
handler raised (or set another handler).  A clean-up of a start that failed runs
:func:`unheld`: a Ctrl-C then goes to the program's handler (and may cut it short, as
anywhere), and what was held waits for close().
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["HeldInterrupt", "allowed", "unheld"]

_active: HeldInterrupt | None = None  # (only the main thread holds: one at a time)
_MAX_PENDING = 8  # interrupts held back, each handed over in turn (asyncio's second one forces)


def _current() -> Any:
    try:
        return signal.getsignal(signal.SIGINT)
    except (ValueError, OSError):  # pragma: no cover
        return None


def _swap(handler: Any) -> Any:
    """Install ``handler``; the one it replaced (a signal pending runs under the handler in place
    first, inside signal.signal: that handler may have set another meanwhile)."""
    try:
        return signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):  # pragma: no cover
        return None


class HeldInterrupt:
    """SIGINT held back from :meth:`hold` to :meth:`close` (nothing is held outside the main
    thread, while another start holds it, or when SIGINT's handler is not a Python function:
    ignored, or the default of the OS)."""

    def __init__(self) -> None:
        self._old: Any = None  # the program's handler, while holding
        self._pending: list[tuple[int, FrameType | None]] = []
        self._open = 0

    def hold(self) -> None:
        global _active
        if threading.current_thread() is not threading.main_thread() or _active is not None:
            return
        old = _current()
        if not callable(old):
            return
        self._old, _active = old, self  # (first: close() puts it back whatever happens next)
        self._rehold(old)

    def _rehold(self, old: Any) -> None:
        """Put our handler in place of the program's ``old``; if that one set another meanwhile
        (a signal pending ran it inside signal.signal), that other stays, holding is over, and
        what was held goes to it."""
        prev = _swap(self._handler)
        if prev is not None and prev != old:
            _swap(prev)
            _deliver(self._end())

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._open or len(self._pending) < _MAX_PENDING:
            self._pending.append((signum, frame))
        if self._open:
            self._hand_over()  # a wait that may be interrupted: at once

    def _end(self) -> list[tuple[int, FrameType | None]]:
        """Holding is over (the handler in place stays); what was held and not handed over."""
        global _active
        rest, self._pending, self._old = self._pending, [], None
        if _active is self:
            _active = None
        return rest

    def _hand_over(self) -> None:
        """Hand what was held to the program's handler, in turn, with its handler in place while
        it runs.  It raised (KeyboardInterrupt), or set another handler: holding is over, and
        the rest go to the handler in place."""
        while self._pending and self._old is not None:
            signum, frame = self._pending.pop(0)
            old = self._old
            try:
                _swap(old)
                old(signum, frame)
                if _current() != old:  # ("first Ctrl-C: stop gently; the second: at once", say)
                    _deliver(self._end())
                    return
                self._rehold(old)  # (it returned: hold on)
            except BaseException:
                self._end()
                raise

    def close(self) -> None:
        """Put the program's handler back, then hand it what was held (its KeyboardInterrupt
        goes in place of any exception on its way, as it would have where it landed)."""
        global _active
        old = self._old
        if _active is self:
            _active = None
        self._old = None  # (from here our handler, while still in place, only writes down)
        if old is not None and _current() == self._handler:
            _swap(old)  # (a handler set meanwhile by another is left in place)
        pending, self._pending = self._pending, []
        if old is not None:
            _deliver(pending)

    @contextmanager
    def opened(self) -> Iterator[None]:
        self._open += 1
        try:
            self._hand_over()
            yield
        finally:
            self._open -= 1


def _deliver(pending: list[tuple[int, FrameType | None]]) -> None:
    for signum, frame in pending:
        handler = _current()
        if callable(handler):
            handler(signum, frame)


def _holding() -> HeldInterrupt | None:
    held = _active
    if held is None or held._old is None or threading.current_thread() is not threading.main_thread():
        return None
    return held


@contextmanager
def allowed() -> Iterator[None]:
    """A wait that Ctrl-C may interrupt, inside a start that holds it back (else a no-op): what
    was held comes as it opens, and what lands during it at once."""
    held = _holding()
    if held is None:
        yield
        return
    with held.opened():
        yield


@contextmanager
def unheld() -> Iterator[None]:
    """The clean-up of a start that failed (else a no-op): the program's handler is in place
    while it runs, so a Ctrl-C may cut it short, as anywhere; what was held waits for close()."""
    held = _holding()
    if held is None:
        yield
        return
    old = held._old
    _swap(old)
    try:
        yield
    finally:
        if held._old is old and _current() == old:
            held._rehold(old)


def _forget_in_child() -> None:
    """A fork made while a start holds SIGINT (another thread's multiprocessing 'fork', say):
    nobody in the child would ever hand it over, so the child gets the program's handler."""
    held = _active
    if held is None:
        return
    old = held._old
    if old is not None and _current() == held._handler:
        _swap(old)
    held._end()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
