"""The native thread pools a client may have loaded before it forks its workers' template.

Two facts for deploy/clientfork.py, read from the libraries themselves (Linux):

* :func:`pool_threads`: how many threads OpenBLAS's own pools account for.  NumPy loads
  OpenBLAS, which starts a pool of one thread fewer than its thread count at once, so a
  client that only imported NumPy runs more than one thread.  A pthreads build of OpenBLAS
  stops that pool before any fork (its ``pthread_atfork`` handler) and starts it again when
  next needed, so those threads are no reason not to fork.  When the threads of the process
  beyond its main one are exactly these, and no Python thread runs, the fork is as safe as
  in a single-threaded process.  An OpenMP build, or a library that cannot be asked, counts
  as unknown (None): any thread it has then keeps the fresh template.
* :func:`shorten_spin`: after each call it makes with threads, OpenBLAS's pool spins (busy,
  ``sched_yield``) for 2**28 clock cycles (about 0.1 s) before its threads sleep.  A client
  that runs NumPy between its maps (DEAP's CMA-ES: ``generate``, ``map``, ``update``) thus
  spins a core or more through each map, on the cores its workers need.  OpenBLAS reads that
  time from ``OPENBLAS_THREAD_TIMEOUT`` when it starts its pool, which it does again after a
  fork: so before the client forks its workers' template, the library is made to read it
  (``openblas_read_env``) as :data:`SPIN_TIMEOUT` unless the user set it.
* :func:`limit`: a fresh worker's BLAS and OpenMP read their thread count from the
  environment the pool gives it (deploy/local.limit_threads) when they load; a forked one
  inherits libraries loaded already, with the client's counts.  The forked template sets
  those counts itself, through the same calls threadpoolctl uses, before any worker forks.

Only shared objects already mapped into this process are looked at (``/proc/self/maps``);
nothing is loaded for this.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = ["blas_threads", "count", "limit", "maps", "pool_libraries", "pool_threads", "shorten_spin"]

# OpenBLAS's entry points carry a prefix and a suffix in some builds (NumPy's and SciPy's
# wheels: scipy_openblas_get_num_threads64_).
_OPENBLAS_AFFIXES = (
    ("openblas_", ""), ("openblas_", "64_"), ("scipy_openblas_", "64_"), ("scipy_openblas_", ""),
)  # fmt: skip
_OPENMP_LIBS = ("libgomp", "libiomp", "libomp")
_BLAS_LIBS = ("libopenblas", "libscipy_openblas")
_PTHREADS = 1  # openblas_get_parallel(): 0 sequential, 1 pthreads, 2 OpenMP
SPIN_TIMEOUT = 20  # OPENBLAS_THREAD_TIMEOUT: spin 2**20 cycles (~0.4 ms), not OpenBLAS's 2**28


def maps() -> bytes:
    """/proc/self/maps (~0.2 ms to read: the kernel writes it out; more in a fresh fork), or nothing."""
    try:
        with open("/proc/self/maps", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _mapped(names: tuple[str, ...], data: bytes | None = None) -> list[str]:
    """Paths of the shared objects mapped here whose file name starts with one of ``names``
    (``data``: /proc/self/maps, read already)."""
    found: list[str] = []
    data = maps() if data is None else data
    low = data.lower()
    if not any(name.encode() in low for name in names):
        return found  # (the usual answer, without a look at each of its hundreds of lines)
    for line in data.decode("utf-8", "replace").splitlines():
        path = line.partition("/")[2]
        if path and os.path.basename(path).lower().startswith(names) and "/" + path not in found:
            found.append("/" + path)
    return found


def pool_libraries(mapped: bytes) -> tuple[list[str], list[str]]:
    """The OpenBLAS and the OpenMP libraries among ``mapped`` (:func:`maps`): two lists of paths,
    found with one look at the text in the usual case of neither."""
    low = mapped.lower()
    if not any(name.encode() in low for name in (*_BLAS_LIBS, *_OPENMP_LIBS)):
        return [], []
    return _mapped(_BLAS_LIBS, mapped), _mapped(_OPENMP_LIBS, mapped)


def _function(lib: Any, name: str, restype: Any, argtypes: list[Any]) -> Callable[..., Any] | None:
    try:
        fn = getattr(lib, name)
    except AttributeError:
        return None
    fn.restype = restype
    fn.argtypes = argtypes
    return fn  # type: ignore[no-any-return]


def _loaded(path: str) -> Any:
    """The library at ``path`` if it is loaded here already (never loads it), or None."""
    import ctypes  # (here: a client with no such library never imports ctypes)

    try:
        return ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return None


def _openblas(path: str, what: str, restype: Any, argtypes: list[Any]) -> Callable[..., Any] | None:
    lib = _loaded(path)
    if lib is None:
        return None
    for prefix, suffix in _OPENBLAS_AFFIXES:
        fn = _function(lib, f"{prefix}{what}{suffix}", restype, argtypes)
        if fn is not None:
            return fn
    return None


def pool_threads() -> int | None:
    """Threads held by the pools of the OpenBLAS builds loaded here (each: its thread count
    less one); None if one of them is no pthreads build or cannot be asked.

    A pool stopped by a fork (ours, or any ``subprocess`` with ``preexec_fn``) starts again
    only when next used: its threads would not be there to count, and another thread could
    pass for them.  So each pool is first set to its own count, which starts it again."""
    total = 0
    for path in _mapped(_BLAS_LIBS):
        import ctypes

        parallel = _openblas(path, "get_parallel", ctypes.c_int, [])
        count = _openblas(path, "get_num_threads", ctypes.c_int, [])
        restart = _openblas(path, "set_num_threads", None, [ctypes.c_int])
        if parallel is None or count is None or restart is None:
            return None
        kind = parallel()
        if kind == _PTHREADS:
            threads = count()
            restart(threads)
            total += max(0, threads - 1)
        elif kind != 0:
            return None
    return total


def blas_threads() -> int | None:
    """The thread count of the first OpenBLAS loaded here that answers, or None."""
    for path in _mapped(_BLAS_LIBS):
        import ctypes

        fn = _openblas(path, "get_num_threads", ctypes.c_int, [])
        if fn is not None:
            return int(fn())
    return None


def limit(
    blas: int | None, openmp: int | None, mapped: bytes | None = None,
    pools: tuple[list[str], list[str]] | None = None,
) -> None:  # fmt: skip
    """Give the BLAS and OpenMP libraries loaded here these thread counts (a forked worker's
    share of the cores, which its environment gives the ones that load later); None: leave.
    ``mapped``: :func:`maps` as read already (by the process this one is a fork of), or
    ``pools``: :func:`pool_libraries` of it."""
    if pools is None:
        if mapped is None:
            mapped = maps() if blas or openmp else b""
        pools = pool_libraries(mapped)
    blas_libs = pools[0] if blas else []
    openmp_libs = pools[1] if openmp else []
    if not blas_libs and not openmp_libs:
        return
    import ctypes

    for path in blas_libs:
        fn = _openblas(path, "set_num_threads", None, [ctypes.c_int])
        if fn is not None:
            fn(blas)
    for path in openmp_libs:
        lib = _loaded(path)
        fn = None if lib is None else _function(lib, "omp_set_num_threads", None, [ctypes.c_int])
        if fn is not None:
            fn(openmp)


def count(env: dict[str, str], *names: str) -> int | None:
    """The first of ``names`` set in ``env`` to a positive integer, as an int; else None."""
    for name in names:
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def shorten_spin(blas_libs: list[str] | None = None) -> int:
    """Have each pthreads OpenBLAS loaded here spin :data:`SPIN_TIMEOUT` (as a power of two
    of clock cycles) after a call, from the next start of its pool (after a fork: call this
    just before one), unless ``OPENBLAS_THREAD_TIMEOUT`` is set; how many were told.
    ``blas_libs``: the OpenBLAS paths (:func:`pool_libraries`) as found already."""
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return 0  # the user's choice
    if blas_libs is None:
        blas_libs = _mapped(_BLAS_LIBS)
    told = 0
    for path in blas_libs:
        import ctypes

        parallel = _openblas(path, "get_parallel", ctypes.c_int, [])
        read = _openblas(path, "read_env", None, [])
        if parallel is None or read is None or parallel() != _PTHREADS:
            continue
        # It reads the whole environment again: only this variable differs from what it
        # read when it loaded, and the rest is used only then.
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(SPIN_TIMEOUT)
        try:
            read()
        finally:
            del os.environ["OPENBLAS_THREAD_TIMEOUT"]
        told += 1
    return told
