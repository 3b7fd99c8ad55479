"""How a worker process ends when what it serves is gone: its client, its broker, its link.

* Started by a client (``--watch-stdin``), a worker holds a pipe from it as stdin:
  end of file means the client is gone and nobody wants the results any more.  A process
  the client forked keeps that pipe open after the client died, so a worker on a local link
  also watches the client that made the link (a pidfd).
* On a local link, end of file on the link means the broker is gone.
* On ZeroMQ, the socket monitor (zmqchannel.ZmqChannel.watch) sees the broker stay
  away for longer than the heartbeat timeout, refuse our keys, or never answer.

Each ends the process at once with the exit code of deploy/contract.py, saying why on
the real stderr (sys.stderr goes to the client), and -- one of the worker's own codes --
in an exit note on ``--exit-fd`` for whoever started it.  A client killed by SIGKILL cannot
remove its private ipc directory; the workers it started do it once it has died.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import struct
import sys
import threading
import time
from typing import NoReturn

from ..deploy import contract
from ..deploy.local import process_state

FLUSH_LIMIT = 2.0  # s a worker that exits gives multiprocessing's queues to flush what it put

__all__ = [
    "client_gone", "die", "end", "mark_stopped", "note_client", "say", "set_exit_fd", "watch_stdin",
    "welcomed",
]  # fmt: skip

# (the client's pid, its private ipc socket): set by a worker its client started (--watch-stdin)
_litter: tuple[int, str] | None = None
_stopped = False  # the broker told this worker to STOP (a normal end)
_exit_fd: int | None = None  # --exit-fd: the pipe for this worker's exit notes (deploy/contract.py)
_client = 0  # the pid of the process that made our link (note_client), 0: not known
_parent = 0  # our parent when we started watching stdin (the client, or the template that forked us)


def note_client(link: socket.socket | None) -> None:
    """Remember who made our local link (the client; its credentials stay with the socket): a
    client killed while we were still starting has re-parented us already, so our parent then
    is not it, and its ipc directory would be left behind."""
    global _client
    if link is None or not hasattr(socket, "SO_PEERCRED"):
        return
    try:
        creds = link.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
    except (OSError, struct.error):
        return
    if pid > 0 and pid != os.getpid():
        _client = pid


def set_exit_fd(fd: int) -> None:
    """Leave exit notes on ``fd`` (``--exit-fd``); programs that tasks start do not inherit it."""
    global _exit_fd
    os.set_inheritable(fd, False)
    _exit_fd = fd


def welcomed() -> None:
    """The broker welcomed this worker (the first time): tell whoever started it."""
    if _exit_fd is not None:
        contract.write_welcomed(_exit_fd)


def mark_stopped() -> None:
    """The broker told this worker to STOP: its client is alive and cleans up after itself."""
    global _stopped
    _stopped = True


def say(message: str) -> None:
    """Say something on the real stderr (sys.stderr goes to the client, through the broker)."""
    try:
        os.write(2, f"scoopexec worker (pid {os.getpid()}): {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def die(code: int, message: str) -> NoReturn:
    """Say why on the real stderr and exit at once."""
    say(message)
    end(code, message)


def end(code: int, message: str) -> NoReturn:
    """Exit at once with ``code``; one of the worker's own codes is announced first (contract.py)."""
    if _exit_fd is not None and code in contract.REASONS:
        contract.write_note(_exit_fd, code, message)
    flush_multiprocessing()
    os._exit(code)


def flush_multiprocessing(limit: float = FLUSH_LIMIT) -> None:
    """What this process put on multiprocessing queues (a Queue handed to the initializer, a
    QueueHandler's records) goes out before it exits: multiprocessing's exit finalizers, which
    os._exit and a fork's dropped atexit handlers skip (a queue's feeder thread, flushed and
    joined), for ``limit`` s at most (a full pipe nobody reads would block them for ever).
    Finalizers registered by another process (the client, before the fork) are skipped by
    multiprocessing itself.  A second thread on its way out (the hub after STOP, the stdin
    watcher at end of file) waits for the first one's flush instead of exiting under it."""
    if not _flush_started.acquire(blocking=False):
        _flushed.wait(limit)
        return
    try:
        util = sys.modules.get("multiprocessing.util")
        if util is None or not getattr(util, "_finalizer_registry", None):
            return

        def run() -> None:
            try:
                util._run_finalizers(0)  # (as its own exit function: close, then join)
                util._run_finalizers()
            except BaseException:
                pass

        t = threading.Thread(target=run, name="scoopexec-mp-flush", daemon=True)
        t.start()
        t.join(limit)
    finally:
        _flushed.set()


_flush_started = threading.Lock()
_flushed = threading.Event()


def flush_queue_feeders(timeout: float = FLUSH_LIMIT) -> bool:
    """Wait, at most ``timeout`` seconds, until every multiprocessing queue of this process has
    written what was put in it (its feeder thread waits for more, with nothing left); True if
    they all did.  The queues stay open.

    A ``Queue.put`` returns at once and a feeder thread pickles and writes the item later: a
    program that learns of something through another channel (our SETUP_DONE) and then reads the
    queue with ``get_nowait()`` would find it empty.
    """
    feeders = [t for t in threading.enumerate() if t.name == "QueueFeederThread" and t.is_alive()]
    if not feeders:
        return True
    wait_code = threading.Condition.wait.__code__
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        frames = sys._current_frames()
        busy = False
        for t in feeders:
            frame = frames.get(t.ident) if t.ident is not None else None
            if frame is None:  # ended
                continue
            if frame.f_code is not wait_code:  # pickling or writing
                busy = True
                break
            feed = frame.f_back
            while feed is not None and feed.f_code.co_name != "_feed":
                feed = feed.f_back
            if feed is None:  # a thread of that name that is no feeder
                continue
            if feed.f_locals.get("buffer"):  # put since
                busy = True
                break
        del frames
        if not busy:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def client_gone(code: int) -> NoReturn:
    """Our client closed our stdin or link: exit now, tidying up after it if it was killed.

    A client killed by SIGKILL cannot remove its private ipc directory; its
    worker can, once the client has died (its files, our stdin and link among
    them, are closed a moment before it becomes a zombie and we are re-parented).
    A worker told to STOP exits at once: its client is alive and cleans up.
    """
    if _litter is not None and not _stopped:
        parent, path = _litter
        deadline = time.monotonic() + 0.1
        while not _dead(parent) and time.monotonic() < deadline and not _stopped:
            time.sleep(0.002)
        if _dead(parent):
            _remove_private_socket(path)
    end(code, "its broker closed the connection")


def watch_stdin(connect_to: str) -> None:
    """Exit when stdin reaches its end (our parent, the client or ssh, holds its other end), or
    when the client that made our local link has exited while something else keeps stdin open."""
    global _litter, _parent
    fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _parent = os.getppid()
    litter = _private_socket(connect_to)
    _litter = (_client or os.getppid(), litter) if litter is not None else None
    client = _client_fd()
    threading.Thread(target=_watch_fd, args=(fd, client), name="scoopexec-stdin", daemon=True).start()


def _client_fd() -> int | None:
    """A pidfd of the client that made our local link, or None (no link, or no pidfds here).

    Only that client is watched: a worker started by hand, by ssh or srun has no link, and its
    parent need not be what holds its stdin (a launcher that exited, a container's pid 0).
    """
    if not _client or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(_client)
    except ProcessLookupError:
        client_gone(0)  # it died before we looked
    except OSError:
        return None


def _watch_fd(fd: int, client: int | None) -> None:
    # End of file on stdin comes only once every copy of its other end is closed: a process
    # the client forked (multiprocessing, a daemon) holds one after the client was killed.  A
    # pidfd is readable once its whole process has exited (not when only its main thread has).
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if client is not None:
        poller.register(client, select.POLLIN)
    try:
        while True:
            ready = [f for f, _ in poller.poll()]
            if client in ready or (fd in ready and not os.read(fd, 4096)):
                break
    except OSError:
        pass
    client_gone(0)


def _dead(client: int) -> bool:
    # Re-parented tells when the client is our parent; a worker forked from a template
    # (deploy/forkstart.py) has the template for parent, and only the client's state tells.
    return (client == _parent and os.getppid() != client) or process_state(client) in (None, b"Z", b"X")


def _private_socket(endpoint: str) -> str | None:
    """The ipc socket of an embedded broker (in its private scoopexec-* directory), if that is ours."""
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://") :]
    if not os.path.basename(os.path.dirname(path)).startswith("scoopexec-"):
        return None
    return path


def _remove_private_socket(path: str) -> None:
    """Our client died without cleaning up (SIGKILL): remove its ipc socket and private directory."""
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid():
            os.unlink(path)
    except OSError:
        pass  # (gone already: another worker's unlink, which may have ended before its rmdir)
    try:
        os.rmdir(os.path.dirname(path))  # only if empty: anything else there is not ours to judge
    except OSError:
        pass
