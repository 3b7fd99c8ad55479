"""Throw-away cluster infrastructure for the tests: sshd, a SLURM cluster, network namespaces.

Everything is started by the test run itself, under a temporary directory,
and stopped by the pids it started (never by name):

- :class:`SSHServer`: Debian's OpenSSH server with its own host key, a user key
  and a known_hosts file, so that ssh really checks the host key.  Test hosts
  are ssh aliases (``node1`` ...) in a client config file.
- :class:`SlurmCluster`: munged with its own key and socket, slurmctld, and one
  slurmd per emulated node, all on this machine on free localhost ports.
- :class:`Namespace`: a network namespace joined to this one by a veth pair,
  with addresses from 198.18.0.0/15 (the range set aside for network tests),
  where an sshd and workers run as if on another host.

Each needs root and Debian packages; the fixtures skip with the reason when
something is missing (.ci/run installs the packages).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence

import psutil
import pytest

from tests.conftest import ROOT

SSHD = "/usr/sbin/sshd"


def need(*commands: str, root: bool = True) -> None:
    """Skip the test unless we are root and every command exists."""
    if root and os.geteuid() != 0:
        pytest.skip("needs root (to run sshd / slurmd / network namespaces)")
    missing = [c for c in commands if shutil.which(c) is None and not os.path.exists(c)]
    if missing:
        pytest.skip(
            f"needs {', '.join(missing)} (Debian: apt-get install openssh-server slurmctld slurmd "
            "slurm-client munge iproute2 iptables; .ci/run does it)"
        )


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n consecutive free TCP ports."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((host, 0))
            base = s.getsockname()[1]
        if base + n >= 65000:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                t = socket.socket()
                socks.append(t)
                t.bind((host, p))
            return list(range(base, base + n))
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free port range")


def wait_for(what: str, check, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def stop_tree(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a daemon we started and every process under it (by pid)."""
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    if proc.poll() is None:
        proc.terminate()
    for k in kids:
        try:
            k.terminate()
        except psutil.Error:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    _gone, alive = psutil.wait_procs(kids, timeout=timeout)
    for k in alive:
        try:
            k.kill()
        except psutil.Error:
            pass


def env_with_root() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# ------------------------------------------------------------------- ssh
def keygen(path: str, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
        check=True,
        capture_output=True,
    )
    with open(path + ".pub") as fh:
        return fh.read().strip()


class SSHServer:
    """An sshd on one address, with a throw-away host key; clients get an ssh config file."""

    def __init__(self, workdir: str, address: str = "127.0.0.1", port: int | None = None,
                 prefix: Sequence[str] = ()) -> None:  # fmt: skip
        need(SSHD, "ssh", "ssh-keygen")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self.dir = workdir
        self.address = address
        self.port = port or free_ports(1, address if address.startswith("127.") else "127.0.0.1")[0]
        self.host_pub = keygen(os.path.join(workdir, "host_key"), "scoopexec-test-host")
        self.user_key = os.path.join(workdir, "user_key")
        user_pub = keygen(self.user_key, "scoopexec-test-user")
        with open(os.path.join(workdir, "authorized_keys"), "w") as fh:
            fh.write(user_pub + "\n")
        self.config = os.path.join(workdir, "sshd_config")
        with open(self.config, "w") as fh:
            fh.write(
                textwrap.dedent(
                    f"""\
                    Port {self.port}
                    ListenAddress {address}
                    HostKey {workdir}/host_key
                    PidFile {workdir}/sshd.pid
                    AuthorizedKeysFile {workdir}/authorized_keys
                    UsePAM no
                    StrictModes no
                    PasswordAuthentication no
                    KbdInteractiveAuthentication no
                    PermitRootLogin prohibit-password
                    MaxStartups 100:30:200
                    MaxSessions 100
                    LogLevel VERBOSE
                    """
                )
            )
        self.log = open(os.path.join(workdir, "sshd.log"), "wb")
        self.proc = subprocess.Popen(
            [*prefix, SSHD, "-D", "-e", "-f", self.config],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.known_hosts = self.write_known_hosts("known_hosts", self.host_pub)
        try:
            wait_for("sshd to listen", self._listening, timeout=30)
        except BaseException:
            self.stop()
            raise

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {self.read_log()}")
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((self.address, self.port)) == 0

    def read_log(self) -> str:
        with open(os.path.join(self.dir, "sshd.log"), errors="replace") as fh:
            return fh.read()

    def write_known_hosts(self, name: str, pub: str) -> str:
        path = os.path.join(self.dir, name)
        key = " ".join(pub.split()[:2])
        with open(path, "w") as fh:
            name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
            fh.write(f"{name} {key}\n")
        return path

    def ssh_config(self, aliases: Sequence[str], *, name: str = "ssh_config", known_hosts: str | None = None,
                   identity: str | None = None, port: int | None = None) -> str:  # fmt: skip
        """An ssh client config where every alias is this server."""
        path = os.path.join(self.dir, name)
        with open(path, "w") as fh:
            fh.write(
                textwrap.dedent(
                    f"""\
                    Host {" ".join(aliases)}
                        HostName {self.address}
                        Port {port or self.port}
                        User {_user()}
                        IdentityFile {identity or self.user_key}
                        IdentitiesOnly yes
                        UserKnownHostsFile {known_hosts or self.known_hosts}
                        GlobalKnownHostsFile /dev/null
                        LogLevel ERROR
                    """
                )
            )
        return path

    def sessions(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def stop(self) -> None:
        stop_tree(self.proc)
        self.log.close()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(scope="session")
def sshd() -> Iterator[SSHServer]:
    """One sshd on 127.0.0.1 for the whole run."""
    need(SSHD, "ssh", "ssh-keygen")
    workdir = tempfile.mkdtemp(prefix="scoopexec-sshd-")
    server = SSHServer(workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------- SLURM
class SlurmCluster:
    """munged + slurmctld + one slurmd per emulated node, under ``root``."""

    def __init__(self, root: str, nodes: int = 3, cpus: int = 2) -> None:
        need("munged", "mungekey", "slurmctld", "slurmd", "srun", "sbatch", "squeue", "scontrol")
        self.root = root
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.procs: list[subprocess.Popen] = []
        for d in ("etc", "state", "log", "run", "munge", *[f"spool/{n}" for n in self.nodes]):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        os.chmod(root, 0o755)
        os.chmod(os.path.join(root, "munge"), 0o711)
        self.sock = os.path.join(root, "munge", "munge.socket")
        key = os.path.join(root, "munge", "munge.key")
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
        try:
            self._start(
                "munged",
                ["munged", "-F", f"--key-file={key}", f"--socket={self.sock}",
                 f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/log/munged.log",
                 f"--seed-file={root}/munge/munged.seed"],
            )  # fmt: skip
            wait_for("munged", lambda: os.path.exists(self.sock), timeout=30)
            ports = free_ports(nodes + 1)
            ctld_port, node_ports = ports[0], ports[1:]
            self.conf = os.path.join(root, "etc", "slurm.conf")
            with open(self.conf, "w") as fh:
                fh.write(self._config(ctld_port, node_ports[0], node_ports[-1], cpus))
            self.env = dict(os.environ, SLURM_CONF=self.conf)
            self._start("slurmctld", ["slurmctld", "-D", "-f", self.conf])
            wait_for("slurmctld", lambda: "is UP" in self.run(["scontrol", "ping"]).stdout, timeout=60)
            for n in self.nodes:
                self._start(f"slurmd-{n}", ["slurmd", "-D", "-N", n, "-f", self.conf])
            wait_for(f"{nodes} idle nodes", self._all_idle, timeout=60, interval=0.2)
        except BaseException:
            self.stop()
            raise

    def _config(self, ctld_port: int, first: int, last: int, cpus: int) -> str:
        r = self.root
        n = len(self.nodes)
        return textwrap.dedent(
            f"""\
            ClusterName=scoopexectest
            SlurmctldHost=localhost
            SlurmUser=root
            SlurmdUser=root
            SlurmctldPort={ctld_port}
            SlurmdPort={first}
            AuthType=auth/munge
            AuthInfo=socket={self.sock}
            CredType=cred/munge
            StateSaveLocation={r}/state
            SlurmdSpoolDir={r}/spool/%n
            SlurmctldPidFile={r}/run/slurmctld.pid
            SlurmdPidFile={r}/run/slurmd-%n.pid
            SlurmctldLogFile={r}/log/slurmctld.log
            SlurmdLogFile={r}/log/slurmd-%n.log
            ProctrackType=proctrack/linuxproc
            TaskPlugin=task/none
            SelectType=select/cons_tres
            SelectTypeParameters=CR_Core
            JobAcctGatherType=jobacct_gather/none
            AccountingStorageType=accounting_storage/none
            JobCompType=jobcomp/none
            MpiDefault=none
            SwitchType=switch/none
            SchedulerType=sched/backfill
            MailProg=/bin/true
            ReturnToService=2
            SlurmdParameters=config_overrides
            SlurmctldTimeout=30
            SlurmdTimeout=30
            InactiveLimit=0
            MinJobAge=30
            KillWait=5
            Waittime=0
            NodeName=node[1-{n}] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[{first}-{last}] CPUs={cpus} RealMemory=1000 State=UNKNOWN
            PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
            """  # noqa: E501
        )

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(os.path.join(self.root, "log", f"{name}.stdout"), "wb")
        try:
            self.procs.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=getattr(self, "env", None),
                )
            )
        finally:
            log.close()

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 120,
            **kw) -> subprocess.CompletedProcess:  # fmt: skip
        return subprocess.run(
            argv, capture_output=True, text=True, env=env or self.env, timeout=timeout, check=False, **kw
        )

    def _all_idle(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode}; logs in {self.root}/log")
        out = self.run(["sinfo", "-h", "-N", "-o", "%T"]).stdout.split()
        return len(out) == len(self.nodes) and all(s == "idle" for s in out)

    def sbatch(self, script: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 120) -> tuple[int, str]:  # fmt: skip
        """Run a batch job to its end; return (exit code, its output)."""
        path = os.path.join(self.root, f"job-{next(_jobs)}.sh")
        out = path + ".out"
        with open(path, "w") as fh:
            fh.write(script)
        r = self.run(["sbatch", "--parsable", "-o", out, *args, path], env=env)
        assert r.returncode == 0, r.stderr
        job = r.stdout.strip().split(";")[0]
        try:
            wait_for(f"job {job}", lambda: not self.run(["squeue", "-h", "-j", job]).stdout.strip(),
                     timeout=timeout, interval=0.3)  # fmt: skip
        except TimeoutError:
            self.run(["scancel", job])
            raise
        state = self.run(["scontrol", "show", "job", job]).stdout
        code = 0
        for word in state.split():
            if word.startswith("ExitCode="):
                code = int(word.split("=")[1].split(":")[0])
        with open(out, errors="replace") as fh:
            return code, fh.read()

    def stop(self) -> None:
        env = getattr(self, "env", None)
        if env is not None and any(p.poll() is None for p in self.procs):
            jobs = self.run(["squeue", "-h", "-o", "%A"]).stdout.split()
            if jobs:
                self.run(["scancel", *jobs])
                try:
                    wait_for("jobs to end", lambda: not self.run(["squeue", "-h"]).stdout.strip(), 15)
                except TimeoutError:
                    pass
        for p in reversed(self.procs):
            stop_tree(p)


_jobs = itertools.count(1)


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    need("munged", "mungekey", "slurmctld", "slurmd", "srun", "sbatch", "squeue", "scontrol")
    root = tempfile.mkdtemp(prefix="scoopexec-slurm-")
    cluster = SlurmCluster(root)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------- network namespaces
_ns_count = itertools.count(1)


def _used_subnets() -> set[int]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    used = set()
    for word in out.split():
        if word.startswith("198.18."):
            used.add(int(word.split(".")[2]))
    return used


class Namespace:
    """A network namespace linked to ours by a veth pair: a host of its own on 198.18.K.0/24."""

    def __init__(self) -> None:
        need("ip", "iptables")
        tag = f"{os.getpid() % 100000}x{next(_ns_count)}"
        self.name = f"sxns{tag}"
        self.veth = f"sxv{tag}"
        self.peer = f"sxp{tag}"
        used = _used_subnets()
        start = 100 + os.getpid() % 100
        k = next(i for i in itertools.chain(range(start, 250), range(1, 250)) if i not in used)
        self.host_ip = f"198.18.{k}.1"  # our side
        self.ip = f"198.18.{k}.2"  # the namespace's address
        self.created = False
        try:
            self._ip("netns", "add", self.name)
            self.created = True
            self._ip("link", "add", self.veth, "type", "veth", "peer", "name", self.peer)
            self._ip("link", "set", self.peer, "netns", self.name)
            self._ip("addr", "add", f"{self.host_ip}/24", "dev", self.veth)
            self._ip("link", "set", self.veth, "up")
            self._ip("-n", self.name, "addr", "add", f"{self.ip}/24", "dev", self.peer)
            self._ip("-n", self.name, "link", "set", self.peer, "up")
            self._ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    @staticmethod
    def _ip(*args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            if "Operation not permitted" in r.stderr or "Permission denied" in r.stderr:
                pytest.skip(f"network namespaces are not allowed here: {r.stderr.strip()}")
            raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """Drop every packet in and out of the namespace (its link stays up)."""
        for chain in ("INPUT", "OUTPUT"):
            cmd = [*self.prefix, "iptables", "-A", chain, "-j", "DROP"]
            subprocess.run(cmd, check=True, capture_output=True)

    def processes(self) -> list[psutil.Process]:
        """Processes that run inside this namespace."""
        try:
            ino = os.stat(f"/run/netns/{self.name}").st_ino
        except OSError:
            return []
        out = []
        for p in psutil.process_iter():
            try:
                if os.stat(f"/proc/{p.pid}/ns/net").st_ino == ino:
                    out.append(p)
            except OSError:
                continue
        return out

    def delete(self) -> None:
        if self.created:
            subprocess.run([*self.prefix, "iptables", "-F"], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
            self.created = False
        # gVisor keeps the veth when its namespace goes
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, check=False)


def python_in(ns: Namespace | None = None) -> list[str]:
    return [*(ns.prefix if ns else []), sys.executable]
