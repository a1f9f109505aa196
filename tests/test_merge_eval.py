"""The val-grid / test-at-selection protocol of merge_eval on a tiny CLIP with real evaluation."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mergeflow import merging
from mergeflow.evaluation.accuracy import EvalSettings
from mergeflow.evaluation.sweep import (
    SweepEvaluator,
    TaskSplits,
    combine_sweep_parts,
    reference_accuracies,
    sweep_method,
)
from mergeflow.io import InputError, load_state_dict
from mergeflow.merging.regmean_plusplus import regmean_plusplus_visual
from mergeflow.merging.task_statistics import InMemoryStatistics
from mergeflow.models.clip import (
    build_clip,
    load_image_encoder,
    load_spec,
    load_weights,
    save_model_dir,
    tiny_clip_spec,
)
from mergeflow.statistics.grams import linear_input_grams
from mergeflow.statistics.images import image_batches

ARCH = {
    "image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "embed_dim": 16,
    "context_length": 12, "text_width": 32, "text_layers": 1, "text_heads": 2,
}  # fmt: skip
TASKS = ("a", "b", "c")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    directory: Path = tmp_path_factory.mktemp("model")
    save_model_dir(directory, tiny_clip_spec("toy", ARCH), build_clip(tiny_clip_spec("toy", ARCH)))
    spec = load_spec(directory)
    pretrained = load_state_dict(directory / "pretrained.safetensors")
    generator = torch.Generator().manual_seed(1)
    finetuned = [
        {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in pretrained.items()} for _ in TASKS
    ]
    rng = np.random.default_rng(0)
    tasks = []
    for _ in TASKS:
        head = F.normalize(torch.randn(3, ARCH["embed_dim"], generator=generator), dim=-1)
        split = lambda n: (rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, size=n))  # noqa: E731
        tasks.append((head, split(40), split(30)))
    splits = [TaskSplits(name, head, val, test) for name, (head, val, test) in zip(TASKS, tasks)]
    settings = EvalSettings(batch_size=16)
    evaluate = SweepEvaluator(load_image_encoder(directory), spec, splits, torch.device("cpu"), settings)
    reference = {split: {name: 0.5 for name in TASKS} for split in ("val", "test")}
    return pretrained, finetuned, evaluate, reference


GRID = {"rank": [0.0, 0.5, 1.0], "lam": [1.0, 2.0]}


def test_grid_rows_selection_flags_and_normalisation(setup) -> None:
    pretrained, finetuned, evaluate, reference = setup
    rows, _ = sweep_method("cart", GRID, pretrained, finetuned, evaluate, reference, progress=False)
    val = rows[rows["split"] == "val"]
    assert len(val) == 6 * len(TASKS) and val["setting"].nunique() == 6
    assert np.allclose(rows["normalized_accuracy"], rows["accuracy"] / 0.5)
    best = rows[rows["best"]]
    assert best["setting"].nunique() == 1 and set(best["split"]) == {"val", "test"}
    scores = val.groupby("setting")["normalized_accuracy"].mean()
    assert scores[best["setting"].iloc[0]] == scores.max()
    test = rows[rows["split"] == "test"]
    assert test["best_at_sweep"].all() and sorted(test["rank"].unique()) == [0.0, 0.5, 1.0]
    assert test.groupby("rank")["setting"].nunique().eq(1).all()


def test_the_test_correctness_returned_is_that_of_the_val_selected_setting(setup) -> None:
    pretrained, finetuned, evaluate, reference = setup
    rows, correct = sweep_method("cart", GRID, pretrained, finetuned, evaluate, reference, progress=False)
    best = rows[rows["best"] & (rows["split"] == "test")].set_index("task")
    setting = json.loads(best["setting"].iloc[0])
    evaluate.load_direction(merging.merge_direction("cart", pretrained, finetuned, setting), setting["lam"])
    again = evaluate.correct("test")
    assert list(correct) == ["cart"] and list(correct["cart"]) == list(TASKS)
    for task, vector in correct["cart"].items():
        assert vector.dtype == np.bool_ and vector.shape == (30,)
        np.testing.assert_array_equal(vector, again[task])
        assert vector.sum() / 30 == best.loc[task, "accuracy"]
    # Another setting is tested too (best at its rank); its correctness differs, so the choice matters.
    others = rows[~rows["best"] & (rows["split"] == "test")]
    assert any(
        group.set_index("task")["accuracy"].to_dict() != best["accuracy"].to_dict()
        for _, group in others.groupby("setting")
    )


def test_a_split_sweep_keeps_the_correctness_of_the_part_that_holds_the_grids_selection(setup) -> None:
    """combine_sweep copies the holder part's correctness file: it must be the whole sweep's."""
    pretrained, finetuned, evaluate, reference = setup
    whole, expected = sweep_method("cart", GRID, pretrained, finetuned, evaluate, reference, progress=False)
    parts = [
        sweep_method("cart", dict(GRID, rank=ranks), pretrained, finetuned, evaluate, reference, progress=False)
        for ranks in ([0.0, 0.5], [1.0])
    ]
    rows, holder = combine_sweep_parts("cart", GRID, [table for table, _ in parts])
    selected = rows.loc[rows["best"] & (rows["split"] == "test"), "setting"].unique().tolist()
    assert selected == whole.loc[whole["best"] & (whole["split"] == "test"), "setting"].unique().tolist()
    for task in TASKS:
        np.testing.assert_array_equal(parts[holder][1]["cart"][task], expected["cart"][task])


def test_rank_zero_and_full_equal_weight_averaging(setup) -> None:
    pretrained, finetuned, evaluate, reference = setup
    rows, _ = sweep_method("cart", GRID, pretrained, finetuned, evaluate, reference, progress=False)
    averaging, _ = sweep_method("weight_averaging", {}, pretrained, finetuned, evaluate, reference, progress=False)
    for split in ("val", "test"):
        expected = averaging[averaging["split"] == split].set_index("task")["accuracy"]
        for rank in (0.0, 1.0):
            for _, group in rows[(rows["split"] == split) & (rows["rank"] == rank)].groupby("setting"):
                pd.testing.assert_series_equal(group.set_index("task")["accuracy"], expected)


def test_cached_factors_give_identical_rows(setup) -> None:
    pretrained, finetuned, evaluate, reference = setup
    computed, _ = sweep_method("cart", GRID, pretrained, finetuned, evaluate, reference, progress=False)
    factors = merging.compute_task_factors(pretrained, finetuned, centered=True)
    cached, _ = sweep_method("cart", GRID, pretrained, finetuned, evaluate, reference, factors=factors, progress=False)
    pd.testing.assert_frame_equal(computed, cached)


def test_a_variant_entry_runs_its_method_under_its_own_label(setup) -> None:
    pretrained, finetuned, evaluate, reference = setup
    released, _ = sweep_method("cart@released", {"rank": 0.5, "lam": 2.0}, pretrained, finetuned, evaluate,
                               reference, progress=False)  # fmt: skip
    grid, _ = sweep_method("cart", GRID, pretrained, finetuned, evaluate, reference, progress=False)
    assert set(released["method"]) == {"cart@released"}
    same_setting = grid[(grid["rank"] == 0.5) & (grid["lam"] == 2.0) & (grid["split"] == "val")]
    assert released[released["split"] == "val"]["accuracy"].tolist() == same_setting["accuracy"].tolist()


def test_in_place_writes_are_the_bytes_of_the_merged_state_dict(setup) -> None:
    pretrained, finetuned, evaluate, _ = setup
    cart = merging.merge_direction("cart", pretrained, finetuned, {"rank": 0.5, "lam": 1.0})
    averaging = merging.merge_direction("weight_averaging", pretrained, finetuned, {})
    for direction, lam in ((cart, 2.0), (cart, 0.5), (averaging, 0.0), (cart, 3.0)):
        evaluate.load_direction(direction, lam)
        expected = direction.at(lam)
        live = evaluate.visual.state_dict()
        assert all(torch.equal(live[key], expected[key]) for key in expected), (direction, lam)


def test_evaluator_matches_the_host_array_path_and_streaming(setup, tmp_path_factory) -> None:
    from mergeflow.evaluation.accuracy import accuracy

    pretrained, finetuned, evaluate, _ = setup
    direction = merging.merge_direction("task_arithmetic", pretrained, finetuned, {"lam": 0.4})
    evaluate.load_direction(direction, 0.4)
    resident = evaluate.accuracies("val")
    tasks = [TaskSplits(name, evaluate._heads[name], *(_host_split(evaluate, s, name) for s in ("val", "test")))
             for name in evaluate.task_names]  # fmt: skip
    streamed = SweepEvaluator(evaluate.visual, evaluate.spec, tasks, torch.device("cpu"),
                              EvalSettings(batch_size=7, resident_mb=0))  # fmt: skip
    streamed.load_direction(direction, 0.4)
    assert streamed.accuracies("val") == resident
    for task in tasks:
        images, labels = task.val
        host = accuracy(evaluate.visual, task.head, images, labels, evaluate.spec, torch.device("cpu"), batch_size=16)
        assert host == resident[task.name]


def _host_split(evaluator: SweepEvaluator, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(evaluator._images[(split, name)].host), evaluator._labels[(split, name)].numpy()


def test_reference_rows_are_zero_shot_everywhere_and_individual_on_own_task(setup) -> None:
    pretrained, finetuned, evaluate, _ = setup
    table, correct = reference_accuracies(evaluate, pretrained, finetuned)
    assert list(table["split"]) == ["val"] * 3 + ["test"] * 3 and list(table["task"]) == list(TASKS) * 2
    evaluate.load_state_dict(pretrained, "θ_0")
    for split in ("val", "test"):
        rows = table[table["split"] == split].set_index("task")
        assert rows["zeroshot"].to_dict() == evaluate.accuracies(split)
        for name, weights in zip(TASKS, finetuned):
            evaluate.load_state_dict(weights, name)
            assert rows.loc[name, "individual"] == evaluate.accuracies(split, [name])[name]
        evaluate.load_state_dict(pretrained, "θ_0")
    # The test rows' per-image correctness, for the tables' bootstrap: one vector per task and reference model.
    assert sorted(correct) == ["individual", "zero-shot"]
    test = table[table["split"] == "test"].set_index("task")
    zeroshot = evaluate.correct("test")
    for index, name in enumerate(TASKS):
        np.testing.assert_array_equal(correct["zero-shot"][name], zeroshot[name])
        evaluate.load_state_dict(finetuned[index], name)
        np.testing.assert_array_equal(correct["individual"][name], evaluate.correct("test", [name])[name])
        evaluate.load_state_dict(pretrained, "θ_0")
        for row, column in (("zero-shot", "zeroshot"), ("individual", "individual")):
            assert correct[row][name].mean() == test.loc[name, column]


def test_the_multitask_encoder_adds_its_column_and_row_and_changes_nothing_else(setup) -> None:
    pretrained, finetuned, evaluate, _ = setup
    without, correct_without = reference_accuracies(evaluate, pretrained, finetuned)
    # The second expert stands in for a multi-task encoder: one set of weights scored on every task.
    table, correct = reference_accuracies(evaluate, pretrained, finetuned, finetuned[1])
    assert list(table.columns) == ["task", "split", "zeroshot", "individual", "multitask"]
    pd.testing.assert_frame_equal(table.drop(columns="multitask"), without, check_exact=True)
    assert list(correct) == ["zero-shot", "individual", "multi-task"]
    evaluate.load_state_dict(finetuned[1], "stand-in")
    for split in ("val", "test"):
        assert table[table["split"] == split].set_index("task")["multitask"].to_dict() == evaluate.accuracies(split)
    for name in TASKS:
        np.testing.assert_array_equal(correct["multi-task"][name], evaluate.correct("test", [name])[name])
        for row in ("zero-shot", "individual"):
            np.testing.assert_array_equal(correct[row][name], correct_without[row][name])
    assert table.loc[(table["split"] == "test") & (table["task"] == "b"), "multitask"].item() == (
        without.loc[(without["split"] == "test") & (without["task"] == "b"), "individual"].item()
    )


def test_a_state_dict_of_another_architecture_is_refused_by_name(setup) -> None:

    pretrained, _, evaluate, _ = setup
    wrong = dict(pretrained, proj=torch.zeros(3, 3))
    with pytest.raises(InputError, match=r"θ_bad: key 'proj' has shape \(3, 3\)"):
        evaluate.load_state_dict(wrong, "θ_bad")


def test_a_direction_without_delta_is_evaluated_once_per_split(setup, monkeypatch) -> None:
    pretrained, finetuned, evaluate, reference = setup
    calls = []
    original = SweepEvaluator.correct
    monkeypatch.setattr(SweepEvaluator, "correct", lambda self, split, tasks=None: calls.append(split) or
                        original(self, split, tasks))  # fmt: skip
    grid = {"rank": [0.0, 0.5], "lam": [1.0, 2.0, 3.0]}
    rows, _ = sweep_method("cart", grid, pretrained, finetuned, evaluate, reference, progress=False)
    # rank 0 is θ_avg at every lam: one val pass instead of three; rank 0.5 needs all three
    assert calls.count("val") == 1 + 3 and calls.count("test") == 2
    at_rank_zero = rows[(rows["rank"] == 0.0) & (rows["split"] == "val")]
    assert at_rank_zero.groupby("task")["accuracy"].nunique().eq(1).all() and at_rank_zero["lam"].nunique() == 3


def test_a_split_over_the_budget_is_read_per_batch_from_its_array(tmp_path: Path) -> None:
    from mergeflow.evaluation.accuracy import stage_splits

    images = np.random.default_rng(0).integers(0, 256, size=(10, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    one_split_mb = images.nbytes / 2**20
    first, second = stage_splits([images, mapped], torch.device("cpu"), resident_mb=1.5 * one_split_mb)
    assert first.resident is not None and second.resident is None and second.host is mapped
    spec = tiny_clip_spec("toy", ARCH)
    streamed = torch.cat(list(second.batches(spec, 4)))
    staged = torch.cat(list(first.batches(spec, 4)))
    assert torch.equal(streamed, staged) and streamed.shape == (10, 3, 16, 16)


def test_every_evaluated_pass_logs_its_images_and_seconds(setup, caplog) -> None:
    """benchmarks/gpu_sweep.py reads the pass times of a real sweep from these lines."""
    import logging
    import re

    pretrained, finetuned, evaluate, reference = setup
    grid = {"rank": [0.0, 0.5], "lam": [1.0, 2.0]}
    with caplog.at_level(logging.INFO, logger="mergeflow.evaluation.sweep"):
        sweep_method("cart", grid, pretrained, finetuned, evaluate, reference, progress=False)
    pattern = re.compile(r"cart (val|test) pass at (\{.*\}): merge ([\d.]+) s, (\d+) images in ([\d.]+) s")
    passes = [pattern.fullmatch(record.getMessage()) for record in caplog.records]
    passes = [m for m in passes if m]
    # rank 0 is one model at every lam: 1 + 2 val passes, then one test pass per rank
    assert [m[1] for m in passes] == ["val"] * 3 + ["test"] * 2
    assert {int(m[4]) for m in passes if m[1] == "val"} == {40 * len(TASKS)}
    assert {int(m[4]) for m in passes if m[1] == "test"} == {30 * len(TASKS)}
    assert all(float(m[5]) > 0 for m in passes)


def test_emr_evaluates_each_task_with_its_own_model(setup) -> None:
    pretrained, finetuned, evaluate, reference = setup
    rows, correct = sweep_method("emr", {}, pretrained, finetuned, evaluate, reference, progress=False)
    assert set(rows["setting"]) == {"{}"} and rows["best"].all()
    for index, task in enumerate(TASKS):
        own = merging.merge_state_dicts("emr", pretrained, finetuned, {"task": index})
        evaluate.load_state_dict(own, "task model")
        assert np.array_equal(correct["emr"][task], evaluate.correct("test", [task])[task]), task
    with pytest.raises(InputError, match="methods.emr.task: set by the sweep"):
        sweep_method("emr", {"task": [0, 1]}, pretrained, finetuned, evaluate, reference, progress=False)


def test_a_calibrated_sweep_merges_every_lambda_on_its_own(setup) -> None:
    pretrained, finetuned, evaluate, reference = setup
    grid = {"lam": [0.5, 1.5], "alpha": [0.1, 1.0]}
    rows, correct = sweep_method("task_arithmetic+svc", grid, pretrained, finetuned, evaluate, reference,
                                 progress=False)  # fmt: skip
    assert rows["setting"].nunique() == 4 and set(rows["method"]) == {"task_arithmetic+svc"}
    setting = json.loads(rows.loc[rows["best"], "setting"].iloc[0])
    merged = merging.merge_state_dicts("task_arithmetic+svc", pretrained, finetuned, setting)
    evaluate.load_state_dict(merged, "calibrated")
    assert all(np.array_equal(correct["task_arithmetic+svc"][t], v) for t, v in evaluate.correct("test").items())


def test_regmean_reads_its_statistics_and_regmean_plusplus_its_training_images(setup) -> None:

    pretrained, finetuned, evaluate, reference = setup
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8) for _ in TASKS]
    grams = []
    for model, task_images in zip(finetuned, images):
        visual = build_clip(evaluate.spec).visual
        load_weights(visual, model, "expert")
        grams.append(linear_input_grams(visual, image_batches(task_images, evaluate.spec, 5, torch.device("cpu"))))
    statistics = InMemoryStatistics(grams)
    grid = {"reduce_non_diagonal_ratio": [0.5, 0.95]}
    rows, correct = sweep_method("regmean", grid, pretrained, finetuned, evaluate, reference,
                                 task_statistics=statistics, progress=False)  # fmt: skip
    setting = json.loads(rows.loc[rows["best"], "setting"].iloc[0])
    evaluate.load_state_dict(merging.merge_state_dicts("regmean", pretrained, finetuned, setting,
                                                       task_statistics=statistics), "regmean")  # fmt: skip
    assert all(np.array_equal(correct["regmean"][t], v) for t, v in evaluate.correct("test").items())
    with pytest.raises(InputError, match="regmean needs its grams statistics"):
        sweep_method("regmean", grid, pretrained, finetuned, evaluate, reference, progress=False)

    rows, correct = sweep_method("regmean_plusplus", {}, pretrained, finetuned, evaluate, reference,
                                 training_images=images, training_batch_size=5, progress=False)  # fmt: skip
    batches = [image_batches(task_images, evaluate.spec, 5, torch.device("cpu")) for task_images in images]
    evaluate.load_state_dict(regmean_plusplus_visual(evaluate.spec, pretrained, finetuned, batches), "regmean++")
    assert all(np.array_equal(correct["regmean_plusplus"][t], v) for t, v in evaluate.correct("test").items())
    with pytest.raises(InputError, match="merges through the models on training images; none were given"):
        sweep_method("regmean_plusplus", {}, pretrained, finetuned, evaluate, reference, progress=False)
