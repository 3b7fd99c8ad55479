"""``hosts=SlurmJobs(...)``: a pool whose workers run in SLURM jobs it submits itself.

From a login node (no allocation), the pool submits worker jobs with ``sbatch`` as
tasks queue up and cancels them when they are no longer needed (deploy/elastic.py
decides when; :class:`SlurmProvider` is all that is SLURM here: sbatch, scancel,
squeue).  Each job runs one worker group (``python -m scoopexec worker -n N``) that
joins the pool's broker over TCP with CURVE, its key in a 0600 file under
``workdir`` (keys never go on a command line).  Jobs submitted together form one
job array.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import LaunchError
from .elastic import JOB_TAG, JobPool, JobState, PoolHost

__all__ = ["SlurmJobs", "SlurmProvider", "parse_duration", "parse_walltime"]

MAX_ARRAY = 1000  # jobs per sbatch call (SLURM's default MaxArraySize is 1001)
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d\d):(\d\d)$")
_PARTITION = re.compile(r"^[A-Za-z0-9_.\-]+(?:,[A-Za-z0-9_.\-]+)*$")


def parse_walltime(text: str) -> int:
    """``"HH:MM:SS"`` (or ``"D-HH:MM:SS"``) in seconds; ValueError naming the problem."""
    m = _WALLTIME.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"SlurmJobs: walltime must look like 'HH:MM:SS' or 'D-HH:MM:SS', not {text!r}")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    if minutes >= 60 or seconds >= 60:
        raise ValueError(f"SlurmJobs: walltime {text!r} has minutes or seconds over 59")
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError(f"SlurmJobs: walltime {text!r} is zero")
    return total


def parse_duration(text: str) -> float | None:
    """A duration as squeue prints it (``[D-][HH:]MM:SS``; None for UNLIMITED, NOT_SET, INVALID)."""
    days, _, rest = text.strip().rpartition("-")
    parts = rest.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3 or (days and not days.isdigit()):
        return None
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return float(seconds + int(days or 0) * 86400)


def _positive(name: str, value: Any, *, zero: bool = False) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not (value >= 0 if zero else value > 0):
        raise ValueError(f"SlurmJobs: {name} must be a number {'>= 0' if zero else '> 0'}, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class SlurmJobs:
    """Workers in SLURM jobs that the pool submits, drains and cancels as its work needs.

    Give it as ``ScoopExecutor(hosts=SlurmJobs(...))`` (or ``python -m scoopexec
    --slurm-jobs N --slurm-walltime T``), outside any allocation:

    max_jobs: at most this many worker jobs at a time (not counting jobs being drained).
    walltime: each job's time limit, ``"HH:MM:SS"`` (None: the partition's default).
    idle_timeout: s a job's workers may have nothing to do (and nothing is queued) before the
        job is cancelled; pending jobs are cancelled as soon as nothing was queued that long.
    partition: sbatch's ``--partition`` (None: the default partition).
    cores_per_job: workers (and CPUs, ``--cpus-per-task``) per job; None: one worker per CPU
        the job gets.
    sbatch_args: more sbatch options, e.g. ``("--account=proj", "--mem=4G")``.
    drain_margin: s before a job's time limit at which it takes no new task and hands back
        those it has not started (its running tasks finish, or run again elsewhere).
    poll_interval: s between two looks at squeue.
    workdir: where the key file and the jobs' output go (a directory every node sees;
        default ``~/.scoopexec/jobs``); removed at shutdown unless a job failed to start.
    """

    max_jobs: int = 1
    walltime: str | None = None
    idle_timeout: float = 300.0
    partition: str | None = None
    cores_per_job: int | None = None
    sbatch_args: Sequence[str] = ()
    drain_margin: float = 120.0
    poll_interval: float = 5.0
    workdir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_jobs, bool) or not isinstance(self.max_jobs, int) or self.max_jobs < 1:
            raise ValueError(f"SlurmJobs: max_jobs must be an integer >= 1, not {self.max_jobs!r}")
        limit = parse_walltime(self.walltime) if self.walltime is not None else None
        _positive("idle_timeout", self.idle_timeout)
        _positive("poll_interval", self.poll_interval)
        margin = _positive("drain_margin", self.drain_margin, zero=True)
        if limit is not None and margin >= limit:
            raise ValueError(
                f"SlurmJobs: drain_margin={self.drain_margin!r} s is not shorter than the walltime "
                f"{self.walltime!r}: every job would drain as soon as it starts"
            )
        part = self.partition
        if part is not None and (not isinstance(part, str) or not _PARTITION.match(part)):
            raise ValueError(f"SlurmJobs: partition must be a partition name, not {self.partition!r}")
        cores = self.cores_per_job
        if cores is not None and (isinstance(cores, bool) or not isinstance(cores, int) or cores < 1):
            raise ValueError(f"SlurmJobs: cores_per_job must be an integer >= 1 or None, not {cores!r}")
        args = self.sbatch_args
        if isinstance(args, (str, bytes)) or not all(isinstance(a, str) for a in args):
            raise ValueError(f"SlurmJobs: sbatch_args must be a list of strings, not {args!r}")
        object.__setattr__(self, "sbatch_args", tuple(args))

    @staticmethod
    def given(hosts: object, broker: str | None, max_workers: int | None = None) -> SlurmJobs | None:
        """``hosts`` if it is a SlurmJobs, else None; ValueError with a standalone ``broker`` or
        ``max_workers`` (the jobs' size is max_jobs x cores_per_job)."""
        if not isinstance(hosts, SlurmJobs):
            return None
        if broker is not None:
            raise ValueError("hosts=SlurmJobs(...) needs the pool's own broker: not with broker=")
        if max_workers is not None:
            raise ValueError("hosts=SlurmJobs(...) is sized by max_jobs and cores_per_job: not max_workers")
        return hosts

    @property
    def max_workers(self) -> int:
        """The workers the pool may reach (one per job when cores_per_job is not given)."""
        return self.max_jobs * (self.cores_per_job or 1)

    def start(self, host: Any) -> int:
        """Start the job pool of ``host`` (an embedded pool's session); return max_workers."""
        if not hasattr(host, "worker_target"):
            raise ValueError("hosts=SlurmJobs(...) needs the pool's own broker: not with broker=")
        if shutil.which("sbatch") is None:
            raise LaunchError("SLURM jobs", "sbatch is not on PATH", hint="submit from a SLURM login node")
        session: PoolHost = host
        pool = JobPool(
            SlurmProvider(self, f"scoopexec-{session.pool_id}"),
            session,
            max_jobs=self.max_jobs,
            workers_per_job=self.cores_per_job,
            idle_timeout=self.idle_timeout,
            drain_margin=self.drain_margin,
            poll_interval=self.poll_interval,
            workdir=self.workdir,
        )
        assert session.workers is not None
        session.workers.add_jobs(pool)
        pool.start()
        return self.max_workers


class SlurmProvider:
    """sbatch, scancel and squeue for one pool's jobs (named ``name``); see elastic.JobProvider."""

    kind = "slurm"

    def __init__(self, spec: SlurmJobs, name: str, timeout: float = 60.0) -> None:
        self.spec = spec
        self.name = name
        self.timeout = timeout
        self.outdir = "."

    def _run(self, argv: list[str], env: Mapping[str, str] | None = None, stdin: str | None = None) -> str:
        try:
            r = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=self.timeout,
                env=dict(os.environ, **env) if env is not None else None, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise OSError(f"{argv[0]} did not answer within {self.timeout:g} s") from None
        if r.returncode != 0:
            raise OSError(f"{' '.join(argv[:1])} failed (exit status {r.returncode}): {r.stderr.strip()}")
        return r.stdout

    def submit(
        self, count: int, argv: Sequence[str], env: Mapping[str, str], cwd: str, outdir: str
    ) -> list[str]:
        self.outdir = outdir
        spec = self.spec
        job = '"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"'  # as squeue -r lists the job
        command = " ".join(job.join(shlex.quote(p) for p in a.split(JOB_TAG)) for a in argv)
        script = (
            f"#!/bin/sh\n# a worker group of scoopexec pool {self.name}\n"
            f"cd {shlex.quote(cwd)} || exit 1\nexec {command}\n"
        )
        options = [f"--job-name={self.name}", "--ntasks=1", f"--output={outdir}/%A_%a.out", "--parsable"]
        if spec.cores_per_job:
            options.append(f"--cpus-per-task={spec.cores_per_job}")
        if spec.walltime:
            options.append(f"--time={spec.walltime}")
        if spec.partition:
            options.append(f"--partition={spec.partition}")
        ids: list[str] = []
        while count > 0:
            n = min(count, MAX_ARRAY)
            out = self._run(["sbatch", *options, f"--array=0-{n - 1}", *spec.sbatch_args], env, script)
            base = out.strip().split(";")[0]
            if not base.isdigit():
                raise OSError(f"sbatch answered {out.strip()!r}, not a job id")
            ids += [f"{base}_{i}" for i in range(n)]
            count -= n
        return ids

    def cancel(self, ids: Sequence[str]) -> None:
        try:
            self._run(["scancel", *ids])
        except OSError as exc:
            if "failed" not in str(exc):  # scancel complains of jobs that have ended: they are gone
                raise

    def poll(self) -> dict[str, JobState]:
        out = self._run(["squeue", "-h", "-r", f"--name={self.name}", "-o", "%i|%T|%L"])
        jobs: dict[str, JobState] = {}
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 3:
                continue
            jid, state, left = parts
            if state in ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD"):
                jobs[jid] = JobState("pending")
            elif state == "RUNNING":
                jobs[jid] = JobState("running", parse_duration(left))
            else:
                jobs[jid] = JobState("ending")
        return jobs

    def output_of(self, job: str) -> str:
        return os.path.join(self.outdir, f"{job}.out")
