"""Under CI, a skipped test fails the run unless its reason is on tests/allowed_skips.txt.

A skip hides a test: on a developer's machine it says what is missing, but in CI,
which installs everything, it would let a whole area go unchecked while the run
stays green.  conftest.py wires these hooks in.  They act when the environment
has CI=true (what CI sets) or SCOOPEXEC_STRICT_SKIPS=1 (to try it by hand).

tests/allowed_skips.txt has one entry a line: a regular expression searched for
in the skip reason, then `` -- `` and why that skip is acceptable in CI.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pytest

ALLOW_LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "allowed_skips.txt")


@dataclass(frozen=True)
class Allowed:
    pattern: re.Pattern[str]
    why: str


def strict() -> bool:
    ci = os.environ.get("CI", "").lower() in ("true", "1")
    return ci or os.environ.get("SCOOPEXEC_STRICT_SKIPS") == "1"


def load_allow_list(path: str | None = None) -> list[Allowed]:
    """The entries of ``path`` (default: ALLOW_LIST); a line without a reason is an error."""
    path = path or ALLOW_LIST
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            pattern, sep, why = line.partition(" -- ")
            if not sep or not pattern.strip() or not why.strip():
                raise ValueError(f"{path}:{n}: an entry is 'REGEX -- why it may skip in CI', got {line!r}")
            out.append(Allowed(re.compile(pattern.strip()), why.strip()))
    return out


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


class SkipGate:
    def __init__(self, allowed: list[Allowed]) -> None:
        self.allowed = allowed
        self.refused: list[tuple[str, str]] = []
        self.accepted: list[tuple[str, str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        reason = skip_reason(report)
        for entry in self.allowed:
            if entry.pattern.search(reason):
                self.accepted.append((report.nodeid, reason, entry.why))
                return
        self.refused.append((report.nodeid, reason))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.refused and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:  # type: ignore[no-untyped-def]
        tr = terminalreporter
        if self.accepted:
            tr.section("skips accepted in CI (tests/allowed_skips.txt)")
            for nodeid, reason, why in self.accepted:
                tr.line(f"{nodeid}: {reason}  [allowed: {why}]")
        if self.refused:
            tr.section("skips NOT allowed in CI", red=True, bold=True)
            for nodeid, reason in self.refused:
                tr.line(f"{nodeid}: {reason}", red=True)
            tr.line(
                f"{len(self.refused)} test(s) skipped with a reason that is not on tests/allowed_skips.txt: "
                "CI installs everything the tests need and runs as root, so each must run "
                "(fix the environment or the test; add an entry only with the reason the skip is right)",
                red=True,
                bold=True,
            )


def configure(config: pytest.Config) -> None:
    """Register the gate when CI asks for it (called from conftest's pytest_configure)."""
    if strict():
        config.pluginmanager.register(SkipGate(load_allow_list()), "scoopexec-skip-gate")
