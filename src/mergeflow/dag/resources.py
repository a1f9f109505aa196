"""Memory and wall-time requests of each rule's jobs, scaled by model size, task count and grid size.

Schedulers need them up front (SLURM kills a job past its `--mem` or `--time`), so they are generous
estimates: memory counts the image encoders a job holds at once (θ_0, the T fine-tuned models, their SVD
factors), time counts forward passes relative to a ViT-B/32, and adaptation steps at twice the step times
an H200 measured. Override any of them per rule with `--set-resources RULE:mem_mb=…` or in a profile.

No job may ask for more than a scheduler partition allows (`resources.max_runtime_min`, a day by default): a sweep
that would is split by rank into parts (`sweep_parts`) that the workflow combines
(`mergeflow.evaluation.sweep.combine_sweep_parts`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelScale:
    encoder_mb: int  # float32 image encoder on disk and in memory
    clip_mb: int  # float32 whole CLIP (image and text towers): the largest file a checkpoint source serves
    compute: float  # forward cost per image relative to ViT-B/32 (GFLOPs 4.4 / 17.6 / 81)


# Sizes in MB (10^6 bytes, rounded up) of open_clip's architectures at 4 bytes per parameter: image encoder
# 87,849,216 / 86,192,640 / 303,966,208 parameters, whole CLIP 151,277,313 / 149,620,737 / 427,616,513
# (tests/test_job_resources.py counts them from open_clip's configs).
MODEL_SCALES: dict[str, ModelScale] = {
    "ViT-B-32": ModelScale(encoder_mb=352, clip_mb=606, compute=1.0),
    "ViT-B-16": ModelScale(encoder_mb=345, clip_mb=599, compute=4.0),
    "ViT-L-14": ModelScale(encoder_mb=1216, clip_mb=1711, compute=18.4),
}
# The embedded tiny model and anything unlisted: the floors below dominate.
SMALL_MODEL = ModelScale(encoder_mb=16, clip_mb=32, compute=0.02)

BASE_MB = 4000  # interpreter, torch, CUDA context, data batches
MIN_MEM_MB = 2000  # the smallest request: a table or figure job, or the fetch of a tiny checkpoint
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
# The fetch verbs run on the CPU and hold whole checkpoints in memory. Peak RSS (`/usr/bin/time -v`, torch 2.14.1,
# random float32 weights in each source's served layout, 2026-12-04) is an interpreter with torch and open_clip of
# about 590 MB plus:
# - fetch-finetuned: the source file read whole, θ_0, and three encoder-sized buffers while the safetensors bytes
#   are built and written: file + 4 × encoder. A tall_masks file (task_vectors' ImageEncoder, text transformer
#   deleted: src/models/modeling.py of nik-dim/tall_masks @d10af8b) of 454 MB peaked at 2,442 MB on ViT-B-32, of
#   1,370 MB at 6,832 MB on ViT-L-14; a whole CLIP of 605 / 1,711 MB at 2,596 / 7,163 MB. The request takes the
#   whole CLIP as the file, the largest any source serves.
# - fetch-pretrained: open_clip's served CLIP read whole, the model built from it, and both towers written:
#   about 3.5 × the CLIP (2,692 MB for ViT-B-32's 605 MB, 6,633 MB for ViT-L-14's 1,711 MB); the request takes 4 ×.
FETCH_PROCESS_MB = 600
FETCH_MARGIN = 1.5  # allocator and library versions; a job killed at its --mem is retried from the start
# A download of the largest checkpoint (1.7 GB) at 1 MB/s; nothing in a fetch scales with forward passes.
FETCH_MINUTES = 30
# A day: the longest wall time many SLURM partitions allow.
MAX_RUNTIME_MINUTES = 1440


def grid_points(grid: Mapping[str, Any]) -> int:
    """Settings in a method's grid: the product of its list lengths."""
    return math.prod(len(value) if isinstance(value, list | tuple) else 1 for value in grid.values())


# WUDI's Adam steps cost about as much as one val pass per this many steps (tiny8 on one CPU thread: 300 steps
# over 16 matrices took 21 s, a val pass of its 1600 images 0.7 s).
WUDI_STEPS_PER_PASS = 10


def sweep_passes(method: str, grid: Mapping[str, Any]) -> int:
    """How long a static method's sweep takes, in val passes: one per grid point, and WUDI's optimisation on top.

    The workflow starts the longest sweeps first by it, so that short ones fill the other cores at the end.
    """
    passes = grid_points(grid)
    if method.split("@", 1)[0].split("+", 1)[0] == "wudi":
        steps = grid.get("iterations", 300)
        return passes * (1 + max(steps if isinstance(steps, list | tuple) else [steps]) // WUDI_STEPS_PER_PASS)
    return passes


# An adaptation step over every task's batch costs about as much as half a val pass (tiny8 on one CPU thread: 50
# steps of batches of 16 took 17 s, a val pass of 1600 images 0.7 s).
ADAPTATION_STEPS_PER_PASS = 2


def adaptation_passes(settings: Mapping[str, Any]) -> int:
    """How long an adaptive method's job takes, in val passes (the unit of `sweep_passes`)."""
    return int(settings.get("steps", 10000)) // ADAPTATION_STEPS_PER_PASS


def _request(mem_mb: float, minutes: float) -> dict[str, int]:
    return {
        "mem_mb": int(math.ceil(max(MIN_MEM_MB, mem_mb))),
        "runtime": int(math.ceil(max(MIN_RUNTIME_MINUTES, minutes))),
    }


def job_resources(rule: str, model: str, num_tasks: int, grid: Mapping[str, Any] | None = None) -> dict[str, int]:
    """`mem_mb` and `runtime` (minutes) for one job of `rule` on `model` with `num_tasks` tasks."""
    scale = MODEL_SCALES.get(model, SMALL_MODEL)
    encoders = scale.encoder_mb
    tasks = num_tasks
    if rule in ("pretrain", "build_head"):
        return _request(BASE_MB + 4 * encoders, 30 * scale.compute)
    if rule == "fetch_pretrained":
        return _request(FETCH_MARGIN * (FETCH_PROCESS_MB + 4 * scale.clip_mb), FETCH_MINUTES)
    if rule == "prepare_data":
        return _request(BASE_MB, 120)
    if rule == "fetch_finetuned":
        return _request(FETCH_MARGIN * (FETCH_PROCESS_MB + scale.clip_mb + 4 * encoders), FETCH_MINUTES)
    if rule == "finetune":
        # weights, gradients and two AdamW moments, plus activations of one micro-batch
        return _request(2 * BASE_MB + 6 * encoders, 30 + 40 * scale.compute)
    if rule == "evaluate_reference":
        # zero-shot and individual, on val and test (test splits run larger than val)
        return _request(BASE_MB + (tasks + 2) * encoders, 8 * tasks * TASK_EVAL_MINUTES * scale.compute)
    if rule == "decompose":
        # the T task vectors and their thin SVD factors (about 1.3× a matrix each)
        return _request(BASE_MB + 3 * tasks * encoders, 2 * tasks * encoders / 350)
    if rule == "task_statistics":
        # one encoder with its gradients and per-example gradients (fisher), or its float64 input Grams (a ViT-L/14's
        # 24 blocks × (3 · 1024² + 4096²) entries, 3.8 GB, about 3 encoders); 256 images forward and backward
        return _request(BASE_MB + 4 * encoders, 10 + 5 * scale.compute)
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
        # steps left out: the longest default (adarank, 10000), as estimates must be generous
        images = int(settings.get("steps", 10000)) * images_per_step
        adapt_minutes = images * _seconds_per_image(model, scale) * ADAPT_MARGIN / 60
        return _request(BASE_MB + 4 * tasks * encoders, adapt_minutes + 4 * tasks * TASK_EVAL_MINUTES * scale.compute)
    if rule == "finetune_multitask":
        # One job of T × finetune.steps steps of finetune.batch_size images (`grid`: the finetune block; left out,
        # the paper's 2000 and 128), each image one forward and backward pass, timed as in an adaptation step
        # (which merges too: an upper bound) with its margin. Memory as one expert's: the train splits are mapped.
        settings = grid or {}
        images = tasks * int(settings.get("steps", 2000)) * int(settings.get("batch_size", 128))
        return _request(2 * BASE_MB + 6 * encoders, 30 + images * _seconds_per_image(model, scale) * ADAPT_MARGIN / 60)
    if rule in ("aggregate", "lambda_rank", "scaling"):
        return _request(2000, 10)
    if rule == "spectrum":
        # One matrix's T leading right singular subspaces at a time; every task pair's cross-Gram matrix
        # (about a second per pair for a ViT-B/32 on one core, ~5 s for a ViT-L/14).
        pairs = tasks * (tasks - 1) / 2
        return _request(2000 + tasks * encoders / 10, 5 + pairs * 0.05 * encoders / 350)
    raise ValueError(f"no resource estimate for rule {rule!r}")


def _seconds_per_image(model: str, scale: ModelScale) -> float:
    """A forward and backward pass of one image through the encoder, on the GPU that timed the adaptations."""
    return ADAPT_STEP_SECONDS_PER_IMAGE.get(model, ADAPT_STEP_SECONDS_PER_IMAGE["ViT-B-32"] * scale.compute)


def sweep_parts(
    grid: Mapping[str, Any], model: str, num_tasks: int, max_minutes: int = MAX_RUNTIME_MINUTES
) -> list[dict[str, Any]]:
    """Grids of the merge_eval jobs that together sweep `grid`, each requesting at most `max_minutes`.

    The grid itself when one job fits. Otherwise the rank list is cut into the fewest runs of consecutive
    ranks (sizes differing by at most one) whose jobs fit. A part holds every setting at its ranks, so the
    val-best setting at each rank, which the part evaluates on test, is the one a single sweep picks there,
    and the overall val-best setting is one of these (`mergeflow.evaluation.sweep.combine_sweep_parts`).
    ValueError when even one rank per job does not fit, or the grid has no list of ranks to cut.
    """

    def minutes(part: Mapping[str, Any]) -> int:
        return job_resources("merge_eval", model, num_tasks, part)["runtime"]

    if minutes(grid) <= max_minutes:
        return [dict(grid)]
    from mergeflow.evaluation.selection import SWEEP_AXIS

    ranks = grid.get(SWEEP_AXIS)
    if isinstance(ranks, list | tuple):
        for count in range(2, len(ranks) + 1):
            parts = [{**grid, SWEEP_AXIS: run} for run in _consecutive_runs(list(ranks), count)]
            if all(minutes(part) <= max_minutes for part in parts):
                return parts
        reason = f"even one {SWEEP_AXIS} per job needs {minutes({**grid, SWEEP_AXIS: ranks[:1]})} min"
    else:
        reason = f"only a grid with a list of {SWEEP_AXIS} values can be split into jobs"
    raise ValueError(
        f"its {grid_points(grid)}-setting sweep would request {minutes(grid)} min on {model} with {num_tasks} tasks, "
        f"over the limit of {max_minutes} min, and {reason}: shorten its lists or raise the limit"
    )


def _consecutive_runs(values: list[Any], count: int) -> list[list[Any]]:
    """`values` cut into `count` consecutive runs whose lengths differ by at most one, longer runs first."""
    size, longer = divmod(len(values), count)
    bounds = [0]
    for index in range(count):
        bounds.append(bounds[-1] + size + (1 if index < longer else 0))
    return [values[start:end] for start, end in zip(bounds, bounds[1:])]
