"""Fetch fine-tuned CLIP image encoders θ_t from their published sources into mergeflow's format.

    record = fetch_finetuned({"source": "tall_masks"}, model="ViT-B-32", task="DTD",
                             pretrained=theta_0, out="results/finetuned/ViT-B-32/DTD.safetensors")

Every source ends as one safetensors file of `open_clip` image-encoder keys (float32), validated against θ_0,
with a JSON sidecar recording where it came from. Names resolve on first use so that importing this package
does not pull in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeflow.lazy import lazy_exports

_EXPORTS = {
    "fetch_finetuned": "fetch",
    "SOURCES": "adapters",
    "transformers_to_open_clip": "keys",
    "sidecar_path": "record",
    "sha256_file": "record",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from mergeflow.checkpoints.adapters import SOURCES
    from mergeflow.checkpoints.fetch import fetch_finetuned
    from mergeflow.checkpoints.keys import transformers_to_open_clip
    from mergeflow.checkpoints.record import sha256_file, sidecar_path


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
