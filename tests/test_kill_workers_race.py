"""kill_workers() / terminate_workers() signal every worker process, even one started while they run."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from scoopexec import ScoopExecutor


@pytest.mark.parametrize(
    "method, sig", [("kill_workers", signal.SIGKILL), ("terminate_workers", signal.SIGTERM)]
)
def test_a_worker_started_while_the_workers_are_ended_is_ended_too(method, sig):
    ex = ScoopExecutor(1)
    try:
        assert ex.submit(int, 1).result(timeout=60) == 1
        local = ex._session.workers.local
        started: list[subprocess.Popen[bytes]] = []
        racing = threading.Event()
        done = threading.Event()

        def start_more() -> None:  # workers being started (replacements, say) all along
            while not done.is_set() and len(started) < 40:
                local.add(1)
                started.extend(p for p in list(local.procs.values()) if p not in started)
                racing.set()
                time.sleep(0.01)

        t = threading.Thread(target=start_more)
        t.start()
        try:
            racing.wait(30)
            time.sleep(0.2)
            getattr(ex, method)()
            done.set()  # (a start under way during the call finished before it broke the pool)
        finally:
            done.set()
            t.join(30)
        assert len(started) >= 2
        codes = {p.pid: p.wait(30) for p in started}
        assert all(rc == -sig for rc in codes.values()), codes  # each one was signalled, none missed
    finally:
        ex.shutdown(wait=True)
