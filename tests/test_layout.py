"""The package's shape: data flows one way (../shared/DESIGN.md, "Import layers") and no module
grows past what a reader can follow.

The import graph is built from the source with `ast`, so an import inside a function counts as
much as one at the top of a file. A module's layer is its first name under `layercut`
(`layercut.data.encode` is in `data`); a module may import only from its own layer or a lower
one, and the graph has no cycle. A submodule's implicit import of its own package (Python runs
`pkg/__init__.py` first) is not an edge: a package's `__init__` importing its submodules is the
ordinary way to give it a public face.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "layercut"

# Lowest first. "" is the package root (`layercut/__init__.py`: the version only).
LAYERS: list[tuple[str, ...]] = [
    ("", "errors", "io", "extras"),
    ("data",),
    ("models",),
    ("scoring",),
    ("selection", "regimes", "interlace"),
    ("surgery", "card"),
    ("evaluation",),
    ("engine",),
    ("probe", "heal"),
    ("sweep",),
    ("report",),
    ("zoo",),
    ("api",),
    ("bridges",),
    ("cli", "demo"),
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
MAX_LINES = 450
HEAVY = ("ray", "lm_eval", "lmms_eval", "peft", "matplotlib")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ["layercut", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The layercut modules `name` imports anywhere in its file (relative imports resolved; a
    `from X import Y` whose Y is a submodule counts as importing X.Y)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else ""
    assert top in LAYER_OF, f"module {name} is in no layer: place '{top}' in LAYERS (and DESIGN.md)"
    return LAYER_OF[top]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_import_goes_to_the_same_or_a_lower_layer():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in graph().items() for b in sorted(targets) if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "layercut"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from . import b\n    from layercut import api\n")
    (pkg / "sub" / "b.py").write_text("")
    (pkg / "api.py").write_text("")
    known = {"layercut.sub": pkg / "sub" / "__init__.py", "layercut.sub.a": pkg / "sub" / "a.py",
             "layercut.sub.b": pkg / "sub" / "b.py", "layercut.api": pkg / "api.py"}
    assert imports("layercut.sub.a", known["layercut.sub.a"], known) == {"layercut.sub.b", "layercut.api"}


def test_no_module_is_over_the_line_limit():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("module", ["layercut.cli.app", "layercut.api", "layercut.sweep", "layercut.report",
                                    "layercut.demo", "layercut.heal"])
def test_heavy_optional_packages_stay_lazy(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {module} imported {out.stdout.strip()}"
