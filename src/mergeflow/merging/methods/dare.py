"""DARE: drop each entry of a task vector with probability p, rescale the rest by 1/(1 − p), then merge."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from mergeflow.merging.context import Placement, TensorContext, TensorDirection
from mergeflow.merging.keys import is_matrix
from mergeflow.merging.methods.ties import (
    BASE_MERGE_RULE,
    BASE_TRIM_FRACTION,
    TiesStatistics,
    ties_delta,
    ties_statistics,
)
from mergeflow.merging.sources import TensorSource
from mergeflow.merging.vectors import sum_over_tasks


def mask_seed(seed: int, task: int, key: str) -> int:
    """The generator seed of one (task, tensor) mask: sha256 of "seed:task:key", first 8 bytes, 63 bits.

    A function of the names alone, so a mask never depends on which tensors were drawn before it:
    streaming and in-memory merges, and any key order, draw the same masks.
    """
    digest = hashlib.sha256(f"{seed}:{task}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def keep_mask(seed: int, task: int, key: str, shape: torch.Size, p: float) -> torch.Tensor:
    """m_t ~ Bernoulli(1 − p), drawn on the CPU so every device sees the same mask."""
    generator = torch.Generator(device="cpu").manual_seed(mask_seed(seed, task, key))
    return torch.rand(shape, generator=generator) >= p


def dare_vectors(ctx: TensorContext) -> torch.Tensor:
    """τ̃_t = m_t ⊙ τ_t / (1 − p) on 2-D tensors; τ_t unchanged on every other tensor."""
    if not is_matrix(ctx.shape):
        return ctx.task_vectors
    p, seed = ctx.hparams["p"], ctx.hparams["seed"]
    rescaled = ctx.task_vectors / (1.0 - p)
    masks = torch.stack([keep_mask(seed, task, ctx.key, ctx.shape, p) for task in range(ctx.num_tasks)])
    return torch.where(masks.to(rescaled.device), rescaled, 0.0)


def dare_statistics(
    source: TensorSource, hparams: Mapping[str, Any], placement: Placement, progress: bool
) -> TiesStatistics | None:
    if hparams["base"] != "ties":
        return None
    return ties_statistics(source, hparams, placement, dare_vectors, BASE_TRIM_FRACTION, progress)


def dare(ctx: TensorContext) -> TensorDirection:
    """θ = θ_0 + λ base(τ̃), τ̃_t = m_t ⊙ τ_t / (1 − p), m_t ~ Bernoulli(1 − p) seeded by (seed, t, key).

    Masks only 2-D tensors; every other floating-point tensor goes to the base unchanged. base
    "task_arithmetic": Σ_t τ̃_t; base "ties": the TIES vector of the τ̃_t with TIES's default k = 0.2 and
    merge "mean" (thresholds over the whole model of τ̃). Touches every floating-point tensor.
    """
    vectors = dare_vectors(ctx)
    if ctx.hparams["base"] == "ties":
        return TensorDirection(ctx.pretrained, ties_delta(vectors, ctx.statistics, BASE_MERGE_RULE))
    return TensorDirection(ctx.pretrained, sum_over_tasks(vectors))
