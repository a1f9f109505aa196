"""Published numbers: the packaged reference CSV, when its numbers apply, and the published column end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from mergeflow.image_tasks.registry import TASKS_8, TASKS_14
from mergeflow.io import InputError
from mergeflow.report.cli import main
from mergeflow.report.published import (
    PublishedNumber,
    load_published,
    packaged_published_path,
    published_averages,
    published_for,
)

REPO = Path(__file__).resolve().parents[1]
# README's published table: column header → (model, task count); row label → mergeflow method name.
README_COLUMNS = {
    "B/32 8": ("ViT-B-32", 8),
    "B/32 14": ("ViT-B-32", 14),
    "B/32 20": ("ViT-B-32", 20),
    "L/14 8": ("ViT-L-14", 8),
    "L/14 14": ("ViT-L-14", 14),
    "L/14 20": ("ViT-L-14", 20),
}
README_ROWS = {
    "zero-shot": "zeroshot",
    "individual": "individual",
    "weight averaging": "weight_averaging",
    "task arithmetic": "task_arithmetic",
    "TIES": "ties",
    "consensus TA": "consensus",
    "CART": "cart",
}


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    return load_published(packaged_published_path())


def _readme_published_table() -> dict[tuple[str, int, str], float]:
    """The numbers of README.md's table of published averages (the CART authors' table)."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("| method | B/32 8 | B/32 14 | B/32 20 | L/14 8 | L/14 14 | L/14 20 |")
    header = [cell.strip() for cell in lines[start].strip("|").split("|")][1:]
    numbers = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        label, *cells = (cell.strip() for cell in line.strip("|").split("|"))
        for column, cell in zip(header, cells, strict=True):
            model, count = README_COLUMNS[column]
            numbers[(model, count, README_ROWS[label])] = float(cell)
    return numbers


def test_packaged_csv_holds_the_readme_table_and_tsv_m(published: pd.DataFrame) -> None:
    indexed = published.set_index(["model", "num_tasks", "method"])["average_accuracy"]
    readme = _readme_published_table()
    assert len(readme) == 7 * 6
    for key, value in readme.items():
        assert indexed[key] == value, key
    assert indexed[("ViT-B-32", 8, "adamerging_cart")] == 85.8
    assert indexed[("ViT-L-14", 20, "adamerging")] == 86.8
    assert [indexed[("ViT-B-32", count, "tsv_m")] for count in (8, 14, 20)] == [85.9, 80.1, 77.1]
    # 9 methods of the authors' table for 2 models x 3 task counts, plus TSV-M on ViT-B-32 (CART paper), plus
    # the Iso paper's TSV-M (the 6 cells the CART paper lacks), Iso-C and Iso-CTS for 3 models x 3 task counts.
    assert len(published) == 9 * 6 + 3 + 6 + 9 + 9
    cart_paper = published["source"].str.contains("arXiv 2412.12153")
    iso_paper = published["source"].str.contains("arXiv 2502.04959")
    assert (cart_paper ^ iso_paper).all() and iso_paper.sum() == 24


def test_the_iso_papers_rows(published: pd.DataFrame) -> None:
    indexed = published.set_index(["model", "num_tasks", "method"])["average_accuracy"]
    cells = [(model, count) for model in ("ViT-B-32", "ViT-B-16", "ViT-L-14") for count in (8, 14, 20)]
    assert [indexed[(*cell, "iso_cts")] for cell in cells] == [86.2, 81.7, 78.1, 91.1, 86.4, 82.4, 94.7, 91.0, 90.1]
    assert [indexed[(*cell, "iso_c")] for cell in cells] == [86.3, 80.3, 75.5, 90.6, 84.8, 79.6, 94.2, 89.3, 87.6]
    assert [indexed[(*cell, "tsv_m")] for cell in cells] == [85.9, 80.1, 77.1, 89.0, 84.6, 80.6, 93.0, 89.2, 87.7]
    numbers = published_averages(published, "ViT-B-16", TASKS_8)
    assert set(numbers) == {"tsv_m", "iso_c", "iso_cts"} and numbers["iso_c"].source.startswith("Iso paper")


def test_numbers_apply_to_the_papers_suite_in_any_order(published: pd.DataFrame) -> None:
    numbers = published_averages(published, "ViT-B-32", list(reversed(TASKS_8)))
    assert numbers["cart"] == PublishedNumber(84.7, "CART authors' table (arXiv 2412.12153)")
    assert numbers["zeroshot"].average_accuracy == 48.0 and numbers["tsv_m"].average_accuracy == 85.9
    assert published_averages(published, "ViT-L-14", TASKS_14)["cart"].average_accuracy == 88.7


@pytest.mark.parametrize(
    ("model", "tasks"),
    [
        (None, TASKS_8),  # the tiny model, or other pretrained weights
        ("RN50", TASKS_8),  # no published row for this model
        ("ViT-B-32", ["shapes", "colours", "textures", "digits", "counting", "orientation", "position", "sizes"]),
        ("ViT-B-32", [*TASKS_8[:-1], "CIFAR10"]),  # eight tasks, but not the paper's eight
        ("ViT-B-32", TASKS_8[:3]),
    ],
)
def test_no_numbers_outside_the_papers_suites(published: pd.DataFrame, model: str | None, tasks: list[str]) -> None:
    assert published_averages(published, model, tasks) == {}


def test_a_variant_takes_its_own_number_else_its_base_methods() -> None:
    numbers = {"cart": PublishedNumber(84.7, "table"), "adamerging@task_wise": PublishedNumber(71.1, "text")}
    assert published_for("cart@released", numbers) == PublishedNumber(84.7, "table")
    assert published_for("adamerging@task_wise", numbers) == PublishedNumber(71.1, "text")
    assert published_for("adamerging", numbers) is None
    assert published_for("ties", numbers) is None


def _write_published(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "published.csv"
    path.write_text("\n".join(["model,num_tasks,method,average_accuracy,source", *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["ViT-B-32,8,cart,high,paper"], r"column 'average_accuracy' has 'high' on line 2; expected an accuracy"),
        (["ViT-B-32,8,cart,184.7,paper"], r"column 'average_accuracy' has '184.7' on line 2"),
        (["ViT-B-32,eight,cart,84.7,paper"], r"column 'num_tasks' has 'eight' on line 2"),
        (["ViT-B-32,8,cart,84.7,paper", "ViT-B-32,8,cart,85.0,paper"], r"line 3 repeats a \(model, num_tasks"),
        (["ViT-B-32,8,cart,84.7,"], r"line 2 has an empty model, method or source"),
    ],
)
def test_bad_published_file_names_file_line_and_expectation(tmp_path: Path, rows: list[str], message: str) -> None:
    with pytest.raises(InputError, match=rf"published\.csv: {message}"):
        load_published(_write_published(tmp_path, rows))


def test_published_file_without_a_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "published.csv"
    path.write_text("model,num_tasks,method,source\nViT-B-32,8,cart,paper\n")
    with pytest.raises(InputError, match=r"published\.csv: missing column\(s\) 'average_accuracy'"):
        load_published(path)


# A synthetic ViT-B-32 run on the paper's 8 tasks: accuracies are fixed fractions, one setting per method.
ZEROSHOT, INDIVIDUAL = 0.50, 0.90
METHOD_ACCURACY = {"weight_averaging": 0.66, "cart": 0.85, "cart@released": 0.83}


def _write_paper8_suite(directory: Path) -> list[Path]:
    directory.mkdir(parents=True)
    reference = pd.DataFrame(
        [
            {"task": task, "split": split, "zeroshot": ZEROSHOT, "individual": INDIVIDUAL}
            for split in ("val", "test")
            for task in TASKS_8
        ]
    )
    reference.to_csv(directory / "reference.csv", index=False)
    paths = [directory / "reference.csv"]
    for method, accuracy in METHOD_ACCURACY.items():
        rank, lam = ("", "") if method == "weight_averaging" else (0.12, 2.0)
        setting = json.dumps({} if rank == "" else {"lam": lam, "rank": rank})
        rows = [
            {"method": method, "setting": setting, "rank": rank, "lam": lam, "split": split, "task": task,
             "accuracy": accuracy, "normalized_accuracy": accuracy / INDIVIDUAL, "best": True, "best_at_sweep": True}
            for split in ("val", "test")
            for task in TASKS_8
        ]  # fmt: skip
        paths.append(directory / f"{method}.csv")
        pd.DataFrame(rows).to_csv(paths[-1], index=False)
    return paths


def _aggregate(paths: list[Path], out: Path, *extra: str) -> int:
    return main(
        ["aggregate", "--reference", str(paths[0]), "--results", *map(str, paths[1:]), "--tasks", *TASKS_8,
         "--tables-dir", str(out / "tables"), "--figures-dir", str(out / "figures"), "--title", "paper8, ViT-B-32",
         *extra]
    )  # fmt: skip


def test_aggregate_fills_the_published_column_for_a_paper_suite(tmp_path: Path) -> None:
    paths = _write_paper8_suite(tmp_path / "eval")
    assert _aggregate(paths, tmp_path / "out", "--published-model", "ViT-B-32") == 0
    table = pd.read_csv(tmp_path / "out/tables/main.csv")
    absolute = table[table["metric"] == "accuracy"].set_index("method")
    expected = {
        "zero-shot": (50.0, 48.0),
        "individual": (90.0, 90.5),
        "weight averaging": (66.0, 65.9),
        "CART": (85.0, 84.7),
        "CART (released)": (83.0, 84.7),  # the variant compares with the authors' CART row
    }
    for method, (ours, reported) in expected.items():
        assert absolute.loc[method, "average"] == pytest.approx(ours)
        assert absolute.loc[method, "published"] == reported
        assert absolute.loc[method, "difference"] == pytest.approx(ours - reported)
    markdown = (tmp_path / "out/tables/main.md").read_text()
    released = next(line for line in markdown.splitlines() if line.startswith("| CART (released) "))
    assert re.search(r"\| 83\.0 \| 84\.7 \| -1\.7 \| lam=2\.0, rank=0\.12 \|$", released)
    assert "CART authors' table (arXiv 2412.12153)" in markdown


def test_aggregate_without_a_published_model_leaves_the_column_empty(tmp_path: Path) -> None:
    paths = _write_paper8_suite(tmp_path / "eval")
    assert _aggregate(paths, tmp_path / "out") == 0
    table = pd.read_csv(tmp_path / "out/tables/main.csv")
    assert table["published"].isna().all() and table["difference"].isna().all()


def test_aggregate_reads_another_published_file(tmp_path: Path) -> None:
    paths = _write_paper8_suite(tmp_path / "eval")
    custom = _write_published(tmp_path, ["ViT-B-32,8,cart,80.0,our re-run"])
    assert _aggregate(paths, tmp_path / "out", "--published-model", "ViT-B-32", "--published", str(custom)) == 0
    absolute = pd.read_csv(tmp_path / "out/tables/main.csv").query("metric == 'accuracy'").set_index("method")
    assert absolute.loc["CART", "published"] == 80.0 and absolute.loc["CART", "published_source"] == "our re-run"
    assert pd.isna(absolute.loc["zero-shot", "published"])
