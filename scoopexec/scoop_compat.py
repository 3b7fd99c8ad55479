"""``from scoop import futures, shared`` for programs written for SCOOP.

Under ``python -m scoopexec script.py`` (and on the workers of the pool that
launcher starts) the names ``scoop``, ``scoop.futures`` and ``scoop.shared``
resolve to a small package whose ``futures`` and ``shared`` are
:mod:`scoopexec.futures` and :mod:`scoopexec.shared`.  Nothing is installed
anywhere else, so a real ``scoop`` package is never shadowed outside the
launcher.

The executor puts ``"scoop_compat": true`` in the set-up blob of a pool
started while the alias is active; a worker installs the alias before it
imports the client's main module, which may itself ``from scoop import
futures``.

SCOOP's module-level constants, with SCOOP's meanings:

* ``scoop.IS_ORIGIN``: True in the launcher's process, False on workers;
* ``scoop.IS_RUNNING``: True;
* ``scoop.worker``: this process's identity in the pool, as bytes
  (``b"host:pid"``; SCOOP's were ``b"address:port"``): the worker's name on
  a worker, the launcher's own in the launcher;
* ``scoop.SIZE``: the number of workers of the launcher's pool (SCOOP's
  ``-n``), as planned when it started.  The executor hands it to the
  workers in their environment (``SIZE_VARIABLE``); a host listed without a
  worker count adds nothing to it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import socket
import sys
import types
from collections.abc import Sequence

from . import pools
from ._version import __version__

_active = False
_origin = True

PROVIDED = ("scoop", "scoop.futures", "scoop.shared")

SIZE_VARIABLE = "SCOOPEXEC_SCOOP_SIZE"
"""The environment variable that gives workers of a launcher's pool ``scoop.SIZE``."""


def worker_env(size: int) -> dict[str, str]:
    """What the executor adds to the environment of the workers of a pool started under the launcher."""
    return {SIZE_VARIABLE: str(size)}


_name = b""  # scoop.worker: set by install()


def _size() -> int:
    if _origin:
        ex = pools.innermost()  # the launcher's pool
        if ex is not None and ex.max_workers:
            return int(ex.max_workers)
    try:
        return int(os.environ.get(SIZE_VARIABLE, ""))
    except ValueError:
        return 0


def _constant(name: str) -> object:
    """``scoop.worker`` and ``scoop.SIZE``, worked out when they are read."""
    if name == "worker":
        return _name
    if name == "SIZE":
        return _size()
    raise AttributeError(f"module 'scoop' has no attribute {name!r} (under `python -m scoopexec`, "
                         "`scoop` is scoopexec's compatibility layer: see scoopexec.scoop_compat)")


def active() -> bool:
    """True once ``install()`` ran in this process."""
    return _active


class _Unavailable(importlib.abc.MetaPathFinder):
    """Explains, instead of a bare ModuleNotFoundError, that only part of SCOOP is provided."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.startswith("scoop.") and fullname not in PROVIDED and _active:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: under `python -m scoopexec`, `scoop` is scoopexec's "
                "compatibility layer, which provides SCOOP's public API only (scoop.futures and "
                "scoop.shared)",
                name=fullname,
            )
        return None


def install(origin: bool = True, name: str = "") -> None:
    """Make ``import scoop`` (and its ``futures`` and ``shared``) resolve to scoopexec here.

    ``origin``: True in the launcher's process, False on workers (SCOOP's
    ``scoop.IS_ORIGIN``); ``name``: this worker's (``scoop.worker``; default
    ``host:pid``).  Calling it again only updates those.
    """
    global _active, _origin, _name
    _origin = origin
    _name = (name or f"{socket.gethostname()}:{os.getpid()}").encode()
    # lazy: futures and shared sit above the executor, whose set-up blob asks active()
    from . import futures, shared

    pkg = sys.modules.get("scoop")
    if pkg is None or not getattr(pkg, "__scoopexec_compat__", False):
        pkg = types.ModuleType("scoop", "scoopexec's SCOOP compatibility layer (see scoopexec.scoop_compat)")
        pkg.__path__ = []  # a package; its two submodules are already in sys.modules
        pkg.__package__ = "scoop"
        pkg.__scoopexec_compat__ = True  # type: ignore[attr-defined]
        pkg.__version__ = f"scoopexec-{__version__}"  # type: ignore[attr-defined]
        pkg.futures = futures  # type: ignore[attr-defined]
        pkg.shared = shared  # type: ignore[attr-defined]
        pkg.IS_RUNNING = True  # type: ignore[attr-defined]
        pkg.DEBUG = False  # type: ignore[attr-defined]
        pkg.logger = logging.getLogger("scoop")  # type: ignore[attr-defined]
        pkg.__getattr__ = _constant  # type: ignore[method-assign]  # PEP 562: scoop.worker, scoop.SIZE
        sys.modules["scoop"] = pkg
        sys.modules["scoop.futures"] = futures
        sys.modules["scoop.shared"] = shared
        if not any(isinstance(f, _Unavailable) for f in sys.meta_path):
            sys.meta_path.insert(0, _Unavailable())
    pkg.IS_ORIGIN = origin  # type: ignore[attr-defined]
    _active = True
