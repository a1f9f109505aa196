"""Consensus merging (TALL masks): keep only the coordinates that at least k tasks consider their own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mergeflow.io import InputError
from mergeflow.merging.context import Placement, TensorContext, TensorDirection
from mergeflow.merging.methods.ties import (
    BASE_MERGE_RULE,
    BASE_TRIM_FRACTION,
    TiesStatistics,
    ties_delta,
    ties_statistics,
    ties_vectors,
)
from mergeflow.merging.sources import TensorSource
from mergeflow.merging.vectors import sum_over_tasks


def per_task_mask_lams(mask_lam: float | tuple[float, ...], num_tasks: int) -> tuple[float, ...]:
    """λ_t for every task from one shared value or a per-task list, which must have one entry per task."""
    if isinstance(mask_lam, tuple):
        if len(mask_lam) != num_tasks:
            raise InputError(
                f"consensus: mask_lam has {len(mask_lam)} values but there are {num_tasks} tasks "
                "(give one value, or one per task)"
            )
        return mask_lam
    return (mask_lam,) * num_tasks


def consensus_mask(vectors: torch.Tensor, mask_lams: tuple[float, ...], min_tasks: int) -> torch.Tensor:
    """m = 1{Σ_t m_t ≥ k}, m_t = 1{|τ_t| > λ_t·|τ_MTL − τ_t|}, τ_MTL = Σ_t τ_t."""
    multitask = sum_over_tasks(vectors)
    votes = torch.zeros(vectors.shape[1:], dtype=torch.int64, device=vectors.device)
    for vector, mask_lam in zip(vectors, mask_lams):
        votes += vector.abs() > mask_lam * (multitask - vector).abs()
    return votes >= min_tasks


def consensus_statistics(
    source: TensorSource, hparams: Mapping[str, Any], placement: Placement, progress: bool
) -> TiesStatistics | None:
    per_task_mask_lams(hparams["mask_lam"], source.num_tasks)
    if hparams["base"] != "ties":
        return None
    return ties_statistics(source, hparams, placement, ties_vectors, BASE_TRIM_FRACTION, progress)


def consensus(ctx: TensorContext) -> TensorDirection:
    """θ = θ_0 + λ (τ_base ⊙ m), m = 1{Σ_t 1{|τ_t| > λ_t·|τ_MTL − τ_t|} ≥ k}, τ_MTL = Σ_t τ_t.

    λ_t is mask_lam (one value or one per task); τ_base = Σ_t τ_t (base "task_arithmetic") or the TIES
    vector with TIES's default k = 0.2 and merge "mean" (base "ties"). k = 0 keeps every coordinate,
    giving the base exactly. Touches every floating-point tensor.
    """
    vectors = ctx.task_vectors
    mask = consensus_mask(vectors, per_task_mask_lams(ctx.hparams["mask_lam"], ctx.num_tasks), ctx.hparams["k"])
    if ctx.hparams["base"] == "ties":
        base = ties_delta(vectors, ctx.statistics, BASE_MERGE_RULE)
    else:
        base = sum_over_tasks(vectors)
    return TensorDirection(ctx.pretrained, torch.where(mask, base, 0.0))
