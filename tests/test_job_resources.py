"""Scheduler requests grow with what a job holds and computes."""

import pytest

from mergeflow.job_resources import MIN_RUNTIME_MINUTES, grid_points, job_resources

RULES = ["pretrain", "fetch_pretrained", "build_head", "prepare_data", "fetch_finetuned", "finetune",
         "evaluate_reference", "decompose", "merge_eval", "aggregate", "lambda_rank", "spectrum",
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
