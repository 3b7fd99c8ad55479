"""Workers on other hosts, started over OpenSSH: one session per host runs a worker group.

::

  client (embedded broker)                          host "node2" (sshd, no scoopexec daemon)
  ROUTER tcp://0.0.0.0:P (CURVE) ◄───────────────── worker ┐
  ssh -o BatchMode=yes node2 "exec /bin/sh -c       worker ├─ python -m scoopexec worker -n N
      'IFS= read -r line && eval \"$line\"'"          worker ┘  --connect-back P --key-stdin
                                                              --watch-stdin --ready
  stdin  ── one line of sh: cd DIR && exec env PYTHONPATH=.. PYTHON -m scoopexec worker ...
         ── key header (keys, env=), then nothing until EOF ──►  (EOF: the group stops)
  stdout ◄─ SCOOPEXEC-GROUP N, SCOOPEXEC-READY tag ─ (one line per connected worker)
  stderr ◄─ ssh's and the workers' messages ───────

Nothing is installed or left running on the remote host: one ssh session per
host runs a worker group that lives exactly as long as that session.  Its
standard input carries the command (so that the login shell, whichever it is --
fish, csh -- only runs a fixed /bin/sh line), the CURVE keys and the ``env=``
variables for the workers (never argv, so never in ps), then stays open; when
the client, ssh or the connection goes away the group reads EOF and stops its
workers; if the broker goes silent, the workers' heartbeats
end them.  ``--connect-back`` makes a worker connect to the address its ssh
session came from (``SSH_CONNECTION``), which is this machine's address as
the remote host sees it.

The command /bin/sh reads is one line of sh: each piece of it is quoted with
shlex.quote.  Host keys are checked as ssh always does
(``BatchMode=yes`` turns any prompt into an error): scoopexec never turns
checking off.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from .hosts import Host
from .local import remote_pythonpath

__all__ = ["REMOTE_COMMAND", "hint", "remote_script", "ssh_command"]


REMOTE_COMMAND = """exec /bin/sh -c 'IFS= read -r line && eval "$line"'"""
"""What ssh asks the remote login shell to run, the same text for every host and pool: it parses
alike in sh, bash, zsh, fish, csh and tcsh (one single-quoted word, without a backslash, ``!`` or
newline), and makes /bin/sh read the real command, :func:`remote_script`, from the session's
standard input."""


def remote_script(*, python: str, cwd: str, args: Sequence[str]) -> bytes:
    """The one line of sh that /bin/sh reads first on the remote side: go to ``cwd``, run the group.

    Each piece is quoted with shlex.quote; the environment of ``env=`` is not in it (it follows
    in the key header, see wire/security.encode_frame), so no value shows in ps.
    """
    pythonpath = remote_pythonpath()
    pieces = [("cwd", cwd), ("python", python), ("PYTHONPATH", pythonpath), *(("argv", a) for a in args)]
    for what, text in pieces:
        if "\n" in text or "\0" in text:
            raise ValueError(f"{what} {text!r} cannot be used on a remote host: it holds a newline or NUL")
    words = ["cd", "--", cwd, "&&", "exec", "env", f"PYTHONPATH={pythonpath}", python, *args]
    return " ".join(w if w in ("&&", "--") else shlex.quote(w) for w in words).encode() + b"\n"


def ssh_command(
    host: Host,
    *,
    ssh: Sequence[str],
    connect_timeout: float,
) -> list[str]:
    """The argv that runs a worker group on ``host`` through the system ssh client.

    The remote command is :data:`REMOTE_COMMAND`; what it runs comes on the session's standard
    input (:func:`remote_script`, then the key header).  Options of ``ssh`` (the caller's) come
    first, and ssh keeps the first value it sees for an option: a user may loosen what we set
    here, we never loosen what the user set.
    """
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
        REMOTE_COMMAND,
    ]  # fmt: skip


def hint(python: str, cwd: str) -> str:
    """What to check when a host cannot be used (added to its LaunchError)."""
    return (
        "check that `ssh -o BatchMode=yes HOST true` works from here without a prompt, that "
        f"{python} and {cwd} exist there (or pass python= / cwd=), and that the host "
        "key is in known_hosts"
    )
