"""`fetch_finetuned`: locate, read, convert, validate against θ_0, write with a record."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from mergeflow.checkpoints.keys import (
    guess_prefix,
    is_transformers_layout,
    match_pretrained,
    strip_prefix,
    transformers_to_open_clip,
)
from mergeflow.checkpoints.readers import read_tensors
from mergeflow.checkpoints.record import check_output_path, write_encoder
from mergeflow.checkpoints.sources import SOURCES, Located, parse_options
from mergeflow.types import StateDict

log = logging.getLogger(__name__)

FORMAT = "open_clip image encoder state dict (CLIP.visual.state_dict()), float32"


def to_open_clip(
    raw: Mapping[str, torch.Tensor], located: Located, pretrained: Mapping[str, torch.Tensor]
) -> tuple[StateDict, dict[str, Any]]:
    """open_clip image-encoder keys, and how they were obtained (for the record).

    transformers' CLIPVisionModel has no visual projection; θ_0's `proj` stands in, which is what FusionBench
    itself does (the frozen pretrained projection from openai/clip-vit-*).
    """
    layout = located.layout
    if layout == "auto":
        layout = "transformers" if is_transformers_layout(raw) else "open_clip"
    if layout == "transformers":
        state = transformers_to_open_clip(raw, located.label)
        proj_source = "checkpoint" if "proj" in state else "pretrained"
        if "proj" not in state and "proj" in pretrained:
            state["proj"] = pretrained["proj"]
        return state, {"layout": "transformers", "proj_source": proj_source}
    prefix = located.key_prefix if located.key_prefix is not None else guess_prefix(raw, located.label)
    return strip_prefix(raw, prefix, located.label), {"layout": "open_clip", "key_prefix": prefix}


def fetch_finetuned(
    source: Mapping[str, Any],
    *,
    model: str,
    task: str,
    pretrained: Mapping[str, torch.Tensor],
    out: str | os.PathLike[str],
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fetch the encoder fine-tuned on `task` from `source` (the `finetuned` config block) into `out`.

    `model` is the open_clip name (ViT-B-32, ViT-B-16, ViT-L-14); `pretrained` is θ_0 in open_clip keys, against
    which keys and shapes are checked. Writes `out` (safetensors, float32) and its `.json` sidecar and returns
    the record. Every bad input raises `mergeflow.io.InputError` before anything is written at `out`.
    """
    target = check_output_path(out)
    options = parse_options(source)
    allow_pickle = options.flag("allow_pickle")  # checked before any download
    adapter = SOURCES[options.kind][0]
    located = adapter(options, model, task, cache_dir, progress)
    raw, read_as = read_tensors(located.path, allow_pickle=allow_pickle, label=located.label)
    state, conversion = to_open_clip(raw, located, pretrained)
    checked = match_pretrained(state, pretrained, located.label)
    if located.caveat:
        warnings.warn(f"{model}/{task} from {options.kind}: {located.caveat}", stacklevel=2)
    record = {
        "format": FORMAT,
        "model": model,
        "task": task,
        **located.provenance,
        "read_as": read_as,
        **conversion,
    }
    written = write_encoder(target, checked, record)
    log.info("%s/%s: %s -> %s", model, task, located.label, target)
    return written
