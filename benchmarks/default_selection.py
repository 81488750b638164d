"""Which backbone / features / head generalise best? The experiment behind the shipped default detector.

Two protocols on the development set (../shared/data/dev):
- ``random``: the stratified 80/20 split (seed 42), as `synthdet train` does;
- ``xsource``: train on ImageNet photos + ComfyUI template media, test on every other source (DreamBooth, foolbox,
  KAIR, scikit-image photos; ComfyUI examples, InvokeAI images): unseen cameras *and* unseen generator families.
Each is scored on the canonical view and on an augmented view (random crop, down-up resize, JPEG 60-95) of the test
images (``*_aug``). Heads train on 4 cached views per training image.

    python benchmarks/default_selection.py [--backbones effnet-lite0,effnet-lite2] [--views 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from synthdet.backbones import create_backbone
from synthdet.data import index, split
from synthdet.features import FeatureStore, extract
from synthdet.heads import make_head
from synthdet.metrics import binary_metrics
from synthdet.train import load_features

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev" / "manifest.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--backbones", default="effnet-lite0,effnet-lite2")
    ap.add_argument("--heads", default="linear,logreg,residual")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "default_selection.json")
    args = ap.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data} not found: this benchmark needs the shared development set")
    df = index(args.data, progress=False)
    df = df[df.ok].drop_duplicates("sha256").reset_index(drop=True)
    src = df.source.str.split(" ").str[0]
    dom_a = ((df.label == 0) & src.str.contains("EliSchwartz")) | ((df.label == 1) & src.str.startswith("pypi:comfyui"))
    sp = split(df)
    protocols = {"random": (sp == "fit", sp == "test"), "xsource": (dom_a, ~dom_a)}
    views = list(range(args.views))
    rows = []
    for name in args.backbones.split(","):
        bb = create_backbone(name)
        store = FeatureStore.for_backbone(bb, args.cache)
        extract(bb, df.path.tolist(), df.sha256.tolist(), store, views=views)
        for feats in ("pooled", "concat"):
            for head in args.heads.split(","):
                row = {"backbone": name, "features": feats, "head": head}
                for proto, (tr, te) in protocols.items():
                    a, b = df[tr], df[te]
                    X, owner = load_features(store, a.sha256.tolist(), views, feats)
                    model = make_head(head).fit(X, a.label.to_numpy()[owner], groups=owner)  # views of an image stay together
                    for suffix, view in (("", 0), ("_aug", 1)):
                        Xt, _ = load_features(store, b.sha256.tolist(), [view], feats)
                        p = model.predict_proba(Xt)[:, 1]
                        row[f"{proto}{suffix}_auc"] = round(binary_metrics(b.label.to_numpy(), p)["roc_auc"], 4)
                rows.append(row)
    table = Table(*rows[0].keys(), title="ROC AUC by protocol (higher is better; xsource = unseen sources)")
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"views": args.views, "n_images": len(df), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
