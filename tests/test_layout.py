"""The package's shape, measured from its source (issue 13), so that it stays the way it was made.

* no import cycles between the package's modules (imports run when a module is loaded;
  ``if TYPE_CHECKING:`` blocks do not count);
* at most MAX_LAZY imports of the package's own modules inside functions, each with a comment
  on its line or the line above saying why it is lazy ("lazy: ...");
* no class longer than MAX_CLASS_LINES lines;
* no module reads another module's private names (``from .x import _y``, ``x._y``);
* every subpackage is listed in pyproject.toml.

``python tests/test_layout.py`` prints the figures.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "scoopexec"
SOURCES = {PKG: os.path.join(ROOT, "scoopexec"), f"{PKG}.integrations": os.path.join(ROOT, "integrations")}

MAX_LAZY = 5
MAX_CLASS_LINES = 500


@dataclass(frozen=True)
class Module:
    name: str
    path: str
    is_package: bool
    tree: ast.Module
    lines: list[str]


def modules() -> dict[str, Module]:
    out: dict[str, Module] = {}
    for base, top in SOURCES.items():
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
            rel = os.path.relpath(dirpath, top)
            prefix = base if rel == "." else f"{base}.{rel.replace(os.sep, '.')}"
            for fn in sorted(filenames):
                if not fn.endswith(".py"):
                    continue
                path = os.path.join(dirpath, fn)
                is_pkg = fn == "__init__.py"
                name = prefix if is_pkg else f"{prefix}.{fn[:-3]}"
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
                out[name] = Module(name, path, is_pkg, ast.parse(text, path), text.splitlines())
    return out


def _resolve(mod: Module, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names."""
    if node.level == 0:
        return node.module or ""
    parts = mod.name.split(".")
    if not mod.is_package:
        parts = parts[:-1]
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    base = ".".join(parts)
    return f"{base}.{node.module}" if node.module else base


def _own(name: str) -> bool:
    return name == PKG or name.startswith(PKG + ".")


def _targets(mods: dict[str, Module], mod: Module, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package's own modules an import statement needs to have run.

    ``from pkg import sub`` (a submodule) needs ``pkg.sub``, not the rest of ``pkg``'s
    ``__init__``: Python puts a package in sys.modules before running it, and a submodule's
    import needs no more.  ``from pkg import name`` (anything else) reads ``pkg``'s namespace,
    so it needs ``pkg`` itself.
    """
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if _own(a.name)]
    base = _resolve(mod, node)
    if not _own(base):
        return []
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
    if len(subs) < len(node.names) or not mods.get(base, mod).is_package:
        return [base, *subs]
    return subs


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node with whether it runs inside a function; TYPE_CHECKING blocks left out."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                yield sub, in_function
                yield from _walk(sub, in_function)
            continue
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield child, in_function
        yield from _walk(child, inner)


def _dynamic_import(node: ast.AST) -> str | None:
    """``importlib.import_module(x)`` / ``import_module(x)``: what it imports (``?`` if not a constant)."""
    if not isinstance(node, ast.Call):
        return None
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    if name not in ("import_module", "__import__"):
        return None
    arg = node.args[0] if node.args else None
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "?"


def lazy_imports(mods: dict[str, Module]) -> list[tuple[str, int, str, bool]]:
    """(module, line, imported, has a 'lazy:' comment) for imports of the package's own modules
    inside functions, and for every dynamic import (importlib) inside a function.  The comment
    may be on the line or up to three lines above."""
    out = []
    for mod in mods.values():
        for node, in_function in _walk(mod.tree):
            if not in_function:
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = _targets(mods, mod, node)
                if not targets:
                    continue
                what = targets[-1]
            else:
                dynamic = _dynamic_import(node)
                if dynamic is None or not (dynamic == "?" or _own(dynamic)):
                    continue
                what = f"importlib: {dynamic}"
            line = node.lineno  # type: ignore[attr-defined]
            near = " ".join(mod.lines[max(0, line - 4) : line])
            out.append((mod.name, line, what, "lazy:" in near))
    return out


def import_graph(mods: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> own modules it imports when loaded (a module's packages are loaded first)."""
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for mod in mods.values():
        for node, in_function in _walk(mod.tree):
            if in_function or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for t in _targets(mods, mod, node):
                if t != mod.name and t in mods:
                    graph[mod.name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def class_sizes(mods: dict[str, Module]) -> list[tuple[int, str]]:
    out = []
    for mod in mods.values():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None
                out.append((node.end_lineno - node.lineno + 1, f"{mod.name}.{node.name}"))
    return sorted(out, reverse=True)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reaches(mods: dict[str, Module]) -> list[tuple[str, int, str]]:
    """(module, line, what) wherever a module reads a private name of another of the package's modules."""
    out = []
    for mod in mods.values():
        aliases: dict[str, str] = {}  # local name -> own module it is bound to
        for node, _ in _walk(mod.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if _own(a.name):
                        top = a.name.split(".")[0]
                        aliases[a.asname or top] = a.name if a.asname else top
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, node)
                if not _own(base):
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in mods:
                        aliases[a.asname or a.name] = sub
                    elif _private(a.name) and base != mod.name:
                        out.append((mod.name, node.lineno, f"from {base} import {a.name}"))
        for node, _ in _walk(mod.tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                chain = []
                cur: ast.expr = node.value
                while isinstance(cur, ast.Attribute):
                    chain.append(cur.attr)
                    cur = cur.value
                if isinstance(cur, ast.Name) and cur.id in aliases:
                    target = ".".join([aliases[cur.id], *reversed(chain)])
                    if target != mod.name:
                        out.append((mod.name, node.lineno, f"{target}.{node.attr}"))
    return sorted(out)


def packages_listed() -> tuple[set[str], set[str]]:
    """(subpackages in the source tree, packages pyproject.toml lists)."""
    found = {name for name, m in modules().items() if m.is_package}
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as fh:
        text = fh.read()
    m = re.search(r"^packages\s*=\s*\[(.*?)\]", text, re.S | re.M)
    assert m is not None, "pyproject.toml lists no packages"
    listed = set(re.findall(r'"([^"]+)"', m.group(1)))
    return found, listed


# ------------------------------------------------------------------ the tests
def test_no_import_cycles() -> None:
    assert cycles(import_graph(modules())) == []


def test_few_lazy_imports_each_saying_why() -> None:
    lazy = lazy_imports(modules())
    assert len(lazy) <= MAX_LAZY, "\n".join(f"{m}:{line} imports {t}" for m, line, t, _ in lazy)
    unexplained = [f"{m}:{line} imports {t}" for m, line, t, ok in lazy if not ok]
    assert unexplained == [], "a lazy import needs a '# lazy: why' comment"


def test_no_class_over_the_limit() -> None:
    big = [(n, c) for n, c in class_sizes(modules()) if n > MAX_CLASS_LINES]
    assert big == []


def test_no_private_reach_across_modules() -> None:
    assert private_reaches(modules()) == []


def test_pyproject_lists_every_package() -> None:
    found, listed = packages_listed()
    assert found == listed


def test_the_checks_see_what_they_look_for() -> None:
    # The measures must be able to fail: fed code that breaks each rule, each one reports it.
    def fake(name: str, text: str, is_pkg: bool = False) -> Module:
        return Module(name, name, is_pkg, ast.parse(text), text.splitlines())

    mods = {
        "scoopexec": fake("scoopexec", "", True),
        "scoopexec.a": fake("scoopexec.a", "from . import b\nx = b._hidden\n"),
        "scoopexec.b": fake(
            "scoopexec.b", "from .a import x\ndef f():\n    from . import a\n    importlib.import_module(x)\n"
        ),
        "scoopexec.c": fake("scoopexec.c", "class C:\n" + "    x = 1\n" * 600),
    }
    assert cycles(import_graph(mods)) == [["scoopexec.a", "scoopexec.b"]]
    assert lazy_imports(mods) == [
        ("scoopexec.b", 3, "scoopexec.a", False),
        ("scoopexec.b", 4, "importlib: ?", False),
    ]
    assert private_reaches(mods) == [("scoopexec.a", 2, "scoopexec.b._hidden")]
    assert class_sizes(mods)[0] == (601, "scoopexec.c.C")


if __name__ == "__main__":
    mods = modules()
    lazy = lazy_imports(mods)
    print(f"lazy imports of own modules inside functions: {len(lazy)}")
    for m, line, t, ok in lazy:
        print(f"  {m}:{line} -> {t}{'' if ok else '  (no lazy: comment)'}")
    sizes = class_sizes(mods)
    print("largest classes: " + ", ".join(f"{c} {n}" for n, c in sizes[:5]))
    reaches = private_reaches(mods)
    print(f"private reaches across modules: {len(reaches)}")
    for m, line, what in reaches:
        print(f"  {m}:{line} {what}")
    print(f"import cycles: {cycles(import_graph(mods))}")
