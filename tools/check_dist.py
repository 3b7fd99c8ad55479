"""Build scoopexec's sdist and wheel, check them with twine, and check what each holds.

    python tools/check_dist.py [--keep DIR]

Needs ``build`` and ``twine`` (pinned in .ci/constraints.txt; ``tox -e package`` and .ci/run
install them).  The sdist is built first and the wheel from it (``python -m build``), so a file the
wheel needs but the sdist lacks fails here.  Then:

* ``twine check --strict`` on both (metadata, and the README as PyPI would render it);
* the wheel holds every package that pyproject.toml lists, ``py.typed``, the console script,
  ``scoopexec_joblib.pth`` with the module it imports (setup.py), and no tests;
* the sdist holds every file git tracks under tests/, examples/, benchmarks/ and docs/, and the
  README, CHANGELOG, pyproject.toml and tox.ini: what ``python -m pytest`` needs to run from an
  unpacked sdist.

Exit status 0 when all hold, 1 (saying what is wrong) otherwise.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDED_DIRS = ("tests", "examples", "benchmarks", "docs")
NEEDED_FILES = ("README.md", "CHANGELOG.md", "pyproject.toml", "tox.ini", "MANIFEST.in")


def run(*cmd: str) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def tracked(dirs: tuple[str, ...]) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--", *dirs], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [p for p in out.splitlines() if os.path.exists(os.path.join(ROOT, p))]


def check(out: str) -> list[str]:
    problems: list[str] = []
    (sdist,) = glob.glob(os.path.join(out, "scoopexec-*.tar.gz"))
    (wheel,) = glob.glob(os.path.join(out, "scoopexec-*.whl"))
    run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel)

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in packages:
        init = pkg.replace(".", "/") + "/__init__.py"
        if init not in names:
            problems.append(f"the wheel lacks {init}")
    if "scoopexec/py.typed" not in names:
        problems.append("the wheel lacks scoopexec/py.typed")
    for top in ("scoopexec_joblib.pth", "_scoopexec_joblib.py"):  # joblib finds "scoop" (setup.py)
        if top not in names:
            problems.append(f"the wheel lacks {top} at its top level")
    entry = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    if not entry or b"scoopexec = scoopexec.__main__:console_main" not in zipfile.ZipFile(wheel).read(entry[0]):
        problems.append("the wheel has no `scoopexec` console script")
    stray = sorted(n for n in names if n.startswith(("tests/", "examples/", "benchmarks/")))
    if stray:
        problems.append(f"the wheel holds files that are not the library: {stray[:5]}")

    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    missing = [p for p in [*tracked(NEEDED_DIRS), *NEEDED_FILES] if p not in members]
    if missing:
        problems.append(f"the sdist lacks {len(missing)} file(s) the tests need: {missing[:10]}")
    caches = sorted(m for m in members if "__pycache__" in m or m.endswith(".pyc"))
    if caches:
        problems.append(f"the sdist holds caches: {caches[:5]}")
    print(f"sdist: {os.path.basename(sdist)}, {len(members)} entries; wheel: {os.path.basename(wheel)}, "
          f"{len(names)} files")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", metavar="DIR", help="build into DIR and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scoopexec-dist-") as tmp:
        out = args.keep or tmp
        os.makedirs(out, exist_ok=True)
        for old in glob.glob(os.path.join(out, "scoopexec-*")):
            os.remove(old)
        run(sys.executable, "-m", "build", "--outdir", out, ROOT)
        problems = check(out)
    for p in problems:
        print("check_dist: " + p, file=sys.stderr)
    if not problems:
        print("check_dist: sdist and wheel are fine")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
