"""Local workers forked from a template process that imported the worker once.

A worker started by command (``python -m scoopexec worker``) is a fresh interpreter
that spends its first ~80 ms of CPU starting and importing before it can run a task
(issue 17 measured 83 ms a worker against 1 ms for ProcessPoolExecutor's forked
workers, and two such starts on two busy cores delayed a pool's first batch by
0.15-0.25 s).  An embedded pool's local workers therefore come from a *template*:

::

  client (LocalWorkers)                      template (one per pool)         worker
  Template.start() --Popen: python -c serve()--> imports scoopexec.worker.main
  (or clientfork.fork_template(): os.fork() of the client --> serve())
  fork(argv, [stdin, note, link]) --SEQPACKET + SCM_RIGHTS-->  os.fork() --> setsid, fds in place,
            <-- {"seq", "pid"} ---------------------------                  worker main(argv)
            <-- {"seq", "rc"} (its exit status, reaped on SIGCHLD)
  kill(seq) --------------------------------------------->  SIGKILL, if not reaped yet

The template is a fork of the client when the client runs a single thread at the pool's
construction, before the pool starts any (deploy/clientfork.py: no interpreter start, no
imports); otherwise -- another thread could hold a lock that the fork would inherit held
-- or with ``SCOOPEXEC_WORKER_START=template``, a fresh interpreter started like a worker
(same interpreter, environment and directory).  Either starts no thread, so forking it
is safe.  N workers then cost one fork of the client (or one interpreter's start-up)
and N forks.  Each worker gets what a spawned one gets: its own session, the
stdin pipe whose end of file stops it, its exit-note pipe and its socketpair link (the
client made them all and sends them over), and the same command line.  Once the worker's
main() returns, it leaves the template's loop and exits the way a spawned one does (a
fork of the client: with os._exit, see clientfork.py).

The template lives as long as its pool's workers: LocalWorkers.stop() ends the workers
first, then closes the template's stdin, on which it exits; if the client dies, the
template sees its stdin end too and kills the workers still there after a grace period
(they normally exit on their own stdin first).  Remote workers (ssh, srun, a worker
group) are still started by command; ``SCOOPEXEC_WORKER_START=spawn`` starts local
ones by command too (:func:`start_method`).
"""

from __future__ import annotations

import array
import collections
import gc
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

__all__ = [
    "START_METHODS", "ForkedProcess", "Template", "await_pids", "serve", "start_method", "use_template",
]  # fmt: skip

START_ENV = "SCOOPEXEC_WORKER_START"  # how an embedded pool's local workers start: START_METHODS
START_METHODS = ("fork", "template", "spawn")
GRACE = 2.0  # s the template's workers get to exit on their own once the client is gone
_MAX_FDS = 4
_FD_FLAGS = ("--exit-fd", "--link-fd")  # the flags whose values are received descriptors


def start_method() -> str:
    """How an embedded pool's local workers start, from SCOOPEXEC_WORKER_START (ValueError if it
    is none of START_METHODS): "fork" (the default) forks them from a template that is a fork of
    the client when it runs a single thread (deploy/clientfork.py), else a fresh interpreter;
    "template" always from a fresh interpreter; "spawn" starts each by command.  Not on Linux:
    "spawn"."""
    value = os.environ.get(START_ENV, "") or "fork"
    if value not in START_METHODS:
        raise ValueError(f"{START_ENV}={value!r}: expected one of {', '.join(START_METHODS)}")
    linux = hasattr(os, "fork") and sys.platform.startswith("linux")
    return value if linux else "spawn"


def use_template() -> bool:
    """Whether local workers are forked from a template (Linux, unless SCOOPEXEC_WORKER_START=spawn)."""
    return start_method() != "spawn"


# ---------------------------------------------------------------- client side
class Template:
    """The template process of one pool (client side): fork requests and exit statuses."""

    def __init__(self, proc: Any, sock: socket.socket, origin: str = "interpreter") -> None:
        """``proc``: the template process (``pid``, ``stdin``, ``wait()``, ``kill()``, as Popen's);
        ``sock``: our end of its control socket; ``origin``: how it was made, "interpreter" (a
        fresh one, :meth:`start`) or "client" (a fork of this process, deploy/clientfork.py)."""
        self.proc = proc
        self.sock = sock
        self.origin = origin
        self._lock = threading.Lock()
        self._seq = 0
        self._waiting: collections.deque[ForkedProcess] = collections.deque()  # forks without a pid yet
        self._by_seq: dict[int, ForkedProcess] = {}
        self.gone = False  # the template exited (or its socket broke): no more news from it
        self._waiters = 0  # threads in wait_for(), which read the socket, alone, while any waits
        self.env: dict[str, str] | None = None  # the workers' environment, if made with it (clientfork)
        # The script's classes its workers inherited (a fork of the client: wire/mainclasses.Table)
        self.main_classes: Any = None

    @classmethod
    def start(
        cls, python: str, env: dict[str, str], cwd: str | None, pass_fds: tuple[int, ...] = ()
    ) -> Template:
        """A template that is a fresh interpreter, started like a worker: it imports the worker.
        ``pass_fds``: descriptors of ours it, and so each worker it forks, gets at the same numbers."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = (
            "import sys, scoopexec.worker.main as m; from scoopexec.deploy.forkstart import serve; "
            f"sys.exit(serve({theirs.fileno()}, m.main))"
        )
        try:
            proc = subprocess.Popen(
                [python, "-c", code],
                stdin=subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                pass_fds=[theirs.fileno(), *pass_fds],
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(proc, ours)

    def fork(self, argv: list[str], fds: list[int], stdin: IO[bytes]) -> ForkedProcess:
        """Ask for a worker running ``argv`` (after ``-m scoopexec worker``'s ``-m`` part) with
        ``fds`` = [its stdin, then the descriptors named by --exit-fd and --link-fd, in that
        order]; OSError if the template cannot be asked (then start it by command)."""
        with self._lock:
            if self.gone:
                raise OSError("the worker template has exited")
            self._seq += 1
            # The client's numbers of the descriptors after stdin, as argv names them (--exit-fd N...).
            msg = json.dumps({"seq": self._seq, "argv": argv, "names": [str(fd) for fd in fds[1:]]}).encode()
            try:
                self.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            except OSError:
                self.gone = True
                raise
            proc = ForkedProcess(self, self._seq, argv, stdin)
            self._waiting.append(proc)
            self._by_seq[self._seq] = proc
            return proc

    def pump(self) -> None:
        """Read what the template said (pids, exit statuses), without waiting; left to the thread
        that waits for it in :meth:`wait_for`, if one does."""
        with self._lock:
            if not self._waiters:
                self._read()

    def wait_for(self, done: Callable[[], bool], timeout: float) -> bool:
        """Read what the template says until ``done()`` holds (it is looked at holding the lock
        that reading takes), the template is gone or ``timeout`` s passed; return ``done()``.

        A thread waiting on the socket is its only reader: were another to read the news
        between this one's look at ``done()`` and its wait (the broker thread's poll() of a
        starting worker, say), this one would sleep through the news.
        """
        deadline = time.monotonic() + timeout
        while True:
            waiting = False
            try:
                with self._lock:
                    self._read()
                    if done() or self.gone:
                        return done()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._waiters += 1
                    waiting = True
                # (outside the lock: another thread's poll() need not wait for this one)
                _readable(self.sock, min(left, 0.05))
            except (OSError, ValueError):  # closed by stop() meanwhile
                pass
            finally:
                if waiting:
                    with self._lock:
                        self._waiters -= 1

    def _read(self) -> None:
        """Take in what the template said so far (hold `_lock`)."""
        while not self.gone:
            try:
                data = self.sock.recv(4096, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            self._news(json.loads(data))

    def _news(self, msg: dict[str, Any]) -> None:
        proc = self._by_seq.get(int(msg.get("seq", 0)))
        if proc is None:
            return
        if "pid" in msg:
            if self._waiting and self._waiting[0] is proc:
                self._waiting.popleft()
            proc.known_pid = int(msg["pid"])
        if "rc" in msg:
            if proc in self._waiting:  # it could not be forked
                self._waiting.remove(proc)
            proc.returncode = int(msg["rc"])
            del self._by_seq[proc.seq]

    def _lost(self) -> None:
        """The template is gone: what it had not forked never will be; the forked run on alone."""
        self.gone = True
        for proc in self._waiting:
            proc.returncode = 1
            self._by_seq.pop(proc.seq, None)
        self._waiting.clear()

    def kill(self, proc: ForkedProcess) -> None:
        with self._lock:
            gone = self.gone
            if not gone and proc.known_pid is None:
                # Not forked yet, so the template is stuck (this is how a start that makes no
                # progress is ended): end it, and with it every fork it owes.
                self.proc.kill()
                return
            if not gone:
                try:
                    self.sock.send(json.dumps({"seq": proc.seq, "kill": True}).encode())
                    return
                except OSError:
                    self.gone = True
        if proc.known_pid is not None and proc.returncode is None:
            try:  # no template to ask: it was re-parented, signal it directly
                os.kill(proc.known_pid, signal.SIGKILL)
            except OSError:
                pass

    def stop(self, timeout: float = 2.0) -> None:
        """End the template (after its workers): close its stdin, then make sure it is gone."""
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        with self._lock:
            self.gone = True
            self.sock.close()


class ForkedProcess:
    """A worker forked by a :class:`Template`, seen as much like a ``subprocess.Popen`` as
    LocalWorkers needs: ``pid``, ``stdin``, ``poll()``, ``wait()``, ``kill()``, ``returncode``."""

    def __init__(self, template: Template, seq: int, argv: list[str], stdin: IO[bytes]) -> None:
        self.template = template
        self.seq = seq
        self.args = argv
        self.stdin: IO[bytes] | None = stdin
        self.known_pid: int | None = None  # once the template said it
        self.returncode: int | None = None
        self.status_known = True  # False: it exited after its template, and its status is lost

    @property
    def pid(self) -> int:
        """Its pid, waiting for the template to say it if need be; 0 if it never will."""
        self.template.wait_for(self.forked, 60)
        return self.known_pid or 0

    def forked(self) -> bool:
        """Whether the template forked it (or failed to, or is gone: it never will)."""
        return self.known_pid is not None or self.returncode is not None

    def watch_pid(self) -> int:
        """The process to watch while it starts: it, or the template that still owes it."""
        return self.known_pid if self.known_pid is not None else self.template.proc.pid

    def poll(self) -> int | None:
        if self.returncode is None:
            self.template.pump()
            if self.returncode is None and self.template.gone:
                self._orphaned()
        return self.returncode

    def _orphaned(self) -> None:
        """The template died: nobody reaps this worker for us; when it is gone, its status is lost."""
        pid = self.known_pid
        if pid is None or _exited(pid):
            self.returncode = 1
            self.status_known = False

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            if self.template.gone:
                time.sleep(left)
            else:
                self.template.wait_for(lambda: self.returncode is not None, left)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            self.template.kill(self)


def await_pids(procs: list[ForkedProcess], timeout: float) -> None:
    """Wait until the template forked each of ``procs`` (or failed to), ``timeout`` s at most."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.template.wait_for(proc.forked, deadline - time.monotonic())


def _readable(sock: socket.socket, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        return bool(sel.select(timeout))


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in (b"Z", b"X")


# ---------------------------------------------------------------- template side
def serve(control_fd: int, worker_main: Callable[[list[str]], int], collect: bool = True) -> int:
    """The template's loop: fork a worker per request until stdin closes.

    Returns the template's exit status, or -- in a forked worker -- the worker's, once
    ``worker_main`` returned, so that the worker leaves through the interpreter's normal exit.
    ``collect``: collect garbage before freezing what there is (False: a fork of the client,
    which froze what it inherited, and has made little since).
    """
    if threading.active_count() != 1:  # importing the worker started a thread: forking is unsafe
        return 2
    # What the template imported is shared with every worker until written to; the collector
    # would write to it all (its bookkeeping is in each object): leave those objects out of it.
    if collect:
        gc.collect()
    gc.freeze()
    sock = socket.socket(fileno=control_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children: dict[int, int] = {}  # pid -> seq
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(0, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    child: tuple[list[str], list[str], list[int]] | None = None
    running = True
    client = os.getppid()  # a process it forked may hold stdin open after it died: look at it too
    while running and child is None:
        for key, _ in sel.select(1.0):
            if key.fd == wake_r:
                try:
                    os.read(wake_r, 512)
                except OSError:
                    pass
            elif key.fd == 0:
                try:
                    running = bool(os.read(0, 4096))
                except OSError:
                    running = False
            else:
                got = _request(sock, children)
                if got is None:
                    running = False
                elif not isinstance(got, bool):
                    child = got
                    break
        if child is None:
            _reap(sock, children)
            running = running and os.getppid() == client
    if child is not None:  # we are a new worker: drop the template's things, run the worker
        sel.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for fd in (wake_r, wake_w):
            os.close(fd)
        sock.close()
        return _become_worker(*child, worker_main)
    _end_children(sock, children)
    return 0


def _request(
    sock: socket.socket, children: dict[int, int]
) -> tuple[list[str], list[str], list[int]] | bool | None:
    """One message from the client: True when handled here, (argv, fds) in a newly forked
    worker, None when the client is gone."""
    try:
        data, ancdata, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(_MAX_FDS * 4))
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return None
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
            fds.extend(got)
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    msg = json.loads(data)
    seq = int(msg["seq"])
    if msg.get("kill"):
        for pid, s in children.items():
            if s == seq:
                try:
                    os.kill(pid, signal.SIGKILL)  # not reaped yet (_reap runs in this thread): still ours
                except OSError:
                    pass
        return True
    argv = [str(a) for a in msg["argv"]]
    names = [str(n) for n in msg.get("names", [])]
    try:
        pid = os.fork()
    except OSError:
        for fd in fds:
            os.close(fd)
        _tell(sock, {"seq": seq, "rc": 1})
        return True
    if pid == 0:
        return argv, names, fds
    for fd in fds:
        os.close(fd)
    children[pid] = seq
    _tell(sock, {"seq": seq, "pid": pid})
    return True


def _reseed_numpy() -> None:
    """NumPy's legacy global generator, reseeded from the OS in a worker (random reseeds itself in
    a fork's child; numpy's does not: every worker forked from one template drew the same numbers).
    Not while its lock is held: a template forked (mp_context='fork') while another thread of the
    client drew holds it for a thread that is not here, and seed() would wait for ever; the worker
    then draws as a fork of ProcessPoolExecutor's does."""
    nprandom = sys.modules.get("numpy.random")
    gen = getattr(getattr(nprandom, "mtrand", None), "_rand", None)
    lock = getattr(getattr(gen, "_bit_generator", None), "lock", None)
    if nprandom is not None and lock is not None and lock.acquire(blocking=False):
        lock.release()
        nprandom.seed()


def _become_worker(
    argv: list[str], names: list[str], fds: list[int], worker_main: Callable[[list[str]], int]
) -> int:
    """In the forked child: the session, stdin and descriptors a spawned worker would have, then run.

    ``fds``: stdin, then the descriptors the client calls ``names`` in ``argv`` (--exit-fd N).
    """
    os.setsid()
    _reseed_numpy()
    stdin, rest = fds[0], fds[1:]
    os.dup2(stdin, 0)
    os.close(stdin)
    out = list(argv)
    for flag in _FD_FLAGS:  # the client named its own descriptors; ours have other numbers
        if flag in out:
            i = out.index(flag) + 1
            out[i] = str(rest[names.index(out[i])])
    if out[:3] == ["-m", "scoopexec", "worker"]:
        out = out[3:]
    return worker_main(out)


def _tell(sock: socket.socket, msg: dict[str, Any]) -> None:
    try:
        sock.send(json.dumps(msg).encode())
    except OSError:
        pass  # the client is gone: stdin tells the loop


def _reap(sock: socket.socket, children: dict[int, int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        seq = children.pop(pid, None)
        if seq is not None:
            _tell(sock, {"seq": seq, "rc": os.waitstatus_to_exitcode(status)})


def _end_children(sock: socket.socket, children: dict[int, int]) -> None:
    """The client is gone (or done): the workers exit on their own stdin; end those that do not."""
    deadline = time.monotonic() + GRACE
    while children and time.monotonic() < deadline:
        _reap(sock, children)
        time.sleep(0.01)
    for pid in list(children):
        try:
            os.killpg(pid, signal.SIGKILL)  # each leads its own session (setsid): its group
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while children and time.monotonic() < deadline:
        _reap(sock, children)
        time.sleep(0.01)
