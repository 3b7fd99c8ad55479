"""Workers import the client's main module as __mp_main__, like multiprocessing's spawn."""

from __future__ import annotations

import os
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


SCRIPT_CLASSES = """
    import enum, multiprocessing, queue, sys
    from dataclasses import dataclass
    from scoopexec import ScoopExecutor

    @dataclass
    class Progress:
        i: int

    class Colour(enum.Enum):
        RED = 1

    class Failed(Exception):
        pass

    HANDLERS = {Progress: "progress"}  # the module's own code, keyed by its class

    PLUGINS = {}  # registries that the classes' creation fills (a class built again would too)

    class Plugin:
        def __init_subclass__(cls, **kw):
            super().__init_subclass__(**kw)
            PLUGINS[cls.__name__] = cls

    class CSV(Plugin):
        def load(self):
            return "rows"

    MODELS = {}

    class Registered(type):
        def __new__(meta, name, bases, ns):
            cls = super().__new__(meta, name, bases, ns)
            MODELS[name] = cls
            return cls

    class Model(metaclass=Registered):
        pass

    class Tuned:  # class attributes as settings, which the client sets
        limit = 1

    class Child(Tuned):
        pass

    class Later:
        limit = 1
        items = [1]

    class Strategy:
        fn = abs

    class Outer:
        class Inner:
            pass
    Q = None

    def init(q):
        global Q
        Q = q

    def report(i):
        Q.put(Progress(i))  # pickled by multiprocessing's feeder thread: by reference
        return i

    def known(p):
        module = sys.modules["__main__"]  # the worker's module, not the task's copy of its globals
        return module.HANDLERS.get(type(p)), isinstance(p, module.Progress), p.colour is module.Colour.RED

    def registries(objs):
        module = sys.modules["__main__"]
        csv, model = module.PLUGINS["CSV"], module.MODELS["Model"]
        return csv is module.CSV is type(objs[0]), csv().load(), model is module.Model is type(objs[1])

    def fail(_):
        raise Failed("no")

    def settings(classes):
        tuned, child, later, strategy = classes
        return tuned.limit, child.limit, later.limit, later.items, strategy.fn.__name__

    def inner(obj):
        Q.put(obj)
        return type(obj) is sys.modules["__main__"].Outer.Inner

    if __name__ == "__main__":
        Tuned.limit = 2  # (a worker that imports the script has 1: a copy travels instead)
        Strategy.fn = round
        q = multiprocessing.get_context("spawn").Queue()
        with ScoopExecutor(max_workers=1, initializer=init, initargs=(q,)) as ex:
            classes = (Tuned, Child, Later, Strategy)
            print(ex.submit(settings, classes).result(timeout=60))
            Later.limit = 3  # (changed since the pool started: a copy travels from now on)
            Later.items.append(2)
            print(ex.submit(settings, classes).result(timeout=60))
            print(ex.submit(report, 1).result(timeout=60))
            try:
                print(q.get(timeout=10))
            except queue.Empty:
                print("lost")
            print(ex.submit(inner, Outer.Inner()).result(timeout=60), type(q.get(timeout=10)) is Outer.Inner)
            p = Progress(2)
            p.colour = Colour.RED
            print(ex.submit(known, p).result(timeout=60))
            for _ in range(2):  # (the second time, those classes have travelled before)
                print(ex.submit(registries, (CSV(), Model())).result(timeout=60))
            r = ex.submit(Progress, 3).result(timeout=60)
            print(type(r) is Progress, ex.submit(lambda: Colour.RED).result(timeout=60) is Colour.RED)
            try:
                ex.submit(fail, 0).result(timeout=60)
            except Failed:
                print("caught")
    """


@pytest.mark.parametrize("start", ["fork", "template", "spawn"])
def test_the_scripts_classes_in_a_task_are_the_workers_own(start):
    # A task's class of the script travels by value (cloudpickle): it was a copy of the class the
    # worker's module has, so multiprocessing's queue refused an instance ("not the same object
    # as __main__.Progress", in its feeder thread: the item was lost) and the module's own code
    # did not recognise it.  A fork of ProcessPoolExecutor's has the one class.
    r = run_script(SCRIPT_CLASSES, env={"SCOOPEXEC_WORKER_START": start})
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().splitlines() == [
        "(2, 2, 1, [1], 'round')",
        "(2, 2, 3, [1, 2], 'round')",
        "1",
        "Progress(i=1)",
        "True True",
        "('progress', True, True)",
        "(True, 'rows', True)",
        "(True, 'rows', True)",
        "True True",
        "caught",
    ], r.stderr.decode()
    assert b"not the same object" not in r.stderr


TWO_CLIENTS_CLASSES = """
    import os, sys, time
    from dataclasses import dataclass
    from scoopexec import ScoopExecutor

    @dataclass
    class Point:
        x: int

    def make(x):
        return Point(x)

    if __name__ == "__main__":
        here, other = sys.argv[2], sys.argv[3]
        with ScoopExecutor(broker=sys.argv[1]) as ex:
            first = type(ex.submit(make, 0).result(timeout=60)) is Point
            open(here, "w").close()
            deadline = time.monotonic() + 60
            while not os.path.exists(other) and time.monotonic() < deadline:
                time.sleep(0.02)
            then = all(type(ex.submit(make, i).result(timeout=60)) is Point for i in range(3))
            print(first, then)
            time.sleep(0.5)  # (the other run's last task, while this client is still there)
    """


def test_two_clients_of_one_script_on_a_shared_worker_each_get_their_own_class_back(tmp_path):
    # One worker of a standalone broker serves two runs of one script at once: a class tracked
    # under the second client's id would come back to the first as a copy (a class is tracked
    # under one id only), so only the first client's ids name the module's classes there.
    import subprocess
    import sys
    import textwrap

    from tests.conftest import ROOT
    from tests.peers import standalone_broker_and_group

    script = tmp_path / "two_clients.py"
    script.write_text(textwrap.dedent(TWO_CLIENTS_CLASSES))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    env = dict(os.environ, PYTHONPATH=ROOT)
    with standalone_broker_and_group() as addr:
        runs = [
            subprocess.Popen([sys.executable, str(script), addr, *pair], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)  # fmt: skip
            for pair in ((a, b), (b, a))
        ]
        outs = [r.communicate(timeout=120) for r in runs]
    for r, (out, err) in zip(runs, outs):
        assert r.returncode == 0, err.decode()
        assert out.decode().splitlines() == ["True True"], err.decode()
