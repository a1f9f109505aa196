"""Where adaptation moved weight: per-block coefficient and kept-rank grids, their figures and the CLI verb."""

from pathlib import Path

import pytest
import torch

from mergeflow.adaptive import LearnedMerge, save_learned_merge
from mergeflow.adaptive.settings import AdaMergingSettings, AdaRankSettings
from mergeflow.commands.main import main
from mergeflow.io import InputError
from mergeflow.report.adaptation_figures import block_of, coefficient_grid, kept_rank_grid, plot_coefficients

KEYS = ["transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.mlp.c_fc.weight",
        "transformer.resblocks.1.mlp.c_fc.weight", "proj"]  # fmt: skip
TASKS = ["a", "b"]


def layer_wise() -> LearnedMerge:
    coefficients = torch.tensor([[0.1, 0.3, 0.5, 0.9], [0.2, 0.2, 0.4, 0.0]])
    return LearnedMerge(AdaMergingSettings(granularity="layer"), {k: i for i, k in enumerate(KEYS)}, coefficients, {})


def test_blocks_are_read_from_the_key() -> None:
    assert [block_of(key) for key in KEYS] == ["0", "0", "1", "other"]
    assert block_of("transformer.resblocks.11.ln_1.weight") == "11" and block_of("class_embedding") == "other"


def test_coefficient_grid_is_the_mean_per_block_and_task() -> None:
    grid = coefficient_grid(layer_wise(), TASKS, "learned.safetensors")
    assert list(grid.columns) == ["0", "1", "other"] and list(grid.index) == TASKS
    assert grid.loc["a"].tolist() == pytest.approx([0.2, 0.5, 0.9])
    assert grid.loc["b"].tolist() == pytest.approx([0.2, 0.4, 0.0])
    task_wise = LearnedMerge(AdaMergingSettings(granularity="task"), dict.fromkeys(KEYS, 0),
                             torch.tensor([[0.35], [0.25]]), {})  # fmt: skip
    assert coefficient_grid(task_wise, TASKS, "x").to_dict() == {"all tensors": {"a": pytest.approx(0.35), "b": 0.25}}
    with pytest.raises(InputError, match=r"learned\.safetensors: 2 tasks learned, but 3 task names given"):
        coefficient_grid(layer_wise(), [*TASKS, "c"], "learned.safetensors")


def test_kept_rank_grid_is_the_percent_of_components_kept() -> None:
    masks = {KEYS[0]: torch.tensor([[True, True, False, False], [True, False, False, False]]),
             KEYS[2]: torch.tensor([[True, True, True, True], [False, False, False, False]])}  # fmt: skip
    settings = AdaRankSettings(base="cart", initial_rank=0.5, prior=1.0)
    learned = LearnedMerge(settings, {k: i for i, k in enumerate(KEYS[:3])}, torch.ones(2, 3), masks)
    grid = kept_rank_grid(learned, TASKS, "x")
    assert grid.to_dict() == {"0": {"a": 50.0, "b": 25.0}, "1": {"a": 100.0, "b": 0.0}}
    with pytest.raises(InputError, match=r"no singular-component masks; expected an adarank"):
        kept_rank_grid(layer_wise(), TASKS, "x")


def test_figures_are_written_and_reproducible_and_the_verb_names_bad_input(tmp_path: Path) -> None:
    first = plot_coefficients(layer_wise(), TASKS, tmp_path / "one" / "m_coefficients", "x", title="suite")
    second = plot_coefficients(layer_wise(), TASKS, tmp_path / "two" / "m_coefficients", "x", title="suite")
    assert [p.name for p in first] == ["m_coefficients.png", "m_coefficients.pdf"]
    assert all(a.read_bytes() == b.read_bytes() and a.stat().st_size > 1000 for a, b in zip(first, second))
    save_learned_merge(tmp_path / "m.learned.safetensors", layer_wise())
    args = ["adaptation", "--learned", str(tmp_path / "m.learned.safetensors"), "--method", "adamerging",
            "--tasks", *TASKS, "--figures-dir", str(tmp_path / "figures")]  # fmt: skip
    assert main(args) == 0 and (tmp_path / "figures" / "adamerging_coefficients.png").is_file()
    assert main([*args, "--figure", "kept_rank"]) == 2
    assert not (tmp_path / "figures" / "adamerging_kept_rank.png").exists()
