"""A pool that grows and shrinks with batch jobs: workers come and go as jobs start and end.

::

   ScoopExecutor(hosts=SlurmJobs(...))           (from a login node: no allocation)
     embedded broker  <--CURVE/TCP--  worker group of job 1  (python -m scoopexec worker -n N
        ^      | DRAIN                worker group of job 2   --key FILE --tag J<job id>)
        | sync |                             ^
     JobPool thread -- submit / cancel / poll --> JobProvider (slurm_jobs.SlurmProvider: sbatch,
                                                  scancel, squeue; PBS and SGE would add theirs)

Every ``tick`` seconds the JobPool asks the broker (broker/jobs.sync, in the broker's
loop) how many tasks are queued and what each job's workers hold, and every
``poll_interval`` seconds the scheduler which jobs are pending, running (and their time
left) or gone.  Then it

* submits jobs (as one array where the scheduler has them) while tasks wait that no
  idle or coming worker will take, up to ``max_jobs`` jobs that are not draining;
* drains a running job whose time left is under ``drain_margin``, and one whose workers
  had nothing to do for ``idle_timeout`` s while nothing was queued (its workers get no
  task any more and hand back those not started: broker/jobs.py), and cancels it once
  none of its workers holds a task -- what still runs when the scheduler ends the job
  is queued again, as for any lost worker, so no task is lost and none completes twice;
* cancels pending jobs once nothing was queued for ``idle_timeout`` s;
* breaks the pool (its futures fail with the reason) when MAX_FAILURES jobs in a row
  ended before any of their workers joined, or submitting failed as often.

Only the provider knows the scheduler; the rest is the same for any of them.
``stop()`` (when the pool shuts down) cancels every job and waits until the scheduler
no longer lists them.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ..broker import jobs as broker_jobs
from ..wire.security import write_key_file
from .contract import LaunchOptions, worker_argv
from .local import remote_pythonpath

if TYPE_CHECKING:
    from ..broker.loop import Broker
    from ..trace import TraceRecorder
    from .groups import Launchers, Target

__all__ = ["JOB_TAG", "MAX_FAILURES", "JobPool", "JobProvider", "JobState", "PoolHost"]

log = logging.getLogger("scoopexec.jobs")

JOB_TAG = "@JOB@"  # in the worker's command line: the provider puts the job's own id there
TAG_PREFIX = "J"  # worker tags are J<job id>.<n>
MAX_FAILURES = 3  # jobs in a row that end before a worker joins (or submissions that fail)


RECANCEL = 5.0  # s between cancels of a job the scheduler still lists at shut-down

class JobState(NamedTuple):
    """A job as the scheduler lists it."""

    state: str  # "pending", "running" or "ending"
    time_left: float | None = None  # s before the scheduler ends it (None: no limit or unknown)


class JobProvider(Protocol):
    """What a batch scheduler does for a JobPool; all that differs between SLURM, PBS and SGE."""

    kind: str  # "slurm"

    def submit(
        self, count: int, argv: Sequence[str], env: Mapping[str, str], cwd: str, outdir: str
    ) -> list[str]:
        """Submit ``count`` jobs each running ``argv`` (JOB_TAG in it: the job's id) in ``cwd``,
        their output in ``outdir``; return their ids (OSError if the scheduler refused)."""
        ...

    def cancel(self, ids: Sequence[str]) -> None: ...

    def poll(self) -> dict[str, JobState]:
        """This pool's jobs the scheduler still lists (OSError if it cannot be asked)."""
        ...

    def output_of(self, job: str) -> str:
        """The file a job's output goes to."""
        ...


class PoolHost(Protocol):
    """What a JobPool needs of the pool it serves (client/embedded.EmbeddedSession)."""

    broker: Broker
    pool_id: str
    launch_options: LaunchOptions
    trace: TraceRecorder | None

    @property
    def workers(self) -> Launchers | None: ...

    def worker_target(self, kind: str) -> Target: ...


@dataclass
class _Job:
    id: str
    state: str = "pending"
    time_left: float | None = None
    polled: float = 0.0  # monotonic time of time_left
    workers: int = 0
    busy: int = 0  # tasks its workers hold
    joined: bool = False  # a worker of it said hello
    draining: str = ""  # why it drains ("walltime", "idle"): no task goes there any more
    synced: bool = False  # the broker has drained its workers
    cancelled: bool = False
    idle_since: float | None = None

    def as_dict(self, now: float) -> dict[str, Any]:
        left = None if self.time_left is None else max(0.0, self.time_left - (now - self.polled))
        state = f"draining ({self.draining})" if self.draining else self.state
        return {"id": self.id, "state": state, "workers": self.workers, "busy": self.busy,
                "time_left": None if left is None else round(left, 1)}  # fmt: skip


class JobPool:
    """Submits, drains and cancels the batch jobs of one pool (see the module docstring)."""

    tick = 0.5  # s between looks at the broker

    def __init__(
        self,
        provider: JobProvider,
        host: PoolHost,
        *,
        max_jobs: int,
        workers_per_job: int | None,
        idle_timeout: float,
        drain_margin: float,
        poll_interval: float,
        workdir: str | None,
    ) -> None:
        self.provider = provider
        self.host = host
        self.max_jobs = max_jobs
        self.per_job = workers_per_job
        self._sized = workers_per_job is not None
        self.idle_timeout = idle_timeout
        self.drain_margin = drain_margin
        self.poll_interval = poll_interval
        self.jobs: dict[str, _Job] = {}
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_poll = 0.0
        self._broken = False
        self._queued = 0  # tasks queued in the broker at the last look
        self._submitted = False  # sbatch was run at least once
        base = workdir or os.path.join(os.path.expanduser("~"), ".scoopexec", "jobs")
        os.makedirs(base, mode=0o700, exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix=f"{host.pool_id}-", dir=base)  # 0700
        options = host.launch_options
        target = host.worker_target(provider.kind)
        key = write_key_file(os.path.join(self.workdir, "key"), target.keys)
        self.argv = [
            options.python,
            *worker_argv(
                connect=target.connect,
                key=key,
                tag=TAG_PREFIX + JOB_TAG,
                workers=str(workers_per_job) if workers_per_job else "auto",
                heartbeat=options.heartbeat,
                heartbeat_timeout=options.heartbeat_timeout,
                connect_timeout=max(60.0, options.launch_timeout),
                keep_cwd=options.keep_cwd,
            ),
        ]
        self.env = dict(options.env, PYTHONPATH=remote_pythonpath())
        self._thread = threading.Thread(target=self._run, name=f"scoopexec-{provider.kind}-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # ------------------------------------------------------------------ status
    def status(self) -> list[dict[str, Any]]:
        """The jobs, for the pool's status (any thread)."""
        now = time.monotonic()
        with self._lock:
            return [dict(j.as_dict(now), scheduler=self.provider.kind) for j in self.jobs.values()]

    # -------------------------------------------------------------------- loop
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step(time.monotonic())
            except _BrokerGone:
                return
            except Exception:  # pragma: no cover - a bug here must not end the pool's elasticity silently
                log.exception("the %s job pool failed a step", self.provider.kind)
            self._stop.wait(self.tick)

    def _in_broker(self, fn: Callable[[], Any]) -> Any:
        broker = self.host.broker
        if broker.stopping:
            raise _BrokerGone
        fut: cf.Future[Any] = broker.call_soon(fn)
        while True:
            try:
                return fut.result(timeout=0.5)
            except cf.TimeoutError:
                if self._stop.is_set() or broker.stopping:
                    fut.cancel()
                    raise _BrokerGone from None
            except RuntimeError:  # the broker stopped
                raise _BrokerGone from None

    def _step(self, now: float) -> None:
        if now >= self._next_poll and self.jobs:
            self._poll(now)
        with self._lock:  # judged on the last look at the broker; drained in this one
            for j in self.jobs.values():
                self._judge(j, now, self._queued)
            drain = frozenset(j.id for j in self.jobs.values() if j.draining)
        broker = self.host.broker
        view = self._in_broker(lambda: broker_jobs.sync(broker, TAG_PREFIX, drain))
        self._queued = view.queued
        to_cancel: list[str] = []
        with self._lock:
            for j in self.jobs.values():
                loads = view.jobs.get(j.id, [])
                j.workers, j.busy = len(loads), sum(loads)
                if loads and not j.joined:
                    j.joined = True
                    if j.state == "pending":  # it runs: squeue would say so at its next look
                        j.state, self._next_poll = "running", 0.0  # (which also tells its time left)
                    self.failures = 0
                    self._mark(j, f"{len(loads)} worker(s) joined")
                if not self._sized:  # learnt: workers per job (those of a group join one by one)
                    self.per_job = max(self.per_job or 0, len(loads)) or None
                if j.id in drain:
                    j.synced = True
                if j.draining and not j.cancelled and (j.state == "pending" or (j.synced and not j.busy)):
                    j.cancelled = True
                    to_cancel.append(j.id)
            new = self._wanted(view)
        if to_cancel:
            self._cancel(to_cancel)
        if new:
            self._submit(new)
        trace = self.host.trace
        if trace is not None:
            with self._lock:
                trace.on_jobs(self.provider.kind, [j.as_dict(now) for j in self.jobs.values()])

    def _judge(self, j: _Job, now: float, queued: int) -> None:
        """Should ``j`` drain: its time is nearly up, or it has had nothing to do for a while?"""
        if j.draining:
            return
        if j.state == "running" and j.time_left is not None:
            if j.time_left - (now - j.polled) <= self.drain_margin:
                j.draining = "walltime"
                self._mark(j, f"draining: less than {self.drain_margin:g} s left")
                return
        if j.busy or queued:
            j.idle_since = None
        elif j.idle_since is None:
            j.idle_since = now
        elif now - j.idle_since >= self.idle_timeout:
            j.draining = "idle"
            self._mark(j, f"draining: idle for {self.idle_timeout:g} s")

    def _wanted(self, view: broker_jobs.JobView) -> int:
        """How many jobs to submit now (hold _lock)."""
        if self._broken or not view.queued:
            return 0
        live = [j for j in self.jobs.values() if not j.draining]
        room = self.max_jobs - len(live)
        if room <= 0:
            return 0
        per_job = self.per_job or 1
        coming = per_job * sum(1 for j in live if not j.joined)
        want = view.queued - coming - view.idle_workers
        return min(room, math.ceil(want / per_job)) if want > 0 else 0

    def _poll(self, now: float) -> None:
        try:
            listed = self.provider.poll()
        except OSError as exc:
            log.warning("could not ask %s about the pool's jobs: %s", self.provider.kind, exc)
            self._next_poll = now + self.poll_interval
            return
        self._next_poll = time.monotonic() + self.poll_interval
        ended: list[_Job] = []
        with self._lock:
            for jid, j in list(self.jobs.items()):
                st = listed.get(jid)
                if st is None:
                    ended.append(self.jobs.pop(jid))
                    continue
                if st.state != j.state:
                    self._mark(j, st.state)
                j.state, j.time_left, j.polled = st.state, st.time_left, now
        for j in ended:
            self._ended(j)

    def _ended(self, j: _Job) -> None:
        self._mark(j, "ended")
        if j.joined or j.cancelled:
            return
        self.failures += 1
        tail = _tail(self.provider.output_of(j.id))
        why = f"{self.provider.kind} job {j.id} ended before any of its workers joined the pool"
        log.warning("%s; its output (%s):\n%s", why, self.provider.output_of(j.id), tail)
        if self.failures >= MAX_FAILURES:
            self._give_up(
                f"{self.failures} {self.provider.kind} jobs in a row ended before any worker joined; "
                f"last: {why}: {tail}"
            )

    def _give_up(self, message: str) -> None:
        if self._broken:
            return
        self._broken = True
        log.error("%s", message)
        broker = self.host.broker
        self._in_broker(lambda: broker_jobs.break_pool(broker, message))

    def _submit(self, count: int) -> None:
        self._submitted = True
        try:
            ids = self.provider.submit(count, self.argv, self.env, self.host.launch_options.cwd, self.workdir)
        except OSError as exc:
            self.failures += 1
            log.warning("could not submit %d %s job(s): %s", count, self.provider.kind, exc)
            if self.failures >= MAX_FAILURES:
                self._give_up(f"submitting {self.provider.kind} jobs failed {self.failures} times: {exc}")
            return
        with self._lock:
            for jid in ids:
                self.jobs[jid] = j = _Job(jid)
                self._mark(j, "submitted")
        self._next_poll = 0.0
        log.info("submitted %d %s job(s): %s", len(ids), self.provider.kind, " ".join(ids))

    def _cancel(self, ids: list[str]) -> None:
        try:
            self.provider.cancel(ids)
        except OSError as exc:
            log.warning("could not cancel %s job(s) %s: %s", self.provider.kind, " ".join(ids), exc)

    def _mark(self, j: _Job, what: str) -> None:
        log.info("%s job %s: %s", self.provider.kind, j.id, what)
        trace = self.host.trace
        if trace is not None:
            trace.on_job(self.provider.kind, j.id, what)

    # ------------------------------------------------------------------- stop
    def stop(self, timeout: float = 30.0) -> None:
        """Cancel every job of the pool and wait (up to ``timeout`` s) until the scheduler lists none.

        The jobs are those the scheduler lists for this pool (JobProvider.poll), known here or
        not: one whose submission was under way when the pool stopped is cancelled too.
        """
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        with self._lock:
            cancelled = dict.fromkeys(self.jobs, time.monotonic())  # job -> when scancel was last sent
        try:
            if cancelled:
                self._cancel(sorted(cancelled))
            while self._submitted:
                try:
                    listed = self.provider.poll()
                except OSError as exc:
                    log.warning("could not ask %s whether the pool's jobs ended: %s", self.provider.kind, exc)
                    break
                if not listed:
                    break
                if time.monotonic() > deadline:
                    log.warning("%s job(s) %s were still listed %g s after being cancelled",
                                self.provider.kind, " ".join(listed), timeout)  # fmt: skip
                    break
                # New ones, and again every few seconds the ones still listed: a cancel that
                # failed once (the controller busy, say) must not leave a job running.
                now = time.monotonic()
                more = sorted(j for j in listed if now - cancelled.get(j, -RECANCEL) >= RECANCEL)
                if more:
                    self._cancel(more)
                    cancelled.update(dict.fromkeys(more, now))
                time.sleep(0.5)
        finally:
            with self._lock:
                self.jobs.clear()
            if self.failures:  # keep the jobs' output for the user to read; the key goes
                _remove(os.path.join(self.workdir, "key"))
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)


class _BrokerGone(Exception):
    """The pool's broker stopped: the job pool's thread ends."""


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-n:]).strip() or "(empty)"
    except OSError as exc:
        return f"(not readable: {exc.strerror})"
