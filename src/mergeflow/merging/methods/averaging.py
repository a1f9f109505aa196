"""Methods that need no decomposition: zeroshot, weight_averaging, task_arithmetic, magmax."""

from __future__ import annotations

import torch

from mergeflow.merging.context import TensorContext, TensorDirection
from mergeflow.merging.vectors import sum_over_tasks


def zeroshot(ctx: TensorContext) -> TensorDirection:
    """θ = θ_0. Touches no tensor."""
    return TensorDirection(ctx.pretrained)


def weight_averaging(ctx: TensorContext) -> TensorDirection:
    """θ = θ_avg = (1/T) Σ_t θ_t (task_arithmetic with λ = 1/T). Touches every floating-point tensor; no λ."""
    return TensorDirection(ctx.average)


def task_arithmetic(ctx: TensorContext) -> TensorDirection:
    """θ = θ_0 + λ Σ_t τ_t. Touches every floating-point tensor."""
    return TensorDirection(ctx.pretrained, sum_over_tasks(ctx.task_vectors))


def magnitude_maximum(vectors: torch.Tensor) -> torch.Tensor:
    """Per coordinate the entry of largest |·| across tasks; on equal magnitudes the earlier task wins."""
    chosen = vectors[0].clone()
    for vector in vectors[1:]:
        larger = vector.abs() > chosen.abs()
        chosen = torch.where(larger, vector, chosen)
    return chosen


def magmax(ctx: TensorContext) -> TensorDirection:
    """θ = θ_0 + λ τ, τ[i] = τ_t[i] of the task t with the largest |τ_t[i]|. Touches every floating-point tensor."""
    return TensorDirection(ctx.pretrained, magnitude_maximum(ctx.task_vectors))
