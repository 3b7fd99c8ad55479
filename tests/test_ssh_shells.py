"""Remote workers whatever the login shell: fish and tcsh, through a real sshd (issue 14).

sshd runs a session's command with the user's login shell from the passwd database.  The
sshd here runs in a mount namespace of its own where /etc/passwd is a copy that gives this
user fish (or tcsh): nothing of the machine changes.  The env= values must reach the
workers intact, and appear on no command line (ps) on either side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import psutil
import pytest

from scoopexec import ScoopExecutor
from tests import helpers
from tests.cluster_fixtures import SSHD, SSHServer, need

pytestmark = pytest.mark.timeout(180)

TRICKY = "it's $HOME; `x` \"y\" \\z * {a,b} !1 %s ~"  # quoting trouble for sh, fish and csh alike


def _passwd_with_shell(path: str, shell: str) -> None:
    uid = os.getuid()
    with open("/etc/passwd") as src, open(path, "w") as out:
        for line in src:
            fields = line.rstrip("\n").split(":")
            if len(fields) == 7 and fields[2] == str(uid):
                fields[6] = shell
            out.write(":".join(fields) + "\n")


@pytest.fixture(params=["fish", "tcsh"])
def shell_sshd(request):
    need(SSHD, "ssh", "ssh-keygen", "unshare", "mount", request.param)
    shell = shutil.which(request.param)
    assert shell is not None
    workdir = tempfile.mkdtemp(prefix="scoopexec-sshd-shell-")
    passwd = os.path.join(workdir, "passwd")
    _passwd_with_shell(passwd, shell)
    prefix = ["unshare", "--mount", "--propagation", "private", "--",
              "/bin/sh", "-c", 'mount --bind "$0" /etc/passwd && exec "$@"', passwd]  # fmt: skip
    server = SSHServer(workdir, prefix=prefix)
    try:
        yield server, shell
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _in_any_command_line(text: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if text in cmd:
            found.append(cmd)
    return found


def test_workers_start_under_a_non_posix_login_shell(shell_sshd, tmp_path, monkeypatch):
    server, shell = shell_sshd
    config = server.ssh_config(["node1"])
    monkeypatch.chdir(tmp_path)
    marker = f"secret-{os.getpid()}-{TRICKY}"
    env = {"SCOOPEXEC_TEST_MARK": marker}
    with ScoopExecutor(hosts=["node1:2"], ssh=["ssh", "-F", config], env=env) as ex:
        results = list(ex.map(helpers.slow_where, [0.05] * 20))
        assert all(r[1] for r in results), "every task ran in an ssh session"
        assert {r[3] for r in results} == {marker}, "env= reaches remote workers intact"
        assert {r[2] for r in results} == {str(tmp_path)}
        assert not _in_any_command_line(f"secret-{os.getpid()}"), "an env= value is on a command line"
    # The sessions really run under that shell: a variable only it sets.
    var = {"fish": "$FISH_VERSION", "tcsh": "$tcsh"}[os.path.basename(shell)]
    cmd = ["ssh", "-F", config, "node1", f"echo {var}"]
    r = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.strip(), (r.stdout, r.stderr)
