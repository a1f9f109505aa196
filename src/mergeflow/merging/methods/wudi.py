"""WUDI merging (arXiv 2503.08099): a data-free merged task vector that each task's own vector pulls into place.

Followed: nathanielyvo/WUDI-Merging @ dc3cd12, `vit/wudi_main.py` L43-75 (`get_redundant_task_vector`,
`decompose_task_vectors`) with `vit/args.py` L140-143 (`--iter`, default 300). For each of the four weight
matrices of every residual block (attention in_proj and out_proj, MLP c_fc and c_proj) the merged vector τ
starts at Σ_t τ_t and takes `iterations` Adam steps (learning rate `lr`, no weight decay) on

    L(τ) = Σ_t ‖(τ − τ_t) τ_tᵀ‖²_F / ‖τ_t‖²_F,

the interference of τ with the inputs each τ_t responds to. The merge is θ_0 + λ τ with λ = 1 (the authors'
`scaling_coef`). Every other tensor stays θ_0, because the authors' merged task vector holds only those four
keys: biases, LayerNorms, embeddings and the projection are not merged at all. We reproduce that; FusionBench's
`WUDIMerging` differs (every 2-D tensor optimised, 400 iterations, the others averaged). One departure: a task
whose τ_t is zero on a matrix leaves that matrix's loss (its term is 0/0 in the authors' code, NaN; it disturbs
no input, so its limit is 0).

Speed: the authors form (τ − τ_t) τ_tᵀ, an m×m product per task, at every step. For a matrix with more rows
than columns (attention in_proj, MLP c_fc: m = 3d or 4d, n = d) we compute the same loss as
Σ_t ⟨(τ − τ_t) G_t, τ − τ_t⟩ / ‖τ_t‖² with G_t = τ_tᵀ τ_t (n×n, formed once), since ‖D τ_tᵀ‖²_F = tr(D G_t Dᵀ):
T·m·n² instead of T·m²·n per step, and with its gradient 2 Σ_t (τ − τ_t) G_t / ‖τ_t‖² written out, one such product
per step instead of autograd's two: 6–8× less time on those matrices. It rounds differently, so those matrices
agree with the authors' order of operations to about 1e-8 after 300 steps rather than bit for bit
(tests/test_merging_wudi.py); the others are computed exactly as theirs.
"""

from __future__ import annotations

import torch

from mergeflow.merging.context import TensorContext, TensorDirection
from mergeflow.merging.keys import is_cart_matrix, is_matrix


def wudi_loss(merged: torch.Tensor, vectors: torch.Tensor, squared_norms: torch.Tensor) -> torch.Tensor:
    """Σ_t ‖(τ − τ_t) τ_tᵀ‖²_F / ‖τ_t‖²_F for τ = `merged` (m, n) and τ_t = `vectors[t]` (T, m, n)."""
    products = torch.matmul(merged.unsqueeze(0) - vectors, vectors.transpose(1, 2))
    return torch.sum(torch.square(products) / squared_norms.view(-1, 1, 1))


def wudi_vector(vectors: torch.Tensor, iterations: int, lr: float) -> torch.Tensor:
    """The merged task vector of one matrix: Adam from Σ_t τ_t on `wudi_loss` (in its Gram form for m > n)."""
    merged = torch.nn.Parameter(torch.sum(vectors, dim=0))
    optimizer = torch.optim.Adam([merged], lr=lr, weight_decay=0)
    squared_norms = torch.square(torch.norm(vectors.reshape(vectors.shape[0], -1), p=2, dim=-1))
    moved = squared_norms > 0
    if not bool(moved.all()):
        vectors, squared_norms = vectors[moved], squared_norms[moved]
    if vectors.shape[0] == 0:
        return merged.detach()
    rows, columns = vectors.shape[1:]
    if rows > columns:
        return _wudi_vector_by_grams(merged, optimizer, vectors, squared_norms, iterations)
    with torch.enable_grad():
        for _ in range(iterations):
            loss = wudi_loss(merged, vectors, squared_norms)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return merged.detach()


@torch.no_grad()
def _wudi_vector_by_grams(
    merged: torch.nn.Parameter,
    optimizer: torch.optim.Adam,
    vectors: torch.Tensor,
    squared_norms: torch.Tensor,
    iterations: int,
) -> torch.Tensor:
    """The Gram form's steps with its gradient written out, 2 Σ_t (τ − τ_t) G_t / ‖τ_t‖² (G_t is symmetric): one
    product per step, where autograd would form a second for the backward pass."""
    grams = torch.matmul(vectors.transpose(1, 2), vectors)
    weights = (2.0 / squared_norms).view(-1, 1, 1)
    for _ in range(iterations):
        merged.grad = torch.sum(torch.matmul(merged.unsqueeze(0) - vectors, grams) * weights, dim=0)
        optimizer.step()
    return merged.detach()


def wudi(ctx: TensorContext) -> TensorDirection:
    """θ = θ_0 + λ τ_WUDI on the residual blocks' attention/MLP matrices; every other tensor θ_0."""
    if not (is_cart_matrix(ctx.key) and is_matrix(ctx.shape)):
        return TensorDirection(ctx.pretrained)
    return TensorDirection(ctx.pretrained, wudi_vector(ctx.task_vectors, ctx.hparams["iterations"], ctx.hparams["lr"]))
