"""λ × rank heatmap, per-task bars and task-count scaling: values from synthetic results, files, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import SWEEP_RANKS, TASKS, method_paths, write_synthetic_suite

from mergeflow.commands.report import main
from mergeflow.evaluation.results import load_method_results, load_reference
from mergeflow.io import InputError
from mergeflow.report import main_table
from mergeflow.report.heatmap import lambda_rank_grid, plot_lambda_rank_heatmap
from mergeflow.report.per_task import CART_COLOUR, MERGE_COLOUR, per_task_accuracies, plot_per_task, row_colour
from mergeflow.report.scaling import plot_scaling, scaling_latex, scaling_markdown, scaling_table, write_scaling_table
from mergeflow.report.style import GREY, LIGHT_GREY


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    return write_synthetic_suite(tmp_path / "eval")


@pytest.fixture
def results(inputs: dict[str, Path]) -> pd.DataFrame:
    return load_method_results(method_paths(inputs))


def _assert_valid_and_identical(first: list[Path], second: list[Path]) -> None:
    assert [path.suffix for path in first] == [".png", ".pdf"]
    png, pdf = (path.read_bytes() for path in first)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png.endswith(b"IEND\xaeB`\x82")
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF") and b"CreationDate" not in pdf
    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]


def _synthetic_val_average(rank: float, lam: float, best_rank: float) -> float:
    """test_report's sweep grid: val accuracies 0.65 + p + 0.01 λ, 0.60 + p, 0.78 + p with p its rank's peak."""
    peak = 0.15 if rank == best_rank else 0.05 * rank
    return 100 * (0.65 + 0.60 + 0.78 + 3 * peak + 0.01 * lam) / 3


def test_lambda_rank_grid_holds_every_val_average(results: pd.DataFrame) -> None:
    grid = lambda_rank_grid(results, "cart", TASKS)
    assert list(grid.accuracy.index) == SWEEP_RANKS and list(grid.accuracy.columns) == [1.0, 1.5]
    for rank in SWEEP_RANKS:
        for lam in (1.0, 1.5):
            assert grid.accuracy.loc[rank, lam] == pytest.approx(_synthetic_val_average(rank, lam, best_rank=0.08))
    assert grid.selected == (0.08, 1.5)
    assert grid.selected_per_rank == tuple((rank, 1.5) for rank in SWEEP_RANKS)


def test_lambda_rank_grid_rejects_methods_without_a_grid(results: pd.DataFrame) -> None:
    with pytest.raises(InputError, match=r"task_arithmetic\.csv: val rows without a rank or lam"):
        lambda_rank_grid(results, "task_arithmetic", TASKS)
    with pytest.raises(InputError, match="no val rows for ties"):
        lambda_rank_grid(results, "ties", TASKS)


def test_lambda_rank_grid_rejects_two_settings_in_one_cell(inputs: dict[str, Path]) -> None:
    frame = pd.read_csv(inputs["cart"])
    # A second hyper-parameter varied on top of rank and lam: two settings land in each (rank, lam) cell.
    other = frame.assign(setting=frame["setting"].map(lambda s: json.dumps({**json.loads(s), "k": 2})), best=False)
    pd.concat([frame, other.assign(best_at_sweep=False)]).to_csv(inputs["cart"], index=False)
    with pytest.raises(InputError, match=r"cart\.csv: several settings at rank 0, lam 1 .*one setting per"):
        lambda_rank_grid(load_method_results([inputs["cart"]]), "cart", TASKS)


def test_heatmap_files_are_valid_and_byte_identical(results: pd.DataFrame, tmp_path: Path) -> None:
    grid = lambda_rank_grid(results, "cart", TASKS)
    first = plot_lambda_rank_heatmap(grid, tmp_path / "a" / "cart_lambda_rank", title="ViT-B-32, 3 tasks")
    second = plot_lambda_rank_heatmap(grid, tmp_path / "b" / "cart_lambda_rank", title="ViT-B-32, 3 tasks")
    _assert_valid_and_identical(first, second)


def test_cli_lambda_rank(inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["lambda-rank", "--results", str(inputs["lowrank_ta"]), "--tasks", *TASKS,
            "--figures-dir", str(tmp_path / "figures")]  # fmt: skip
    assert main(argv) == 0
    figures = sorted(path.name for path in (tmp_path / "figures").iterdir())
    assert figures == ["lowrank_ta_lambda_rank.pdf", "lowrank_ta_lambda_rank.png"]
    assert "lowrank_ta: val-selected rank 0.04, lam 0.3" in capsys.readouterr().out


@pytest.fixture
def table(inputs: dict[str, Path], results: pd.DataFrame) -> pd.DataFrame:
    return main_table(load_reference(inputs["reference"]), results, TASKS)


def test_per_task_accuracies_are_the_tables_absolute_rows(table: pd.DataFrame) -> None:
    accuracies = per_task_accuracies(table)
    methods = ["zero-shot", "individual", "weight averaging", "task arithmetic", "CART", "low-rank TA"]
    assert list(accuracies.index) == methods
    assert list(accuracies.columns) == ["average", *TASKS]
    assert accuracies.loc["CART"].tolist() == pytest.approx([(79 + 73 + 92) / 3, 79.0, 73.0, 92.0])
    assert accuracies.loc["zero-shot", "Cars"] == pytest.approx(50.0)


def test_per_task_colours_group_references_merges_and_cart() -> None:
    assert [row_colour(name) for name in ("zero-shot", "individual")] == [LIGHT_GREY, GREY]
    assert row_colour("CART") == row_colour("CART (released)") == CART_COLOUR
    assert row_colour("low-rank TA") == row_colour("TSV-M") == MERGE_COLOUR


def test_per_task_figure_is_valid_and_byte_identical(table: pd.DataFrame, tmp_path: Path) -> None:
    first = plot_per_task(table, tmp_path / "a" / "per_task", title="ViT-B-32, 3 tasks")
    second = plot_per_task(table, tmp_path / "b" / "per_task", title="ViT-B-32, 3 tasks")
    _assert_valid_and_identical(first, second)


# Task-count scaling: three suites' main tables with made-up averages; CART and zero-shot have published numbers.
SCALING_AVERAGES = {
    8: {"zero-shot": 48.5, "individual": 90.0, "weight averaging": 66.0, "CART": 84.0},
    14: {"zero-shot": 57.0, "individual": 89.0, "weight averaging": 64.0, "CART": 80.0, "TSV-M": 79.0},
    20: {"zero-shot": 56.5, "individual": 90.5, "weight averaging": 60.0, "CART": 76.0},
}
SCALING_PUBLISHED = {8: {"zero-shot": 48.0, "CART": 84.7}, 14: {"CART": 79.5}, 20: {"CART": 76.3}}


def _write_suite_table(root: Path, num_tasks: int) -> Path:
    rows = []
    for method, average in SCALING_AVERAGES[num_tasks].items():
        published = SCALING_PUBLISHED[num_tasks].get(method, np.nan)
        row = {"metric": "accuracy", "method": method, "setting": ""}
        row.update({f"task{index}": average for index in range(num_tasks)})
        row.update(average=average, published=published, difference=average - published, published_source="paper")
        rows.append(row)
    path = root / f"paper{num_tasks}" / "ViT-B-32" / "tables" / "main.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def suite_tables(tmp_path: Path) -> list[Path]:
    # Given out of order: the scaling table sorts by task count.
    return [_write_suite_table(tmp_path / "results", count) for count in (14, 8, 20)]


def test_scaling_table_rows(suite_tables: list[Path]) -> None:
    scaling = scaling_table(suite_tables)
    assert list(pd.unique(scaling["method"])) == ["zero-shot", "individual", "weight averaging", "CART", "TSV-M"]
    cart = scaling[scaling["method"] == "CART"]
    assert cart["num_tasks"].tolist() == [8, 14, 20] and cart["suite"].tolist() == ["paper8", "paper14", "paper20"]
    assert cart["average"].tolist() == [84.0, 80.0, 76.0]
    assert cart["difference"].tolist() == pytest.approx([84.0 - 84.7, 80.0 - 79.5, 76.0 - 76.3])
    assert scaling.loc[scaling["method"] == "TSV-M", "num_tasks"].tolist() == [14]
    zero_shot = scaling[scaling["method"] == "zero-shot"]
    assert zero_shot["published"].isna().tolist() == [False, True, True]


def test_scaling_markdown_and_latex_cells_are_the_csv_rounded(suite_tables: list[Path], tmp_path: Path) -> None:
    written = write_scaling_table(scaling_table(suite_tables), tmp_path / "scaling", title="ViT-B-32")
    csv = pd.read_csv(written[0]).set_index(["method", "num_tasks"])[["average", "published", "difference"]]
    markdown, latex = written[1].read_text(), written[2].read_text()
    markdown_rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("|")][2:]
    latex_rows = [line.removesuffix(r"\\").split("&") for line in latex.splitlines() if line.count("&") == 9]
    latex_rows = [row for row in latex_rows if row[0].strip() != "Method"]
    for rendered in (markdown_rows, latex_rows):
        cells = {row[0].strip(): [cell.strip() for cell in row[1:]] for row in rendered}
        assert list(cells) == ["zero-shot", "individual", "weight averaging", "CART", "TSV-M"]
        for method, values in cells.items():
            expected = []
            for count in (8, 14, 20):
                found = (method, count) in csv.index
                average, published, difference = csv.loc[(method, count)] if found else (np.nan,) * 3
                expected += [
                    "" if pd.isna(average) else f"{average:.1f}",
                    "" if pd.isna(published) else f"{published:.1f}",
                    "" if pd.isna(difference) else f"{difference:+.1f}",
                ]
            assert values == expected, method
    assert "| CART | 84.0 | 84.7 | -0.7 | 80.0 | 79.5 | +0.5 | 76.0 | 76.3 | -0.3 |" in markdown
    assert r"\cmidrule(lr){2-4}\cmidrule(lr){5-7}\cmidrule(lr){8-10}" in latex
    assert scaling_markdown(scaling_table(suite_tables)).startswith("Average absolute test accuracy")
    assert scaling_latex(scaling_table(suite_tables), "ViT-B-32").startswith("% ViT-B-32\n")


def test_scaling_needs_two_distinct_task_counts(suite_tables: list[Path]) -> None:
    with pytest.raises(InputError, match="at least two suites, got 1"):
        scaling_table(suite_tables[:1])
    with pytest.raises(InputError, match="several tables with 14 tasks"):
        scaling_table([suite_tables[0], suite_tables[0]])


def test_scaling_figure_is_valid_and_byte_identical(suite_tables: list[Path], tmp_path: Path) -> None:
    scaling = scaling_table(suite_tables)
    first = plot_scaling(scaling, tmp_path / "a" / "task_count_scaling", title="ViT-B-32")
    second = plot_scaling(scaling, tmp_path / "b" / "task_count_scaling", title="ViT-B-32")
    _assert_valid_and_identical(first, second)


def test_cli_scaling(suite_tables: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scaling"
    assert main(["scaling", "--tables", *map(str, suite_tables), "--out-dir", str(out), "--title", "ViT-B-32"]) == 0
    names = sorted(path.name for path in out.iterdir())
    assert names == [f"task_count_scaling.{ext}" for ext in ("csv", "md", "pdf", "png", "tex")]
    assert "| CART | 84.0 | 84.7 | -0.7 |" in capsys.readouterr().out
    assert main(["scaling", "--tables", "--out-dir", str(tmp_path / "none")]) == 2
    assert "at least two suites, got 0" in capsys.readouterr().err
