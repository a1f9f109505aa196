"""Fisher merging: the merge against a transcription of FusionBench's, its identities, and the Fisher estimator
against a closed form on a linear "encoder" and on a tiny open_clip ViT."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from open_clip.transformer import QuickGELU, VisionTransformer
from random_models import perturbed_models

from mergeflow.merging.context import Placement, TensorContext
from mergeflow.merging.methods.fisher import (
    fisher,
    fisher_norms,
    fisher_statistics,
    fisher_weighted_average,
    task_fisher_norms,
)
from mergeflow.merging.sources import InMemorySource
from mergeflow.merging.task_statistics import InMemoryStatistics
from mergeflow.statistics.fisher import diagonal_fisher

SHAPES = {
    "conv1.weight": (4, 3, 2, 2),
    "transformer.resblocks.0.attn.in_proj_weight": (12, 4),
    "transformer.resblocks.0.ln_1.weight": (4,),
    "proj": (4, 3),
}
CPU32 = Placement(torch.device("cpu"), torch.float32)


# --- FusionBench, transcribed ---------------------------------------------------------------------------------------


def fusion_bench_merge(param_dict, fisher_list, coefficients, normalize, minimal):
    """tanganke/fusion_bench @ 54c9e8c, fusion_bench/method/fisher_merging/fisher_merging.py L68-189
    (`get_models_fisher_norm`, `merging_with_fisher_weights`), transcribed line by line."""
    merged_params = {}
    if normalize:
        models_fisher_norm_dict = {}
        for param_name, _ in param_dict.items():
            models_fisher = torch.stack([weights[param_name] for weights in fisher_list], dim=0)
            dims = [dim_idx for dim_idx in range(1, models_fisher.dim())]
            models_fisher_norm_dict[param_name] = torch.linalg.vector_norm(models_fisher, dim=dims)
        models_fisher_norm = torch.stack(list(models_fisher_norm_dict.values()), dim=1)
        models_fisher_norm = torch.norm(models_fisher_norm, dim=1)
    for param_name, param_value_list in param_dict.items():
        param_values = torch.stack(param_value_list, dim=0)
        fisher_weights = torch.stack([weights[param_name] for weights in fisher_list], dim=0) + minimal
        scaling = coefficients.reshape(-1, *[1 for _ in range(param_values.dim() - 1)]).to(param_values.device)
        if normalize:
            _models_fisher_norm = 1.0 / (models_fisher_norm + minimal)
            normalized = _models_fisher_norm / _models_fisher_norm.sum()
            normalized = normalized.reshape(-1, *[1 for _ in range(param_values.dim() - 1)])
            scaling = scaling * normalized
        numerator = (scaling * fisher_weights * param_values).sum(dim=0)
        denominator = (scaling * fisher_weights).sum(dim=0)
        merged_params[param_name] = numerator / denominator
    return merged_params


def random_fishers(num_tasks: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Non-negative, spread over orders of magnitude (as real Fishers are), one dict per task."""
    generator = torch.Generator().manual_seed(seed)
    return [
        {key: torch.randn(shape, generator=generator).pow(2) * 10.0 ** (2 * task - 3) for key, shape in SHAPES.items()}
        for task in range(num_tasks)
    ]


def context(key, pretrained, finetuned, fishers, hparams, statistics=None) -> TensorContext:
    ctx = TensorContext(
        key=key,
        pretrained=pretrained[key].clone(),
        finetuned=torch.stack([model[key] for model in finetuned]),
        hparams=hparams,
        statistics=statistics,
    )
    ctx.task_statistics = None if fishers is None else torch.stack([f[key] for f in fishers])
    return ctx


# --- the merge ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("scaling", [None, [0.2, 0.5, 0.3]])
def test_weighted_average_equals_fusion_bench_bit_for_bit(normalize: bool, scaling: list[float] | None) -> None:
    _, finetuned = perturbed_models(SHAPES, 3, seed=3)
    fishers = random_fishers(3, seed=4)
    coefficients = torch.ones(3) / 3 if scaling is None else torch.Tensor(scaling)
    param_dict = {key: [model[key] for model in finetuned] for key in SHAPES}
    expected = fusion_bench_merge(param_dict, fishers, coefficients, normalize, 1e-6)
    norms = fisher_norms(torch.stack([f[key] for f in fishers]) for key in SHAPES) if normalize else None
    for key in SHAPES:
        weights = torch.stack(param_dict[key])
        ours = fisher_weighted_average(weights, torch.stack([f[key] for f in fishers]), scaling, 1e-6, norms)
        assert torch.equal(ours, expected[key]), key


@pytest.mark.parametrize("normalize", [True, False])
def test_rule_matches_fusion_bench_through_the_contexts(normalize: bool) -> None:
    pretrained, finetuned = perturbed_models(SHAPES, 3, seed=5)
    fishers = random_fishers(3, seed=6)
    expected = fusion_bench_merge(
        {key: [model[key] for model in finetuned] for key in SHAPES}, fishers, torch.ones(3) / 3, normalize, 1e-6
    )
    source = InMemorySource(pretrained, finetuned)
    hparams = {"normalize_fisher_weight": normalize, "minimal_fisher_weight": 1e-6}
    norms = fisher_statistics(source, hparams, CPU32, False, InMemoryStatistics(fishers))
    assert (norms is not None) == normalize
    for key in SHAPES:
        direction = fisher(context(key, pretrained, finetuned, fishers, hparams, norms))
        assert direction.delta is None
        # θ_0 + average(τ_t) is FusionBench's average(θ_t) up to rounding.
        torch.testing.assert_close(direction.origin, expected[key], rtol=0, atol=1e-6)


def test_norms_are_fusion_bench_norms_over_the_keys_with_a_fisher() -> None:
    pretrained, finetuned = perturbed_models(SHAPES | {"extra": (5,)}, 2, seed=7)
    fishers = random_fishers(2, seed=8)
    by_hand = torch.tensor(
        [math.sqrt(sum(float(f[key].double().pow(2).sum()) for key in SHAPES)) for f in fishers], dtype=torch.float64
    )
    norms = task_fisher_norms(InMemorySource(pretrained, finetuned), InMemoryStatistics(fishers), CPU32)
    torch.testing.assert_close(norms.double(), by_hand, rtol=1e-6, atol=0)


def test_identities() -> None:
    pretrained, finetuned = perturbed_models(SHAPES, 4, seed=9)
    key = "transformer.resblocks.0.attn.in_proj_weight"
    average = torch.stack([model[key] for model in finetuned]).mean(dim=0)
    same = [{k: torch.full(shape, 0.37) for k, shape in SHAPES.items()} for _ in range(4)]
    zero = [{k: torch.zeros(shape) for k, shape in SHAPES.items()} for _ in range(4)]
    for fishers in (same, zero):
        for normalize in (False, True):
            hparams = {"normalize_fisher_weight": normalize, "minimal_fisher_weight": 1e-6}
            norms = fisher_statistics(
                InMemorySource(pretrained, finetuned), hparams, CPU32, False, InMemoryStatistics(fishers)
            )
            merged = fisher(context(key, pretrained, finetuned, fishers, hparams, norms)).origin
            torch.testing.assert_close(merged, average, rtol=0, atol=1e-6)
    # One task: that expert, whatever its Fisher.
    one = random_fishers(1, seed=10)
    hparams = {"normalize_fisher_weight": True, "minimal_fisher_weight": 1e-6}
    norms = fisher_statistics(InMemorySource(pretrained, finetuned[:1]), hparams, CPU32, False, InMemoryStatistics(one))
    for name in SHAPES:
        merged = fisher(context(name, pretrained, finetuned[:1], one, hparams, norms)).origin
        torch.testing.assert_close(merged, finetuned[0][name], rtol=0, atol=1e-6)
        weights = finetuned[0][name].unsqueeze(0)
        torch.testing.assert_close(
            fisher_weighted_average(weights, one[0][name].unsqueeze(0), None, 1e-6), weights[0], rtol=1e-6, atol=0
        )


def test_large_fisher_wins_and_scaling_and_minimal_weight_act() -> None:
    weights = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    fishers = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    # (1·1 + 3·3) / 4 = 2.5; zero Fisher → ε equal weights → 2.
    torch.testing.assert_close(fisher_weighted_average(weights, fishers, None, 1e-6), torch.tensor([2.5, 2.0]))
    # c = (3, 1): (3·1 + 1·3·3) / (3 + 3) = 2 and (3ε·1 + ε·3)/(4ε) = 1.5.
    torch.testing.assert_close(fisher_weighted_average(weights, fishers, [3.0, 1.0], 1e-6), torch.tensor([2.0, 1.5]))
    # ε = 1: (2·1 + 4·3)/6 and (1 + 3)/2.
    torch.testing.assert_close(fisher_weighted_average(weights, fishers, None, 1.0), torch.tensor([14 / 6, 2.0]))
    with pytest.raises(ValueError):
        fisher_weighted_average(weights, fishers, [1.0], 1e-6)


def test_keys_without_fisher_keep_theta_0_and_normalising_needs_the_norms() -> None:
    pretrained, finetuned = perturbed_models(SHAPES, 2, seed=11)
    ctx = context("proj", pretrained, finetuned, None, {"normalize_fisher_weight": True, "minimal_fisher_weight": 1e-6})
    assert fisher(ctx).origin is ctx.pretrained
    ctx = context("proj", pretrained, finetuned, random_fishers(2, 12), {"normalize_fisher_weight": True})
    with pytest.raises(RuntimeError, match="normalize_fisher_weight"):
        fisher(ctx)


# --- the estimator --------------------------------------------------------------------------------------------------


def closed_form_fisher(weight, bias, head, scale, batches, num_examples):
    """FusionBench's estimator for features f = W x + b, by hand in float64.

    L = Σ_i Σ_c sqrt(p_ic) log p_ic (p detached): ∂L/∂z_ic = sqrt(p_ic) − p_ic Σ_c' sqrt(p_ic'); z = s·H e with
    e = f/‖f‖, so ∂L/∂f_i = (I − e eᵀ)/‖f‖ · s Hᵀ ∂L/∂z_i; ∂L/∂W = Σ_i ∂L/∂f_i x_iᵀ, ∂L/∂b = Σ_i ∂L/∂f_i.
    Each batch's gradient is squared, the squares summed and divided by the images used.
    """
    fisher_w, fisher_b, used = np.zeros_like(weight), np.zeros_like(bias), 0
    for x in batches:
        if used >= num_examples:
            break
        grad_w, grad_b = np.zeros_like(weight), np.zeros_like(bias)
        for xi in x:
            f = weight @ xi + bias
            norm = np.linalg.norm(f)
            e = f / norm
            z = scale * head @ e
            p = np.exp(z - z.max())
            p /= p.sum()
            dz = np.sqrt(p) - p * np.sqrt(p).sum()
            df = (np.eye(len(f)) - np.outer(e, e)) / norm @ (scale * head.T @ dz)
            grad_w += np.outer(df, xi)
            grad_b += df
        fisher_w += grad_w**2
        fisher_b += grad_b**2
        used += len(x)
    return fisher_w / used, fisher_b / used


def test_estimator_is_the_closed_form_on_a_linear_encoder() -> None:
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(6, 4).double()
    with torch.no_grad():
        linear.weight.copy_(torch.randn(4, 6, generator=generator, dtype=torch.float64))
        linear.bias.copy_(torch.randn(4, generator=generator, dtype=torch.float64))
    head = torch.nn.functional.normalize(torch.randn(5, 4, generator=generator, dtype=torch.float64), dim=-1)
    logit_scale = torch.tensor(math.log(10.0), dtype=torch.float64)
    batches = [torch.randn(3, 6, generator=generator, dtype=torch.float64) for _ in range(3)]
    # 5 examples asked for: the check comes before each batch, so two whole batches (6 images) are used.
    ours = diagonal_fisher(linear, head, logit_scale, batches, num_fisher_examples=5)
    weight, bias = closed_form_fisher(
        linear.weight.detach().numpy(), linear.bias.detach().numpy(), head.numpy(), 10.0,
        [b.numpy() for b in batches], 5,
    )  # fmt: skip
    assert set(ours) == {"weight", "bias"} and all(v.dtype == torch.float32 for v in ours.values())
    np.testing.assert_allclose(ours["weight"].numpy(), weight, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(ours["bias"].numpy(), bias, rtol=1e-5, atol=1e-12)
    # The square of a batch's summed gradient, not a sum of per-example squares: one image per batch differs.
    per_example = diagonal_fisher(linear, head, logit_scale, [x[i : i + 1] for x in batches[:2] for i in range(3)], 6)
    assert not torch.allclose(per_example["weight"], ours["weight"], rtol=1e-3)
    # The module is left as it was.
    assert linear.weight.grad is None and linear.weight.requires_grad and linear.training


def fusion_bench_fisher(model, head, logit_scale_exp, batches, num_fisher_examples):
    """tanganke/fusion_bench @ 54c9e8c, clip_fisher_merging.py L91-103 and L136-187 with fisher_merging.py L60-64,
    transcribed (open_clip's visual projects its own features, so `module(images)` stands for the projection of
    `module(images)[1]`)."""
    param_names_to_merge = list(model.state_dict().keys())
    num_computed_examples = 0
    batches_fisher_weights_list = []
    for images in batches:
        if num_computed_examples >= num_fisher_examples:
            break
        image_embeds = model(images)
        image_embeds = image_embeds / image_embeds.norm(p=2, dim=-1, keepdim=True)
        logits = (torch.matmul(head, image_embeds.t()) * logit_scale_exp).t()
        labels_probabilities = torch.softmax(logits, dim=-1).detach()
        labels_log_probabilities = torch.log_softmax(logits, dim=-1)
        labels_expectations = torch.sqrt(labels_probabilities) * labels_log_probabilities
        sum_labels_expectations = labels_expectations.sum(dim=-1).sum(dim=0)
        model.zero_grad()
        sum_labels_expectations.backward()
        batch_fisher_weights = {
            name: value.grad.detach() ** 2
            for name, value in model.state_dict(keep_vars=True).items()
            if name in param_names_to_merge
        }
        batches_fisher_weights_list.append(batch_fisher_weights)
        num_computed_examples += images.size(0)
    fisher_weights = {}
    for batch_fisher_weights in batches_fisher_weights_list:
        for key in batch_fisher_weights:
            if key not in fisher_weights:
                fisher_weights[key] = batch_fisher_weights[key]
            else:
                fisher_weights[key] += batch_fisher_weights[key]
    for key in fisher_weights:
        fisher_weights[key] /= num_computed_examples
    return fisher_weights


def test_estimator_on_a_tiny_open_clip_vit() -> None:
    torch.manual_seed(0)
    visual = VisionTransformer(
        image_size=32, patch_size=8, width=32, layers=2, heads=4, mlp_ratio=4.0, output_dim=16, act_layer=QuickGELU
    ).eval()
    generator = torch.Generator().manual_seed(1)
    head = torch.nn.functional.normalize(torch.randn(5, 16, generator=generator), dim=-1)
    logit_scale = torch.tensor(math.log(100.0))
    batches = [torch.randn(4, 3, 32, 32, generator=generator) for _ in range(2)]
    with torch.inference_mode():
        frozen = [b.clone() for b in batches]  # inference tensors, as an evaluation loader yields them
    fisher_values = diagonal_fisher(visual, head, logit_scale, frozen)
    state = visual.state_dict()
    assert list(fisher_values) == list(state)
    for key, value in fisher_values.items():
        assert value.shape == state[key].shape and value.dtype == torch.float32, key
        assert bool(torch.isfinite(value).all()) and bool((value >= 0).all()), key
    assert all(float(value.sum()) > 0 for value in fisher_values.values())
    # FusionBench's loop (backward through the module itself), 3 batches with 6 examples asked for: the same bits.
    batches.append(torch.randn(4, 3, 32, 32, generator=generator))
    expected = fusion_bench_fisher(copy.deepcopy(visual), head, logit_scale.exp(), batches, 6)
    ours = diagonal_fisher(visual, head, logit_scale, batches, num_fisher_examples=6)
    assert list(ours) == list(expected)
    for key in ours:
        assert torch.equal(ours[key], expected[key]), key
    assert not any(parameter.requires_grad is False for parameter in visual.parameters())
