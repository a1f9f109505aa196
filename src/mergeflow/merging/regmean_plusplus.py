"""RegMean++ (Nguyen et al., 2025): RegMean block by block, each block's inputs taken from the merged model so far.

Followed: tanganke/fusion_bench @ 54c9e8c9d9621620c720452cd8533332a32d3689,
`fusion_bench/method/regmean_plusplus/regmean_plusplus.py` L164-311 (`run`) with `clip_regmean_plusplus.py` L54-117
(the hooks), L119-141 (`merge_embedding_layer`), L143-173 (`get_input_for_first_layer`), L175-185 and L187-210
(`layer_batches_forward`), and `config/method/regmean_plusplus/clip_regmean_plusplus.yaml` L6-14 (256 examples,
batches of 32, α = 0.95). The authors' code (nthehai01/RegMean-plusplus @ 8f4bf1f,
`fusion_bench/method/regmean_plusplus/{regmean,clip_regmean}.py`) is the same apart from experiment switches that
are off by default. Mapped onto an open_clip VisionTransformer:

1. The merged model starts as θ_0. Its embeddings and the LayerNorm before the blocks (`conv1`, `class_embedding`,
   `positional_embedding`, `ln_pre`; transformers' `embeddings.*`, `pre_layrnorm`) become the simple average.
2. Each task's images go through that merged embedding once: X_t^0, kept for the whole merge.
3. For block l = 0 … L−1: expert t's own block l runs on X_t^l, and the Grams of its four linear layers' inputs
   are recorded (intra-block inputs therefore come from the expert's block l, the block input from the merged
   blocks < l). Block l's weights with Grams are merged by RegMean's closed form
   (`mergeflow.merging.methods.regmean`), its other tensors (biases, ln_1, ln_2) averaged. The merged block l
   then maps X_t^l to X_t^{l+1} for every task.
4. Whatever comes after the blocks keeps θ_0 (`post_blocks="pretrained"`): FusionBench's merged model is
   CLIPVisionModel loaded from θ_0 and only its embeddings and encoder layers are overwritten (L175-185, L308), so
   `post_layernorm` (open_clip `ln_post`) stays θ_0; the projection sits outside that model and is θ_0's.
   `post_blocks="average"` averages them instead, as RegMean does (then RegMean++ with one task is the expert, and
   with block inputs that coincide across tasks it is RegMean).

Grams and the closed form are those of RegMean (`mergeflow.statistics.grams`, float64 sums over every token of every
image, normalised by the token count; the closed form applied to τ_t and W_0 added back). Everything runs in float32
(float64 when θ_0 has float64 tensors), as FusionBench's Fabric at its default precision; the block inputs are kept
on `device` (FusionBench moves them to the CPU between blocks).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from mergeflow.io import InputError, checked_finite
from mergeflow.merging.methods.regmean import REDUCE_NON_DIAGONAL_RATIO, check_ratio, regmean_tensor
from mergeflow.merging.vectors import average_over_tasks, to_task_vectors_
from mergeflow.models.clip import ModelSpec, build_clip, check_weights
from mergeflow.statistics.grams import GramAccumulator, merged_weight_keys, recording_grams
from mergeflow.types import StateDict

BLOCKS_PREFIX = "transformer.resblocks."
# Tensors the forward pass uses before the first block (open_clip VisionTransformer._embeds).
PRE_BLOCK_PREFIXES = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.")


def _is_pre_block(key: str) -> bool:
    return key.startswith(PRE_BLOCK_PREFIXES)


def _averaged(finetuned: Sequence[Mapping[str, Tensor]], key: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    return average_over_tasks(torch.stack([model[key].to(device, dtype) for model in finetuned]))


def _check_inputs(
    visual: torch.nn.Module, pretrained: Mapping[str, Tensor], finetuned: Sequence[Mapping[str, Tensor]], tasks: int
) -> None:
    if not finetuned:
        raise InputError("RegMean++: no fine-tuned models given; expected at least one")
    if tasks != len(finetuned):
        raise InputError(f"RegMean++: images of {tasks} tasks for {len(finetuned)} models; expected one per model")
    expected = visual.state_dict()
    check_weights(expected, pretrained, "pretrained")
    for index, model in enumerate(finetuned):
        check_weights(expected, model, f"finetuned[{index}]")
    for name, model in [("pretrained", pretrained)] + [(f"finetuned[{i}]", m) for i, m in enumerate(finetuned)]:
        for key, tensor in model.items():
            checked_finite(tensor, f"{name} key {key!r}")


def _embeds(visual: torch.nn.Module, images: Tensor) -> Tensor:
    """open_clip's `VisionTransformer._embeds` (recent open_clip), or the same steps of its `forward` before that."""
    if hasattr(visual, "_embeds"):
        return visual._embeds(images)
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    token = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([token, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(visual.patch_dropout(x))


def _block_inputs(visual: torch.nn.Module, batches: Iterable[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """The merged model's first-block input for every batch: open_clip's `_embeds` (patches, class token, positions,
    patch dropout, ln_pre), batch first."""
    device = next(visual.parameters()).device
    inputs = [_embeds(visual, images.to(device=device, dtype=dtype)) for images in batches]
    if not inputs:
        raise InputError("RegMean++: a task has no training images")
    transformer = visual.transformer
    if not getattr(transformer, "batch_first", True):
        inputs = [x.transpose(0, 1).contiguous() for x in inputs]
    return inputs


def _run_block(block: torch.nn.Module, inputs: Sequence[Tensor], batch_first: bool) -> list[Tensor]:
    if batch_first:
        return [block(x) for x in inputs]
    return [block(x.transpose(0, 1)).transpose(0, 1) for x in inputs]


def regmean_plusplus_visual(
    spec: ModelSpec,
    pretrained: Mapping[str, Tensor],
    finetuned: Sequence[Mapping[str, Tensor]],
    images: Sequence[Iterable[Tensor]],
    reduce_non_diagonal_ratio: float = REDUCE_NON_DIAGONAL_RATIO,
    *,
    post_blocks: Literal["pretrained", "average"] = "pretrained",
    device: str | torch.device = "cpu",
) -> StateDict:
    """The RegMean++ merge of open_clip image encoders: a state dict with the keys and dtypes of `pretrained`, on
    `device`.

    `images[t]` are task t's training images as normalised NCHW float batches (FusionBench: 256 images in batches
    of 32), read once. `post_blocks` says what `ln_post` and `proj` become: θ_0 (FusionBench) or the average.
    """
    check_ratio(reduce_non_diagonal_ratio)
    if post_blocks not in ("pretrained", "average"):
        raise InputError(f"RegMean++: post_blocks {post_blocks!r}; expected 'pretrained' or 'average'")
    place = torch.device(device)
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in pretrained.values()) else torch.float32
    visual = build_clip(spec).visual
    _check_inputs(visual, pretrained, finetuned, len(images))
    visual.load_state_dict(dict(pretrained), strict=True)
    visual = visual.to(place, dtype).eval()
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)

    merged: dict[str, Tensor] = {}
    for key in pretrained:
        if _is_pre_block(key) and pretrained[key].is_floating_point():
            merged[key] = _averaged(finetuned, key, place, dtype)
    visual.load_state_dict(merged, strict=False)

    with torch.no_grad():
        inputs = [_block_inputs(visual, batches, dtype) for batches in images]
        scratch = copy.deepcopy(blocks[0])
        for index, block in enumerate(blocks):
            prefix = f"{BLOCKS_PREFIX}{index}."
            local_keys = list(block.state_dict())
            gram_keys = set(merged_weight_keys(block))
            grams: list[dict[str, Tensor]] = []
            for task, model in enumerate(finetuned):
                scratch.load_state_dict({key: model[prefix + key] for key in local_keys}, strict=True)
                accumulator = GramAccumulator()
                with recording_grams(scratch, accumulator):
                    _run_block(scratch, inputs[task], batch_first)
                grams.append(accumulator.grams(dtype))
            merged_block: dict[str, Tensor] = {}
            for key in local_keys:
                stack = torch.stack([model[prefix + key].to(place, dtype) for model in finetuned])
                if key in gram_keys:
                    base = pretrained[prefix + key].to(place, dtype)
                    to_task_vectors_(stack, base)
                    task_grams = torch.stack([task_grams[key] for task_grams in grams])
                    merged_block[key] = regmean_tensor(base, stack, task_grams, reduce_non_diagonal_ratio)
                else:
                    merged_block[key] = average_over_tasks(stack)
            block.load_state_dict(merged_block, strict=True)
            merged.update({prefix + key: value for key, value in merged_block.items()})
            if index < len(blocks) - 1:
                inputs = [_run_block(block, task_inputs, batch_first) for task_inputs in inputs]

    result: StateDict = {}
    for key, tensor in pretrained.items():
        if key in merged:
            value = merged[key]
        elif post_blocks == "average" and tensor.is_floating_point():
            value = _averaged(finetuned, key, place, dtype)
        else:
            value = tensor.to(place)
        result[key] = checked_finite(value.to(tensor.dtype), f"RegMean++ merged key {key!r}")
    return result
