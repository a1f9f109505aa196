"""Bring checkpoint keys to open_clip's image-encoder layout (`CLIP.visual.state_dict()`) and check them against θ_0.

Two layouts occur in the sources:
- open_clip, under a prefix: `model.visual.` (task_vectors / TALL masks ImageEncoder), `visual.` (a full CLIP)
  or none (a bare visual state dict). Keys outside the prefix (text tower, logit scale) are not ours.
- transformers `CLIPVisionModel` (FusionBench), keys under `vision_model.` in files written by transformers 4
  (none in transformers 5), with separate q/k/v projections and no visual projection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from mergeflow.io import InputError
from mergeflow.types import StateDict

OPEN_CLIP_PREFIXES: tuple[str, ...] = ("", "visual.", "model.visual.", "image_encoder.model.visual.")
PROBE_KEY = "conv1.weight"  # every open_clip ViT image encoder has it

_HF_VISION_PREFIX = "vision_model."
_HF_PROJECTION = "visual_projection.weight"
_HF_TOP: dict[str, str] = {
    "embeddings.class_embedding": "class_embedding",
    "embeddings.patch_embedding.weight": "conv1.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "pre_layrnorm.weight": "ln_pre.weight",
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}
_HF_BLOCK: dict[str, str] = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_HF_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")
# A full transformers CLIPModel also carries the text tower; position_ids is a buffer older versions saved.
_HF_IGNORED = re.compile(r"(text_model\..*|text_projection\.weight|logit_scale|embeddings\.position_ids)")


def is_transformers_layout(keys: Iterable[str]) -> bool:
    return any("encoder.layers." in key for key in keys)


def guess_prefix(keys: Iterable[str], label: str) -> str:
    """The open_clip prefix under which this checkpoint keeps the image encoder."""
    present = set(keys)
    for prefix in OPEN_CLIP_PREFIXES:
        if prefix + PROBE_KEY in present:
            return prefix
    raise InputError(
        f"{label}: cannot tell where the image encoder is (no key ends in {PROBE_KEY!r} under any of "
        f"{list(OPEN_CLIP_PREFIXES)}); set finetuned.key_prefix"
    )


def strip_prefix(raw: Mapping[str, torch.Tensor], prefix: str, label: str) -> StateDict:
    """The tensors under `prefix`, with the prefix removed; other keys belong to other parts of the model."""
    selected = {key[len(prefix) :]: value for key, value in raw.items() if key.startswith(prefix)}
    if not selected:
        raise InputError(f"{label}: no key starts with the prefix {prefix!r} (finetuned.key_prefix)")
    return selected


def transformers_to_open_clip(raw: Mapping[str, torch.Tensor], label: str) -> StateDict:
    """Rename a transformers CLIP vision state dict to open_clip keys; q, k, v concatenate into in_proj.

    `visual_projection.weight` (CLIPVisionModelWithProjection) becomes `proj`, transposed (open_clip computes
    `x @ proj`, transformers `x @ W.T`); without it there is no `proj` key and the caller supplies θ_0's.
    """
    converted: StateDict = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in raw.items():
        name = key[len(_HF_VISION_PREFIX) :] if key.startswith(_HF_VISION_PREFIX) else key
        if name == _HF_PROJECTION:
            converted["proj"] = value.t().contiguous()
        elif name in _HF_TOP:
            converted[_HF_TOP[name]] = value
        elif match := _HF_LAYER.fullmatch(name):
            layer, rest = int(match.group(1)), match.group(2)
            if qkv_match := _HF_QKV.fullmatch(rest):
                qkv.setdefault((layer, qkv_match.group(2)), {})[qkv_match.group(1)] = value
            elif rest in _HF_BLOCK:
                converted[f"transformer.resblocks.{layer}.{_HF_BLOCK[rest]}"] = value
            else:
                raise InputError(f"{label}: unknown transformers CLIP vision key {key!r}")
        elif not _HF_IGNORED.fullmatch(name):
            raise InputError(f"{label}: unknown transformers CLIP vision key {key!r}")
    for (layer, kind), parts in sorted(qkv.items()):
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            names = [f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}" for p in missing]
            raise InputError(f"{label}: missing {names} (q, k and v are needed to build attn.in_proj_{kind})")
        converted[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts[p] for p in "qkv"], dim=0)
    return converted


def _listed(keys: list[str], limit: int = 5) -> str:
    return f"{keys[:limit]}{f' and {len(keys) - limit} more' if len(keys) > limit else ''}"


def match_pretrained(
    state: Mapping[str, torch.Tensor], pretrained: Mapping[str, torch.Tensor], label: str
) -> StateDict:
    """θ_t in θ_0's key order as contiguous float32, after checking keys, shapes and finiteness against θ_0.

    Merging subtracts θ_0 key by key, so a missing, extra or differently shaped tensor means the checkpoint is
    of another architecture (or was converted wrongly) and must stop here rather than in a merge.
    """
    missing = sorted(set(pretrained) - set(state))
    if missing:
        raise InputError(f"{label}: missing key(s) {_listed(missing)} that the pretrained encoder θ_0 has")
    extra = sorted(set(state) - set(pretrained))
    if extra:
        raise InputError(f"{label}: unexpected key(s) {_listed(extra)} that the pretrained encoder θ_0 lacks")
    checked: StateDict = {}
    for key, reference in pretrained.items():
        value = state[key]
        if tuple(value.shape) != tuple(reference.shape):
            raise InputError(
                f"{label}: key {key!r} has shape {tuple(value.shape)} but θ_0 has {tuple(reference.shape)} "
                "(a checkpoint of another architecture?)"
            )
        if not value.is_floating_point():
            raise InputError(f"{label}: key {key!r} holds {value.dtype} values, expected floating point")
        value = value.detach().to(device="cpu", dtype=torch.float32).contiguous()
        if not bool(torch.isfinite(value).all()):
            raise InputError(f"{label}: key {key!r} holds NaN or infinite values")
        checked[key] = value
    return checked
