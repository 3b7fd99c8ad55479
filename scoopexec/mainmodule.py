"""The client's ``__main__`` on workers, the way multiprocessing's spawn does it.

``describe()`` runs in the client and says how to find its main module;
``run()`` runs in a worker and executes that module under the name
``__mp_main__`` (so code under ``if __name__ == "__main__":`` does not run),
then makes it ``sys.modules["__main__"]`` too -- unless the worker descends from a
fork of the client made while that module ran (``executing()``), which has it already,
as far as it ran then (``inherit()``).  Classes a script creates at
top level -- DEAP's ``creator.create``, dataclasses -- then exist on workers,
and pickles that refer to them by name resolve.

A script that starts a pool at top level, without the
``if __name__ == "__main__":`` guard, would start one on every worker: the
worker refuses (``guard_error()``), and ``import_failure()`` turns that, or
any other failure of the import, into one short message for the client.
"""

from __future__ import annotations

import linecache
import os
import runpy
import sys
import types
from typing import Any

from .errors import MainGuardError
from .wire.serialize import user_traceback

MAIN_ALIAS = "__mp_main__"
_inherited: dict[str, Any] | None = None  # the main module (describe()) a fork of the client brought


def describe() -> dict[str, Any]:
    """How a worker can re-create this process's main module ({} when it cannot)."""
    main = sys.modules.get("__main__")
    if main is None:
        return {}
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name:
        if name == "__main__" or name.endswith(".__main__"):
            return {}  # `python -m pkg`: running the package's __main__ again is not wanted
        return {"name": name}
    path = getattr(main, "__file__", None)
    if not path:
        return {}  # interactive session, `python -c`: nothing to import
    path = os.path.normpath(os.path.abspath(path))
    base = os.path.splitext(os.path.basename(path))[0]
    if base in ("ipython", "ipykernel_launcher") or not os.path.isfile(path):
        return {}
    return {"path": path}


def alias_in_client() -> None:
    """Let pickles made on workers that name ``__mp_main__`` resolve in the client."""
    main = sys.modules.get("__main__")
    if main is not None:
        sys.modules.setdefault(MAIN_ALIAS, main)


def executing() -> bool:
    """Whether the main module's code runs now, on this thread (its top level or one of its
    functions is on the stack): a fork made now has that module, as far as it ran."""
    main = sys.modules.get("__main__")
    if main is None:
        return False
    namespace = main.__dict__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals is namespace:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def inherit(info: dict[str, Any]) -> None:
    """This process is a fork of its client, made while the client ran the main module that
    ``info`` (describe()) names: run() of that module leaves the one here as it is."""
    global _inherited
    _inherited = dict(info) if info else None
    alias_in_client()


def run(info: dict[str, Any]) -> bool:
    """Execute the client's main module here; False when there was nothing to do (or it is here
    already, in a fork of the client: inherit())."""
    if info and info == _inherited:
        return False
    current = sys.modules.get(MAIN_ALIAS)
    name = info.get("name")
    path = info.get("path")
    if name:
        if current is not None and getattr(current, "__scoopexec_main__", None) == name:
            return False
        module = types.ModuleType(MAIN_ALIAS)
        sys.modules[MAIN_ALIAS] = module
        try:
            content = runpy.run_module(name, run_name=MAIN_ALIAS, alter_sys=False)
        except BaseException:
            sys.modules.pop(MAIN_ALIAS, None)
            raise
        module.__dict__.update(content)
        module.__scoopexec_main__ = name  # type: ignore[attr-defined]
    elif path:
        if current is not None and getattr(current, "__scoopexec_main__", None) == path:
            return False
        module = types.ModuleType(MAIN_ALIAS)
        module.__file__ = path
        module.__scoopexec_main__ = path  # type: ignore[attr-defined]
        module.__builtins__ = __builtins__  # type: ignore[attr-defined]
        sys.modules[MAIN_ALIAS] = module
        try:
            with open(path, "rb") as fh:
                source = fh.read()
            code = compile(source, path, "exec")
            exec(code, module.__dict__)
        except BaseException:
            sys.modules.pop(MAIN_ALIAS, None)
            raise
    else:
        return False
    sys.modules["__main__"] = module
    return True


def guard_error(what: str) -> MainGuardError:
    """The error for ``what`` (e.g. "starts a ScoopExecutor") done while a worker imports the script.

    Names the line of the script's top level that led to it: where the
    ``if __name__ == "__main__":`` guard belongs.
    """
    where = "the main module"
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == MAIN_ALIAS:
            filename, lineno = frame.f_code.co_filename, frame.f_lineno
            where = f"{filename}, line {lineno}"
            line = linecache.getline(filename, lineno).strip()
            if line:
                where += f" (`{line}`)"
            break
        frame = frame.f_back  # type: ignore[assignment]
    return MainGuardError(
        f"{where} {what} when the script is imported. Workers import the script to find its "
        "functions (as multiprocessing's spawn does), so that code must not run then: put it "
        'under `if __name__ == "__main__":`'
    )


def import_failure(exc: BaseException, info: dict[str, Any], worker: str) -> str:
    """The message for the client when importing its main module on ``worker`` raised ``exc``."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # the guard error, even if wrapped
        if isinstance(cur, MainGuardError):
            return str(cur)
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    what = info.get("path") or info.get("name") or "the main module"
    detail = user_traceback(exc) or f"{type(exc).__name__}: {exc}\n"
    return (
        f"importing {what} on {worker} failed. Workers import the script to find its functions "
        "(as multiprocessing's spawn does): code that must run only in the client belongs under "
        f'`if __name__ == "__main__":`.\n{detail}'
    )
