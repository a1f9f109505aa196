"""The adapt_eval job on a toy CLIP: settings from the config, rows like a static sweep's, no labels in adaptation."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mergeflow.adaptive import UnlabeledTask
from mergeflow.adaptive.job import adapt_and_evaluate, cart_selection
from mergeflow.adaptive.settings import ADAPTIVE_METHODS, AdaMergingCartSettings, AdaRankSettings, method_settings
from mergeflow.evaluation.accuracy import EvalSettings
from mergeflow.evaluation.sweep import SweepEvaluator, TaskSplits, sweep_method
from mergeflow.io import InputError, load_state_dict
from mergeflow.models.clip import build_clip, load_image_encoder, load_spec, save_model_dir, tiny_clip_spec

ARCH = {
    "image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "embed_dim": 16,
    "context_length": 12, "text_width": 32, "text_layers": 1, "text_heads": 2,
}  # fmt: skip
TASKS = ("a", "b")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    directory: Path = tmp_path_factory.mktemp("model")
    save_model_dir(directory, tiny_clip_spec("toy", ARCH), build_clip(tiny_clip_spec("toy", ARCH)))
    pretrained = load_state_dict(directory / "pretrained.safetensors")
    generator = torch.Generator().manual_seed(1)
    noise = [{k: 0.05 * torch.randn(v.shape, generator=generator) for k, v in pretrained.items()} for _ in TASKS]
    finetuned = [{k: v + delta[k] for k, v in pretrained.items()} for delta in noise]
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, size=n)

    heads = [F.normalize(torch.randn(3, ARCH["embed_dim"], generator=generator), dim=-1) for _ in TASKS]
    splits = [TaskSplits(name, head, split(24), split(32)) for name, head in zip(TASKS, heads)]
    reference = {s: {name: 0.5 for name in TASKS} for s in ("val", "test")}
    return directory, pretrained, finetuned, splits, reference


def evaluator_of(directory: Path, splits: list[TaskSplits]) -> SweepEvaluator:
    return SweepEvaluator(load_image_encoder(directory), load_spec(directory), splits, CPU, EvalSettings(batch_size=8))


def unlabeled_of(splits: list[TaskSplits]) -> list[UnlabeledTask]:
    return [UnlabeledTask(s.name, s.test[0], s.head, torch.tensor(np.log(100.0))) for s in splits]


def test_the_config_entries_are_the_adaptive_library_methods() -> None:
    from mergeflow.adaptive.settings import SETTINGS_CLASSES

    assert set(ADAPTIVE_METHODS) == set(SETTINGS_CLASSES)


def test_selected_takes_carts_val_choice_and_mistakes_name_the_config_path() -> None:
    settings = ['{"lam": 1.0, "rank": 0.0}', '{"lam": 1.0, "rank": 0.1}', '{"lam": 6.0, "rank": 0.2}']
    cart_rows = pd.DataFrame({"split": ["val"] * 3 + ["test"], "setting": [*settings, settings[0]],
                              "rank": [0.0, 0.1, 0.2, 0.0], "lam": [1.0, 1.0, 6.0, 1.0],
                              "normalized_accuracy": [0.9, 0.7, 0.8, 0.9]})  # fmt: skip
    cart = cart_selection(cart_rows, "cart.csv")
    assert cart == {"rank": 0.2, "lam": 6.0}  # rank 0 (weight averaging) won on val, but has no low-rank term
    settings = method_settings("adamerging_cart", {"rank": "selected", "lam": "selected", "steps": 5}, cart)
    assert settings == AdaMergingCartSettings(rank=0.2, lam=6.0, steps=5)
    ranked = method_settings("adarank@ta", {"base": "task_arithmetic", "initial_rank": "selected", "prior": 0.3}, cart)
    assert ranked == AdaRankSettings(base="task_arithmetic", initial_rank=0.2, prior=0.3)
    assert method_settings("adamerging", {"clamp": [0, 1], "betas": [0.9, 0.99]}, None).clamp == (0, 1)
    with pytest.raises(InputError, match=r"methods\.adamerging_cart\.rank: 'selected' needs the cart method"):
        method_settings("adamerging_cart", {"rank": "selected", "lam": 1.0}, None)
    with pytest.raises(InputError, match=r"methods\.adamerging\.lr: adaptive methods take one value, not a grid"):
        method_settings("adamerging", {"lr": [1e-3, 1e-2]}, None)
    with pytest.raises(InputError, match=r"methods\.adamerging: unknown setting 'rank'; adamerging accepts: steps, "):
        method_settings("adamerging", {"rank": 0.1}, None)
    with pytest.raises(InputError, match=r"cart\.csv: no val rows at a rank above 0"):
        cart_selection(cart_rows.assign(rank=0.0), "cart.csv")


def test_zero_steps_of_task_wise_adamerging_give_the_rows_of_task_arithmetic_at_its_init(toy) -> None:
    directory, pretrained, finetuned, splits, reference = toy
    settings = method_settings("adamerging", {"granularity": "task", "steps": 0}, None)
    evaluator = evaluator_of(directory, splits)
    rows, result = adapt_and_evaluate("adamerging", settings, evaluator, pretrained, finetuned, unlabeled_of(splits),
                                      reference, CPU, progress=False)  # fmt: skip
    static, _ = sweep_method("task_arithmetic", {"lam": 0.3}, pretrained, finetuned, evaluator, reference,
                             progress=False)  # fmt: skip
    columns = ["split", "task", "accuracy", "normalized_accuracy"]
    pd.testing.assert_frame_equal(rows[columns].reset_index(drop=True), static[columns].reset_index(drop=True))
    assert rows["best"].all() and rows["best_at_sweep"].all() and set(rows["method"]) == {"adamerging"}
    assert rows["setting"].nunique() == 1 and '"granularity": "task"' in rows["setting"].iloc[0]
    assert result.learned.coefficients.eq(0.3).all()


def test_adaptation_reads_no_labels_and_its_rows_measure_the_adapted_encoder(toy) -> None:
    directory, pretrained, finetuned, splits, reference = toy
    settings = method_settings("adamerging", {"steps": 4, "batch_size": 8, "lr": 0.05}, None)
    relabelled = [TaskSplits(s.name, s.head, s.val, (s.test[0], (s.test[1] + 1) % 3)) for s in splits]
    learned = []
    for task_splits in (splits, relabelled):
        evaluator = evaluator_of(directory, task_splits)
        rows, result = adapt_and_evaluate("adamerging", settings, evaluator, pretrained, finetuned,
                                          unlabeled_of(task_splits), reference, CPU, progress=False)  # fmt: skip
        learned.append(result.learned.coefficients)
        evaluator.load_state_dict(result.merged_state_dict(), "adapted")
        test = rows[rows["split"] == "test"].set_index("task")["accuracy"].to_dict()
        assert test == evaluator.accuracies("test")
    assert torch.equal(learned[0], learned[1]) and not learned[0].eq(0.3).all()
