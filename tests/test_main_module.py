"""Workers import the client's main module as __mp_main__, like multiprocessing's spawn."""

from __future__ import annotations

import re

import pytest

from tests.conftest import run_script

# Workers that import the script: those of a fresh template.  A fork of the client made while
# the script runs (the default, deploy/clientfork.py) has it already and imports nothing, so a
# script's top level never runs there (tests/test_clientfork.py).
IMPORTING = {"SCOOPEXEC_WORKER_START": "template"}


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
        env=IMPORTING,
    )
    out = r.stdout.decode()
    assert "error:" in out and "__main__" in out, (out, r.stderr.decode())


def test_a_missing_main_guard_is_one_short_error_naming_the_script_line_and_the_fix(tmp_path):
    r = run_script(
        """
        from scoopexec import ScoopExecutor

        def double(x):
            return 2 * x

        with ScoopExecutor(2) as ex:
            print(list(ex.map(double, range(4))))
        """,
        script_dir=tmp_path,
        timeout=90,
        env=IMPORTING,
    )
    err = r.stderr.decode()
    assert r.returncode == 1 and r.stdout == b"", err
    last = err.strip().splitlines()[-1]
    script = tmp_path / "script.py"
    assert last == (
        f"scoopexec.errors.InitializerError: {script}, line 7 (`with ScoopExecutor(2) as ex:`) starts a "
        "pool (a ScoopExecutor) when the script is imported. Workers import the script to find its "
        "functions (as multiprocessing's spawn does), so that code must not run then: put it under "
        '`if __name__ == "__main__":`'
    ), err
    assert err.count("starts a pool") == 1, err  # said once: no "Exception in initializer" log too
    assert "initializer" not in err.replace("InitializerError", ""), err
    assert len(err.splitlines()) <= 20, err  # the client's own traceback and that one line


def test_a_script_that_fails_on_import_in_workers_shows_its_own_frames(tmp_path):
    r = run_script(
        """
        from scoopexec import ScoopExecutor

        def load():
            raise FileNotFoundError("data.csv")

        if __name__ != "__main__":
            load()   # what a script does at top level when it reads its input there

        if __name__ == "__main__":
            with ScoopExecutor(1) as ex:
                print(ex.submit(abs, -1).result(timeout=60))
        """,
        script_dir=tmp_path,
        timeout=90,
        env=IMPORTING,
    )
    err = r.stderr.decode()
    assert r.returncode == 1, err
    script = tmp_path / "script.py"
    assert f"InitializerError: importing {script} on worker " in err, err
    assert f'File "{script}", line 8, in <module>\n    load()' in err, err
    assert f'File "{script}", line 5, in load\n    raise FileNotFoundError("data.csv")' in err, err
    assert "FileNotFoundError: data.csv" in err
    assert "mainmodule.py" not in err and "worker.py" not in err, err  # how it was reached: noise
    assert "Exception in initializer" not in err, err


def test_remote_tracebacks_show_the_file_lines_and_source_of_functions_defined_in_the_script(tmp_path):
    r = run_script(
        """
        from scoopexec import ScoopExecutor

        def inner(x):
            y = x + 1
            raise ValueError(f"bad {y}")

        def outer(x):
            return inner(x)

        if __name__ == "__main__":
            with ScoopExecutor(1) as ex:
                try:
                    ex.submit(outer, 1).result(timeout=60)
                except ValueError as exc:
                    print(exc.__cause__)
                ex.submit(outer, 1)
        """,
        script_dir=tmp_path,
    )
    out = r.stdout.decode()
    script = tmp_path / "script.py"
    assert f'File "{script}", line 9, in outer\n    return inner(x)\n' in out, out
    assert f'File "{script}", line 6, in inner\n    raise ValueError(f"bad {{y}}")\n' in out, out
    assert "<dynamic-code>" not in out


_CELL_1 = '''
import traceback

def inner(x):
    y = x + 1
    raise ValueError(f"bad {y}")

def outer(x):
    return inner(x)

def caught(x):
    try:
        outer(x)
    except ValueError:
        return traceback.format_exc()
'''

_CELL_2 = '''
from scoopexec import ScoopExecutor
with ScoopExecutor(1) as ex:
    try:
        ex.submit(outer, 1).result(timeout=60)
    except ValueError as exc:
        print(exc.__cause__)
    print("formatted on the worker:")
    print(ex.submit(caught, 1).result(timeout=60))
'''

_NOTEBOOK = f"""
import sys
from IPython.core.interactiveshell import InteractiveShell

if __name__ == "__main__":
    shell = InteractiveShell.instance()
    for cell in [{_CELL_1!r}, {_CELL_2!r}]:
        if not shell.run_cell(cell).success:
            sys.exit(1)
"""


def test_remote_tracebacks_show_the_source_of_functions_defined_in_a_notebook_cell(tmp_path):
    pytest.importorskip("IPython")
    r = run_script(_NOTEBOOK, script_dir=tmp_path)
    out = r.stdout.decode()
    assert r.returncode == 0, (out, r.stderr.decode())
    # A cell's source exists only in the client's memory (IPython's linecache entries).
    cell = re.search(r'File "(<ipython-input-1-\w+>)", line 8, in outer\n    return inner\(x\)\n', out)
    assert cell, out
    frame = f'File "{cell.group(1)}", line 5, in inner\n    raise ValueError(f"bad {{y}}")\n'
    remote, _, on_worker = out.partition("formatted on the worker:")
    assert frame in remote, out  # the remote traceback of the exception
    assert frame in on_worker, out  # and a traceback formatted by the task itself, on the worker


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
