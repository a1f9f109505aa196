"""EMR-Merging against a direct transcription of its authors' code, and its identities by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mergeflow.io import InputError
from mergeflow.merging.context import Placement, combine
from mergeflow.merging.engine import tensor_merges
from mergeflow.merging.hparams import Integer
from mergeflow.merging.methods.emr import EmrStatistics, emr, emr_statistics, task_masks, unified_vector
from mergeflow.merging.registry import MergeMethod
from mergeflow.merging.sources import InMemorySource

SHAPES = {
    "class_embedding": (6,),
    "positional_embedding": (5, 6),
    "conv1.weight": (6, 3, 2, 2),
    "transformer.resblocks.0.ln_1.weight": (6,),
    "transformer.resblocks.0.attn.in_proj_weight": (18, 6),
    "transformer.resblocks.0.attn.in_proj_bias": (18,),
    "transformer.resblocks.0.mlp.c_fc.weight": (12, 6),
    "proj": (6, 4),
}
CPU = Placement(torch.device("cpu"), torch.float32)
INT_KEY = "position_ids"  # not an open_clip key: an int64 tensor, which the authors' TaskVector skips

METHOD = MergeMethod(
    "emr", "EMR", "unified task vector, per-task mask and rescaler", (Integer("task", 0, "task index"),), emr,
    statistics=emr_statistics,
)  # fmt: skip


def models(num_tasks: int, seed: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """θ_0 ~ N(0, 1) and θ_t = θ_0 + 0.1·N(0, 1) on SHAPES, each task with a different share of exact zeros
    in τ_t (so masks and ties between tasks are exercised), plus an int64 key equal in every model."""
    generator = torch.Generator().manual_seed(seed)
    pretrained = {key: torch.randn(shape, generator=generator) for key, shape in SHAPES.items()}
    pretrained[INT_KEY] = torch.arange(5)
    finetuned = []
    for task in range(num_tasks):
        model = {}
        for key, value in pretrained.items():
            if key == INT_KEY:
                model[key] = value.clone()
                continue
            noise = 0.1 * torch.randn(value.shape, generator=generator)
            moved = torch.rand(value.shape, generator=generator) >= 0.1 * task
            model[key] = torch.where(moved, value + noise, value)
        finetuned.append(model)
    return pretrained, finetuned


def authors_emr_merge(task_vectors: list[SimpleNamespace]) -> tuple[dict, dict, torch.Tensor]:
    """harveyhuang18/EMR_Merging @ cc225ec, merge_vit/src/main_emr_merging.py L41-74 (`emr_merge`), line by line."""
    sum_param = {}
    n2p = []
    for m in range(len(task_vectors)):
        n2p_temp = task_vectors[m].vector
        n2p.append(n2p_temp)
        for n in n2p_temp:
            if n not in sum_param:
                sum_param[n] = []
            sum_param[n].append(n2p_temp[n])
    sum_param = {k: torch.stack(v, 0).mean(0) for k, v in sum_param.items()}
    vector_unified = {}
    scales = torch.zeros(len(task_vectors))
    masks = {}
    for n in sum_param:
        masks[n] = []
        flag = (sum_param[n] > 0) * 2 - 1
        param_max = torch.zeros_like(n2p[0][n])
        for m in range(len(task_vectors)):
            param = task_vectors[m].vector[n]
            mask = (param * flag) > 0
            masks[n].append(mask)
            param_abs = torch.abs(mask * param)
            param_max = torch.where(param_abs > param_max, param_abs, param_max)
            scales[m] += torch.mean(torch.abs(param))
        vector_unified[n] = param_max * flag
    new_scales = torch.zeros(len(task_vectors))
    for m in range(len(task_vectors)):
        for n in vector_unified:
            p = vector_unified[n] * masks[n][m]
            new_scales[m] += torch.mean(torch.abs(p))
    rescalers = scales / new_scales

    return vector_unified, masks, rescalers


def authors_task_vector(pretrained: dict, finetuned: dict) -> SimpleNamespace:
    """merge_vit/src/task_vectors.py L21-24: τ on every key but the int64/uint8 ones."""
    vector = {}
    for key in pretrained:
        if pretrained[key].dtype in [torch.int64, torch.uint8]:
            continue
        vector[key] = finetuned[key] - pretrained[key]
    return SimpleNamespace(vector=vector)


def authors_task_models(pretrained: dict, finetuned: list[dict]) -> tuple[list[dict], torch.Tensor]:
    """The task-i models of main_emr_merging.py L97-104, `apply_vector` (L26-38) included: keys without a
    task-vector entry keep θ_0 (`load_state_dict(..., strict=False)`). Also returns the rescalers."""
    vector_unified, masks, rescalers = authors_emr_merge(
        [authors_task_vector(pretrained, model) for model in finetuned]
    )
    task_models = []
    for i in range(len(finetuned)):
        task_vector_recon = {}
        for n in vector_unified:
            task_vector_recon[n] = vector_unified[n] * masks[n][i] * rescalers[i]
        new_state_dict = dict(pretrained)
        for key in pretrained:
            if key in task_vector_recon:
                new_state_dict[key] = pretrained[key] + task_vector_recon[key]
        task_models.append(new_state_dict)
    return task_models, rescalers


def ours(pretrained: dict, finetuned: list[dict], task: int, method: MergeMethod = METHOD) -> dict[str, torch.Tensor]:
    """The task-`task` model through the engine's per-tensor loop; EMR has no λ, so every merge is its origin."""
    merges = list(
        tensor_merges(
            method, {"task": task}, InMemorySource(pretrained, finetuned), factors=None, device="cpu", progress=False
        )
    )
    assert all(merge.delta is None for merge in merges)
    return {merge.key: combine(merge.origin, merge.delta, 0.0, merge.dtype) for merge in merges}


def stacked(finetuned: list[dict], pretrained: dict, key: str) -> torch.Tensor:
    return torch.stack([model[key] - pretrained[key] for model in finetuned])


def test_unified_vector_and_masks_equal_the_authors_bit_for_bit() -> None:
    pretrained, finetuned = models(4, seed=1)
    vector_unified, masks, _ = authors_emr_merge([authors_task_vector(pretrained, model) for model in finetuned])
    assert set(vector_unified) == set(SHAPES)  # every floating-point key, the int64 one left out
    for key in SHAPES:
        vectors = stacked(finetuned, pretrained, key)
        unified = unified_vector(vectors)
        assert torch.equal(unified, vector_unified[key]), key
        assert torch.equal(task_masks(vectors, unified), torch.stack(masks[key])), key
    # The data exercises what the masks decide: disagreeing entries and exact zeros of τ_t.
    vectors = stacked(finetuned, pretrained, "proj")
    masks_proj = task_masks(vectors, unified_vector(vectors))
    assert bool((~masks_proj & (vectors != 0)).any()) and bool((vectors == 0).any())


@pytest.mark.parametrize("num_tasks", [2, 4])
def test_rescalers_equal_the_authors_up_to_their_float32_sums(num_tasks: int) -> None:
    pretrained, finetuned = models(num_tasks, seed=num_tasks)
    _, authors = authors_task_models(pretrained, finetuned)
    source = InMemorySource(pretrained, finetuned)
    ours_ = emr_statistics(source, {"task": 0}, CPU, False).rescalers
    assert len(ours_) == num_tasks
    # Ours are float64 sums of float64 per-key means, theirs float32 ones: they agree to float32 round-off.
    assert torch.allclose(torch.tensor(ours_, dtype=torch.float64), authors.double(), rtol=1e-6, atol=0)
    assert all(abs(value - 1.0) > 0.05 for value in ours_)  # not the identity's 1


@pytest.mark.parametrize("num_tasks", [2, 4])
def test_every_task_model_equals_the_authors(num_tasks: int) -> None:
    pretrained, finetuned = models(num_tasks, seed=10 + num_tasks)
    authors, rescalers = authors_task_models(pretrained, finetuned)
    for task in range(num_tasks):
        merged = ours(pretrained, finetuned, task)
        assert list(merged) == list(pretrained)
        assert torch.equal(merged[INT_KEY], pretrained[INT_KEY])
        for key in SHAPES:
            assert merged[key].dtype == torch.float32
            # Only λ_t differs (float64 vs float32 accumulation, relative 1e-7), scaled by |τ_uni| <= 0.5.
            assert torch.allclose(merged[key], authors[task][key], rtol=0, atol=1e-6), (task, key)
        assert not torch.allclose(merged["proj"], finetuned[task]["proj"], rtol=0, atol=1e-3)

    # Given the authors' float32 rescalers, the engine's per-tensor rule rebuilds their models bit for bit.
    def authors_statistics(*_: object) -> EmrStatistics:
        return EmrStatistics(tuple(float(value) for value in rescalers))

    with_their_rescalers = MergeMethod("emr", "EMR", "", METHOD.params, emr, statistics=authors_statistics)
    for task in range(num_tasks):
        merged = ours(pretrained, finetuned, task, with_their_rescalers)
        for key in SHAPES:
            assert torch.equal(merged[key], authors[task][key]), (task, key)


def test_one_task_is_that_expert_exactly() -> None:
    # On a dyadic grid θ_1 − θ_0 and θ_0 + τ_1 are exact in float32, so the expert comes back bit for bit.
    generator = torch.Generator().manual_seed(7)
    pretrained = {key: torch.randint(-512, 512, shape, generator=generator) / 256 for key, shape in SHAPES.items()}
    finetuned = [
        {key: value + torch.randint(-8, 9, value.shape, generator=generator) / 256 for key, value in pretrained.items()}
    ]
    assert bool((finetuned[0]["proj"] == pretrained["proj"]).any())  # some τ entries are 0: masked out, no harm
    statistics = emr_statistics(InMemorySource(pretrained, finetuned), {"task": 0}, CPU, False)
    assert statistics.rescalers == (1.0,)
    merged = ours(pretrained, finetuned, 0)
    for key in SHAPES:
        assert torch.equal(merged[key], finetuned[0][key]), key


def test_hand_checked_example() -> None:
    # θ_0 = 0, three tasks, two keys of 4 and 2 entries.
    # a: τ_1 = [1, -2, 3, 0], τ_2 = [2, 1, -1, 0], τ_3 = [-4, 1, -1, 0]; Σ = [-1, 0, 1, 0] → γ = [-, -, +, -]
    #    (0 elects −). Masks: M_1 = [0, 1, 1, 0], M_2 = [0, 0, 0, 0], M_3 = [1, 0, 0, 0]; τ_uni = [-4, -2, 3, 0].
    # b: τ_1 = [1, 1], τ_2 = [-1, 3], τ_3 = [2, -2]; Σ = [2, 2] → γ = [+, +].
    #    Masks: M_1 = [1, 1], M_2 = [0, 1], M_3 = [1, 0]; τ_uni = [2, 3].
    # λ_t = (mean|τ_t[a]| + mean|τ_t[b]|) / (mean|M_t ⊙ τ_uni[a]| + mean|M_t ⊙ τ_uni[b]|):
    #    λ_1 = (6/4 + 2/2) / (5/4 + 5/2) = 2.5 / 3.75 = 2/3   (whole-model Σ|·| ratios would give 8/10)
    #    λ_2 = (4/4 + 4/2) / (0 + 3/2) = 3 / 1.5 = 2
    #    λ_3 = (6/4 + 4/2) / (4/4 + 2/2) = 3.5 / 2 = 1.75
    vectors = {
        "a": [[1.0, -2.0, 3.0, 0.0], [2.0, 1.0, -1.0, 0.0], [-4.0, 1.0, -1.0, 0.0]],
        "b": [[1.0, 1.0], [-1.0, 3.0], [2.0, -2.0]],
    }
    pretrained = {key: torch.zeros(len(rows[0])) for key, rows in vectors.items()}
    finetuned = [{key: torch.tensor(rows[t]) for key, rows in vectors.items()} for t in range(3)]
    a = torch.tensor(vectors["a"])
    assert torch.equal(unified_vector(a), torch.tensor([-4.0, -2.0, 3.0, 0.0]))
    assert torch.equal(
        task_masks(a, unified_vector(a)), torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]).bool()
    )
    statistics = emr_statistics(InMemorySource(pretrained, finetuned), {"task": 0}, CPU, False)
    assert statistics.rescalers == pytest.approx((2 / 3, 2.0, 1.75), rel=1e-15)
    expected = [
        {"a": [0.0, -4 / 3, 2.0, 0.0], "b": [4 / 3, 2.0]},
        {"a": [0.0, 0.0, 0.0, 0.0], "b": [0.0, 6.0]},
        {"a": [-7.0, 0.0, 0.0, 0.0], "b": [3.5, 0.0]},
    ]
    for task in range(3):
        merged = ours(pretrained, finetuned, task)
        for key in ("a", "b"):
            assert torch.allclose(merged[key], torch.tensor(expected[task][key]), rtol=1e-7, atol=0), (task, key)


def test_a_tie_elects_minus() -> None:
    vectors = torch.tensor([[1.0, 2.0], [-1.0, -1.0]])  # Σ = [0, 1]
    unified = unified_vector(vectors)
    assert torch.equal(unified, torch.tensor([-1.0, 2.0]))
    assert torch.equal(task_masks(vectors, unified), torch.tensor([[False, True], [True, False]]))


def test_a_task_with_no_masked_entry_gets_rescaler_0_and_theta_0() -> None:
    # τ_1 = 0 everywhere (the authors: 0/0) and τ_2 = [1, 1] against τ_3 = [-2, -2] (γ = −: M_2 empty, the
    # authors: x/0). Their task models are NaN everywhere; ours are θ_0, i.e. expert 1 itself for task 1.
    pretrained = {"w": torch.tensor([0.5, -0.25])}
    finetuned = [
        {"w": pretrained["w"].clone()},
        {"w": pretrained["w"] + 1.0},
        {"w": pretrained["w"] - 2.0},
    ]
    authors, rescalers = authors_task_models(pretrained, finetuned)
    assert bool(rescalers[0].isnan()) and bool(rescalers[1].isinf()) and float(rescalers[2]) == 1.0
    assert bool(authors[0]["w"].isnan().all()) and bool(authors[1]["w"].isnan().all())
    statistics = emr_statistics(InMemorySource(pretrained, finetuned), {"task": 0}, CPU, False)
    assert statistics.rescalers == (0.0, 0.0, 1.0)
    for task in (0, 1):
        assert torch.equal(ours(pretrained, finetuned, task)["w"], pretrained["w"]), task
    assert torch.equal(ours(pretrained, finetuned, 2)["w"], finetuned[2]["w"])


@pytest.mark.parametrize("task", [2, -1])
def test_a_task_index_out_of_range_is_refused(task: int) -> None:
    pretrained, finetuned = models(2, seed=0)
    with pytest.raises(InputError, match="task"):
        ours(pretrained, finetuned, task)
