"""`fetch_finetuned`: locate, read, convert, validate against θ_0, write with a record."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from mergeflow.checkpoints.adapters import SOURCES, Located, parse_options
from mergeflow.checkpoints.keys import (
    guess_prefix,
    is_transformers_layout,
    match_pretrained,
    strip_prefix,
    transformers_to_open_clip,
)
from mergeflow.checkpoints.readers import read_tensors
from mergeflow.checkpoints.record import check_output_path, write_encoder
from mergeflow.checkpoints.tables import expert_origin
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


def base_difference(located: Located, pretrained: Mapping[str, torch.Tensor], allow_pickle: bool) -> dict[str, float]:
    """How far the source's own zero-shot encoder (task_vectors ships one) is from θ_0: max |Δ| over all weights.

    Its task vectors were fine-tuned from that encoder; a nonzero gap means θ_t − θ_0 also carries the gap.
    """
    path = located.provenance.get("zeroshot_path")
    if path is None:
        return {}
    raw, _ = read_tensors(path, allow_pickle=allow_pickle, label=path)
    base = match_pretrained(strip_prefix(raw, str(located.key_prefix), path), pretrained, path)
    gap = max(float((base[key] - value.float()).abs().max()) for key, value in pretrained.items())
    if gap > 0:
        warnings.warn(f"{path}: the source's zero-shot encoder differs from θ_0 by up to {gap:g}", stacklevel=3)
    return {"zeroshot_max_abs_difference": gap}


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
    the record: where the file came from (for hub sources the revision asked for and the commit it resolved to)
    and whose experts it is (`experts`, the names of published.csv's column of that name). Every bad input
    raises `mergeflow.io.InputError` before anything is written at `out`.
    """
    target = check_output_path(out)
    options = parse_options(source)
    allow_pickle = options.flag("allow_pickle")  # checked before any download
    adapter = SOURCES[options.kind][0]
    located = adapter(options, model, task, cache_dir, progress)
    raw, read_as = read_tensors(located.path, allow_pickle=allow_pickle, label=located.label)
    state, conversion = to_open_clip(raw, located, pretrained)
    checked = match_pretrained(state, pretrained, located.label)
    base = base_difference(located, pretrained, allow_pickle)
    if located.caveat:
        warnings.warn(f"{model}/{task} from {options.kind}: {located.caveat}", stacklevel=2)
    record = {
        "format": FORMAT,
        "model": model,
        "task": task,
        "experts": expert_origin(options.kind, task),
        **located.provenance,
        **base,
        "read_as": read_as,
        **conversion,
    }
    written = write_encoder(target, checked, record)
    log.info("%s/%s: %s -> %s", model, task, located.label, target)
    return written
