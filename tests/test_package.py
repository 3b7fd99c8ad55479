"""`pip install .` gives a working library: build the wheel, install it in a fresh venv, use it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(600)


def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), ROOT],
        capture_output=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    (wheel,) = dist.glob("scoopexec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "scoopexec/py.typed" in names
    assert "scoopexec/integrations/__init__.py" in names
    assert not any(n.startswith("tests/") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    r = subprocess.run(
        [py, "-m", "pip", "install", "-q", str(wheel)], capture_output=True, timeout=300
    )
    assert r.returncode == 0, r.stderr.decode()[-3000:]

    script = tmp_path / "use_it.py"
    script.write_text(
        textwrap.dedent(
            """
            import scoopexec, scoopexec.integrations
            from scoopexec import ScoopExecutor
            assert "site-packages" in scoopexec.__file__, scoopexec.__file__
            from concurrent.futures import ScoopExecutor as FromTheStdlibsPlace  # (the wheel's .pth)
            assert FromTheStdlibsPlace is ScoopExecutor
            def square(x):
                return x * x
            if __name__ == "__main__":
                with ScoopExecutor(2) as ex:
                    print(sum(ex.map(square, range(100))), ex.submit(lambda: 7).result())
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([py, str(script)], capture_output=True, timeout=120, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().split() == [str(sum(x * x for x in range(100))), "7"]


def test_public_api_is_documented_and_listed():
    """Every public name (and its public methods) has a docstring and appears in __all__."""
    import importlib
    import inspect

    import scoopexec

    modules = [scoopexec] + [
        importlib.import_module(f"scoopexec.{m}") for m in ("status", "report", "trace", "logs", "progress")
    ]
    missing = []
    for mod in modules:
        assert mod.__doc__, mod.__name__
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{mod.__name__}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    target = member.fget if isinstance(member, property) else member
                    if isinstance(target, (classmethod, staticmethod)):
                        target = target.__func__
                    if inspect.isfunction(target) and not target.__doc__:
                        missing.append(f"{mod.__name__}.{name}.{attr}")
    assert not missing, f"public names without a docstring: {missing}"
    public = {
        n for n in dir(scoopexec)
        if not n.startswith("_") and not inspect.ismodule(getattr(scoopexec, n)) and n != "annotations"
    }  # fmt: skip
    assert public <= set(scoopexec.__all__), public - set(scoopexec.__all__)


def test_integrations_work_from_an_installed_wheel(tmp_path):
    """scoopexec.integrations (joblib, DEAP) and the launcher, imported from site-packages."""
    import deap
    import joblib

    dist = tmp_path / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), ROOT],
        capture_output=True,
        check=False,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    (wheel,) = dist.glob("scoopexec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"scoopexec/integrations/deap.py", "scoopexec/integrations/joblib_backend.py"} <= set(names)
    assert not any(n.startswith("integrations/") for n in names)
    assert {"scoopexec_joblib.pth", "_scoopexec_joblib.py"} <= set(names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    r = subprocess.run(
        [py, "-m", "pip", "install", "-q", str(wheel)], capture_output=True, check=False, timeout=300
    )
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    # joblib and DEAP (with NumPy) come from this test's environment, after the venv's own packages.
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    extra = {os.path.dirname(os.path.dirname(m.__file__)) for m in (joblib, deap)}
    with open(os.path.join(site, "zz_test_deps.pth"), "w") as fh:
        fh.write("\n".join(sorted(extra)) + "\n")

    (tmp_path / "use_integrations.py").write_text(
        textwrap.dedent(
            """
            import joblib
            import scoopexec.integrations.deap as integration
            from deap import base, creator
            from scoopexec import ScoopExecutor, scoop_map
            assert integration.__file__.startswith(__import__("sysconfig").get_paths()["purelib"])

            creator.create("FitnessMax", base.Fitness, weights=(1.0,))
            creator.create("Individual", list, fitness=creator.FitnessMax)

            def ones(ind):
                return (sum(ind),)

            def square(x):
                return x * x

            if __name__ == "__main__":
                with ScoopExecutor(2):
                    print(scoop_map(ones, [creator.Individual([1, 1]), creator.Individual([0, 1])]))
                with joblib.parallel_config(backend="scoop", n_jobs=2):
                    print(joblib.Parallel()(joblib.delayed(square)(i) for i in range(4)))
            """
        )
    )
    (tmp_path / "scoop_program.py").write_text(
        textwrap.dedent(
            """
            from scoop import futures, shared

            def scaled(x):
                return x * shared.getConst("k")

            if __name__ == "__main__":
                shared.setConst(k=10)
                print(list(futures.map(scaled, range(4))))
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [py, "use_integrations.py"], capture_output=True, check=False, timeout=180, cwd=str(tmp_path), env=env
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().splitlines() == ["[(2,), (1,)]", "[0, 1, 4, 9]"]
    # joblib alone: the backend name resolves through the installed .pth, scoopexec imported on use
    r = subprocess.run(
        [py, "-c", "import sys, joblib; assert 'scoopexec' not in sys.modules; "
         "print(joblib.Parallel(n_jobs=2, backend='scoop')(joblib.delayed(abs)(-i) for i in range(3)))"],
        capture_output=True, check=False, timeout=180, cwd=str(tmp_path), env=env,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "[0, 1, 2]"
    r = subprocess.run(
        [py, "-m", "scoopexec", "-n", "2", "scoop_program.py"],
        capture_output=True, check=False, timeout=180, cwd=str(tmp_path), env=env,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "[0, 10, 20, 30]"
