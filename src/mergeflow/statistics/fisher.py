"""The diagonal Fisher of a fine-tuned CLIP image encoder on its task's training images, as FusionBench estimates it.

Followed: tanganke/fusion_bench @ 54c9e8c9d9621620c720452cd8533332a32d3689,
`fusion_bench/method/fisher_merging/clip_fisher_merging.py` L76-103 (`compute_logits`) and L105-187
(`get_fisher_weights`), with `fisher_merging.py` L47-65 (`get_param_squared_gradients`) and
`config/method/fisher_merging/clip_fisher_merging.yaml` L9-12 (`num_fisher_examples: 256`, batch size 32).

For each batch B of training images (their labels are never read):

    logits  = exp(logit_scale) · head · normalise(visual(x))ᵀ, transposed       (the frozen zero-shot head)
    L_B     = Σ_{i∈B} Σ_c sqrt(p_ic) · log_softmax(logits)_ic,  p = softmax(logits) detached
    F_B     = (∇_θ L_B)²                                                           (one backward per batch)

and F = Σ_B F_B / n with n the number of images the batches held. Batches are taken in the order given until n
reaches `num_fisher_examples` (checked before each batch, so a last partial count takes a whole batch); FusionBench's
DataLoader has no `shuffle`, so it reads the first images of the train split.

This is FusionBench's estimator, not the paper's: it squares the gradient of the batch-summed, sqrt(p)-weighted log
likelihood, so cross-example and cross-class products enter F. Matena & Raffel (mmatena/model_merging @ 46802f9,
`model_merging/fisher.py` L10-50) sum, per example, p_c (∇ log p_c)² over classes. We reproduce FusionBench.

Mapping onto open_clip: FusionBench's merged model is transformers' CLIPVisionModel, whose pooled output goes
through θ_0's `visual_projection` (frozen, outside the merged model: `fusion_bench/mixins/clip_classification.py`
L190-192). An open_clip visual holds its projection `proj`, so `proj` is part of the forward pass here and gets a
Fisher like every other parameter. Every state-dict key gets a Fisher (FusionBench's `exclude_param_names_regex`
is [] for CLIP); a key that is not a parameter, or a parameter the output does not depend on, gets zeros (FusionBench
would fail on either). The model runs in eval mode (transformers' `from_pretrained` leaves it so), in its own dtype;
the result is float32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

NUM_FISHER_EXAMPLES = 256


def clip_logits(features: Tensor, head: Tensor, logit_scale: Tensor) -> Tensor:
    """FusionBench's `compute_logits` (L91-103) after the projection: (head · normalise(features)ᵀ · exp(scale))ᵀ."""
    image_embeds = features / features.norm(p=2, dim=-1, keepdim=True)
    logits_per_text = torch.matmul(head, image_embeds.t()) * logit_scale.exp()
    return logits_per_text.t()


def fisher_objective(logits: Tensor) -> Tensor:
    """Σ_i Σ_c sqrt(p_ic) log p_ic with p detached: the scalar whose squared gradient is a batch's Fisher (L151-158)."""
    labels_probabilities = torch.softmax(logits, dim=-1).detach()
    labels_log_probabilities = torch.log_softmax(logits, dim=-1)
    labels_expectations = torch.sqrt(labels_probabilities) * labels_log_probabilities
    return labels_expectations.sum(dim=-1).sum(dim=0)


def diagonal_fisher(
    visual: torch.nn.Module,
    head: Tensor,
    logit_scale: Tensor,
    batches: Iterable[Tensor],
    num_fisher_examples: int = NUM_FISHER_EXAMPLES,
) -> dict[str, Tensor]:
    """Diagonal Fisher of `visual` for the task of `head` ([C, D] normalised class embeddings; `logit_scale` the
    log scale, as in a head file): float32 CPU tensors keyed and shaped as `visual.state_dict()`.

    `batches` are normalised NCHW images on the visual's device (FusionBench: batches of 32). The module's
    parameters, gradients and `requires_grad` flags are left untouched.
    """
    if num_fisher_examples < 1:
        raise ValueError(f"num_fisher_examples: {num_fisher_examples}; expected at least 1")
    names = [name for name, _ in visual.named_parameters()]
    leaves = {name: parameter.detach().requires_grad_(True) for name, parameter in visual.named_parameters()}
    sums: dict[str, Tensor] = {}
    computed = 0
    was_training = visual.training
    visual.eval()
    try:
        with torch.enable_grad():
            for images in batches:
                if computed >= num_fisher_examples:
                    break
                if images.is_inference():
                    images = images.clone()
                features = torch.func.functional_call(visual, leaves, (images,))
                logits = clip_logits(features, head.to(features.device), logit_scale.to(features.device))
                grads = torch.autograd.grad(fisher_objective(logits), [leaves[n] for n in names], allow_unused=True)
                for name, grad in zip(names, grads, strict=True):
                    if grad is None:
                        continue
                    squared = grad.detach().float() ** 2
                    sums[name] = squared if name not in sums else sums[name].add_(squared)
                computed += images.shape[0]
    finally:
        visual.train(was_training)
    if computed == 0:
        raise ValueError("no training images to estimate the Fisher from")
    fisher: dict[str, Tensor] = {}
    for key, value in visual.state_dict().items():
        if key in sums:
            fisher[key] = (sums[key] / computed).cpu()
        else:
            fisher[key] = torch.zeros(value.shape, dtype=torch.float32)
    return fisher
