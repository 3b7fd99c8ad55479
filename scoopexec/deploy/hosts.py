"""Host specifications, hostfiles and batch-scheduler allocations, parsed in one place.

Every way of naming the machines of a pool ends up as a list of :class:`Host`
(a name, an optional ssh user, an optional worker count) with the place it
came from, so that an error can name the offending line::

    hosts=["node1", "node2:8", "alice@node3:4"]      a list of specs
    hosts="node1 node[02-04]:8"                      one string, split on spaces/commas
    hosts={"node1": 8, "node2": 4}                   a mapping name -> workers
    hostfile="hosts.txt"                             SCOOP's format, one host a line:
                                                         node1 8        (or node1:8, node1 slots=8)
                                                         alice@node2    # one worker per CPU there
    hosts="auto"                                     the batch allocation we run in, if any
    hosts=["ssh://localhost:2"]                      through ssh even though it is this machine

A host that names this machine (``localhost``, a loopback address, our own
host name) without a user gets local worker processes, started without ssh,
and the log says so when the pool starts.  ``ssh://`` in front of a spec (the
rest is as usual: ``ssh://[user@]name[:workers]``, the number after ``:``
still a worker count, the ssh port coming from the ssh configuration) starts
its workers through ssh wherever it is, e.g. to try the ssh path against
this machine's own sshd.

A name may hold SLURM-style bracket ranges (``node[01-04,07]``, several groups
multiply out).  A host without a count gets one worker per CPU of that host,
found out there.  A host listed twice adds its counts.

Inside a batch job, :func:`detect_allocation` reads the scheduler's own
description of the allocation: SLURM's ``SLURM_JOB_NODELIST`` and
``SLURM_TASKS_PER_NODE``, PBS/Torque's ``PBS_NODEFILE`` (one line per slot),
SGE's ``PE_HOSTFILE`` (``host slots queue processors`` lines).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from .contract import local_cpu_count

__all__ = [
    "Allocation",
    "Host",
    "detect_allocation",
    "distribute",
    "expand_ranges",
    "is_this_machine",
    "local_cpu_count",
    "note_local_hosts",
    "parse_hosts",
    "plan_hosts",
    "read_hostfile",
    "tasks_per_node",
]

MAX_EXPANSION = 100_000  # hosts one range expression may produce

# A host name or address: letters, digits and . - _ (DNS names, ssh aliases,
# IPv4), or an IPv6 address in brackets.  Nothing a shell or ssh could read as
# an option or a metacharacter.
_NAME = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.\-]*|\[[0-9A-Fa-f:.]+\])$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
SSH_PREFIX = "ssh://"

log = logging.getLogger("scoopexec.hosts")


@dataclass(frozen=True)
class Host:
    """One machine of a pool.

    ``slots`` is the number of workers to run there (None: one per CPU of that
    host); ``where`` tells where the spec came from, for error messages;
    ``ssh`` (the spec began with ``ssh://``) starts them through ssh even when
    the host is this machine.
    """

    name: str
    slots: int | None = None
    user: str | None = None
    where: str = ""
    ssh: bool = False

    @property
    def target(self) -> str:
        """What to give ssh: ``user@name`` or ``name`` (brackets of IPv6 removed)."""
        name = self.name[1:-1] if self.name.startswith("[") else self.name
        return f"{self.user}@{name}" if self.user else name

    @property
    def local(self) -> bool:
        """True when workers for this host start here, without ssh."""
        return not self.ssh and self.user is None and is_this_machine(self.name)

    def __str__(self) -> str:
        base = f"{self.user}@{self.name}" if self.user else self.name
        if self.ssh:
            base = SSH_PREFIX + base
        return base if self.slots is None else f"{base}:{self.slots}"


@dataclass(frozen=True)
class Allocation:
    """The hosts of a batch job, and which scheduler gave them."""

    kind: str  # "slurm", "pbs" or "sge"
    hosts: list[Host]

    @property
    def slots(self) -> int:
        return sum(h.slots or 0 for h in self.hosts)


def note_local_hosts(hosts: Sequence[Host]) -> None:
    """Log that the hosts naming this machine get local processes, started without ssh.

    A warning when every host is this machine (the "cluster" is this machine
    alone, which a user trying hosts=["localhost"] may not expect), otherwise
    an info line; both tell how to go through ssh instead.
    """
    local = [h for h in hosts if h.local]
    if not local:
        return
    n = sum(h.slots or local_cpu_count() for h in local)
    names = ", ".join(repr(str(h)) for h in local)
    log.log(
        logging.WARNING if len(local) == len(hosts) else logging.INFO,
        "host%s %s: this machine, so %d worker%s start%s here as local processes, without ssh "
        "(write %r to start them through ssh)",
        "s" if len(local) > 1 else "", names, n, "s" if n != 1 else "", "" if n != 1 else "s",
        SSH_PREFIX + local[0].name,
    )  # fmt: skip


def is_this_machine(name: str) -> bool:
    """Whether ``name`` is this machine: localhost, a loopback address, our host name."""
    bare = name.strip("[]").lower()
    if bare in ("localhost", "localhost.localdomain") or _is_loopback_address(bare):
        return True
    here = socket.gethostname().lower()
    return bare == here or bare == here.split(".")[0] or bare == socket.getfqdn().lower()


def _is_loopback_address(text: str) -> bool:
    """A literal loopback address (127.0.0.0/8, ::1; also IPv4's short forms such as 127.1, which
    ssh accepts too), never a host name that merely starts with "127."."""
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        pass
    if not re.fullmatch(r"[0-9]+(\.[0-9]+){1,3}", text):
        return False
    try:
        return socket.inet_aton(text)[0] == 127
    except OSError:
        return False


# ------------------------------------------------------------------ ranges
def expand_ranges(expr: str, where: str = "") -> list[str]:
    """Expand SLURM-style bracket ranges: ``node[01-03,7]`` -> node01 node02 node03 node7.

    Several bracket groups multiply out (``r[1-2]n[1-2]`` -> r1n1 r1n2 r2n1 r2n2);
    zero padding of the lower bound is kept.  Raises ValueError on a malformed
    expression, naming ``where``.
    """
    at = f"{where}: " if where else ""
    parts: list[list[str]] = []
    pos = 0
    total = 1
    for m in re.finditer(r"\[([^\[\]]*)\]", expr):
        parts.append([expr[pos : m.start()]])
        choices: list[str] = []
        for raw in m.group(1).split(","):
            item = raw.strip()
            rm = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
            if rm is None:
                raise ValueError(f"{at}bad range {item!r} in {expr!r} (expected N or N-M)")
            lo, hi = rm.group(1), rm.group(2) if rm.group(2) is not None else rm.group(1)
            if int(hi) < int(lo):
                raise ValueError(f"{at}range {item!r} in {expr!r} goes downwards")
            if int(hi) - int(lo) >= MAX_EXPANSION:
                raise ValueError(f"{at}range {item!r} in {expr!r} is too large")
            width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
            choices.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
        total *= len(choices)
        if total > MAX_EXPANSION:
            raise ValueError(f"{at}{expr!r} expands to more than {MAX_EXPANSION} hosts")
        parts.append(choices)
        pos = m.end()
    parts.append([expr[pos:]])
    for fixed in (p[0] for i, p in enumerate(parts) if i % 2 == 0):
        if "[" in fixed or "]" in fixed:
            raise ValueError(f"{at}unbalanced brackets in {expr!r}")
    out = [""]
    for choices in parts:
        out = [a + b for a in out for b in choices]
    return out


def split_specs(text: str) -> list[str]:
    """Split on commas and white space that are not inside brackets."""
    out: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if depth == 0 and (ch == "," or ch.isspace()):
            if cur:
                out.append("".join(cur))
                cur = []
            continue
        cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


# ------------------------------------------------------------------ specs
def _slots(text: str, spec: str, where: str) -> int:
    if not re.fullmatch(r"\d+", text):
        raise ValueError(f"{where}: bad worker count {text!r} in {spec!r} (expected a positive integer)")
    n = int(text)
    if n < 1:
        raise ValueError(f"{where}: worker count in {spec!r} must be at least 1")
    return n


def _count_separator(text: str) -> int:
    """Index of the ':' before a worker count (outside brackets), or -1."""
    depth = 0
    found = -1
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == ":" and depth == 0:
            found = i
    return found


def _parse_spec(spec: str, where: str, slots: int | None = None) -> list[Host]:
    """``[ssh://][user@]name[:slots]`` (name may hold ranges; IPv6 in brackets) -> hosts."""
    spec = spec.strip()
    if not spec:
        raise ValueError(f"{where}: empty host name")
    user = None
    rest = spec
    ssh = rest[: len(SSH_PREFIX)].lower() == SSH_PREFIX
    if ssh:
        rest = rest[len(SSH_PREFIX) :]
    elif "://" in rest:
        raise ValueError(
            f"{where}: {spec!r}: the only prefix a host spec takes is {SSH_PREFIX!r} (start the "
            "workers through ssh even on this machine)"
        )
    if "@" in rest:
        user, rest = rest.split("@", 1)
        if not _USER.match(user):
            raise ValueError(f"{where}: bad user name {user!r} in {spec!r}")
    name = rest
    colon = _count_separator(rest)
    if colon >= 0:
        if slots is not None:
            raise ValueError(f"{where}: {spec!r} gives a worker count twice")
        name = rest[:colon]
        slots = _slots(rest[colon + 1 :], spec, where)
    if name.startswith("[") and name.endswith("]") and ":" in name:
        names = [name]  # an IPv6 address, not a range
    else:
        names = expand_ranges(name, where)
    out = []
    for n in names:
        if not _NAME.match(n):
            raise ValueError(
                f"{where}: bad host name {n!r} in {spec!r} "
                "(letters, digits, '.', '-', '_'; not starting with '-')"
            )
        out.append(Host(n, slots, user, where, ssh))
    return out


def _merge(hosts: Iterable[Host]) -> list[Host]:
    """One entry per (ssh or not, user, name), counts added up, first position kept."""
    merged: dict[tuple[bool, str | None, str], Host] = {}
    for h in hosts:
        key = (h.ssh, h.user, h.name)
        old = merged.get(key)
        if old is None:
            merged[key] = h
        elif old.slots is None or h.slots is None:
            raise ValueError(
                f"{h.where}: host {h.name} is listed again (first at {old.where}), and one of the "
                "two has no worker count: give both a count, or list it once"
            )
        else:
            merged[key] = replace(old, slots=old.slots + h.slots)
    return list(merged.values())


def parse_hosts(hosts: str | Sequence[str] | Mapping[str, int], where: str = "hosts") -> list[Host]:
    """Host specs as ScoopExecutor(hosts=...) and ``--hosts`` take them (not "auto")."""
    found: list[Host] = []
    if isinstance(hosts, Mapping):
        for name, n in hosts.items():
            if not isinstance(name, str):
                raise TypeError(f"{where}: host names must be strings, not {type(name).__name__}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{where}[{name!r}]: worker count must be an integer >= 1, not {n!r}")
            found.extend(_parse_spec(name, f"{where}[{name!r}]", n))
    elif isinstance(hosts, str):
        specs = split_specs(hosts)
        if not specs:
            raise ValueError(f"{where}: no host given")
        for i, spec in enumerate(specs):
            found.extend(_parse_spec(spec, f"{where}: {spec!r} (item {i + 1})"))
    else:
        try:
            items = list(hosts)
        except TypeError:
            raise TypeError(
                f"{where} must be a list of host specs, a string, a mapping or 'auto', "
                f"not {type(hosts).__name__}"
            ) from None
        for i, spec in enumerate(items):
            if not isinstance(spec, str):
                raise TypeError(f"{where}[{i}]: a host spec is a string, not {type(spec).__name__}")
            found.extend(_parse_spec(spec, f"{where}[{i}] {spec!r}"))
    if not found:
        raise ValueError(f"{where}: no host given")
    return _merge(found)


def read_hostfile(path: str | os.PathLike[str]) -> list[Host]:
    """Read a hostfile: ``name [count]`` (or ``name:count``, ``name slots=count``) per line.

    ``#`` starts a comment; blank lines are skipped.  Raises ValueError naming
    the file and line of anything it cannot read.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read hostfile {path!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"hostfile {path!r} is not UTF-8 text: {exc}") from exc
    return parse_hostfile_lines(lines, path)


def parse_hostfile_lines(lines: Iterable[str], source: str) -> list[Host]:
    found: list[Host] = []
    for no, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {no}"
        words = line.split()
        if len(words) > 2:
            raise ValueError(f"{where}: expected 'hostname [workers]', got {raw.strip()!r}")
        slots = None
        if len(words) == 2:
            count = words[1]
            if count.startswith(("slots=", "cpu=")):
                count = count.split("=", 1)[1]
            slots = _slots(count, line, where)
        found.extend(_parse_spec(words[0], where, slots))
    if not found:
        raise ValueError(f"hostfile {source!r} names no host")
    return _merge(found)


# -------------------------------------------------------------- allocation
def tasks_per_node(text: str, where: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """SLURM's compressed counts: ``2(x3),1`` -> [2, 2, 2, 1]."""
    out: list[int] = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if m is None:
            raise ValueError(f"{where}: cannot read {text!r} (expected e.g. '2(x3),1')")
        out.extend([int(m.group(1))] * int(m.group(2) or 1))
    return out


def _slurm(env: Mapping[str, str]) -> Allocation:
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    names = [n for spec in split_specs(nodelist) for n in expand_ranges(spec, "SLURM_JOB_NODELIST")]
    if not names:
        raise ValueError("SLURM_JOB_NODELIST is empty")
    per = env.get("SLURM_TASKS_PER_NODE") or env.get("SLURM_JOB_CPUS_PER_NODE")
    counts = tasks_per_node(per) if per else [1] * len(names)
    if len(counts) != len(names):
        raise ValueError(
            f"SLURM_JOB_NODELIST names {len(names)} nodes but SLURM_TASKS_PER_NODE={per!r} "
            f"gives {len(counts)} counts"
        )
    hosts = [
        Host(n, c, None, f"SLURM_JOB_NODELIST[{i}]")
        for i, (n, c) in enumerate(zip(names, counts, strict=True))
    ]
    return Allocation("slurm", [h for h in hosts if h.slots])


def _read_lines(path: str, what: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from exc


def _pbs(path: str) -> Allocation:
    lines = _read_lines(path, "PBS_NODEFILE")
    hosts = []
    for no, line in enumerate(lines, 1):
        name = line.split("#", 1)[0].strip()
        if name:
            hosts.extend(_parse_spec(name, f"PBS_NODEFILE {path} line {no}", 1))
    if not hosts:
        raise ValueError(f"PBS_NODEFILE {path!r} names no host")
    return Allocation("pbs", _merge(hosts))


def _sge(path: str) -> Allocation:
    lines = _read_lines(path, "PE_HOSTFILE")
    hosts = []
    for no, line in enumerate(lines, 1):
        words = line.split()
        if not words:
            continue
        where = f"PE_HOSTFILE {path} line {no}"
        if len(words) < 2:
            raise ValueError(f"{where}: expected 'host slots queue processors', got {line!r}")
        hosts.extend(_parse_spec(words[0], where, _slots(words[1], line, where)))
    if not hosts:
        raise ValueError(f"PE_HOSTFILE {path!r} names no host")
    return Allocation("sge", _merge(hosts))


def detect_allocation(env: Mapping[str, str] | None = None) -> Allocation | None:
    """The batch allocation described by ``env`` (default os.environ), or None outside one."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_NODELIST") or (env.get("SLURM_JOB_ID") and env.get("SLURM_NODELIST")):
        return _slurm(env)
    if env.get("PBS_NODEFILE"):
        return _pbs(env["PBS_NODEFILE"])
    if env.get("PE_HOSTFILE"):
        return _sge(env["PE_HOSTFILE"])
    return None


# -------------------------------------------------------------- placement
def distribute(hosts: Sequence[Host], n: int | None) -> list[Host]:
    """Cap the pool at ``n`` workers (None: every slot), dealt to the hosts in turn.

    A host without a count takes as many as it is dealt.  Raises ValueError
    when ``n`` exceeds the slots the hosts offer.
    """
    if n is None:
        return list(hosts)
    if n < 1:
        raise ValueError("the number of workers must be at least 1")
    if all(h.slots is not None for h in hosts):
        total = sum(h.slots or 0 for h in hosts)
        if n > total:
            listed = ", ".join(str(h) for h in hosts)
            raise ValueError(f"{n} workers asked for, but the hosts offer {total} slots ({listed})")
    given = [0] * len(hosts)
    left = n
    while left:
        for i, h in enumerate(hosts):
            if left and (h.slots is None or given[i] < h.slots):
                given[i] += 1
                left -= 1
    return [replace(h, slots=g) for h, g in zip(hosts, given, strict=True) if g]


def plan_hosts(
    max_workers: int | None,
    hosts: str | Sequence[str] | Mapping[str, int] | None,
    hostfile: str | os.PathLike[str] | None,
) -> tuple[int, list[Host], int]:
    """(local workers, hosts to start over ssh or here, srun workers) for a pool of ``max_workers``."""
    if hosts is not None and hostfile is not None:
        raise ValueError("give hosts= or hostfile=, not both")
    if hostfile is not None:
        listed = read_hostfile(hostfile)
    elif isinstance(hosts, str) and hosts.strip().lower() == "auto":
        alloc = detect_allocation()
        if alloc is None:
            return max_workers or local_cpu_count(), [], 0
        if alloc.kind == "slurm":
            total = alloc.slots
            if max_workers is not None and max_workers > total:
                raise ValueError(
                    f"{max_workers} workers asked for, but the SLURM allocation has {total} tasks "
                    f"({', '.join(str(h) for h in alloc.hosts)})"
                )
            return 0, [], max_workers or total
        listed = alloc.hosts
    elif hosts is not None:
        listed = parse_hosts(hosts)
    else:
        return max_workers or local_cpu_count(), [], 0
    placed = distribute(listed, max_workers)
    note_local_hosts(placed)
    return 0, placed, 0
