"""Fine-tune the last N blocks of a backbone together with a head, from images (not from the feature cache).

Lean 2026 (``seeds/001``) trains the layer-wise fusion head with the last two CLIP visual blocks; Junaid 2026
(``seeds/000``) fine-tunes whole CNNs. One function, :func:`finetune`, serves both: ``unfreeze_blocks=N`` makes the
last N blocks (the backbone's layer-tap modules: transformer blocks, CNN stages) and everything downstream of them
trainable — for an open_clip ViT that includes ``ln_post`` and ``proj``, for a timm EfficientNet
``conv_head``/``bn2`` — and ``unfreeze_blocks="all"`` (or -1) fine-tunes the whole network. "Downstream" is found
with autograd on one dummy image (parameters the first unfrozen block's input does not depend on), so any backbone
works without per-family rules.

The package, by concern:

- :mod:`.config`: :class:`FineTuneConfig` (everything that decides the result) and the published setups,
  :data:`RECIPES` / :func:`recipe_config`;
- :mod:`.data`: images → training tensors. Each draw is seeded by ``(seed, epoch, draw)``, so an epoch's batches
  are the same however often the run is interrupted and resumed: decode (:func:`synthdet.io.pixels.load_image`), an
  augmentation preset (:data:`synthdet.data.augment.PRESETS`; default ``lean2026``), then a random view of the
  backbone's :class:`~synthdet.io.pixels.Preprocess` chain (crop, flip, down-up resize, rare greyscale, JPEG q 60-95:
  the same chain the cached training views use);
- :mod:`.model`: what trains (:func:`trainable_parameters`), the detector folder it becomes
  (:func:`save_finetuned`, :func:`load_finetuned`) and continuing a trained detector;
- :mod:`.loop`: the epochs, validation, best-epoch selection (validation ROC AUC, AP breaking ties), early stopping,
  checkpoints and resume;
- :mod:`.sources`, :mod:`.pipeline`: labelled sources mixed by weight (:func:`mix_sources`) and the whole run from
  folders to held-out metrics (:func:`finetune_detector`).

Validation scores the canonical view 0 through :meth:`Detector.predict_paths`, exactly as inference will.

``out_dir`` holds ``checkpoint.pt`` (the last completed epoch: trainable tensors, head, optimiser, schedule, RNG,
history; written atomically), ``best.safetensors`` (the best epoch's trainable tensors and its validation scores)
and, at the end, ``detector/`` (a detector folder plus ``backbone.safetensors`` with the tuned tensors — load it
with :func:`load_finetuned` — and, for the fusion head, ``alphas.png``). A run killed at any point resumes from
the last completed epoch.

CNN baselines (Junaid 2026, Li 2025, Raza 2025, Gopinath 2025; :data:`RECIPES` names each setup) are this trainer
with ``unfreeze_blocks="all"``, a ``linear`` head on pooled features and, as those papers do, letterbox
preprocessing (``preprocess="letterbox"``: longest side → size, zero padding, the backbone's normalisation, so
aspect ratios are not distorted). Letterboxing whole images would show the model the aspect ratio — in the
development data real photos are 4:3 and generated images square, so the bars alone tell the classes apart. A
letterbox run therefore letterboxes random crops whose aspect ratio is drawn from one distribution for both
classes (:data:`~synthdet.training.finetune.data.LETTERBOX_ASPECTS`) and infers on the centre 1:1 crop (the crop chain's
canonical view, which the card's ``preprocess`` records); ``card.finetune["views"]`` says what the run did.

Two more ways to run it:

- data mixing (open runs): ``item_weights`` makes each epoch draws with replacement in proportion to per-image
  weights (:func:`epoch_order`); :func:`finetune_detector` derives them from per-source shares and validates on one
  named source (:func:`mix_sources`);
- two-stage training (Li et al. 2025, ``seeds/002`` runs #3/#4): pass a trained detector's folder instead of a
  backbone and training continues from its tuned backbone tensors and head, by default at a tenth of its learning
  rates; the result is an ordinary fine-tuned detector folder.

The command line front end is ``synthdet.cli.finetune``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from synthdet.training.finetune.config import RECIPES, FineTuneConfig, Recipe, recipe_config
    from synthdet.training.finetune.data import LETTERBOX_ASPECTS, Item, Views, epoch_order
    from synthdet.training.finetune.loop import FineTuneResult, finetune, score_items
    from synthdet.training.finetune.model import load_finetuned, save_finetuned, set_preprocess, trainable_parameters
    from synthdet.training.finetune.pipeline import finetune_detector
    from synthdet.training.finetune.sources import Mix, Source, mix_sources

#: Public name → the submodule holding it. Loaded on first use, so that scoring with a fine-tuned detector
#: (``load_finetuned``) needs neither the training loop nor the augmentation extra.
_EXPORTS = {
    **dict.fromkeys(("RECIPES", "FineTuneConfig", "Recipe", "recipe_config"), "config"),
    **dict.fromkeys(("LETTERBOX_ASPECTS", "Item", "Views", "epoch_order"), "data"),
    **dict.fromkeys(("FineTuneResult", "finetune", "score_items"), "loop"),
    **dict.fromkeys(("load_finetuned", "save_finetuned", "set_preprocess", "trainable_parameters"), "model"),
    "finetune_detector": "pipeline",
    **dict.fromkeys(("Mix", "Source", "mix_sources"), "sources"),
}
__all__ = [
    "LETTERBOX_ASPECTS", "RECIPES", "FineTuneConfig", "FineTuneResult", "Item", "Mix", "Recipe", "Source", "Views",
    "epoch_order", "finetune", "finetune_detector", "load_finetuned", "mix_sources",
    "recipe_config", "save_finetuned", "score_items", "set_preprocess", "trainable_parameters",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
