"""Streaming from safetensors files equals merging in memory bit for bit; inputs are checked; DARE's seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from random_models import perturbed_models
from safetensors import safe_open

from mergeflow.io import InputError, load_state_dict, save_state_dict
from mergeflow.merging import METHODS, merge_files, merge_state_dicts
from mergeflow.merging.keys import is_cart_matrix
from mergeflow.merging.kth_largest import KthLargest
from mergeflow.merging.task_statistics import InMemoryStatistics

SHAPES = {
    "conv1.weight": (4, 3, 2, 2),
    "positional_embedding": (5, 8),
    "transformer.resblocks.0.ln_1.bias": (8,),
    "transformer.resblocks.0.attn.in_proj_weight": (24, 8),
    "transformer.resblocks.0.attn.out_proj.weight": (8, 8),
    "transformer.resblocks.0.mlp.c_fc.weight": (16, 8),
    "transformer.resblocks.1.mlp.c_proj.weight": (8, 16),
    "proj": (8, 4),
}

# The data-based methods need statistics or training images: their own test below.
PLAIN_METHODS = [name for name, method in METHODS.items() if method.needs != "training_data"]
CASES = [(name, {}) for name in PLAIN_METHODS] + [
    ("dare", {"base": "ties", "seed": 4}),
    ("consensus", {"base": "ties", "k": 1}),
    ("ties", {"k": 0.7, "merge": "sum"}),
    ("cart", {"rank": 0.3}),
    ("lowrank_ta", {"rank": 0.3}),
    ("cart+svc", {"rank": 0.3, "alpha": 0.5}),
]


def random_models(num_tasks: int, dtype: torch.dtype = torch.float32) -> list[dict[str, torch.Tensor]]:
    pretrained, finetuned = perturbed_models(SHAPES, num_tasks, seed=21)
    models = [pretrained, *finetuned]
    return [{**{key: value.to(dtype) for key, value in model.items()}, "step": torch.tensor(3)} for model in models]


def write_models(directory: Path, models: list[dict[str, torch.Tensor]]) -> tuple[Path, list[Path]]:
    paths = [directory / f"model{index}.safetensors" for index in range(len(models))]
    for path, model in zip(paths, models):
        save_state_dict(path, model)
    return paths[0], paths[1:]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, torch.Tensor]], Path, list[Path]]:
    models = random_models(3)
    pretrained, finetuned = write_models(tmp_path_factory.mktemp("models"), models)
    return models, pretrained, finetuned


@pytest.mark.parametrize(("name", "hparams"), CASES, ids=[f"{name}{sorted(h.items())}" for name, h in CASES])
def test_streaming_equals_in_memory_bit_for_bit(files, tmp_path: Path, name: str, hparams: dict) -> None:
    models, pretrained, finetuned = files
    summary = merge_files(name, pretrained, finetuned, hparams, tmp_path / "out" / "merged.safetensors")
    streamed = load_state_dict(tmp_path / "out" / "merged.safetensors")
    in_memory = merge_state_dicts(name, models[0], models[1:], hparams)
    assert streamed.keys() == in_memory.keys()
    for key in in_memory:
        assert streamed[key].dtype == in_memory[key].dtype
        assert torch.equal(streamed[key], in_memory[key]), key
    assert summary.tensors_total == len(SHAPES) + 1
    # WUDI merges only the residual blocks' attention/MLP matrices, as its authors' code does.
    matrices = sum(is_cart_matrix(key) for key in SHAPES)
    assert summary.tensors_touched == {"zeroshot": 0, "wudi": matrices}.get(name, len(SHAPES))
    assert not (tmp_path / "out" / "merged.safetensors.tmp").exists()
    with safe_open(str(tmp_path / "out" / "merged.safetensors"), framework="pt") as handle:
        assert handle.metadata()["mergeflow.method"] == name


def random_statistics(models: list[dict[str, torch.Tensor]], kind: str) -> list[dict[str, torch.Tensor]]:
    """Per fine-tuned model, positive semi-definite input Grams of the CART matrices, or a positive Fisher per key."""
    generator = torch.Generator().manual_seed(5)
    statistics = []
    for _ in models[1:]:
        if kind == "grams":
            inputs = {
                key: torch.randn(20, SHAPES[key][1], generator=generator) for key in SHAPES if is_cart_matrix(key)
            }
            statistics.append({key: x.T @ x / 20 for key, x in inputs.items()})
        else:
            statistics.append({key: torch.rand(SHAPES[key], generator=generator) for key in SHAPES})
    return statistics


@pytest.mark.parametrize(("name", "kind"), [("regmean", "grams"), ("fisher", "fisher")])
def test_data_based_merges_stream_their_statistics_bit_for_bit(files, tmp_path: Path, name: str, kind: str) -> None:
    models, pretrained, finetuned = files
    statistics = random_statistics(models, kind)
    paths = []
    for index, stats in enumerate(statistics):
        paths.append(tmp_path / f"{kind}{index}.safetensors")
        save_state_dict(paths[-1], stats)
    merge_files(name, pretrained, finetuned, {}, tmp_path / "merged.safetensors", task_statistics=paths)
    streamed = load_state_dict(tmp_path / "merged.safetensors")
    in_memory = merge_state_dicts(name, models[0], models[1:], {}, task_statistics=InMemoryStatistics(statistics))
    for key in in_memory:
        assert torch.equal(streamed[key], in_memory[key]), key
    assert not torch.equal(
        in_memory["transformer.resblocks.0.mlp.c_fc.weight"], models[0]["transformer.resblocks.0.mlp.c_fc.weight"]
    )
    with pytest.raises(InputError, match=f"{name} needs its {kind} statistics, one file per fine-tuned model"):
        merge_files(name, pretrained, finetuned, {}, tmp_path / "none.safetensors")
    with pytest.raises(InputError, match="keys differ"):
        merge_files(name, pretrained, finetuned, {}, tmp_path / "x.safetensors",
                    task_statistics=[paths[0], paths[1], tmp_path / "merged.safetensors"])  # fmt: skip


def test_regmean_plusplus_is_refused_outside_an_evaluation_sweep(files, tmp_path: Path) -> None:
    _, pretrained, finetuned = files
    with pytest.raises(InputError, match="regmean_plusplus merges through the models on training images"):
        merge_files("regmean_plusplus", pretrained, finetuned, {}, tmp_path / "merged.safetensors")


def test_half_precision_files_stream_to_half_precision(tmp_path: Path) -> None:
    models = random_models(2, dtype=torch.float16)
    pretrained, finetuned = write_models(tmp_path, models)
    merge_files("ties", pretrained, finetuned, {}, tmp_path / "merged.safetensors")
    streamed = load_state_dict(tmp_path / "merged.safetensors")
    in_memory = merge_state_dicts("ties", models[0], models[1:], {})
    for key in in_memory:
        assert streamed[key].dtype == models[0][key].dtype
        assert torch.equal(streamed[key], in_memory[key])


def test_missing_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    models = random_models(2)
    del models[2]["proj"]
    pretrained, finetuned = write_models(tmp_path, models)
    with pytest.raises(InputError, match=r"model2\.safetensors: key 'proj' of .*model0\.safetensors is missing"):
        merge_files("task_arithmetic", pretrained, finetuned, {}, tmp_path / "merged.safetensors")
    assert not (tmp_path / "merged.safetensors").exists()


def test_extra_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    models = random_models(2)
    models[1]["extra.weight"] = torch.zeros(2)
    pretrained, finetuned = write_models(tmp_path, models)
    with pytest.raises(InputError, match=r"model1\.safetensors: key 'extra\.weight' is not in .*model0\.safetensors"):
        merge_files("task_arithmetic", pretrained, finetuned, {}, tmp_path / "merged.safetensors")


def test_shape_mismatch_names_the_file_the_key_and_both_shapes(tmp_path: Path) -> None:
    models = random_models(2)
    models[2]["proj"] = torch.zeros(4, 8)
    pretrained, finetuned = write_models(tmp_path, models)
    with pytest.raises(InputError, match=r"model2\.safetensors: key 'proj' has shape \[4, 8\], but .* has \[8, 4\]"):
        merge_files("cart", pretrained, finetuned, {}, tmp_path / "merged.safetensors")


def test_in_memory_mismatch_names_the_model_index() -> None:
    models = random_models(2)
    models[2]["proj"] = torch.zeros(4, 8)
    with pytest.raises(InputError, match=r"finetuned\[1\]: key 'proj' has shape \[4, 8\]"):
        merge_state_dicts("cart", models[0], models[1:], {})


def test_missing_and_unreadable_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    pretrained, finetuned = write_models(tmp_path, random_models(1))
    with pytest.raises(InputError, match=r"absent\.safetensors: file not found"):
        merge_files("cart", pretrained, [tmp_path / "absent.safetensors"], {}, tmp_path / "m.safetensors")
    with pytest.raises(InputError, match=r"broken\.safetensors: not a readable safetensors file"):
        merge_files("cart", pretrained, [tmp_path / "broken.safetensors"], {}, tmp_path / "m.safetensors")


def test_dare_is_reproducible_from_its_seed_and_changes_with_it() -> None:
    models = random_models(2)
    first = merge_state_dicts("dare", models[0], models[1:], {"seed": 1})
    again = merge_state_dicts("dare", models[0], models[1:], {"seed": 1})
    other = merge_state_dicts("dare", models[0], models[1:], {"seed": 2})
    key = "transformer.resblocks.0.mlp.c_fc.weight"
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first[key], other[key])
    # the 1-D tensors are never dropped, so they agree across seeds
    assert torch.equal(first["transformer.resblocks.0.ln_1.bias"], other["transformer.resblocks.0.ln_1.bias"])


def test_dare_masks_do_not_depend_on_key_order() -> None:
    models = random_models(2)
    reordered = [dict(reversed(list(model.items()))) for model in models]
    forward = merge_state_dicts("dare", models[0], models[1:], {"seed": 5, "base": "ties"})
    backward = merge_state_dicts("dare", reordered[0], reordered[1:], {"seed": 5, "base": "ties"})
    assert list(backward) == list(reordered[0])
    assert all(torch.equal(forward[key], backward[key]) for key in forward)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_radix_selection_finds_the_kth_largest_over_pieces(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(2)
    values = torch.randn(1000, generator=generator, dtype=dtype).abs()
    values[:100] = 0.0
    values[100:150] = values[150]  # a run of equal values straddling several ranks
    pieces = [values[:333], values[333:334], values[334:]]
    descending = sorted(values.tolist(), reverse=True)
    for k in (1, 2, 40, 120, 500, 899, 900, 901, 1000):
        selector = KthLargest(k, dtype)
        for _ in range(selector.passes):
            for piece in pieces:
                selector.observe(piece)
            selector.end_pass()
        assert selector.value() == descending[k - 1], k
    assert KthLargest(1, dtype).passes == (2 if dtype == torch.float32 else 4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("which", ["pretrained", "finetuned"])
def test_a_non_finite_input_is_refused_by_file_and_key_and_nothing_is_written(tmp_path: Path, bad: float, which: str):
    models = random_models(2)
    target = models[0] if which == "pretrained" else models[2]
    target["transformer.resblocks.0.mlp.c_fc.weight"][3, 1] = bad
    pretrained, finetuned = write_models(tmp_path, models)
    broken = pretrained if which == "pretrained" else finetuned[1]
    for name in ("weight_averaging", "cart"):
        with pytest.raises(InputError, match=rf"{broken.name}: key 'transformer\.resblocks\.0\.mlp\.c_fc\.weight' "
                                             r"holds 1 NaN or Inf value\(s\) of 128"):  # fmt: skip
            merge_files(name, pretrained, finetuned, {}, tmp_path / "merged.safetensors")
        assert not (tmp_path / "merged.safetensors").exists()


def test_a_merge_that_overflows_its_dtype_is_refused_by_key(tmp_path: Path) -> None:
    models = [{key: value * 1e4 if value.is_floating_point() else value for key, value in model.items()}
              for model in random_models(2, torch.float16)]  # fmt: skip
    pretrained, finetuned = write_models(tmp_path, models)
    with pytest.raises(InputError, match=r"task_arithmetic merge \{'lam': 100\.0\}: merged key '\S+' holds"):
        merge_files("task_arithmetic", pretrained, finetuned, {"lam": 100.0}, tmp_path / "merged.safetensors")
    assert not (tmp_path / "merged.safetensors").exists()
    merge_files("task_arithmetic", pretrained, finetuned, {"lam": 0.3}, tmp_path / "merged.safetensors")
    assert all(torch.isfinite(t).all() for t in load_state_dict(tmp_path / "merged.safetensors").values()
               if t.is_floating_point())  # fmt: skip
