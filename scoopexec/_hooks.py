"""Cheap registration done by ``import scoopexec``; nothing here imports joblib, DEAP or the integrations.

* **post-import hooks**: when ``joblib.parallel`` (or ``deap.creator``) exists
  in this process -- at once if already imported, otherwise right after the
  import that creates it, through a one-shot finder -- the matching module of
  ``scoopexec.integrations`` is imported and its ``register()`` called:
  joblib gets the ``"scoop"`` backend; DEAP's creator classes stop being
  re-created on every unpickling.  The other library is loaded by then, so
  this costs little; a program that never imports joblib or DEAP pays
  nothing.  Workers import scoopexec too, so both hold in tasks; a worker
  that was forked from its client with them imported registers them again
  (``on_worker()``).
* **source checkouts**: the integrations live in the top-level
  ``integrations/`` folder and install as ``scoopexec.integrations``; when
  scoopexec is used straight from a source tree (tests, ``PYTHONPATH``), a
  finder maps that one name to the folder.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import types
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("scoopexec")

# module whose import triggers -> integration module to import and register()
HOOKS = {
    "joblib.parallel": "scoopexec.integrations.joblib_backend",
    "deap.creator": "scoopexec.integrations.deap",
}
_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCE_INTEGRATIONS = os.path.join(os.path.dirname(_HERE), "integrations")


def _run_hook(trigger: str) -> None:
    target = HOOKS[trigger]
    mod = sys.modules.get(target)
    if mod is not None and getattr(getattr(mod, "__spec__", None), "_initializing", False):
        return  # the integration itself is importing the library: it registers when it is done
    try:
        # lazy: the integration (and the library it adapts) load only once that library is imported
        importlib.import_module(target).register()
    except Exception:  # pragma: no cover - never break the user's own import
        log.warning("scoopexec: %s.register() failed after importing %s", target, trigger, exc_info=True)


class _AfterExec:
    """A loader that runs the real one, then registers the backend (and steps aside)."""

    def __init__(self, loader: Any, trigger: str) -> None:
        self._loader = loader
        self._trigger = trigger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        result: types.ModuleType | None = self._loader.create_module(spec)
        return result

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        _run_hook(self._trigger)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Waits for the modules named in HOOKS to be imported (once each); then steps aside."""

    def __init__(self, names: set[str]) -> None:
        self.pending = names
        self._busy: set[str] = set()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.pending or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)  # what the finders after us would answer
        finally:
            self._busy.discard(fullname)
        self.pending.discard(fullname)
        if not self.pending:  # (a new list: an import iterating the old one skips no finder)
            sys.meta_path = [f for f in sys.meta_path if f is not self]
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _AfterExec(spec.loader, fullname)  # type: ignore[assignment]
        return spec


class _SourceIntegrations(importlib.abc.MetaPathFinder):
    """``scoopexec.integrations`` from ``<checkout>/integrations`` when not installed."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "scoopexec.integrations":
            return None
        init = os.path.join(_SOURCE_INTEGRATIONS, "__init__.py")
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[_SOURCE_INTEGRATIONS]
        )


def on_worker() -> None:
    """This process became a worker: the integrations it had imported already (a worker forked
    from its client has the client's, deploy/clientfork.py) register again, now that they can
    see they are on a worker (joblib's per-task ``parallel_config`` state is set up only there)."""
    for trigger, target in HOOKS.items():
        if target in sys.modules and trigger in sys.modules:
            _run_hook(trigger)


def install() -> None:
    """Called once by ``scoopexec/__init__.py``."""
    if not os.path.isdir(os.path.join(_HERE, "integrations")) and os.path.isfile(
        os.path.join(_SOURCE_INTEGRATIONS, "__init__.py")
    ):
        if not any(isinstance(f, _SourceIntegrations) for f in sys.meta_path):
            sys.meta_path.append(_SourceIntegrations())
    if any(isinstance(f, _PostImportHook) for f in sys.meta_path):
        return
    waiting = set()
    for trigger in HOOKS:
        if trigger in sys.modules:
            _run_hook(trigger)
        else:
            waiting.add(trigger)
    if waiting:
        sys.meta_path.insert(0, _PostImportHook(waiting))
