"""The self-pipe that wakes a poll loop (link.WakePipe): every interleaving of one wake() and one drain().

The client's I/O thread and the broker's loop sleep in poll on such a pipe.  A wake() from
another thread that lands between two steps of the loop's drain() must neither leave the pipe
readable after the loop's next turn (poll would return at once for ever: the 100 % CPU spin of
issue 18) nor leave a wake "pending" with nothing in the pipe (the next wake() would write
nothing: a lost wake-up, the loop sleeps with work queued).

Each test pauses one thread at one line of wake() or drain() (with a trace function, on a real
pipe), runs the other call to the end meanwhile, and checks both properties; it does so for every
line at which the call can be paused.
"""

from __future__ import annotations

import select
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from scoopexec.wire.framing import WakePipe


def _readable(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


def _loop_turn(wp: WakePipe) -> None:
    """What the loop does after poll: drain when poll says the pipe is readable."""
    if _readable(wp.fd):
        wp.drain()


def _run_paused(call: Callable[[], None], code: Any, k: int, meanwhile: Callable[[], None]) -> bool:
    """Run ``call`` in a thread, paused before the k-th line event of ``code``; run ``meanwhile``
    during the pause.  False if ``call`` ended without reaching a k-th line (nothing left to try)."""
    paused, resume = threading.Event(), threading.Event()
    seen = [0]

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            if seen[0] == k and not paused.is_set():
                paused.set()
                assert resume.wait(10)
            seen[0] += 1
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is code else None

    def target() -> None:
        sys.settrace(tracer)
        try:
            call()
        finally:
            sys.settrace(None)

    t = threading.Thread(target=target)
    t.start()
    while t.is_alive() and not paused.wait(0.01):
        pass
    hit = paused.is_set()
    if hit:
        meanwhile()
        resume.set()
    t.join(10)
    assert not t.is_alive()
    return hit


def _check_no_spin_no_lost_wake(wp: WakePipe) -> None:
    _loop_turn(wp)
    assert not _readable(wp.fd), "the pipe stays readable after the loop drained it: poll spins"
    wp.wake()
    assert _readable(wp.fd), "a wake() wrote nothing: the loop would sleep with work queued"
    _loop_turn(wp)
    assert not _readable(wp.fd)


@pytest.mark.parametrize("woken_first", [False, True])
def test_a_wake_paused_anywhere_while_the_loop_drains(woken_first):
    positions = 0
    for k in range(50):
        wp = WakePipe()
        try:
            if woken_first:
                wp.wake()  # the loop has a reason to drain already
            if not _run_paused(wp.wake, WakePipe.wake.__code__, k, wp.drain):
                break
            positions += 1
            _check_no_spin_no_lost_wake(wp)
        finally:
            wp.close()
    # Not woken before: the flag is set, then the byte written; the gap between them was tried.
    assert positions >= (1 if woken_first else 2)


def test_a_drain_paused_anywhere_while_another_thread_wakes():
    positions = 0
    for k in range(50):
        wp = WakePipe()
        try:
            wp.wake()  # why the loop drains
            if not _run_paused(wp.drain, WakePipe.drain.__code__, k, wp.wake):
                break
            positions += 1
            _check_no_spin_no_lost_wake(wp)
        finally:
            wp.close()
    assert positions >= 2  # read the pipe, clear the flag: the gap between them was tried


def test_wake_after_close_does_nothing():
    wp = WakePipe()
    wp.close()
    wp.wake()  # must not write to whatever file now has that descriptor
    wp.close()
