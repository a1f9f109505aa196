"""Test-time adaptive merging (adamerging, adamerging_cart, adarank) on a tiny open_clip ViT, on the CPU."""

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mergeflow import merging
from mergeflow.adaptive import (
    AdaMergingCartSettings,
    AdaMergingSettings,
    AdaRankSettings,
    UnlabeledTask,
    adapt,
    learned_movement,
    load_learned_merge,
    merge_from_learned,
    save_learned_merge,
)
from mergeflow.adaptive.masking import straight_through_mask
from mergeflow.adaptive.terms import LowRankTerm
from mergeflow.io import InputError, save_state_dict
from mergeflow.merging.spectral import MatrixFactors
from mergeflow.models.clip import build_clip, tiny_clip_spec

ARCH = {
    "image_size": 16, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "embed_dim": 16,
    "context_length": 12, "text_width": 32, "text_layers": 1, "text_heads": 2,
}  # fmt: skip
NUM_TASKS = 3
IMAGES_PER_TASK = 16
# A low logit scale keeps the random heads' predictions uncertain, so the entropy has room to fall.
LOGIT_SCALE = torch.tensor(float(np.log(4.0)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    spec = tiny_clip_spec("toy", ARCH)
    visual = build_clip(spec).visual
    pretrained = {key: value.detach().clone() for key, value in visual.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    finetuned = [
        {key: value + 0.05 * torch.randn(value.shape, generator=generator) for key, value in pretrained.items()}
        for _ in range(NUM_TASKS)
    ]
    rng = np.random.default_rng(0)
    data = [
        (
            rng.integers(0, 256, size=(IMAGES_PER_TASK, 16, 16, 3), dtype=np.uint8),
            F.normalize(torch.randn(4, ARCH["embed_dim"], generator=generator), dim=-1),
        )
        for _ in range(NUM_TASKS)
    ]
    tasks = [UnlabeledTask(f"task{t}", images, head, LOGIT_SCALE) for t, (images, head) in enumerate(data)]
    return visual, spec, pretrained, finetuned, tasks


def run(setup, settings):
    visual, spec, pretrained, finetuned, tasks = setup
    return adapt(visual, spec, pretrained, finetuned, tasks, settings, progress=False)


def assert_bitwise_equal(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key


# Few steps with a large rate, so that movement and clamping show within a fast test.
FAST = {"steps": 12, "lr": 0.05, "batch_size": 8}
TRAINED = {
    "adamerging": AdaMergingSettings(granularity="layer", **FAST),
    "adamerging_cart": AdaMergingCartSettings(rank=0.25, lam=1.5, **FAST),
    "adarank": AdaRankSettings(base="cart", initial_rank=0.25, prior=2.0, **FAST),
}


@pytest.mark.parametrize("granularity", ["task", "layer"])
def test_adamerging_starts_at_task_arithmetic_bit_for_bit(setup, granularity: str) -> None:
    _, _, pretrained, finetuned, _ = setup
    result = run(setup, AdaMergingSettings(granularity=granularity, steps=0))
    expected = merging.merge_state_dicts("task_arithmetic", pretrained, finetuned, {"lam": 0.3})
    assert_bitwise_equal(result.merged_state_dict(), expected)
    columns = 1 if granularity == "task" else len(pretrained)
    assert torch.equal(result.learned.coefficients, torch.full((NUM_TASKS, columns), 0.3))


def test_adamerging_cart_starts_at_cart_bit_for_bit(setup) -> None:
    _, _, pretrained, finetuned, _ = setup
    result = run(setup, AdaMergingCartSettings(rank=0.25, lam=1.5, steps=0))
    expected = merging.merge_state_dicts("cart", pretrained, finetuned, {"rank": 0.25, "lam": 1.5})
    assert_bitwise_equal(result.merged_state_dict(), expected)
    assert set(result.learned.columns) == {key for key in pretrained if merging.is_cart_matrix(key)}


@pytest.mark.parametrize("rank", [0.0, 0.25, 1.0])
@pytest.mark.parametrize(("base", "static", "prior"), [("cart", "cart", 2.0), ("task_arithmetic", "lowrank_ta", 0.3)])
def test_adarank_starts_at_its_static_merge_bit_for_bit(setup, base: str, static: str, prior: float, rank: float):
    _, _, pretrained, finetuned, _ = setup
    result = run(setup, AdaRankSettings(base=base, initial_rank=rank, prior=prior, steps=0))
    expected = merging.merge_state_dicts(static, pretrained, finetuned, {"rank": rank, "lam": prior})
    assert_bitwise_equal(result.merged_state_dict(), expected)
    for key, kept in result.learned.kept_ranks().items():
        assert kept == [merging.rank_from_ratio(rank, tuple(pretrained[key].shape))] * NUM_TASKS


@pytest.mark.parametrize("method", sorted(TRAINED))
def test_entropy_falls_and_coefficients_move(setup, method: str) -> None:
    # Every task's whole image set as its batch: each step sees the same images, so the curve is not noise.
    result = run(setup, dataclasses.replace(TRAINED[method], batch_size=IMAGES_PER_TASK))
    assert result.task_entropy.shape == (FAST["steps"], NUM_TASKS)
    assert result.entropy[-3:].mean() < 0.95 * result.entropy[0]
    initial = run(setup, dataclasses.replace(TRAINED[method], steps=0)).learned.coefficients
    assert not torch.equal(result.learned.coefficients, initial)


def test_adamerging_coefficients_stay_clamped_to_the_unit_interval(setup) -> None:
    coefficients = run(setup, TRAINED["adamerging"]).learned.coefficients
    assert coefficients.min() >= 0.0 and coefficients.max() <= 1.0
    # The rate is large enough that the projection is active, not merely unneeded.
    assert bool((coefficients == 0.0).any() or (coefficients == 1.0).any())


@pytest.mark.parametrize("method", sorted(TRAINED))
def test_movement_measures_how_far_adaptation_went_from_its_start(setup, method: str, tmp_path: Path) -> None:
    still = run(setup, dataclasses.replace(TRAINED[method], steps=0)).movement()
    assert (still.max_coefficient_change, still.flipped_components) == (0.0, 0)
    result = run(setup, TRAINED[method])
    moved = result.movement()
    initial = run(setup, dataclasses.replace(TRAINED[method], steps=0)).learned
    assert moved.max_coefficient_change == float((result.learned.coefficients - initial.coefficients).abs().max())
    assert moved.max_coefficient_change > 0.0
    flipped = sum(int((mask != initial.masks[key]).sum()) for key, mask in result.learned.masks.items())
    assert moved.flipped_components == flipped
    assert (flipped > 0) == (method == "adarank")
    assert moved.masked_components == (0 if method != "adarank" else NUM_TASKS * 32 * len(result.learned.masks))
    save_learned_merge(tmp_path / "learned.safetensors", result.learned, moved.as_json())
    assert learned_movement(tmp_path / "learned.safetensors") == moved.as_json()
    save_learned_merge(tmp_path / "bare.safetensors", result.learned)
    with pytest.raises(InputError, match="bare.safetensors: no 'movement' metadata"):
        learned_movement(tmp_path / "bare.safetensors")


def test_adarank_masks_are_boolean_and_move_from_the_initial_rank(setup) -> None:
    result = run(setup, TRAINED["adarank"])
    kept = result.learned.kept_ranks()
    assert any(count != 8 for counts in kept.values() for count in counts)  # 8 = 25% of rank 32 at the start
    assert all(mask.dtype == torch.bool and mask.shape == (NUM_TASKS, 32) for mask in result.learned.masks.values())


@pytest.mark.parametrize("method", sorted(TRAINED))
def test_same_seed_same_coefficients_other_seed_different(setup, method: str) -> None:
    settings = TRAINED[method]
    first, again = run(setup, settings), run(setup, settings)
    other = run(setup, dataclasses.replace(settings, seed=1))
    assert torch.equal(first.learned.coefficients, again.learned.coefficients)
    assert np.array_equal(first.task_entropy, again.task_entropy)
    assert not torch.equal(first.learned.coefficients, other.learned.coefficients)


@pytest.mark.parametrize("method", sorted(TRAINED))
@pytest.mark.parametrize("tasks_per_pass", [1, 2])
def test_task_groups_accumulate_the_same_gradient(setup, method: str, tasks_per_pass: int) -> None:
    """Groups of 1 and 2 of the 3 tasks (one uneven) follow the one-pass run up to float rounding."""
    settings = dataclasses.replace(TRAINED[method], steps=4)
    whole = run(setup, settings)
    grouped = run(setup, dataclasses.replace(settings, tasks_per_pass=tasks_per_pass))
    assert np.allclose(grouped.task_entropy, whole.task_entropy, rtol=1e-5, atol=1e-6)
    assert torch.allclose(grouped.learned.coefficients, whole.learned.coefficients, rtol=1e-4, atol=1e-6)
    assert not torch.equal(
        grouped.learned.coefficients, run(setup, dataclasses.replace(settings, steps=0)).learned.coefficients
    )
    for key, mask in whole.learned.masks.items():
        assert torch.equal(grouped.learned.masks[key], mask), key


def test_labels_are_never_an_input(setup) -> None:
    """adapt has no labels parameter and UnlabeledTask no labels field: labelled splits are passed as their
    images only, so two corrupted label arrays beside the same images give the same coefficients."""
    visual, spec, pretrained, finetuned, tasks = setup
    assert not any("label" in name for name in inspect.signature(adapt).parameters)
    assert not any("label" in name for name in UnlabeledTask.__dataclass_fields__)
    rng = np.random.default_rng(5)
    results = []
    for corruption in (0, 1):
        splits = [(task.images, rng.integers(0, 4, size=len(task.images)) + 100 * corruption) for task in tasks]
        unlabeled = [
            UnlabeledTask(task.name, images, task.head, task.logit_scale) for task, (images, _) in zip(tasks, splits)
        ]
        results.append(adapt(visual, spec, pretrained, finetuned, unlabeled, TRAINED["adamerging"], progress=False))
    assert torch.equal(results[0].learned.coefficients, results[1].learned.coefficients)


@pytest.mark.parametrize("method", sorted(TRAINED))
def test_learned_merge_round_trips_and_rebuilds_the_merge(setup, method: str, tmp_path: Path) -> None:
    _, _, pretrained, finetuned, _ = setup
    result = run(setup, TRAINED[method])
    path = tmp_path / "learned.safetensors"
    save_learned_merge(path, result.learned)
    loaded = load_learned_merge(path)
    assert loaded.settings == result.learned.settings and dict(loaded.columns) == dict(result.learned.columns)
    assert torch.equal(loaded.coefficients, result.learned.coefficients)
    assert loaded.masks.keys() == result.learned.masks.keys()
    assert all(torch.equal(loaded.masks[key], mask) for key, mask in result.learned.masks.items())
    assert_bitwise_equal(merge_from_learned(loaded, pretrained, finetuned), result.merged_state_dict())


def test_low_rank_term_is_the_sum_of_weighted_task_triplets() -> None:
    generator = torch.Generator().manual_seed(3)
    for rows, cols in ((6, 4), (4, 6)):  # each side of the "scale the smaller factor" branch
        u, s, vh = (torch.randn(shape, generator=generator) for shape in ((2, rows, 3), (2, 3), (2, 3, cols)))
        weights = torch.randn((2, 3), generator=generator)
        expected = sum(u[t] @ torch.diag(weights[t]) @ vh[t] for t in range(2))
        change = LowRankTerm.of(MatrixFactors(u, s, vh)).change(weights)
        assert torch.allclose(change, expected, atol=1e-6)


def test_straight_through_mask_is_hard_forward_and_soft_backward() -> None:
    logits = torch.tensor([0.1, -0.1, 3.0, -2.0], requires_grad=True)
    mask = straight_through_mask(logits, temperature=10.0)
    assert torch.equal(mask, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    mask.sum().backward()
    soft = torch.sigmoid(logits.detach() / 10.0)
    assert torch.allclose(logits.grad, soft * (1 - soft) / 10.0)


def test_bad_inputs_name_what_is_wrong(setup, tmp_path: Path) -> None:
    visual, spec, pretrained, finetuned, tasks = setup
    with pytest.raises(InputError, match="bf16_autocast.*CUDA"):
        run(setup, AdaMergingSettings(bf16_autocast=True))
    with pytest.raises(InputError, match="2 tasks for 3 fine-tuned models"):
        adapt(visual, spec, pretrained, finetuned, tasks[:2], AdaMergingSettings(), progress=False)
    with pytest.raises(InputError, match="task0.*fewer than the batch size 32"):
        run(setup, AdaMergingSettings(batch_size=32))
    with pytest.raises(InputError, match="adamerging: setting 'init' must be inside clamp"):
        AdaMergingSettings(init=1.5)
    with pytest.raises(InputError, match="adamerging_cart: setting 'rank' must be a rank ratio in \\(0, 1\\]"):
        AdaMergingCartSettings(rank=0.0, lam=1.0)
    with pytest.raises(InputError, match="adamerging: setting 'tasks_per_pass' must be None or an integer >= 1"):
        AdaMergingSettings(tasks_per_pass=0)
    with pytest.raises(InputError, match="adarank: setting 'base'"):
        AdaRankSettings(base="ties", initial_rank=0.1, prior=1.0)
    save_state_dict(tmp_path / "other.safetensors", {"weight": torch.zeros(2)})
    with pytest.raises(InputError, match="other.safetensors: not a mergeflow learned-merge file"):
        load_learned_merge(tmp_path / "other.safetensors")


def test_adaptation_logs_its_build_time_and_steps(setup, caplog) -> None:
    """benchmarks/gpu_sweep.py and adaptation_speed.py read the step time from this line."""
    import logging

    with caplog.at_level(logging.INFO, logger="mergeflow.adaptive.adaptation"):
        run(setup, dataclasses.replace(TRAINED["adamerging"], steps=3))
    (record,) = [r for r in caplog.records if "steps in" in r.msg]
    method, build_s, steps, steps_s, per_step = record.args
    assert (method, steps) == ("adamerging", 3) and build_s > 0 and steps_s > 0
    assert per_step == pytest.approx(steps_s / 3)
    assert "adamerging: merge built in" in record.getMessage()
