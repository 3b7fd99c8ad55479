"""A pool's set-up: what its client tells each worker before the worker's first task of it.

Both sides of the exchange are here.  The client makes the blob (:func:`encode`) once per
pool; the broker keeps it and sends it (SETUP) to every worker before that pool's first
task there; the worker applies it (:func:`apply`) and answers SETUP_DONE.  The blob is two
frames: JSON (nothing to unpickle) and the pickled initializer (empty when none)::

    {"sys_path": [...], "cwd": "...", "main": {"path" | "name": ...},   mainmodule.py
     "log_levels": {...}, "scoop_compat": true, "mp_authkey": "hex"}    (the last two optional)

A worker applies it in that order: log levels, sys.path, working directory (unless it
was started in one of its own, ``--keep-cwd``), multiprocessing's authkey, the
``scoop`` alias, the client's main module (as ``__mp_main__``), then the initializer.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .. import logs, mainmodule, scoop_compat
from ..errors import InitializerError, SerializationError
from ..wire import protocol as P
from ..wire import serialize

SETUP_DONE_OK = 1
__all__ = ["Setups", "apply", "encode"]


def encode(initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> list[bytes]:
    """The set-up blob of a new pool in this client (TypeError/SerializationError if it cannot be)."""
    plain: dict[str, Any] = {
        "sys_path": [p for p in sys.path if isinstance(p, str)],
        "cwd": os.getcwd(),
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
    init = b""
    if initializer is not None:
        if not callable(initializer):
            raise TypeError("initializer must be a callable")
        try:
            init = bytes(serialize.dumps((initializer, tuple(initargs)))[0])
        except Exception as exc:
            raise SerializationError(
                f"cannot send the initializer to workers: {type(exc).__name__}: {exc}"
            ) from exc
    return [P.dump_json(plain), init]


class _Worker(Protocol):
    name: str
    pid: int
    host: str
    keep_cwd: bool
    importing_main: bool


def apply(worker: _Worker, frames: Sequence[Any]) -> str | None:
    """Apply a pool's set-up blob in this worker: None when done, else the error as text."""
    try:
        plain = P.load_json(P.as_bytes(frames[0])) if frames else {}
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
            scoop_compat.install(origin=False)  # before the main import: it may `from scoop import ...`
        main = plain.get("main") or {}
        worker.importing_main = True
        try:
            mainmodule.run(main)
        except BaseException as exc:
            raise InitializerError(
                f"importing the main module {main.get('path') or main.get('name')} on worker "
                f"{worker.name} failed: {type(exc).__name__}: {exc} (guard the script's own code "
                "with `if __name__ == \"__main__\":`)"
            ) from exc
        finally:
            worker.importing_main = False
        if len(frames) > 1 and len(frames[1]) > 0:
            init, initargs = serialize.loads([frames[1]])
            if init is not None:
                init(*initargs)
    except BaseException as exc:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return f"On worker {worker.name} (pid {worker.pid} on {worker.host}):\n{text}"
    return None


class Setups:
    """The pools a worker serves, by set-up id: whether their set-up worked, their shared values."""

    def __init__(self, worker: _Worker, send: Callable[[list[Any]], None]) -> None:
        self._worker = worker
        self._send = send
        self.errors: dict[int, str | None] = {}  # set-up id -> None (applied) or why it failed
        self.shares: dict[int, dict[str, Any]] = {}  # set-up id -> name -> frames, then (value,)

    def on_setup(self, msg: P.Message) -> None:
        """SETUP: apply it once, answer SETUP_DONE."""
        sid = msg.arg
        if sid in self.errors:
            return
        error = self.errors[sid] = apply(self._worker, msg.frames[1:])
        if error is None:
            self._send([P.header(P.SETUP_DONE, SETUP_DONE_OK, sid)])
        else:
            self._send([P.header(P.SETUP_DONE, 0, sid), error.encode("utf-8", "replace")])

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
