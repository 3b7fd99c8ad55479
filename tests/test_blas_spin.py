"""A client's OpenBLAS pool spins less once the client forked its workers' template
(deploy/threadlibs.shorten_spin).

Issue 17, DEAP's CMA-ES: after each threaded call, OpenBLAS's pool spins for about 0.1 s
before it sleeps, so a client that runs NumPy between maps spins a core through each map, on
the cores its workers need.  OpenBLAS reads that time (OPENBLAS_THREAD_TIMEOUT) when it
starts its pool, which it does again after a fork: the client has it read as
threadlibs.SPIN_TIMEOUT just before it forks the template.  These run a client script with a
two-thread OpenBLAS and look at the library's setting and at the CPU its pool thread burns
after a call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and the client fork")

_SCRIPT = """
import ctypes, json, os, sys, time
import numpy
from scoopexec import ScoopExecutor
from scoopexec.deploy import threadlibs

def timeout_setting():
    for path in threadlibs._mapped(("libopenblas", "libscipy_openblas")):
        fn = threadlibs._openblas(path, "thread_timeout", ctypes.c_uint, [])
        if fn is not None:
            return fn()

def pool_cpu():  # CPU seconds of this process's threads but the main one
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != os.getpid():
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")

if __name__ == "__main__":
    threadlibs.limit(2, None)  # a pool of one thread besides the caller, whatever the cores
    a = numpy.arange(90000.0).reshape(300, 300) / 90000.0
    reference = a @ a
    with ScoopExecutor(max_workers=1) as ex:
        origin = ex._session.workers.local.template.origin
        ex.submit(abs, -1).result()
        same = bool(((a @ a) == reference).all())  # the pool starts again, with the setting
        before = pool_cpu()
        time.sleep(0.4)  # OpenBLAS's own setting spins ~0.1 s of this; the short one ~0.4 ms
        spun = pool_cpu() - before
    print(json.dumps({"origin": origin, "setting": timeout_setting(), "spun": spun, "same": same,
                      "env": os.environ.get("OPENBLAS_THREAD_TIMEOUT")}))
"""


def _run(tmp_path, **env_extra: str) -> dict:
    script = tmp_path / "spin_client.py"
    script.write_text(_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.endswith(("NUM_THREADS", "MAXIMUM_THREADS"))}
    env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    env.pop("SCOOPEXEC_WORKER_START", None)
    env.update(PYTHONPATH=ROOT, **env_extra)
    out = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def _openblas() -> None:
    numpy = pytest.importorskip("numpy")
    from scoopexec.deploy import threadlibs

    if threadlibs.blas_threads() is None:
        pytest.skip(f"numpy {numpy.__version__} is not built with an OpenBLAS that can be asked")


def test_the_client_fork_shortens_its_blas_pools_spin(tmp_path) -> None:
    from scoopexec.deploy import threadlibs

    got = _run(tmp_path)
    assert got["origin"] == "client", got
    assert got["setting"] == threadlibs.SPIN_TIMEOUT, got
    assert got["env"] is None, got  # the environment is left as it was
    assert got["same"], got
    assert got["spun"] < 0.05, got  # OpenBLAS's own 2**28 cycles spin ~0.1 s


def test_the_users_openblas_thread_timeout_is_kept(tmp_path) -> None:
    got = _run(tmp_path, OPENBLAS_THREAD_TIMEOUT="26")
    assert got["setting"] == 26 and got["env"] == "26", got
