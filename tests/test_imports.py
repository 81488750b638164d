"""The package's import structure: every module imports on its own, and no two modules import each other in a circle.

Registries name implementations that would close a circle by import path (``"synthdet.ensemble:load_ensemble"``),
so the module graph stays a DAG; this test keeps it one.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import synthdet

PACKAGE = Path(synthdet.__file__).parent


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def runtime_imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """synthdet modules ``name`` imports when it is imported: module-level statements (inside ``if``/``try``
    too), not function bodies and not ``if TYPE_CHECKING:`` blocks."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for a in node.names:
                    found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return {m for m in found if m in modules and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                out.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_module_import_graph_has_no_cycles() -> None:
    modules = module_names()
    graph = {name: runtime_imports(name, path, set(modules)) for name, path in modules.items()}
    assert {"synthdet.backbones", "synthdet.dualstream", "synthdet.heads", "synthdet.fusion"} <= set(graph)
    assert "synthdet.dualstream" not in graph["synthdet.backbones"]  # the cycles this test was written against
    assert "synthdet.fusion" not in graph["synthdet.heads"]
    assert not {"synthdet.ensemble", "synthdet.finetune"} & graph["synthdet.detector"]
    assert cycles(graph) == []


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    """A fresh interpreter imports the registries' owners without the modules their lazy entries name, then every
    module in turn, then resolves every lazy entry: no circular import anywhere."""
    lazy = ["synthdet.dualstream", "synthdet.fusion", "synthdet.ensemble", "synthdet.finetune"]
    script = (
        "import importlib, sys\n"
        "from synthdet.backbones import BACKBONE_PREFIXES\n"
        "from synthdet.detector import DETECTOR_KINDS\n"
        "from synthdet.heads import HEADS\n"
        f"early = [m for m in {lazy!r} if m in sys.modules]\n"
        "assert not early, f'imported before use: {early}'\n"
        f"for name in {sorted(module_names())!r}:\n"
        "    importlib.import_module(name)\n"
        "for reg in (BACKBONE_PREFIXES, DETECTOR_KINDS, HEADS):\n"
        "    for name in reg:\n"
        "        assert callable(reg.get(name)), (reg.what, name)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
