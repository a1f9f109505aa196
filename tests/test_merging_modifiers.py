"""`<method>+svc`: config entries, hyper-parameters, and the engine's calibration of a merge's result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from random_models import perturbed_models

from mergeflow.io import InputError, load_state_dict, save_state_dict
from mergeflow.merging import merge_direction, merge_files, merge_state_dicts, resolve_hparams
from mergeflow.merging.entries import base_method, entry_modifiers, factor_kind, merge_name
from mergeflow.merging.methods.svc import calibrated_tensor

SHAPES = {
    "conv1.weight": (4, 3, 2, 2),
    "positional_embedding": (5, 4),
    "transformer.resblocks.0.ln_1.weight": (4,),
    "transformer.resblocks.0.attn.in_proj_weight": (12, 4),
    "transformer.resblocks.0.mlp.c_fc.weight": (8, 4),
    "proj": (4, 3),
}


def test_entries_name_their_method_modifiers_and_variant() -> None:
    assert (merge_name("cart+svc@strong"), base_method("cart+svc@strong")) == ("cart+svc", "cart")
    assert entry_modifiers("cart+svc@strong") == ("svc",) and entry_modifiers("cart@x") == ()
    # cart+svc sweeps cart's grid, so it reuses cart's centered factors.
    assert factor_kind("cart+svc") == "centered"
    assert resolve_hparams("cart+svc", {"alpha": "0.5"}) == {"rank": 0.08, "lam": 1.0, "alpha": 0.5}
    assert resolve_hparams("iso_cts+svc", {}) == {"lam": 1.0, "common_fraction": 0.8, "alpha": 0.1}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cart+svd", "unknown modifier 'svd'; valid modifiers: svc"),
        ("emr+svc", "emr cannot take a modifier"),
        ("zeroshot+svc", "zeroshot cannot take a modifier"),
        ("cart+svc+svc", "a modifier is named twice"),
    ],
)
def test_invalid_modifiers_are_refused(name: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        resolve_hparams(name, {})


def fusionbench_calibration(pretrained, finetuned, merged, alpha):
    """FusionBench's SingularValueCalibrationWithBaseMethod on the merged state dict: every 2-D tensor calibrated
    in float64 (ΔW = W_merge − W_pre, task updates W_i − W_pre), W_pre added back, cast to the model's dtype."""
    out = {}
    for key, weight in merged.items():
        if weight.ndim != 2:
            out[key] = weight
            continue
        base = pretrained[key].double()
        tasks = torch.stack([model[key].double() - base for model in finetuned])
        out[key] = (base + calibrated_tensor(key, weight.double() - base, tasks, alpha)).to(weight.dtype)
    return out


@pytest.mark.parametrize(("method", "hparams"), [("task_arithmetic", {"lam": 0.7}), ("cart", {"rank": 0.5, "lam": 2.0}),
                                                 ("dare", {"p": 0.5, "lam": 0.5})])  # fmt: skip
def test_svc_calibrates_the_base_merge_as_fusionbench_does(method: str, hparams: dict) -> None:
    pretrained, finetuned = perturbed_models(SHAPES, 3, seed=11)
    base = merge_state_dicts(method, pretrained, finetuned, hparams)
    for alpha in (0.1, 1.0):
        calibrated = merge_state_dicts(f"{method}+svc", pretrained, finetuned, {**hparams, "alpha": alpha})
        expected = fusionbench_calibration(pretrained, finetuned, base, alpha)
        for key in SHAPES:
            assert torch.equal(calibrated[key], expected[key]), (method, alpha, key)
        assert not torch.equal(calibrated["transformer.resblocks.0.mlp.c_fc.weight"],
                               base["transformer.resblocks.0.mlp.c_fc.weight"])  # fmt: skip
    assert torch.equal(calibrated["conv1.weight"], base["conv1.weight"])


def test_one_task_merged_as_itself_is_unchanged_by_svc() -> None:
    # θ_1 − θ_0 is its own merged update: every projection coefficient is 1, so γ = T / max(α, 1) = 1 for α ≤ 1.
    pretrained, finetuned = perturbed_models(SHAPES, 1, seed=12)
    plain = merge_state_dicts("task_arithmetic", pretrained, finetuned, {"lam": 1.0})
    calibrated = merge_state_dicts("task_arithmetic+svc", pretrained, finetuned, {"lam": 1.0, "alpha": 1.0})
    for key in SHAPES:
        assert torch.allclose(calibrated[key], plain[key], rtol=0, atol=1e-6), key


def test_the_direction_of_a_calibrated_merge_holds_its_lambda() -> None:
    pretrained, finetuned = perturbed_models(SHAPES, 3, seed=13)
    settings = {"lam": 0.5, "alpha": 0.5}
    direction = merge_direction("task_arithmetic+svc", pretrained, finetuned, settings)
    merged = merge_state_dicts("task_arithmetic+svc", pretrained, finetuned, settings)
    for key, tensor in direction.at(0.5).items():
        assert torch.equal(tensor, merged[key]), key
    # the matrices are calibrated at λ 0.5 and take no λ afterwards; the 1-D and 4-D tensors still do
    assert "proj" not in direction.delta and "conv1.weight" in direction.delta


def test_a_streamed_calibrated_merge_equals_the_in_memory_one(tmp_path: Path) -> None:
    pretrained, finetuned = perturbed_models(SHAPES, 3, seed=14)
    save_state_dict(tmp_path / "pre.safetensors", pretrained)
    paths = []
    for index, model in enumerate(finetuned):
        paths.append(tmp_path / f"{index}.safetensors")
        save_state_dict(paths[-1], model)
    settings = {"rank": 0.5, "lam": 1.5, "alpha": 0.2}
    summary = merge_files("cart+svc", tmp_path / "pre.safetensors", paths, settings, tmp_path / "out.safetensors")
    assert summary.hparams == settings
    streamed = load_state_dict(tmp_path / "out.safetensors")
    in_memory = merge_state_dicts("cart+svc", pretrained, finetuned, settings)
    for key in SHAPES:
        assert torch.equal(streamed[key], in_memory[key]), key
