"""joblib knows the backend name ``"scoop"`` in a program that never imports scoopexec.

joblib has no plug-in discovery: a backend exists once something calls
``register_parallel_backend``, and ``import scoopexec`` does (scoopexec/_hooks.py).  A
program, or a ``python -c`` child that joblib's users start, that only says
``Parallel(backend="scoop")`` or ``parallel_config(backend="scoop")`` would otherwise get
"Invalid backend".

The installed ``scoopexec_joblib.pth`` (site-packages; setup.py puts it in the wheel and
in the editable install) imports this module at every interpreter start, so it must cost
next to nothing: it imports nothing, and puts a one-shot finder at the front of
``sys.meta_path``.  When ``joblib.parallel`` is imported, the finder lets the other
finders load it, and once the module has run it registers ``"scoop"`` as a small factory
(unless scoopexec has registered its backend class already).  The factory imports
scoopexec's joblib backend on its first call, which registers the class itself.  Importing
joblib thus does not import scoopexec.  ``SCOOPEXEC_NO_JOBLIB_HOOK=1`` (any value but empty or
``0``) turns this hook off.

The same way, ``from concurrent.futures import ScoopExecutor`` works where scoopexec is
installed, as it does for the standard library's executors: once ``concurrent.futures`` has
run, a second one-shot finder wraps its module ``__getattr__`` (which already imports
``ProcessPoolExecutor`` and ``ThreadPoolExecutor`` on first use) so that the name imports
scoopexec when it is first looked up, and only then.  Code written for a standard executor
whose name it looks up there -- CPython's own tests start ``python -c "from
concurrent.futures import {executor_type.__name__}"`` children -- then runs on scoopexec.
``concurrent.futures.__all__`` is left alone (``import *`` gives what it gave).
``SCOOPEXEC_NO_FUTURES_HOOK=1`` turns that one off.
"""

import os
import sys

TYPE_CHECKING = False  # typing (and __future__) not imported: this module runs at every interpreter start
if TYPE_CHECKING:
    from typing import Any

TRIGGER = "joblib.parallel"
NAME = "scoop"
FUTURES = "concurrent.futures"
EXECUTOR = "ScoopExecutor"


def scoop_backend(*args: "Any", **kwargs: "Any") -> "Any":
    """joblib's factory for ``"scoop"`` until scoopexec is imported: import it and build its backend."""
    # importing it registers the class itself, in place of this factory
    from scoopexec.integrations.joblib_backend import ScoopBackend  # type: ignore[import-not-found]

    return ScoopBackend(*args, **kwargs)


def register(parallel: "Any") -> None:
    """``parallel`` is the module joblib.parallel, just run."""
    backends = getattr(parallel, "BACKENDS", None)
    if isinstance(backends, dict) and NAME not in backends:
        try:
            parallel.register_parallel_backend(NAME, scoop_backend)
        except Exception:  # pragma: no cover - never break the user's import of joblib
            pass


class _ThenRegister:
    """Wraps a module's loader: runs it, steps aside, then calls ``then(module)``."""

    def __init__(self, loader: "Any", finder: "Any") -> None:
        self._loader = loader
        self._finder = finder

    def __getattr__(self, name: str) -> "Any":
        return getattr(self._loader, name)

    def create_module(self, spec: "Any") -> "Any":
        return self._loader.create_module(spec)

    def exec_module(self, module: "Any") -> None:
        self._loader.exec_module(module)
        # step aside (where nothing else has put its own loader meanwhile)
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        self._finder.forget()  # its module has run: no more to do
        self._finder.then(module)


class JoblibFinder:
    """Answers once, for joblib.parallel, with what the finders after it answer, loader wrapped."""

    trigger = TRIGGER
    _asking = False  # asking the finders after it (which might ask the import system again)

    def find_spec(self, fullname: str, path: "Any" = None, target: "Any" = None) -> "Any":
        if fullname != self.trigger or self._asking:
            return None
        # It stays until the module has run (importlib.util.find_spec() may look before, or
        # instead of, an import): each answer's loader is wrapped, the one that runs says so.
        self._asking = True
        try:
            for finder in list(sys.meta_path):
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is None:
                    continue
                if self.wanted() and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenRegister(spec.loader, self)
                else:
                    self.forget()  # (no loader it can wrap, or nothing left to do: it steps aside)
                return spec
            return None
        finally:
            self._asking = False

    def forget(self) -> None:
        """Leave sys.meta_path.  A new list: an import going through the old one (this one,
        another thread's) skips no finder."""
        sys.meta_path = [f for f in sys.meta_path if f is not self]

    def wanted(self) -> bool:
        # scoopexec imported: its own hook (scoopexec/_hooks.py) registers the class itself
        return "scoopexec" not in sys.modules

    @staticmethod
    def then(module: "Any") -> None:
        register(module)


def add_executor(futures: "Any") -> None:
    """``futures`` is the module concurrent.futures, just run: its ``ScoopExecutor`` imports
    scoopexec when it is first looked up."""
    previous = getattr(futures, "__getattr__", None)
    if getattr(previous, "scoopexec_hook", False):
        return

    def __getattr__(name: str) -> "Any":
        if name == EXECUTOR:
            try:
                from scoopexec import ScoopExecutor  # type: ignore[import-not-found]
            except ImportError as exc:  # (hasattr() must say False, not raise)
                raise AttributeError(f"{name}: importing scoopexec failed: {exc}") from exc
            return ScoopExecutor
        if previous is not None:
            return previous(name)
        raise AttributeError(f"module {futures.__name__!r} has no attribute {name!r}")

    __getattr__.scoopexec_hook = True  # type: ignore[attr-defined]
    try:
        futures.__getattr__ = __getattr__
    except Exception:  # pragma: no cover - never break the user's import of concurrent.futures
        pass


class FuturesFinder(JoblibFinder):
    """Answers once, for concurrent.futures, with what the finders after it answer, loader wrapped."""

    trigger = FUTURES

    def wanted(self) -> bool:
        return True

    @staticmethod
    def then(module: "Any") -> None:
        add_executor(module)


def _off(variable: str) -> bool:
    return os.environ.get(variable, "0").strip() not in ("", "0")


def install() -> None:
    """What the .pth file calls."""
    hooks = (("SCOOPEXEC_NO_FUTURES_HOOK", FuturesFinder), ("SCOOPEXEC_NO_JOBLIB_HOOK", JoblibFinder))
    for variable, kind in hooks:
        if _off(variable):
            continue
        module = sys.modules.get(kind.trigger)
        if module is not None:  # (imported already, by another .pth)
            kind.then(module)
        elif not any(type(f) is kind for f in sys.meta_path):
            sys.meta_path.insert(0, kind())
