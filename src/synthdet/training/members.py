"""The probes a cross-validation fits (:func:`~synthdet.training.cv.cross_validate`): each one's backbone, head settings
and cached features, and the rows its head is fitted on in a fold — the training views, the fit views of the
size-matched images and the derived (training-only) images of the fold's fit images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from synthdet.backbones.base import Backbone
from synthdet.features.extract import FeatureKind, FeatureStore, extract
from synthdet.training.train import ProbeConfig, load_features


@dataclass
class Member:
    """One probe of a cross-validated recipe: its backbone, head settings, feature store and every image's
    features (``X``: the training views, row ``i * n_views + v``; ``shown``: per scored view, one row per image)."""

    config: ProbeConfig
    bb: Backbone
    features: FeatureKind
    params: dict[str, Any]
    store: FeatureStore
    X: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    shown: dict[str, np.ndarray] = field(default_factory=dict)
    derived: pd.DataFrame = field(default_factory=pd.DataFrame)  # training-only images (``derived_from``: source)
    D: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))  # their training views, row j * n_views + v

    def load_derived(self, derived: pd.DataFrame, views: list[int], progress: bool = False) -> pd.DataFrame:
        """Extract and keep the training views of the ``derived`` images; returns those that decoded."""
        ex = extract(self.bb, derived["path"].tolist(), derived["sha256"].tolist(), self.store, views=views,
                     batch_size=self.config.batch_size, num_workers=self.config.num_workers, progress=progress)
        self.derived = derived[~derived["path"].isin({s.path for s in ex.skipped})].reset_index(drop=True)
        self.D, _ = load_features(self.store, self.derived["sha256"].tolist(), views, self.features)
        return self.derived

    def fit_rows(self, rows: np.ndarray, images: np.ndarray, y: np.ndarray, shas: np.ndarray, sources: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The head's fit rows, labels and content hashes: the training views ``rows`` of :attr:`X`, for ``images``
        (image indices) view 0 of each fit view that decoded (``y``, ``shas``: one per row of X), and every
        training view of the derived images made from ``sources`` (image indices; grouped with their source)."""
        per = max(1, self.config.n_views)  # rows of X per image
        extra = [(v, images[np.isfinite(self.shown[v][images]).all(axis=1)]) for v in self.config.fit_views]
        own = np.concatenate([rows, *(i * per for _, i in extra)]).astype(int)
        made_from = self.derived["derived_from"].to_numpy()
        d = np.flatnonzero(np.isin(made_from, shas[np.asarray(sources, dtype=int) * per]))
        d_rows = (d[:, None] * per + np.arange(per)).ravel()
        X = [self.X[rows], *(self.shown[v][i] for v, i in extra), *([self.D[d_rows]] if len(d_rows) else [])]
        labels = np.concatenate([y[own], self.derived["label"].to_numpy(dtype=y.dtype)[d_rows // per]])
        return np.concatenate(X), labels, np.concatenate([shas[own], made_from[d_rows // per]])

    @classmethod
    def of(cls, config: ProbeConfig) -> Member:
        bb = config.build_backbone()
        features, params = config.head_setup(bb)
        return cls(config, bb, features, params, FeatureStore.for_backbone(bb, config.cache_dir))


def check_pair(members: list[Member]) -> None:
    """One probe, or two logistic probes that read the same pixels the same way (a pair's mean logit is a probe)."""
    if len(members) > 2:
        raise ValueError(f"cross-validate one probe or a pair, not {len(members)}")
    if len(members) == 1:
        return
    a, b = members
    if a.config.head != "logreg" or b.config.head != "logreg":
        raise ValueError("a pair averages logistic heads' logits: both heads must be logreg")
    if (a.bb.preprocess, a.features, a.bb.tap_pool, a.config.n_views, a.config.fit_views) != (
            b.bb.preprocess, b.features, b.bb.tap_pool, b.config.n_views, b.config.fit_views):
        raise ValueError(f"a pair's members read the same pixels and features: {a.bb.name} and {b.bb.name} differ "
                         "in preprocessing, features, tap pooling, views or fit views")
