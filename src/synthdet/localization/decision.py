"""The image-level decision learned from a localizer's map: was anything in this image edited?

Mask coverage alone is near chance (a localizer flags a little everywhere on every photo); what separates an edited
image is a *concentrated* strong region. A few map statistics (the top of the map at several depths, the largest
connected region above the pixel threshold, its count, the spread) feed a logistic head fitted on held-out hosts.
The head is a handful of numbers kept in the localizer's card (``params["decision"]``), so it needs neither torch
nor a file of its own; :func:`summarise` puts the decision in words beside the coverage behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: The map statistics, in the order the head's coefficients follow.
FEATURES = ("max", "top0.1", "top1", "top5", "mean", "std", "coverage", "largest_region", "log_regions")


#: Connected regions are found on the map sampled to at most this many pixels a side (cheap on large images).
REGION_SIDE = 128


def regions(flags: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected regions of a boolean map in numpy alone (the scoring install has no scipy): ``(labels, n)``
    with labels 1..n and 0 outside; minimum-label propagation with pointer jumping, a few dozen passes at most."""
    flags = np.asarray(flags, bool)
    big = flags.size
    lab = np.where(flags, np.arange(big).reshape(flags.shape), big)
    while True:
        new = lab.copy()
        np.minimum(new[1:], lab[:-1], out=new[1:])
        np.minimum(new[:-1], lab[1:], out=new[:-1])
        np.minimum(new[:, 1:], lab[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], lab[:, 1:], out=new[:, :-1])
        new = np.where(flags, new, big)
        inside = new < big
        new[inside] = np.minimum(new[inside], new.ravel()[new[inside]])  # jump to the label's own label
        if np.array_equal(new, lab):
            break
        lab = new
    roots, labels = np.unique(lab, return_inverse=True)
    labels = labels.reshape(flags.shape) + 1
    labels[~flags] = 0
    n = len(roots) - int(roots[-1] == big) if len(roots) else 0
    return labels.astype(np.int64), n


def _sampled(prob: np.ndarray) -> tuple[np.ndarray, int]:
    step = max(1, -(-max(prob.shape) // REGION_SIDE))
    return np.asarray(prob)[::step, ::step], step


def map_features(prob: np.ndarray, loc_threshold: float) -> np.ndarray:
    """:data:`FEATURES` of one probability map: top-k means (0.1 %, 1 %, 5 % of pixels), mean and spread, the share
    flagged at ``loc_threshold``, the largest connected flagged region's share, and log(1 + number of regions)."""
    flat = np.sort(np.asarray(prob, dtype=np.float32).ravel())[::-1]

    def top(share: float) -> float:
        return float(flat[: max(1, int(round(share * flat.size)))].mean())

    small, _ = _sampled(prob)
    labels, n = regions(small > loc_threshold)
    largest = float(np.bincount(labels.ravel())[1:].max() / labels.size) if n else 0.0
    return np.array([flat[0], top(0.001), top(0.01), top(0.05), flat.mean(), flat.std(),
                     float(np.mean(flat > loc_threshold)), largest, np.log1p(n)], dtype=np.float64)


def fit_decision(maps: Sequence[np.ndarray], labels: Sequence[int] | np.ndarray, loc_threshold: float) -> dict[str, Any]:
    """A logistic head on standardised :func:`map_features` (L2, C = 1: a few dozen hosts must not be memorised):
    the plain dict :func:`decision_score` reads, with the rows it was fitted on."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels, int)
    if len(np.unique(y)) < 2:
        raise ValueError(f"the image-level head needs authentic and manipulated images; got {len(y)} of one kind")
    x = np.stack([map_features(m, loc_threshold) for m in maps])
    mean, scale = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced").fit((x - mean) / scale, y)
    return {"features": list(FEATURES), "mean": mean.tolist(), "scale": scale.tolist(),
            "coef": clf.coef_[0].tolist(), "intercept": float(clf.intercept_[0]), "loc_threshold": float(loc_threshold),
            "n": int(len(y)), "n_manipulated": int(y.sum())}


def decision_score(prob: np.ndarray, head: dict[str, Any]) -> float:
    """The probability in [0, 1] that the image was manipulated, from its map and a :func:`fit_decision` head."""
    if list(head["features"]) != list(FEATURES):
        raise ValueError(f"an image-level head over {head['features']}, not this release's {list(FEATURES)}")
    x = (map_features(prob, head["loc_threshold"]) - np.asarray(head["mean"])) / np.asarray(head["scale"])
    z = float(x @ np.asarray(head["coef"]) + head["intercept"])
    return float(1.0 / (1.0 + np.exp(-z)))


def default_localizer_path() -> Path:
    """The default localizer shipped inside the package (``scripts/train_localizer.py`` reproduces it)."""
    return Path(str(resources.files("synthdet") / "pretrained" / "localizer"))


def summarise(prob: np.ndarray, score: float, threshold: float, loc_threshold: float) -> dict[str, Any]:
    """The image-level decision in words beside what backs it: ``verdict`` (``likely edited`` / ``no edit found``),
    ``manipulated``, ``score`` and ``threshold``, the share of pixels flagged (``coverage``) and the largest flagged
    region's share and box ``[x0, y0, x1, y1]`` in the image's pixels (None when nothing is flagged), ``words``
    (what backs the verdict, without repeating it)."""
    coverage = float(np.mean(np.asarray(prob) > loc_threshold))
    small, step = _sampled(prob)
    labels, n = regions(small > loc_threshold)
    largest, box = 0.0, None
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        k = int(np.argmax(sizes)) + 1
        largest = float(sizes[k - 1] / labels.size)
        ys, xs = np.nonzero(labels == k)
        h, w = np.asarray(prob).shape
        box = [int(xs.min()) * step, int(ys.min()) * step, min(w, (int(xs.max()) + 1) * step),
               min(h, (int(ys.max()) + 1) * step)]
    edited = bool(score >= threshold)
    if edited:
        where = f"; the largest flagged region covers {100 * largest:.1f} % of it" if box else ""
        words = (f"the map points to a generated or pasted region (image-level score {score:.2f} ≥ "
                 f"{threshold:.2f}); {100 * coverage:.1f} % of the pixels flagged{where}")
    else:
        words = (f"no region stands out from the rest of the image (image-level score {score:.2f} < "
                 f"{threshold:.2f}); {100 * coverage:.1f} % of the pixels flagged")
    return {"verdict": "likely edited" if edited else "no edit found", "manipulated": edited, "score": float(score),
            "threshold": float(threshold), "loc_threshold": float(loc_threshold), "coverage": coverage,
            "largest_region": largest, "box": box, "words": words}


def maps_for(predict: Callable[[Image.Image], np.ndarray], paths: Iterable[str | Path]
             ) -> Iterator[tuple[str, np.ndarray | None, str]]:
    """``(path, map or None, reason)`` per file from ``predict`` (a localizer's ``predict_image``, torch or graph);
    an unreadable file gets its load-error reason."""
    from synthdet.io.pixels import ImageLoadError, load_image

    for p in paths:
        try:
            img = load_image(p)
        except ImageLoadError as e:
            yield str(p), None, e.reason
            continue
        yield str(p), predict(img), ""
