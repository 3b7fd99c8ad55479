"""The future of a task: a concurrent.futures.Future that knows who holds its task.

Clients (client/session.py) and workers submitting sub-tasks (worker/waiting.py) make
them.  Cancelling one that has not started tells its holder, which drops the task (a
remote holder sends CANCEL).  A task lost with its workers too often fails with a
WorkerLostError that names the task's function.
"""

from __future__ import annotations

import concurrent.futures as cf
import concurrent.futures._base as cfb
from typing import Any, Protocol

from ..errors import WorkerLostError

__all__ = ["Holder", "ScoopFuture"]


class Holder(Protocol):
    """Who holds a task until its result comes: told when its future is cancelled."""

    def cancelled(self, tid: int) -> None: ...


class ScoopFuture(cf.Future):  # type: ignore[type-arg]
    """The future of a task submitted from a client.  A concurrent.futures.Future."""

    def __init__(self, holder: Holder | None = None, tid: int = 0, what: str = "") -> None:
        super().__init__()
        self._holder = holder
        self._tid = tid
        self._what = what  # the task's function, for error messages

    def cancel(self) -> bool:
        """Cancel the task if no worker has it yet; True if it is (now) cancelled."""
        with self._condition:
            ok = super().cancel()
            if ok and self._state == cfb.CANCELLED:
                # Tell waiters (wait(), as_completed()) now rather than when the
                # broker reaches this task in its queue.
                self.set_running_or_notify_cancel()
        holder = self._holder
        if ok and holder is not None:
            self._holder = None
            holder.cancelled(self._tid)
        return ok

    def set_exception(self, exception: BaseException | None) -> None:
        """As Future.set_exception; a WorkerLostError is prefixed with the task's function."""
        if isinstance(exception, WorkerLostError) and self._what:
            exception.args = (f"{self._what}(): {exception.args[0] if exception.args else ''}",)
        self._holder = None
        super().set_exception(exception)

    def set_result(self, result: Any) -> None:
        """As Future.set_result."""
        self._holder = None
        super().set_result(result)
