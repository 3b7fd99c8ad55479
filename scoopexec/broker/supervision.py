"""Peers that go away, and local worker processes that exit: the broker's supervision.

* A client gone (its connection closed, or it said BYE): the tasks that serve it are
  dropped and cancelled on their workers.
* A worker lost (its connection or process gone, or stopped for heartbeat_timeout): each
  task it held is queued again, or given up (LOST) when lost more than max_retries times,
  with the likely cause in words -- the exit status of a local process, which is waited
  for briefly; a local worker that is alive but unreachable is killed.
* A local worker process that exited is replaced, unless workers keep dying before they
  say HELLO; with no worker left and none to come, every client's pool is broken with the
  reasons.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..deploy.contract import EXIT_RECYCLED
from ..errors import ProtocolError
from ..trace import limit_kind
from ..wire import protocol as P
from .ledger import EXIT_UNKNOWN, ClientState, Ledger, Task, WorkerState
from .ports import LINK_CLOSED

if TYPE_CHECKING:
    from ..trace import TraceRecorder
    from .ports import LinkPort, RouterPort

__all__ = ["ProcessWatcher", "Supervisor"]

_STATUS = operator.itemgetter(1)  # a RESULT entry's status

log = logging.getLogger("scoopexec.broker")

RETRY_START = 1.0  # s before starting again a worker that could not be started
EXIT_WATCH = 0.25  # s a local worker that said BYE is looked for, every QUICK_REAP s, until it exits
QUICK_REAP = 0.002
SETUP_DEATHS = 3  # local workers ended by a client's set-up in a row before its pool is broken


class ProcessWatcher(Protocol):
    """Local worker processes the broker should watch and replace (deploy/groups.Launchers)."""

    def reap(self, only: Collection[str] | None = None) -> list[tuple[str, int, int]]: ...  # (tag, pid, rc)
    def mark_hello(self, tag: str) -> None: ...
    def owns_process(self, tag: str) -> bool: ...  # a local process it can reap
    def starting(self) -> int: ...
    def check_starting(self, stopped_limit: float) -> list[str]: ...  # kills the stuck; says why
    def kill(self, tag: str) -> None: ...
    def wait_exit(self, tag: str, timeout: float) -> None: ...  # at most timeout s, less if news come
    def replace(self, tag: str) -> bool: ...
    def why_not_replaced(self, tag: str) -> str: ...  # "" unless a replacement cannot be started
    def own_exit(self, tag: str) -> bool: ...  # it ended for a reason of its own (deploy/contract.py)
    def describe_exit(self, tag: str, returncode: int) -> str: ...
    def exit_known(self, tag: str) -> bool: ...  # False: it exited, nobody could tell how
    def jobs(self) -> list[dict[str, Any]]: ...  # batch jobs that bring workers (deploy/elastic.py)


class _Broker(Protocol):
    ledger: Ledger
    router: RouterPort
    links: LinkPort
    watcher: ProcessWatcher | None
    trace: TraceRecorder | None
    heartbeat_timeout: float
    max_retries: int
    endpoint: str

    @property
    def stopping(self) -> bool: ...
    def result(self, owner: bytes, tid: int, status: int, body: Sequence[Any]) -> None: ...
    def send(self, key: bytes, frames: Sequence[Any]) -> None: ...
    def cancel_on_workers(self, cancels: dict[bytes, list[tuple[int]]]) -> None: ...
    def break_client(self, c: ClientState, kind: str, message: str) -> None: ...


class Supervisor:
    """The broker's handling of peers that go away (see the module docstring)."""

    def __init__(self, broker: _Broker) -> None:
        self.b = broker
        self.retry: list[str] = []  # workers whose replacement could not be started
        self.retry_at = 0.0
        self.leaving: dict[str, float] = {}  # local workers that said BYE -> until when to look
        self._next_look = 0.0

    def reap(self, only: Collection[str] | None = None) -> None:
        """On a tick: handle the local worker processes that exited (``only``: those of these
        tags); try again to start the replacements that could not be started (out of file
        descriptors, of memory)."""
        watcher = self.b.watcher
        if watcher is not None:
            for tag, _pid, rc in watcher.reap(only):
                self.exited(tag, rc)
            if self.retry and time.monotonic() >= self.retry_at and not self.b.stopping:
                tags, self.retry = self.retry, []
                for tag in tags:
                    self._start(watcher, tag)

    def expect_exit(self, tag: str) -> None:
        """A worker said BYE: if it is a local process (it retires, to be replaced), look for its
        exit every QUICK_REAP s, not on the next tick only, so that its replacement starts at
        once (max_tasks_per_child=1 cost 50 ms a task, the tick's period)."""
        watcher = self.b.watcher
        if tag and watcher is not None and watcher.owns_process(tag):
            self.leaving[tag] = time.monotonic() + EXIT_WATCH

    def look_for_leavers(self, now: float) -> None:
        """In the loop's turn while ``leaving``: reap (at most every QUICK_REAP s)."""
        if now < self._next_look:
            return
        self._next_look = now + QUICK_REAP
        self.reap(list(self.leaving))
        for tag, until in list(self.leaving.items()):
            if until <= now:  # (still running: the tick's reap will see it)
                del self.leaving[tag]

    def _start(self, watcher: ProcessWatcher, tag: str) -> bool:
        """watcher.replace(tag), surviving what the system refuses (EMFILE, ENOMEM, EAGAIN):
        logged, counted in the status ('faults'), tried again a second later."""
        try:
            return watcher.replace(tag)
        except OSError as exc:
            ledger = self.b.ledger
            ledger.faults["worker start failed"] += 1
            why = f"could not start a worker to replace {tag}: {exc}"
            ledger.recent_losses.append(why)
            log.warning("%s; trying again in %g s", why, RETRY_START)
            self.retry.append(tag)
            self.retry_at = time.monotonic() + RETRY_START
            return False

    def peer_gone(self, key: bytes, why: str) -> None:
        ledger = self.b.ledger
        w = ledger.workers.get(key)
        if w is not None:
            self.lose_worker(w, why)
        if key in ledger.clients:
            log.info("client %s left (%s)", key.hex(), why)
            self.b.router.forget(key)
            self.b.cancel_on_workers(ledger.remove_client(key)[1])
        ledger.observers.discard(key)

    def on_setup_done(self, key: bytes, w: WorkerState, msg: P.Message) -> None:
        """SETUP_DONE: the worker applied a client's set-up (main module, initializer), or says
        why it could not: then that client's pool is broken."""
        c = self.b.ledger.setups.get(msg.arg)
        if msg.count:  # applied
            w.set_up.add(msg.arg)
            if c is not None:
                c.setup_deaths = 0
            return
        if c is not None and not c.broken and msg.arg in w.setups:  # (only a set-up it was sent)
            main = len(msg.frames) > 2 and P.as_bytes(msg.frames[2]) == b"main"  # importing its script
            self.b.break_client(c, "main" if main else "initializer", msg.text or "set-up failed")

    def _died_setting_up(self, w: WorkerState, reason: str) -> None:
        """A local worker process ended while applying set-ups (it had said SETUP_DONE for none
        of them: on its link, that message comes before any task runs): an initializer that
        ends its process (os._exit, a crash).  The tasks it held did not run; after
        SETUP_DEATHS such workers in a row, the client's pool is broken, as when its initializer
        raises: before, each task was blamed and retried, and workers were started for ever."""
        for sid in w.setups - w.set_up:
            c = self.b.ledger.setups.get(sid)
            if c is None or c.broken:
                continue
            c.setup_deaths += 1
            if c.setup_deaths >= SETUP_DEATHS:
                self.b.break_client(
                    c, "initializer",
                    f"the workers' set-up (the pool's initializer, or importing its script) ended "
                    f"{c.setup_deaths} worker processes in a row before it returned; the last: "
                    f"{w.where}: {reason}",
                )  # fmt: skip

    def lose_worker(self, w: WorkerState, why: str, exit_info: str = "", task_rc: int | None = None) -> None:
        """Forget a worker and requeue (or fail) its tasks.

        ``task_rc``: the exit status of its process, which ended not for a
        reason of its own (deploy/contract.py): what it was running most likely ended it.
        """
        ledger = self.b.ledger
        if ledger.workers.pop(w.key, None) is None:
            return  # lost already
        self.b.router.forget(w.key)
        watcher = self.b.watcher
        if not exit_info and w.tag and watcher is not None and watcher.owns_process(w.tag):
            exit_info, task_rc = self._exit_info(w.tag)
            if not exit_info:
                # Alive but unreachable (stopped, stuck in native code): it is
                # ours, so end it; its tasks run elsewhere and it is replaced.
                watcher.kill(w.tag)
                if "stopped" in why:  # seen in its process state (a link, see LinkPort.check_stopped)
                    exit_info = f"{why} (SIGSTOP or a debugger) and was killed"
                elif why == LINK_CLOSED:  # no heartbeat is involved: say what was seen
                    exit_info = f"{why}, but its process had not exited 0.1 s later and was killed"
                else:
                    exit_info = (
                        f"it stopped answering heartbeats for {self.b.heartbeat_timeout:g} s and was killed"
                    )
        reason = exit_info or why
        local = bool(w.tag) and watcher is not None and watcher.owns_process(w.tag)
        if exit_info and local and w.setups - w.set_up:
            self._died_setting_up(w, reason)
        if w.assigned:
            log.warning("%s was lost with %d task(s): %s", w.where, len(w.assigned), reason)
        lost, cancels = ledger.lose_worker(w, reason, task_rc if exit_info else None)
        for task, given_up in lost:
            if self.b.trace is not None:
                self.b.trace.on_lost(task, w, f"{w.where}: {reason}", given_up)
            if given_up:
                limit = self.b.ledger.retries_for(task)  # its client's max_retries
                self.b.result(task.owner, task.tid, P.LOST, _lost_frames(task, limit))
        self.b.cancel_on_workers(cancels)

    def _exit_info(self, tag: str) -> tuple[str, int | None]:
        """Wait briefly for a local worker's exit status; replace it once it has exited.

        Its description ("" if it has not exited) and, if it did not end for a
        reason of its own, its exit status (see lose_worker).
        """
        watcher = self.b.watcher
        assert watcher is not None
        for _ in range(20):
            mine = None
            for t, _pid, rc in watcher.reap():  # (all of them: reap() forgets what it returns)
                if t == tag:
                    mine = rc
                else:
                    self.exited(t, rc)
            if mine is not None:
                self._count_exit(tag, mine)
                self._replace(tag)
                return watcher.describe_exit(tag, mine), self._task_rc(tag, mine)
            watcher.wait_exit(tag, 0.005)
        return "", None

    def on_cancel(self, owner: bytes, tids: list[int], arg: int) -> None:
        """CANCEL with an arg: stop_tasks() (1, 2), or CONFIRM, a cancel() waiting for the answer: those
        of ``tids`` no worker has or had are dropped and answered CANCELLED, the others STARTED."""
        if arg == P.CONFIRM:
            dropped, kept = self.b.ledger.cancel_unstarted(owner, tids)
            for tid in dropped:
                self.b.result(owner, tid, P.CANCELLED, [])
            if kept:
                self.b.send(owner, [P.pack(P.STARTED, [(tid,) for tid in kept])])
        elif arg in (1, 2):
            self.stop_tasks(owner, tids, arg)
        else:
            raise ProtocolError(f"CANCEL with arg {arg}: not 0 (forget), 1, 2 (stop), {P.CONFIRM} (confirm)")

    def stop_tasks(self, owner: bytes, tids: list[int], how: int) -> None:
        """ex.cancel() of running tasks (``how``: 1 interrupt them, 2 end their worker processes):
        they and every task they submitted are forgotten, their workers told (CANCEL with
        ``how``; the descendants are interrupted), the descendants' owners told CANCELLED."""
        top, below, orphans = self.b.ledger.cancel_tree(owner, tids)
        self.b.ledger.stopped["cancelled while running"] += sum(map(len, top.values()))
        for cancels, arg in ((top, how), (below, 1)):
            for wkey, ids in cancels.items():
                self.b.send(wkey, [P.pack(P.CANCEL, ids, arg)])
        for task in orphans:
            self.b.result(task.owner, task.tid, P.CANCELLED, [])

    def note_results(self, msg: P.Message) -> None:
        """Count the tasks of a RESULT that a limit stopped (task_timeout, worker_memory_limit): the
        type its worker named in a raised error's JSON (nothing is unpickled)."""
        if P.RAISED not in map(_STATUS, msg.entries):  # (the usual RESULT: looked at in C)
            return
        pos = 1
        for ent in msg.entries:
            if ent[1] == P.RAISED and ent[2] >= 3:
                kind = limit_kind(msg.frames[pos + 2])
                if kind:
                    self.b.ledger.stopped[kind] += 1
            pos += ent[2]

    def exited(self, tag: str, rc: int) -> None:
        assert self.b.watcher is not None
        self.leaving.pop(tag, None)
        # A tag names one local worker process, or a group of workers started
        # together on another host (their tags are "GROUP.N").
        lost = [w for w in self.b.ledger.workers.values() if w.tag == tag or w.tag.startswith(tag + ".")]
        task_rc = self._task_rc(tag, rc)
        self._count_exit(tag, rc)
        for w in lost:
            self.b.links.read_now(w.key)  # its last words first: a result it sent before it went
            self.lose_worker(w, "its process exited", self.b.watcher.describe_exit(tag, rc), task_rc)
        if not lost:
            self.b.ledger.recent_losses.append(self.b.watcher.describe_exit(tag, rc))
        self._replace(tag)

    def _task_rc(self, tag: str, rc: int) -> int | None:
        """lose_worker()'s task_rc for a local worker that exited with ``rc``: None if it ended for
        a reason of its own, EXIT_UNKNOWN if how it ended is not known."""
        watcher = self.b.watcher
        assert watcher is not None
        if watcher.own_exit(tag):
            return None
        return rc if watcher.exit_known(tag) else EXIT_UNKNOWN

    def _count_exit(self, tag: str, rc: int) -> None:
        """A local worker that ended itself to be replaced (worker/limits.py) is counted, for status."""
        assert self.b.watcher is not None
        if rc == EXIT_RECYCLED and self.b.watcher.own_exit(tag):
            self.b.ledger.stopped["workers recycled"] += 1

    def _replace(self, tag: str) -> None:
        """Start a new worker for one that exited, unless they keep dying at start-up."""
        watcher, ledger = self.b.watcher, self.b.ledger
        assert watcher is not None
        if self.b.stopping or self._start(watcher, tag):
            return
        refused = watcher.why_not_replaced(tag)
        if refused:
            log.warning("worker %s cannot be replaced: %s", tag, refused)
            refused = f"lost workers cannot be replaced: {refused}"
            if refused not in ledger.recent_losses:  # (said once, not once per worker)
                ledger.recent_losses.append(refused)
        if ledger.workers or watcher.starting():
            return
        why = "; ".join(ledger.recent_losses) or "worker processes keep exiting"
        text = f"no worker is left, and none could be started or replaced: {why}"
        if not refused:
            text += (
                f". Run `python -m scoopexec worker --connect {self.b.endpoint}` by hand to see why (the "
                "same Python, with scoopexec importable)"
            )
        for c in list(ledger.clients.values()):
            if not c.broken:
                self.b.break_client(c, "broken", text)


def _lost_frames(task: Task, max_retries: int) -> list[Any]:
    """The frames of a LOST result: why the task was given up, as JSON (nothing to unpickle)."""
    n = task.attempts
    message = (
        f"task {task.btid} was lost {n} time{'s' if n != 1 else ''} with its worker, more than "
        f"max_retries={max_retries} allows; last: {task.losses[-1]}. A task that keeps "
        "taking its worker down is the likely cause (memory use, a crash in native code); "
        "if the losses are unrelated to it, raise max_retries"
    )
    return [P.dump_json({"type": "WorkerLostError", "message": message, "kind": "lost"}), b""]
