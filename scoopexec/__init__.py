"""scoopexec: many loosely coupled Python tasks over every core of a machine or a cluster.

    from scoopexec import ScoopExecutor
    with ScoopExecutor(max_workers=4) as ex:
        results = list(ex.map(evaluate, population))

Tasks may submit and wait on tasks of their own (``scoopexec.submit``,
``scoopexec.map``); waiting parks the task, never the worker.

Seeing what a pool does: ``ScoopExecutor(trace="run.json")`` records a
timeline (``python -m scoopexec report run.json``), ``ex.status()`` returns
a PoolStatus, ``ex.map(..., progress=True)`` draws a progress bar, and
``configure_logging(verbosity)`` sets how much the ``scoopexec`` logger says.

``import scoopexec`` also registers the joblib backend ``"scoop"`` (lazily:
nothing of joblib is imported here).  ``scoopexec.futures`` and
``scoopexec.shared`` are SCOOP's API; ``scoop_map`` is DEAP's map.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from . import _hooks
from ._version import __version__

if _typing.TYPE_CHECKING:
    from . import futures, shared
    from .aio import amap
    from .api import as_completed, current_executor, map, submit, wait
    from .client.executor import ScoopExecutor
    from .client.future import ScoopFuture
    from .deploy.slurm_jobs import SlurmJobs
    from .errors import (
        AuthenticationError,
        BrokenScoopExecutor,
        BrokerLostError,
        DeserializationError,
        InitializerError,
        JournalError,
        LaunchError,
        MessageTooLargeError,
        ProtocolError,
        RemoteError,
        SerializationError,
        TaskTimeoutError,
        WorkerLostError,
        WorkerMemoryError,
    )
    from .logs import configure_logging
    from .pool import Pool
    from .seeding import task_rng
    from .status import PoolStatus, WorkerStatus

# Each public name and the module that defines it, imported on first use (PEP 562): a
# worker process imports this package too (``python -m scoopexec worker``), and the
# client's side (executor, mapping, deploy, journal...) doubled its start-up time.
_WHERE = {
    "futures": "", "shared": "", "amap": ".aio", "as_completed": ".api", "current_executor": ".api",
    "map": ".api", "submit": ".api", "wait": ".api", "ScoopExecutor": ".client.executor",
    "ScoopFuture": ".client.future", "SlurmJobs": ".deploy.slurm_jobs", "configure_logging": ".logs",
    "Pool": ".pool", "task_rng": ".seeding", "PoolStatus": ".status", "WorkerStatus": ".status",
    "scoop_map": ".integrations.deap",
}  # fmt: skip
_ERRORS = (
    "AuthenticationError", "BrokenScoopExecutor", "BrokerLostError", "DeserializationError",
    "InitializerError", "JournalError", "LaunchError", "MessageTooLargeError", "ProtocolError",
    "RemoteError", "SerializationError", "TaskTimeoutError", "WorkerLostError", "WorkerMemoryError",
)  # fmt: skip
_WHERE.update(dict.fromkeys(_ERRORS, ".errors"))

__all__ = [
    "AuthenticationError",
    "BrokenScoopExecutor",
    "BrokerLostError",
    "DeserializationError",
    "InitializerError",
    "JournalError",
    "LaunchError",
    "MessageTooLargeError",
    "Pool",
    "PoolStatus",
    "ProtocolError",
    "RemoteError",
    "ScoopExecutor",
    "ScoopFuture",
    "SerializationError",
    "SlurmJobs",
    "TaskTimeoutError",
    "WorkerLostError",
    "WorkerMemoryError",
    "WorkerStatus",
    "__version__",
    "amap",
    "as_completed",
    "configure_logging",
    "current_executor",
    "futures",
    "map",
    "shared",
    "submit",
    "task_rng",
    "wait",
]


def __getattr__(name: str) -> _typing.Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # lazy: the public names load on first use (see _WHERE); the integrations (and DEAP) only then
    mod = _importlib.import_module(where or f".{name}", __name__)
    value = mod if not where else getattr(mod, name)
    if name in __all__:  # (scoop_map stays out of dir(): it is DEAP's, not part of the API listed)
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


_hooks.install()  # last: it may import an integration at once, which imports names from here
