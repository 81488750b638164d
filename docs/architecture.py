"""Draw ``docs/architecture.svg`` from the code: the layers ``tests/test_imports.py`` enforces, each package's modules,
and the package-level imports actually found in ``src/synthdet`` (every import statement, function-level included).

    python docs/architecture.py            # rewrite docs/architecture.svg
    python docs/architecture.py --check    # exit 1 when the picture is out of date (tests/test_architecture_doc.py)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "architecture.svg"
#: Layers every module may use, drawn as a footnote rather than as arrows from every box.
LEAVES = {"version", "registry", "extras", "vocabulary"}
#: What each layer does, shown at the left of its row.
ROLES = {
    "io": "bytes → pixels",
    "data": "datasets, splits, provenance",
    "backbones": "networks · heads",
    "features": "features, cached once",
    "detectors": "scores → decisions",
    "evaluation": "metrics, runs",
    "reporting": "HTML, submissions",
    "engines": "engines · Task B",
    "training": "fit, CV, recipes",
    "serve": "REST service + page",
    "cli": "typer commands",
    "": "synthdet.load(), localize()",
}
LINE_H, ROW_GAP, CHAR_W, PAD, LEFT, TOP, WRAP = 15, 36, 6.4, 10, 200, 20, 52


def _layers_module():
    spec = importlib.util.spec_from_file_location("test_imports", ROOT / "tests" / "test_imports.py")
    assert spec and spec.loader
    sys.path.insert(0, str(ROOT / "tests"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _modules_by_unit(names: list[str], unit) -> dict[str, list[str]]:
    """Per package, its modules (a subpackage shown once, as ``name/``); the top-level API shows its public names."""
    out: dict[str, set[str]] = {"": {"load()", "localize()", "Detector", "Assessment"}}
    for name in names:
        u, rest = unit(name), name.split(".")[2:]
        if u and rest and rest[0] != "__init__":
            out.setdefault(u, set()).add(rest[0] + ("/" if len(rest) > 1 else ""))
    return {u: sorted(ms, key=lambda m: (m.startswith("_"), m)) for u, ms in out.items()}


def _wrap(words: list[str], width: int = WRAP) -> list[str]:
    lines: list[str] = []
    for w in words:
        if lines and len(lines[-1]) + len(w) + 2 <= width:
            lines[-1] += ", " + w
        else:
            lines.append(w)
    return lines or [""]


def _reduce(edges: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The transitive reduction: an import drawn only when no longer chain of imports already implies it."""
    succ: dict[str, set[str]] = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)

    def reach(v: str, seen: set[str]) -> set[str]:
        for w in succ.get(v, ()):
            if w not in seen:
                seen.add(w)
                reach(w, seen)
        return seen

    return sorted((a, b) for a, b in edges if not any(b in reach(c, set()) for c in succ[a] - {b}))


def render() -> str:
    """The SVG text: deterministic for a given tree, so a test can tell when it is stale."""
    t = _layers_module()
    graph = t.graph()
    modules = _modules_by_unit(list(graph), t.unit)
    layers = [sorted(layer) for layer in t.LAYERS if not set(layer) <= LEAVES]
    edges = _reduce({(t.unit(a), t.unit(b)) for a, deps in graph.items() for b in deps
                     if t.unit(a) != t.unit(b) and t.unit(b) not in LEAVES})
    text = {u: _wrap(modules.get(u, [])) for layer in layers for u in layer}
    size = {u: (max(len(u or "synthdet") + 1, *map(len, lines)) * CHAR_W + 2 * PAD, (len(lines) + 1) * LINE_H + 14)
            for u, lines in text.items()}
    rows = list(reversed(layers))  # top of the picture: the top layer
    widths = [sum(size[u][0] for u in layer) + 24 * (len(layer) - 1) for layer in rows]
    width = LEFT + max(widths) + 20
    boxes: dict[str, tuple[float, float, float, float]] = {}  # unit → x, y, width, height
    y = TOP
    for layer, row_w in zip(rows, widths):
        x = LEFT + (max(widths) - row_w) / 2
        row_h = max(size[u][1] for u in layer)
        for u in layer:
            boxes[u] = (x, y + (row_h - size[u][1]) / 2, *size[u])
            x += size[u][0] + 24
        y += row_h + ROW_GAP
    height = y + 40
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans, Arial, sans-serif">',
           '<defs><marker id="a" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" '
           'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#5b6f8f"/></marker></defs>',
           f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>']
    for a, b in edges:  # a imports b, which sits lower: the arrow points at what is used
        xa, ya, wa, ha = boxes[a]
        xb, yb, wb, _ = boxes[b]
        x1, y1, x2, y2 = xa + wa / 2, ya + ha, xb + wb / 2, yb
        svg.append(f'<path d="M{x1:.0f},{y1:.0f} C{x1:.0f},{(y1 + y2) / 2:.0f} {x2:.0f},{(y1 + y2) / 2:.0f} '
                   f'{x2:.0f},{y2:.0f}" fill="none" stroke="#5b6f8f" stroke-opacity="0.7" marker-end="url(#a)"/>')
    for layer in rows:
        x, y, _, h = boxes[layer[0]]
        role = " · ".join(dict.fromkeys(ROLES[u] for u in layer if u in ROLES))
        svg.append(f'<text x="10" y="{y + h / 2 + 4:.0f}" font-size="12" fill="#445">{escape(role)}</text>')
        for u in layer:
            x, y, w, h = boxes[u]
            svg.append(f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{h:.0f}" rx="6" fill="#eef3fb" '
                       f'stroke="#3b5b8c"/>')
            svg.append(f'<text x="{x + PAD:.0f}" y="{y + 20:.0f}" font-size="14" font-weight="bold" '
                       f'fill="#1d2f4f">{escape(u + "/" if u else "synthdet")}</text>')
            for i, line in enumerate(text[u]):
                svg.append(f'<text x="{x + PAD:.0f}" y="{y + 20 + (i + 1) * LINE_H:.0f}" font-size="11" '
                           f'fill="#333">{escape(line)}</text>')
    notes = ["Arrow: a package imports another (every import statement in src/synthdet; one implied by a chain is",
             f"left out). Every module may use the leaves {', '.join(sorted(LEAVES))}."]
    for i, note in enumerate(notes):
        svg.append(f'<text x="10" y="{height - 26 + 14 * i:.0f}" font-size="11" fill="#445">{escape(note)}</text>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/architecture.svg is out of date")
    args = ap.parse_args()
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run python docs/architecture.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
