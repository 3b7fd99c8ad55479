"""An initializer only local workers can receive: objects handed over, not pickled.

ProcessPoolExecutor's users give their workers' initializer multiprocessing objects,
``initargs=(queue,)`` (the logging cookbook's recipe for one log file written by many
processes), a Lock, a Value, an Array.  These refuse to be pickled except while
multiprocessing starts a process (``assert_spawning``): what they hold, a pipe's descriptors
or a block of shared memory, must be handed over by the operating system, not copied.
scoopexec's workers are not started by multiprocessing, so such an initializer failed to
pickle (SerializationError).  Now, when the plain pickle fails and every worker of the pool
is local (no hosts=, srun, jobs=, broker= or bind=), the client hands it over as a start
by multiprocessing would:

* to workers forked from a fork of the client (the default, deploy/clientfork.py): they
  find the initializer itself in the memory they inherited.  Nothing is pickled, so
  anything goes: a Queue of the fork context, a threading lock, an open file;
* to workers that start fresh (``mp_context=`` a 'spawn' or 'forkserver' context,
  ``SCOOPEXEC_WORKER_START``, a client running other threads): pickled as for a spawned
  child (multiprocessing's own pickler, under a spawning "process" of ours), with the
  descriptors it holds passed to each worker at the same numbers (LaunchOptions.pass_fds:
  the template's, and each spawned worker's).  Each worker checks that the descriptor it has
  at each number is the very file the client meant (device and inode) before unpickling.

A worker that got neither (one joining the pool some other way) fails its set-up with an
error saying why.  The client keeps the initializer until the pool ends (:func:`forget`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

__all__ = ["HandedFd", "Spawning", "forget", "local_only", "prepare", "receive"]

# token -> (initializer, initargs): what workers forked from this process find here
_INHERITED: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {}


class HandedFd:
    """A descriptor in multiprocessing's pickle for a fresh worker: its number, the same in the
    worker (passed at that number, and checked before unpickling: :func:`receive`)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def detach(self) -> int:  # (what multiprocessing's reducers ask of one)
        return self.fd


class Spawning:
    """What multiprocessing's objects see as the process being started while they are pickled
    (``context.get_spawning_popen()``): it notes the descriptors they hand over."""

    DupFd = HandedFd  # (multiprocessing's name) what a descriptor pickles as

    def __init__(self) -> None:
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        if fd not in self.fds:
            self.fds.append(fd)
        return fd


def _fresh_pickler(base: type[Any]) -> type[Any]:
    """``base`` (multiprocessing's ForkingPickler), refusing a lock or semaphore made in a fork
    context, as Python 3.12 does (and 3.11's later releases): its semaphore was unlinked at once,
    so a process that starts fresh cannot open it, and before that check (3.11.2, Debian 12's
    python3) it pickled the creator's pointer instead, which crashed the worker that used it."""
    try:
        from multiprocessing.synchronize import SemLock
    except ImportError:  # (no working sem_open on this system: no such objects either)
        return base

    class FreshPickler(base):  # type: ignore[misc, valid-type]
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, SemLock) and getattr(getattr(obj, "_semlock", None), "name", "") is None:
                raise RuntimeError(
                    f"a {type(obj).__name__} made in a fork context (multiprocessing queues hold such locks) "
                    "reaches only processes forked from this one: make it from get_context('spawn') or "
                    "get_context('forkserver')"
                )
            return NotImplemented

    return FreshPickler


def _spawning_dumps(obj: Any) -> tuple[bytes, list[int]]:
    """``obj`` pickled as multiprocessing pickles for a spawned child, and the descriptors that
    child must have at the same numbers."""
    from multiprocessing import context
    from multiprocessing.reduction import ForkingPickler

    spawning = Spawning()
    buf = io.BytesIO()
    context.set_spawning_popen(spawning)  # type: ignore[arg-type]  # what it asks of one, DupFd and duplicate_for_child
    try:
        _fresh_pickler(ForkingPickler)(buf, 5).dump(obj)
    finally:
        context.set_spawning_popen(None)
    return buf.getvalue(), spawning.fds


def prepare(
    initializer: Callable[..., Any], initargs: tuple[Any, ...], why: str
) -> tuple[dict[str, Any], bytes]:
    """An initializer whose plain pickle failed (``why``), kept for local workers: the set-up's
    JSON entries, and its pickle for fresh workers (b"" when even that fails: then only forks
    of this process can have it)."""
    token = os.urandom(8).hex()  # (not secrets: it imports hashlib, which a worker need not load)
    _INHERITED[token] = (initializer, initargs)
    plain: dict[str, Any] = {"inherit": token, "why": why}
    try:
        data, fds = _spawning_dumps((initializer, initargs))
    except Exception as exc:
        plain["why_fresh"] = f"{type(exc).__name__}: {exc}"
        return plain, b""
    ids = []
    for fd in fds:
        st = os.fstat(fd)
        ids.append([fd, st.st_dev, st.st_ino])
    plain["fds"] = ids
    return plain, data


def local_only(plain: dict[str, Any]) -> tuple[str, str, tuple[int, ...]] | None:
    """For a set-up's JSON: None when its initializer travels like any other; else why it
    could not be pickled, why fresh workers cannot have it either ("": they can), and the
    descriptors they need."""
    if "inherit" not in plain:
        return None
    return (
        str(plain.get("why", "")),
        str(plain.get("why_fresh", "")),
        tuple(int(e[0]) for e in plain.get("fds", ())),
    )


def forget(plain: dict[str, Any]) -> None:
    """The pool ended: the client lets go of its initializer."""
    token = plain.get("inherit")
    if isinstance(token, str):
        _INHERITED.pop(token, None)


def receive(plain: dict[str, Any], data: bytes) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """In a worker: the initializer of a set-up with ``inherit`` (ValueError saying why not)."""
    pair = _INHERITED.get(str(plain.get("inherit")))
    if pair is not None:  # a fork of the client: the very objects
        return pair
    why = plain.get("why", "")
    if not data:
        raise ValueError(
            "the pool's initializer cannot be pickled (" + str(why) + ", and as for a spawned "
            f"process: {plain.get('why_fresh', '')}); only workers forked from the client have it, "
            "and this one is not"
        )
    for fd, dev, ino in plain.get("fds", ()):
        try:
            st = os.fstat(int(fd))
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != (dev, ino):
            raise ValueError(
                f"the pool's initializer holds descriptor {fd} of the client (a multiprocessing "
                "object's pipe or shared memory), which only the client's local workers receive; "
                "this worker does not have it"
            )
    from multiprocessing.reduction import ForkingPickler

    init, initargs = ForkingPickler.loads(data)
    return init, tuple(initargs)
