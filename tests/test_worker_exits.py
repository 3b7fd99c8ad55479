"""Why a worker process ended: its own reasons are announced, a task's exit code is not taken for one.

A worker exits with codes 3, 4 and 5 when it lost its broker, was refused, or found none
(scoopexec/contract.py).  A task may call os._exit() with the same codes; the process that started
the worker must not blame the broker for it, and must start another worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import pytest

from scoopexec import ScoopExecutor, WorkerLostError
from scoopexec.deploy import contract
from scoopexec.deploy.local import LocalWorkers
from tests.test_standalone import _env, broker  # noqa: F401


def exit_with(code: int) -> None:
    time.sleep(0.05)
    os._exit(code)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("code", [3, 4, 5, 1])
def test_a_task_that_exits_is_blamed_not_the_broker(code):
    with ScoopExecutor(1, max_retries=0) as ex:
        with pytest.raises(WorkerLostError) as info:
            ex.submit(exit_with, code).result(timeout=60)
        text = str(info.value)
        assert "exit_with(): task" in text, text
        assert f"exited with code {code} while running this task: a task ended the process" in text
        for reason in contract.REASONS.values():
            assert reason not in text
        assert ex.submit(abs, -7).result(timeout=60) == 7  # its replacement runs tasks


@pytest.mark.timeout(120)
def test_a_workers_own_exit_is_announced_and_described():
    with tempfile.TemporaryDirectory(prefix="scoopexec-test-") as d:
        nowhere = f"ipc://{d}/no-broker"
        group = LocalWorkers(nowhere, 1, replace=False, flags={"connect_timeout": 0.3})
        try:
            deadline = time.monotonic() + 60
            exited = []
            while not exited and time.monotonic() < deadline:
                exited = group.reap()
                time.sleep(0.05)
            assert exited, "the worker did not give up on a broker that is not there"
            [(tag, _pid, rc)] = exited
            assert rc == contract.EXIT_UNREACHABLE
            assert group.own_exit(tag)
            text = group.describe_exit(tag, rc)
            assert text.startswith(
                f"worker process {tag} exited with code 5 (no broker answered at the address it was "
                f"given): no scoopexec broker answered at {nowhere} within 0.3 s"
            ), text
        finally:
            group.stop()


def _pid(_=None):
    return os.getpid()


@pytest.mark.timeout(120)
def test_a_worker_group_replaces_a_worker_whose_task_exited_with_a_code_of_ours(broker):  # noqa: F811
    addr, _ = broker
    group = subprocess.Popen(
        [sys.executable, "-m", "scoopexec", "worker", "--connect", addr, "-n", "2"],
        env=_env(),
        stderr=subprocess.PIPE,
    )
    try:
        with ScoopExecutor(broker=addr) as ex:  # the broker retries the task: 4 workers exit
            before = set(ex.map(_pid, range(20)))
            with pytest.raises(WorkerLostError):
                ex.submit(exit_with, contract.EXIT_LOST).result(timeout=60)
            deadline = time.monotonic() + 60
            while len(ex.status(timeout=30).workers) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)  # its replacement joins
            assert len(ex.status(timeout=30).workers) == 2
            after = set(ex.map(_pid, range(20)))
            assert after - before, "a new worker runs tasks"
    finally:
        group.terminate()
        _, err = group.communicate(timeout=30)
    text = err.decode()
    assert "exited with code 3; replaced" in text, text
    assert "not replaced" not in text and "lost its broker" not in text, text
