"""Every exception scoopexec raises, rooted at concurrent.futures' own where one fits."""

from __future__ import annotations

import builtins
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
    "LargeFunctionWarning",
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
    catches that still works.  When a function or the arguments of a task cannot be
    pickled, the error is an instance of the original error's type too (see
    :func:`serialization_error`): ``except TypeError`` around ``pool.map(f, items)``
    catches ``cannot pickle '_thread.lock' object`` here as it does with
    ProcessPoolExecutor and multiprocessing.Pool, which raise the original error.
    """


def serialization_error(message: str, original: BaseException) -> SerializationError:
    """A SerializationError saying ``message`` that is also an instance of ``original``'s type.

    Its class is a subclass of both, named SerializationError (:func:`_also`: its
    ``type(err) is SerializationError`` is False, and the class itself does not pickle),
    with BaseException's ``__init__``, str() and repr(); it pickles as such (:func:`_rebuild`).
    Only for the built-in exception types that pickling raises (TypeError, AttributeError,
    ValueError, RuntimeError, RecursionError, ...): a plain SerializationError for the others
    (a class of a library or of the program, whose ``__init__`` or ``__init_subclass__`` would
    run on our message), for a PicklingError, and for the types that code tells apart by
    their type (StopIteration ends a loop, TimeoutError looks like a wait that timed out; a
    UnicodeError has attributes a message does not give).
    """
    # One of ours, said again (scoop_map's): the type it was made for.
    return _rebuild(message, getattr(type(original), "_original", type(original)))


def builtin_serialization_error(message: str, original: object) -> SerializationError:
    """serialization_error() for the built-in exception type named ``original`` (what a worker
    says of a result it could not pickle); a plain SerializationError for any other value."""
    kind = getattr(builtins, original, None) if isinstance(original, str) else None
    if not isinstance(kind, type) or not issubclass(kind, BaseException):
        return SerializationError(message)
    return _rebuild(message, kind)


_mixed: dict[type[BaseException], type[SerializationError]] = {}  # original type -> its mixed class
# Built-in types that code tells apart by type, not mixed in: a loop would end at a StopIteration,
# `except TimeoutError` around result(timeout=) would take the error for a wait that timed out, and
# a UnicodeError's handler would look for attributes that a message alone does not give; a MemoryError
# says the process ran out, which this one did not.
_NOT_MIXED: tuple[type[BaseException], ...] = (
    StopIteration, StopAsyncIteration, TimeoutError, UnicodeError, MemoryError
)
_MIXED_MAX = 64  # (bounded: a program that makes new exception types on the fly)


def _also(kind: type[BaseException]) -> type[SerializationError]:
    """The subclass of SerializationError and ``kind`` (made once per type), or SerializationError."""
    made = _mixed.get(kind)
    if made is not None:
        return made
    made = SerializationError
    if (
        kind.__module__ == "builtins"
        and issubclass(kind, Exception)
        and kind is not Exception
        and not issubclass(kind, (pickle.PicklingError, *_NOT_MIXED))
    ):
        try:
            made = type(
                "SerializationError",
                (SerializationError, kind),
                {
                    "__module__": __name__,
                    "__qualname__": "SerializationError",
                    "__doc__": f"A SerializationError that is also a {kind.__qualname__}.",
                    "__init__": BaseException.__init__,  # (OSError's would parse the message)
                    "__str__": BaseException.__str__,  # (KeyError's would quote it)
                    "__repr__": BaseException.__repr__,
                    "__reduce__": _reduce_mixed,
                    "_original": kind,  # the type it was made for
                },
            )
        except TypeError:  # not a possible base (an instance lay-out that conflicts)
            made = SerializationError
    if len(_mixed) >= _MIXED_MAX:
        _mixed.clear()
    _mixed[kind] = made
    return made


def _reduce_mixed(self: SerializationError) -> tuple[object, ...]:
    """Pickle a mixed SerializationError as its message and the original type (by reference)."""
    return (_rebuild, (str(self), type(self)._original), self.__dict__ or None)  # type: ignore[attr-defined]


def _rebuild(message: str, original: type[BaseException]) -> SerializationError:
    """serialization_error() for an ``original`` type (also what a mixed one unpickles with)."""
    try:
        return _also(original)(message)
    except Exception:  # a constructor that wants more than a message
        return SerializationError(message)


class LargeFunctionWarning(UserWarning):
    """A task's function is pickled with more than a megabyte of what it refers to, at every
    submit (once per map): a function of the script (or a lambda, a closure) travels by value,
    with the script's globals it reads; when mapped or submitted again, each worker receives
    those bytes once while they stay the same.  Send large data once (``ex.share(name, value)``, read with
    ``scoopexec.shared(name)``) or pass a file path instead."""


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
