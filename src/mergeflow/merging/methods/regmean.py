"""RegMean (Jin et al., ICLR 2023): each linear layer merged by the least-squares fit to every model's outputs.

Followed: tanganke/fusion_bench @ 54c9e8c9d9621620c720452cd8533332a32d3689, `fusion_bench/method/regmean/regmean.py`
L24-40 (`reduce_non_diagonal_elements`) and L43-120 (`merging_with_regmean_weights`), with
`config/method/regmean/clip_regmean.yaml` L6-14; the same code as the authors' (bloomberg/dataless-model-merging @
92247ae, `src/model_merge/avg_merger.py` L115-195). For a weight W_t (out, in) of task t whose input Gram is G_t
(`mergeflow.statistics.grams`):

    G'_t = α G_t + (1 − α) diag(G_t)          (`reduce_non_diagonal_ratio` α, 0.95 for CLIP)
    W    = [(Σ_t G'_t)⁻¹ Σ_t G'_t W_tᵀ]ᵀ        (torch.inverse, then a product; in the tensors' dtype)

i.e. argmin_W Σ_t ‖X_t Wᵀ − X_t W_tᵀ‖² with the Grams' off-diagonal shrunk. Every tensor without a Gram — biases,
LayerNorms, the embeddings, `proj` — is the simple average of the fine-tuned tensors (FusionBench L116-118). Which
weights have Grams: the four matrices of every residual block (see `mergeflow.statistics.grams`). The rows of the
stacked `attn.in_proj_weight` (q, k, v) share one input and so one Gram; the formula acts row by row, so merging the
(3d, d) matrix at once is merging q, k and v each with that Gram, as FusionBench does with its separate q/k/v_proj.

`proj`: FusionBench merges transformers' CLIPVisionModel, which holds no projection; its classifier uses θ_0's
`visual_projection`, which its fine-tuning never trains (`fusion_bench/method/classification/clip_finetune.py`
L260-269 optimises `vision_model` only), so there every expert's projection is θ_0's and their average is θ_0. Our
experts train `proj`, so it takes the rule FusionBench applies to every tensor of the merged model without a Gram:
the average.

Departures, of round-off only. We apply the closed form to the task vectors τ_t = W_t − W_0 and add W_0 back,
W = W_0 + [(Σ G'_t)⁻¹ Σ G'_t τ_tᵀ]ᵀ, which is the same W exactly in real arithmetic (the formula is affine-equivariant:
(Σ G')⁻¹ (Σ G') W_0ᵀ = W_0ᵀ); in float32 the inverse's error then scales with |τ_t| rather than |W_t| (on the tests'
tiny encoders our float32 result lies about twice closer to a float64 computation than FusionBench's float32 one).
`regmean_matrix` itself is FusionBench's computation bit for bit (tests/test_merging_regmean.py). The average is
accumulated in float64 (`average_over_tasks`, as weight_averaging), FusionBench's `torch.stack(...).mean(0)` in
float32. The method has no λ: the merged tensor is returned whole as the origin.
"""

from __future__ import annotations

import torch

from mergeflow.io import InputError
from mergeflow.merging.context import TensorContext, TensorDirection

REDUCE_NON_DIAGONAL_RATIO = 0.95


def reduce_non_diagonal_elements(gram: torch.Tensor, reduce_non_diagonal_ratio: float) -> torch.Tensor:
    """α G + (1 − α) diag(G), as FusionBench forms it: G ⊙ (diag(1 − α) + α), the mask built in G's dtype."""
    size = gram.shape[0]
    diagonal = torch.diag(torch.ones(size, dtype=gram.dtype, device=gram.device) - reduce_non_diagonal_ratio)
    return gram * (diagonal + torch.full_like(diagonal, reduce_non_diagonal_ratio))


def check_ratio(reduce_non_diagonal_ratio: float) -> None:
    if not 0.0 <= reduce_non_diagonal_ratio <= 1.0:
        raise InputError(f"reduce_non_diagonal_ratio: {reduce_non_diagonal_ratio}; expected a value in [0, 1]")


def regmean_matrix(weights: torch.Tensor, grams: torch.Tensor, reduce_non_diagonal_ratio: float) -> torch.Tensor:
    """[(Σ_t G'_t)⁻¹ Σ_t G'_t W_tᵀ]ᵀ for `weights` (T, out, in) and `grams` (T, in, in): (out, in).

    FusionBench's `merging_with_regmean_weights` (L65-114) for one weight, in the same order of operations.
    """
    check_ratio(reduce_non_diagonal_ratio)
    if weights.dim() != 3 or grams.dim() != 3:
        raise InputError(f"RegMean: weights {tuple(weights.shape)} and Grams {tuple(grams.shape)}; expected 3-D stacks")
    tasks, _, inputs = weights.shape
    if tuple(grams.shape) != (tasks, inputs, inputs):
        raise InputError(
            f"RegMean: Grams of shape {tuple(grams.shape)} for weights of shape {tuple(weights.shape)}; "
            f"expected ({tasks}, {inputs}, {inputs})"
        )
    # Lists, not stacks: a matmul's rounding can depend on where its operand starts in memory.
    reduced = [reduce_non_diagonal_elements(gram, reduce_non_diagonal_ratio) for gram in grams]
    products = [torch.matmul(gram, weight.transpose(0, 1)) for gram, weight in zip(reduced, weights)]
    merged = torch.matmul(torch.inverse(_sum_in_order(reduced)), _sum_in_order(products))
    return merged.transpose(0, 1).contiguous()


def _sum_in_order(tensors: list[torch.Tensor]) -> torch.Tensor:
    """t_0 + t_1 + … added left to right (Python's `sum`, which FusionBench uses, gives the same values)."""
    total = tensors[0].clone()
    for tensor in tensors[1:]:
        total += tensor
    return total


def regmean_tensor(
    pretrained: torch.Tensor, task_vectors: torch.Tensor, grams: torch.Tensor, reduce_non_diagonal_ratio: float
) -> torch.Tensor:
    """The RegMean merge of one weight from W_0 and τ_t = W_t − W_0: W_0 + regmean_matrix(τ, G, α)."""
    return pretrained + regmean_matrix(task_vectors, grams, reduce_non_diagonal_ratio)


def regmean(ctx: TensorContext) -> TensorDirection:
    """θ = the RegMean fit on every weight with Grams (`ctx.task_statistics`, (T, in, in)); θ_avg elsewhere. No λ."""
    grams = getattr(ctx, "task_statistics", None)
    ratio = float(ctx.hparams["reduce_non_diagonal_ratio"])
    check_ratio(ratio)
    if grams is None:
        return TensorDirection(ctx.average)
    if len(ctx.shape) != 2:
        raise InputError(f"{ctx.key}: Grams given for a tensor of shape {tuple(ctx.shape)}; expected a matrix")
    return TensorDirection(regmean_tensor(ctx.pretrained, ctx.task_vectors, grams, ratio))
