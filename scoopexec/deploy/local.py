"""Starting, watching and stopping worker processes on this machine.

Workers run ``python -m scoopexec worker --connect ...`` (contract.py), never forks of a
client that holds sockets and threads: an embedded pool's workers (``link``) are forked
from a template process (forkstart.py) -- a fork of the client made while it still ran a
single thread (clientfork.py), or a fresh interpreter that imported the worker once;
others are fresh interpreters started by command.  Each gets a pipe as stdin and exits
when it reads EOF, so workers never outlive the process that started them, whatever way it ends.  When the
broker needs CURVE keys, they are the first thing written on that pipe.

``python -m scoopexec worker -n N`` runs N workers under one supervising
process (:func:`run_worker_group`): that is what runs on the far side of an
ssh session (ssh.py).  It hands its keys to each worker, replaces workers
that crash, and stops them all when its own stdin closes.

Also here, for whoever watches processes of this machine: :func:`process_state`,
:func:`process_stat` and :func:`process_start` (a process's state letter, CPU time and start
time, in /proc).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from ..wire.security import Credentials, encode_frame
from ..wire.segments import FDS_PER_LINK
from . import contract, forkstart
from .contract import GROUP_MARK, describe_returncode, worker_argv
from .forkstart import ForkedProcess, Template, use_template

__all__ = [
    "PACKAGE_ROOT",
    "THREAD_VARIABLES",
    "LocalWorkers",
    "limit_threads",
    "make_room_for",
    "process_start",
    "process_stat",
    "process_state",
    "remote_pythonpath",
    "run_worker_group",
    "running_groups",
    "use_socketpairs",
    "worker_env",
]

# The directory holding this scoopexec package: workers get it on their PYTHONPATH.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_HOST = socket.gethostname()
MAX_START_FAILURES = 3  # workers that die before saying HELLO, in a row, before giving up
FORK_WAIT = 10.0  # s to wait, at most, for a new template to fork the first workers (it imports first)
FDS_PER_WORKER = 3  # descriptors this process keeps for a local worker: its link, stdin pipe, exit note
FD_MARGIN = 64  # more, for the broker's own, the program's, and the pipes a worker's start opens a moment
# What a new pool itself keeps open besides its workers (measured: 19 for one local worker, 3 of
# them its): its ZeroMQ context, sockets and wake-up pipes.  Short of these, ZeroMQ failed inside
# the pool's start: an abort (libzmq's assertion) or a hang, instead of an error.
POOL_FDS = 16

log = logging.getLogger("scoopexec")


_room_lock = threading.Lock()  # pools starting at once read and raise the limit in turn


def make_room_for(workers: int, per_worker: int = FDS_PER_WORKER, extra: int = 0, spare: int = 0) -> None:
    """Make sure this process may open the descriptors ``workers`` more local workers keep here
    (``per_worker`` each: 2 without a link), and ``extra`` more (a new pool's own: POOL_FDS).
    ``spare`` each may use as well, and may go without (the mappings of its link's segments
    before Python 3.13: wire/segments.py): room is made for them when the hard limit allows,
    never an error.  Linux (it counts /proc/self/fd); elsewhere nothing.

    Without this, a pool of one worker per CPU on a machine with hundreds of them (or any pool
    under a low ``ulimit -n``) failed part-way through its start with a bare ``OSError: [Errno
    24] Too many open files``.  When they would not fit under the soft RLIMIT_NOFILE with
    FD_MARGIN to spare, it is raised to that (never lowered, never past the hard limit;
    logged); when they cannot fit under the hard limit even without the margin, OSError(EMFILE)
    says what is needed, what the limits are and what to do, before anything is started.
    """
    with _room_lock:
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            open_now = len(os.listdir("/proc/self/fd")) - 1  # (less the listing's own)
        except (OSError, ValueError):
            return  # no /proc (not Linux): as before, the start fails where it runs out
        need = open_now + per_worker * workers + extra
        want = need + spare * workers
        if soft == resource.RLIM_INFINITY or want + FD_MARGIN <= soft:
            return
        if hard != resource.RLIM_INFINITY and need > hard:
            raise OSError(
                errno.EMFILE,
                f"starting {workers} local worker(s) needs about {need} open files in this process "
                f"({per_worker} a worker, {extra} for the pool, {open_now} open now), more than its "
                f"limit allows: {soft}, "
                f"and {hard} at most (RLIMIT_NOFILE's hard limit); start fewer workers, or raise "
                "the hard limit (`ulimit -Hn` as root, limits.conf, or a service's LimitNOFILE=) "
                "and the soft one (`ulimit -n`)",
            )
        raised = want + FD_MARGIN if hard == resource.RLIM_INFINITY else min(hard, want + FD_MARGIN)
        if raised <= soft:
            return  # (within the margin of a hard limit it already reaches)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        except (OSError, ValueError):
            return  # not allowed after all: the start says so where it runs out
    log.info(
        "raised this process's open-file limit from %d to %d for %d more local workers", soft, raised, workers
    )


def use_socketpairs() -> bool:
    """Whether local workers get a socketpair link (wire/framing.py) rather than the ipc endpoint.

    On Linux only, where the broker can see a worker's process state in /proc;
    SCOOPEXEC_LOCAL_TRANSPORT=zmq chooses the ipc endpoint (for comparisons).
    """
    value = os.environ.get("SCOOPEXEC_LOCAL_TRANSPORT", "")
    chosen = value.strip().lower()
    if chosen not in ("", "link", "zmq"):  # (a typo silently meant the default)
        raise ValueError(f"SCOOPEXEC_LOCAL_TRANSPORT={value!r}: expected one of link (the default), zmq")
    return sys.platform.startswith("linux") and chosen != "zmq"


def process_state(pid: int) -> bytes | None:
    """The state letter of a process in /proc/PID/stat (b"R", b"S", b"T", b"Z", ...); None if gone."""
    stat = process_stat(pid)
    return stat[0] if stat is not None else None


def process_stat(pid: int) -> tuple[bytes, int] | None:
    """A process's state letter and the CPU time it used (clock ticks) from /proc/PID/stat.

    None if it is gone (or there is no /proc).
    """
    fields = _stat_fields(pid)
    try:
        return (fields[0], int(fields[11]) + int(fields[12])) if fields else None  # utime + stime
    except (IndexError, ValueError):
        return None


def process_start(pid: int) -> bytes | None:
    """When a process started (/proc/PID/stat's starttime): None once it has ended (a zombie
    has), or if there is no /proc.  Two processes that had one pid differ in it."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return fields[19]  # (field 22)


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat's fields from the third (the state) on; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()
    except OSError:
        return None


def remote_pythonpath() -> str:
    """PYTHONPATH for workers elsewhere (ssh, srun): where this scoopexec lives, then ours."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if PACKAGE_ROOT not in parts:
        parts.insert(0, PACKAGE_ROOT)
    return os.pathsep.join(parts)


def worker_env(env: Mapping[str, str] | None = None, ours: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a local worker: ours (``ours``: a copy of os.environ made already),
    with this scoopexec importable."""
    out = dict(os.environ if ours is None else ours)
    if env:
        out.update(env)
    path = out.get("PYTHONPATH", "")
    parts = [p for p in path.split(os.pathsep) if p]
    if PACKAGE_ROOT not in parts:
        out["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *parts])
    return out


# The variables that size the thread pools of BLAS (OpenBLAS, MKL, BLIS, Accelerate), OpenMP,
# numexpr and numba, read when each library loads.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def limit_threads(env: dict[str, str], workers: int) -> dict[str, str]:
    """Set each of THREAD_VARIABLES that ``env`` leaves unset to this machine's cores divided
    among ``workers`` (at least 1); ``env`` is changed and returned.

    Otherwise every worker's BLAS starts a thread per core: N workers on N cores run N x N
    threads, and OpenBLAS's spin while they wait for work, taking the cores from the tasks
    (2 workers doing 200 x 200 matrix products on 2 cores: 15x slower).  A value the user set,
    in the environment or with ``env=``, is kept.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    share = str(max(1, cores // max(1, workers)))
    for name in THREAD_VARIABLES:
        env.setdefault(name, share)
    return env


def to_null(ends: Iterable[Any]) -> None:
    """Point the descriptors of these files and sockets (None, or closed ones: skipped) at
    /dev/null, close-on-exec as they were: in a fork, what the parent's pool owns (let_go)."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    try:
        for end in ends:
            try:
                fd = end.fileno() if end is not None else -1
                if fd >= 0:
                    os.dup2(null, fd, inheritable=False)
            except (OSError, ValueError):  # (closed already)
                pass
    finally:
        os.close(null)


class LocalWorkers:
    """N worker processes on this machine, replaced when they die.

    With ``link`` (an embedded broker's ``links.add``) each worker is handed one
    end of a socketpair (``--link-fd``) and never connects to ``connect``.
    """

    def __init__(
        self,
        connect: str,
        n: int,
        *,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        heartbeat: float = 1.0,
        heartbeat_timeout: float = 5.0,
        replace: bool = True,
        keys: Credentials | None = None,
        tag_prefix: str = "",
        flags: Mapping[str, Any] | None = None,
        link: Callable[[socket.socket], object] | None = None,
        template: Template | None = None,
        wait: bool = True,
        pass_fds: tuple[int, ...] = (),
        fork_only: str = "",
    ) -> None:
        """``wait``: return once the template has forked the ``n`` workers (else :meth:`confirm`
        does, later: an embedded pool makes its broker meanwhile).  ``fork_only``: why every
        worker must be a fork of the template (none is then started by command)."""
        self.connect = connect
        # With `link` (the embedded broker's links.add), each worker gets one end of a
        # socketpair instead of connecting to `connect` through ZeroMQ (wire/framing.py).
        self.link = link
        self.keys = keys
        self.tag_prefix = tag_prefix or f"L{os.getpid()}"
        # Worker flags (contract.OPTIONS) besides those every local worker gets.
        self.flags = dict(flags or {}, key_stdin=keys is not None)
        self.python = python
        # N workers share this machine's cores (a client-forked template's workers have it already)
        made = template.env if template is not None else None
        self.env = made if made is not None else limit_threads(worker_env(env), n)
        self.cwd = cwd
        self.heartbeat = heartbeat
        self.heartbeat_timeout = heartbeat_timeout
        self.replace_dead = replace
        self.procs: dict[str, subprocess.Popen[bytes] | ForkedProcess] = {}
        # Embedded workers are forked from a template (forkstart.py): ``template`` (a fork of the
        # client, clientfork.py), else a fresh interpreter started with the first worker.
        self.template: Template | None = template
        self.pass_fds = pass_fds  # the client's descriptors each worker gets (worker/handover.py)
        # Why a worker must be forked from the template, when it must (an initializer that only
        # inheritance passes: worker/handover.py): none starts by command then.
        self.fork_only = fork_only
        self._fork = link is not None and (template is not None or use_template())
        self.started: dict[str, float] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._stopping = False
        self.start_failures = 0
        self.exits: dict[str, int] = {}
        self.hello: set[str] = set()
        self._note_fds: dict[str, int] = {}  # tag -> the read end of its exit-note pipe
        self.notes: dict[str, str] = {}  # tag -> why it exited, in its own words (contract.py)
        self.start_timeout = contract.START_TIMEOUT
        self.killed: dict[str, str] = {}  # tag -> why we killed it while it was starting
        self.status_lost: dict[str, str] = {}  # "exited" after their template, or "unforked" by it
        self._progress: dict[str, tuple[int, float]] = {}  # starting tag -> (CPU ticks, since)
        self._stopped_since: dict[str, float] = {}  # starting tag -> seen stopped since
        self._unconfirmed: list[ForkedProcess] = []  # forks asked for, pids not awaited yet
        self.add(n, wait)

    def _spawn(self) -> str:
        with self._lock:
            if self._stopping:
                return ""  # none after stop_starting(): what kill_workers() signals is every process
            self._count += 1
            tag = f"{self.tag_prefix}.{self._count}"
            ours = theirs = None
            note_r, note_w = os.pipe()  # its exit note, if it ends for a reason of its own
            os.set_blocking(note_r, False)
            passed = [note_w]
            if self.link is not None:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                passed.append(theirs.fileno())
            cmd = [
                self.python or sys.executable,
                *worker_argv(
                    connect=self.connect,
                    watch_stdin=True,
                    heartbeat=self.heartbeat,
                    heartbeat_timeout=self.heartbeat_timeout,
                    tag=tag,
                    link_fd=theirs.fileno() if theirs is not None else None,
                    exit_fd=note_w,
                    **self.flags,
                ),
            ]
            try:
                proc = self._start(cmd, passed)
            except BaseException:
                os.close(note_r)
                os.close(note_w)
                if ours is not None and theirs is not None:
                    ours.close()
                    theirs.close()
                raise
            os.close(note_w)
            self._note_fds[tag] = note_r
            if ours is not None and theirs is not None and self.link is not None:
                theirs.close()
                self.link(ours)
            if self.keys is not None and proc.stdin is not None:
                try:
                    proc.stdin.write(encode_frame(self.keys))
                    proc.stdin.flush()
                except OSError:
                    pass  # it died at once: reap() will tell
            self.procs[tag] = proc
            self.started[tag] = time.monotonic()
            return tag

    def _start(self, cmd: list[str], passed: list[int]) -> subprocess.Popen[bytes] | ForkedProcess:
        """Fork the worker from the template, or start it by command (no template, or it failed)."""
        if self._fork:
            try:
                if self.template is None:
                    self.template = Template.start(cmd[0], self.env, self.cwd, self.pass_fds)
                r, w = os.pipe()
                stdin = os.fdopen(w, "wb")
                try:
                    return self.template.fork(cmd[1:], [r, *passed], stdin)
                except BaseException:
                    stdin.close()
                    raise
                finally:
                    os.close(r)
            except OSError:
                if not self._template_gone():
                    raise  # (out of descriptors, say: tried again, from the same template)
                self._fork = False  # the template is gone: this worker and the next start by command
                if self.fork_only:
                    raise  # (a worker started by command would fail its set-up: see replace())
        return subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            close_fds=True,
            pass_fds=[*passed, *self.pass_fds],
        )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in list(self.procs.values())]  # a copy: reap() deletes from another thread

    def reap(self, only: Collection[str] | None = None) -> list[tuple[str, int, int]]:
        """The workers that exited since (tag, pid, exit status); ``only``: look at those tags only."""
        out = []
        with self._lock:
            tags = list(self.procs) if only is None else [t for t in only if t in self.procs]
            for tag in tags:
                proc = self.procs[tag]
                rc = proc.poll()
                if rc is not None:
                    del self.procs[tag]
                    forked = proc if isinstance(proc, ForkedProcess) else None
                    lost = forked is not None and not forked.status_known  # (rc made up: its template died)
                    self._progress.pop(tag, None)
                    self._stopped_since.pop(tag, None)
                    fd = self._note_fds.pop(tag, None)
                    if fd is not None:
                        welcomed, note = contract.read_notes(fd)
                        os.close(fd)
                        if welcomed:
                            self.mark_hello(tag)  # it reached its broker: not a failed start
                        if lost and note is not None and note[0] in contract.REASONS:
                            rc, lost = note[0], False  # it said what it exited with, just before
                        if note is not None and note[0] == rc and rc in contract.REASONS:
                            self.notes[tag] = note[1]
                    self.exits[tag] = rc
                    if lost:
                        self.status_lost[tag] = "exited" if forked and forked.known_pid else "unforked"
                    if proc.stdin is not None:
                        try:
                            proc.stdin.close()
                        except OSError:
                            pass
                    out.append((tag, proc.pid, rc))
        for _, pid, _ in out:
            _end_group(pid, signal.SIGTERM)  # what the dead worker's tasks left running
        return out

    def owns_process(self, tag: str) -> bool:
        """Whether ``tag`` is (or was) one of these processes."""
        return tag in self.procs or tag in self.exits

    def add(self, n: int, wait: bool = True) -> None:
        """Start ``n`` more workers: once this returns, they are processes (``pids``), forked ones
        too (``wait`` False: once :meth:`confirm` returns)."""
        first = not self.procs and not self.exits  # (a new pool: its own descriptors too)
        per_worker = FDS_PER_WORKER if self.link is not None else FDS_PER_WORKER - 1
        make_room_for(n, per_worker, POOL_FDS if first else 0, FDS_PER_LINK if self.link is not None else 0)
        tags = [self._spawn() for _ in range(n)]
        forked = [p for p in map(self.procs.get, tags) if isinstance(p, ForkedProcess)]
        if not wait:
            self._unconfirmed += forked
        elif forked:
            forkstart.await_pids(forked, FORK_WAIT)

    def confirm(self) -> None:
        """Wait until the template forked the workers asked of it (FORK_WAIT s at most)."""
        forked, self._unconfirmed = self._unconfirmed, []
        if forked:
            forkstart.await_pids(forked, FORK_WAIT)

    def mark_hello(self, tag: str) -> None:
        self.hello.add(tag)
        self.start_failures = 0

    def starting(self) -> int:
        """Worker processes started that have not said HELLO yet."""
        if len(self.hello) >= self._count:
            return 0  # the common case, without a scan
        return sum(1 for tag in self.procs if tag not in self.hello)

    def check_starting(self, stopped_limit: float) -> list[str]:
        """Kill the starting workers (no HELLO yet) that cannot start; say why, for each.

        One stopped (SIGSTOP, a debugger) for ``stopped_limit`` s, as a worker
        that said HELLO would be lost for it, or one that used no CPU for
        ``start_timeout`` s (contract.START_TIMEOUT), would otherwise keep its
        place in the pool forever while tasks wait for it.  A worker that is
        slow to start because the machine is busy still gets CPU time: it is
        left alone.  The broker reaps, reports and replaces what is killed.
        """
        if not self.starting():
            return []
        now = time.monotonic()
        out = []
        with self._lock:
            for tag, proc in self.procs.items():
                if tag in self.hello or tag in self.killed:
                    continue
                # (a forked worker the template has not made yet: the template's progress)
                stat = process_stat(proc.watch_pid() if isinstance(proc, ForkedProcess) else proc.pid)
                if stat is None:
                    continue  # exited (reap() tells), or no /proc here
                state, cpu = stat
                seen = self._progress.get(tag)
                if seen is None or seen[0] != cpu:
                    seen = self._progress[tag] = (cpu, now)
                why = ""
                if state in (b"T", b"t"):
                    since = self._stopped_since.setdefault(tag, now)
                    if now - since >= stopped_limit:
                        why = (
                            f"was stopped for {now - since:.1f} s before it said hello to the broker "
                            "(SIGSTOP or a debugger) and was killed"
                        )
                else:
                    self._stopped_since.pop(tag, None)
                    if now - seen[1] >= self.start_timeout:
                        why = (
                            f"did not say hello to the broker, and used no CPU for {now - seen[1]:.0f} s, "
                            f"{now - self.started[tag]:.0f} s after it started: it was killed (stuck at "
                            "start-up: a sitecustomize or .pth file, or an import, waiting on something?)"
                        )
                if why:
                    self.killed[tag] = why
                    proc.kill()
                    out.append(f"worker process {tag} (pid {proc.pid}) {why}")
        return out

    def replace(self, tag: str) -> bool:
        """Start a replacement for the worker ``tag`` that exited; False if we should not."""
        if self._stopping or not self.replace_dead or self.why_not_replaced(tag):
            return False
        if tag not in self.hello:
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                return False
        return bool(self._spawn())

    def let_go(self) -> None:
        """In a fork of this process (pools._after_fork_in_child): the copies of the pipes whose end
        of file ends the pool's template and workers, and of the template's control socket, point
        to /dev/null here.  Else the template (a fork of a process with another pool, under
        mp_context='fork') or the child of a user's fork held them open, the pool's template never
        saw its stdin end, and its shutdown waited 2 s before killing it.  The Python objects keep
        their numbers (a later close by them must not hit a descriptor reused here)."""
        ends: list[Any] = [p.stdin for p in list(self.procs.values())]
        if self.template is not None:
            ends += [self.template.proc.stdin, self.template.sock]
        to_null(ends)

    def _template_gone(self) -> bool:
        template = self.template
        return template is None or template.gone or template.proc.poll() is not None

    def why_not_replaced(self, tag: str) -> str:
        """Why no worker can replace ``tag``, in words; "" when one can be started."""
        if not self.fork_only or not self._template_gone():
            return ""
        pid = f" (pid {self.template.proc.pid})" if self.template is not None else ""
        return (
            f"the pool's worker template{pid}, a fork of this process, has ended, and a worker "
            f"started otherwise cannot get the pool's initializer: {self.fork_only}"
        )

    def own_exit(self, tag: str) -> bool:
        """Whether the worker ``tag`` ended for a reason of its own or ours, not by its task's hand."""
        return tag in self.notes or tag in self.killed

    def exit_known(self, tag: str) -> bool:
        """Whether the exit status of ``tag`` is known (not when it exited after its template)."""
        return tag not in self.status_lost

    def describe_exit(self, tag: str, returncode: int) -> str:
        killed = self.killed.get(tag)
        if killed is not None:
            return f"worker process {tag} {killed}"
        note = self.notes.get(tag)
        if note is not None:
            return f"worker process {tag} {describe_returncode(returncode, _HOST, own=True)}: {note}"
        lost = self.status_lost.get(tag)
        if lost == "unforked":
            return f"worker process {tag} never started: the pool's worker template ended before it forked it"
        if lost is not None:  # (a note it left would have told its status: reap())
            return (
                f"worker process {tag} has exited, how is not known: the pool's worker template, "
                "its parent, which reaps it and tells its exit status, had ended before it"
            )
        return f"worker process {tag} {describe_returncode(returncode, _HOST)}"

    def wait_exit(self, tag: str, timeout: float) -> None:
        """Wait up to ``timeout`` s for ``tag``'s exit to be known: a forked one's template tells
        it (its status comes a fraction of a millisecond after its link's end, where a fixed
        sleep held the broker's loop 5 ms); another is looked at again after ``timeout``."""
        proc = self.procs.get(tag)
        if isinstance(proc, ForkedProcess) and not proc.template.gone:
            proc.template.wait_for(lambda: proc.returncode is not None, timeout)
        else:
            time.sleep(timeout)

    def kill(self, tag: str) -> None:
        """SIGKILL one worker (a hung one); reap() reports it and replace() starts another."""
        with self._lock:
            proc = self.procs.get(tag)
        if proc is not None and proc.poll() is None:
            proc.kill()

    def stop_starting(self) -> None:
        """Start no more workers (no replacement either); once this returns, ``pids`` is all of them."""
        with self._lock:  # a start under way finishes first: it is in ``procs`` then
            self._stopping = True

    def stop(self, timeout: float = 2.0) -> None:
        """Close every worker's stdin (they exit on EOF), then make sure they are gone."""
        self._stopping = True
        with self._lock:
            procs = list(self.procs.items())
        for _, proc in procs:
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        for _, proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    pass
        # Processes the tasks started (a loky pool in a task, say) outlive a worker
        # that exits at once; each worker leads its own session, so they are its group.
        groups = [proc.pid for _, proc in procs if _end_group(proc.pid, signal.SIGTERM)]
        deadline = time.monotonic() + 1.0
        while groups and time.monotonic() < deadline:
            time.sleep(0.02)
            groups = running_groups(groups)
        for g in groups:
            _end_group(g, signal.SIGKILL)
        with self._lock:
            self.procs.clear()
            fds, self._note_fds = list(self._note_fds.values()), {}
        for fd in fds:
            os.close(fd)
        if self.template is not None:  # after its workers: it would end them less gently
            self.template.stop()


def running_groups(pgids: Iterable[int]) -> list[int]:
    """The process groups of ``pgids`` that have a process that has not ended.  A signal 0 to a
    group counts its zombies too, and an orphan's zombie may never be reaped: a task's child
    outlives its worker, ends on SIGTERM, and its new parent (PID 1 of a container, often) does
    not reap it; waiting for that group to empty took every shutdown a second.  So a group that
    answers the signal is running unless /proc (read once for all) shows members of it, every one
    ended; a group /proc does not show (another PID namespace's, or no /proc) is running."""
    answering = [g for g in pgids if _end_group(g, 0)]
    if not answering:
        return []
    live: set[bytes] = set()
    ended: set[bytes] = set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return answering
    for name in names:
        if name.isdigit():
            fields = _stat_fields(int(name))  # (state, ppid, pgrp, ...)
            if fields and len(fields) > 2:
                (ended if fields[0] in (b"Z", b"X") else live).add(fields[2])
    return [g for g in answering if str(g).encode() in live or str(g).encode() not in ended]


def _end_group(pgid: int, sig: int) -> bool:
    """Signal the process group of an exited worker; False when it has no process left."""
    if pgid <= 1:
        return False  # no pid known (0 would be our own group)
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def run_worker_group(
    args: Any,
    connect: str,
    keys: Credentials | None,
    n: int,
    env: Mapping[str, str] | None = None,
    announce: bool = True,
) -> int:
    """``python -m scoopexec worker -n N``: N workers as children of this process.

    Workers that crash are replaced (unless they keep dying before reaching
    the broker); workers that lost the broker or were refused are not (they
    say so in an exit note: a task's exit code is never taken for that).  With
    ``--watch-stdin`` the group stops when its stdin closes (its ssh session or
    launcher is gone); with ``--ready`` it first prints how many workers to
    expect, and each worker prints a line once connected.  ``env``: variables for the workers
    (a launcher's ``env=``, received with the keys).
    """
    flags = {
        "ready": args.ready,
        "connect_timeout": args.connect_timeout or None,
        "no_forward_output": args.no_forward_output,
        "keep_cwd": args.keep_cwd,
        "max_tasks": args.max_tasks,
        "memory_limit": args.memory_limit,
        "max_lifetime": args.max_lifetime,
        "max_message_size": args.max_message_size,
    }
    stop = threading.Event()
    if args.watch_stdin:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

        def watch() -> None:
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            stop.set()

        threading.Thread(target=watch, name="scoopexec-stdin", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.ready and announce:  # (not announced: one worker that recycles, run as a group of 1)
        os.write(1, GROUP_MARK + b" %d\n" % n)
    host = socket.gethostname()
    group = LocalWorkers(
        connect,
        n,
        env=env,
        heartbeat=args.heartbeat,
        heartbeat_timeout=args.heartbeat_timeout,
        replace=True,
        keys=keys,
        tag_prefix=args.tag or f"G{os.getpid()}",
        flags=flags,
    )
    codes: list[int] = []
    own: list[bool] = []
    try:
        while group.procs and not stop.is_set():
            for tag, pid, rc in group.reap():
                mine = group.own_exit(tag)
                if (not mine or rc == contract.EXIT_RECYCLED) and group.replace(tag):
                    what = "replaced"
                else:
                    codes.append(rc)
                    own.append(mine)
                    what = "not replaced" + (f": {contract.REASONS[rc]}" if mine else " (it keeps failing)")
                print(
                    f"scoopexec worker group on {host}: worker {tag} (pid {pid}) "
                    f"{describe_returncode(rc, own=mine)}; {what}",
                    file=sys.stderr,
                    flush=True,
                )
            stop.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        group.stop()
    if stop.is_set() or not codes:
        return 0
    # The group's status is its own verdict: a worker's code only when every one said why.
    return codes[-1] if all(own) else 1
