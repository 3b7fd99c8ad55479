"""What pyproject.toml cannot say: scoopexec_joblib.pth at the top of site-packages.

That one-line file imports ``_scoopexec_joblib`` at interpreter start, so that joblib knows the
backend ``"scoop"``, and ``concurrent.futures`` the name ``ScoopExecutor``, without ``import
scoopexec`` (see that module).  A wheel gets the file
through build_py; an editable install (``pip install -e``, PEP 660) builds its wheel without
build_py's output, so editable_wheel adds the file to that wheel's top level itself.
"""

from __future__ import annotations

import os

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "scoopexec_joblib.pth"
# Tolerant: an editable install whose source no longer has the module (an older commit checked
# out, the checkout moved) must not print a traceback at every interpreter start.
PTH_TEXT = (
    'import sys; exec("try:\\n import _scoopexec_joblib\\nexcept ImportError:\\n pass\\n'
    'else:\\n _scoopexec_joblib.install()")\n'
)


def write_pth(directory: str) -> str:
    path = os.path.join(directory, PTH_NAME)
    with open(path, "w") as fh:
        fh.write(PTH_TEXT)
    return path


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            write_pth(self.build_lib)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:  # type: ignore[override]
        outputs: list[str] = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs  # (run() wrote none: editable_wheel adds it)
        return [*outputs, os.path.join(self.build_lib, PTH_NAME)]


class EditableWheelWithPth(editable_wheel):
    # The editable wheel is zipped from a directory this method fills first (setuptools >= 64);
    # without it the .pth would be missing from editable installs without a word, so fail instead.
    if not hasattr(editable_wheel, "_install_namespaces"):
        raise RuntimeError("setuptools' editable_wheel changed: setup.py cannot add " + PTH_NAME)

    def _install_namespaces(self, installation_dir: str, pth_prefix: str) -> None:
        super()._install_namespaces(installation_dir, pth_prefix)
        write_pth(str(installation_dir))


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
