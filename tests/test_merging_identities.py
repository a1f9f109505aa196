"""The identities of docs/methods.md, and the exactness the pipeline relies on."""

from __future__ import annotations

import pytest
import torch
from random_models import perturbed_models
from torch.testing import assert_close

from mergeflow.merging import merge_direction, merge_state_dicts, resolve_hparams
from mergeflow.merging.context import TensorContext

SHAPES = {
    "conv1.weight": (4, 3, 2, 2),
    "positional_embedding": (5, 8),
    "transformer.resblocks.0.ln_1.weight": (8,),
    "transformer.resblocks.0.attn.in_proj_weight": (24, 8),
    "transformer.resblocks.0.attn.in_proj_bias": (24,),
    "transformer.resblocks.0.attn.out_proj.weight": (8, 8),
    "transformer.resblocks.0.mlp.c_fc.weight": (16, 8),
    "transformer.resblocks.0.mlp.c_proj.weight": (8, 16),
    "proj": (8, 4),
}
CART_MATRICES = {
    "transformer.resblocks.0.attn.in_proj_weight",
    "transformer.resblocks.0.attn.out_proj.weight",
    "transformer.resblocks.0.mlp.c_fc.weight",
    "transformer.resblocks.0.mlp.c_proj.weight",
}
BUFFER = "num_batches_tracked"


def random_models(
    num_tasks: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    pretrained, finetuned = perturbed_models(SHAPES, num_tasks, seed=seed, scale=0.05)
    with_buffer = [{**model, BUFFER: torch.tensor([7])} for model in [pretrained, *finetuned]]
    cast = [
        {key: value.to(dtype) if value.is_floating_point() else value for key, value in model.items()}
        for model in with_buffer
    ]
    return cast[0], cast[1:]


def assert_identical(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].dtype == second[key].dtype, key
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("rank", [0.0, 1.0])
def test_cart_at_rank_zero_and_full_is_weight_averaging_exactly(rank: float) -> None:
    pretrained, finetuned = random_models(3)
    cart = merge_state_dicts("cart", pretrained, finetuned, {"rank": rank, "lam": 1.7})
    average = merge_state_dicts("weight_averaging", pretrained, finetuned, {})
    assert_identical(cart, average)
    assert not torch.equal(cart["proj"], pretrained["proj"])


def test_cart_between_the_ends_differs_from_weight_averaging_only_on_cart_matrices() -> None:
    pretrained, finetuned = random_models(3)
    cart = merge_state_dicts("cart", pretrained, finetuned, {"rank": 0.25})
    average = merge_state_dicts("weight_averaging", pretrained, finetuned, {})
    for key in cart:
        assert torch.equal(cart[key], average[key]) is (key not in CART_MATRICES), key


def test_lowrank_ta_at_full_rank_is_task_arithmetic_exactly() -> None:
    pretrained, finetuned = random_models(3)
    lowrank = merge_state_dicts("lowrank_ta", pretrained, finetuned, {"rank": 1.0, "lam": 0.7})
    arithmetic = merge_state_dicts("task_arithmetic", pretrained, finetuned, {"lam": 0.7})
    assert_identical(lowrank, arithmetic)


def test_task_arithmetic_at_one_over_t_is_weight_averaging() -> None:
    pretrained, finetuned = random_models(4)
    arithmetic = merge_state_dicts("task_arithmetic", pretrained, finetuned, {"lam": 0.25})
    average = merge_state_dicts("weight_averaging", pretrained, finetuned, {})
    for key in average:
        assert_close(arithmetic[key], average[key], rtol=0, atol=1e-6)


def same_sign_models(num_tasks: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Task vectors that agree in sign everywhere and are never zero: TIES has no conflicts to resolve."""
    generator = torch.Generator().manual_seed(5)
    pretrained = {key: torch.randn(shape, generator=generator) for key, shape in SHAPES.items()}
    signs = {key: torch.randint(0, 2, shape, generator=generator) * 2.0 - 1.0 for key, shape in SHAPES.items()}
    finetuned = [
        {
            key: value + signs[key] * (0.1 + torch.rand(value.shape, generator=generator))
            for key, value in pretrained.items()
        }
        for _ in range(num_tasks)
    ]
    return pretrained, finetuned


@pytest.mark.parametrize(("merge", "scale"), [("mean", 1 / 3), ("sum", 1.0)])
def test_ties_keeping_everything_without_conflicts_is_task_arithmetic(merge: str, scale: float) -> None:
    pretrained, finetuned = same_sign_models(3)
    ties = merge_state_dicts("ties", pretrained, finetuned, {"k": 1.0, "lam": 0.6, "merge": merge})
    arithmetic = merge_state_dicts("task_arithmetic", pretrained, finetuned, {"lam": 0.6 * scale})
    for key in ties:
        assert_close(ties[key], arithmetic[key], rtol=0, atol=1e-6)


def test_consensus_with_k_zero_is_task_arithmetic_exactly() -> None:
    pretrained, finetuned = random_models(3)
    consensus = merge_state_dicts("consensus", pretrained, finetuned, {"k": 0, "lam": 0.4})
    assert_identical(consensus, merge_state_dicts("task_arithmetic", pretrained, finetuned, {"lam": 0.4}))


def test_consensus_with_k_zero_and_ties_base_is_ties_exactly() -> None:
    pretrained, finetuned = random_models(3)
    consensus = merge_state_dicts("consensus", pretrained, finetuned, {"k": 0, "lam": 0.4, "base": "ties"})
    ties = merge_state_dicts("ties", pretrained, finetuned, {"k": 0.2, "lam": 0.4, "merge": "mean"})
    assert_identical(consensus, ties)


def test_consensus_with_k_above_t_is_zeroshot() -> None:
    pretrained, finetuned = random_models(3)
    consensus = merge_state_dicts("consensus", pretrained, finetuned, {"k": 4})
    assert_identical(consensus, merge_state_dicts("zeroshot", pretrained, finetuned, {}))


def test_with_one_task_tsv_m_is_task_arithmetic() -> None:
    pretrained, finetuned = random_models(1)
    tsv = merge_state_dicts("tsv_m", pretrained, finetuned, {"lam": 0.8})
    arithmetic = merge_state_dicts("task_arithmetic", pretrained, finetuned, {"lam": 0.8})
    for key in tsv:
        assert_close(tsv[key], arithmetic[key], rtol=0, atol=1e-5)


def test_iso_cts_with_all_common_directions_is_iso_c() -> None:
    pretrained, finetuned = random_models(3)
    iso_cts = merge_state_dicts("iso_cts", pretrained, finetuned, {"common_fraction": 1.0, "lam": 0.5})
    iso_c = merge_state_dicts("iso_c", pretrained, finetuned, {"lam": 0.5})
    for key in iso_c:
        assert_close(iso_cts[key], iso_c[key], rtol=0, atol=1e-5)


def test_dare_dropping_nothing_is_task_arithmetic_exactly() -> None:
    pretrained, finetuned = random_models(3)
    dare = merge_state_dicts("dare", pretrained, finetuned, {"p": 0.0, "lam": 0.3})
    assert_identical(dare, merge_state_dicts("task_arithmetic", pretrained, finetuned, {"lam": 0.3}))


def test_zeroshot_returns_copies_of_the_pretrained_tensors() -> None:
    pretrained, finetuned = random_models(2)
    merged = merge_state_dicts("zeroshot", pretrained, finetuned, {})
    assert_identical(merged, pretrained)
    assert all(merged[key].data_ptr() != pretrained[key].data_ptr() for key in merged)


@pytest.mark.parametrize("name", ["weight_averaging", "task_arithmetic", "ties", "cart", "tsv_m"])
def test_non_float_tensors_are_copied_and_dtypes_kept(name: str) -> None:
    pretrained, finetuned = random_models(2, dtype=torch.float16)
    finetuned[1][BUFFER] = torch.tensor([99])
    merged = merge_state_dicts(name, pretrained, finetuned, {})
    assert torch.equal(merged[BUFFER], torch.tensor([7]))
    assert {key: merged[key].dtype for key in merged} == {key: pretrained[key].dtype for key in pretrained}


@pytest.mark.parametrize(
    ("name", "hparams"),
    [("task_arithmetic", {}), ("ties", {"k": 0.5}), ("cart", {"rank": 0.3}), ("consensus", {"base": "ties"})],
)
def test_direction_at_lam_is_the_merge_at_lam_exactly(name: str, hparams: dict) -> None:
    pretrained, finetuned = random_models(3)
    direction = merge_direction(name, pretrained, finetuned, {**hparams, "lam": 123.0})
    for lam in (0.0, 0.35, 2.0):
        assert_identical(direction.at(lam), merge_state_dicts(name, pretrained, finetuned, {**hparams, "lam": lam}))
    assert direction.at(0.0).keys() == pretrained.keys()


@pytest.mark.parametrize("name", ["weight_averaging", "zeroshot"])
def test_direction_of_methods_without_lam_ignores_lam(name: str) -> None:
    pretrained, finetuned = random_models(3)
    direction = merge_direction(name, pretrained, finetuned, {})
    assert direction.delta == {}
    assert_identical(direction.at(5.0), merge_state_dicts(name, pretrained, finetuned, {}))
    assert_identical(direction.at(5.0), direction.at(-1.0))


def test_touched_tensors_follow_methods_md() -> None:
    pretrained, finetuned = random_models(2)
    floats = {key for key in pretrained if pretrained[key].is_floating_point()}
    assert merge_direction("zeroshot", pretrained, finetuned, {}).touched == frozenset()
    for name in ("weight_averaging", "task_arithmetic", "ties", "dare", "magmax", "tsv_m", "cart"):
        assert merge_direction(name, pretrained, finetuned, {}).touched == floats, name
    cart = merge_direction("cart", pretrained, finetuned, {"rank": 0.3})
    assert set(cart.delta) == CART_MATRICES
    dare = merge_direction("dare", pretrained, finetuned, {"lam": 1.0})
    arithmetic = merge_direction("task_arithmetic", pretrained, finetuned, {})
    for key in floats:
        assert torch.equal(dare.delta[key], arithmetic.delta[key]) is (len(SHAPES[key]) != 2), key


def test_resolved_hparams_pass_through_unchanged() -> None:
    resolved = resolve_hparams("consensus", {"mask_lam": "0.1,0.2"})
    assert resolve_hparams("consensus", resolved) == resolved


def test_a_context_hands_out_one_kind_of_task_vector() -> None:
    finetuned = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    ctx = TensorContext("w", torch.tensor([1.0, 1.0]), finetuned.clone(), {})
    assert torch.equal(ctx.average, torch.tensor([2.0, 4.0]))
    assert torch.equal(ctx.centered_task_vectors, torch.tensor([[-1.0, -2.0], [1.0, 2.0]]))
    with pytest.raises(RuntimeError, match="task_vectors asked for after"):
        _ = ctx.task_vectors
    plain = TensorContext("w", torch.tensor([1.0, 1.0]), finetuned.clone(), {})
    assert torch.equal(plain.task_vectors, torch.tensor([[0.0, 1.0], [2.0, 5.0]]))
    with pytest.raises(RuntimeError, match="average asked for after"):
        _ = plain.average
