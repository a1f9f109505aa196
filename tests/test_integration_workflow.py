"""Run the real Snakemake workflow on a reduced tiny benchmark in a temporary directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TASKS = ["colours", "sizes", "position"]
RANKS = [0.0, 0.25, 1.0]

REDUCTIONS = {
    "benchmark": "mini3",
    "model": {
        "name": "mini-clip",
        "architecture": {
            "image_size": 16,
            "patch_size": 8,
            "width": 32,
            "layers": 2,
            "heads": 2,
            "embed_dim": 32,
            "context_length": 12,
            "text_width": 32,
            "text_layers": 1,
            "text_heads": 2,
        },
    },
    "tasks": TASKS,
    "data": {"train_size": 400, "val_size": 40, "test_size": 150},
    "pretrain": {"tasks": TASKS, "images_per_task": 300, "steps": 40, "batch_size": 64, "warmup_steps": 4},
    "finetune": {"steps": 60, "batch_size": 32, "warmup_steps": 5},
    # One more encoder fine-tuned on the three tasks at once: the tables' multi-task row.
    "multitask": True,
    "evaluation": {"batch_size": 256},
    "task_statistics": {"images": 40, "batch_size": 16},
    "methods": {
        "weight_averaging": {},
        "task_arithmetic": {"lam": [0.3, 0.6]},
        "lowrank_ta": {"rank": RANKS, "lam": [0.3, 0.6]},
        "cart": {"rank": RANKS, "lam": [1.0, 2.0]},
        "cart+svc": {"rank": 0.5, "lam": 1.0, "alpha": [0.1, 1.0]},
        "regmean": {},
        "fisher": {},
        "emr": {},
        "adamerging_cart": {"rank": "selected", "lam": "selected", "steps": 3, "batch_size": 8, "lr": 0.01},
    },
}


def deep_update(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = deep_update(base[key], value) if isinstance(value, dict) and key != "methods" else value
    return merged


# A --configfile replaces the default config, so the reduced config is the default with changes applied.
REDUCED_CONFIG = deep_update(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), REDUCTIONS)


# As on a 2-GPU workstation: two GPU jobs at a time, each leasing one of the devices "0" and "1" (this machine
# has no GPU, so the jobs then run on the CPU, but the leases are real).
GPU_DEVICES = ("0", "1")
GPU_RULES = ("pretrain", "build_head", "finetune", "finetune_multitask", "task_statistics", "evaluate_reference",
             "decompose", "merge_eval", "adapt_eval")  # fmt: skip


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"), "--cores", "2", "--resources", f"gpu={len(GPU_DEVICES)}", *args,
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "SLURM_JOB_ID"}
    env["CUDA_VISIBLE_DEVICES"] = ",".join(GPU_DEVICES)
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("mergeflow") is None:
        pytest.fail("the `mergeflow` command is not on PATH: install the package (pip install -e .) first")
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "config.yaml").write_text(yaml.safe_dump(REDUCED_CONFIG))
    run = snakemake(workdir)
    assert run.returncode == 0, run.stderr[-5000:]
    return workdir


def suite(workdir: Path) -> Path:
    return workdir / "results" / "mini3" / "mini-clip"


def test_every_artefact_exists(finished_run: Path) -> None:
    results = finished_run / "results"
    expected = [
        results / "models/mini-clip" / name for name in ("pretrained.safetensors", "text.safetensors", "model.json")
    ]
    for task in TASKS:
        expected += [
            results / "data" / task / "classnames.json",
            results / "heads/mini-clip" / f"{task}.safetensors",
            results / "finetuned/mini-clip" / f"{task}.safetensors",
            *(results / "statistics/mini-clip" / task / f"{kind}.safetensors" for kind in ("grams", "fisher")),
        ]
        expected += [
            results / "data" / task / f"{split}_{kind}.npy"
            for split in ("train", "val", "test")
            for kind in ("images", "labels")
        ]
    expected += [suite(finished_run) / "eval" / f"{m}.{kind}" for m in REDUCED_CONFIG["methods"]
                 for kind in ("csv", "correct.safetensors")]  # fmt: skip
    expected += [suite(finished_run) / "eval" / "reference.correct.safetensors"]
    expected += [results / "finetuned/mini-clip/multitask/mini3.safetensors"]
    expected += [results / "svd/mini-clip/mini3" / f"{kind}.safetensors" for kind in ("centered", "original")]
    expected += [suite(finished_run) / "tables" / name for name in ("main.csv", "main.md", "main.tex", "spectrum.csv")]
    figures = ("rank_sweep", "per_task", "cart_lambda_rank", "spectrum_energy", "spectrum_error_interference",
               "adamerging_cart_coefficients")  # fmt: skip
    expected += [suite(finished_run) / "figures" / f"{stem}.{ext}" for stem in figures for ext in ("png", "pdf")]
    missing = [str(p.relative_to(finished_run)) for p in expected if not p.is_file() or p.stat().st_size == 0]
    assert missing == []
    leftovers = [str(p) for p in results.rglob("*.tmp")]
    assert leftovers == []
    logs = list((results / "logs").rglob("*.log"))
    # pretrain; prepare_data, build_head, finetune and two task_statistics per task; finetune_multitask;
    # evaluate_reference; decompose x 2; merge_eval or adapt_eval per method; aggregate, lambda_rank (cart),
    # spectrum; the adaptive method's coefficient figure.
    assert len(logs) == 1 + 5 * len(TASKS) + 1 + 1 + 2 + len(REDUCED_CONFIG["methods"]) + 3 + 1


def test_finetuning_beats_zero_shot_on_every_task(finished_run: Path) -> None:
    reference = pd.read_csv(suite(finished_run) / "eval" / "reference.csv")
    test = reference[reference["split"] == "test"].set_index("task")
    assert sorted(test.index) == sorted(TASKS)
    for task in TASKS:
        assert test.loc[task, "individual"] > test.loc[task, "zeroshot"], task


def test_the_multitask_encoder_is_a_reference_row_with_its_per_image_correctness(finished_run: Path) -> None:
    from mergeflow.evaluation.correctness import load_correctness

    log = (finished_run / "results/logs/finetune_multitask/mini-clip/mini3.log").read_text()
    # 3 tasks × finetune.steps optimizer steps, no shipped encoder for this benchmark (the default's folder is kept)
    assert "over 180 steps" in log and "ships no encoder for 'mini3'" in log
    reference = pd.read_csv(suite(finished_run) / "eval" / "reference.csv")
    assert list(reference.columns) == ["task", "split", "zeroshot", "individual", "multitask"]
    test = reference[reference["split"] == "test"].set_index("task")
    assert test["multitask"].mean() > test["zeroshot"].mean()
    correct = load_correctness(suite(finished_run) / "eval" / "reference.correct.safetensors")
    assert sorted(correct) == ["individual", "multi-task", "zero-shot"]
    assert {task: correct["multi-task"][task].mean() for task in TASKS} == pytest.approx(
        test["multitask"].to_dict(), abs=1e-12
    )
    table = pd.read_csv(suite(finished_run) / "tables" / "main.csv")
    absolute = table[table["metric"] == "accuracy"]
    assert list(absolute["method"])[:3] == ["zero-shot", "individual", "multi-task"]
    assert absolute["group"].fillna("").tolist()[:4] == ["", "", "", "data-free"]
    multitask = absolute.set_index("method").loc["multi-task"]
    assert multitask["average"] == pytest.approx(100 * test["multitask"].mean())
    assert multitask["average_ci_low"] <= multitask["average"] <= multitask["average_ci_high"]
    normalized = table[table["metric"] == "normalized_accuracy"].set_index("method")
    assert normalized.loc["multi-task", "multitask_normalized"] == pytest.approx(100.0)
    assert normalized["multitask_normalized"].notna().all() and absolute["multitask_normalized"].isna().all()
    assert "| normalized to multi-task |" in (suite(finished_run) / "tables" / "main.md").read_text()


def test_cart_at_rank_zero_and_full_equals_weight_averaging(finished_run: Path) -> None:
    eval_dir = suite(finished_run) / "eval"
    averaging = pd.read_csv(eval_dir / "weight_averaging.csv")
    cart = pd.read_csv(eval_dir / "cart.csv")
    for split in ("val", "test"):
        expected = averaging[averaging["split"] == split].set_index("task")["accuracy"].sort_index()
        for rank in (0.0, 1.0):
            rows = cart[(cart["split"] == split) & (cart["rank"] == rank)]
            assert len(rows) > 0, (split, rank)
            for _, group in rows.groupby("setting"):
                got = group.set_index("task")["accuracy"].sort_index()
                pd.testing.assert_series_equal(got, expected, check_exact=True)


def test_table_rows_match_the_evaluations(finished_run: Path) -> None:
    table = pd.read_csv(suite(finished_run) / "tables" / "main.csv")
    absolute = table[table["metric"] == "accuracy"].set_index("method")
    cart = pd.read_csv(suite(finished_run) / "eval" / "cart.csv")
    best = cart[cart["best"] & (cart["split"] == "test")].set_index("task")["accuracy"]
    for task in TASKS:
        assert absolute.loc["CART", task] == pytest.approx(100 * best[task])
    assert absolute.loc["CART", "average"] == pytest.approx(100 * best.mean())
    # Every number has its bootstrap interval, from the per-image correctness the evaluation jobs stored.
    from mergeflow.evaluation.correctness import load_correctness

    correct = load_correctness(suite(finished_run) / "eval" / "cart.correct.safetensors")["cart"]
    assert {task: correct[task].mean() for task in TASKS} == pytest.approx(best[TASKS].to_dict(), abs=1e-12)
    for column in [*TASKS, "average"]:
        low, high = table[f"{column}_ci_low"], table[f"{column}_ci_high"]
        assert low.notna().all() and (low <= table[column]).all() and (table[column] <= high).all(), column
    assert absolute.loc["CART", ["cart_difference", "cart_difference_ci_low", "cart_difference_ci_high"]].eq(0).all()
    others = absolute.drop(index="CART")
    assert (others["cart_difference"] == others["average"] - absolute.loc["CART", "average"]).all()
    low, high = others["cart_difference_ci_low"], others["cart_difference_ci_high"]
    assert (low <= others["cart_difference"]).all() and (others["cart_difference"] <= high).all()
    assert low["zero-shot"] < high["zero-shot"]
    markdown = (suite(finished_run) / "tables" / "main.md").read_text()
    cart_line = next(line for line in markdown.splitlines() if line.startswith("| CART |"))
    low, high = absolute.loc["CART", ["average_ci_low", "average_ci_high"]]
    assert f"| {absolute.loc['CART', 'average']:.1f} [{low:.1f}, {high:.1f}] | +0.0 [+0.0, +0.0] |" in cart_line


def _lease_span(log: Path) -> tuple[str, datetime, datetime]:
    """(leased device, when the lease was logged, the job's last log line): the device is held over this span."""
    stamps = [
        (datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), line)
        for line in log.read_text().splitlines()
        if (m := re.match(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line))
    ]
    leases = [
        (when, re.search(r"CUDA_VISIBLE_DEVICES=(\S+)", line).group(1)) for when, line in stamps if "gpu lease" in line
    ]
    assert len(leases) == 1, f"{log}: expected one gpu lease line"
    return leases[0][1], leases[0][0], stamps[-1][0]


def test_gpu_jobs_lease_distinct_devices(finished_run: Path) -> None:
    spans = [_lease_span(log) for rule in GPU_RULES for log in (finished_run / "results/logs" / rule).rglob("*.log")]
    assert len(spans) == 1 + 4 * len(TASKS) + 1 + 1 + 2 + len(REDUCED_CONFIG["methods"])
    assert {device for device, _, _ in spans} == set(GPU_DEVICES)
    for device in GPU_DEVICES:
        held = sorted((start, end) for d, start, end in spans if d == device)
        assert all(earlier[1] <= later[0] for earlier, later in zip(held, held[1:])), (device, held)
    cpu_only = (finished_run / "results/logs/prepare_data").rglob("*.log")
    assert not any("gpu lease" in log.read_text() for log in cpu_only)


def test_the_adaptive_job_starts_from_carts_selection_and_reports_in_its_own_group(finished_run: Path) -> None:
    from mergeflow.adaptive import learned_movement, load_learned_merge

    eval_dir = suite(finished_run) / "eval"
    cart = pd.read_csv(eval_dir / "cart.csv")
    val = cart[(cart["split"] == "val") & (cart["rank"] > 0)]
    scores = val.groupby("setting", sort=False)["normalized_accuracy"].mean()
    chosen = val[val["setting"] == scores.idxmax()].iloc[0]
    learned = load_learned_merge(eval_dir / "adamerging_cart.learned.safetensors")
    assert (learned.settings.rank, learned.settings.lam, learned.settings.steps) == (chosen["rank"], chosen["lam"], 3)
    assert learned.coefficients.shape[0] == len(TASKS) and not learned.coefficients.eq(chosen["lam"]).all()
    moved = learned_movement(eval_dir / "adamerging_cart.learned.safetensors")
    change = float((learned.coefficients - chosen["lam"]).abs().max())
    assert moved == {"max_coefficient_change": pytest.approx(change), "flipped_components": 0, "masked_components": 0}
    curve = pd.read_csv(eval_dir / "adamerging_cart.entropy.csv")
    assert list(curve.columns) == ["step", *TASKS, "total"] and list(curve["step"]) == [0, 1, 2]
    assert curve["total"].to_numpy() == pytest.approx(curve[TASKS].sum(axis=1).to_numpy())
    markdown = (suite(finished_run) / "tables" / "main.md").read_text()
    rows = [line.split(" | ")[0].lstrip("| ") for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[rows.index("*test-time adaptation*") + 1] == "AdaMerging + CART"
    assert rows.index("*test-time adaptation*") > rows.index("CART")
    assert "labels are never read during adaptation" in markdown


def test_the_data_stage_feeds_the_data_based_merges_and_every_group_has_its_heading(finished_run: Path) -> None:
    from safetensors import safe_open

    for task in TASKS:
        grams = finished_run / "results/statistics/mini-clip" / task / "grams.safetensors"
        with safe_open(str(grams), framework="pt") as handle:
            assert handle.metadata()["images"] == "40" and handle.metadata()["mergeflow.statistics"] == "grams"
            # one Gram per residual block matrix, of the matrix's input width
            assert len(list(handle.keys())) == 4 * REDUCTIONS["model"]["architecture"]["layers"]
            width = REDUCTIONS["model"]["architecture"]["width"]
            assert handle.get_tensor("transformer.resblocks.0.mlp.c_proj.weight").shape == (4 * width, 4 * width)
    log = (finished_run / "results/logs/merge_eval/mini3/mini-clip/regmean.log").read_text()
    assert "regmean: best setting" in log
    markdown = (suite(finished_run) / "tables" / "main.md").read_text()
    rows = [line.split(" | ")[0].lstrip("| ") for line in markdown.splitlines() if line.startswith("| ")]
    headings = [row for row in rows if row.startswith("*")]
    assert headings[:4] == ["*data-free*", "*needs training data*", "*needs the task at inference*",
                            "*test-time adaptation*"]  # fmt: skip
    assert rows.index("*data-free*") < rows.index("CART + SVC") < rows.index("*needs training data*")
    data_group = rows[rows.index("*needs training data*") + 1 : rows.index("*needs the task at inference*")]
    assert sorted(data_group) == ["Fisher merging", "RegMean"]
    assert rows.index("*needs the task at inference*") + 1 == rows.index("EMR")
    assert "classify every test image with its own task's model" in markdown


def test_jobs_are_forked_by_the_job_server(finished_run: Path) -> None:
    # The server comes up while the first jobs run; every job after the fine-tunes starts from it.
    late_logs = [*(finished_run / "results/logs/merge_eval").rglob("*.log"),
                 *(finished_run / "results/logs/adapt_eval").rglob("*.log"),
                 *(finished_run / "results/logs/evaluate_reference").rglob("*.log")]  # fmt: skip
    assert len(late_logs) == len(REDUCED_CONFIG["methods"]) + 1
    for log in late_logs:
        assert "forked by the mergeflow job server" in log.read_text(), log


@pytest.mark.parametrize("precision, tolerance_points", [("fp16", 0.1), ("bf16", 0.5)])
def test_autocast_accuracy_is_within_tolerance_of_fp32(finished_run: Path, precision: str, tolerance_points: float):
    """CUDA's default (`auto` = fp16 autocast) within 0.1 points of fp32, on CPU autocast with the trained mini model.

    Each task's test split is redrawn 8× larger than the run's (the run's own is too small to resolve 0.1 points).
    """
    import torch

    from mergeflow import merging
    from mergeflow.evaluation.accuracy import EvalSettings, StagedImages, predict_staged
    from mergeflow.io import load_state_dict
    from mergeflow.models.clip import load_image_encoder, load_spec
    from mergeflow.models.heads import load_head
    from mergeflow.tiny.splits import task_splits

    results = finished_run / "results"
    model_dir = results / "models/mini-clip"
    spec = load_spec(model_dir)
    pretrained = load_state_dict(model_dir / "pretrained.safetensors")
    finetuned = [load_state_dict(results / f"finetuned/mini-clip/{task}.safetensors") for task in TASKS]
    merged = merging.merge_direction("cart", pretrained, finetuned, {"rank": 0.25, "lam": 2.0}).at(2.0)
    data = REDUCED_CONFIG["data"]
    for weights in (pretrained, merged):
        visual = load_image_encoder(model_dir, weights)
        correct = {"fp32": 0, precision: 0}
        total = 0
        for task in TASKS:
            _, (images, labels) = task_splits(task, 0, 8 * data["test_size"], spec.image_size, data["seed"] + 7,
                                              style=data["domain_style"], shift=data["split_shift"])  # fmt: skip
            head = load_head(results / f"heads/mini-clip/{task}.safetensors")[0]
            staged = StagedImages(images, torch.device("cpu"), resident=True)
            for name in correct:
                predictions = predict_staged(visual, head, staged, spec, EvalSettings(batch_size=256, precision=name))
                correct[name] += int((predictions.numpy() == labels).sum())
            total += len(labels)
        difference = 100 * abs(correct[precision] - correct["fp32"]) / total
        assert difference <= tolerance_points, (precision, correct, total)


def test_rerun_has_nothing_to_do(finished_run: Path) -> None:
    dry = snakemake(finished_run, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_lint_is_clean() -> None:
    lint = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO), "--lint"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = lint.stdout + lint.stderr
    assert lint.returncode == 0, output[-3000:]
    assert "Lints for" not in output, output[-3000:]
