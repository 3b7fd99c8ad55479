"""A pool's set-up: what its client tells each worker before the worker's first task of it.

Both sides of the exchange are here.  The client makes the blob (:func:`encode`) once per
pool; the broker keeps it and sends it (SETUP) to every worker before that pool's first
task there; the worker applies it (:func:`apply`) and answers SETUP_DONE.  The blob's
frames: JSON (nothing to unpickle), then the pickled initializer (empty when none) and its
out-of-band buffers (a large array in ``initargs``)::

    {"sys_path": [...], "cwd": "...", "argv": [...], "main": {"path" | "name": ...},
     "log_levels": {...}, "scoop_compat": true, "mp_authkey": "hex"}    (the last two optional)

An initializer that does not pickle goes to a pool of local workers only as handover.py
says: the JSON then names it (``inherit``), and its frame is multiprocessing's pickle.

A worker applies it in that order: the client's sys.argv (which tasks of that client
see, as in ProcessPoolExecutor's spawned workers), log levels, sys.path, working
directory (unless it was started in one of its own, ``--keep-cwd``), multiprocessing's
authkey, the ``scoop`` alias, the client's main module (as ``__mp_main__``), then the
initializer.  The main module and the initializer are the user's code: they run with
the worker's lock released.  When importing the main module fails, SETUP_DONE carries
``b"main"`` after the message: the client then says it once, with no initializer wording.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
import types
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .. import logs, mainmodule, scoop_compat
from ..errors import SerializationError
from ..wire import protocol as P
from ..wire import serialize
from . import handover, lifeline
from .channels import NOT_FORWARDED

SETUP_DONE_OK = 1
__all__ = ["Setups", "apply", "encode", "handed_over", "release"]


def encode(
    initializer: Callable[..., Any] | None, initargs: tuple[Any, ...], local: bool = False
) -> list[bytes]:
    """The set-up blob of a new pool in this client (TypeError/SerializationError if it cannot be).
    ``local``: every worker of the pool is a local one, which can be handed what does not pickle
    (handover.py)."""
    plain: dict[str, Any] = {
        "sys_path": [p for p in sys.path if isinstance(p, str)],
        "cwd": os.getcwd(),
        "argv": [str(a) for a in getattr(sys, "argv", [])],  # tasks see it, as with ProcessPoolExecutor
        "main": mainmodule.describe(),
        "log_levels": logs.levels(),
    }
    if scoop_compat.active():
        plain["scoop_compat"] = True  # workers provide `scoop.futures` too (python -m scoopexec)
    mp_process = sys.modules.get("multiprocessing.process")
    if mp_process is not None:
        # As multiprocessing's children do, workers take the client's authkey, so
        # that Manager proxies (dicts, queues, locks) passed to tasks connect.
        plain["mp_authkey"] = bytes(mp_process.current_process().authkey).hex()
    init: list[bytes] = [b""]
    if initializer is not None:
        if not callable(initializer):
            raise TypeError("initializer must be a callable")
        try:
            # (with its out-of-band buffers, a large array's: frames of their own)
            init = [bytes(f) for f in serialize.dumps((initializer, tuple(initargs)))]
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            if not local:
                raise SerializationError(
                    f"cannot send the initializer to workers: {why} (what only a process's start can "
                    "hand over, a multiprocessing Queue, Lock or Value, reaches local workers only: "
                    "not with hosts=, broker=, bind=, srun or jobs)"
                ) from exc
            extra, data = handover.prepare(initializer, tuple(initargs), why)
            plain.update(extra)
            init = [data]
    return [P.dump_json(plain), *init]


def handed_over(frames: Sequence[bytes]) -> tuple[str, str, tuple[int, ...]] | None:
    """For a set-up blob: None when its initializer travels like any other; else (handover.py)
    why it did not pickle, why workers that start fresh cannot have it either ("": they can),
    the descriptors they need."""
    if not frames or b'"inherit"' not in frames[0]:
        return None
    return handover.local_only(P.load_json(frames[0]))


def release(frames: Sequence[bytes]) -> None:
    """The pool of this set-up ended (or never started): let go of what it handed over."""
    if frames and b'"inherit"' in frames[0]:
        handover.forget(P.load_json(frames[0]))


class _Worker(Protocol):
    name: str
    pid: int
    host: str
    keep_cwd: bool
    importing_main: bool


def apply(
    worker: _Worker,
    frames: Sequence[Any],
    argv_out: list[list[str]] | None = None,
    globals_out: dict[str, Any] | None = None,
) -> tuple[str, bytes] | None:
    """Apply a pool's set-up blob in this worker: None when done, else the error's text and its
    kind for SETUP_DONE (b"main": importing the client's main module failed; b"" otherwise).
    The client's sys.argv, if the blob has it, is appended to ``argv_out``; the script's globals
    its initializer set go to ``globals_out`` (:func:`script_globals`)."""
    try:
        plain = P.load_json(P.as_bytes(frames[0])) if frames else {}
        argv = plain.get("argv")
        if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
            if argv_out is not None:
                argv_out.append(argv)
            sys.argv = list(argv)  # the initializer and the main module see it too
        logs.apply_levels(plain.get("log_levels"))  # log what the client wants to see
        for entry in reversed(plain.get("sys_path", [])):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        cwd = plain.get("cwd")
        if cwd and os.path.isdir(cwd) and not worker.keep_cwd:
            os.chdir(cwd)
        if plain.get("mp_authkey"):
            import multiprocessing

            multiprocessing.current_process().authkey = bytes.fromhex(plain["mp_authkey"])
        if plain.get("scoop_compat"):
            # before the main import: it may `from scoop import ...`
            scoop_compat.install(origin=False, name=worker.name)
        main = plain.get("main") or {}
        worker.importing_main = True
        try:
            mainmodule.run(main)
        except BaseException as exc:
            # One short message, marked "main" for the client (no initializer wording).
            where = f"worker {worker.name} (pid {worker.pid} on {worker.host})"
            return mainmodule.import_failure(exc, main, where), b"main"
        finally:
            worker.importing_main = False
        init = None
        if "inherit" in plain:  # what only local workers can be handed (handover.py)
            init, initargs = handover.receive(plain, bytes(frames[1]) if len(frames) > 1 else b"")
        elif len(frames) > 1 and len(frames[1]) > 0:
            init, initargs = serialize.loads([P.as_bytes(f) for f in frames[1:]])
        if init is not None:
            namespace = _script_namespace(init)
            before = {k: id(v) for k, v in namespace.items()} if namespace is not None else {}
            try:
                init(*initargs)
            except BaseException:
                # As ProcessPoolExecutor's workers do, for the handlers the initializer may have
                # set up here (a QueueHandler); not forwarded: the client says it once itself
                # (Session.broken), with the traceback.
                logging.getLogger("concurrent.futures").critical(
                    "Exception in initializer:", exc_info=True, extra={NOT_FORWARDED: True}
                )
                # ... and that record is in the handler's queue before the client hears of the
                # failure (ProcessPoolExecutor's worker exits, which flushes it).
                lifeline.flush_queue_feeders()
                raise
            if namespace is not None and globals_out is not None:
                code = getattr(init, "__code__", None)  # (CACHE["k"] = x changes CACHE in place)
                used = set(serialize.global_names(code)) if isinstance(code, types.CodeType) else set()
                globals_out.update(
                    (k, v)
                    for k, v in namespace.items()
                    if (before.get(k) != id(v) or k in used) and not k.startswith("__")
                )
    except BaseException as exc:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return f"On worker {worker.name} (pid {worker.pid} on {worker.host}):\n{text}", b""
    return None


def _script_namespace(fn: Any) -> dict[str, Any] | None:
    """The globals of ``fn`` when it is a function of the client's script (sent by value, or
    inherited by a fork), else None."""
    g = getattr(fn, "__globals__", None)
    return g if isinstance(g, dict) and g.get("__name__") in ("__main__", "__mp_main__") else None


def script_globals(fn: Any, given: dict[str, Any]) -> None:
    """Before a task runs: the globals its pool's initializer set in the script (``given``: those
    it rebound, and those its code names, which it may have changed in place), in the namespace
    of the task's function if that is the script's, once per namespace.

    A function of the client's script travels by value (cloudpickle), with the script's globals
    it uses as they were in the client; so did the initializer, into a namespace of its own.
    ``def init(x): global G; G = x`` followed by tasks that read ``G`` (ProcessPoolExecutor's
    usual pattern, whose workers have one namespace for the script) then saw the client's
    ``G``, silently.  Once per namespace, so that what tasks set there afterwards stays.  Each
    of the script's task functions still has a namespace of its own (what one task function
    rebinds, another does not see), as with cloudpickle anywhere.
    """
    g = _script_namespace(serialize.user_function(fn))
    if g is not None and g.get(_GIVEN) is not given:
        g.update(given)
        g[_GIVEN] = given


_GIVEN = "__scoopexec_initializer_globals__"


class Setups:
    """The pools a worker serves, by set-up id: whether their set-up worked, their shared values,
    their clients' sys.argv.  ``lock``: the worker's, held by the hub, released while user code runs."""

    def __init__(
        self,
        worker: _Worker,
        send: Callable[[list[Any]], None],
        lock: threading.RLock,
        flush_results: Callable[[], None] = lambda: None,
    ) -> None:
        self._worker = worker
        self._send = send
        self._lock = lock
        self._flush_results = flush_results  # send finished results now (the hub's, holding `lock`)
        self.errors: dict[int, str | None] = {}  # set-up id -> None (applied) or why it failed
        self.given: dict[int, dict[str, Any]] = {}  # set-up id -> the script's globals its initializer set
        self.shares: dict[int, dict[str, Any]] = {}  # set-up id -> name -> frames, then (value,)
        self.argvs: dict[int, list[str]] = {}  # set-up id -> its client's sys.argv
        self.argv_of = -1  # the set-up whose argv sys.argv is

    def on_setup(self, msg: P.Message) -> None:
        """SETUP: apply it once (holding no lock: the main module and initializer are user code),
        answer SETUP_DONE."""
        sid = msg.arg
        if sid in self.errors:
            return
        argv: list[list[str]] = []
        given: dict[str, Any] = {}
        # A finished result waits for no set-up (another client's initializer may run long,
        # or wait on that very result): the hub may have held it back for the next start.
        self._flush_results()
        self._lock.release()
        try:
            error = apply(self._worker, msg.frames[1:], argv, given)
        finally:
            self._lock.acquire()
        if argv:
            self.argvs[sid] = argv[0]
            self.argv_of = sid
        if given:
            self.given[sid] = given
        if error is None:
            self.errors[sid] = None
            self._send([P.header(P.SETUP_DONE, SETUP_DONE_OK, sid)])
            return
        text, kind = error
        self.errors[sid] = text
        done = [P.header(P.SETUP_DONE, 0, sid), text.encode("utf-8", "replace")]
        self._send([*done, kind] if kind else done)

    def use_argv(self, sid: int) -> None:
        """sys.argv of the client whose set-up ``sid`` is (a worker may serve several)."""
        self.argv_of = sid
        argv = self.argvs.get(sid)
        if argv is not None:
            sys.argv = list(argv)

    def on_share(self, msg: P.Message) -> None:
        """SHARE: a value for the tasks of one pool, unpickled on first use."""
        frames = msg.frames
        self.shares.setdefault(msg.arg, {})[P.as_bytes(frames[1]).decode()] = list(frames[2:])

    def shared(self, sid: int, name: str) -> Any:
        """The value pool ``sid`` shared under ``name``; KeyError if none."""
        table = self.shares.get(sid, {})
        value = table[name]
        if isinstance(value, list):  # still frames: unpickle once, on first use
            value = table[name] = (serialize.loads(value),)
        return value[0]
