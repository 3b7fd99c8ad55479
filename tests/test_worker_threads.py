"""Local workers share the machine's cores among their BLAS/OpenMP thread pools (deploy/local.py
limit_threads): each worker's thread-count variables default to cores // workers; a value the user
set, in the environment or with ``env=``, is kept."""

from __future__ import annotations

import os

from scoopexec import ScoopExecutor
from scoopexec.deploy.local import THREAD_VARIABLES, limit_threads


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def thread_vars(_=None):
    return {name: os.environ.get(name) for name in THREAD_VARIABLES}


def test_unset_variables_get_the_cores_divided_among_the_workers():
    env = limit_threads({"OMP_NUM_THREADS": "7"}, 2)
    assert env["OMP_NUM_THREADS"] == "7"  # the user's
    share = str(max(1, _cores() // 2))
    assert all(env[name] == share for name in THREAD_VARIABLES if name != "OMP_NUM_THREADS")
    assert limit_threads({}, 10 * _cores())["OPENBLAS_NUM_THREADS"] == "1"  # never 0


def test_pool_workers_see_the_limits_and_the_users_own_values(monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "5")  # set by the user before the pool starts
    share = str(max(1, _cores() // 2))
    with ScoopExecutor(2, env={"OMP_NUM_THREADS": "3"}) as ex:
        seen = list(ex.map(thread_vars, range(4)))
    expected = {name: share for name in THREAD_VARIABLES}
    expected.update(MKL_NUM_THREADS="5", OMP_NUM_THREADS="3")
    assert all(s == expected for s in seen), seen
    assert os.environ.get("OPENBLAS_NUM_THREADS") is None  # the client's own environment is untouched
