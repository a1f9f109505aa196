"""Scheduler requests grow with what a job holds and computes, and no job asks for more than the limit."""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mergeflow.commands.main import main
from mergeflow.dag.resources import (
    MAX_RUNTIME_MINUTES,
    MIN_RUNTIME_MINUTES,
    MODEL_SCALES,
    grid_points,
    job_resources,
    sweep_parts,
)
from mergeflow.evaluation.accuracy import EvalSettings
from mergeflow.evaluation.correctness import load_correctness, save_correctness
from mergeflow.evaluation.results import read_sweep_table
from mergeflow.evaluation.sweep import SweepEvaluator, TaskSplits, combine_sweep_parts, sweep_method
from mergeflow.io import InputError, load_state_dict
from mergeflow.models.clip import build_clip, load_image_encoder, load_spec, save_model_dir, tiny_clip_spec

RULES = ["pretrain", "fetch_pretrained", "build_head", "prepare_data", "fetch_finetuned", "finetune",
         "finetune_multitask", "evaluate_reference", "decompose", "merge_eval", "aggregate", "lambda_rank", "spectrum",
         "scaling"]  # fmt: skip
CART_GRID = {"rank": [0.0, 0.04, 0.08, 0.16, 1.0], "lam": [1.0, 2.0, 3.0]}


def test_grid_points_multiply_list_lengths():
    assert grid_points(CART_GRID) == 15
    assert grid_points({"k": 0.2, "lam": [0.5, 1.0]}) == 2
    assert grid_points({}) == 1


@pytest.mark.parametrize("rule", RULES)
def test_larger_models_never_ask_for_less(rule):
    small, large = (job_resources(rule, model, 8, CART_GRID) for model in ("ViT-B-32", "ViT-L-14"))
    assert large["mem_mb"] >= small["mem_mb"] and large["runtime"] >= small["runtime"]
    tiny = job_resources(rule, "tiny-clip", 8, CART_GRID)
    assert tiny["runtime"] >= MIN_RUNTIME_MINUTES and tiny["mem_mb"] >= 2000


def test_merge_eval_scales_with_tasks_and_grid():
    eight, twenty = (job_resources("merge_eval", "ViT-B-32", n, CART_GRID) for n in (8, 20))
    assert twenty["mem_mb"] > eight["mem_mb"] and twenty["runtime"] > eight["runtime"]
    # 20 ViT-L/14 encoders, their task vectors and SVD factors: more than 3 × 20 × 1.2 GB
    assert job_resources("merge_eval", "ViT-L-14", 20, CART_GRID)["mem_mb"] > 72_000
    one_point = job_resources("merge_eval", "ViT-L-14", 20, {"lam": 1.0})["runtime"]
    assert job_resources("merge_eval", "ViT-L-14", 20, CART_GRID)["runtime"] > one_point


def test_unknown_rule_is_an_error():
    with pytest.raises(ValueError, match="no resource estimate for rule 'nope'"):
        job_resources("nope", "ViT-B-32", 8)


def test_adaptation_requests_cover_the_step_times_measured_on_a_gpu():
    """A request below what the H200 measured would have SLURM kill the job (it did for ViT-B-32's adarank)."""
    import json
    from pathlib import Path

    measured = Path(__file__).resolve().parents[1] / "benchmarks/results/h200-2026-12-04/adaptation_speed.json"
    rows = json.loads(measured.read_text())["rows"]
    assert {row["model"] for row in rows} == {"ViT-B-32", "ViT-B-16", "ViT-L-14"}
    for row in rows:
        steps = 10000
        request = job_resources("adapt_eval", row["model"], row["tasks"], {"steps": steps, "batch_size": 16})
        assert request["runtime"] * 60 >= 1.5 * steps * row["seconds_per_step"], row
    # the paper's largest adaptation (ViT-L/14, 20 tasks, adarank) stays within a day
    assert job_resources("adapt_eval", "ViT-L-14", 20, {"steps": 10000, "batch_size": 16})["runtime"] < 24 * 60


def test_the_multitask_job_lasts_its_tasks_times_the_experts_steps_at_the_measured_image_rate():
    import json
    from pathlib import Path

    recipe = {"steps": 2000, "batch_size": 128}
    one, eight = (job_resources("finetune_multitask", "ViT-B-32", tasks, recipe) for tasks in (1, 8))
    assert eight["mem_mb"] == job_resources("finetune", "ViT-B-32", 8)["mem_mb"]
    # 30 minutes of loading, then 8 × the training of one task (each request rounded up to a minute)
    assert 8 * (one["runtime"] - 31) <= eight["runtime"] - 30 <= 8 * (one["runtime"] - 30)
    longer = job_resources("finetune_multitask", "ViT-B-32", 8, {"steps": 4000, "batch_size": 128})
    assert longer["runtime"] > eight["runtime"]
    measured = Path(__file__).resolve().parents[1] / "benchmarks/results/h200-2026-12-04/adaptation_speed.json"
    for row in json.loads(measured.read_text())["rows"]:
        seconds_per_image = row["seconds_per_step"] / (row["tasks"] * row["batch_per_task"])
        request = job_resources("finetune_multitask", row["model"], 20, recipe)["runtime"]
        assert request * 60 >= 1.5 * 20 * 2000 * 128 * seconds_per_image, row


def test_model_sizes_are_open_clips_float32_architectures():
    import open_clip

    for model, scale in MODEL_SCALES.items():
        with torch.device("meta"):
            clip = open_clip.model.CLIP(**open_clip.get_model_config(model))
        state = clip.state_dict()
        encoder_bytes = 4 * sum(value.numel() for key, value in state.items() if key.startswith("visual."))
        clip_bytes = 4 * sum(value.numel() for value in state.values())
        assert (scale.encoder_mb, scale.clip_mb) == (-(-encoder_bytes // 10**6), -(-clip_bytes // 10**6)), model


# Peak RSS in MB of the fetch verbs on float32 checkpoints in each source's served layout (job_resources' comment):
# (model, fetch-finetuned on a whole CLIP file, fetch-pretrained).
MEASURED_FETCH_PEAKS = [("ViT-B-32", 2596, 2692), ("ViT-L-14", 7163, 6633)]


@pytest.mark.parametrize(("model", "finetuned_peak", "pretrained_peak"), MEASURED_FETCH_PEAKS)
def test_fetch_requests_leave_a_third_above_the_measured_peaks(model, finetuned_peak, pretrained_peak):
    assert job_resources("fetch_finetuned", model, 20)["mem_mb"] >= 1.33 * finetuned_peak
    assert job_resources("fetch_pretrained", model, 20)["mem_mb"] >= 1.33 * pretrained_peak
    # a fetch is a download and a conversion: it asks for the same time whatever the model
    assert (
        job_resources("fetch_finetuned", model, 20)["runtime"]
        == job_resources("fetch_finetuned", "ViT-B-32", 8)["runtime"]
    )


PAPER_RANKS = [0.0, 0.02, 0.04, 0.08, 0.12, 0.16, 0.32, 0.64, 1.0]
PAPER_CART = {"rank": PAPER_RANKS, "lam": [0.5, 1.0, 1.5, 1.9, 2.0, 2.5, 3.0]}


def test_a_sweep_within_the_limit_is_one_job_of_the_whole_grid():
    assert sweep_parts(PAPER_CART, "ViT-B-32", 20) == [PAPER_CART]
    assert sweep_parts(PAPER_CART, "ViT-L-14", 8) == [PAPER_CART]


@pytest.mark.parametrize(("num_tasks", "sizes"), [(14, [5, 4]), (20, [3, 3, 3])])
def test_a_long_sweep_is_cut_by_rank_into_the_fewest_jobs_within_the_limit(num_tasks, sizes):
    whole = job_resources("merge_eval", "ViT-L-14", num_tasks, PAPER_CART)["runtime"]
    assert whole > MAX_RUNTIME_MINUTES
    parts = sweep_parts(PAPER_CART, "ViT-L-14", num_tasks)
    assert [len(part["rank"]) for part in parts] == sizes
    assert [rank for part in parts for rank in part["rank"]] == PAPER_RANKS
    assert all(part["lam"] == PAPER_CART["lam"] for part in parts)
    assert all(
        job_resources("merge_eval", "ViT-L-14", num_tasks, part)["runtime"] <= MAX_RUNTIME_MINUTES for part in parts
    )
    fewer = {**PAPER_CART, "rank": PAPER_RANKS[: -(-len(PAPER_RANKS) // (len(sizes) - 1))]}
    assert job_resources("merge_eval", "ViT-L-14", num_tasks, fewer)["runtime"] > MAX_RUNTIME_MINUTES


def test_a_sweep_that_cannot_be_cut_by_rank_is_refused():
    with pytest.raises(ValueError, match="only a grid with a list of rank values can be split"):
        sweep_parts({"lam": [0.1] * 40}, "ViT-L-14", 20)
    with pytest.raises(ValueError, match=r"over the limit of 100 min, and even one rank per job needs \d+ min"):
        sweep_parts(PAPER_CART, "ViT-L-14", 20, max_minutes=100)


ARCH = {
    "image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "embed_dim": 16,
    "context_length": 12, "text_width": 32, "text_layers": 1, "text_heads": 2,
}  # fmt: skip
TASKS = ("a", "b", "c")
# Ranks as on the paper grid's ends; lams on which the toy tasks' val accuracies differ.
TOY_GRID = {"rank": [0.0, 0.25, 0.5, 0.75, 1.0], "lam": [0.5, 1.0, 3.0]}


@pytest.fixture(scope="module")
def toy_sweep(tmp_path_factory: pytest.TempPathFactory):
    """A tiny CLIP, three random tasks and their encoders: what sweep_method needs, evaluated for real."""
    torch.manual_seed(0)
    directory: Path = tmp_path_factory.mktemp("model")
    spec = tiny_clip_spec("toy", ARCH)
    save_model_dir(directory, spec, build_clip(spec))
    pretrained = load_state_dict(directory / "pretrained.safetensors")
    generator = torch.Generator().manual_seed(1)
    finetuned = [{k: v + 0.2 * torch.randn(v.shape, generator=generator) for k, v in pretrained.items()} for _ in TASKS]
    rng = np.random.default_rng(0)

    def split(n):
        return rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, size=n)

    splits = [
        TaskSplits(
            name, F.normalize(torch.randn(3, ARCH["embed_dim"], generator=generator), dim=-1), split(60), split(40)
        )
        for name in TASKS
    ]
    evaluator = SweepEvaluator(load_image_encoder(directory), load_spec(directory), splits, torch.device("cpu"),
                               EvalSettings(batch_size=32))  # fmt: skip
    reference = {"val": {"a": 0.4, "b": 0.5, "c": 0.0}, "test": {"a": 0.5, "b": 0.4, "c": 0.3}}

    def sweep(grid):
        return sweep_method("cart", grid, pretrained, finetuned, evaluator, reference, progress=False)

    return sweep


def _csv(table: pd.DataFrame) -> str:
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    return buffer.getvalue()


def _written_parts(toy_sweep, parts: list[dict], directory: Path) -> list[tuple[Path, Path]]:
    """Each part's table and per-image correctness, written as merge-eval writes them."""
    paths = []
    for index, part in enumerate(parts, start=1):
        rows, correct = toy_sweep(part)
        paths.append((directory / f"{index}.csv", directory / f"{index}.correct.safetensors"))
        paths[-1][0].write_text(_csv(rows))
        save_correctness(paths[-1][1], correct)
    return paths


def test_a_sweep_split_by_rank_combines_into_the_single_jobs_table(toy_sweep, tmp_path):
    whole, whole_correct = toy_sweep(TOY_GRID)
    # the parts this grid would be cut into as a ViT-L/14 × 20 job under a limit of 700 minutes
    parts = sweep_parts(TOY_GRID, "ViT-L-14", 20, max_minutes=700)
    assert [part["rank"] for part in parts] == [[0.0, 0.25, 0.5], [0.75, 1.0]]
    written = _written_parts(toy_sweep, parts, tmp_path)
    tables = [read_sweep_table(str(table)) for table, _ in written]
    combined, holder = combine_sweep_parts("cart", TOY_GRID, tables)
    assert _csv(combined) == _csv(whole)
    # the parts' own selections differ from the whole grid's in at least one part: selection was redone
    best = whole.loc[whole["best"], "setting"].iloc[0]
    assert [table.loc[table["best"], "setting"].iloc[0] == best for table in tables].count(True) == 1
    assert tables[holder].loc[tables[holder]["best"], "setting"].iloc[0] == best
    held = load_correctness(written[holder][1])
    assert all(np.array_equal(held["cart"][task], whole_correct["cart"][task]) for task in TASKS)
    # the empty fields of a NaN (task c's individual val accuracy is 0) survive the round trip
    assert combined["normalized_accuracy"].isna().sum() == whole["normalized_accuracy"].isna().sum() > 0


def test_parts_cut_inside_a_rank_or_missing_settings_are_refused(toy_sweep, tmp_path):
    by_lam = [{**TOY_GRID, "lam": TOY_GRID["lam"][:1]}, {**TOY_GRID, "lam": TOY_GRID["lam"][1:]}]
    tables = [read_sweep_table(str(table)) for table, _ in _written_parts(toy_sweep, by_lam, tmp_path)]
    with pytest.raises(InputError, match="val-best settings are .*cut inside a rank"):
        combine_sweep_parts("cart", TOY_GRID, tables)
    with pytest.raises(InputError, match=r"do not cover the grid once \(missing \['\{"):
        combine_sweep_parts("cart", TOY_GRID, tables[:1])
    with pytest.raises(InputError, match="rows are labelled"):
        combine_sweep_parts("lowrank_ta", TOY_GRID, tables)


def test_the_combine_sweep_verb_writes_the_single_jobs_bytes(toy_sweep, tmp_path):
    import json

    rows, correct = toy_sweep(TOY_GRID)
    whole, whole_correct = tmp_path / "whole.csv", tmp_path / "whole.correct.safetensors"
    whole.write_text(_csv(rows))
    save_correctness(whole_correct, correct)
    parts = [{**TOY_GRID, "rank": TOY_GRID["rank"][:3]}, {**TOY_GRID, "rank": TOY_GRID["rank"][3:]}]
    tables, corrects = zip(*_written_parts(toy_sweep, parts, tmp_path))
    out, out_correct = tmp_path / "cart.csv", tmp_path / "cart.correct.safetensors"
    args = ["combine-sweep", "--method", "cart", "--grid", json.dumps(TOY_GRID), "--parts", *map(str, tables)]
    assert main([*args, "--parts-correct", *map(str, corrects), "--out", str(out), "--correct", str(out_correct)]) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert out_correct.read_bytes() == whole_correct.read_bytes()
    # a missing part's table: refused by name, nothing written
    missing = tmp_path / "missing"
    args[-1] = str(tmp_path / "3.csv")
    outputs = ["--out", str(missing / "cart.csv"), "--correct", str(missing / "cart.correct.safetensors")]
    assert main([*args, "--parts-correct", *map(str, corrects), *outputs]) == 2
    assert not missing.exists() or not any(missing.iterdir())


def test_sweeps_are_started_longest_first_with_wudis_optimisation_counted() -> None:
    from mergeflow.dag.resources import sweep_passes

    assert sweep_passes("cart", {"rank": [0.0, 0.5], "lam": [1.0, 2.0, 3.0]}) == 6
    assert sweep_passes("cart+svc@x", {"rank": 0.1, "lam": [1.0, 2.0], "alpha": [0.1, 1.0]}) == 4
    # 300 Adam steps per matrix cost about 30 val passes on tiny8, more than a 6-point grid
    assert sweep_passes("wudi", {}) == 31 and sweep_passes("wudi", {"iterations": [100, 300]}) == 2 * 31
