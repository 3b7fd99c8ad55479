"""docs/long-runs.md: its code blocks run (fragments compile), as README's do in test_readme.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_readme import Block, _run, readme_blocks

PAGE = Path(ROOT) / "docs" / "long-runs.md"
BLOCKS = [b for b in readme_blocks(PAGE.read_text()) if b.lang in ("python", "bash")]
TO_RUN = [b for b in BLOCKS if b.fragment is None]
SAYS = ["100 results, computed once", "bit-identical with 1 and 3 workers", "replayed from the journal"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", TO_RUN, ids=[f"long-runs.md:{b.line}" for b in TO_RUN])
def test_page_block_runs(block: Block, tmp_path: Path) -> None:
    r = _run(block, tmp_path)
    assert r.returncode == 0, f"long-runs.md:{block.line}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    said = [s for s in SAYS if s in block.code]
    assert said and said[0] in r.stdout, r.stdout


def test_page_fragments_compile_and_the_readme_links_the_page() -> None:
    assert len(TO_RUN) == 3
    for b in BLOCKS:
        if b.fragment is not None and b.lang == "python":
            compile(b.code, f"long-runs.md:{b.line}", "exec")
    assert "docs/long-runs.md" in (Path(ROOT) / "README.md").read_text()
