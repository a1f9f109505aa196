"""Report module: main table values, published numbers, its renderings, the rank-sweep figure, validation, the CLI.

`write_synthetic_suite` (a small synthetic evaluation of four methods on three tasks) is shared with the
figure tests.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mergeflow.commands.report import main, register
from mergeflow.evaluation.correctness import read_correctness_files, save_correctness
from mergeflow.evaluation.results import load_method_results, load_reference
from mergeflow.io import InputError
from mergeflow.report import main_table, plot_rank_sweep, write_main_table
from mergeflow.report.bootstrap import bootstrap_intervals, resampled_accuracies
from mergeflow.report.figures import sweep_curves
from mergeflow.report.published import (
    PublishedNumber,
)
from mergeflow.report.tables import interval_columns

# An underscore in a task name exercises the LaTeX escaping.
TASKS = ["SUN397", "Cars", "Euro_SAT"]
ZEROSHOT = {"val": [0.62, 0.52, 0.41], "test": [0.60, 0.50, 0.40]}
INDIVIDUAL = {"val": [0.82, 0.91, 0.98], "test": [0.80, 0.90, 0.99]}
# The multi-task encoder's accuracy, in the runs that have one (reference.csv's column `multitask`).
MULTITASK = {"val": [0.77, 0.86, 0.95], "test": [0.75, 0.85, 0.96]}
SWEEP_RANKS = [0.0, 0.04, 0.08, 1.0]


def _setting(**parameters: float) -> str:
    return json.dumps(parameters, sort_keys=True)


def _method_rows(
    method: str,
    val: dict[str, list[float]],
    test: dict[str, list[float]],
    best: str,
    sweep_best: list[str],
    parameters: dict[str, dict[str, float]],
) -> list[dict[str, object]]:
    """Rows of one method CSV: val rows for every setting, test rows for the selected ones."""
    rows = []
    for split, accuracies_by_setting in (("val", val), ("test", test)):
        for setting, accuracies in accuracies_by_setting.items():
            for task, accuracy, individual in zip(TASKS, accuracies, INDIVIDUAL[split], strict=True):
                rows.append(
                    {
                        "method": method,
                        "setting": setting,
                        "rank": parameters[setting].get("rank", ""),
                        "lam": parameters[setting].get("lam", ""),
                        "split": split,
                        "task": task,
                        "accuracy": accuracy,
                        "normalized_accuracy": accuracy / individual,
                        "best": setting == best,
                        "best_at_sweep": setting in sweep_best,
                    }
                )
    return rows


def _weight_averaging() -> list[dict[str, object]]:
    setting = _setting()
    val, test = {setting: [0.66, 0.61, 0.79]}, {setting: [0.70, 0.60, 0.80]}
    return _method_rows("weight_averaging", val, test, setting, [setting], {setting: {}})


def _task_arithmetic() -> list[dict[str, object]]:
    low, high = _setting(lam=0.3), _setting(lam=0.5)
    return _method_rows(
        "task_arithmetic",
        {low: [0.70, 0.65, 0.85], high: [0.60, 0.55, 0.75]},
        {low: [0.72, 0.64, 0.84]},
        low,
        [low],
        {low: {"lam": 0.3}, high: {"lam": 0.5}},
    )


def _sweep_method(method: str, lams: list[float], best_rank: float) -> list[dict[str, object]]:
    """A rank x lam grid; at each rank the larger lam wins on val; test accuracy peaks at `best_rank`."""
    parameters = {_setting(lam=lam, rank=rank): {"lam": lam, "rank": rank} for rank in SWEEP_RANKS for lam in lams}
    val, test, sweep_best = {}, {}, []
    for rank in SWEEP_RANKS:
        peak = 0.15 if rank == best_rank else 0.05 * rank
        for lam in lams:
            val[_setting(lam=lam, rank=rank)] = [0.65 + peak + 0.01 * lam, 0.60 + peak, 0.78 + peak]
        chosen = _setting(lam=max(lams), rank=rank)
        sweep_best.append(chosen)
        test[chosen] = [0.64 + peak, 0.58 + peak, 0.77 + peak]
    best = _setting(lam=max(lams), rank=best_rank)
    return _method_rows(method, val, test, best, sweep_best, parameters)


def _write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _write_reference(directory: Path, *, multitask: bool = False) -> Path:
    rows = [
        {"task": task, "split": split, "zeroshot": ZEROSHOT[split][index], "individual": INDIVIDUAL[split][index]}
        | ({"multitask": MULTITASK[split][index]} if multitask else {})
        for split in ("val", "test")
        for index, task in enumerate(TASKS)
    ]
    return _write_csv(directory / "reference.csv", rows)


def write_synthetic_suite(directory: Path) -> dict[str, Path]:
    """reference.csv and weight_averaging, task_arithmetic, cart (rank x lam grid), lowrank_ta CSVs in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "reference": _write_reference(directory),
        "weight_averaging": _write_csv(directory / "weight_averaging.csv", _weight_averaging()),
        "task_arithmetic": _write_csv(directory / "task_arithmetic.csv", _task_arithmetic()),
        "cart": _write_csv(directory / "cart.csv", _sweep_method("cart", [1.0, 1.5], best_rank=0.08)),
        "lowrank_ta": _write_csv(directory / "lowrank_ta.csv", _sweep_method("lowrank_ta", [0.3], best_rank=0.04)),
    }


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    return write_synthetic_suite(tmp_path / "eval")


def method_paths(inputs: dict[str, Path]) -> list[Path]:
    """The method CSVs of `write_synthetic_suite`, in table row order."""
    return [inputs[name] for name in ("weight_averaging", "task_arithmetic", "cart", "lowrank_ta")]


@pytest.fixture
def table(inputs: dict[str, Path]) -> pd.DataFrame:
    return main_table(load_reference(inputs["reference"]), load_method_results(method_paths(inputs)), TASKS)


IMAGES = 100  # test images per task in the synthetic correctness files: every accuracy above is a whole count


def _vector(accuracy: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(IMAGES) < round(accuracy * IMAGES))


def _vectors(accuracies: pd.Series, seed: int) -> dict[str, np.ndarray]:
    """Task → shuffled correctness with exactly that accuracy, a seed of its own per task."""
    return {task: _vector(accuracy, seed + index) for index, (task, accuracy) in enumerate(accuracies.items())}


def write_synthetic_correctness(inputs: dict[str, Path]) -> list[Path]:
    """Per-image test correctness behind every CSV of `write_synthetic_suite`, as the evaluation jobs write it."""
    reference = pd.read_csv(inputs["reference"])
    test = reference[reference["split"] == "test"].set_index("task")
    rows = {"zero-shot": test["zeroshot"], "individual": test["individual"]}
    if "multitask" in test.columns:
        rows["multi-task"] = test["multitask"]
    paths = [inputs["reference"].with_name("reference.correct.safetensors")]
    save_correctness(paths[0], {row: _vectors(accuracy, 0) for row, accuracy in rows.items()})
    for index, path in enumerate(method_paths(inputs)):
        frame = pd.read_csv(path)
        best = frame[frame["best"] & (frame["split"] == "test")].set_index("task")["accuracy"]
        paths.append(path.with_name(f"{frame['method'].iloc[0]}.correct.safetensors"))
        save_correctness(paths[-1], {frame["method"].iloc[0]: _vectors(best, 10 * (index + 1))})
    return paths


@pytest.fixture
def bootstrapped(inputs: dict[str, Path]) -> pd.DataFrame:
    correctness = read_correctness_files(write_synthetic_correctness(inputs))
    reference, results = load_reference(inputs["reference"]), load_method_results(method_paths(inputs))
    return main_table(reference, results, TASKS, None, correctness, resamples=400)


def _row(table: pd.DataFrame, metric: str, method: str) -> pd.Series:
    rows = table[(table["metric"] == metric) & (table["method"] == method)]
    assert len(rows) == 1
    return rows.iloc[0]


TRAILING = ["average", "published", "difference", "published_source"]
INTERVALS = [f"{column}_ci_{bound}" for column in [*TASKS, "average"] for bound in ("low", "high")]
CART_DIFFERENCE = ["cart_difference", "cart_difference_ci_low", "cart_difference_ci_high"]
# Published numbers handed to main_table directly: the 3-task synthetic suite is no paper suite.
PUBLISHED = {
    "individual": PublishedNumber(90.0, "source A"),
    "cart": PublishedNumber(80.25, "source B"),
    "task_arithmetic": PublishedNumber(75.0, "source A"),
}


def test_main_table_rows_columns_and_settings(table: pd.DataFrame) -> None:
    assert list(table.columns) == [
        "metric", "method", "setting", *TASKS, *TRAILING, *INTERVALS, *CART_DIFFERENCE, "group"
    ]  # fmt: skip
    # Without per-image correctness there is nothing to resample.
    assert table[[*INTERVALS, *CART_DIFFERENCE]].isna().all().all()
    expected_methods = ["zero-shot", "individual", "weight averaging", "task arithmetic", "CART", "low-rank TA"]
    for metric in ("accuracy", "normalized_accuracy"):
        assert list(table.loc[table["metric"] == metric, "method"]) == expected_methods
    assert _row(table, "accuracy", "CART")["setting"] == '{"lam": 1.5, "rank": 0.08}'
    assert _row(table, "accuracy", "low-rank TA")["setting"] == '{"lam": 0.3, "rank": 0.04}'
    assert _row(table, "accuracy", "task arithmetic")["setting"] == '{"lam": 0.3}'
    assert _row(table, "accuracy", "individual")["setting"] == ""


def test_main_table_numbers_are_hand_computed_means(table: pd.DataFrame) -> None:
    cart = _row(table, "accuracy", "CART")
    assert [cart[task] for task in TASKS] == pytest.approx([79.0, 73.0, 92.0])
    assert cart["average"] == pytest.approx((79.0 + 73.0 + 92.0) / 3)
    assert _row(table, "accuracy", "zero-shot")["average"] == pytest.approx(50.0)
    assert _row(table, "accuracy", "individual")["average"] == pytest.approx((80.0 + 90.0 + 99.0) / 3)
    assert _row(table, "accuracy", "task arithmetic")["average"] == pytest.approx((72.0 + 64.0 + 84.0) / 3)
    normalized = _row(table, "normalized_accuracy", "weight averaging")
    assert normalized["average"] == pytest.approx(100 * (0.70 / 0.80 + 0.60 / 0.90 + 0.80 / 0.99) / 3)
    assert _row(table, "normalized_accuracy", "individual")["average"] == pytest.approx(100.0)


def test_normalized_accuracy_is_accuracy_over_individual(table: pd.DataFrame) -> None:
    individual = _row(table, "accuracy", "individual")
    for method in table["method"].unique():
        absolute, normalized = _row(table, "accuracy", method), _row(table, "normalized_accuracy", method)
        for task in TASKS:
            assert normalized[task] == pytest.approx(100 * absolute[task] / individual[task])


def test_inconsistent_normalized_accuracy_names_file(inputs: dict[str, Path]) -> None:
    frame = pd.read_csv(inputs["task_arithmetic"])
    frame.loc[frame["split"] == "test", "normalized_accuracy"] = 0.5
    frame.to_csv(inputs["task_arithmetic"], index=False)
    reference, results = load_reference(inputs["reference"]), load_method_results(method_paths(inputs))
    with pytest.raises(InputError, match=r"task_arithmetic\.csv.*normalized_accuracy"):
        main_table(reference, results, TASKS)


def test_published_column_and_difference(inputs: dict[str, Path]) -> None:
    reference, results = load_reference(inputs["reference"]), load_method_results(method_paths(inputs))
    table = main_table(reference, results, TASKS, PUBLISHED)
    cart = _row(table, "accuracy", "CART")
    assert cart["published"] == 80.25
    assert cart["difference"] == pytest.approx((79.0 + 73.0 + 92.0) / 3 - 80.25)
    assert cart["published_source"] == "source B"
    individual = _row(table, "accuracy", "individual")
    assert individual["difference"] == pytest.approx((80.0 + 90.0 + 99.0) / 3 - 90.0)
    for method in ("zero-shot", "weight averaging", "low-rank TA"):
        row = _row(table, "accuracy", method)
        assert pd.isna(row["published"]) and pd.isna(row["difference"]) and row["published_source"] == ""
    normalized = table[table["metric"] == "normalized_accuracy"]
    assert normalized["published"].isna().all() and normalized["difference"].isna().all()


def _markdown_numbers(text: str, heading: str, width: int) -> list[list[str]]:
    section = text.split(f"## {heading}")[1].split("## ")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")][2:]
    # A group's heading row (`*data-free*`) carries no numbers.
    return [[cell.strip() for cell in row[1 : 1 + width]] for row in rows if not row[0].strip().startswith("*")]


def _latex_numbers(text: str, heading: str, width: int) -> list[list[str]]:
    section = text.split(f"% {heading}")[1].split(r"\end{tabular}")[0]
    body = section.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    rows = [line.removesuffix(r"\\").split("&") for line in body.splitlines() if line.endswith(r"\\")]
    return [[cell.strip() for cell in row[1 : 1 + width]] for row in rows if not row[0].startswith(r"\multicolumn")]


def _expected_cells(csv: pd.DataFrame, metric: str) -> list[list[str]]:
    """Each printed number from its CSV value: one decimal, the difference signed, empty where the CSV is."""
    rows = csv[csv["metric"] == metric]
    cells = [[f"{value:.1f}" for value in row] for row in rows[[*TASKS, "average"]].to_numpy()]
    if metric == "accuracy":
        for line, (published, difference) in zip(cells, rows[["published", "difference"]].to_numpy(), strict=True):
            line += [
                "" if pd.isna(published) else f"{published:.1f}",
                "" if pd.isna(difference) else f"{difference:+.1f}",
            ]
    return cells


def test_markdown_and_latex_numbers_are_csv_rounded(inputs: dict[str, Path], tmp_path: Path) -> None:
    reference, results = load_reference(inputs["reference"]), load_method_results(method_paths(inputs))
    table = main_table(reference, results, TASKS, PUBLISHED)
    written = write_main_table(table, tmp_path / "tables", title="ViT-B-32, 3 tasks")
    assert [path.name for path in written] == ["main.csv", "main.md", "main.tex"]
    csv = pd.read_csv(written[0])
    markdown, latex = written[1].read_text(), written[2].read_text()
    assert r"Euro\_SAT" in latex and "Euro_SAT" in markdown
    for metric, heading in (
        ("accuracy", "Absolute accuracy (%), test split"),
        ("normalized_accuracy", "Normalized accuracy (%), test split"),
    ):
        expected = _expected_cells(csv, metric)
        width = len(expected[0])
        assert width == len(TASKS) + (3 if metric == "accuracy" else 1)
        for rendered in (_markdown_numbers(markdown, heading, width), _latex_numbers(latex, heading, width)):
            assert rendered == expected
    # The published cells are really filled: CART's published 80.25 prints as 80.2, its difference signed.
    cart = next(line for line in markdown.splitlines() if line.startswith("| CART "))
    assert "| 81.3 | 80.2 | +1.1 |" in cart
    assert "source A; source B" in markdown and "source A; source B" in latex
    assert sorted(path.name for path in (tmp_path / "tables").iterdir()) == ["main.csv", "main.md", "main.tex"]


def test_table_without_published_numbers_says_so(table: pd.DataFrame, tmp_path: Path) -> None:
    markdown = write_main_table(table, tmp_path)[1].read_text()
    assert "No published numbers for this model and task list." in markdown
    cart = next(line for line in markdown.splitlines() if line.startswith("| CART "))
    assert cart.endswith("| 81.3 |  |  | lam=1.5, rank=0.08 |")


def test_csv_keeps_full_precision(table: pd.DataFrame, tmp_path: Path) -> None:
    csv = pd.read_csv(write_main_table(table, tmp_path)[0])
    assert csv["average"].tolist() == table["average"].tolist()


def test_every_number_lies_in_its_bootstrap_interval(bootstrapped: pd.DataFrame) -> None:
    for column in [*TASKS, "average"]:
        low, high = bootstrapped[f"{column}_ci_low"], bootstrapped[f"{column}_ci_high"]
        assert (low <= bootstrapped[column]).all() and (bootstrapped[column] <= high).all(), column
        absolute = bootstrapped["metric"] == "accuracy"
        assert (low[absolute] < high[absolute]).all(), column
    # Normalized by itself on every resample, the individual row is exactly 100 with no spread.
    individual = _row(bootstrapped, "normalized_accuracy", "individual")
    assert individual[INTERVALS].tolist() == [100.0] * len(INTERVALS)


def test_intervals_resample_each_rows_correctness_on_draws_shared_by_all_rows(
    bootstrapped: pd.DataFrame, inputs: dict[str, Path]
) -> None:
    files = read_correctness_files(write_synthetic_correctness(inputs)).rows
    order = ["zero-shot", "individual", "weight_averaging", "task_arithmetic", "cart", "lowrank_ta"]
    matrices = [np.stack([files[row][task] for row in order], axis=1) for task in TASKS]
    expected = bootstrap_intervals(100.0 * resampled_accuracies(matrices, resamples=400), baseline=order.index("cart"))
    absolute = bootstrapped[bootstrapped["metric"] == "accuracy"]
    assert absolute[interval_columns(TASKS)[0]].tolist() == pytest.approx(expected.task_low[:, 0].tolist())
    assert absolute["average_ci_high"].tolist() == pytest.approx(expected.average_high.tolist())
    assert absolute["cart_difference_ci_low"].tolist() == pytest.approx(expected.difference_low.tolist())
    cart = _row(bootstrapped, "accuracy", "CART")
    arithmetic = _row(bootstrapped, "accuracy", "task arithmetic")
    assert arithmetic["cart_difference"] == pytest.approx(arithmetic["average"] - cart["average"])
    assert arithmetic["cart_difference_ci_low"] < arithmetic["cart_difference"] < arithmetic["cart_difference_ci_high"]
    # CART against itself: the same draws, so exactly zero on every resample.
    for metric in ("accuracy", "normalized_accuracy"):
        assert _row(bootstrapped, metric, "CART")[CART_DIFFERENCE].tolist() == [0.0, 0.0, 0.0]


def test_without_cart_the_difference_columns_stay_empty(inputs: dict[str, Path], tmp_path: Path) -> None:
    correctness = read_correctness_files(write_synthetic_correctness(inputs))
    paths = [inputs["weight_averaging"], inputs["task_arithmetic"]]
    table = main_table(load_reference(inputs["reference"]), load_method_results(paths), TASKS, None, correctness)
    assert table[CART_DIFFERENCE].isna().all().all() and table[INTERVALS].notna().all().all()
    markdown = write_main_table(table, tmp_path)[1].read_text()
    assert "vs CART" not in markdown and "percentile bootstrap interval" in markdown


def test_markdown_and_latex_show_the_average_interval_and_the_difference_from_cart(
    bootstrapped: pd.DataFrame, tmp_path: Path
) -> None:
    csv, markdown, latex = write_main_table(bootstrapped, tmp_path)
    saved = pd.read_csv(csv)
    assert saved[INTERVALS].notna().all().all() and saved[CART_DIFFERENCE].notna().all().all()
    text, tex = markdown.read_text(), latex.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method "))
    assert "| average | vs CART | published | difference |" in header
    for row in saved[saved["metric"] == "accuracy"].itertuples():
        average = f"{row.average:.1f} [{row.average_ci_low:.1f}, {row.average_ci_high:.1f}]"
        versus = f"{row.cart_difference:+.1f} [{row.cart_difference_ci_low:+.1f}, {row.cart_difference_ci_high:+.1f}]"
        line = next(line for line in text.splitlines() if line.startswith(f"| {row.method} |"))
        assert f"| {average} | {versus} |" in line
        assert f" & {average} & {versus} & " in tex
    assert "| 81.3 [" in next(line for line in text.splitlines() if line.startswith("| CART |"))
    assert "+0.0 [+0.0, +0.0]" in text
    assert text.count("95% percentile bootstrap interval over test images (400 resamples, seed 0") == 2
    assert "95% percentile bootstrap interval over test images (400 resamples, seed 0" in tex
    assert r"\begin{tabular}{l" + "r" * (len(TASKS) + 4) + "l}" in tex


def test_correctness_that_disagrees_with_the_evaluation_names_the_file(inputs: dict[str, Path]) -> None:
    paths = write_synthetic_correctness(inputs)
    stale = paths[method_paths(inputs).index(inputs["cart"]) + 1]
    save_correctness(stale, {"cart": {task: _vector(0.5, 0) for task in TASKS}})
    reference, results = load_reference(inputs["reference"]), load_method_results(method_paths(inputs))
    stale_message = r"cart\.correct\.safetensors: cart/SUN397 gives accuracy 0\.5 but the evaluation CSV says 0\.79"
    with pytest.raises(InputError, match=stale_message):
        main_table(reference, results, TASKS, None, read_correctness_files(paths))
    save_correctness(stale, {"cart": {task: np.ones(7, dtype=bool) for task in TASKS}})
    with pytest.raises(InputError, match=r"cart/SUN397 holds 7 test images; expected 100 like zero-shot"):
        main_table(reference, results, TASKS, None, read_correctness_files(paths))
    with pytest.raises(InputError, match=r"no per-image correctness for row\(s\) cart;"):
        main_table(reference, results, TASKS, None, read_correctness_files([p for p in paths if p != stale]))


def test_sweep_curves_use_each_ranks_own_best_setting(inputs: dict[str, Path]) -> None:
    curves = {curve.method: curve for curve in sweep_curves(load_method_results(method_paths(inputs)), TASKS)}
    assert curves["cart"].ranks == tuple(SWEEP_RANKS)
    base = (64 + 58 + 77) / 3
    assert curves["cart"].average_accuracy == pytest.approx([base, base + 0.2, base + 15, base + 5])
    assert curves["lowrank_ta"].average_accuracy == pytest.approx([base, base + 15, base + 0.4, base + 5])


def test_rank_sweep_figure_is_valid_and_byte_identical(inputs: dict[str, Path], tmp_path: Path) -> None:
    reference, results = load_reference(inputs["reference"]), load_method_results(method_paths(inputs))
    first = plot_rank_sweep(reference, results, tmp_path / "a" / "rank_sweep", title="ViT-B-32, 3 tasks")
    second = plot_rank_sweep(reference, results, tmp_path / "b" / "rank_sweep", title="ViT-B-32, 3 tasks")
    assert [path.name for path in first] == ["rank_sweep.png", "rank_sweep.pdf"]
    png, pdf = first[0].read_bytes(), first[1].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png.endswith(b"IEND\xaeB`\x82")
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert b"CreationDate" not in pdf
    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == ["rank_sweep.pdf", "rank_sweep.png"]


def test_rank_sweep_plots_a_single_sweep_method(inputs: dict[str, Path], tmp_path: Path) -> None:
    reference = load_reference(inputs["reference"])
    results = load_method_results([inputs["weight_averaging"], inputs["lowrank_ta"]])
    written = plot_rank_sweep(reference, results, tmp_path / "rank_sweep")
    assert all(path.stat().st_size > 0 for path in written)


def test_rank_sweep_without_sweep_methods_raises(inputs: dict[str, Path], tmp_path: Path) -> None:
    reference = load_reference(inputs["reference"])
    results = load_method_results([inputs["weight_averaging"], inputs["task_arithmetic"]])
    with pytest.raises(InputError, match="cart or lowrank_ta"):
        plot_rank_sweep(reference, results, tmp_path / "rank_sweep")
    assert not list(tmp_path.glob("rank_sweep*"))


def test_rank_sweep_requires_weight_averaging(inputs: dict[str, Path], tmp_path: Path) -> None:
    reference = load_reference(inputs["reference"])
    with pytest.raises(InputError, match="weight_averaging"):
        plot_rank_sweep(reference, load_method_results([inputs["cart"]]), tmp_path / "rank_sweep")


def _drop_column(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["accuracy"])


def _unknown_split(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.replace({"split": {"val": "train"}})


def _missing_task(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[~((frame["task"] == "Cars") & (frame["split"] == "test"))]


def _no_best_test_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[~(frame["best"] & (frame["split"] == "test"))]


def _two_best_settings(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(best=frame["best_at_sweep"])


def _accuracy_out_of_range(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(accuracy=frame["accuracy"] * 100)


def _not_a_boolean(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(best=frame["best"].map({True: "yes", False: "no"}))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_drop_column, r"cart\.csv: missing column\(s\) 'accuracy'; expected columns method, setting"),
        (_unknown_split, r"cart\.csv: column 'split' has unknown value\(s\) 'train'; expected one of val, test"),
        (_missing_task, r"cart\.csv: task\(s\) Cars missing for setting .* on split test"),
        (_no_best_test_rows, r"cart\.csv: no test rows with best=True"),
        (_two_best_settings, r"cart\.csv: best=True on settings .*expected exactly one"),
        (_accuracy_out_of_range, r"cart\.csv: column 'accuracy' has .* on line 2; expected a fraction between 0 and 1"),
        (_not_a_boolean, r"cart\.csv: column 'best' has 'no' on line 2; expected True or False"),
    ],
)
def test_method_file_validation_names_file_and_expectation(inputs: dict[str, Path], corrupt, message: str) -> None:
    corrupt(pd.read_csv(inputs["cart"])).to_csv(inputs["cart"], index=False)
    with pytest.raises(InputError, match=message):
        load_method_results(method_paths(inputs))


def test_task_absent_from_a_file_names_file_and_task(inputs: dict[str, Path]) -> None:
    with pytest.raises(InputError, match=r"cart\.csv: task\(s\) DTD missing .*expected rows for every task"):
        load_method_results([inputs["cart"]], tasks=[*TASKS, "DTD"])


def test_same_method_twice_is_rejected(inputs: dict[str, Path]) -> None:
    with pytest.raises(InputError, match=r"method 'cart' was already read from .*cart\.csv"):
        load_method_results([inputs["cart"], inputs["cart"]])


def test_reference_validation(inputs: dict[str, Path]) -> None:
    frame = pd.read_csv(inputs["reference"])
    frame.drop(columns=["individual"]).to_csv(inputs["reference"], index=False)
    with pytest.raises(InputError, match=r"reference\.csv: missing column\(s\) 'individual'"):
        load_reference(inputs["reference"])
    frame[frame["task"] != "Cars"].to_csv(inputs["reference"], index=False)
    reference = load_reference(inputs["reference"])
    with pytest.raises(InputError, match=r"reference\.csv: no test row for task\(s\) Cars"):
        main_table(reference, load_method_results(method_paths(inputs)), TASKS)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"absent\.csv: file not found"):
        load_reference(tmp_path / "absent.csv")


def _aggregate_argv(inputs: dict[str, Path], out: Path) -> list[str]:
    return [
        "aggregate",
        "--reference", str(inputs["reference"]),
        "--results", *map(str, method_paths(inputs)),
        "--tasks", *TASKS,
        "--tables-dir", str(out / "tables"),
        "--figures-dir", str(out / "figures"),
        "--title", "ViT-B-32, 3 tasks",
    ]  # fmt: skip


def test_cli_aggregate_end_to_end(inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="mergeflow")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(_aggregate_argv(inputs, tmp_path))
    assert args.func(args) == 0
    assert sorted(path.name for path in (tmp_path / "tables").iterdir()) == ["main.csv", "main.md", "main.tex"]
    figures = sorted(path.name for path in (tmp_path / "figures").iterdir())
    assert figures == ["per_task.pdf", "per_task.png", "rank_sweep.pdf", "rank_sweep.png"]
    printed = capsys.readouterr().out
    cart_line = next(line for line in printed.splitlines() if line.startswith("| CART "))
    assert re.search(r"\| 79\.0 \| 73\.0 \| 92\.0 \| 81\.3 \|  \|  \| lam=1\.5, rank=0\.08 \|$", cart_line)
    assert "normalized" not in printed.lower()
    assert "published: none for this model and task list" in printed


def test_cli_aggregate_with_correctness_fills_the_intervals(inputs: dict[str, Path], tmp_path: Path) -> None:
    correct = write_synthetic_correctness(inputs)
    assert main([*_aggregate_argv(inputs, tmp_path), "--correct", *map(str, correct)]) == 0
    table = pd.read_csv(tmp_path / "tables" / "main.csv")
    assert table[[*INTERVALS, *CART_DIFFERENCE]].notna().all().all()
    assert "vs CART" in (tmp_path / "tables" / "main.md").read_text()


def test_cli_bad_input_reports_error_and_writes_nothing(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _drop_column(pd.read_csv(inputs["cart"])).to_csv(inputs["cart"], index=False)
    assert main(_aggregate_argv(inputs, tmp_path / "out")) == 2
    assert "cart.csv: missing column(s) 'accuracy'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_variant_entries_get_their_own_display_name():
    from mergeflow.report.tables import display_name

    assert display_name("cart") == "CART"
    assert display_name("cart@released") == "CART (released)"
    assert display_name("new_method@x") == "new_method (x)"


def test_adaptive_methods_form_their_own_group_with_the_no_labels_note(inputs: dict[str, Path], tmp_path: Path):
    # As adapt-eval records it: every setting, most at the method's defaults.
    setting = _setting(steps=50, batch_size=16, lr=0.001, betas=[0.9, 0.999], granularity="layer", init=0.3,
                       clamp=[0.0, 1.0], tasks_per_pass=None)  # fmt: skip
    rows = _method_rows("adamerging", {setting: [0.71, 0.66, 0.86]}, {setting: [0.73, 0.65, 0.85]}, setting,
                        [setting], {setting: {}})  # fmt: skip
    adaptive = _write_csv(tmp_path / "adamerging.csv", rows)
    paths = method_paths(inputs)
    results = load_method_results([paths[0], adaptive, *paths[1:]])  # listed second, shown after every static merge
    table = main_table(load_reference(inputs["reference"]), results, TASKS)
    expected = ["zero-shot", "individual", "weight averaging", "task arithmetic", "CART", "low-rank TA", "AdaMerging"]
    assert list(table.loc[table["metric"] == "accuracy", "method"]) == expected
    assert _row(table, "accuracy", "AdaMerging")["average"] == pytest.approx((73 + 65 + 85) / 3)
    assert _row(table, "accuracy", "AdaMerging")["setting"] == '{"steps": 50}'  # only what differs from defaults
    csv, markdown, latex = write_main_table(table, tmp_path / "tables")
    lines = markdown.read_text().splitlines()
    group = lines.index("| *test-time adaptation* |" + "  |" * (len(TASKS) + 2))
    assert lines[group - 1].startswith("| low-rank TA |") and lines[group + 1].startswith("| AdaMerging |")
    assert markdown.read_text().count("labels are never read during adaptation") == 2
    assert r"\emph{test-time adaptation}" in latex.read_text() and "labels are never read" in latex.read_text()
    plain = write_main_table(main_table(load_reference(inputs["reference"]), load_method_results(paths), TASKS),
                             tmp_path / "plain")[1].read_text()  # fmt: skip
    assert "test-time adaptation" not in plain and "labels are never read" not in plain


def test_the_newer_methods_are_reference_lines_of_the_rank_sweep(inputs: dict[str, Path], tmp_path: Path) -> None:
    from mergeflow.report.figures import reference_lines

    reference, results = load_reference(inputs["reference"]), load_method_results(method_paths(inputs))
    emr = results[results["method"] == "task_arithmetic"].assign(method="emr")
    wudi = results[results["method"] == "weight_averaging"].assign(method="wudi")
    with_newer = pd.concat([results, emr, wudi], ignore_index=True)
    lines = {line.label: line for line in reference_lines(reference, with_newer, TASKS)}
    assert lines["EMR"].average_accuracy == lines["task arithmetic"].average_accuracy and lines["EMR"].style == "emr"
    assert lines["WUDI"].average_accuracy == lines["weight averaging"].average_accuracy
    assert "WUDI" not in {line.label for line in reference_lines(reference, results, TASKS)}
    assert all(path.stat().st_size > 0 for path in plot_rank_sweep(reference, with_newer, tmp_path / "rank_sweep"))


# --- the multi-task reference row -------------------------------------------------------------------------------------


@pytest.fixture
def with_multitask(inputs: dict[str, Path]) -> dict[str, Path]:
    """The synthetic suite whose reference.csv also has the multi-task encoder's column."""
    return {**inputs, "reference": _write_reference(inputs["reference"].parent, multitask=True)}


def test_the_multitask_row_follows_individual_and_changes_no_other_number(
    with_multitask: dict[str, Path], inputs: dict[str, Path]
) -> None:
    results = load_method_results(method_paths(with_multitask))
    correctness = read_correctness_files(write_synthetic_correctness(with_multitask))
    published = {"multitask": PublishedNumber(88.9, "source M")}
    table = main_table(load_reference(with_multitask["reference"]), results, TASKS, published, correctness,
                       resamples=400)  # fmt: skip
    order = ["zero-shot", "individual", "multi-task", "weight averaging", "task arithmetic", "CART", "low-rank TA"]
    for metric in ("accuracy", "normalized_accuracy"):
        assert list(table.loc[table["metric"] == metric, "method"]) == order
    added = ["multitask_normalized", "multitask_normalized_ci_low", "multitask_normalized_ci_high"]
    assert list(table.columns) == [
        "metric", "method", "setting", *TASKS, *TRAILING, *INTERVALS, *CART_DIFFERENCE, "group", *added
    ]  # fmt: skip
    absolute, normalized = _row(table, "accuracy", "multi-task"), _row(table, "normalized_accuracy", "multi-task")
    assert absolute[TASKS].tolist() == pytest.approx([75.0, 85.0, 96.0]) and absolute["published"] == 88.9
    assert absolute["difference"] == pytest.approx((75 + 85 + 96) / 3 - 88.9) and absolute["group"] == ""
    assert normalized[TASKS].tolist() == pytest.approx([75 / 0.80, 85 / 0.90, 96 / 0.99])
    # Without the column, the same inputs give the table every other row and column of this one, number for number.
    _write_reference(inputs["reference"].parent)
    plain_correctness = read_correctness_files(write_synthetic_correctness(inputs))
    plain = main_table(load_reference(inputs["reference"]), results, TASKS, published, plain_correctness,
                       resamples=400)  # fmt: skip
    kept = table[table["method"] != "multi-task"].drop(columns=added).reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, plain, check_exact=True)


def test_every_normalized_row_is_also_normalized_to_the_multitask_model(with_multitask: dict[str, Path]) -> None:
    correctness = read_correctness_files(write_synthetic_correctness(with_multitask))
    reference, results = load_reference(with_multitask["reference"]), load_method_results(method_paths(with_multitask))
    table = main_table(reference, results, TASKS, None, correctness, resamples=400)
    assert table.loc[table["metric"] == "accuracy", "multitask_normalized"].isna().all()
    cart = _row(table, "accuracy", "CART")
    expected = 100 * np.mean([cart[task] / 100 / accuracy for task, accuracy in zip(TASKS, MULTITASK["test"])])
    assert _row(table, "normalized_accuracy", "CART")["multitask_normalized"] == pytest.approx(expected)
    own = _row(table, "normalized_accuracy", "multi-task")
    assert own[["multitask_normalized", "multitask_normalized_ci_low", "multitask_normalized_ci_high"]].tolist() == [
        100.0, 100.0, 100.0
    ]  # fmt: skip
    # The interval: the ratio to the multi-task model on each resample of the shared draws, averaged over tasks.
    order = ["zero-shot", "individual", "multi-task", "weight_averaging", "task_arithmetic", "cart", "lowrank_ta"]
    matrices = [np.stack([correctness.rows[row][task] for row in order], axis=1) for task in TASKS]
    samples = resampled_accuracies(matrices, resamples=400)
    ratios = (100.0 * samples / samples[:, [order.index("multi-task")], :]).mean(axis=2)
    rows = table[table["metric"] == "normalized_accuracy"]
    assert rows["multitask_normalized_ci_low"].tolist() == pytest.approx(np.percentile(ratios, 2.5, axis=0).tolist())
    assert rows["multitask_normalized_ci_high"].tolist() == pytest.approx(np.percentile(ratios, 97.5, axis=0).tolist())
    assert (rows["multitask_normalized_ci_low"] <= rows["multitask_normalized"]).all()
    assert (rows["multitask_normalized"] <= rows["multitask_normalized_ci_high"]).all()


def test_markdown_and_latex_show_the_multitask_row_and_its_normalization(
    with_multitask: dict[str, Path], inputs: dict[str, Path], tmp_path: Path
) -> None:
    correctness = read_correctness_files(write_synthetic_correctness(with_multitask))
    reference, results = load_reference(with_multitask["reference"]), load_method_results(method_paths(with_multitask))
    table = main_table(reference, results, TASKS, None, correctness, resamples=400)
    csv, markdown, latex = write_main_table(table, tmp_path / "tables")
    text, tex = markdown.read_text(), latex.read_text()
    absolute = text.split("## Normalized")[0]
    normalized = text.split("## Normalized")[1]
    header = next(line for line in absolute.splitlines() if line.startswith("| method "))
    assert "normalized to multi-task" not in header and "| multi-task | 75.0 | 85.0 | 96.0 |" in absolute
    assert "| average | vs CART | normalized to multi-task | hyper-parameters |" in normalized
    cart = pd.read_csv(csv).query("metric == 'normalized_accuracy' and method == 'CART'").iloc[0]
    cell = (
        f"{cart.multitask_normalized:.1f} [{cart.multitask_normalized_ci_low:.1f}, "
        f"{cart.multitask_normalized_ci_high:.1f}]"
    )
    assert f" | {cell} | lam=1.5, rank=0.08 |" in next(line for line in normalized.splitlines() if "| CART |" in line)
    assert "normalized to multi-task: the row's accuracy divided by the multi-task model's" in text
    # LaTeX: one more column on the normalized tabular, and the reference rows' rule under the multi-task row.
    assert r"\begin{tabular}{l" + "r" * (len(TASKS) + 3) + "l}" in tex  # tasks, average, vs CART, multi-task
    assert tex.count("multi-task & 75.0 & 85.0 & 96.0") == 1
    for tabular in tex.split(r"\end{tabular}")[:2]:
        lines = tabular.splitlines()
        row = next(index for index, line in enumerate(lines) if line.startswith("multi-task &"))
        assert lines[row + 1] == r"\midrule" and lines[row - 1].startswith("individual &")
    _write_reference(inputs["reference"].parent)
    plain = main_table(load_reference(inputs["reference"]), results, TASKS)
    assert "multi-task" not in write_main_table(plain, tmp_path / "plain")[1].read_text()


def test_the_multitask_model_is_a_reference_line_and_a_grey_bar(with_multitask: dict[str, Path], tmp_path: Path):
    from mergeflow.report.figures import reference_lines
    from mergeflow.report.per_task import per_task_accuracies, row_colour
    from mergeflow.report.style import MID_GREY

    reference, results = load_reference(with_multitask["reference"]), load_method_results(method_paths(with_multitask))
    lines = {line.label: line.average_accuracy for line in reference_lines(reference, results, TASKS)}
    assert lines["multi-task"] == pytest.approx(100 * np.mean(MULTITASK["test"]))
    assert list(lines) == ["individual", "multi-task", "task arithmetic", "weight averaging", "zero-shot"]
    plain = load_reference(with_multitask["reference"]).drop(columns="multitask")
    assert "multi-task" not in {line.label for line in reference_lines(plain, results, TASKS)}
    table = main_table(reference, results, TASKS)
    assert per_task_accuracies(table).loc["multi-task", "average"] == pytest.approx(100 * np.mean(MULTITASK["test"]))
    assert row_colour("multi-task") == MID_GREY
    assert main([*_aggregate_argv(with_multitask, tmp_path)]) == 0
    for stem in ("rank_sweep", "per_task"):
        assert (tmp_path / "figures" / f"{stem}.png").stat().st_size > 0
    assert "| multi-task |" in (tmp_path / "tables" / "main.md").read_text()
