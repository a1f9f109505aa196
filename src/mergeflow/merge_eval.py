"""Merge fine-tuned image encoders over a hyper-parameter grid, pick on val, evaluate test once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mergeflow import merging
from mergeflow.evaluate import accuracy
from mergeflow.method_entries import base_method, factor_kind
from mergeflow.model import ModelSpec, load_weights
from mergeflow.selection import as_rows, expand_grid, mark_selection, selected_settings, setting_key, sweep_axis_of
from mergeflow.types import StateDict


@dataclass(frozen=True)
class TaskSplits:
    """What evaluating one task needs: its frozen head and its val and test data."""

    name: str
    head: torch.Tensor
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


Evaluator = Callable[[StateDict, str], dict[str, float]]

EVAL_SPLITS = ("val", "test")


def make_evaluator(
    visual: torch.nn.Module, spec: ModelSpec, tasks: Sequence[TaskSplits], device: torch.device, batch_size: int
) -> Evaluator:
    """A function (image-encoder state dict, split) → accuracy per task, reusing one module."""

    def evaluate(state_dict: StateDict, split: str) -> dict[str, float]:
        load_weights(visual, state_dict, "merged state dict")
        visual.to(device)
        results = {}
        for task in tasks:
            images, labels = getattr(task, split)
            results[task.name] = accuracy(visual, task.head, images, labels, spec, device, batch_size)
        return results

    return evaluate


def reference_accuracies(
    visual: torch.nn.Module,
    spec: ModelSpec,
    tasks: Sequence[TaskSplits],
    pretrained: StateDict,
    finetuned: Sequence[StateDict],
    device: torch.device,
    batch_size: int,
) -> pd.DataFrame:
    """Zero-shot (θ_0 on every task) and individual (θ_t on task t only) accuracy per task and split.

    Columns task, split, zeroshot, individual; val rows first, tasks in the given order.
    """
    zeroshot = make_evaluator(visual, spec, tasks, device, batch_size)
    zeroshot_by_split = {split: zeroshot(pretrained, split) for split in EVAL_SPLITS}
    individual_by_split: dict[str, dict[str, float]] = {split: {} for split in EVAL_SPLITS}
    for task, weights in zip(tasks, finetuned):
        own_task = make_evaluator(visual, spec, [task], device, batch_size)
        for split in EVAL_SPLITS:
            individual_by_split[split][task.name] = own_task(weights, split)[task.name]
    return pd.DataFrame(
        [
            {
                "task": task.name,
                "split": split,
                "zeroshot": zeroshot_by_split[split][task.name],
                "individual": individual_by_split[split][task.name],
            }
            for split in EVAL_SPLITS
            for task in tasks
        ]
    )


def _without_lam(setting: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in setting.items() if k != "lam"}


def sweep_method(
    method: str,
    grid: Mapping[str, Any],
    pretrained: StateDict,
    finetuned: Sequence[StateDict],
    evaluate: Evaluator,
    reference: Mapping[str, Mapping[str, float]],
    *,
    factors: merging.TaskFactors | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate every setting of `grid` on val, then the selected settings on test.

    `method` is a config entry (a registry name, or `name@variant`); rows are labelled with it.
    Settings that differ only in `lam` share one merge direction (origin + lam·delta), and spectral
    methods share one SVD per (task, matrix) across the whole grid. `reference[split][task]` is the
    individual fine-tuned accuracy used for normalisation. `factors` (from the decompose stage) are
    computed here when a spectral method is given none.
    """
    registry_name = base_method(method)
    settings = [merging.resolve_hparams(registry_name, raw) for raw in expand_grid(grid)]
    if factors is None and factor_kind(method):
        centered = factor_kind(method) == "centered"
        factors = merging.compute_task_factors(pretrained, finetuned, centered=centered, device=device)

    directions: dict[str, merging.MergeDirection] = {}

    def merged(setting: Mapping[str, Any]) -> StateDict:
        key = setting_key(_without_lam(setting))
        if key not in directions:
            directions.clear()  # grid order groups lam values together; keep one direction in memory
            directions[key] = merging.merge_direction(
                registry_name, pretrained, finetuned, setting, factors=factors, device=device
            )
        return directions[key].at(float(setting.get("lam", 0.0)))

    rows: list[dict[str, Any]] = []
    by_key = {}
    for setting in tqdm(_lam_innermost(settings), desc=f"{method} val grid", disable=not progress):
        by_key[setting_key(setting)] = setting
        rows += as_rows(method, setting, "val", evaluate(merged(setting), "val"), reference["val"])
    val_rows = pd.DataFrame(rows)
    best, best_at_sweep = selected_settings(val_rows, sweep_axis_of(grid))
    for key in [k for k in by_key if k in best_at_sweep | {best}]:
        rows += as_rows(method, by_key[key], "test", evaluate(merged(by_key[key]), "test"), reference["test"])
    return mark_selection(pd.DataFrame(rows), best, best_at_sweep)


def _lam_innermost(settings: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order settings so that those sharing everything but lam are adjacent (stable otherwise)."""
    first_seen: dict[str, int] = {}
    for index, setting in enumerate(settings):
        first_seen.setdefault(setting_key(_without_lam(setting)), index)
    return sorted(settings, key=lambda s: first_seen[setting_key(_without_lam(s))])
