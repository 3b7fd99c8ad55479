"""Every exception scoopexec raises, rooted at concurrent.futures' own where one fits."""

from __future__ import annotations

import pickle
from concurrent.futures import BrokenExecutor
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "AuthenticationError",
    "BrokenScoopExecutor",
    "BrokerLostError",
    "DeserializationError",
    "InitializerError",
    "JournalError",
    "LaunchError",
    "MainGuardError",
    "MessageTooLargeError",
    "ProtocolError",
    "RemoteError",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerLostError",
    "WorkerMemoryError",
    "remote_traceback",
]


class BrokenScoopExecutor(BrokenExecutor):
    """The pool can no longer run this client's tasks (see the message for why)."""


class InitializerError(BrokenScoopExecutor):
    """The initializer, or the import of the client's main module, failed on a worker."""


class MainGuardError(RuntimeError):
    """Work was started while a worker imported the client's main script (no ``__main__`` guard).

    Raised on the worker; the client sees an InitializerError with its message.
    """


class BrokerLostError(BrokenScoopExecutor):
    """The connection to the broker was lost; pending futures cannot complete."""


class AuthenticationError(BrokerLostError):
    """The broker and this client could not authenticate each other (CURVE keys)."""


class LaunchError(BrokenScoopExecutor):
    """Workers could not be started on a host; names the host and gives ssh's (or srun's) words.

    ``host`` is the host (or hosts), ``reason`` what went wrong, ``detail``
    the launcher's own messages.
    """

    def __init__(self, host: str, reason: str, detail: str = "", hint: str = "") -> None:
        text = f"could not start workers on {host}: {reason}"
        if detail:
            text += "\n" + "\n".join("    " + line for line in detail.splitlines())
        if hint:
            text += f"\n({hint})"
        super().__init__(text)
        self.host = host
        self.reason = reason
        self.detail = detail

    @classmethod
    def several(cls, errors: list[LaunchError]) -> LaunchError:
        """One error for several hosts that failed, quoting each one's."""
        hosts = ", ".join(e.host for e in errors)
        exc = cls(hosts, f"{len(errors)} hosts failed")
        exc.args = (f"could not start workers on {len(errors)} hosts:\n" + "\n".join(str(e) for e in errors),)
        return exc


class WorkerLostError(BrokenProcessPool):
    """A task's worker died or stopped answering more times than ``max_retries`` allows.

    A ``BrokenProcessPool`` (and so a ``BrokenExecutor``), the type
    ProcessPoolExecutor raises when a worker dies, so code written for it
    still catches it; but here only this future fails and the pool goes on.
    """


class TaskTimeoutError(TimeoutError):
    """A task ran longer than its ``task_timeout`` and was stopped.

    The task got KeyboardInterrupt first; one that did not stop within a short
    grace had its worker process killed (and replaced).  A subclass of the
    builtin ``TimeoutError``.  It is not retried.
    """


class WorkerMemoryError(MemoryError):
    """A task took its worker process past ``worker_memory_limit``: the process was ended
    (and replaced) and this task, the one running then, fails.  It is not retried."""


class SerializationError(pickle.PicklingError):
    """A function, its arguments, its result or its exception could not be (un)pickled.

    The original error is chained as ``__cause__``.  A subclass of
    ``pickle.PicklingError``, so code written for ProcessPoolExecutor that
    catches that still works.
    """


class DeserializationError(SerializationError, BrokenProcessPool):
    """A task could not be unpickled on its worker, or its result in the client.

    ProcessPoolExecutor breaks its whole pool on these faults and raises
    ``BrokenProcessPool``; here only this future fails, with an error that is
    both a ``SerializationError`` and a ``BrokenProcessPool``.
    """


class MessageTooLargeError(SerializationError):
    """A task or result is larger than the pool's ``max_message_size``."""


class RemoteError(Exception):
    """A task raised an exception that could not be sent back as itself.

    ``type_name`` is the qualified name of the original exception's type,
    ``traceback`` the remote traceback as text and ``note`` why it could not
    arrive as itself.
    """

    def __init__(self, type_name: str, message: str = "", traceback: str = "", note: str = "") -> None:
        text = f"{type_name}: {message}" if message else type_name
        super().__init__(f"{text} ({note})" if note else text)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.note = note


class ProtocolError(Exception):
    """A message did not follow the scoopexec wire format."""


class JournalError(Exception):
    """A map's journal (``journal=``) cannot be used: unreadable, damaged, in use, or a result
    that cannot be recorded.  The message names the file (and the record and byte offset)."""


def _remote_traceback_type() -> type[Exception]:
    # Re-use the standard library's class so code (and tests) written for
    # ProcessPoolExecutor recognise the cause; it only carries the text.
    try:
        from concurrent.futures.process import _RemoteTraceback
    except ImportError:  # pragma: no cover - every supported CPython has it

        class _RemoteTraceback(Exception):  # type: ignore[no-redef]
            def __init__(self, tb: str) -> None:
                self.tb = tb

            def __str__(self) -> str:
                return self.tb

    return _RemoteTraceback


def remote_traceback(text: str, where: str = "") -> Exception:
    """An exception whose str() is a remote traceback, for use as ``__cause__``."""
    head = f"\n\"\"\"\n{where}\n" if where else '\n"""\n'
    return _remote_traceback_type()(f"{head}{text}\"\"\"")
