"""A worker's ways in and out: its channel to the broker, its outbox, and forwarded output.

* :class:`LinkChannel` (one end of a socketpair, for the local workers of an embedded
  broker) and zmqchannel.ZmqChannel (a DEALER, for workers anywhere; apart, so that a
  local worker never loads zmq) offer the same four calls: ``receive``, ``send``,
  ``readable``, ``close``.
* :class:`Outbox`: what the worker sends, batched per turn of its loop: output, log
  records, cancels, sub-task submissions, then results carrying the credit it asks for.
* :class:`ForwardStream` and :class:`ForwardLogs`: a task's ``print()`` and log records
  go to the client whose task is running, a complete line at a time.

Appending to the outbox needs no lock (deques); flushing it does (the worker's lock,
which the hub holds except while a task runs: worker.py).
"""

from __future__ import annotations

import collections
import io
import json
import logging
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..deploy.contract import EXIT_LOST
from ..errors import ProtocolError
from ..wire import protocol as P
from ..wire.framing import Link
from ..wire.validate import frame_limit
from .lifeline import client_gone, die

if TYPE_CHECKING:
    import zmq

    from ..wire.security import Credentials
    from .zmqchannel import ZmqChannel

__all__ = ["NOT_FORWARDED", "ForwardLogs", "ForwardStream", "LinkChannel", "Outbox", "open_channel"]

NOT_FORWARDED = "scoopexec_not_forwarded"  # a log record with it set is for this worker's own handlers


def open_channel(
    link: socket.socket | None,
    context: zmq.Context[Any] | None,
    ident: bytes,
    connect: str,
    *,
    max_message_size: int,
    heartbeat: float,
    heartbeat_timeout: float,
    curve: Credentials | None,
) -> LinkChannel | ZmqChannel:
    """A worker's channel: its end of ``link``, the socketpair from the embedded broker that
    started it (wire/framing.py), else a DEALER to ``connect`` (in ``context``, or its own)."""
    if link is not None:
        return LinkChannel(Link(link, blocking_send=True, max_frame=frame_limit(max_message_size)))
    # lazy: zmq (a sixth of a worker's start-up) only for a broker reached over ZeroMQ; the
    # local workers of an embedded pool, forked from its template, never load it
    from .zmqchannel import ZmqChannel

    return ZmqChannel(
        context, ident, connect, max_message_size=max_message_size,
        heartbeat=heartbeat, heartbeat_timeout=heartbeat_timeout, curve=curve,
    )  # fmt: skip


class LinkChannel:
    """The worker's end of a local link (wire/framing.py); the broker closing it means it is gone."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.fd = link.fd

    def readable(self) -> bool:
        return False  # receive() takes everything; the socket's fd is level-triggered

    def receive(self, limit: int) -> list[list[Any]]:
        try:
            msgs = self.link.receive(limit)
        except ProtocolError as exc:
            die(EXIT_LOST, f"the local link to the broker is corrupt: {exc}")
        if self.link.eof and not msgs:
            client_gone(EXIT_LOST)  # the broker is gone: nothing can be delivered
        return msgs

    def send(self, frames: list[Any]) -> None:
        try:
            self.link.send(frames)
        except OSError:
            # The broker closed its end; what it sent before (a STOP, say) is still
            # to be read: receive() ends this worker, one way or the other.
            pass

    def settle(self) -> float:
        """Before waiting: hand back the broker's segments this worker no longer uses
        (wire/segments.py); seconds until one of ours would be let go (-1: none)."""
        try:
            return self.link.settle()
        except OSError:
            return -1.0  # the broker is gone: receive() says so

    def close(self, drain: float = 2.0) -> None:
        self.link.close(drain=max(drain, 2.0))


def _drain(dq: collections.deque[Any]) -> list[Any]:
    out = []
    pop = dq.popleft
    while dq:
        out.append(pop())
    return out


class Outbox:
    """What a worker sends, batched: see the module docstring.  flush() needs the worker's lock."""

    def __init__(self, send: Callable[[list[Any]], None]) -> None:
        self._send = send
        self.results: collections.deque[tuple[tuple[Any, ...], list[Any]]] = collections.deque()
        self.submits: collections.deque[tuple[tuple[int, int, int], list[Any]]] = collections.deque()
        self.outputs: collections.deque[tuple[tuple[int, int], bytes]] = collections.deque()
        self.logs: collections.deque[tuple[tuple[int], bytes]] = collections.deque()
        self.cancels: collections.deque[int] = collections.deque()
        self.confirms: collections.deque[int] = collections.deque()  # cancels the broker answers
        self.last_flush = 0.0

    def output(self, entry: tuple[int, int], data: bytes, limit: int) -> None:
        """A chunk a task printed, cut in frames of at most ``limit`` bytes (max_message_size:
        a larger frame would cost the worker its connection, its tasks with it)."""
        if 0 < limit < len(data):
            # One extend of a list: the flusher thread takes all the pieces or none of them.
            self.outputs.extend([(entry, data[i : i + limit]) for i in range(0, len(data), limit)])
        else:
            self.outputs.append((entry, data))

    def log(self, entry: tuple[int], data: bytes, limit: int) -> None:
        """A log record (JSON); one larger than ``limit`` is replaced by a record saying so."""
        if 0 < limit < len(data):
            data = json.dumps({
                "name": "scoopexec.worker", "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": f"a log record of {len(data)} bytes was dropped: more than max_message_size={limit}",
            }).encode()  # fmt: skip
        self.logs.append((entry, data))

    def waiting(self) -> bool:
        """Something besides results waits to be sent (results go with the end of a task)."""
        return bool(self.outputs or self.logs or self.submits or self.cancels or self.confirms)

    def pending(self) -> bool:
        """Anything waits to be sent, results included."""
        return bool(
            self.results or self.outputs or self.logs or self.submits or self.cancels or self.confirms
        )

    def flush(self, credit: int) -> None:
        """Send what waits; the results (or a CREDIT message) ask the broker for ``credit`` more tasks."""
        send = self._send
        self.last_flush = time.monotonic()
        # The results first: a task appends its output, log records and sub-tasks, then its
        # result, without the lock (outside the hub), maybe while the flusher thread is here.
        # What was appended before a result taken now is taken below and sent before it;
        # taken last, a result could go out ahead of the output its task appended just before
        # it, and that output then reached no client (its task was over at the broker).
        res = _drain(self.results) if self.results else None
        # Taken before the submissions: a sub-task whose cancel() is asked here is among them.
        confirms = _drain(self.confirms) if self.confirms else None
        if self.outputs:
            items = _drain(self.outputs)
            send([P.pack(P.OUTPUT, [e for e, _ in items]), *[b for _, b in items]])
        if self.logs:
            items2 = _drain(self.logs)
            send([P.pack(P.LOG, [e for e, _ in items2]), *[b for _, b in items2]])
        if self.submits:
            subs = _drain(self.submits)
            frames: list[Any] = [P.pack(P.SUBMIT, [e for e, _ in subs])]
            for _, body in subs:
                frames.extend(body)
            send(frames)
        if self.cancels:  # after the submissions: one submitted and cancelled since the last flush
            send([P.pack(P.CANCEL, [(t,) for t in _drain(self.cancels)])])  # is known to the broker
        if confirms:
            send([P.pack(P.CANCEL, [(t,) for t in confirms], P.CONFIRM)])
        if res:
            frames = [P.pack(P.RESULT, [e for e, _ in res], arg=credit)]
            for _, body in res:
                frames.extend(body)
            send(frames)
        elif credit:
            send([P.header(P.CREDIT, 0, credit)])


class _Sink(Protocol):
    host: str
    name: str

    def output(self, stream: int, text: str) -> None: ...
    def log_record(self, data: bytes) -> None: ...


class ForwardStream(io.TextIOBase):
    """sys.stdout / sys.stderr of a worker: complete lines go to the task's client."""

    def __init__(self, worker: _Sink, stream: int, fd: int) -> None:
        super().__init__()
        self._worker = worker
        self._stream = stream
        self._fd = fd
        self.parts: list[str] = []  # the text of a line not yet ended (write() ends it)
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not s:
            return 0
        with self._lock:
            self.parts.append(s)
            if "\n" in s:
                text = "".join(self.parts)
                cut = text.rindex("\n") + 1
                self.parts = [text[cut:]] if cut < len(text) else []
                self._worker.output(self._stream, text[:cut])
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self.parts:
                text = "".join(self.parts)
                self.parts = []
                self._worker.output(self._stream, text)


class ForwardLogs(logging.Handler):
    """Send this worker's log records to the client whose task is running."""

    def __init__(self, worker: _Sink) -> None:
        super().__init__()
        self._worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, NOT_FORWARDED, False):
            return
        try:
            exc_text = record.exc_text
            if record.exc_info and not exc_text:
                exc_text = "".join(traceback.format_exception(*record.exc_info))
            data = {
                "name": record.name,
                "levelno": record.levelno,
                "levelname": record.levelname,
                "msg": record.getMessage(),
                "exc_text": exc_text,
                "pathname": record.pathname,
                "filename": record.filename,
                "module": record.module,
                "lineno": record.lineno,
                "funcName": record.funcName,
                "created": record.created,
                "process": record.process,
                "threadName": record.threadName,
                "host": self._worker.host,
                "worker": self._worker.name,
            }
            self._worker.log_record(json.dumps(data, default=str).encode())
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)
