"""hosts=SlurmJobs(...): a pool that submits its own SLURM jobs, from outside any allocation.

On the real cluster of tests/cluster_fixtures.py (munged, slurmctld, three slurmd on
this machine): jobs come as tasks queue up, a job killed by scancel has its tasks run
again, a job near its walltime drains (takes no task, hands back what it has not
started; a task it cannot finish runs again elsewhere), idle jobs are cancelled, and
shutdown() leaves nothing in squeue.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.cluster_fixtures import slurm  # noqa: F401

pytestmark = pytest.mark.timeout(300)


# ----------------------------------------------------------- tasks (run on the job's workers)
def _note(path: str, *words: object) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (" ".join(str(w) for w in words) + "\n").encode())
    finally:
        os.close(fd)


def _job() -> str:
    return f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"


def noted_square(path: str, i: int, seconds: float) -> tuple[int, str]:
    """i*i after ``seconds``; notes its start and its end (with its job) in ``path``."""
    _note(path, "start", i, _job(), time.time())
    time.sleep(seconds)
    _note(path, "end", i, _job(), time.time())
    return i * i, _job()


def first_run_hangs(path: str, marker: str) -> str:
    """Sleeps far past any walltime the first time it runs; returns at once when run again."""
    if os.path.exists(marker):
        _note(path, "end", -1, _job(), time.time())
        return _job()
    with open(marker, "w") as fh:
        fh.write(_job())
    _note(path, "start", -1, _job(), time.time())
    time.sleep(600)
    return "never"


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


# ------------------------------------------------------------------- helpers
@pytest.fixture
def outside_allocation(slurm, monkeypatch):  # noqa: F811
    """This process as on a login node of the test cluster: SLURM_CONF set, no job variables."""
    for var in list(os.environ):
        if var.startswith(("SLURM_", "PBS_", "PE_HOSTFILE")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("SLURM_CONF", slurm.conf)
    return slurm


def _ours(cluster, pool_id: str) -> list[str]:
    out = cluster.run(["squeue", "-h", "-r", f"--name=scoopexec-{pool_id}", "-o", "%i %T"]).stdout
    return out.split("\n") if out.strip() else []


def _notes(path: str) -> list[tuple[str, int, str, float]]:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        rows = [line.split() for line in fh if line.strip()]
    return [(r[0], int(r[1]), r[2], float(r[3])) for r in rows]


def _wait(what: str, check, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_jobs": 0}, "max_jobs must be an integer >= 1"),
        ({"max_jobs": True}, "max_jobs must be an integer >= 1"),
        ({"max_jobs": 2.0}, "max_jobs must be an integer >= 1"),
        ({"walltime": "90"}, "walltime must look like 'HH:MM:SS'"),
        ({"walltime": "1:2"}, "walltime must look like 'HH:MM:SS'"),
        ({"walltime": 3600}, "walltime must look like 'HH:MM:SS'"),
        ({"walltime": "00:61:00"}, "over 59"),
        ({"walltime": "00:00:00"}, "is zero"),
        ({"walltime": "00:01:00", "drain_margin": 60}, "not shorter than the walltime"),
        ({"idle_timeout": 0}, "idle_timeout must be a number > 0"),
        ({"drain_margin": -1}, "drain_margin must be a number >= 0"),
        ({"cores_per_job": 0}, "cores_per_job must be an integer >= 1"),
        ({"sbatch_args": "--mem=4G"}, "sbatch_args must be a list of strings"),
        ({"partition": "debug; rm"}, "partition must be a partition name"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, words):
    from scoopexec import SlurmJobs

    with pytest.raises(ValueError, match="SlurmJobs: ") as info:
        SlurmJobs(**kwargs)
    assert words in str(info.value)


def test_good_arguments_are_kept():
    from scoopexec import SlurmJobs
    from scoopexec.deploy.slurm_jobs import parse_duration, parse_walltime

    spec = SlurmJobs(max_jobs=4, walltime="1-02:03:04", cores_per_job=2, sbatch_args=["--mem=1G"])
    assert spec.sbatch_args == ("--mem=1G",) and spec.max_workers == 8
    assert parse_walltime("1-02:03:04") == 93784
    assert parse_walltime("12:00:00") == 43200
    assert [parse_duration(t) for t in ("1-00:00:01", "2:03:04", "0:45", "UNLIMITED", "INVALID")] == [
        86401.0, 7384.0, 45.0, None, None,
    ]  # fmt: skip


def test_not_with_a_standalone_broker_or_max_workers():
    from scoopexec import ScoopExecutor, SlurmJobs

    with pytest.raises(ValueError, match="not with broker="):
        ScoopExecutor(hosts=SlurmJobs(max_jobs=1), broker="tcp://127.0.0.1:1", connect_timeout=1)
    with pytest.raises(ValueError, match="not max_workers"):
        ScoopExecutor(4, hosts=SlurmJobs(max_jobs=1))


def test_launcher_options_become_slurm_jobs():
    from scoopexec import SlurmJobs, cli

    args = cli._launcher_parser().parse_args(["--slurm-jobs", "3", "--slurm-walltime", "02:00:00"])
    kwargs = cli._executor_kwargs(args)
    assert kwargs["hosts"] == SlurmJobs(max_jobs=3, walltime="02:00:00")
    with pytest.raises(ValueError, match="walltime must look like"):
        cli._executor_kwargs(cli._launcher_parser().parse_args(["--slurm-jobs=3", "--slurm-walltime=2"]))


def test_a_drained_worker_hands_back_what_it_has_not_started_and_gets_no_more():
    """DRAIN (broker/jobs.sync) on a worker running a long task with short ones queued behind
    it: the long one finishes there, the short ones run on another worker, once each."""
    from scoopexec import ScoopExecutor
    from scoopexec.broker import jobs as broker_jobs

    with ScoopExecutor(1) as ex:
        broker = ex._session.broker
        workers = broker.ledger.workers
        first = ex.submit(pid_after, 0).result(timeout=60)
        long = ex.submit(pid_after, 4.0)
        time.sleep(0.5)  # the long task runs; the worker asks for more while it does (as a worker
        w = next(iter(workers.values()))  # with prefetch does), and short ones wait there
        broker.call_soon(lambda: broker.ledger.grant(w, 20)).result(5)
        short = [ex.submit(pid_after, 0.0001) for _ in range(40)]
        time.sleep(0.5)
        held = broker.call_soon(lambda: [len(w.assigned) for w in workers.values()]).result(5)
        assert held[0] > 1, held  # (else this test would not test the hand-back)
        tag = broker.call_soon(lambda: next(iter(broker.ledger.workers.values())).tag).result(5)
        prefix, _, job = tag.rpartition(".")
        broker.call_soon(lambda: broker_jobs.sync(broker, prefix + ".", {job})).result(5)

        def holds_one():  # what it had not started is back in the broker while the long one runs
            return broker.call_soon(lambda: [len(w.assigned) for w in workers.values()]).result(5) == [1]

        _wait("the queued tasks to come back", holds_one, 1.5, interval=0.05)
        assert not long.done()
        assert long.result(timeout=60) == first  # the running task finished where it ran
        time.sleep(0.5)
        assert not any(f.done() for f in short), "a short task ran on the drained worker"
        ex.add_workers(1)  # they wait for another worker
        assert first not in {f.result(timeout=60) for f in short}
        assert ex.status().completed == 1 + 1 + 40  # each ran once


# ------------------------------------------------------------ on the cluster
def test_jobs_come_with_work_show_in_status_and_go_when_idle(outside_allocation, tmp_path):
    from scoopexec import ScoopExecutor, SlurmJobs

    cluster = outside_allocation
    notes = str(tmp_path / "notes")
    spec = SlurmJobs(max_jobs=2, cores_per_job=1, idle_timeout=3, poll_interval=0.5,
                     workdir=str(tmp_path / "jobs"))  # fmt: skip
    trace = tmp_path / "trace.json"
    with ScoopExecutor(hosts=spec, trace=str(trace)) as ex:
        assert _ours(cluster, ex.pool_id) == []  # nothing queued: no job yet
        futs = [ex.submit(noted_square, notes, i, 0.5) for i in range(16)]
        def two_jobs():
            s = ex.status()
            return s if len([j for j in s.jobs if j["workers"] == 1]) == 2 else None

        seen = _wait("two jobs with a worker each", two_jobs, 60)
        assert all(j["state"] == "running" for j in seen.jobs), seen.jobs
        assert "slurm jobs: 0 pending, 2 running" in str(seen), str(seen)
        assert [f.result(timeout=120)[0] for f in futs] == [i * i for i in range(16)]
        assert {f.result()[1] for f in futs} == {j["id"] for j in seen.jobs}  # both jobs worked
        # Idle for idle_timeout: the jobs are cancelled, the pool lives on.
        _wait("the idle jobs to go", lambda: not _ours(cluster, ex.pool_id) and not ex.status().jobs, 60)
        assert ex.submit(noted_square, notes, 7, 0).result(timeout=120)[0] == 49  # a new job comes
        pool = ex.pool_id
    assert _ours(cluster, pool) == []
    ends = [n for n in _notes(notes) if n[0] == "end"]
    assert sorted(n[1] for n in ends) == sorted([*range(16), 7])  # each ran to its end once
    import json

    events = json.loads(trace.read_text())["traceEvents"]
    names = [e["name"] for e in events if e.get("cat") == "jobs"]
    assert any(n.endswith(": submitted") for n in names) and any("draining: idle" in n for n in names), names
    assert any(e["ph"] == "C" and e["args"].get("workers") == 2 for e in events if e.get("cat") == "jobs")


def test_a_job_cancelled_mid_run_has_its_tasks_run_again(outside_allocation, tmp_path):
    from scoopexec import ScoopExecutor, SlurmJobs

    cluster = outside_allocation
    notes = str(tmp_path / "notes")
    spec = SlurmJobs(max_jobs=2, cores_per_job=1, walltime="00:10:00", poll_interval=0.5,
                     workdir=str(tmp_path / "jobs"))  # fmt: skip
    with ScoopExecutor(hosts=spec) as ex:
        futs = [ex.submit(noted_square, notes, i, 1.5) for i in range(12)]
        def two_jobs():
            jobs = {n[2] for n in _notes(notes) if n[0] == "start"}
            return jobs if len(jobs) == 2 else None

        running = _wait("tasks running in two jobs", two_jobs, 90)
        victim = sorted(running)[0]
        r = cluster.run(["scancel", victim])
        assert r.returncode == 0, r.stderr
        assert [f.result(timeout=180)[0] for f in futs] == [i * i for i in range(12)]
        pool = ex.pool_id
    assert _ours(cluster, pool) == []
    rows = _notes(notes)
    killed = [n[1] for n in rows if n[0] == "start" and n[2] == victim and
              not any(m[0] == "end" and m[1] == n[1] and m[2] == victim for m in rows)]  # fmt: skip
    assert killed, rows  # a task was running in the job when it was cancelled...
    for i in killed:  # ...and ran again, in another job, to its end
        assert any(m[0] == "end" and m[1] == i and m[2] != victim for m in rows), rows
    ends = sorted(n[1] for n in rows if n[0] == "end")
    assert ends == list(range(12)), rows  # none completed twice


def test_a_job_near_its_walltime_drains_and_what_it_cannot_finish_runs_again(outside_allocation, tmp_path):
    """walltime 1 min, drain 25 s before: the job takes no task after that, hands back what is
    queued on it; a task that cannot finish is killed with the job and runs again elsewhere."""
    from scoopexec import ScoopExecutor, SlurmJobs

    cluster = outside_allocation
    notes = str(tmp_path / "notes")
    spec = SlurmJobs(max_jobs=2, cores_per_job=1, walltime="00:01:00", drain_margin=25, poll_interval=0.5,
                     idle_timeout=60, workdir=str(tmp_path / "jobs"))  # fmt: skip
    with ScoopExecutor(hosts=spec) as ex:
        hang = ex.submit(first_run_hangs, notes, str(tmp_path / "marker"))
        futs = [ex.submit(noted_square, notes, i, 0.5) for i in range(200)]
        drained: dict[str, float] = {}

        def draining():
            for j in ex.status().jobs:
                if j["state"].startswith("draining (walltime)"):
                    drained.setdefault(j["id"], time.time())
            return len(drained) >= 2

        _wait("both first jobs to drain", draining, 90, interval=0.1)
        squares = [f.result(timeout=150) for f in futs]
        assert [s[0] for s in squares] == [i * i for i in range(200)]
        again = hang.result(timeout=150)
        pool = ex.pool_id
    assert _ours(cluster, pool) == []
    rows = _notes(notes)
    first = next(n for n in rows if n[0] == "start" and n[1] == -1)
    assert first[2] in drained and again != first[2], (first, again)  # ran again in another job
    for kind, i, job, t in rows:
        if kind == "start" and job in drained:
            late = t - drained[job]
            assert late < 1.0, f"task {i} started in job {job} {late:.1f} s after it drained"
    ends = sorted(n[1] for n in rows if n[0] == "end")
    assert ends == [-1, *range(200)], "a task was lost or completed twice"
    later = {job for _, _, job, _ in rows} - set(drained)
    assert later, "no job took over from the drained ones"


def test_without_sbatch_the_pool_does_not_start(monkeypatch, tmp_path):
    from scoopexec import LaunchError, ScoopExecutor, SlurmJobs

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match="sbatch is not on PATH"):
        ScoopExecutor(hosts=SlurmJobs(max_jobs=1, workdir=str(tmp_path / "jobs")))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"spec": {"partition": "nosuchpartition"}}, "invalid partition"),
        ({"python": "/bin/false"}, "ended before any worker joined"),
    ],
)
def test_jobs_that_cannot_run_workers_break_the_pool(outside_allocation, tmp_path, kwargs, words):
    from scoopexec import BrokenScoopExecutor, ScoopExecutor, SlurmJobs

    spec = SlurmJobs(max_jobs=1, poll_interval=0.3, workdir=str(tmp_path / "jobs"), **kwargs.pop("spec", {}))
    with ScoopExecutor(hosts=spec, **kwargs) as ex:
        with pytest.raises(BrokenScoopExecutor, match=words):
            ex.submit(abs, -1).result(timeout=120)
        pool = ex.pool_id
    assert _ours(outside_allocation, pool) == []


LAUNCHED = """
import time
import scoopexec

if __name__ == "__main__":
    ex = scoopexec.current_executor()
    print("SUM", sum(scoopexec.map(abs, range(-20, 0))), flush=True)
    print("POOL", ex.pool_id, flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the pool looks at its jobs twice a second
        jobs = ex.status().jobs
        if any(j["workers"] for j in jobs):
            break
        time.sleep(0.2)
    print("JOBS", *sorted(f"{j['state']}:{j['workers']}" for j in jobs), flush=True)
"""


def test_the_launcher_runs_a_program_on_slurm_jobs(outside_allocation, tmp_path):
    import subprocess
    import sys

    prog = tmp_path / "prog.py"
    prog.write_text(LAUNCHED)
    env = dict(os.environ, HOME=str(tmp_path))  # the jobs' directory goes under ~/.scoopexec
    r = subprocess.run(
        [sys.executable, "-m", "scoopexec", "--slurm-jobs", "2", "--slurm-walltime", "00:05:00", str(prog)],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=180, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    words = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines() if line.strip()}
    assert words["SUM"] == ["210"], r.stdout
    assert any(w.startswith("running:") and int(w[8:]) >= 1 for w in words["JOBS"]), r.stdout
    assert _ours(outside_allocation, words["POOL"][0]) == []
    assert os.listdir(tmp_path / ".scoopexec" / "jobs") == []  # its key and logs went with it
