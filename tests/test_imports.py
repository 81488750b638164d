"""The package's import structure: data flows one way, and the tree shows it.

Every ``import`` in every file counts — module level, inside functions, under ``if TYPE_CHECKING:`` — because a
function-level import is still a dependency, only a later one. Registries name implementations that would point
upwards by import path (``"synthdet.detectors.ensemble:load_ensemble"``), resolved on first use.

:data:`LAYERS` is the architecture (``docs/architecture.md`` draws it): a package may import its own modules and
packages in layers below it, never beside or above it. That makes the module graph a DAG, and keeps it one as code
is added.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import synthdet

PACKAGE = Path(synthdet.__file__).parent

#: Bottom to top. Each entry is a layer: top-level modules or subpackages of ``synthdet`` (``""`` is the package's own
#: ``__init__``, the lazy public API above everything).
LAYERS: list[set[str]] = [
    {"version", "registry", "extras", "vocabulary"},  # leaves any module may use
    {"io"},  # bytes → pixels, atomic files, content hashes
    {"data"},  # manifests, splits, provenance, normalisation, perturbations, augmentation
    {"backbones", "heads"},  # networks that make features; estimators that read them
    {"features"},  # extraction and the feature store
    {"detectors"},  # cards, detectors, ensembles, calibration, assessment, loading
    {"evaluation"},  # metrics and evaluation runs
    {"reporting"},  # HTML reports, MediaEval submissions
    {"engines", "localization"},  # local / onnxruntime / Ray behind one interface · Task B
    {"training"},  # fit, cross-validate, fine-tune, ensembles, recipes
    {"serve"},  # the REST service
    {"cli"},  # typer commands: the only place typer and rich are imported
    {""},  # synthdet.load(), synthdet.localize(): lazy, so importing synthdet is cheap
]
CLI_STACK = {"typer", "rich", "click"}


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def all_imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports anywhere in its file, as absolute dotted names (``from a import b`` gives ``a.b``
    and ``a``: ``b`` may be a module or a name in ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def synthdet_imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """The synthdet modules ``name`` depends on: each imported name resolved to the longest module it names."""
    out = set()
    for m in all_imports(name, path):
        while m and m not in modules:
            m = m.rpartition(".")[0]
        if m and m != name:
            out.add(m)
    return out


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: synthdet_imports(name, path, set(modules)) for name, path in modules.items()}


def unit(module: str) -> str:
    """The layer unit a module belongs to: its subpackage, or itself for a top-level module."""
    parts = module.split(".")[1:]
    return parts[0] if parts else ""


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


def depth(graph: dict[str, set[str]]) -> int:
    """Modules on the longest import chain (the graph is a DAG)."""
    memo: dict[str, int] = {}

    def d(v: str) -> int:
        if v not in memo:
            memo[v] = 1 + max((d(w) for w in graph[v]), default=0)
        return memo[v]

    return max(d(v) for v in graph)


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_everywhere_in_a_file(tmp_path: Path) -> None:
    """Function-level, ``TYPE_CHECKING`` and relative imports all count (the cycles of earlier releases hid there)."""
    pkg = tmp_path / "synthdet" / "detectors"
    pkg.mkdir(parents=True)
    f = pkg / "detector.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .ensemble import E\n"
                 "def g():\n    from synthdet.detectors.assess import a\n    import synthdet.io.pixels\n")
    modules = {"synthdet.detectors.ensemble", "synthdet.detectors.assess", "synthdet.io.pixels", "synthdet.io"}
    assert synthdet_imports("synthdet.detectors.detector", f, modules) == modules - {"synthdet.io"}


def test_every_unit_has_a_layer() -> None:
    units = {unit(m) for m in module_names()}
    placed = set().union(*LAYERS)
    assert units == placed, f"not in LAYERS: {sorted(units - placed)}; gone: {sorted(placed - units)}"


def test_imports_point_down_the_layers() -> None:
    """A module imports its own package's modules or a lower layer's: never a sibling layer, never upwards."""
    level = {u: i for i, layer in enumerate(LAYERS) for u in layer}
    wrong = sorted(f"{a} -> {b}" for a, deps in graph().items() for b in deps
                   if unit(a) != unit(b) and level[unit(b)] >= level[unit(a)])
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_module_import_graph_has_no_cycles() -> None:
    g = graph()
    assert {"synthdet.backbones.base", "synthdet.detectors.detector", "synthdet.detectors.assess"} <= set(g)
    # the cycles this test was written against
    assert not {"synthdet.detectors.detector", "synthdet.detectors.ensemble"} & g["synthdet.detectors.assess"]
    assert "synthdet.detectors.ensemble" not in g["synthdet.detectors.detector"]
    assert "synthdet.features.store" not in g["synthdet.data.hashcache"]
    assert cycles(g) == []
    assert depth(g) <= 20  # 16 today (docs/architecture.md): a long chain is a sign of misplaced code


def test_library_never_imports_the_cli_stack() -> None:
    """typer, rich and click belong to ``synthdet.cli``; the library (``serve`` included) is quiet and imports none."""
    offenders = sorted(f"{name}: {m}" for name, path in module_names().items() if not name.startswith("synthdet.cli")
                       for m in all_imports(name, path) if m.split(".")[0] in CLI_STACK)
    assert not offenders, offenders


def test_modules_stay_small_and_few_at_the_top() -> None:
    top = [p for p in PACKAGE.glob("*.py")]
    assert len(top) <= 12, sorted(p.name for p in top)
    big = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > 520}
    assert not big, big


def _fresh(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    """A fresh interpreter imports the registries' owners without the modules their lazy entries name, then every
    module in turn, then resolves every lazy entry: no circular import anywhere."""
    lazy = ["synthdet.backbones.spectral", "synthdet.heads.fusion", "synthdet.detectors.ensemble",
            "synthdet.training.finetune"]
    script = (
        "import importlib, sys\n"
        "from synthdet.backbones.base import BACKBONE_PREFIXES\n"
        "from synthdet.detectors.card import DETECTOR_KINDS\n"
        "from synthdet.heads.base import HEADS\n"
        f"early = [m for m in {lazy!r} if m in sys.modules]\n"
        "assert not early, f'imported before use: {early}'\n"
        f"for name in {sorted(module_names())!r}:\n"
        "    importlib.import_module(name)\n"
        "for reg in (BACKBONE_PREFIXES, DETECTOR_KINDS, HEADS):\n"
        "    for name in reg:\n"
        "        assert callable(reg.get(name)), (reg.what, name)\n"
        "print('ok')\n"
    )
    res = _fresh(script)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


@pytest.mark.parametrize("module", ["synthdet", "synthdet.detectors.loading", "synthdet.serve.app"])
def test_importing_the_library_loads_no_cli_stack(module: str) -> None:
    """At run time too: scoring from Python or serving loads neither typer nor click (rich may come with
    scikit-learn's own progress bars, which synthdet does not use)."""
    if module == "synthdet.serve.app":
        pytest.importorskip("fastapi")
    res = _fresh(f"import sys, {module}\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {{'typer', 'click'}}))")
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr[-2000:]


def test_the_architecture_picture_is_drawn_from_this_tree() -> None:
    """``docs/architecture.svg`` is generated from LAYERS and the imports above; a stale picture fails here."""
    script = Path(__file__).resolve().parents[1] / "docs" / "architecture.py"
    if not script.exists():
        pytest.skip("docs/ not in this checkout")
    res = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
