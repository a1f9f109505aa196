"""Registry, hyper-parameter parsing and the key/rank helpers."""

from __future__ import annotations

import pytest
import torch

from mergeflow.io import InputError
from mergeflow.merging import METHODS, get_method, is_cart_matrix, merge_state_dicts, rank_from_ratio, resolve_hparams

# Method names, hyper-parameter names and defaults exactly as in the docs/methods.md table.
EXPECTED_DEFAULTS = {
    "zeroshot": {},
    "weight_averaging": {},
    "task_arithmetic": {"lam": 0.3},
    "ties": {"k": 0.2, "lam": 1.0, "merge": "mean"},
    "dare": {"p": 0.5, "lam": 0.3, "base": "task_arithmetic", "seed": 0},
    "magmax": {"lam": 1.0},
    "consensus": {"k": 2, "mask_lam": 0.4, "lam": 0.3, "base": "task_arithmetic"},
    "tsv_m": {"lam": 1.0},
    "iso_c": {"lam": 1.0},
    "iso_cts": {"lam": 1.0, "common_fraction": 0.8},
    "lowrank_ta": {"rank": 0.08, "lam": 0.3},
    "cart": {"rank": 0.08, "lam": 1.0},
    "wudi": {"iterations": 300, "lr": 1e-5, "lam": 1.0},
    "regmean": {"reduce_non_diagonal_ratio": 0.95},
    "regmean_plusplus": {"reduce_non_diagonal_ratio": 0.95},
    "fisher": {"minimal_fisher_weight": 1e-6, "normalize_fisher_weight": True, "fisher_scaling_coefficients": 1.0},
    "emr": {"task": 0},
}


def test_registry_lists_the_methods_in_methods_md_order() -> None:
    assert list(METHODS) == list(EXPECTED_DEFAULTS)


@pytest.mark.parametrize("name", list(EXPECTED_DEFAULTS))
def test_defaults_match_methods_md(name: str) -> None:
    resolved = resolve_hparams(name, {})
    assert resolved == EXPECTED_DEFAULTS[name]
    assert [type(value) for value in resolved.values()] == [type(value) for value in EXPECTED_DEFAULTS[name].values()]


def test_unknown_method_lists_every_valid_name() -> None:
    with pytest.raises(InputError) as caught:
        get_method("kart")
    message = str(caught.value)
    assert "'kart'" in message
    for name in METHODS:
        assert name in message


def test_strings_from_the_command_line_are_typed() -> None:
    assert resolve_hparams("ties", {"k": "0.3", "merge": "sum", "lam": " 2 "}) == {"k": 0.3, "lam": 2.0, "merge": "sum"}
    dare = {"p": 0.0, "lam": 0.3, "base": "task_arithmetic", "seed": 7}
    assert resolve_hparams("dare", {"seed": "7", "p": "0"}) == dare
    assert resolve_hparams("consensus", {"mask_lam": "0.4,0.5", "k": "1"})["mask_lam"] == (0.4, 0.5)
    assert resolve_hparams("consensus", {"mask_lam": "0.25"})["mask_lam"] == 0.25


def test_typed_values_from_yaml_are_accepted() -> None:
    assert resolve_hparams("cart", {"rank": 1, "lam": 2})["rank"] == 1.0
    assert resolve_hparams("consensus", {"mask_lam": [0.1, 0.2, 0.3]})["mask_lam"] == (0.1, 0.2, 0.3)
    assert resolve_hparams("consensus", {"mask_lam": [0.1]})["mask_lam"] == 0.1
    assert resolve_hparams("lowrank_ta", {"rank": 0.0})["rank"] == 0.0


@pytest.mark.parametrize(
    ("name", "raw", "fragments"),
    [
        ("cart", {"rnk": 0.1}, ["cart", "'rnk'", "rank, lam"]),
        ("zeroshot", {"lam": 1}, ["zeroshot", "'lam'", "accepts: none"]),
        ("cart", {"rank": 1.5}, ["cart", "'rank'", "[0, 1]"]),
        ("cart", {"rank": "-0.1"}, ["cart", "'rank'", "[0, 1]"]),
        ("dare", {"p": 1.0}, ["dare", "'p'", "[0, 1)"]),
        ("dare", {"seed": -1}, ["dare", "'seed'", "integers >= 0"]),
        ("dare", {"base": "magmax"}, ["dare", "'base'", "'task_arithmetic', 'ties'"]),
        ("ties", {"merge": "median"}, ["ties", "'merge'", "'mean', 'sum'"]),
        ("ties", {"k": "abc"}, ["ties", "'k'", "expected a number"]),
        ("consensus", {"k": 2.5}, ["consensus", "'k'", "expected an integer"]),
        ("consensus", {"mask_lam": "0.4,-1"}, ["consensus", "'mask_lam'", "numbers >= 0"]),
        ("task_arithmetic", {"lam": True}, ["task_arithmetic", "'lam'", "expected a number"]),
        ("task_arithmetic", {"lam": "nan"}, ["task_arithmetic", "'lam'", "finite"]),
        ("iso_cts", {"common_fraction": 2}, ["iso_cts", "'common_fraction'", "[0, 1]"]),
    ],
)
def test_bad_values_name_method_key_and_allowed_range(name: str, raw: dict, fragments: list[str]) -> None:
    with pytest.raises(InputError) as caught:
        resolve_hparams(name, raw)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_per_task_mask_lam_must_match_the_number_of_tasks() -> None:
    pretrained = {"w": torch.zeros(3)}
    finetuned = [{"w": torch.ones(3)}, {"w": torch.full((3,), 2.0)}]
    with pytest.raises(InputError, match="mask_lam has 3 values but there are 2 tasks"):
        merge_state_dicts("consensus", pretrained, finetuned, {"mask_lam": "0.1,0.2,0.3"})


@pytest.mark.parametrize(
    ("ratio", "shape", "expected"),
    [
        (0.0, (768, 768), 0),
        (0.08, (768, 768), 61),
        (0.08, (3072, 768), 61),
        (0.32, (768, 2304), 245),
        (0.01, (10, 20), 1),
        (0.5, (10, 20), 5),
        (1.0, (10, 20), 10),
    ],
)
def test_rank_from_ratio(ratio: float, shape: tuple[int, int], expected: int) -> None:
    assert rank_from_ratio(ratio, shape) == expected


def test_rank_from_ratio_rejects_ratios_outside_unit_interval() -> None:
    with pytest.raises(ValueError):
        rank_from_ratio(1.5, (4, 4))


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("transformer.resblocks.0.attn.in_proj_weight", True),
        ("transformer.resblocks.11.attn.out_proj.weight", True),
        ("visual.transformer.resblocks.3.mlp.c_fc.weight", True),
        ("model.visual.transformer.resblocks.23.mlp.c_proj.weight", True),
        ("transformer.resblocks.0.attn.in_proj_bias", False),
        ("transformer.resblocks.0.attn.out_proj.bias", False),
        ("transformer.resblocks.0.mlp.c_fc.bias", False),
        ("transformer.resblocks.0.ln_1.weight", False),
        ("visual.proj", False),
        ("positional_embedding", False),
        ("conv1.weight", False),
        ("xtransformer.resblocks.0.attn.in_proj_weight", False),
        ("transformer.resblocks.0.attn.out_proj.weight.extra", False),
    ],
)
def test_is_cart_matrix(key: str, expected: bool) -> None:
    assert is_cart_matrix(key) is expected
