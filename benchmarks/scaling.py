"""Scaling curves: 1 to 64 local workers, and 3 hosts (network namespaces) over TCP with CURVE.

    python -m benchmarks.scaling [--rounds 3] [--quick] [--part local,netns] [--json scaling.json]

Local (``--part local``): for each worker count (1, 2, 4, 8, 16, 32, 64 by default),
a pool of that many local workers, all warm (each has run a task), then

- tiny tasks: ``submit`` 5,000 no-op tasks and wait for all; tasks per second;
- sleeping tasks: 10 tasks of ``sleep(0.05)`` per worker; utilisation = (tasks x 0.05 s /
  workers) / wall time, in %;
- round trip: ``submit(noop, i).result()`` 200 times in sequence; the median, in us.

scoopexec and ProcessPoolExecutor by default (``--contenders``), each in a fresh child
process per round (all counts in it, one pool after the other), rounds rotated.

On a machine with C cores, tiny-task throughput cannot grow past C workers: past that,
more workers only add processes that compete for the same cores with the client and the
broker (and on 2 cores the curve falls); what the curve shows there is how much the
machinery costs per extra worker.  Sleeping tasks use no CPU, so their utilisation shows
whether the pool keeps every worker fed (hand-out, wake-ups, the last wave) as the count
grows; the round trip shows what an idle pool of N workers adds to one task's latency.

Hosts (``--part netns``, needs root and ``ip``): three network namespaces, each a "host"
with its own address on a bridge of this namespace (198.19.K.0/24), and a standalone
``python -m scoopexec broker`` on the bridge's address (TCP, CURVE: ``--key-file``);
each host runs ``python -m scoopexec worker --connect tcp://... --key FILE -n K`` inside
its namespace, and a client process on this host (``ScoopExecutor(broker=..., key=...)``)
measures tiny-task throughput and the round trip once all 3 x K workers are connected.
The same measures run against the same broker and worker command lines on ``ipc://`` (one
host, three worker groups of K) as the reference.  K = 1, 2, 4 by default.  The
namespaces, the bridge and every process are removed at the end, also on an error or
Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.contenders import CONTENDERS, worker_env  # noqa: E402
from benchmarks.tasks import nap, noop  # noqa: E402

HOSTS = 3
FULL: dict[str, Any] = {
    "counts": [1, 2, 4, 8, 16, 32, 64],
    "tiny": 5000,
    "sleeps_per_worker": 10,
    "sleep_ms": 50,
    "rtt": 200,
    "per_host": [1, 2, 4],
    "net_tiny": 5000,
    "net_rtt": 300,
}
QUICK: dict[str, Any] = {
    "counts": [1, 2],
    "tiny": 200,
    "sleeps_per_worker": 3,
    "sleep_ms": 20,
    "rtt": 20,
    "per_host": [1],
    "net_tiny": 200,
    "net_rtt": 20,
}
LOCAL_CONTENDERS = ("scoopexec", "ProcessPoolExecutor")
TRANSPORTS = ("tcp-curve, 3 hosts", "ipc, 1 host")


# ------------------------------------------------------------------ measures
def _warm(pool: Any, workers: int, deadline_s: float = 120.0) -> int:
    """Run short sleeps until every worker has run one (or the deadline); distinct pids seen."""
    seen: set[int] = set()
    t = time.perf_counter()
    while len(seen) < workers and time.perf_counter() - t < deadline_s:
        seen.update(pool.gather([pool.submit(nap, 0.02) for _ in range(2 * workers)]))
    return len(seen)


def _tiny_rate(pool: Any, n: int) -> float:
    t = time.perf_counter()
    pool.gather([pool.submit(noop, i) for i in range(n)])
    return n / (time.perf_counter() - t)


def _rtt_us(pool: Any, n: int) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        pool.submit(noop, i).result()
        times.append(time.perf_counter() - t)
    return float(statistics.median(times)) * 1e6


def local_child(name: str, size: dict[str, Any]) -> dict[str, Any]:
    """Every worker count of ``size`` on ``name``'s pool, one pool after the other."""
    factory = CONTENDERS[name].factory
    assert factory is not None
    out: dict[str, Any] = {"counts": {}, "errors": {}}
    for w in size["counts"]:
        try:
            pool = factory(w)
            try:
                warm = _warm(pool, w)
                tiny = _tiny_rate(pool, size["tiny"])
                n, dur = size["sleeps_per_worker"] * w, size["sleep_ms"] / 1000
                t = time.perf_counter()
                used = set(pool.gather([pool.submit(nap, dur) for _ in range(n)]))
                util = 100 * (n * dur / w) / (time.perf_counter() - t)
                rtt = _rtt_us(pool, size["rtt"])
            finally:
                pool.shutdown()
            out["counts"][str(w)] = {
                "tasks_per_s": tiny,
                "utilisation": util,
                "rtt_us": rtt,
                "workers_warm": warm,
                "workers_used": len(used),
            }
        except Exception as exc:
            out["errors"][str(w)] = f"{type(exc).__name__}: {exc}"
    return out


class _SubmitPool:
    """What the measures need of a ScoopExecutor (submit, gather)."""

    def __init__(self, ex: Any) -> None:
        self.ex = ex

    def submit(self, fn: Any, *args: Any) -> Any:
        return self.ex.submit(fn, *args)

    def gather(self, fs: list[Any]) -> list[Any]:
        return [f.result(timeout=120) for f in fs]


def cluster_child(broker: str, key: str | None, workers: int, size: dict[str, Any]) -> dict[str, Any]:
    """A client of a standalone broker: wait for ``workers`` workers, then throughput and round trip."""
    from scoopexec import ScoopExecutor

    with ScoopExecutor(broker=broker, key=key, connect_timeout=30) as ex:
        pool = _SubmitPool(ex)
        warm = _warm(pool, workers)
        if warm < workers:
            raise RuntimeError(f"only {warm} of {workers} workers ran a task within 120 s")
        return {
            "tasks_per_s": _tiny_rate(pool, size["net_tiny"]),
            "rtt_us": _rtt_us(pool, size["net_rtt"]),
            "workers_warm": warm,
        }


# ------------------------------------------------------- hosts in namespaces
def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class Hosts:
    """``HOSTS`` network namespaces on one bridge of this namespace; removed by ``close()``."""

    def __init__(self, n: int = HOSTS) -> None:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise RuntimeError("the hosts part needs root and `ip` (iproute2) for network namespaces")
        tag = f"{os.getpid() % 100000}"
        self.bridge = f"sxbb{tag}"
        self.names = [f"sxbh{tag}n{i}" for i in range(n)]
        self.veths = [f"sxbv{tag}n{i}" for i in range(n)]
        used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=False).stdout
        k = next(k for k in itertools.chain(range(10 + os.getpid() % 200, 250), range(1, 250))
                 if f" 198.19.{k}." not in used)  # fmt: skip
        self.broker_ip = f"198.19.{k}.1"
        self.ips = [f"198.19.{k}.{i + 2}" for i in range(n)]
        self.made: list[tuple[str, str]] = []
        try:
            _ip("link", "add", "name", self.bridge, "type", "bridge")
            self.made.append(("link", self.bridge))
            _ip("addr", "add", f"{self.broker_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for name, veth, ip in zip(self.names, self.veths, self.ips, strict=True):
                _ip("netns", "add", name)
                self.made.append(("netns", name))
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
                self.made.append(("link", veth))
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
                _ip("-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
                _ip("-n", name, "link", "set", "eth0", "up")
                _ip("-n", name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[i]]

    def pids(self) -> list[int]:
        """Processes running inside any of the namespaces."""
        inodes = set()
        for name in self.names:
            with contextlib.suppress(OSError):
                inodes.add(os.stat(f"/run/netns/{name}").st_ino)
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                        out.append(int(entry))
        return out

    def close(self) -> None:
        for pid in self.pids():  # nothing may outlive its namespace
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for kind, name in reversed(self.made):
            if kind == "netns":
                subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            else:
                subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        self.made = []


def _stop(p: subprocess.Popen[bytes]) -> None:
    """End a process group we started: SIGTERM, then SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)
        try:
            p.wait(wait)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # what its children left
            return
        except subprocess.TimeoutExpired:
            continue


def _start_broker(bind: str, key: str | None, log: Any) -> tuple[subprocess.Popen[bytes], str]:
    cmd = [sys.executable, "-m", "scoopexec", "broker", "--bind", bind, "-q"]
    if key:
        cmd += ["--key-file", key]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                         env=worker_env(), start_new_session=True)  # fmt: skip
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], 60)
    line = p.stdout.readline().decode() if ready else ""
    if "listening on" not in line:
        _stop(p)
        raise RuntimeError(f"the broker did not start: {line!r}")
    endpoint = line.split("listening on ", 1)[1].split(",")[0].strip()
    return p, endpoint


@contextlib.contextmanager
def cluster(
    transport: str, per_host: int, hosts: Hosts | None, tmp: str, log: Any
) -> Iterator[tuple[str, str | None]]:
    """A standalone broker and HOSTS groups of ``per_host`` workers; yields (endpoint, key file)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if transport.startswith("tcp"):
            assert hosts is not None
            key: str | None = os.path.join(tmp, "pool.key")
            broker, endpoint = _start_broker(f"tcp://{hosts.broker_ip}:0", key, log)
        else:
            key = None
            broker, endpoint = _start_broker(f"ipc://{tmp}/broker.sock", None, log)
        procs.append(broker)
        for i in range(HOSTS):
            cmd = [sys.executable, "-m", "scoopexec", "worker", "--connect", endpoint, "-n", str(per_host),
                   "--connect-timeout", "60", "--no-forward-output"]  # fmt: skip
            if key:
                cmd = [*hosts.prefix(i), *cmd, "--key", key]  # type: ignore[union-attr]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT,
                                          env=worker_env(), start_new_session=True))  # fmt: skip
        yield endpoint, key
    finally:
        for p in reversed(procs):
            _stop(p)


# ------------------------------------------------------------------- drivers
def _child(cmd: list[str], out: str, log: str, timeout: float) -> dict[str, Any]:
    from benchmarks.run import _run_child, _tail

    if os.path.exists(out):
        os.remove(out)
    rc, _ = _run_child(cmd, timeout, log)
    if rc == 0 and os.path.exists(out):
        with open(out) as fh:
            return json.load(fh)  # type: ignore[no-any-return]
    why = "timed out" if rc is None else f"exited with {rc}"
    raise RuntimeError(f"child {why}: {_tail(log)}")


def run_local(
    names: list[str], rounds: int, size: dict[str, Any], *, python: str, tmp: str, timeout: float
) -> dict[str, Any]:
    raw: dict[str, dict[str, dict[str, list[float]]]] = {n: {} for n in names}
    errors: list[str] = []
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            out, log = os.path.join(tmp, f"local-{name}.json"), os.path.join(tmp, f"local-{name}.log")
            cmd = [python, "-m", "benchmarks.scaling", "--child", "local", "--name", name,
                   "--sizes", json.dumps(size), "--out", out]  # fmt: skip
            try:
                res = _child(cmd, out, log, timeout)
            except RuntimeError as exc:
                errors.append(f"round {r + 1}, local, {name}: {exc}")
                continue
            for w, figs in res["counts"].items():
                for k, v in figs.items():
                    raw[name].setdefault(w, {}).setdefault(k, []).append(v)
            errors += [f"round {r + 1}, local, {name}, {w} workers: {e}" for w, e in res["errors"].items()]
            print(f"scaling round {r + 1}/{rounds}: local {name} ({time.perf_counter() - t:.1f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
    return {"raw": raw, "errors": errors}


def run_netns(rounds: int, size: dict[str, Any], *, python: str, tmp: str, timeout: float) -> dict[str, Any]:
    raw: dict[str, dict[str, dict[str, list[float]]]] = {t: {} for t in TRANSPORTS}
    errors: list[str] = []
    configs = [(t, k) for k in size["per_host"] for t in TRANSPORTS]
    hosts = Hosts()
    previous = signal.signal(signal.SIGTERM, raise_exit)  # so that `finally` removes the hosts
    try:
        with open(os.path.join(tmp, "cluster.log"), "ab") as log:
            for r in range(rounds):
                for transport, k in configs[r % len(configs) :] + configs[: r % len(configs)]:
                    t = time.perf_counter()
                    w = HOSTS * k
                    out, clog = os.path.join(tmp, "cluster.json"), os.path.join(tmp, "cluster-client.log")
                    try:
                        with cluster(transport, k, hosts, tmp, log) as (endpoint, key):
                            cmd = [
                                python,
                                "-m",
                                "benchmarks.scaling",
                                "--child",
                                "cluster",
                                "--broker",
                                endpoint,
                                "--workers",
                                str(w),
                                "--sizes",
                                json.dumps(size),
                                "--out",
                                out,
                            ]
                            if key:
                                cmd += ["--key", key]  # fmt: skip
                            res = _child(cmd, out, clog, timeout)
                    except RuntimeError as exc:
                        errors.append(f"round {r + 1}, {transport}, {w} workers: {exc}")
                        continue
                    for name, v in res.items():
                        raw[transport].setdefault(str(w), {}).setdefault(name, []).append(v)
                    print(f"scaling round {r + 1}/{rounds}: {transport}, {w} workers "
                          f"({time.perf_counter() - t:.1f} s)", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        hosts.close()
        signal.signal(signal.SIGTERM, previous)
    return {"raw": raw, "errors": errors}


def raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def summary(raw: dict[str, dict[str, dict[str, list[float]]]]) -> dict[str, Any]:
    """{series: {count: {measure: {median, min, max}}}} from the raw rounds."""
    return {
        series: {
            w: {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in figs.items()}
            for w, figs in by_count.items()
        }
        for series, by_count in raw.items()
    }


def run(
    parts: list[str], rounds: int, size: dict[str, Any], *, names: list[str], python: str, timeout: float
) -> dict[str, Any]:
    result: dict[str, Any] = {"sizes": size, "errors": []}
    with tempfile.TemporaryDirectory(prefix="scoopexec-scaling-") as tmp:
        if "local" in parts:
            local = run_local(names, rounds, size, python=python, tmp=tmp, timeout=timeout)
            result["local"] = {"contenders": names, "raw": local["raw"], "summary": summary(local["raw"])}
            result["errors"] += local["errors"]
        if "netns" in parts:
            net = run_netns(rounds, size, python=python, tmp=tmp, timeout=timeout)
            result["netns"] = {
                "hosts": HOSTS,
                "transports": list(TRANSPORTS),
                "raw": net["raw"],
                "summary": summary(net["raw"]),
            }
            result["errors"] += net["errors"]
    return result


def _cell(fig: dict[str, float] | None, fmt: str) -> str:
    if not fig:
        return "-"
    return f"{format(fig['median'], fmt)} ({format(fig['min'], fmt)}-{format(fig['max'], fmt)})"


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if "local" in result:
        names = result["local"]["contenders"]
        s = result["local"]["summary"]
        lines += [
            "| local workers | " + " | ".join(
                f"{n}: {m}" for m in ("tiny tasks/s", "sleep utilisation %", "round trip us") for n in names
            ) + " |",
            "|---:|" + "---:|" * (3 * len(names)),
        ]  # fmt: skip
        for w in result["sizes"]["counts"]:
            cells = [
                _cell(s.get(n, {}).get(str(w), {}).get(m), fmt)
                for m, fmt in (("tasks_per_s", ",.0f"), ("utilisation", ".1f"), ("rtt_us", ",.0f"))
                for n in names
            ]
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
    if "netns" in result:
        s = result["netns"]["summary"]
        ts = result["netns"]["transports"]
        if lines:
            lines.append("")
        lines += [
            "| workers (3 groups) | " + " | ".join(
                f"{t}: {m}" for m in ("tiny tasks/s", "round trip us") for t in ts
            ) + " |",
            "|---:|" + "---:|" * (2 * len(ts)),
        ]  # fmt: skip
        for k in result["sizes"]["per_host"]:
            w = str(HOSTS * k)
            cells = [
                _cell(s.get(t, {}).get(w, {}).get(m), fmt)
                for m, fmt in (("tasks_per_s", ",.0f"), ("rtt_us", ",.0f"))
                for t in ts
            ]
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sizes(*, quick: bool = False, counts: str | None = None, per_host: str | None = None) -> dict[str, Any]:
    size = dict(QUICK if quick else FULL)
    if counts:
        size["counts"] = [int(c) for c in counts.split(",") if c]
    if per_host:
        size["per_host"] = [int(c) for c in per_host.split(",") if c]
    if not size["counts"] or min(size["counts"]) < 1 or not size["per_host"] or min(size["per_host"]) < 1:
        raise SystemExit("worker counts must be positive integers")
    return size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--part", default="local,netns", help="local, netns or both (netns needs root)")
    ap.add_argument("--contenders", default=",".join(LOCAL_CONTENDERS), help="for the local part")
    ap.add_argument("--counts", help="local worker counts, e.g. 1,2,4,8,16,32,64")
    ap.add_argument("--per-host", help="workers per host for the netns part, e.g. 1,2,4")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per child process")
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--broker", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        size = json.loads(args.sizes)
        if args.child == "local":
            res = local_child(args.name, size)
        else:
            res = cluster_child(args.broker, args.key, args.workers, size)
        with open(args.out, "w") as fh:
            json.dump(res, fh)
        return 0
    parts = [p for p in args.part.split(",") if p]
    if not parts or set(parts) - {"local", "netns"}:
        ap.error("--part: local, netns or local,netns")
    names = [n for n in args.contenders.split(",") if n]
    bad = [n for n in names if n not in CONTENDERS or not CONTENDERS[n].wide]
    if bad:
        ap.error(f"--contenders: {', '.join(bad)} cannot run here; choose among scoopexec, "
                 "ProcessPoolExecutor, loky")  # fmt: skip
    size = sizes(quick=args.quick, counts=args.counts, per_host=args.per_host)
    result = run(parts, args.rounds, size, names=names, python=args.python, timeout=args.timeout)
    print(markdown(result))
    for e in result["errors"]:
        print("error:", e.splitlines()[0][:300], file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
