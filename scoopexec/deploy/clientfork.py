"""A pool's worker template made by forking the client itself, when that is safe.

A template that is a fresh interpreter (forkstart.Template.start) spends ~0.1 s of CPU
starting and importing before it forks the first worker, and each worker then imports the
user's main module again.  ProcessPoolExecutor's workers on Linux are forks of the client:
a few milliseconds.  A fork is unsafe in a process with other threads (one of them may hold
a lock, of malloc, logging or the import system, which the child inherits held forever),
but a process with exactly one OS thread (Linux: one entry in /proc/self/task, the test
CPython's own fork warning makes) has no other thread to hold anything.  So an embedded
pool forks its template from the client when the client has one thread at the pool's
construction -- the template is made first, before the pool starts its broker thread --
and falls back to a fresh interpreter otherwise, silently (a log line at debug level):
a process with a thread of its own (a pool already running, a watcher) gets today's
template, unless its pool was given mp_context=get_context('fork'): then it is forked all
the same, as multiprocessing forks, with a DeprecationWarning (template_for, fork_template).
The one exception is the pool of a pthreads OpenBLAS (NumPy's starts one as it loads),
which OpenBLAS itself stops before any fork: a client whose only other threads are those is
forked too (fork_safe(), deploy/threadlibs.py), and the BLAS and OpenMP libraries
the client had loaded get the workers' thread counts in the child.  The template runs
forkstart.serve(), as the fresh one does; :attr:`forkstart.Template.origin` says which it
is ("client" or "interpreter").

What the workers then see is what a fork gives (ProcessPoolExecutor's, on Linux before
3.14): the client's modules and their state as of the pool's construction, including
the main module, which a worker does not import again (mainmodule.inherit()); names the
script defines or changes after that are not there, as on a fresh worker (cloudpickle sends
the script's own functions and classes by value, and DEAP's creator classes travel by value
too: integrations/deap.py; a class of the script the workers inherited goes by reference while
it is unchanged, wire/mainclasses.py; a class made later in another module's namespace by some other
registry is found by name, and is not there).  Every descriptor the
client had open then stays open in the template and its workers until they exit (a pipe
to a program the client started keeps that program from seeing its end of file while the
pool lives).  ``SCOOPEXEC_WORKER_START=template`` (or ``mp_context=`` a 'spawn' context,
``python=`` another interpreter, ``env=`` naming a variable read at start-up such as
PYTHONPATH: STARTUP_VARIABLES) gives workers that inherit nothing; ``worker_memory_limit=``
too, since a fork's resident memory counts the client's pages.

The fork is made hygienic, so that nothing of the client acts in it:

* the collector is off across the fork and the child freezes every inherited object
  (``gc.freeze()``): no client object is collected there, so no ``__del__`` closes or
  writes to a descriptor the client owns;
* the client's atexit handlers are dropped in the child, and the template and its
  workers end with ``os._exit`` (after running only the handlers registered since and
  flushing their own stdio): neither the client's atexit nor threading's (the executor's
  shutdown hooks, concurrent.futures') runs there; the client flushes its stdio first;
* signal handlers the client set are reset to a fresh interpreter's, the logging
  handlers it added are dropped (the worker forwards its records to the client, which
  logs them with its handlers), the environment becomes the workers' (env=, thread
  limits), and the child leads its own session, as a fresh template does;
* of the descriptors, the child closes exactly the client's ends of the two made for it
  (its stdin pipe, whose end of file is the client's death, and its control socket) and
  takes the pipe as its stdin; the client's others are left alone (Python objects own
  them: closing their numbers here would let a later close hit a reused number);
* random's state is reseeded by os.register_at_fork, in the template and each worker.
"""

from __future__ import annotations

import atexit
import functools
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

from .. import mainmodule
from ..wire import mainclasses, serialize
from ..worker import lifeline
from ..worker.main import main as worker_main
from . import threadlibs
from .contract import LaunchOptions
from .forkstart import Template, serve, start_method
from .local import limit_threads, use_socketpairs, worker_env

__all__ = ["STARTUP_VARIABLES", "ClientFork", "fork_safe", "fork_template", "single_threaded", "template_for"]

log = logging.getLogger("scoopexec")
Pools = tuple[list[str], list[str]]  # the OpenBLAS and OpenMP libraries loaded (threadlibs.pool_libraries)
# env= variables that act when a process, its C library or the interpreter starts (PYTHONPATH,
# PYTHONHASHSEED, LD_PRELOAD, the time zone, the locale and stdio encoding, malloc's tunables),
# which a fork has done already: setting them in the forked child's os.environ changes nothing.
STARTUP_VARIABLES = ("PYTHON", "LD_", "TZ", "LANG", "LC_", "MALLOC_", "GLIBC_TUNABLES")


def single_threaded() -> bool:
    """Whether this process runs exactly one OS thread (False where that cannot be known)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def fork_safe() -> bool:
    """Whether this process may be forked: it runs one OS thread, or no Python thread besides
    this one and no thread but the pools of OpenBLAS (NumPy's), which stop around a fork
    (deploy/threadlibs.py)."""
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        return False
    if threads == 1:
        return True
    return threading.active_count() == 1 and threadlibs.pool_threads() == threads - 1


def _stop_idle_zmq_collector() -> bool:
    """Stop pyzmq's garbage-collector thread when it is the only other thread and holds nothing;
    whether it was stopped.  A zero-copy send of a large frame (a remote client receiving a
    large result, say) starts that thread, with a ZeroMQ context of its own, and it lives as long
    as the process: every later pool would get a fresh-interpreter template (0.13 s slower to
    start).  pyzmq starts it again at its next zero-copy send; while it holds a frame that
    ZeroMQ has not released, it is left alone."""
    garbage = sys.modules.get("zmq.utils.garbage")
    collector = getattr(garbage, "gc", None)
    if collector is None or threading.active_count() != 2:
        return False
    try:
        others = [t for t in threading.enumerate() if t is not threading.current_thread()]
        if not collector.is_alive() or others != [collector.thread] or collector.refs:
            return False
        collector.stop()
    except Exception:  # (a pyzmq of another shape: then a fresh template, as before)
        log.debug("pyzmq's garbage-collector thread could not be stopped", exc_info=True)
        return False
    return True


def _threads() -> int | str:
    """This process's OS threads (native ones included), or "several" where /proc says nothing."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return "several"


def _settles(within: float = 0.05) -> bool:
    """Whether this process comes down to one thread within ``within`` s, when no other Python
    thread is alive: the thread of a pool just shut down has ended, but the OS may list it a
    moment longer (a native library's threads, which never end, make it wait in vain)."""
    deadline = time.monotonic() + within
    while threading.active_count() == 1 and time.monotonic() < deadline:
        time.sleep(0.002)
        if fork_safe():
            return True
    return False


class ClientFork:
    """The template process forked from this one, as forkstart.Template uses it (Popen's
    ``pid``, ``stdin``, ``poll()``, ``wait()``, ``kill()``)."""

    def __init__(self, pid: int, stdin_fd: int) -> None:
        self.pid = pid
        self.stdin = os.fdopen(stdin_fd, "wb")
        self.returncode: int | None = None
        # Threads that poll at once (the broker's, and one stopping the pool) reap in turn: the
        # one that lost a race to waitpid() would see ChildProcessError and record 1 over the
        # winner's exit status (as Popen's _waitpid_lock prevents).
        self._reaping = threading.Lock()

    def poll(self) -> int | None:
        if self.returncode is None:
            with self._reaping:
                if self.returncode is None:
                    try:
                        pid, status = os.waitpid(self.pid, os.WNOHANG)
                    except ChildProcessError:  # reaped already, not by us (SIGCHLD ignored, say)
                        self.returncode = 1
                    else:
                        if pid:
                            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(["scoopexec worker template"], timeout or 0.0)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass


def template_for(options: LaunchOptions, n: int) -> Template | None:
    """The template of a new embedded pool of ``n`` local workers, forked from this process,
    if its workers may be forks of the client and it runs a single thread (or ``force_fork``:
    mp_context='fork', threads or not); else None (the pool starts a fresh template, or its
    workers by command, as LocalWorkers decides).  ValueError: forks were asked for and another
    option asks for fresh workers."""
    if n < 1 or not options.fork_client:
        return None
    unforkable = _fresh_because(options)
    if unforkable:
        if options.force_fork:
            raise ValueError(
                f"mp_context with the 'fork' start method cannot be honoured: {unforkable}, which "
                "needs workers started fresh; leave mp_context out, or pass get_context('spawn')"
            )
        return None
    environ = dict(os.environ)  # (read once: os.environ decodes each name and value it gives)
    env = limit_threads(worker_env(options.env, environ), n)
    return fork_template(env, options.cwd if options.keep_cwd else None, environ, options.force_fork)


def _fresh_because(options: LaunchOptions) -> str:
    """What makes the pool's local workers fresh interpreters, if anything ("": they may be forks)."""
    if not use_socketpairs():
        return "local workers use the ipc endpoint (SCOOPEXEC_LOCAL_TRANSPORT=zmq, or not Linux)"
    if start_method() != "fork":
        return f"SCOOPEXEC_WORKER_START={start_method()} is set"
    if os.path.abspath(options.python) != os.path.abspath(sys.executable):
        # python= another interpreter, or another venv (whose bin/python resolves to the same
        # binary as ours, with another sys.prefix: so the paths are compared as given)
        return f"python={options.python!r} is another interpreter"
    if options.recycle.get("memory_limit"):
        return "worker_memory_limit= is set (a fork's resident memory would count this process's pages)"
    startup = sorted(name for name in options.env if name.startswith(STARTUP_VARIABLES))
    if startup:
        return f"env= sets {', '.join(startup)}, which only an interpreter's start reads"
    return ""


def _env_changes(
    env: dict[str, str], environ: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """What makes this process's environment (``environ``: a copy of it) ``env``: the names to
    unset, and the variables to set (those that differ only: each is a putenv).  Read here,
    before the fork, where it costs a fraction of what it does in the child (whose every look
    at a string inherited from us writes its reference count: a copy-on-write fault for each
    page touched)."""
    if environ is None:
        environ = dict(os.environ)
    unset = [name for name in environ if name not in env]
    return unset, {name: value for name, value in env.items() if environ.get(name) != value}


def _handled_loggers() -> list[logging.Logger]:
    """The loggers that have handlers here (the root and named ones), for the child to drop."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [lg for lg in loggers if isinstance(lg, logging.Logger) and lg.handlers]


def fork_template(
    env: dict[str, str], cwd: str | None, environ: dict[str, str] | None = None, force: bool = False
) -> Template | None:
    """The template of a new pool, forked from this process; None when this process runs more
    than one thread (unless ``force``: mp_context='fork', as multiprocessing forks, with the
    DeprecationWarning Python gives such a fork) or cannot fork: then start a fresh one.
    ``env``: the workers' environment (``environ``: the copy of os.environ it was made from);
    ``cwd``: their directory (None: ours)."""
    if not fork_safe():
        _stop_idle_zmq_collector()
    threaded = not fork_safe() and not _settles()
    if threaded and not force:
        log.debug("a thread besides this one runs: the pool's worker template is a fresh interpreter")
        return None
    if threaded:  # (before anything is made: a filter may make the warning an error)
        warnings.warn(
            f"This process (pid={os.getpid()}) is multi-threaded ({_threads()} threads); "
            "mp_context='fork' forks it for the pool's workers, as multiprocessing's 'fork' "
            "does: a lock another thread holds then stays held in them, which may deadlock them",
            DeprecationWarning,
            stacklevel=serialize.user_stacklevel(),  # (the user's line that made the pool)
        )
    main = mainmodule.describe() if mainmodule.executing() else {}
    # The libraries mapped here, for the child to give its BLAS and OpenMP the workers' thread
    # counts: the same mappings there, read here in a fraction of what a fresh fork takes.
    pools = threadlibs.pool_libraries(threadlibs.maps())
    threadlibs.shorten_spin(pools[0])  # OpenBLAS restarts its pool after the fork: spinning less
    signals = _changed_signals()
    changes = _env_changes(env, environ)
    handled = _handled_loggers()
    # The script's classes the workers inherit, listed and noted now (wire/mainclasses.py): nothing
    # of the user's runs from here to the fork.
    names = mainclasses.Table()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stdin_r, stdin_w = os.pipe()
    # Else the child would write our buffered output again (it flushes all four when it ends).
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    collecting = gc.isenabled()
    gc.disable()  # until the child froze what it inherits
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns of any fork of a process with threads; the only ones here are
            # OpenBLAS's, which it stops around the fork (fork_safe).
            warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
            pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:
        _child(ours, theirs, stdin_r, stdin_w, env, cwd, main, (pools, signals, changes, handled), names)
    if collecting:
        gc.enable()
    os.close(stdin_r)
    theirs.close()
    if pid < 0:
        os.close(stdin_w)
        ours.close()
        return None
    template = Template(ClientFork(pid, stdin_w), ours, origin="client")
    template.env = env
    template.main_classes = names
    return template


def _child(
    ours: socket.socket, theirs: socket.socket, stdin_r: int, stdin_w: int,
    env: dict[str, str], cwd: str | None, main: dict[str, Any],
    seen: tuple[Pools, list[tuple[int, Any]], tuple[list[str], dict[str, str]], list[logging.Logger]],
    names: mainclasses.Table,
) -> NoReturn:  # fmt: skip
    """The template, forked from the client: leave the client behind, then serve.  ``seen``: what
    the client read of itself just before (its BLAS and OpenMP libraries, its changed signal
    handlers, what differs in the workers' environment, its loggers with handlers); ``names``:
    the script's classes listed then (its workers' results send them by reference)."""
    pools, signals, (unset, changed), handled = seen
    code = 1
    try:
        gc.freeze()  # every object of the client: never collected here
        gc.enable()
        atexit._clear()  # the client's; ours (registered from now on) run at the end
        os.close(ours.detach())
        os.close(stdin_w)
        os.dup2(stdin_r, 0)
        os.close(stdin_r)
        os.setsid()
        _fresh_signals(signals)
        _drop_log_handlers(handled)
        for name in unset:
            del os.environ[name]
        for name, value in changed.items():
            os.environ[name] = value
        if pools[0] or pools[1]:
            _limit_loaded_libraries(env, pools)
        if cwd is not None:
            os.chdir(cwd)
        mainmodule.inherit(main)
        mainclasses.set_active(names)
        code = serve(theirs.detach(), worker_main, collect=False)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else _say(exc.code))
    except BaseException:
        traceback.print_exc()
    _exit(code)


def _limit_loaded_libraries(env: dict[str, str], pools: Pools) -> None:
    """The thread counts the workers' environment sets, given to the BLAS and OpenMP the client
    had loaded (which read the environment when they loaded, not now): else every worker's BLAS
    would run a thread per core, as the client's does."""
    try:
        blas = threadlibs.count(env, "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
        threadlibs.limit(blas, threadlibs.count(env, "OMP_NUM_THREADS"), pools=pools)
    except Exception:  # (a library that answers oddly: its workers keep the client's count)
        traceback.print_exc()


def _say(what: object) -> int:
    print(what, file=sys.stderr)
    return 1


def _exit(code: int) -> NoReturn:
    """End this fork of the client: the atexit handlers registered since the fork, our stdio
    flushed, and nothing of the client's exit."""
    try:
        atexit._run_exitfuncs()
    except BaseException:
        pass
    lifeline.flush_multiprocessing()  # (the client's atexit, multiprocessing's among them, was dropped)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:
            pass
    os._exit(code)


def _changed_signals() -> list[tuple[int, Any]]:
    """The signals whose handlers here are not those a fresh interpreter starts with, and those:
    looked at in the client before the fork (the child inherits the very same handlers), where
    it costs a fraction of what it does in a fresh fork, on the way to every worker.

    Read through ``_signal``, the C module under ``signal``, where there is one: ``signal``'s
    functions wrap every number and handler they return in an enum, which made this look 0.16
    ms of each pool's start (0.005 ms without them, measured at 6a5b9e2)."""
    fresh: dict[int, Any] = {signal.SIGINT: signal.default_int_handler, signal.SIGPIPE: signal.SIG_IGN}
    if hasattr(signal, "SIGXFSZ"):
        fresh[signal.SIGXFSZ] = signal.SIG_IGN
    changed: list[tuple[int, Any]] = []
    for sig in _valid_signals():
        want = fresh.get(sig, signal.SIG_DFL)
        try:
            now = _getsignal(sig)
        except (OSError, ValueError):
            continue
        if now is not None and now != want:  # (SIG_DFL and SIG_IGN are IntEnums: 0 and 1 compare equal)
            changed.append((sig, want))
    return changed


@functools.cache
def _valid_signals() -> tuple[int, ...]:
    """The signals whose handlers can be looked at and set (once: the set is the platform's)."""
    unset = (signal.SIGKILL, signal.SIGSTOP)
    return tuple(sorted(int(s) for s in signal.valid_signals() if s not in unset))


# (signal imported _signal; an interpreter without it: signal's own, slower)
_getsignal: Callable[[int], Any] = getattr(sys.modules.get("_signal"), "getsignal", signal.getsignal)


def _fresh_signals(changed: list[tuple[int, Any]]) -> None:
    """The signal handlers a fresh interpreter starts with, wherever the client set others."""
    for sig, want in changed:
        try:
            signal.signal(sig, want)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.set_wakeup_fd(-1)


def _drop_log_handlers(handled: list[logging.Logger]) -> None:
    """The client's logging handlers (files, its stderr; ``handled``: its loggers that have any,
    :func:`_handled_loggers`): a worker forwards its records to the client instead, as a fresh
    one does.  Dropped, not closed: they are the client's."""
    for logger in handled:
        logger.handlers = []
