"""What a pool's owner may do to its running work: stop one task, or every worker at once.

``ScoopExecutor.cancel(fut, force=False)`` goes further than ``fut.cancel()``, which
only cancels what has not started: a running task gets KeyboardInterrupt (or, with
``force``, its worker process ends and is replaced), and the tasks it submitted are
cancelled too.  ``terminate_workers()`` and ``kill_workers()`` are Python 3.14's
ProcessPoolExecutor methods, on every Python: ``shutdown(wait=False, cancel_futures=True)``,
then SIGTERM or SIGKILL to every worker process this executor started; the pool is
broken afterwards (running futures fail with BrokenScoopExecutor, submit() raises).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
from typing import Any

from .future import ScoopFuture
from .session import Session

__all__ = ["Control"]


class Control:
    """The methods above, for ScoopExecutor (which has the session and the shutdown flag)."""

    _session: Session
    _shutdown: bool
    _shutdown_lock: threading.Lock

    # ProcessPoolExecutor's private names for what we have too: CPython's own tests read them.
    @property
    def _broken(self) -> str | bool:
        return self._session.broken_msg or False

    @property
    def _executor_manager_thread(self) -> threading.Thread | None:
        """The thread that runs the pool for this process (the embedded broker's, a remote pool's
        client's); None once it was joined, as ProcessPoolExecutor's after shutdown()."""
        return self._session.thread

    def cancel(self, fut: cf.Future[Any], force: bool = False) -> bool:
        """Cancel ``fut``, a future of this executor, even if its task is running.

        Pending: as ``fut.cancel()``.  Running: the task gets KeyboardInterrupt
        on its worker and the future ends cancelled at once; ``force=True``
        ends its worker process instead (replaced; its other tasks run again
        elsewhere).  Tasks it submitted are cancelled too.  Returns True if
        the future is cancelled, False if it was done already.
        """
        if fut.cancel():
            return True
        if not isinstance(fut, ScoopFuture) or fut.done():
            return fut.cancelled()
        return self._session.stop_task(fut, force) or fut.cancelled()

    def terminate_workers(self) -> None:
        """End every worker process this executor started with SIGTERM; the pool is then broken."""
        self._end_workers(signal.SIGTERM, "terminate_workers()")

    def kill_workers(self) -> None:
        """End every worker process this executor started with SIGKILL; the pool is then broken."""
        self._end_workers(signal.SIGKILL, "kill_workers()")

    def _end_workers(self, sig: int, what: str) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        session = self._session
        workers = session.workers
        if workers is not None:
            workers.stop_starting()  # no replacement from now on, so that none is missed below
        session.cancel_queued()
        # Broken first, so that what runs fails with this reason and not as a lost worker; but
        # not stopped yet: a stopping session closes the workers' links, and a worker that exits
        # on that before its signal arrives would be an exit of its own (status 0), not an end.
        session.broken("broken", f"the pool's workers were ended by {what}", stop=False)
        try:
            for pid in workers.processes() if workers is not None else []:  # every one that exists
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:  # stopped even if a signal could not be sent (PermissionError, say)
            session.stop_when_idle = True
            session.request_stop()
            session.close(wait=False)
