"""Methods that rebuild every 2-D tensor from singular vectors: tsv_m, iso_c, iso_cts.

Each treats every 2-D floating-point tensor (attention and MLP weights, positional embedding,
proj); every other floating-point tensor gets the mean of the task vectors.
"""

from __future__ import annotations

import math

import torch

from mergeflow.merging.context import TensorContext, TensorDirection
from mergeflow.merging.keys import is_matrix
from mergeflow.merging.spectral import polar_factor, thin_svd_of, truncated_svd
from mergeflow.merging.vectors import average_over_tasks, sum_over_tasks


def _mean_task_vector(ctx: TensorContext) -> TensorDirection:
    return TensorDirection(ctx.pretrained, average_over_tasks(ctx.task_vectors))


def tsv_m(ctx: TensorContext) -> TensorDirection:
    """θ = θ_0 + λ Δ (Task Singular Vectors, merge).

    2-D tensors: with r = min(m, n) and k = floor(r/T), place each τ_t's top k singular triplets in
    disjoint blocks of U (m × Tk), S, Vᵀ (Tk × n); Δ = polar(U) diag(S) polar(Vᵀ), polar(M) = P Qᵀ
    from M = P Σ Qᵀ (the r − Tk unused slots would hold zeros, so they are left out). When k = 0 the
    tensor stays at θ_0. Other floating-point tensors: Δ = mean_t τ_t.
    """
    if not is_matrix(ctx.shape):
        return _mean_task_vector(ctx)
    rows, cols = ctx.shape
    per_task = min(rows, cols) // ctx.num_tasks
    if per_task == 0:
        return TensorDirection(ctx.pretrained)
    factors = ctx.top_triplets(per_task, centered=False)
    blocks = ctx.num_tasks * per_task
    u = factors.u.transpose(0, 1).reshape(rows, blocks)
    s = factors.s.reshape(blocks)
    vh = factors.vh.reshape(blocks, cols)
    return TensorDirection(ctx.pretrained, polar_factor(u) @ (s[:, None] * polar_factor(vh)))


def iso_c(ctx: TensorContext) -> TensorDirection:
    """θ = θ_0 + λ Δ (isotropic merging in common subspace).

    2-D tensors: Σ_t τ_t = U S Vᵀ, Δ = mean(S)·U Vᵀ (every singular value set to their mean). Other
    floating-point tensors: Δ = mean_t τ_t.
    """
    if not is_matrix(ctx.shape):
        return _mean_task_vector(ctx)
    u, s, vh = thin_svd_of(sum_over_tasks(ctx.task_vectors))
    return TensorDirection(ctx.pretrained, s.mean() * (u @ vh))


def common_dimensions(rank: int, num_tasks: int, common_fraction: float) -> int:
    """c near common_fraction·r such that r − c divides by T (the reference rounds (r − ⌊f·r⌋)/T)."""
    task_total = round((rank - math.floor(common_fraction * rank)) / num_tasks) * num_tasks
    if task_total > rank:
        task_total -= num_tasks
    return rank - task_total


def iso_cts(ctx: TensorContext) -> TensorDirection:
    """θ = θ_0 + λ Δ (isotropic merging in common and task-specific subspaces).

    2-D tensors, r = min(m, n): U_c, S_c, V_cᵀ = top c singular triplets of Σ_t τ_t with
    c = `common_dimensions(r, T, common_fraction)`; each task adds the top (r − c)/T triplets of
    τ_t − U_c U_cᵀ τ_t; with U = [task blocks, U_c] and Vᵀ likewise, Δ = mean(S)·polar(U) polar(Vᵀ)
    (every kept singular value set to their mean). Other floating-point tensors: Δ = mean_t τ_t.
    """
    if not is_matrix(ctx.shape):
        return _mean_task_vector(ctx)
    rows, cols = ctx.shape
    rank = min(rows, cols)
    vectors = ctx.task_vectors
    common = common_dimensions(rank, ctx.num_tasks, ctx.hparams["common_fraction"])
    per_task = (rank - common) // ctx.num_tasks
    u, s, vh = thin_svd_of(sum_over_tasks(vectors))
    u_common, s_common, vh_common = u[:, :common], s[:common], vh[:common]
    # One task's residual at a time: the top directions of τ_t − U_c U_cᵀ τ_t.
    specific = [truncated_svd((vector - u_common @ (u_common.T @ vector))[None], per_task) for vector in vectors]
    u_all = torch.cat([factors.u[0] for factors in specific] + [u_common], dim=1)
    s_all = torch.cat([factors.s[0] for factors in specific] + [s_common])
    vh_all = torch.cat([factors.vh[0] for factors in specific] + [vh_common], dim=0)
    return TensorDirection(ctx.pretrained, s_all.mean() * (polar_factor(u_all) @ polar_factor(vh_all)))
