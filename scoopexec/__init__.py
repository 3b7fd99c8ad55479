"""scoopexec: many loosely coupled Python tasks over every core of a machine or a cluster.

    from scoopexec import ScoopExecutor
    with ScoopExecutor(max_workers=4) as ex:
        results = list(ex.map(evaluate, population))

Tasks may submit and wait on tasks of their own (``scoopexec.submit``,
``scoopexec.map``); waiting parks the task, never the worker.
"""

from __future__ import annotations

from .api import as_completed, current_executor, map, shared, submit, wait
from .errors import (
    AuthenticationError,
    BrokenScoopExecutor,
    BrokerLostError,
    InitializerError,
    MessageTooLargeError,
    LaunchError,
    ProtocolError,
    RemoteError,
    SerializationError,
    WorkerLostError,
)
from .executor import ScoopExecutor, ScoopFuture

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BrokenScoopExecutor",
    "BrokerLostError",
    "InitializerError",
    "MessageTooLargeError",
    "LaunchError",
    "ProtocolError",
    "RemoteError",
    "ScoopExecutor",
    "ScoopFuture",
    "SerializationError",
    "WorkerLostError",
    "__version__",
    "as_completed",
    "current_executor",
    "map",
    "shared",
    "submit",
    "wait",
]
