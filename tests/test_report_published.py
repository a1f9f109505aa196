"""Published numbers: the packaged reference CSV, when its numbers apply, and the published column end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from mergeflow.commands.report import main
from mergeflow.evaluation.results import load_method_results, load_reference
from mergeflow.image_tasks.registry import TASKS_8, TASKS_14
from mergeflow.io import InputError
from mergeflow.report.published import (
    PublishedNumber,
    RunExperts,
    experts_notes,
    load_published,
    packaged_published_path,
    published_averages,
    published_for,
    run_experts,
)
from mergeflow.report.tables import main_table, write_main_table

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
    # 9 methods of the authors' table for 2 models x 3 task counts, plus TSV-M, RegMean and Fisher on ViT-B-32
    # (CART paper), plus the Iso paper's TSV-M (the 6 cells the CART paper lacks), Iso-C and Iso-CTS for 3 models x
    # 3 task counts, plus the newer methods' own papers and FusionBench (8 tasks), plus the CART paper's multi-task
    # learning row (ViT-B-32, 8 tasks).
    assert len(published) == 9 * 6 + 3 + 2 + 6 + 9 + 9 + 7 + 1
    cart_paper = published["source"].str.contains("arXiv 2412.12153")
    iso_paper = published["source"].str.contains("arXiv 2502.04959")
    assert not (cart_paper & iso_paper).any() and iso_paper.sum() == 24 and cart_paper.sum() == 9 * 6 + 3 + 2 + 1


def test_the_newer_methods_rows_keep_their_source_and_experts(published: pd.DataFrame) -> None:
    rows = published.set_index(["model", "num_tasks", "method"])
    expected = {
        ("ViT-B-32", 8, "regmean"): (71.8, "task_vectors", "arXiv 2412.12153"),
        ("ViT-B-32", 8, "fisher"): (68.3, "task_vectors", "arXiv 2412.12153"),
        ("ViT-B-32", 8, "wudi"): (85.2, "task_vectors", "arXiv 2503.08099"),
        ("ViT-L-14", 8, "wudi"): (92.6, "task_vectors", "arXiv 2503.08099"),
        ("ViT-B-32", 8, "emr"): (88.7, "task_vectors", "arXiv 2405.17461"),
        ("ViT-B-16", 8, "emr"): (91.3, "emr_authors", "arXiv 2405.17461"),
        ("ViT-L-14", 8, "emr"): (93.7, "task_vectors", "arXiv 2405.17461"),
        ("ViT-B-32", 8, "regmean_plusplus"): (84.4, "fusionbench", "TA8.json"),
        ("ViT-B-32", 8, "iso_cts+svc"): (85.6, "fusionbench", "arXiv 2602.05536"),
    }
    for key, (accuracy, experts, source) in expected.items():
        assert rows.loc[key, "average_accuracy"] == accuracy, key
        assert rows.loc[key, "experts"] == experts and source in rows.loc[key, "source"], key
    # a modified merge's number belongs to its entry, not to the method it modifies
    numbers = published_averages(published, "ViT-B-32", TASKS_8)
    assert numbers["iso_cts+svc"].average_accuracy == 85.6 and numbers["iso_cts"].average_accuracy == 86.2
    assert published_for("task_arithmetic+svc", numbers) is None


def test_the_multitask_row_is_shown_and_never_compared_as_ours_is_trained_here(published: pd.DataFrame) -> None:
    rows = published[published["method"] == "multitask"]
    assert rows[["model", "num_tasks", "average_accuracy", "experts"]].values.tolist() == [
        ["ViT-B-32", 8, 88.9, "published_multitask"]
    ]
    assert "multi-task learning (arXiv 2412.12153)" in rows["source"].iloc[0]
    for label in ("task_vectors", "tall_masks", None):
        experts = RunExperts(label, "test")
        number = published_averages(published, "ViT-B-32", TASKS_8, experts)["multitask"]
        assert number.average_accuracy == 88.9 and not number.comparable
        notes = experts_notes({"multitask": number}, experts, ["zeroshot", "individual", "multitask"])
        assert "made with other experts (published_multitask)" in notes[1]


def test_the_iso_papers_rows(published: pd.DataFrame) -> None:
    indexed = published.set_index(["model", "num_tasks", "method"])["average_accuracy"]
    cells = [(model, count) for model in ("ViT-B-32", "ViT-B-16", "ViT-L-14") for count in (8, 14, 20)]
    assert [indexed[(*cell, "iso_cts")] for cell in cells] == [86.2, 81.7, 78.1, 91.1, 86.4, 82.4, 94.7, 91.0, 90.1]
    assert [indexed[(*cell, "iso_c")] for cell in cells] == [86.3, 80.3, 75.5, 90.6, 84.8, 79.6, 94.2, 89.3, 87.6]
    assert [indexed[(*cell, "tsv_m")] for cell in cells] == [85.9, 80.1, 77.1, 89.0, 84.6, 80.6, 93.0, 89.2, 87.7]
    numbers = published_averages(published, "ViT-B-16", TASKS_8)
    assert set(numbers) == {"tsv_m", "iso_c", "iso_cts", "emr"} and numbers["iso_c"].source.startswith("Iso paper")


def test_numbers_apply_to_the_papers_suite_in_any_order(published: pd.DataFrame) -> None:
    numbers = published_averages(published, "ViT-B-32", list(reversed(TASKS_8)))
    assert numbers["cart"] == PublishedNumber(84.7, "CART authors' table (arXiv 2412.12153)", "task_vectors", False)
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
    path.write_text("\n".join(["model,num_tasks,method,average_accuracy,experts,source", *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["ViT-B-32,8,cart,high,none,paper"], r"column 'average_accuracy' has 'high' on line 2; expected an accuracy"),
        (["ViT-B-32,8,cart,184.7,none,paper"], r"column 'average_accuracy' has '184.7' on line 2"),
        (["ViT-B-32,eight,cart,84.7,none,paper"], r"column 'num_tasks' has 'eight' on line 2"),
        (["ViT-B-32,8,cart,84.7,x,paper", "ViT-B-32,8,cart,85.0,x,paper"], r"line 3 repeats a \(model, num_tasks"),
        (["ViT-B-32,8,cart,84.7,x,"], r"line 2 has an empty model, method, experts or source"),
        (["ViT-B-32,8,cart,84.7,,paper"], r"line 2 has an empty model, method, experts or source"),
    ],
)
def test_bad_published_file_names_file_line_and_expectation(tmp_path: Path, rows: list[str], message: str) -> None:
    with pytest.raises(InputError, match=rf"published\.csv: {message}"):
        load_published(_write_published(tmp_path, rows))


def test_published_file_without_a_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "published.csv"
    path.write_text("model,num_tasks,method,average_accuracy,source\nViT-B-32,8,cart,84.7,paper\n")
    with pytest.raises(InputError, match=r"published\.csv: missing column\(s\) 'experts'"):
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
    # No fetch records: our experts are unknown, so only the zero-shot number (no experts) is compared.
    assert absolute.loc["zero-shot", "difference"] == pytest.approx(50.0 - 48.0)
    assert absolute.drop(index="zero-shot")["difference"].isna().all()
    markdown = (tmp_path / "out/tables/main.md").read_text()
    released = next(line for line in markdown.splitlines() if line.startswith("| CART (released) "))
    assert re.search(r"\| 83\.0 \| 84\.7 \|  \| lam=2\.0, rank=0\.12 \|$", released)
    assert "CART authors' table (arXiv 2412.12153)" in markdown


def test_aggregate_without_a_published_model_leaves_the_column_empty(tmp_path: Path) -> None:
    paths = _write_paper8_suite(tmp_path / "eval")
    assert _aggregate(paths, tmp_path / "out") == 0
    table = pd.read_csv(tmp_path / "out/tables/main.csv")
    assert table["published"].isna().all() and table["difference"].isna().all()


def test_aggregate_reads_another_published_file(tmp_path: Path) -> None:
    paths = _write_paper8_suite(tmp_path / "eval")
    custom = _write_published(tmp_path, ["ViT-B-32,8,cart,80.0,none,our re-run"])
    assert _aggregate(paths, tmp_path / "out", "--published-model", "ViT-B-32", "--published", str(custom)) == 0
    absolute = pd.read_csv(tmp_path / "out/tables/main.csv").query("metric == 'accuracy'").set_index("method")
    assert absolute.loc["CART", "published"] == 80.0 and absolute.loc["CART", "published_source"] == "our re-run"
    assert pd.isna(absolute.loc["zero-shot", "published"])


def test_the_packaged_numbers_name_their_experts(published: pd.DataFrame) -> None:
    experts = published.set_index(["model", "num_tasks", "method"])["experts"]
    for model in ("ViT-B-32", "ViT-L-14"):
        assert experts[(model, 8, "cart")] == experts[(model, 8, "individual")] == "task_vectors"
        for count in (14, 20):
            assert experts[(model, count, "cart")] == experts[(model, count, "adamerging")] == "task_vectors+tall_masks"
        assert {experts[(model, count, "zeroshot")] for count in (8, 14, 20)} == {"none"}
    tsv_and_iso = published[published["method"].isin(["tsv_m", "iso_c", "iso_cts"])]
    assert len(tsv_and_iso) == 27 and set(tsv_and_iso["experts"]) == {"tall_masks"}


def _write_record(path: Path, task: str, source: str, experts: str, **coordinates: str) -> Path:
    """What `mergeflow fetch-finetuned` writes beside `<task>.safetensors` (the fields the report reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": "open_clip image encoder", "model": "ViT-B-32", "task": task, "source": source}
    path.write_text(json.dumps({**record, "experts": experts, **coordinates, "sha256": "0" * 64}))
    return path


def test_run_experts_from_fetch_records(tmp_path: Path) -> None:
    commit = "c" * 40
    tall = [
        _write_record(tmp_path / f"tall/{task}.json", task, "tall_masks", "tall_masks", repo_id="nik-dim/tall_masks",
                      revision="main", commit=commit)
        for task in TASKS_8
    ]  # fmt: skip
    experts = run_experts(tall)
    assert experts.label == "tall_masks"
    assert experts.description == (
        f"tall_masks (repo_id nik-dim/tall_masks, revision main, commit {commit}): {', '.join(TASKS_8)}"
    )
    cart = [
        _write_record(tmp_path / f"cart/{task}.json", task, "cart_authors", expert, repo_id="JH-C-k/ViT-B-32",
                      revision="main", commit=commit)
        for task, expert in zip(TASKS_14, ["task_vectors"] * 8 + ["tall_masks"] * 6, strict=True)
    ]  # fmt: skip
    assert run_experts(list(reversed(cart))).label == "task_vectors+tall_masks"
    assert run_experts([]).label is None

    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({"task": "DTD", "source": "tall_masks"}))
    with pytest.raises(InputError, match=r"stale\.json: no experts; expected a record of `mergeflow fetch-finetuned`"):
        run_experts([stale])
    with pytest.raises(InputError, match=r"absent\.json: file not found"):
        run_experts([tmp_path / "absent.json"])


@pytest.mark.parametrize(
    ("label", "compared"),
    [
        ("task_vectors", {"zeroshot", "individual", "weight_averaging", "cart"}),  # the CART table's 8-task experts
        ("tall_masks", {"zeroshot", "tsv_m", "iso_c", "iso_cts"}),  # TSV's and Iso's
        (None, {"zeroshot"}),  # not recorded
    ],
)
def test_only_numbers_made_with_our_experts_are_comparable(
    published: pd.DataFrame, label: str | None, compared: set[str]
) -> None:
    numbers = published_averages(published, "ViT-B-32", TASKS_8, RunExperts(label, "fixture"))
    assert {method for method, number in numbers.items() if number.comparable} & {
        "zeroshot", "individual", "weight_averaging", "cart", "tsv_m", "iso_c", "iso_cts"
    } == compared  # fmt: skip


def test_the_table_compares_like_with_like_and_says_why_not(tmp_path: Path, published: pd.DataFrame) -> None:
    paths = _write_paper8_suite(tmp_path / "eval")
    reference, results = load_reference(paths[0]), load_method_results(paths[1:], tasks=list(TASKS_8))
    experts = RunExperts("tall_masks", "tall_masks (repo_id nik-dim/tall_masks, revision main, commit abc): 8 tasks")
    numbers = published_averages(published, "ViT-B-32", TASKS_8, experts)
    table = main_table(reference, results, TASKS_8, numbers)
    methods = ["zeroshot", "individual", *METHOD_ACCURACY]
    notes = experts_notes(numbers, experts, methods)
    written = write_main_table(table, tmp_path / "tables", title="paper8, ViT-B-32", notes=notes)

    absolute = pd.read_csv(written[0]).query("metric == 'accuracy'").set_index("method")
    assert absolute.loc["zero-shot", "difference"] == pytest.approx(50.0 - 48.0)
    assert absolute.loc["CART", "published"] == 84.7 and pd.isna(absolute.loc["CART", "difference"])
    assert pd.isna(absolute.loc["individual", "difference"])
    assert notes == [
        "Experts of our rows: tall_masks (repo_id nik-dim/tall_masks, revision main, commit abc): 8 tasks.",
        "difference left empty where the published number was made with other experts (task_vectors) than ours "
        "(tall_masks): such numbers are shown, not compared.",
    ]
    markdown, latex = written[1].read_text(), written[2].read_text()
    accuracy_section = markdown.split("## Absolute accuracy")[1].split("## Normalized")[0]
    assert all(f"\n{note}\n" in accuracy_section for note in notes)
    assert all(f"% {note}\n" in latex for note in notes)
    cart = next(line for line in markdown.splitlines() if line.startswith("| CART |"))
    assert re.search(r"\| 85\.0 \| 84\.7 \|  \| lam=2\.0, rank=0\.12 \|$", cart)

    same = RunExperts("task_vectors", "task_vectors (origin drive): 8 tasks")
    numbers = published_averages(published, "ViT-B-32", TASKS_8, same)
    table = main_table(reference, results, TASKS_8, numbers)
    cart_row = table[(table["metric"] == "accuracy") & (table["method"] == "CART")].iloc[0]
    assert cart_row["difference"] == pytest.approx(85.0 - 84.7)
    assert experts_notes(numbers, same, methods) == ["Experts of our rows: task_vectors (origin drive): 8 tasks."]


def test_aggregate_compares_with_numbers_made_with_our_experts(tmp_path: Path) -> None:
    paths = _write_paper8_suite(tmp_path / "eval")
    records = [
        _write_record(tmp_path / f"finetuned/{task}.json", task, "task_vectors", "task_vectors", origin="drive")
        for task in TASKS_8
    ]
    extra = ["--published-model", "ViT-B-32", "--finetuned-records", *map(str, records)]
    assert _aggregate(paths, tmp_path / "out", *extra) == 0
    absolute = pd.read_csv(tmp_path / "out/tables/main.csv").query("metric == 'accuracy'").set_index("method")
    assert absolute.loc["CART", "difference"] == pytest.approx(85.0 - 84.7)
    assert absolute.loc["individual", "difference"] == pytest.approx(90.0 - 90.5)
    markdown = (tmp_path / "out/tables/main.md").read_text()
    assert "Experts of our rows: task_vectors (origin drive): " + ", ".join(TASKS_8) + "." in markdown


def test_aggregate_marks_the_tasks_whose_val_is_not_the_experts(tmp_path: Path) -> None:
    """EuroSAT's val comes from the experts' folders, but their draw is not public: marked; MNIST's is exact."""
    from mergeflow.data import TaskClasses, save_classes
    from mergeflow.image_tasks.registry import TASKS

    data_dirs = []
    for task in TASKS_8:
        source = {"EuroSAT": "folder", "MNIST": "torchvision", "DTD": "folder"}.get(task, "huggingface")
        save_classes(tmp_path / "data" / task, task, TaskClasses(TASKS[task].classnames, TASKS[task].templates),
                     data={"source": source, "commit": "abc", "counts": {}})  # fmt: skip
        data_dirs.append(str(tmp_path / "data" / task))
    paths = _write_paper8_suite(tmp_path / "eval")
    assert _aggregate(paths, tmp_path / "out", "--data-dirs", *data_dirs, "--experts", "tall_masks") == 0
    provenance = pd.read_csv(tmp_path / "out/tables/tasks.csv").set_index("task")
    assert provenance["val_exact"].to_dict() == {task: task in ("MNIST", "DTD") for task in TASKS_8}
    markdown = (tmp_path / "out/tables/main.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| method |"))
    assert "| EuroSAT † |" in header and "| MNIST |" in header and "| DTD |" in header
    assert markdown.count("† val approximate: these tasks' val split is not shown to be the one the tall_masks") == 2
    assert "EuroSAT: the draw behind EuroSAT_splits is not public" in markdown
    latex = (tmp_path / "out/tables/main.tex").read_text()
    assert "EuroSAT †" in latex and "% † val approximate" in latex
    assert "EuroSAT" in pd.read_csv(tmp_path / "out/tables/main.csv").columns  # the CSV keeps plain task names
    assert _aggregate(paths, tmp_path / "ours", "--data-dirs", *data_dirs) == 0
    assert "†" not in (tmp_path / "ours/tables/main.md").read_text()
