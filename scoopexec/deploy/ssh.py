"""Workers on other hosts, started over OpenSSH: one session per host runs a worker group.

::

  client (embedded broker)                          host "node2" (sshd, no scoopexec daemon)
  ROUTER tcp://0.0.0.0:P (CURVE) ◄───────────────── worker ┐
  ssh -o BatchMode=yes node2 'cd DIR && exec env   worker ├─ python -m scoopexec worker -n N
      PYTHONPATH=.. PYTHON -m scoopexec worker      worker ┘  --connect-back P --key-stdin
      --connect-back P --key-stdin -n N ...'                  --watch-stdin --ready
  stdin  ── key header, then nothing until EOF ──►  (EOF: the group stops its workers)
  stdout ◄─ SCOOPEXEC-GROUP N, SCOOPEXEC-READY tag ─ (one line per connected worker)
  stderr ◄─ ssh's and the workers' messages ───────

Nothing is installed or left running on the remote host: one ssh session per
host runs a worker group that lives exactly as long as that session.  Its
standard input carries the CURVE keys (never argv or the environment), then
stays open; when the client, ssh or the connection goes away the group reads
EOF and stops its workers; if the broker goes silent, the workers' heartbeats
end them.  ``--connect-back`` makes a worker connect to the address its ssh
session came from (``SSH_CONNECTION``), which is this machine's address as
the remote host sees it.

The remote command line is a shell string on the far side: each piece of it is
quoted with shlex.quote.  Host keys are checked as ssh always does
(``BatchMode=yes`` turns any prompt into an error): scoopexec never turns
checking off.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from .hosts import Host
from .local import remote_pythonpath

__all__ = ["hint", "ssh_command"]


def ssh_command(
    host: Host,
    *,
    ssh: Sequence[str],
    python: str,
    cwd: str,
    env: Mapping[str, str],
    args: Sequence[str],
    connect_timeout: float,
) -> list[str]:
    """The argv that runs a worker group on ``host`` through the system ssh client.

    Options of ``ssh`` (the caller's) come first, and ssh keeps the first
    value it sees for an option: a user may loosen what we set here, we never
    loosen what the user set.
    """
    assigns = [f"{k}={shlex.quote(v)}" for k, v in {"PYTHONPATH": remote_pythonpath(), **env}.items()]
    remote = " ".join(
        ["cd", shlex.quote(cwd), "&&", "exec", "env", *assigns, shlex.quote(python)]
        + [shlex.quote(a) for a in args]
    )
    return [
        *ssh,
        "-o", "BatchMode=yes",  # never prompt (passwords, unknown host keys): fail instead
        "-o", f"ConnectTimeout={max(1, round(connect_timeout))}",
        "-o", "ServerAliveInterval=5",  # notice a dead connection; the remote side sees EOF
        "-o", "ServerAliveCountMax=3",
        "-T", "-x", "-a",  # no terminal, no X11 or agent forwarding to worker hosts
        "-e", "none",
        "--",
        host.target,
        remote,
    ]  # fmt: skip


def hint(python: str, cwd: str) -> str:
    """What to check when a host cannot be used (added to its LaunchError)."""
    return (
        "check that `ssh -o BatchMode=yes HOST true` works from here without a prompt, that "
        f"{python} and {cwd} exist there (or pass python= / cwd=), and that the host "
        "key is in known_hosts"
    )
