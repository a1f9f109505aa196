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
    """The merged task vector of one matrix: Adam from Σ_t τ_t on `wudi_loss`, in the authors' order of operations."""
    merged = torch.nn.Parameter(torch.sum(vectors, dim=0))
    optimizer = torch.optim.Adam([merged], lr=lr, weight_decay=0)
    squared_norms = torch.square(torch.norm(vectors.reshape(vectors.shape[0], -1), p=2, dim=-1))
    moved = squared_norms > 0
    if not bool(moved.all()):
        vectors, squared_norms = vectors[moved], squared_norms[moved]
    if vectors.shape[0] == 0:
        return merged.detach()
    with torch.enable_grad():
        for _ in range(iterations):
            loss = wudi_loss(merged, vectors, squared_norms)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return merged.detach()


def wudi(ctx: TensorContext) -> TensorDirection:
    """θ = θ_0 + λ τ_WUDI on the residual blocks' attention/MLP matrices; every other tensor θ_0."""
    if not (is_cart_matrix(ctx.key) and is_matrix(ctx.shape)):
        return TensorDirection(ctx.pretrained)
    return TensorDirection(ctx.pretrained, wudi_vector(ctx.task_vectors, ctx.hparams["iterations"], ctx.hparams["lr"]))
