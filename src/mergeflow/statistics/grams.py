"""RegMean's statistics: the Gram matrix of the inputs of every merged linear layer of a fine-tuned image encoder.

Followed: tanganke/fusion_bench @ 54c9e8c9d9621620c720452cd8533332a32d3689,
`fusion_bench/method/regmean/clip_regmean.py` L65-94 (the forward hook) and L104-123, with `regmean.py` L303-305
(`get_modules_to_merge(model, [nn.Linear])`) and `config/method/regmean/clip_regmean.yaml` L8-14
(`num_regmean_examples: 256`, batch size 32). The hook is the authors' own (bloomberg/dataless-model-merging @
92247ae, `src/model_merge/local_trainer.py` L283-303). For a linear layer with input x (batch, tokens, in):

    G = Σ_batches Σ_{rows r of x} x_r x_rᵀ / N,   N = the number of rows (images × tokens, every token: CLS too)

FusionBench keeps G as a running mean in the model's dtype (float32), G ← (G·n + xᵀx)/(n + m); we add xᵀx in float64
and divide once, the same quantity up to round-off. Batches are taken in the order given until the images counted
reach `num_regmean_examples` (checked before each batch, as FusionBench's `break`), so a last partial batch is taken
whole. The model runs in eval mode (transformers' `from_pretrained` leaves FusionBench's so), in its own dtype.

Which layers: every `nn.Linear` the forward pass calls. In transformers' CLIPVisionModel (FusionBench's merged model)
those are q/k/v/out_proj, fc1 and fc2 of every encoder layer; its patch embedding is a Conv2d and the projection to
the joint space lives outside it (θ_0's `visual_projection`, `fusion_bench/mixins/clip_classification.py` L190). In
an open_clip VisionTransformer they are, per residual block, the attention's stacked q/k/v projection
`attn.in_proj_weight`, `attn.out_proj.weight`, `mlp.c_fc.weight` and `mlp.c_proj.weight`; `proj` is a bare
parameter (x @ proj), not a linear module, and gets no Gram (so RegMean averages it like every other tensor).

Two open_clip details. q, k and v all read ln_1's output, so one Gram, of the attention's query input, serves all
three row blocks of `in_proj_weight`. And nn.MultiheadAttention applies `out_proj` inside
`F.multi_head_attention_forward` (or its fused fast path) without calling `out_proj.forward`, so a hook on out_proj
never fires: a hook on the attention module recomputes the attention with an identity output projection and no
bias, which gives out_proj's input (`attention_values`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_REGMEAN_EXAMPLES = 256


class GramAccumulator:
    """Σ xᵀx in float64 and the number of rows added, per state-dict key."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.rows: dict[str, int] = {}

    def add(self, key: str, inputs: Tensor) -> None:
        """Add the rows of `inputs` (…, in): every leading index (image, token) is one row."""
        rows = inputs.detach().reshape(-1, inputs.shape[-1]).to(torch.float64)
        product = torch.matmul(rows.transpose(0, 1), rows)
        if key in self.sums:
            self.sums[key] += product
            self.rows[key] += rows.shape[0]
        else:
            self.sums[key] = product
            self.rows[key] = rows.shape[0]

    def grams(self, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """Σ xᵀx / N per key, in `dtype`, on the device the inputs came from."""
        return {key: (total / self.rows[key]).to(dtype) for key, total in self.sums.items()}


def _attention_call(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> dict[str, Any]:
    """The arguments of an `nn.MultiheadAttention` call by name (its forward's signature)."""
    return {
        "query": query,
        "key": key,
        "value": value,
        "key_padding_mask": key_padding_mask,
        "attn_mask": attn_mask,
        "is_causal": is_causal,
    }


def attention_values(
    attention: torch.nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """The input of `attention.out_proj` for this call: the heads' outputs concatenated, before the projection.

    The module's own computation (`F.multi_head_attention_forward`, its slow path) with the output projection
    replaced by the identity and no bias, in the module's layout: out_proj(values) + bias is its output.
    """
    if not attention._qkv_same_embed_dim:
        raise ValueError("attention with separate q/k/v projection weights has no in_proj_weight to merge")
    batched = query.dim() == 3
    if attention.batch_first and batched:
        query, key, value = (x.transpose(0, 1) for x in (query, key, value))
    identity = torch.eye(attention.embed_dim, dtype=query.dtype, device=query.device)
    values, _ = F.multi_head_attention_forward(
        query,
        key,
        value,
        attention.embed_dim,
        attention.num_heads,
        attention.in_proj_weight,
        attention.in_proj_bias,
        attention.bias_k,
        attention.bias_v,
        attention.add_zero_attn,
        attention.dropout,
        identity,
        None,
        training=attention.training,
        key_padding_mask=key_padding_mask,
        need_weights=False,
        attn_mask=attn_mask,
        is_causal=is_causal,
    )
    if attention.batch_first and batched:
        values = values.transpose(0, 1)
    return values


def merged_linear_modules(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The modules whose inputs get Grams, by name: every nn.MultiheadAttention, and every nn.Linear that is not an
    attention's `out_proj` (the attention's hook records that one)."""
    attentions = {name for name, sub in module.named_modules() if isinstance(sub, torch.nn.MultiheadAttention)}
    found: dict[str, torch.nn.Module] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.MultiheadAttention):
            found[name] = sub
        elif isinstance(sub, torch.nn.Linear) and name.rpartition(".")[0] not in attentions:
            found[name] = sub
    return found


def _prefixed(name: str, leaf: str) -> str:
    return f"{name}.{leaf}" if name else leaf


def merged_weight_keys(module: torch.nn.Module) -> list[str]:
    """The state-dict keys of `module` that `recording_grams` gives a Gram: `….attn.in_proj_weight`,
    `….attn.out_proj.weight` and every other linear `….weight`."""
    keys = []
    for name, sub in merged_linear_modules(module).items():
        if isinstance(sub, torch.nn.MultiheadAttention):
            keys += [_prefixed(name, "in_proj_weight"), _prefixed(name, "out_proj.weight")]
        else:
            keys.append(_prefixed(name, "weight"))
    return keys


def _attention_hook(accumulator: GramAccumulator, name: str):
    def hook(attention: torch.nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> None:
        call = _attention_call(*args, **kwargs)
        query, key, value = call["query"], call["key"], call["value"]
        if not (key is query and value is query):
            raise ValueError(f"{name}: q, k and v read different inputs; one Gram of in_proj_weight would not serve")
        accumulator.add(_prefixed(name, "in_proj_weight"), query)
        values = attention_values(attention, **call)
        accumulator.add(_prefixed(name, "out_proj.weight"), values)

    return hook


def _linear_hook(accumulator: GramAccumulator, name: str):
    def hook(linear: torch.nn.Module, args: tuple, output: Tensor) -> None:
        accumulator.add(_prefixed(name, "weight"), args[0])

    return hook


@contextlib.contextmanager
def recording_grams(module: torch.nn.Module, accumulator: GramAccumulator) -> Iterator[None]:
    """While the block runs, every forward pass of `module` adds its merged layers' inputs to `accumulator`, keyed by
    state-dict key relative to `module` (`merged_weight_keys`)."""
    handles = []
    try:
        for name, sub in merged_linear_modules(module).items():
            if isinstance(sub, torch.nn.MultiheadAttention):
                handles.append(sub.register_forward_hook(_attention_hook(accumulator, name), with_kwargs=True))
            else:
                handles.append(sub.register_forward_hook(_linear_hook(accumulator, name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def linear_input_grams(
    visual: torch.nn.Module,
    batches: Iterable[Tensor],
    num_regmean_examples: int = NUM_REGMEAN_EXAMPLES,
) -> dict[str, Tensor]:
    """The input Gram of every merged weight of `visual`: float32 CPU tensors (in, in) keyed by state-dict key.

    `batches` are normalised NCHW images (FusionBench: batches of 32), taken until `num_regmean_examples` images
    have been seen. The module's mode is restored afterwards.
    """
    if num_regmean_examples < 1:
        raise ValueError(f"num_regmean_examples: {num_regmean_examples}; expected at least 1")
    parameter = next(visual.parameters())
    accumulator = GramAccumulator()
    seen = 0
    was_training = visual.training
    visual.eval()
    try:
        with torch.no_grad(), recording_grams(visual, accumulator):
            for images in batches:
                if seen >= num_regmean_examples:
                    break
                visual(images.to(device=parameter.device, dtype=parameter.dtype))
                seen += images.shape[0]
    finally:
        visual.train(was_training)
    if seen == 0:
        raise ValueError("no training images to compute the Gram matrices from")
    missing = sorted(set(merged_weight_keys(visual)) - set(accumulator.sums))
    if missing:
        raise ValueError(f"the forward pass never reached {missing[:3]}; expected every merged layer to run")
    return {key: gram.cpu() for key, gram in accumulator.grams(torch.float32).items()}
