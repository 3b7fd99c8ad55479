"""The executor's old address: ``scoopexec.executor.ScoopExecutor`` keeps working.

The executor lives in scoopexec/client/ (executor.py, and its session with a broker);
import it from ``scoopexec``.
"""

from __future__ import annotations

from .api import active_executor
from .client.executor import ScoopExecutor
from .client.future import ScoopFuture

__all__ = ["ScoopExecutor", "ScoopFuture", "active_executor"]
