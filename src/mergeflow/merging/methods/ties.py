"""TIES-merging: trim each task vector to its largest entries, elect a sign, merge the agreeing entries.

The trim threshold of task t is the k-th largest |τ_t| over the whole flattened model and the
fallback sign is the sign of Σ γ over the whole model, so TIES first makes whole-model passes
(`ties_statistics`) and then merges tensor by tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mergeflow.merging.context import (
    Placement,
    TensorContext,
    TensorDirection,
    float_keys,
    load_context,
    progress_over,
)
from mergeflow.merging.kth_largest import KthLargest
from mergeflow.merging.sources import TensorSource
from mergeflow.merging.vectors import sum_over_tasks

# When TIES is the base of dare or consensus, their own `k` and `lam` mean something else, so the
# TIES trim fraction and merge rule are TIES's defaults.
BASE_TRIM_FRACTION = 0.2
BASE_MERGE_RULE = "mean"


@dataclass(frozen=True)
class TiesStatistics:
    """Whole-model quantities: each task's trim threshold (None: keep nothing) and the fallback sign."""

    thresholds: tuple[float | None, ...]
    majority_sign: float


def trim(vectors: torch.Tensor, thresholds: tuple[float | None, ...]) -> torch.Tensor:
    """Zero every entry of τ_t with |τ_t| below task t's threshold (entries equal to it are kept)."""
    kept = torch.zeros_like(vectors)
    for task, threshold in enumerate(thresholds):
        if threshold is not None:
            kept[task] = torch.where(vectors[task].abs() >= threshold, vectors[task], 0.0)
    return kept


def summed_signs(trimmed: torch.Tensor) -> torch.Tensor:
    """γ before resolving zeros: sign(Σ_t trimmed τ_t)."""
    return torch.sign(sum_over_tasks(trimmed))


def ties_delta(vectors: torch.Tensor, statistics: TiesStatistics, merge: str) -> torch.Tensor:
    """τ_m: the mean ("mean") or sum ("sum") of the trimmed entries whose sign equals the elected sign γ."""
    trimmed = trim(vectors, statistics.thresholds)
    signs = summed_signs(trimmed)
    elected = torch.where(signs == 0, statistics.majority_sign, signs)
    # A zero entry has sign 0, never ±1, so it is not selected and does not count towards the mean.
    agrees = torch.sign(trimmed) == elected
    selected = torch.where(agrees, trimmed, 0.0)
    total = sum_over_tasks(selected)
    if merge == "sum":
        return total
    count = agrees.logical_and(trimmed != 0).sum(dim=0)
    return total / count.clamp(min=1)


def kept_count(fraction: float, total: int) -> int:
    """How many entries of a task vector of `total` entries TIES keeps: floor(k·total)."""
    return math.floor(fraction * total)


def ties_statistics(
    source: TensorSource,
    hparams: Mapping[str, Any],
    placement: Placement,
    vectors_of: Callable[[TensorContext], torch.Tensor],
    fraction: float,
    progress: bool,
) -> TiesStatistics:
    """Trim thresholds by exact radix selection (2 passes in float32), then one pass for the majority sign.

    Each pass holds one key of every model at a time. `vectors_of` gives the task vectors TIES works
    on (τ_t, or DARE's rescaled τ̃_t), recomputed identically in every pass.
    """
    keys = float_keys(source)
    total = sum(math.prod(source.spec(key).shape) for key in keys)
    keep = kept_count(fraction, total)
    if keep == 0:
        thresholds: tuple[float | None, ...] = (None,) * source.num_tasks
    else:
        selectors = [KthLargest(keep, placement.dtype, placement.device) for _ in range(source.num_tasks)]
        for index in range(selectors[0].passes):
            for key in progress_over(keys, f"ties thresholds, pass {index + 1}/{selectors[0].passes}", progress):
                vectors = vectors_of(load_context(source, key, hparams, placement))
                for selector, vector in zip(selectors, vectors):
                    selector.observe(vector.abs())
            for selector in selectors:
                selector.end_pass()
        thresholds = tuple(selector.value() for selector in selectors)
    sign_balance = 0
    for key in progress_over(keys, "ties majority sign", progress):
        signs = summed_signs(trim(vectors_of(load_context(source, key, hparams, placement)), thresholds))
        sign_balance += int((signs > 0).sum()) - int((signs < 0).sum())
    return TiesStatistics(thresholds, float((sign_balance > 0) - (sign_balance < 0)))


def ties_vectors(ctx: TensorContext) -> torch.Tensor:
    return ctx.task_vectors


def ties_method_statistics(
    source: TensorSource, hparams: Mapping[str, Any], placement: Placement, progress: bool
) -> TiesStatistics:
    return ties_statistics(source, hparams, placement, ties_vectors, hparams["k"], progress)


def ties(ctx: TensorContext) -> TensorDirection:
    """θ = θ_0 + λ τ_m (TIES). Touches every floating-point tensor.

    Per task keep the entries with |τ_t| >= the floor(k·N)-th largest |τ_t| over all N floating-point
    entries of the model (ties at the threshold are kept; k = 0 keeps nothing); γ = sign(Σ_t trimmed τ_t),
    zeros of γ replaced by the sign of Σ γ over the whole model; τ_m per coordinate the mean (merge="mean")
    or sum (merge="sum") of the trimmed entries whose sign equals γ.
    """
    return TensorDirection(ctx.pretrained, ties_delta(ties_vectors(ctx), ctx.statistics, ctx.hparams["merge"]))
