"""Live status of a pool: ``ex.status()`` and ``python -m scoopexec status ADDR``.

The broker answers a STATUS message with a JSON snapshot (Broker.status(),
computed in the broker's own thread); this module turns it into typed
objects with a readable table, and asks a standalone broker for it::

    $ python -m scoopexec status tcp://127.0.0.1:5599
    pool ee5c4f95e39964a0 at tcp://127.0.0.1:5599 (broker pid 1010 on vm), up 3s
    tasks: 72 queued, 42 on workers, 3,086 done, 39.9/s; 1 client; 2 workers (2 busy)
    WORKER   HOST  PID   STATE  ASSIGNED  DONE  LAST HEARD  UP
    vm:1021  vm    1021  busy         21  1607  0.0 s ago   2s
    vm:1022  vm    1022  busy         21  1479  0.0 s ago   2s

Any DEALER may ask: the status client does not join the pool.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import zmq

from .errors import AuthenticationError, ProtocolError
from .logs import add_verbosity_options, configure_logging
from .wire import protocol as P
from .wire.security import read_key_file, resolve_credentials
from .wire.zmqsock import MONITOR_EVENTS, HandshakeWatch, recv_monitor_event

__all__ = ["PoolStatus", "WorkerStatus", "printable", "query", "status_main"]


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as the broker sees it.

    ``assigned`` counts the tasks the broker has handed to it and not yet
    had back: the one it runs, those waiting on sub-tasks, and those it
    fetched ahead (a worker asks for several when tasks are short);
    ``last_seen`` is the
    seconds since the worker last sent anything (a result, a request for
    work, output); ``joined`` the seconds since it connected.
    """

    name: str
    host: str
    pid: int | None
    state: str  # "busy" or "idle"
    assigned: int
    done: int
    last_seen: float
    joined: float = 0.0
    id: str = ""
    python: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkerStatus:
        """Build from one entry of the broker's JSON snapshot."""
        pid = d.get("pid")
        return cls(
            name=str(d.get("name") or d.get("id") or "?"),
            host=str(d.get("host") or "?"),
            pid=int(pid) if isinstance(pid, int) else None,
            state=str(d.get("state") or ("busy" if d.get("busy") else "idle")),
            assigned=int(d.get("busy") or 0),
            done=int(d.get("done") or 0),
            last_seen=float(d.get("last_seen") or 0.0),
            joined=float(d.get("joined") or 0.0),
            id=str(d.get("id") or ""),
            python=d.get("python"),
        )


@dataclass(frozen=True)
class PoolStatus:
    """A snapshot of a pool: its workers, its queue and its throughput.

    ``queued`` tasks wait in the broker; ``assigned`` have been handed to a
    worker (see WorkerStatus);
    ``completed`` results have come back since the broker started;
    ``tasks_per_second`` is the completion rate over the last second or so;
    ``starting`` counts worker processes the pool has started that have not
    connected yet (the broker knows those it, or its embedded client,
    launched; workers started by hand are not seen before they connect).
    ``stopped`` counts what a limit stopped since the broker started: tasks "timed
    out" (task_timeout), "over memory limit" (worker_memory_limit), "cancelled while
    running" (ex.cancel()), and "workers recycled" (local ones the broker saw exit to be
    replaced: max_tasks_per_child, worker_memory_limit, worker_max_lifetime, a task that
    would not stop).
    ``jobs`` lists the batch jobs of a pool that submits its own (``SlurmJobs``):
    each a dict with ``id``, ``state`` (pending, running, ``draining (why)``),
    ``workers`` connected from it, ``busy`` (tasks they hold) and ``time_left`` (s).
    ``str()`` gives the table ``python -m scoopexec status`` prints.
    """

    pool: str
    endpoint: str
    host: str
    queued: int
    assigned: int
    completed: int
    tasks_per_second: float
    clients: int
    workers: list[WorkerStatus] = field(default_factory=list)
    uptime: float = 0.0
    broker_pid: int | None = None
    trace: str | None = None
    starting: int = 0
    stopped: dict[str, int] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PoolStatus:
        """Build from the broker's JSON snapshot (Broker.status())."""
        workers = [WorkerStatus.from_dict(w) for w in d.get("workers", ()) if isinstance(w, dict)]
        assigned = d.get("assigned")
        return cls(
            pool=str(d.get("pool", "")),
            endpoint=str(d.get("endpoint", "")),
            host=str(d.get("host", "")),
            queued=int(d.get("queued") or 0),
            assigned=int(assigned) if assigned is not None else sum(w.assigned for w in workers),
            completed=int(d.get("completed") or 0),
            tasks_per_second=float(d.get("tasks_per_second") or 0.0),
            clients=int(d.get("clients") or 0),
            workers=workers,
            uptime=float(d.get("uptime") or 0.0),
            broker_pid=d.get("pid") if isinstance(d.get("pid"), int) else None,
            trace=d.get("trace"),
            starting=int(d.get("starting") or 0),
            stopped={str(k): int(v) for k, v in (d.get("stopped") or {}).items() if isinstance(v, int)},
            jobs=[j for j in d.get("jobs") or () if isinstance(j, dict)],
            raw=dict(d),
        )

    @property
    def busy(self) -> int:
        """Workers with at least one task."""
        return sum(1 for w in self.workers if w.state == "busy")

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON): the fields, without the raw snapshot."""
        d = asdict(self)
        d.pop("raw", None)
        return d

    def __str__(self) -> str:
        # Names come from peers (a worker's HELLO): what a terminal would act on is shown escaped.
        host = printable(self.host)
        where = f"broker on {host}"
        if self.broker_pid:
            where = f"broker pid {self.broker_pid} on {host}"
        lines = [
            f"pool {printable(self.pool)} at {printable(self.endpoint)} ({where}), "
            f"up {_duration(self.uptime)}",
            f"tasks: {self.queued:,} queued, {self.assigned:,} on workers, {self.completed:,} done, "
            f"{self.tasks_per_second:,.1f}/s; {self.clients} client{'s' if self.clients != 1 else ''}; "
            f"{len(self.workers)} worker{'s' if len(self.workers) != 1 else ''} ({self.busy} busy)"
            + (f", {self.starting} starting" if self.starting else ""),
        ]
        if self.stopped:
            lines.append("stopped: " + ", ".join(f"{n:,} {what}" for what, n in sorted(self.stopped.items())))
        if self.trace:
            lines.append(f"recording a timeline to {printable(self.trace)}")
        if self.jobs:
            lines.append(_jobs_line(self.jobs))
        if self.workers:
            rows = [("WORKER", "HOST", "PID", "STATE", "ASSIGNED", "DONE", "LAST HEARD", "UP")]
            for w in sorted(self.workers, key=lambda w: (w.host, w.name)):
                rows.append(
                    (printable(w.name), printable(w.host), str(w.pid or "?"), printable(w.state),
                     str(w.assigned), str(w.done),
                     f"{w.last_seen:.1f} s ago", _duration(w.joined))
                )  # fmt: skip
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            right = {4, 5}
            for r in rows:
                cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
                lines.append("  ".join(cells).rstrip())
        elif self.starting:
            lines.append(
                f"no workers connected yet: {self.starting} worker{'s are' if self.starting != 1 else ' is'} "
                "starting"
            )
        else:
            lines.append("no workers connected (start some: python -m scoopexec worker --connect ADDR -n N)")
        return "\n".join(lines)


def printable(text: str) -> str:
    """``text`` with every character a terminal would not simply print (escape sequences, other
    control characters, bidirectional overrides) written as a Python escape, e.g. ``\\x1b``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _jobs_line(jobs: list[dict[str, Any]]) -> str:
    """``jobs: 1 pending, 2 running (1 draining): 123_0 running 4 workers, 5 min left; ...``."""
    states = [str(j.get("state", "?")) for j in jobs]
    draining = sum(1 for s in states if s.startswith("draining"))
    each = []
    for j in jobs:
        left = j.get("time_left")
        each.append(
            f"{j.get('id')} {j.get('state')} {j.get('workers', 0)} worker(s)"
            + (f", {_duration(float(left))} left" if isinstance(left, (int, float)) else "")
        )
    return printable(  # from the broker: escaped like every name a peer sends
        f"{jobs[0].get('scheduler', 'batch')} jobs: {states.count('pending')} pending, "
        f"{len(jobs) - states.count('pending') - draining} running, {draining} draining: " + "; ".join(each)
    )


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def query(endpoint: str, timeout: float = 5.0, key: str | os.PathLike[str] | None = None) -> PoolStatus:
    """Ask the broker at ``endpoint`` for its status.

    ``key`` is the pool's key file; without it, a broker on loopback is reached
    with the key it wrote for this user (wire/security.resolve_credentials).
    Raises ValueError for an endpoint that needs a key and has none,
    TimeoutError when nothing answers within ``timeout`` seconds,
    AuthenticationError when what listens there cannot prove the broker's key
    (or refuses ours), and ProtocolError when something that is not a
    compatible scoopexec broker answers.
    """
    creds = read_key_file(key) if key is not None else None
    creds = resolve_credentials(endpoint, creds, "broker endpoint")
    ctx: zmq.Context[Any] = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    try:
        s.setsockopt(zmq.LINGER, 0)
        if creds is not None:
            creds.apply(s)
        # A broker that cannot prove its key (a process that took the port) fails the handshake.
        monitor = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | MONITOR_EVENTS)
        watch = HandshakeWatch(endpoint, creds is not None)
        s.connect(endpoint)
        s.send(P.header(P.STATUS))
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(s, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            ready = dict(poller.poll(int(left * 1000) + 1)) if left > 0 else {}
            while monitor in ready and monitor.poll(0):
                ev = recv_monitor_event(monitor)
                problem = watch.event(ev["event"], ev["value"])
                if problem is not None:
                    raise AuthenticationError(problem)
            if monitor in ready and s not in ready:
                continue
            if s not in ready:
                hint = (
                    "is this the pool's key file?" if creds is not None
                    else f"is one running there (python -m scoopexec broker --bind {endpoint})?"
                )
                raise TimeoutError(f"no scoopexec broker answered at {endpoint} within {timeout:g} s; {hint}")
            frames = s.recv_multipart()
            mtype, _, _ = P.unpack_header(frames[0])
            if mtype == P.STATUS_REPLY and len(frames) > 1:
                data = P.load_json(frames[1])
                if not isinstance(data, dict):
                    raise ProtocolError(f"the broker at {endpoint} sent a status that is not an object")
                return PoolStatus.from_dict(data)
            if mtype == P.ERROR:
                text = frames[1].decode("utf-8", "replace") if len(frames) > 1 else "an error"
                raise ProtocolError(f"the broker at {endpoint} answered: {text}")
            # anything else (a PING): keep waiting
    finally:
        try:
            s.disable_monitor()  # before closing, or closing the monitor may block
        except zmq.ZMQError:
            pass
        ctx.destroy(linger=0)


def status_main(argv: list[str]) -> int:
    """``python -m scoopexec status ADDR``: print a standalone broker's status."""
    import argparse  # (here: a client that never runs this imports no argparse)

    ap = argparse.ArgumentParser(
        prog="python -m scoopexec status",
        description="Show a broker's workers (host, pid, busy or idle, tasks done, last heard from), "
        "its queue and its throughput.",
    )
    ap.add_argument("address", help="the broker's endpoint, e.g. tcp://127.0.0.1:5555")
    ap.add_argument(
        "--key", metavar="FILE",
        help="the pool's key file (default on this machine: the key its broker wrote for this user)",
    )  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    ap.add_argument(
        "--watch", type=float, metavar="SECONDS", default=0.0,
        help="print again every SECONDS until interrupted",
    )  # fmt: skip
    add_verbosity_options(ap)
    args = ap.parse_args(argv)
    configure_logging(args.verbose - args.quiet)
    if args.timeout <= 0:
        ap.error("--timeout must be greater than 0")
    try:
        while True:
            try:
                st = query(args.address, args.timeout, args.key)
            except ValueError as exc:
                ap.error(str(exc))
            except OSError as exc:  # the key file
                print(f"scoopexec status: {exc}", file=sys.stderr)
                return 1
            except (TimeoutError, ProtocolError, AuthenticationError) as exc:
                print(f"scoopexec status: {printable(str(exc))}", file=sys.stderr)  # may quote the broker
                return 1
            if args.json:
                print(json.dumps(st.raw, indent=1, sort_keys=True), flush=True)
            else:
                if args.watch and sys.stdout.isatty():
                    sys.stdout.write("\033[H\033[2J")
                print(st, flush=True)
            if not args.watch:
                return 0
            if not sys.stdout.isatty():
                print(flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 130 if not args.watch else 0
    # `... status ADDR | head`: the BrokenPipeError is handled where every command's is (__main__)
