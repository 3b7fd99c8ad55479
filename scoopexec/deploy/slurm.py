"""Workers inside a SLURM allocation: one ``srun`` job step, one task per worker.

``--input=all`` gives every task the key header on its stdin; Slurm ends the step's
tasks when srun goes away.  (PBS and SGE allocations are read in hosts.py and reached
over ssh.)
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .local import worker_env

__all__ = ["HINT", "slurm_address", "srun_command", "srun_env"]

HINT = "srun runs inside the allocation; is there room for another job step?"


def slurm_address(run: Callable[..., Any] = subprocess.run) -> str:
    """This node's address as the other nodes of a SLURM allocation reach it.

    The node's NodeAddr (what slurmctld itself uses to reach it) when we run
    on a node of the allocation; else the address of our host name.
    """
    node = os.environ.get("SLURMD_NODENAME")
    if node:
        try:
            r = run(
                ["scontrol", "show", "node", "-o", node],
                capture_output=True,
                text=True,
                timeout=15,
            )
            m = re.search(r"\bNodeAddr=(\S+)", r.stdout or "")
            if m:
                return socket.gethostbyname(m.group(1))
        except (OSError, subprocess.SubprocessError, socket.gaierror):
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except socket.gaierror:
        return "127.0.0.1"


def srun_command(n: int, args: Sequence[str], *, python: str, cwd: str) -> list[str]:
    """One job step of ``n`` tasks, each a worker, sharing the allocation's CPUs."""
    return [
        "srun",
        f"--ntasks={n}",
        "--kill-on-bad-exit=0",  # one crashed worker does not end the others
        "--input=all",  # every task reads the key header from our pipe
        "--overlap",  # share CPUs with the step the client may run in
        "--job-name=scoopexec-workers",
        f"--chdir={cwd}",
        python,
        *args,
    ]


def srun_env(env: Mapping[str, str]) -> dict[str, str]:
    """srun's environment (which its tasks inherit): ours updated with ``env``, with this
    scoopexec importable (first on PYTHONPATH, the user's own PYTHONPATH of ``env`` kept)."""
    return worker_env(env)
