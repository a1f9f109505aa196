"""The label-free objective: each task's mean softmax entropy of its frozen head's logits on merged features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.func import functional_call

from mergeflow.models.heads import head_logits


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of −Σ_c p_c log p_c, p = softmax(logits)."""
    log_probs = logits.log_softmax(dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1).mean()


def task_entropies(
    visual: torch.nn.Module,
    weights: Mapping[str, torch.Tensor],
    batches: Sequence[torch.Tensor],
    heads: Sequence[torch.Tensor],
    logit_scales: Sequence[torch.Tensor],
    *,
    bf16_autocast: bool,
) -> torch.Tensor:
    """[T] mean entropy per task of the encoder run with `weights` (differentiable in them).

    All tasks' batches go through one forward pass: the weights are shared and a ViT has no
    batch-dependent layer, so this equals one pass per task. Only the encoder runs under autocast;
    the heads' logits and the entropies are float32.
    """
    images = torch.cat(list(batches))
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16_autocast):
        features = functional_call(visual, dict(weights), (images,))
    per_task = features.split([len(batch) for batch in batches])
    return torch.stack(
        [mean_entropy(head_logits(part, head, scale)) for part, head, scale in zip(per_task, heads, logit_scales)]
    )
