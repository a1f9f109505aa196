"""Low-rank methods on the residual blocks' attention and MLP matrices: lowrank_ta and cart."""

from __future__ import annotations

from mergeflow.merging.context import TensorContext, TensorDirection
from mergeflow.merging.keys import is_cart_matrix, is_matrix
from mergeflow.merging.spectral import low_rank_sum, rank_from_ratio
from mergeflow.merging.vectors import sum_over_tasks


def is_low_rank_target(ctx: TensorContext) -> bool:
    return is_matrix(ctx.shape) and is_cart_matrix(ctx.key)


def lowrank_ta(ctx: TensorContext) -> TensorDirection:
    """θ = θ_0 + λ Σ_t L(τ_t), L = SVD_k with k = rank_from_ratio(rank, shape) on the CART matrices.

    Every other floating-point tensor keeps τ_t whole. At full rank the τ_t themselves are summed (not
    their reconstruction), so rank = 1 is bit-identical to task_arithmetic; rank = 0 leaves the CART
    matrices at θ_0.
    """
    if not is_low_rank_target(ctx):
        return TensorDirection(ctx.pretrained, sum_over_tasks(ctx.task_vectors))
    k = rank_from_ratio(ctx.hparams["rank"], ctx.shape)
    if k == min(ctx.shape):
        return TensorDirection(ctx.pretrained, sum_over_tasks(ctx.task_vectors))
    if k == 0:
        return TensorDirection(ctx.pretrained)
    return TensorDirection(ctx.pretrained, low_rank_sum(ctx.top_triplets(k, centered=False)))


def cart(ctx: TensorContext) -> TensorDirection:
    """θ = θ_avg + λ Σ_t SVD_k(τ̄_t) on the CART matrices, τ̄_t = θ_t − θ_avg, k = rank_from_ratio(rank, shape).

    CART matrices: attn.in_proj_weight, attn.out_proj.weight, mlp.c_fc.weight, mlp.c_proj.weight of every
    residual block. Every other floating-point tensor ends exactly at θ_avg. At k = 0 and at full rank the
    low-rank term is omitted, so both give θ_avg bit for bit: at full rank SVD_k(τ̄_t) = τ̄_t and
    Σ_t τ̄_t = 0 by construction, so adding it would only add round-off.
    """
    if not is_low_rank_target(ctx):
        return TensorDirection(ctx.average)
    k = rank_from_ratio(ctx.hparams["rank"], ctx.shape)
    if k in (0, min(ctx.shape)):
        return TensorDirection(ctx.average)
    return TensorDirection(ctx.average, low_rank_sum(ctx.top_triplets(k, centered=True)))
