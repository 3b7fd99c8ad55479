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

import typing as _typing

from . import _hooks, futures, shared
from ._version import __version__
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

_hooks.install()


def __getattr__(name: str) -> _typing.Any:
    if name == "scoop_map":
        # lazy: the core never imports the integrations (nor DEAP) by itself
        from .integrations.deap import scoop_map  # type: ignore[import-not-found,unused-ignore]

        return scoop_map
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
