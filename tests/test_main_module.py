"""Workers import the client's main module as __mp_main__, like multiprocessing's spawn."""

from __future__ import annotations

from tests.conftest import run_script


def test_classes_made_at_script_top_level_unpickle_on_workers():
    r = run_script(
        """
        import dataclasses, types, sys
        from scoopexec import ScoopExecutor

        # Like deap.creator.create: a class made at import time in another module's namespace.
        registry = types.ModuleType("registry")
        sys.modules["registry"] = registry
        registry.Individual = type("Individual", (list,), {"__module__": "registry"})

        @dataclasses.dataclass
        class Point:
            x: float
            y: float

        def norm(p):
            return (p.x ** 2 + p.y ** 2) ** 0.5

        def grow(ind):
            ind.append(len(ind))
            return ind

        if __name__ == "__main__":
            with ScoopExecutor(2) as ex:
                print(list(ex.map(norm, [Point(3, 4), Point(6, 8)])))
                out = ex.submit(grow, registry.Individual([1, 2])).result()
                print(type(out).__name__, list(out))
        """
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().splitlines() == ["[5.0, 10.0]", "Individual [1, 2, 2]"]


def test_unguarded_pool_creation_is_refused_on_workers():
    r = run_script(
        """
        from scoopexec import ScoopExecutor
        ex = ScoopExecutor(1)          # no __main__ guard: workers would recurse
        try:
            print(ex.submit(abs, -1).result(timeout=60))
        except Exception as exc:
            print("error:", type(exc).__name__, exc)
        ex.shutdown()
        """,
        timeout=90,
    )
    out = r.stdout.decode()
    assert "error:" in out and "__main__" in out, (out, r.stderr.decode())


def test_script_imports_its_sibling_modules_on_workers(tmp_path):
    (tmp_path / "mylib.py").write_text("def triple(x):\n    return 3 * x\n")
    r = run_script(
        """
        import mylib
        from scoopexec import ScoopExecutor
        if __name__ == "__main__":
            with ScoopExecutor(1) as ex:
                print(ex.submit(mylib.triple, 5).result())
        """,
        script_dir=tmp_path,
        cwd="/",
    )
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "15"


def test_run_as_module_with_dash_m(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "job.py").write_text(
        "import sys, types\n"
        "from scoopexec import ScoopExecutor\n"
        "reg = types.ModuleType('reg2'); sys.modules['reg2'] = reg\n"
        "reg.Thing = type('Thing', (dict,), {'__module__': 'reg2'})\n"
        "def make(k):\n"
        "    return reg.Thing(k=k)\n"
        "if __name__ == '__main__':\n"
        "    with ScoopExecutor(1) as ex:\n"
        "        print(type(ex.submit(make, 3).result()).__name__)\n"
    )
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path)]))
    r = subprocess.run([sys.executable, "-m", "mypkg.job"], capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "Thing"
