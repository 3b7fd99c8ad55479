"""ScoopExecutor: the concurrent.futures contract, and nothing else.

What a call does is elsewhere: the conversation with a broker is a session
(session.py; embedded.py starts a private broker and local workers, remote.py joins
a standalone one), hosts are placed and workers started by deploy/, the process's
pools are tracked in pools.py, and map() comes from mapping.py.  Here: the
arguments, their checks, and the Executor methods -- submit, map, shutdown (safe to
call twice), the ``with`` block -- plus the pool's own extras (share, status,
add_workers, remove_workers, write_key_file, abort).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .. import mainmodule, pools, scoop_compat
from ..deploy.contract import LaunchOptions, check_env
from ..deploy.groups import Launchers
from ..deploy.hosts import Host, local_cpu_count, parse_hosts, plan_hosts
from ..deploy.slurm_jobs import SlurmJobs
from ..errors import BrokenScoopExecutor, InitializerError, SerializationError
from ..mapping import MapMixin
from ..status import PoolStatus
from ..trace import TraceRecorder
from ..wire import serialize
from ..wire.security import Credentials, read_key_file, write_key_file
from ..wire.validate import DEFAULT_MAX_MESSAGE_SIZE
from ..worker import setup as worker_setup
from ..worker.limits import Limited, TimeLimit, check_timeout, recycle_flags
from ..worker.pool import pool_handle
from ..worker.worker import current_worker
from . import interrupts
from .control import Control
from .embedded import EmbeddedSession
from .future import ScoopFuture, describe_running
from .remote import RemoteSession
from .session import Session

__all__ = ["ScoopExecutor"]

log = logging.getLogger("scoopexec")


def _check_mp_context(ctx: Any) -> tuple[bool, bool]:
    """Whether local workers may be forks of this process (deploy/clientfork.py), and whether they
    must be: no mp_context (forks while this process runs one thread), a 'fork' context (forks,
    as multiprocessing's, threads or not), or a 'spawn' or 'forkserver' one (fresh interpreters)."""
    if ctx is None:
        return True, False
    get = getattr(ctx, "get_start_method", None)
    if not callable(get):
        raise TypeError(
            f"mp_context must be a multiprocessing context, e.g. multiprocessing.get_context('spawn'), "
            f"not {type(ctx).__name__}"
        )
    method = get()
    if method == "fork":
        return True, True
    if method not in ("spawn", "forkserver"):
        raise ValueError(
            f"mp_context with the {method!r} start method cannot be honoured: pass "
            "multiprocessing.get_context('spawn') for workers that inherit nothing, 'fork' for forks "
            "of this process, or leave mp_context out"
        )
    return False, False


def _refusal(link: Session, shut_down: bool) -> Exception:
    """Why submit() takes no more work: the pool is broken, shut down, or the interpreter exits."""
    if link.broken_msg:
        exc_type = InitializerError if link.broken_kind in ("initializer", "main") else BrokenScoopExecutor
        return exc_type(link.broken_msg)
    if shut_down:
        return RuntimeError("cannot schedule new futures after shutdown")
    return RuntimeError("cannot schedule new futures after interpreter shutdown")


def _refuse_during_worker_bootstrap() -> None:
    w = current_worker()
    if w is not None and w.importing_main:
        raise mainmodule.guard_error("starts a pool (a ScoopExecutor)")


def _setup(
    initializer: Callable[..., Any] | None, initargs: tuple[Any, ...], local: bool, options: LaunchOptions
) -> tuple[list[bytes], LaunchOptions]:
    """A new pool's set-up blob, and its launch options.  ``local``: every worker is local, so what
    only a process's start can pass (a multiprocessing Queue) may be handed over to them,
    descriptors included (worker/handover.py)."""
    setup = worker_setup.encode(initializer, initargs, local=local)
    handed = worker_setup.handed_over(setup)
    return setup, options if handed is None else dataclasses.replace(options, pass_fds=handed[2])


def _embedded(n: int, setup: list[bytes], options: LaunchOptions, **kw: Any) -> EmbeddedSession:
    try:
        return EmbeddedSession(n, setup, options, **kw)
    except BaseException:
        worker_setup.release(setup)  # what it would have handed over
        raise


def _start_session(
    broker: str | None, n_local: int, n_srun: int, remote_hosts: list[Host], jobs: SlurmJobs | None,
    setup: list[bytes], options: LaunchOptions, *, given: int | None, default_local: bool,
    keys: Credentials | None, connect_timeout: float, **kw: Any,
) -> tuple[Session, int]:  # fmt: skip
    """A new pool's session, its workers started, and its size: an embedded broker (``broker``
    None) or a client of ``broker``.  ``given``: max_workers as given; ``default_local``: no hosts
    named (then ``given`` local workers join a standalone broker).  ``kw``: the embedded
    session's options (bind, max_retries, max_message_size, trace)."""
    session: Session
    if broker is None:
        session = _embedded(n_local, setup, options, **kw)
    else:
        session = RemoteSession(
            broker, setup, heartbeat=options.heartbeat, heartbeat_timeout=options.heartbeat_timeout,
            connect_timeout=connect_timeout, keys=keys, max_retries=kw["max_retries"],
        )  # fmt: skip
        session.workers = Launchers(None)
        session.launch_options = options
        if default_local:
            n_local = given or 0
    size = n_local + n_srun + sum(h.slots or 0 for h in remote_hosts)
    try:
        if broker is not None and n_local:
            session.start_local(n_local)
        if remote_hosts or n_srun or jobs is not None:
            with interrupts.allowed():  # (SSH and SLURM starts wait on other hosts)
                session.add_hosts(remote_hosts, n_srun)
                size += jobs.start(session) if jobs is not None else 0
    except BaseException:
        with interrupts.unheld():  # (a wait of its own: Ctrl-C may cut it short, as before)
            session.close(wait=True)
        raise
    return session, size


class ScoopExecutor(Control, MapMixin, cf.Executor):
    """An Executor that runs calls on a pool of worker processes behind a ZeroMQ broker.

    With no ``broker`` argument it starts a broker inside this process and
    ``max_workers`` worker processes on this machine (default: one per
    available CPU), and stops them all at ``shutdown()``, at the end of a
    ``with`` block, or at interpreter exit.  With ``broker="tcp://host:port"``
    it connects to a standalone broker (``python -m scoopexec broker``).

    Tasks may submit tasks themselves (through this executor, captured in the
    task, or ``scoopexec.submit``) and wait on them: waiting parks only that
    task, so nested maps never deadlock.

    The first four arguments are ProcessPoolExecutor's, in its order, so that
    ``ProcessPoolExecutor(...)`` can be replaced by ``ScoopExecutor(...)``.

    Arguments:
        max_workers: local worker processes to start (must be > 0).
        mp_context: as ProcessPoolExecutor's: a 'spawn' or 'forkserver' context makes workers that
            inherit nothing (by default they descend from a fork of this process when it runs
            one thread: deploy/clientfork.py); a 'fork' context makes them forks of this process
            even while it runs other threads, as multiprocessing's does (DeprecationWarning).
        initializer, initargs: called as ``initializer(*initargs)`` in every
            worker before its first task of this executor; if it raises, the
            executor is broken (``InitializerError``).  ``initargs`` may hold
            multiprocessing objects (a Queue, Lock, Value) when every worker is
            local (worker/handover.py).
        broker: endpoint of a standalone broker to use instead of an embedded one.
        bind: endpoint for the embedded broker (default: a private ipc socket).
        heartbeat, heartbeat_timeout: seconds between liveness checks, and of
            silence after which a peer counts as lost.
        max_retries: times a task is sent again after its worker was lost.
        max_message_size: bytes in one frame of a message (default 1 GiB); larger are refused (-1: no limit).
        python, env: interpreter and extra environment variables for workers
            (local and remote; default: this interpreter, no extra variables).
        connect_timeout: seconds to wait for a standalone broker to answer,
            and for ssh to connect to a host.
        hosts: where to run workers: ``["node1", "node2:8", "alice@node3:4"]``,
            ``{"node1": 8}``, ``"node[01-04]:8"``, or ``"auto"`` (the SLURM,
            PBS or SGE allocation this runs in; local workers outside one).
            Other hosts are reached with the system ``ssh`` (inside SLURM,
            with ``srun``); a host without a count runs one worker per CPU;
            ``max_workers`` caps the total, dealt to the hosts in turn; or
            ``SlurmJobs(...)``: SLURM jobs submitted as work comes (slurm_jobs.py).
        hostfile: a file of ``hostname [workers]`` lines, instead of hosts.
        cwd: working directory of remote workers (default: the current one).
        ssh: the ssh command and options to use, e.g. ``["ssh", "-F", "cfg"]``.
        key: the key file of a standalone broker (``python -m scoopexec broker --key-file FILE``
            writes one; ``python -m scoopexec keygen`` makes one for --authorized-keys); not
            needed for a broker this user runs on this machine (docs/security.md).
        launch_timeout: seconds to wait for launched workers to connect.
        trace: a file name: record every task (submit, start, end, worker,
            host, parent task, bytes in and out, retries) and write them there
            when the pool stops: a name ending in ``.json`` gets a Chrome
            trace-event timeline (open it in https://ui.perfetto.dev), any other
            a compact binary file, cheaper to write, which ``python -m scoopexec
            trace export FILE OUT.json`` turns into that timeline; summarise
            either with ``python -m scoopexec report FILE``.  Embedded broker only (start
            a standalone broker with ``--trace FILE`` instead).
        progress: the default of ``map(..., progress=)``: True draws a
            progress bar on stderr for every map.
        task_timeout: seconds a task may run: then it gets KeyboardInterrupt and its
            future fails with TaskTimeoutError (not retried); one that does not stop
            within a second has its worker process ended and replaced.
        max_tasks_per_child, worker_memory_limit, worker_max_lifetime: when a worker process
            is replaced by a fresh one: after N tasks (ProcessPoolExecutor's meaning); once a
            task left it past a memory limit (bytes, or "2GiB"; a task that takes it past the
            limit while running fails with WorkerMemoryError); idle after about S seconds.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] = (),
        *,
        broker: str | None = None,
        bind: str | None = None,
        heartbeat: float = 1.0,
        heartbeat_timeout: float = 5.0,
        max_retries: int = 3,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
        hosts: str | Sequence[str] | Mapping[str, int] | SlurmJobs | None = None,
        hostfile: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ssh: Sequence[str] | None = None,
        key: str | os.PathLike[str] | Credentials | None = None,
        launch_timeout: float = 60.0,
        trace: str | os.PathLike[str] | None = None,
        progress: bool = False,
        task_timeout: float | None = None,
        max_tasks_per_child: int | None = None,
        worker_memory_limit: int | str | None = None,
        worker_max_lifetime: float | None = None,
    ) -> None:
        self._task_timeout = check_timeout(task_timeout)
        if max_workers is not None:
            if not isinstance(max_workers, int) or isinstance(max_workers, bool):
                raise TypeError("max_workers must be an integer or None")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        fork_client, force_fork = _check_mp_context(mp_context)
        if force_fork and broker is not None:
            raise ValueError(
                "mp_context with the 'fork' start method cannot be honoured with broker=: a standalone "
                "broker's local workers start fresh; leave mp_context out, or pass get_context('spawn')"
            )
        if heartbeat <= 0 or heartbeat_timeout <= heartbeat:
            raise ValueError(
                f"need 0 < heartbeat < heartbeat_timeout, got heartbeat={heartbeat!r} and "
                f"heartbeat_timeout={heartbeat_timeout!r}"
            )
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError("max_retries must be an integer >= 0")
        if pools.shutting_down():
            raise RuntimeError("cannot start a scoopexec pool after interpreter shutdown began")
        _refuse_during_worker_bootstrap()
        env = check_env(env)
        jobs = SlurmJobs.given(hosts, broker, max_workers)  # workers in batch jobs, submitted as work comes
        n_local, remote_hosts, n_srun = (
            plan_hosts(max_workers, hosts, hostfile) if not isinstance(hosts, SlurmJobs) else (0, [], 0)
        )
        if scoop_compat.active():  # under python -m scoopexec: SCOOP's scoop.SIZE, for the workers
            size = n_local + n_srun + sum(h.slots or 0 for h in remote_hosts)
            env = {**scoop_compat.worker_env(size), **env}
        keys = key if isinstance(key, Credentials) or key is None else read_key_file(key)
        if isinstance(ssh, str) or (ssh is not None and not all(isinstance(a, str) for a in ssh)):
            raise TypeError("ssh= is a list of strings, e.g. ['ssh', '-F', 'ssh_config']")
        launch_options = LaunchOptions(
            python=python or sys.executable,
            env=env,
            cwd=os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd(),
            keep_cwd=cwd is not None,
            ssh=tuple(ssh) if ssh is not None else ("ssh",),
            heartbeat=heartbeat,
            heartbeat_timeout=heartbeat_timeout,
            connect_timeout=connect_timeout,
            launch_timeout=launch_timeout,
            recycle=recycle_flags(max_tasks_per_child, worker_memory_limit, worker_max_lifetime),
            fork_client=fork_client,
            force_fork=force_fork,
        )
        recorder: TraceRecorder | None = None
        if trace is not None:
            if broker is not None:
                raise ValueError(
                    "trace= records in the embedded broker; with broker=..., start the standalone "
                    "broker with `python -m scoopexec broker --bind ADDR --trace FILE` instead"
                )
            recorder = TraceRecorder(trace)
        mainmodule.alias_in_client()
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._shared: dict[str, Any] = {}
        self._max_message_size = max_message_size
        self._progress = progress
        if broker is None and key is not None:
            raise ValueError("key= is for a standalone broker (broker=...)")
        local = broker is None and bind is None and jobs is None  # and below: every worker on this host
        local = local and not n_srun and all(h.local for h in remote_hosts)
        setup, launch_options = _setup(initializer, tuple(initargs), local, launch_options)
        if broker is not None and bind is not None:
            raise ValueError("bind= is for the embedded broker; it cannot be used with broker=")
        if broker is None and recorder is not None:
            recorder.meta.update(argv=list(sys.argv))
        # From here a Ctrl-C is raised only where what the start made is written down: never
        # between forking a worker and noting it (interrupts.py)
        held = interrupts.HeldInterrupt()
        try:
            held.hold()
            self._session, self._max_workers = _start_session(
                broker, n_local, n_srun, remote_hosts, jobs, setup, launch_options,
                bind=bind, max_retries=max_retries, max_message_size=max_message_size, trace=recorder,
                keys=keys, connect_timeout=connect_timeout, given=max_workers,
                default_local=hosts is None and hostfile is None,
            )  # fmt: skip
            log.info(
                "pool %s: %s at %s, %d worker(s) started%s",
                self._session.pool_id, "embedded broker" if broker is None else "client of the broker",
                self._session.endpoint, self._max_workers,
                f", recording a timeline to {recorder.path}" if recorder is not None else "",
            )  # fmt: skip
            # The script's classes its workers inherited, which then travel by reference (a pool whose
            # workers are forks of this process: wire/mainclasses.py); None: by value.
            self._names = getattr(self._session, "main_classes", None) or None
            self._pool_id = self._session.pool_id
            pools.register(self._pool_id, self)
            session = self._session
            self._finalizer = weakref.finalize(self, session.close, False)
            held.close()  # (an interrupt held back comes now)
        except BaseException:
            try:
                if getattr(self, "_session", None) is not None:
                    with interrupts.unheld():
                        self._session.abort("the pool's start did not finish")
            finally:
                held.close()  # (what was held comes now: a KeyboardInterrupt in place of the error)
            raise

    # --------------------------------------------------------------- public
    @property
    def closed(self) -> bool:
        """True once this pool takes no more work: after shutdown() or abort(), or once broken."""
        return self._shutdown or bool(self._session.broken_msg)

    @property
    def broken(self) -> str | None:
        """Why this pool can run no more tasks (its initializer failed, its broker was lost ...), or None."""
        return self._session.broken_msg or None

    @property
    def max_workers(self) -> int:
        """The workers this pool was started with plus those added since (its size once all joined)."""
        return self._max_workers

    @property
    def pool_id(self) -> str:
        """Identifies the pool (its broker); executor handles in tasks refer to it."""
        return self._pool_id

    @property
    def endpoint(self) -> str:
        """The broker's endpoint, where more workers may connect."""
        return getattr(self._session, "endpoint", "")

    def add_workers(
        self,
        n: int | None = None,
        *,
        hosts: str | Sequence[str] | Mapping[str, int] | None = None,
        hostfile: str | os.PathLike[str] | None = None,
    ) -> None:
        """Grow the running pool: ``n`` more local workers, or workers on ``hosts``.

        Returns once the new workers are connected; the broker gives them work
        at once.  Raises LaunchError (nothing added) if a host cannot be used.
        """
        if (n is None) == (hosts is None and hostfile is None):
            raise ValueError("give either a number of local workers or hosts= / hostfile=")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ValueError("the number of workers to add must be an integer >= 1")
        with self._shutdown_lock:
            if self._shutdown or self._session.broken_msg:
                raise RuntimeError("cannot add workers to a pool that was shut down or is broken")
        if n is not None:
            self._session.start_local(n)
            self._max_workers += n
            return
        _, placed, n_srun = plan_hosts(None, hosts, hostfile)
        if not placed and not n_srun:
            placed = [Host("localhost", local_cpu_count())]  # "auto" outside an allocation
        self._session.add_hosts(placed, n_srun)
        self._max_workers += n_srun + sum(h.slots or 0 for h in placed)

    def remove_workers(self, hosts: str | Sequence[str]) -> int:
        """Stop the workers this executor started on ``hosts`` (names as given); return how many
        hosts were stopped.  Their running tasks go to other workers; with none left, tasks wait
        for workers to be added.
        """
        names = {h.name for h in parse_hosts(hosts)}
        launchers = self._session.workers
        if launchers is None:
            return 0
        stopped = 0
        for g in list(launchers.groups.values()):
            if g.host in names and not g.retired:
                g.retired = True
                if isinstance(self._session, EmbeddedSession):
                    self._session.revoke(g.keys.public)
                g.stop()
                launchers.discard(g)
                stopped += 1
        return stopped

    def write_key_file(self, path: str | os.PathLike[str]) -> str:
        """Write a key file (0600) that lets a worker join this pool by hand.

        ``python -m scoopexec worker --connect ENDPOINT --key FILE`` on another
        host, with ENDPOINT this pool's ``bind`` address.  Each call makes a new
        key pair that the pool accepts.
        """
        link = self._session
        if not isinstance(link, EmbeddedSession):
            raise RuntimeError("a client of a standalone broker joins with that broker's key file")
        return write_key_file(path, link.join_keys())

    @property
    def trace_path(self) -> str | None:
        """Where the timeline is written when the pool stops (``trace=``), or None."""
        rec = getattr(self._session, "trace", None)
        return rec.path if rec is not None else None

    def status(self, timeout: float = 5.0) -> PoolStatus:
        """What the pool is doing now: its workers, its queue and its throughput.

        Returns a PoolStatus: per worker its host, pid, busy or idle, tasks
        assigned and done, and seconds since it was last heard from; the
        tasks queued and assigned to workers, tasks completed and completions
        per second.  ``print()`` it
        for a table.  The embedded broker computes it in its own thread; a
        standalone broker is asked over the connection.  Raises TimeoutError
        if no answer comes within ``timeout`` seconds, RuntimeError after
        shutdown.
        """
        return PoolStatus.from_dict(self._session.status(timeout))

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the local worker processes this executor started."""
        w = self._session.workers
        return w.pids if w is not None else []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; return a Future for its result."""
        try:  # (MessageTooLargeError is one: encode_named checks the size, in a look if it can)
            if self._task_timeout is not None and fn.__class__ is not Limited:  # (a map's: limited)
                frames = serialize.encode_call(TimeLimit(fn, self._task_timeout), args, kwargs, self._names)
                return self._submit_frames(frames, None, serialize.describe(fn))
            what, frames = serialize.encode_named(fn, args, kwargs, self._max_message_size, self._names)
        except SerializationError as exc:
            return self._submit_frames(None, exc)
        lock = self._shutdown_lock  # (as _submit_frames, inline: on every submit)
        lock.acquire()
        try:
            link = self._session
            if link.broken_msg or self._shutdown or pools.shutting_down():
                raise _refusal(link, self._shutdown)
            return link.submit(frames, what)
        finally:
            lock.release()

    def _submit_encoded(
        self,
        fn_frame: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        what: str = "",
        item: int = -1,
        chunk: bool = False,
    ) -> cf.Future[Any]:
        try:
            frames: list[Any] | None = serialize.encode_task(
                fn_frame, args, kwargs, item, chunk, what, self._names
            )
            error: Exception | None = None
        except SerializationError as exc:
            frames, error = None, exc
        return self._submit_frames(frames, error, what)

    def _submit_frames(
        self, frames: list[Any] | None, error: Exception | None, what: str = ""
    ) -> cf.Future[Any]:
        limit = self._max_message_size
        if frames is not None and limit > 0 and (len(frames) != 2 or len(frames[0]) + len(frames[1]) > limit):
            if big := serialize.oversized(frames, limit):  # (two frames: the function's, the arguments')
                frames, error = None, serialize.too_large(big, limit)
        lock = self._shutdown_lock
        lock.acquire()  # (not `with`: on every submit, where its look-ups cost as much as the lock)
        try:
            link = self._session
            if link.broken_msg or self._shutdown or pools.shutting_down():
                raise _refusal(link, self._shutdown)
            if frames is None:
                fut = ScoopFuture()
                fut.set_exception(error)  # type: ignore[arg-type]
                return fut
            return link.submit(frames, what)
        finally:
            lock.release()

    def share(self, name: str, value: Any) -> None:
        """Make ``value`` available to every task of this executor, on every worker.

        Workers that join later receive it too, and tasks submitted after this
        call are guaranteed to see it (``scoopexec.shared(name)`` in a task).
        """
        if not isinstance(name, str):
            raise TypeError("a shared value's name must be a string")
        try:
            frames = [name.encode(), *serialize.dumps(value)]
        except Exception as exc:
            raise SerializationError(f"cannot share {name!r}: {type(exc).__name__}: {exc}") from exc
        with self._shutdown_lock:
            if self._shutdown or self._session.broken_msg:
                raise RuntimeError("cannot share values after shutdown")
            self._shared[name] = value
            self._session.share(frames)

    def shared(self, name: str) -> Any:
        """The value shared under ``name`` by this executor (KeyError if none)."""
        return self._shared[name]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; the pool stops once pending futures are done.

        With ``cancel_futures=True`` futures not yet handed to a worker are
        cancelled first.  With ``wait=True`` this returns when every worker
        process and thread of the pool is gone (Ctrl-C interrupts the wait).
        Calling it again, or from a done-callback, is harmless.  Raises
        BrokenScoopExecutor instead of waiting for ever if the pool's I/O
        thread is stuck (in a done-callback that blocks, say): the message
        says where, and the pool's workers are stopped.
        """
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            # Let the broker take in what was submitted (tasks about to go to idle workers
            # count as running), then cancel everything else; 5 s at most for a busy machine.
            self._session.sync(5.0)
            self._session.cancel_queued()
        why = self._session.close(wait=wait)
        if why:
            raise BrokenScoopExecutor(why)

    def __enter__(self) -> ScoopExecutor:
        pools.enter(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Without an exception: shutdown(wait=True), as any Executor.  With one: cancel
        the tasks that have not started, wait only for the running ones, and say which
        (Ctrl-C, or a KeyboardInterrupt as the exception, abandons them at once).
        """
        pools.leave(self)
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.abort("interrupted (KeyboardInterrupt)")
            return
        try:
            if exc_type is None:
                self.shutdown(wait=True)
            else:
                self._leave_after(exc_type)
        except KeyboardInterrupt:
            self.abort("interrupted (KeyboardInterrupt) while waiting for pending tasks")
            raise

    # Leaving `with` because of an exception, with tasks running: say so after this many
    # seconds, and again every REPORT_EVERY seconds.
    REPORT_AFTER = 1.0
    REPORT_EVERY = 10.0

    def _leave_after(self, exc_type: type[BaseException]) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        link = self._session
        cancelled = link.cancel_queued()
        link.drop_unstarted()
        link.close(wait=False)
        due = [self.REPORT_AFTER]

        def report(waited: float) -> None:
            if waited < due[0]:
                return
            due[0] = waited + self.REPORT_EVERY
            running = link.running()
            if not running:
                return
            shown = describe_running(running)
            log.warning(
                "leaving the `with ScoopExecutor()` block because of %s: cancelled %d task(s) that "
                "had not started; waiting for %d running task(s) to finish: %s. Ctrl-C stops "
                "waiting and abandons them",
                exc_type.__name__, cancelled + link.dropped, len(running), shown,
            )  # fmt: skip

        why = link.join(report=report)
        if why:
            log.error("%s", why)  # the exception leaving `with` is the user's: do not replace it

    def abort(self, reason: str = "aborted") -> None:
        """Stop at once: cancel pending futures, fail running ones, stop every worker.

        What Ctrl-C in a ``with ScoopExecutor()`` block does; ``shutdown()``
        afterwards is harmless.  Waits at most 10 s for the pool's thread, and
        says so (a log error) if it did not stop.
        """
        with self._shutdown_lock:
            self._shutdown = True
        why = self._session.abort(reason)
        if why:
            log.error("%s", why)

    def __reduce__(self) -> tuple[Any, ...]:
        # Inside a task, an executor captured from the client is a handle to
        # the same pool: its submit() goes through the worker running the task.
        return (pool_handle, (self._pool_id,))

    def __repr__(self) -> str:
        state = "broken" if self._broken else "shut down" if self._shutdown else "running"
        return f"<ScoopExecutor pool={self._pool_id} workers={self._max_workers} {state}>"
