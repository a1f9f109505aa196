"""Memory and wall-time requests of each rule's jobs, scaled by model size, task count and grid size.

Schedulers need them up front (SLURM kills a job past its `--mem` or `--time`), so they are generous
estimates: memory counts the image encoders a job holds at once (θ_0, the T fine-tuned models, their SVD
factors), time counts forward passes relative to a ViT-B/32, and adaptation steps at twice the step times
an H200 measured. Override any of them per rule with `--set-resources RULE:mem_mb=…` or in a profile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelScale:
    encoder_mb: int  # float32 image encoder on disk and in memory
    compute: float  # forward cost per image relative to ViT-B/32 (GFLOPs 4.4 / 17.6 / 81)


MODEL_SCALES: dict[str, ModelScale] = {
    "ViT-B-32": ModelScale(encoder_mb=352, compute=1.0),
    "ViT-B-16": ModelScale(encoder_mb=344, compute=4.0),
    "ViT-L-14": ModelScale(encoder_mb=1217, compute=18.4),
}
# The embedded tiny model and anything unlisted: the floors below dominate.
SMALL_MODEL = ModelScale(encoder_mb=16, compute=0.02)

BASE_MB = 4000  # interpreter, torch, CUDA context, data batches
MIN_RUNTIME_MINUTES = 10
# Minutes to evaluate one task's val split (≤ 5000 images) with a ViT-B/32, with a 3× margin over a
# data-centre GPU's fp32 throughput (about 3000 images/s); scaled by ModelScale.compute.
TASK_EVAL_MINUTES = 0.03
# Seconds of one fp32 adaptation step per task and unlabeled image, for the slowest adaptive method (adarank),
# measured on one H200 at 8 tasks × 16 images (benchmarks/results/h200-2026-12-04/adaptation_speed.json;
# ViT-L-14's adarank step is its adamerging step × adarank's ratio to adamerging on ViT-B-16). Other models
# scale ViT-B-32's by ModelScale.compute.
ADAPT_STEP_SECONDS_PER_IMAGE: dict[str, float] = {
    "ViT-B-32": 0.157 / 128,
    "ViT-B-16": 0.389 / 128,
    "ViT-L-14": 1.475 * (0.389 / 0.359) / 128,
}
# A slower GPU than the H200 needs more: SLURM kills a job past its runtime, so a request must not be tight.
ADAPT_MARGIN = 2.0


def grid_points(grid: Mapping[str, Any]) -> int:
    """Settings in a method's grid: the product of its list lengths."""
    return math.prod(len(value) if isinstance(value, list | tuple) else 1 for value in grid.values())


def _request(mem_mb: float, minutes: float) -> dict[str, int]:
    return {"mem_mb": int(math.ceil(mem_mb)), "runtime": int(math.ceil(max(MIN_RUNTIME_MINUTES, minutes)))}


def job_resources(rule: str, model: str, num_tasks: int, grid: Mapping[str, Any] | None = None) -> dict[str, int]:
    """`mem_mb` and `runtime` (minutes) for one job of `rule` on `model` with `num_tasks` tasks."""
    scale = MODEL_SCALES.get(model, SMALL_MODEL)
    encoders = scale.encoder_mb
    tasks = num_tasks
    if rule in ("pretrain", "fetch_pretrained", "build_head"):
        return _request(BASE_MB + 4 * encoders, 30 * scale.compute)
    if rule == "prepare_data":
        return _request(BASE_MB, 120)
    if rule == "fetch_finetuned":
        return _request(BASE_MB + 3 * encoders, 30)
    if rule == "finetune":
        # weights, gradients and two AdamW moments, plus activations of one micro-batch
        return _request(2 * BASE_MB + 6 * encoders, 30 + 40 * scale.compute)
    if rule == "evaluate_reference":
        # zero-shot and individual, on val and test (test splits run larger than val)
        return _request(BASE_MB + (tasks + 2) * encoders, 8 * tasks * TASK_EVAL_MINUTES * scale.compute)
    if rule == "decompose":
        # the T task vectors and their thin SVD factors (about 1.3× a matrix each)
        return _request(BASE_MB + 3 * tasks * encoders, 2 * tasks * encoders / 350)
    if rule == "merge_eval":
        points = grid_points(grid or {})
        merge_minutes = 0.2 * encoders / 350
        evaluate_minutes = tasks * TASK_EVAL_MINUTES * scale.compute
        # every setting on val, then test at the selected settings (at most one per rank)
        return _request(BASE_MB + 3 * tasks * encoders, (points + 10) * (merge_minutes + 3 * evaluate_minutes))
    if rule == "adapt_eval":
        # θ_0, the T task vectors (or their factors) and the Adam state; each step a forward and backward pass
        # over one batch per task, then one val and one test pass
        settings = grid or {}
        images_per_step = tasks * int(settings.get("batch_size", 16))
        seconds_per_image = ADAPT_STEP_SECONDS_PER_IMAGE.get(model, ADAPT_STEP_SECONDS_PER_IMAGE["ViT-B-32"]
                                                             * scale.compute)  # fmt: skip
        # steps left out: the longest default (adarank, 10000), as estimates must be generous
        adapt_minutes = int(settings.get("steps", 10000)) * images_per_step * seconds_per_image * ADAPT_MARGIN / 60
        return _request(BASE_MB + 4 * tasks * encoders, adapt_minutes + 4 * tasks * TASK_EVAL_MINUTES * scale.compute)
    if rule in ("aggregate", "lambda_rank", "scaling"):
        return _request(2000, 10)
    if rule == "spectrum":
        # One matrix's T leading right singular subspaces at a time; every task pair's cross-Gram matrix
        # (about a second per pair for a ViT-B/32 on one core, ~5 s for a ViT-L/14).
        pairs = tasks * (tasks - 1) / 2
        return _request(2000 + tasks * encoders / 10, 5 + pairs * 0.05 * encoders / 350)
    raise ValueError(f"no resource estimate for rule {rule!r}")
