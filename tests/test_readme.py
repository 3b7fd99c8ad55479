"""Every complete code block of README.md runs, as a reader would run it.

A ```python block runs as a script, a ```bash block with ``bash -e`` (its ``python`` is this
interpreter), all in one scratch directory in README order, so that a command may use what an
earlier block wrote (``report run.json`` after the block that records it).  A block that is not a
whole program -- a fragment of a larger one, or one that needs hosts, SLURM or a process that runs
until stopped -- is preceded in README.md by a visible marker with the reason:

    <!-- fragment: needs hosts reachable by ssh -->

Fragments are not run, but python ones must still compile.  Blocks without a language (sample
output) are not code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = Path(ROOT) / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*fragment:\s*(.*?)\s*-->\s*$")
RUNNABLE = ("python", "bash")


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    fragment: str | None  # the marker's reason; None: a whole program, to run


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        i += 1
        body: list[str] = []
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md:{start + 1}: code block never closed")
        i += 1
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        blocks.append(Block(start + 1, lang, "\n".join(body) + "\n", marker.group(1) if marker else None))
    return blocks


BLOCKS = [b for b in readme_blocks(README.read_text()) if b.lang in RUNNABLE]
TO_RUN = [b for b in BLOCKS if b.fragment is None]


def _run(block: Block, workdir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    if block.lang == "python":
        script = workdir / f"readme_{block.line}.py"
        script.write_text(block.code)
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    try:
        return subprocess.run(
            argv, check=False, cwd=workdir, env=env, capture_output=True, text=True, timeout=100
        )
    except subprocess.TimeoutExpired as exc:  # one block hanging must not hide the others' outcomes
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return subprocess.CompletedProcess(argv, -9, out, f"timed out after {exc.timeout} s")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[int, subprocess.CompletedProcess[str]]:
    """Every block run once, in README order, in one directory: {line: outcome}."""
    workdir = tmp_path_factory.mktemp("readme")
    return {b.line: _run(b, workdir) for b in TO_RUN}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", TO_RUN, ids=[f"README.md:{b.line}-{b.lang}" for b in TO_RUN])
def test_readme_block_runs(block: Block, outcomes: dict[int, subprocess.CompletedProcess[str]]) -> None:
    r = outcomes[block.line]
    assert r.returncode == 0, (
        f"README.md:{block.line} ({block.lang}) exited with {r.returncode}\n--- code\n{block.code}"
        f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    )


def test_readme_blocks_print_what_the_text_says(
    outcomes: dict[int, subprocess.CompletedProcess[str]],
) -> None:
    said = {b.code: outcomes[b.line].stdout for b in TO_RUN}
    fib = next(out for code, out in said.items() if "def fib(n)" in code)
    assert fib.strip() == "6765"
    report = next(out for code, out in said.items() if "scoopexec report run.json" in code)
    assert "1,000 tasks on" in report, report  # the trace recorded by the block before it


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.fragment is not None], ids=lambda b: f"README.md:{b.line}-{b.lang}"
)
def test_readme_fragment_has_a_reason_and_compiles(block: Block) -> None:
    assert block.fragment, f"README.md:{block.line}: a fragment marker must say why the block is not run"
    if block.lang == "python":
        compile(block.code, f"README.md:{block.line}", "exec")


def test_every_marker_precedes_a_code_block() -> None:
    lines = README.read_text().splitlines()
    for n, line in enumerate(lines):
        if MARKER.match(line):
            following = next((x for x in lines[n + 1 :] if x.strip()), "")
            opens_code = FENCE.match(following) and following != "```"
            assert opens_code, f"README.md:{n + 1}: a fragment marker with no code block after it"
    assert len(TO_RUN) >= 5, "the README's main examples are meant to run"


def test_the_example_the_readme_starts_with_runs(tmp_path: Path) -> None:
    # The first block installs packages and runs the test-suite (a fragment); its example runs here.
    first = BLOCKS[0]
    assert "python examples/onemax.py" in first.code
    r = subprocess.run(
        [sys.executable, "examples/onemax.py", "--generations", "3", "--population", "60"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert r.returncode == 0, r.stderr
    assert re.search(r"\d+ evaluations on \d+ workers in", r.stdout), r.stdout
    assert "speed-up" in r.stdout
