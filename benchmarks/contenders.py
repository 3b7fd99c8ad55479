"""One small adapter per contender, so every workload is written once.

A ``Pool`` offers ``submit(fn, *args)`` (a handle with ``result()``),
``gather(handles)``, ``map(fn, items, chunksize)``, ``shutdown()``, the
process ids of its workers, and the CPU seconds its coordinating machinery
has used so far (see ``coordinator_cpu``).  Executors (scoopexec,
ProcessPoolExecutor, loky) are used through the ``concurrent.futures``
interface itself; dask.distributed through ``Client.submit/map/gather`` on a
``LocalCluster`` of single-threaded worker processes; Ray through
``ray.remote`` functions and ``ray.get``.  SCOOP cannot be driven from here
(it needs its own launcher); see ``scoop_bench.py``.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks import tasks


class Pool:
    """The interface every workload uses."""

    #: the task function that submits nested sub-tasks from a task, or None if impossible
    nested: Callable[[int], float] | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return [h.result() for h in handles]

    def map(self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int = 1) -> Iterable[Any]:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError

    @staticmethod
    def load() -> None:
        """Import what making a pool needs (the "import" row, timed apart from the "start" row:
        a script pays it once, before its first pool, whatever it does next)."""

    def coordinator_cpu(self, worker_pids: set[int]) -> float:
        """CPU seconds used so far by the pool's machinery outside its worker processes.

        By default: this process and every descendant that is not a worker
        (nor a descendant of one).  scoopexec overrides it with its broker
        thread alone, which is what the issue's target is about.
        """
        return _tree_cpu(worker_pids)


def _tree_cpu(exclude: set[int]) -> float:
    import psutil

    me = psutil.Process()
    total = float(sum(me.cpu_times()[:2]))
    try:
        kids = me.children(recursive=True)
    except psutil.Error:
        return total
    skip = set(exclude)
    for p in kids:  # parents come before their children in psutil's walk
        try:
            if p.pid in skip or p.ppid() in skip:
                skip.add(p.pid)
                continue
            total += sum(p.cpu_times()[:2])
        except psutil.Error:
            continue
    return total


class ExecutorPool(Pool):
    def __init__(self, ex: cf.Executor) -> None:
        self.ex = ex

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.ex.submit(fn, *args)

    def map(self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int = 1) -> Iterable[Any]:
        return self.ex.map(fn, items, chunksize=chunksize)

    def shutdown(self) -> None:
        self.ex.shutdown(wait=True)


class ScoopexecPool(ExecutorPool):
    nested = staticmethod(tasks.nested_scoopexec)

    def __init__(self, n: int) -> None:
        from scoopexec import ScoopExecutor

        super().__init__(ScoopExecutor(n))

    @staticmethod
    def load() -> None:
        from scoopexec import ScoopExecutor  # noqa: F401  (the package's lazy attribute: the client)

    def coordinator_cpu(self, worker_pids: set[int]) -> float:
        return broker_thread_cpu()

    def map_buffered(
        self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int, buffersize: int
    ) -> Iterator[Any]:
        return self.ex.map(fn, items, chunksize=chunksize, buffersize=buffersize)  # type: ignore[call-arg]


def broker_thread_cpu() -> float:
    """CPU seconds of this process's embedded scoopexec broker thread (psutil, per thread)."""
    import psutil

    ids = {t.native_id for t in threading.enumerate() if t.name == "scoopexec-broker"}
    if not ids:
        return float("nan")
    return float(sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in ids))


class PPEPool(ExecutorPool):
    def __init__(self, n: int) -> None:
        super().__init__(cf.ProcessPoolExecutor(n))

    @staticmethod
    def load() -> None:
        import concurrent.futures.process  # noqa: F401  (concurrent.futures imports it lazily)

    def map_buffered(
        self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int, buffersize: int
    ) -> Iterator[Any]:
        return self.ex.map(fn, items, chunksize=chunksize, buffersize=buffersize)  # type: ignore[call-arg]


class LokyPool(ExecutorPool):
    def __init__(self, n: int) -> None:
        import loky

        super().__init__(loky.ProcessPoolExecutor(n))

    @staticmethod
    def load() -> None:
        import loky  # noqa: F401


class DaskPool(Pool):
    nested = staticmethod(tasks.nested_dask)

    def __init__(self, n: int) -> None:
        from distributed import Client, LocalCluster

        # A 64 MiB argument makes dask warn about a large graph: that is the workload.
        warnings.filterwarnings("ignore", message=".*[Ll]arge.*")
        self.cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.client = Client(self.cluster)

    @staticmethod
    def load() -> None:
        import distributed  # noqa: F401

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return list(self.client.gather(list(handles)))

    def map(self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int = 1) -> Iterable[Any]:
        if chunksize == 1:
            return self.gather(self.client.map(fn, list(items), pure=False))
        chunked = functools.partial(tasks.run_chunk, fn)
        return _flatten(self.gather(self.client.map(chunked, _chunks(items, chunksize), pure=False)))

    def shutdown(self) -> None:
        self.client.close()
        self.cluster.close()


class _RayFuture:
    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def result(self) -> Any:
        import ray

        return ray.get(self.ref)


class RayPool(Pool):
    """An Executor-like adapter around ``ray.remote`` functions (one CPU per task)."""

    nested = staticmethod(tasks.nested_ray)

    def __init__(self, n: int) -> None:
        import ray

        self.ray = ray
        ray.init(
            num_cpus=n,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            _node_ip_address="127.0.0.1",
        )
        self._remote: dict[Any, Any] = {}

    @staticmethod
    def load() -> None:
        import ray  # noqa: F401

    def _fn(self, fn: Callable[..., Any]) -> Any:
        r = self._remote.get(fn)
        if r is None:
            r = self._remote[fn] = self.ray.remote(fn)
        return r

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return _RayFuture(self._fn(fn).remote(*args))

    def gather(self, handles: Sequence[Any]) -> list[Any]:
        return list(self.ray.get([h.ref for h in handles]))

    def map(self, fn: Callable[..., Any], items: Iterable[Any], chunksize: int = 1) -> Iterable[Any]:
        if chunksize == 1:
            r = self._fn(fn)
            return list(self.ray.get([r.remote(x) for x in items]))
        rc = self._fn(tasks.run_chunk)
        return _flatten(self.ray.get([rc.remote(fn, c) for c in _chunks(items, chunksize)]))

    def shutdown(self) -> None:
        self.ray.shutdown()


def _chunks(items: Iterable[Any], n: int) -> list[list[Any]]:
    items = list(items)
    return [items[i : i + n] for i in range(0, len(items), n)]


def _flatten(chunks: Iterable[list[Any]]) -> list[Any]:
    return [x for c in chunks for x in c]


@dataclass
class Contender:
    name: str
    module: str  # what must be importable
    factory: Callable[[int], Pool] | None  # None: run by its own launcher (SCOOP)
    always: bool = False  # part of every run; missing is an error, not a skip
    wide: bool = False  # takes part in the 64-worker measure
    buffered: bool = False  # map(..., buffersize=) exists


CONTENDERS: dict[str, Contender] = {
    c.name: c
    for c in [
        Contender("scoopexec", "scoopexec", ScoopexecPool, always=True, wide=True, buffered=True),
        Contender(
            "ProcessPoolExecutor", "concurrent.futures", PPEPool, always=True, wide=True,
            buffered=sys.version_info >= (3, 14),
        ),
        Contender("loky", "loky", LokyPool, always=True, wide=True),
        Contender("dask", "distributed", DaskPool),
        Contender("Ray", "ray", RayPool),
        Contender("SCOOP", "scoop", None),
    ]
}  # fmt: skip

BASE = "ProcessPoolExecutor"


def availability(python: str, names: Iterable[str]) -> dict[str, str]:
    """For each contender: "" when it can run with ``python``, else why it is skipped."""
    import subprocess

    out: dict[str, str] = {}
    for name in names:
        c = CONTENDERS[name]
        code = f"import {c.module}"
        if c.name == "SCOOP":
            code = (
                "import importlib.metadata as m, scoop.futures; v = m.version('scoop'); "
                "assert v.startswith('0.7.2'), f'SCOOP {v} installed; these benchmarks run 0.7.2'"
            )
        r = subprocess.run(
            [python, "-c", code], check=False, capture_output=True, text=True, timeout=300, env=worker_env()
        )
        if r.returncode == 0:
            out[name] = ""
        else:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            out[name] = f"not installed or not importable ({last}); `pip install '.[bench]'` installs it"
    return out


def worker_env() -> dict[str, str]:
    """Environment for children: this checkout importable (benchmarks.tasks by name)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env
