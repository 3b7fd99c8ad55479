"""Workers started elsewhere, by a launcher process: an ssh session per host, or an srun step.

A launch waits until every worker has connected to the broker, so that an
unreachable host, a refused key or a missing Python fails the executor's
construction with ssh's own message instead of leaving tasks waiting forever.
Each launcher process is a :class:`RemoteGroup`; :class:`Launchers` is every
source of workers of one pool (local ones included), which the broker watches
as one ProcessWatcher.  How the commands look: ssh.py, slurm.py, contract.py.
"""

from __future__ import annotations

import collections
import functools
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import LaunchError
from ..wire.security import Credentials, encode_frame
from . import slurm, ssh
from .contract import GROUP_MARK, READY_MARK, LaunchOptions, describe_returncode, worker_argv
from .hosts import Host
from .local import LocalWorkers, to_null

if TYPE_CHECKING:
    from .elastic import JobPool

__all__ = ["Launchers", "RemoteGroup", "Target", "launch_all"]


class Target(NamedTuple):
    """Where launched workers connect: an endpoint, or a port to connect back to through ssh."""

    connect: str | None
    connect_back: int | None
    keys: Credentials


class RemoteGroup:
    """The workers one launcher process (an ssh session, an srun step) started.

    Its worker tags are ``TAG`` (srun tasks) or ``TAG.N`` (a worker group).
    """

    def __init__(
        self,
        tag: str,
        host: str,
        kind: str,
        argv: list[str],
        *,
        keys: Credentials,
        expected: int | None,
        env: Mapping[str, str] | None = None,
        hint: str = "",
        preamble: bytes = b"",
        worker_env: Mapping[str, str] | None = None,
    ) -> None:
        """``env``: the launcher process's environment (srun passes it on); ``preamble``: what its
        stdin carries before the key header (ssh: the command, ssh.remote_script); ``worker_env``:
        the variables for the workers, sent in the key header (never on a command line)."""
        self.tag = tag
        self.host = host
        self.kind = kind
        self.argv = argv
        self.keys = keys
        self.expected = expected
        self.hint = hint
        self.ready = 0
        self.hello = 0
        self.launched = False  # every expected worker connected once
        self.retired = False  # stopped on purpose: its end is not a loss
        self.reaped = False
        self.tail: collections.deque[str] = collections.deque(maxlen=30)
        self._held: list[str] = []  # stderr lines held back until the launch is decided
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(preamble + encode_frame(keys, worker_env))
            self.proc.stdin.flush()
        except OSError:
            pass  # it is already gone: the relay thread sees EOF and wait_ready() reports it
        self._relay = threading.Thread(
            target=self._relay_output, name=f"scoopexec-{kind}-{host}", daemon=True
        )
        self._relay.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    # ------------------------------------------------------------- output
    def _relay_output(self) -> None:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out_fd, err_fd = self.proc.stdout.fileno(), self.proc.stderr.fileno()
        pending = {out_fd: b"", err_fd: b""}
        sel = selectors.DefaultSelector()
        for fd in pending:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        try:
            while pending:
                for key, _ in sel.select():
                    fd = key.fd
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    lines = (pending[fd] + chunk).split(b"\n")
                    if not chunk:
                        sel.unregister(fd)
                        del pending[fd]
                        if lines[-1]:
                            self._line(fd == out_fd, lines[-1])
                        continue
                    pending[fd] = lines.pop()
                    for line in lines:
                        self._line(fd == out_fd, line)
        finally:
            sel.close()
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _line(self, is_stdout: bool, line: bytes) -> None:
        if is_stdout and line.startswith(GROUP_MARK):
            with self._cond:
                try:
                    self.expected = int(line.split()[1])
                except (IndexError, ValueError):
                    pass
                self._cond.notify_all()
            return
        if is_stdout and line.startswith(READY_MARK):
            with self._cond:
                self.ready += 1
                self._cond.notify_all()
            return
        text = line.decode("utf-8", "replace").rstrip("\r")
        if not is_stdout:
            self.tail.append(text)
        with self._cond:
            if not self.launched:
                self._held.append(text)
                return
        _echo(f"[{self.host}] {text}", is_stdout)

    # ------------------------------------------------------------- launch
    def wait_ready(self, deadline: float) -> None:
        """Block until every worker connected; raise LaunchError if that cannot happen."""
        with self._cond:
            while True:
                if self.expected is not None and self.ready >= self.expected:
                    break
                if self._eof or self.proc.poll() is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
            done = self.expected is not None and self.ready >= self.expected
            if done:
                self.launched = True
                held, self._held = self._held, []
        if done:
            for text in held:
                _echo(f"[{self.host}] {text}", False)
            return
        # Give ssh a moment to finish its message and exit.
        try:
            rc = self.proc.wait(2.0 if self._eof else 0.0)
        except subprocess.TimeoutExpired:
            rc = None
        self._relay.join(1.0)
        if rc is None:
            got = f"{self.ready} of {self.expected}" if self.expected is not None else "none"
            why = f"its workers did not all connect in time ({got} did)"
        else:
            why = describe_returncode(rc, own=self._group_status)
            if self.kind == "ssh" and rc == 255:
                why = "ssh failed (exit status 255)"
        message = "\n".join(self._held or list(self.tail)).strip()
        raise LaunchError(self.host, why, message, self.hint)

    @property
    def _group_status(self) -> bool:
        """Its exit status is a worker group's verdict (contract.py): ssh runs a group; an srun
        step's status is its tasks' (workers', whose code a task may have chosen)."""
        return self.kind == "ssh"

    # ------------------------------------------------------------- end
    def poll(self) -> int | None:
        return self.proc.poll()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def stop(self, timeout: float = 3.0) -> None:
        """EOF on its stdin (its workers stop), then make sure the local process is gone."""
        self.close_stdin()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        self._relay.join(2.0)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def describe_exit(self, rc: int) -> str:
        last = " | ".join(list(self.tail)[-3:])
        how = describe_returncode(rc, own=self._group_status)
        what = f"the {self.kind} session for host {self.host} ended ({how})"
        return f"{what}: {last}" if last else what


def _echo(text: str, is_stdout: bool) -> None:
    out = sys.stdout if is_stdout else sys.stderr
    if out is None:
        return
    try:
        out.write(text + "\n")
        out.flush()
    except (OSError, ValueError):
        pass


class Launchers:
    """Every source of workers of one pool, seen by the broker as one ProcessWatcher.

    Local worker processes are watched and replaced as before; a remote group
    that ends is reported once (its workers are lost together) and not
    restarted.
    """

    def __init__(self, local: LocalWorkers | None) -> None:
        self.local = local
        self.groups: dict[str, RemoteGroup] = {}
        self.job_pools: list[JobPool] = []  # batch jobs submitted as work comes (elastic.py)
        self._lock = threading.Lock()
        self._count = 0

    def forked(self) -> None:
        """This process is a fork of the pool's (pools._after_fork_in_child): see LocalWorkers.let_go;
        a remote group's launcher (ssh, srun) too stops its workers when its stdin ends."""
        if self.local is not None:
            self.local.let_go()
        to_null(group.proc.stdin for group in list(self.groups.values()))

    def next_tag(self, prefix: str) -> str:
        with self._lock:
            self._count += 1
            return f"{prefix}{os.getpid()}-{self._count}"

    def add(self, group: RemoteGroup) -> None:
        with self._lock:
            self.groups[group.tag] = group

    def add_jobs(self, pool: JobPool) -> None:
        with self._lock:
            self.job_pools.append(pool)

    def jobs(self) -> list[dict[str, Any]]:
        """The batch jobs of the pool's job pools, for its status."""
        with self._lock:
            pools = list(self.job_pools)
        return [j for p in pools for j in p.status()]

    def discard(self, group: RemoteGroup) -> None:
        with self._lock:
            self.groups.pop(group.tag, None)

    def _group_of(self, tag: str) -> RemoteGroup | None:
        return self.groups.get(tag.split(".", 1)[0])

    def _is_local(self, tag: str) -> bool:
        return self.local is not None and tag.startswith(self.local.tag_prefix + ".")

    # --- ProcessWatcher
    def reap(self, only: Collection[str] | None = None) -> list[tuple[str, int, int]]:
        out = self.local.reap(only) if self.local is not None else []
        if only is not None:
            return out  # (only local workers are looked for this way: Supervisor.expect_exit)
        with self._lock:
            groups = list(self.groups.values())
        for g in groups:
            if g.reaped:
                continue
            rc = g.poll()
            if rc is not None:
                g.reaped = True
                if not g.retired:
                    out.append((g.tag, g.pid, rc))
        return out

    def owns_process(self, tag: str) -> bool:
        return self._is_local(tag)

    def mark_hello(self, tag: str) -> None:
        if self._is_local(tag):
            assert self.local is not None
            self.local.mark_hello(tag)
            return
        g = self._group_of(tag)
        if g is not None:
            g.hello += 1

    def starting(self) -> int:
        n = self.local.starting() if self.local is not None else 0
        with self._lock:
            for g in self.groups.values():
                if g.expected is not None and not g.reaped:
                    n += max(0, g.expected - g.hello)
        return n

    def check_starting(self, stopped_limit: float) -> list[str]:
        """Local workers that cannot start are killed (see LocalWorkers.check_starting)."""
        return self.local.check_starting(stopped_limit) if self.local is not None else []

    def wait_exit(self, tag: str, timeout: float) -> None:
        """Wait up to ``timeout`` s for news of a local worker's exit (LocalWorkers.wait_exit)."""
        if self.local is not None and self._is_local(tag):
            self.local.wait_exit(tag, timeout)
        else:
            time.sleep(timeout)

    def kill(self, tag: str) -> None:
        """End a hung local worker (remote ones end with their ssh session or the broker)."""
        if self.local is not None and self._is_local(tag):
            self.local.kill(tag)

    def replace(self, tag: str) -> bool:
        if self._is_local(tag):
            assert self.local is not None
            return self.local.replace(tag)
        return False

    def why_not_replaced(self, tag: str) -> str:
        return self.local.why_not_replaced(tag) if self.local is not None and self._is_local(tag) else ""

    def own_exit(self, tag: str) -> bool:
        """Whether ``tag`` ended for a reason of its own (a group's end always is: no task runs in it)."""
        if self._is_local(tag):
            assert self.local is not None
            return self.local.own_exit(tag)
        return self._group_of(tag) is not None

    def exit_known(self, tag: str) -> bool:
        """Whether ``tag``'s exit status is known (a local worker that exited after its template: not)."""
        return not self._is_local(tag) or self.local is None or self.local.exit_known(tag)

    def describe_exit(self, tag: str, returncode: int) -> str:
        g = self._group_of(tag)
        if g is not None:
            return g.describe_exit(returncode)
        if self.local is not None:
            return self.local.describe_exit(tag, returncode)
        return f"worker {tag} {describe_returncode(returncode)}"

    # --- life cycle
    @property
    def pids(self) -> list[int]:
        return self.local.pids if self.local is not None else []

    @property
    def local_procs(self) -> list[Any]:
        """The local workers' process handles (subprocess.Popen, or forkstart.ForkedProcess)."""
        return list(self.local.procs.values()) if self.local is not None else []  # (a copy: see pids)

    def stop_starting(self) -> None:
        """Start no more local workers, nor replacements (before ending them all: kill_workers())."""
        if self.local is not None:
            self.local.stop_starting()

    def processes(self) -> list[int]:
        """The local worker processes and those of the sessions (ssh, srun) running remote ones."""
        with self._lock:
            groups = list(self.groups.values())
        return self.pids + [g.proc.pid for g in groups if g.proc.poll() is None]

    def stop(self) -> None:
        with self._lock:
            groups = list(self.groups.values())
        for g in groups:
            g.retired = True
            g.close_stdin()
        if self.local is not None:
            self.local.stop()
        for g in groups:
            g.stop()
        for pool in self.job_pools:
            pool.stop()  # cancels its jobs, waits until the scheduler lists none

    def start_remote(
        self, hosts: Sequence[Host], srun: int, target: Callable[[str], Target], options: LaunchOptions
    ) -> list[RemoteGroup]:
        """Start worker groups on the hosts that are not this one (ssh) and ``srun`` workers;
        return once all are connected (LaunchError, and none started, if one cannot be)."""
        makers: list[Callable[[], RemoteGroup]] = []
        common = {
            "key_stdin": True,
            "watch_stdin": True,
            "ready": True,
            "heartbeat": options.heartbeat,
            "heartbeat_timeout": options.heartbeat_timeout,
            "connect_timeout": options.launch_timeout * 0.75,  # says why before we give up
            "keep_cwd": options.keep_cwd,
            **options.recycle,
        }
        for h in hosts:
            if h.local:
                continue
            where = target("ssh")
            tag = self.next_tag("S")
            args = worker_argv(
                connect=where.connect,
                connect_back=where.connect_back,
                tag=tag,
                workers=str(h.slots) if h.slots is not None else "auto",
                **common,
            )
            argv = ssh.ssh_command(h, ssh=options.ssh, connect_timeout=options.connect_timeout)
            script = ssh.remote_script(python=options.python, cwd=options.cwd, args=args)
            makers.append(
                functools.partial(
                    RemoteGroup, tag, h.name, "ssh", argv, keys=where.keys, expected=None,
                    hint=ssh.hint(options.python, options.cwd), preamble=script, worker_env=options.env,
                )
            )  # fmt: skip
        if srun:
            where = target("srun")
            tag = self.next_tag("R")
            args = worker_argv(connect=where.connect, tag=tag, **common)
            makers.append(
                functools.partial(
                    RemoteGroup, tag, "the SLURM allocation", "srun",
                    slurm.srun_command(srun, args, python=options.python, cwd=options.cwd),
                    keys=where.keys, expected=srun, env=slurm.srun_env(options.env), hint=slurm.HINT,
                )
            )  # fmt: skip
        groups = launch_all(makers, options.launch_timeout) if makers else []
        for g in groups:
            self.add(g)
        return groups


def launch_all(groups: Sequence[Callable[[], RemoteGroup]], timeout: float) -> list[RemoteGroup]:
    """Start every group, wait until all are ready; on any failure stop them all and raise."""
    started: list[RemoteGroup] = []
    try:
        for make in groups:
            started.append(make())
        deadline = time.monotonic() + timeout
        errors: list[LaunchError] = []
        for g in started:
            try:
                g.wait_ready(deadline)
            except LaunchError as exc:
                errors.append(exc)
        if errors:
            if len(errors) == 1:
                raise errors[0]
            raise LaunchError.several(errors)
    except BaseException:
        for g in started:
            g.retired = True
            g.close_stdin()
        for g in started:
            g.stop(timeout=2.0)
        raise
    return started
