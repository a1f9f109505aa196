"""Test-time adaptive merging: AdaMerging (task- and layer-wise), AdaMerging on CART, and AdaRank.

    settings = AdaMergingSettings(granularity="layer")
    result = adapt(visual, spec, pretrained, finetuned, [UnlabeledTask(name, images, head, scale), ...], settings)
    merged = result.merged_state_dict(); save_learned_merge("learned.safetensors", result.learned)

Coefficients (and adarank's singular-component masks) are learned by minimising Σ_t mean prediction
entropy on unlabeled test images; labels are never an input. Names resolve on first use (`mergeflow.lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeflow.lazy import lazy_exports

_EXPORTS = {
    "AdaptationMovement": "adaptation",
    "AdaptationResult": "adaptation",
    "adapt": "adaptation",
    "LearnedMerge": "artefact",
    "learned_movement": "artefact",
    "load_learned_merge": "artefact",
    "save_learned_merge": "artefact",
    "UnlabeledTask": "data",
    "build_adaptive_merge": "methods",
    "merge_from_learned": "methods",
    "AdaptiveMerge": "parametrisation",
    "AdaMergingCartSettings": "settings",
    "AdaMergingSettings": "settings",
    "AdaRankSettings": "settings",
    "SETTINGS_CLASSES": "settings",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from mergeflow.adaptive.adaptation import AdaptationMovement, AdaptationResult, adapt
    from mergeflow.adaptive.artefact import LearnedMerge, learned_movement, load_learned_merge, save_learned_merge
    from mergeflow.adaptive.data import UnlabeledTask
    from mergeflow.adaptive.methods import build_adaptive_merge, merge_from_learned
    from mergeflow.adaptive.parametrisation import AdaptiveMerge
    from mergeflow.adaptive.settings import (
        SETTINGS_CLASSES,
        AdaMergingCartSettings,
        AdaMergingSettings,
        AdaRankSettings,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
