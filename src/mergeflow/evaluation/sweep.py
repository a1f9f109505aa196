"""Merge fine-tuned image encoders over a hyper-parameter grid, pick on val, evaluate test once."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mergeflow import merging
from mergeflow.evaluation.accuracy import EvalSettings, predict_staged, stage_splits
from mergeflow.evaluation.correctness import INDIVIDUAL_ROW, MULTITASK_ROW, ZERO_SHOT_ROW, Correctness
from mergeflow.evaluation.selection import as_rows, mark_selection, selected_settings, setting_key, sweep_axis_of
from mergeflow.io import InputError
from mergeflow.merging.entries import base_method, entry_modifiers, expand_grid, factor_kind, merge_name
from mergeflow.merging.task_statistics import TaskStatistics
from mergeflow.models.clip import ModelSpec, check_weights
from mergeflow.runtime.device import synchronize
from mergeflow.types import StateDict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSplits:
    """What evaluating one task needs: its frozen head and its val and test data."""

    name: str
    head: torch.Tensor
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


EVAL_SPLITS = ("val", "test")


class SweepEvaluator:
    """Accuracy per task of one image encoder whose weights are overwritten in place for every setting.

    The module lives on the device for the whole job; each task's splits are staged there once (val first,
    as a sweep evaluates val at every point), and a merge is written as origin + λ·delta straight into the
    module's own parameters, never as a rebuilt module or a host-side state-dict copy.
    """

    def __init__(
        self,
        visual: torch.nn.Module,
        spec: ModelSpec,
        tasks: Sequence[TaskSplits],
        device: torch.device,
        settings: EvalSettings,
    ) -> None:
        embed_dim = int(spec.open_clip_config["embed_dim"])
        for task in tasks:
            if task.head.ndim != 2 or task.head.shape[1] != embed_dim:
                raise InputError(
                    f"task {task.name!r}: head of shape {list(task.head.shape)} does not fit {spec.name}'s "
                    f"[num_classes, {embed_dim}] features; rebuild the head with this model"
                )
        self.visual = visual.to(device).eval()
        self.spec = spec
        self.settings = settings
        self.device = device
        self.task_names = [task.name for task in tasks]
        self._tensors = dict(visual.state_dict(keep_vars=True))
        self._heads = {task.name: task.head.to(device) for task in tasks}
        arrays = [getattr(task, split)[0] for split in EVAL_SPLITS for task in tasks]
        staged = iter(stage_splits(arrays, device, settings.resident_mb))
        self._images = {(split, task.name): next(staged) for split in EVAL_SPLITS for task in tasks}
        self._labels = {
            (split, task.name): torch.as_tensor(np.asarray(getattr(task, split)[1], dtype=np.int64), device=device)
            for split in EVAL_SPLITS
            for task in tasks
        }
        self._direction: merging.MergeDirection | None = None

    def images(self, split: str) -> int:
        """Images in one pass over `split` of every task."""
        return sum(len(self._labels[(split, name)]) for name in self.task_names)

    @torch.no_grad()
    def load_state_dict(self, state_dict: StateDict, source: str) -> None:
        """Copy a whole state dict into the module (keys and shapes checked against it)."""
        check_weights(self._tensors, state_dict, source)
        for key, tensor in self._tensors.items():
            tensor.copy_(state_dict[key])
        self._direction = None

    @torch.no_grad()
    def load_direction(self, direction: merging.MergeDirection, lam: float) -> None:
        """Write origin + lam·delta into the module; keys without a delta are written once per direction."""
        first_use = direction is not self._direction
        if first_use:
            check_weights(self._tensors, direction.origin, "merged state dict")
        direction.write_into(self._tensors, lam, only_delta_keys=not first_use)
        self._direction = direction

    def correct(self, split: str, tasks: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Per image of `split` of each task (all tasks by default), in stored order: is the top-1 prediction right?"""
        results = {}
        for name in tasks if tasks is not None else self.task_names:
            labels = self._labels[(split, name)]
            if len(labels) == 0:
                raise ValueError(f"task {name!r}: cannot measure accuracy on an empty {split} split")
            predictions = predict_staged(self.visual, self._heads[name], self._images[(split, name)], self.spec,
                                         self.settings)  # fmt: skip
            results[name] = (predictions == labels).cpu().numpy()
        return results

    def accuracies(self, split: str, tasks: Sequence[str] | None = None) -> dict[str, float]:
        """Top-1 accuracy of the loaded weights on `split` of each task (all tasks by default)."""
        return accuracies_of(self.correct(split, tasks))


def accuracies_of(correct: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Accuracy per task from per-image correctness: correct images over images, as an exact ratio of counts."""
    return {name: int(np.count_nonzero(vector)) / len(vector) for name, vector in correct.items()}


def reference_accuracies(
    evaluator: SweepEvaluator,
    pretrained: StateDict,
    finetuned: Sequence[StateDict],
    multitask: StateDict | None = None,
) -> tuple[pd.DataFrame, Correctness]:
    """Zero-shot (θ_0 on every task) and individual (θ_t on task t only) accuracy per task and split, and with
    `multitask` the multi-task encoder's on every task.

    Returns the table (columns task, split, zeroshot, individual, and multitask when given; val rows first,
    tasks in the evaluator's order) and the per-image test correctness behind its test rows, under the rows
    `zero-shot`, `individual` and `multi-task` (`mergeflow.evaluation.correctness`).
    """
    evaluator.load_state_dict(pretrained, "pretrained state dict")
    zeroshot_by_split = {}
    for split in EVAL_SPLITS:
        started = time.perf_counter()
        zeroshot_by_split[split] = evaluator.correct(split)
        log.info("zero-shot %s pass: %d images in %.3f s", split, evaluator.images(split),
                 time.perf_counter() - started)  # fmt: skip
    individual_by_split: dict[str, dict[str, np.ndarray]] = {split: {} for split in EVAL_SPLITS}
    for name, weights in zip(evaluator.task_names, finetuned):
        evaluator.load_state_dict(weights, f"fine-tuned state dict of {name!r}")
        for split in EVAL_SPLITS:
            individual_by_split[split].update(evaluator.correct(split, [name]))
    columns = {"zeroshot": zeroshot_by_split, "individual": individual_by_split}
    correct = {ZERO_SHOT_ROW: zeroshot_by_split["test"], INDIVIDUAL_ROW: individual_by_split["test"]}
    if multitask is not None:
        evaluator.load_state_dict(multitask, "multi-task state dict")
        columns["multitask"] = {split: evaluator.correct(split) for split in EVAL_SPLITS}
        correct[MULTITASK_ROW] = columns["multitask"]["test"]
    accuracies = {column: {split: accuracies_of(by_split[split]) for split in EVAL_SPLITS}
                  for column, by_split in columns.items()}  # fmt: skip
    table = pd.DataFrame(
        [
            {"task": name, "split": split, **{column: accuracies[column][split][name] for column in columns}}
            for split in EVAL_SPLITS
            for name in evaluator.task_names
        ]
    )
    return table, correct


def _without_lam(setting: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in setting.items() if k != "lam"}


def _direction_key(method: str, setting: Mapping[str, Any]) -> str:
    """Settings with equal keys share one merge direction: all but λ, unless a modifier made λ part of the merge."""
    return setting_key(setting if entry_modifiers(method) else _without_lam(setting))


TASK_PARAM = "task"


def sweep_method(
    method: str,
    grid: Mapping[str, Any],
    pretrained: StateDict,
    finetuned: Sequence[StateDict],
    evaluator: SweepEvaluator,
    reference: Mapping[str, Mapping[str, float]],
    *,
    factors: merging.TaskFactors | None = None,
    task_statistics: TaskStatistics | None = None,
    training_images: Sequence[np.ndarray] | None = None,
    training_batch_size: int = 32,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[pd.DataFrame, Correctness]:
    """Evaluate every setting of `grid` on val, then the selected settings on test.

    Returns the rows of every pass, and the per-image test correctness of the overall val-selected setting
    (row `method`; `mergeflow.evaluation.correctness`), which the tables' bootstrap intervals resample.
    `method` is a config entry (a registry name, or `name@variant`); rows are labelled with it.
    Settings that differ only in `lam` share one merge direction (origin + lam·delta), and spectral
    methods share one SVD per (task, matrix) across the whole grid. `reference[split][task]` is the
    individual fine-tuned accuracy used for normalisation. `factors` (from the decompose stage) are
    computed here when a spectral method is given none; `task_statistics` (each fine-tuned model's, from the
    data stage) are what regmean and fisher read, `training_images` (uint8 NHWC, one array per task, fed in batches
    of `training_batch_size`) what regmean_plusplus merges through. A method that builds one model per task (EMR)
    is evaluated on each task with that task's model.
    """
    name = merge_name(method)
    registry = merging.get_method(base_method(method))
    per_task = registry.needs == "task_at_inference"
    if per_task and TASK_PARAM in grid:
        raise InputError(f"methods.{method}.{TASK_PARAM}: set by the sweep (each task gets its own model), not a grid")
    settings = [merging.resolve_hparams(name, raw) for raw in expand_grid(grid)]
    if per_task:
        settings = [{k: v for k, v in setting.items() if k != TASK_PARAM} for setting in settings]
    if factors is None and factor_kind(method):
        centered = factor_kind(method) == "centered"
        factors = merging.compute_task_factors(pretrained, finetuned, centered=centered, device=device)

    directions: dict[str, merging.MergeDirection] = {}
    # A direction without delta (cart at rank 0 or 1: θ_avg for every lam) is the same model at every lam.
    lam_free_results: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    built_results: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def built_models(setting: Mapping[str, Any]) -> Iterator[tuple[StateDict, list[str]]]:
        """The models a method without a merge direction builds for `setting`, each with the tasks it serves."""
        if per_task:
            for index, task in enumerate(evaluator.task_names):
                yield merging.merge_state_dicts(name, pretrained, finetuned, {**setting, TASK_PARAM: index},
                                                device=device), [task]  # fmt: skip
        else:
            yield merge_through_models(setting), list(evaluator.task_names)

    def merge_through_models(setting: Mapping[str, Any]) -> StateDict:
        """RegMean++, the one method that runs the models on training images while it merges."""
        from mergeflow.merging.regmean_plusplus import regmean_plusplus_visual
        from mergeflow.statistics.images import image_batches

        if training_images is None:
            raise InputError(f"{method}: merges through the models on training images; none were given")
        batches = [image_batches(images, evaluator.spec, training_batch_size, torch.device(device))
                   for images in training_images]  # fmt: skip
        return regmean_plusplus_visual(evaluator.spec, pretrained, finetuned, batches,
                                       setting["reduce_non_diagonal_ratio"], device=device)  # fmt: skip

    def evaluate_built(setting: Mapping[str, Any], split: str) -> dict[str, np.ndarray]:
        """Both splits at once, so that each model is built once per setting."""
        key = setting_key(setting)
        if (key, split) not in built_results:
            built_results.clear()
            results: dict[str, dict[str, np.ndarray]] = {each_split: {} for each_split in EVAL_SPLITS}
            started = time.perf_counter()
            for model, tasks in built_models(setting):
                evaluator.load_state_dict(model, f"{method} model for {', '.join(tasks)}")
                for each_split in EVAL_SPLITS:
                    results[each_split].update(evaluator.correct(each_split, tasks))
            log.info("%s at %s: built and evaluated in %.3f s", method, key, time.perf_counter() - started)
            built_results.update({(key, each_split): results[each_split] for each_split in EVAL_SPLITS})
        return built_results[(key, split)]

    def evaluate(setting: Mapping[str, Any], split: str) -> dict[str, np.ndarray]:
        if per_task or registry.reads_training_images:
            return evaluate_built(setting, split)
        started = time.perf_counter()
        key = _direction_key(method, setting)
        if key not in directions:
            directions.clear()  # grid order groups lam values together; keep one direction in memory
            directions[key] = merging.merge_direction(
                name, pretrained, finetuned, setting, factors=factors, device=device, task_statistics=task_statistics
            )
        direction = directions[key]
        if not direction.delta and (key, split) in lam_free_results:
            return lam_free_results[(key, split)]
        evaluator.load_direction(direction, float(setting.get("lam", 0.0)))
        synchronize(evaluator.device)
        merged = time.perf_counter()
        results = evaluator.correct(split)
        # One line per pass: benchmarks/gpu_sweep.py reads the pass times of a real sweep from these.
        log.info("%s %s pass at %s: merge %.3f s, %d images in %.3f s", method, split, setting_key(setting),
                 merged - started, evaluator.images(split), time.perf_counter() - merged)  # fmt: skip
        if not direction.delta:
            lam_free_results[(key, split)] = results
        return results

    rows: list[dict[str, Any]] = []
    by_key = {}
    for setting in tqdm(_lam_innermost(settings), desc=f"{method} val grid", disable=not progress):
        by_key[setting_key(setting)] = setting
        rows += as_rows(method, setting, "val", accuracies_of(evaluate(setting, "val")), reference["val"])
    val_rows = pd.DataFrame(rows)
    best, best_at_sweep = selected_settings(val_rows, sweep_axis_of(grid))
    test_correct = {}
    for key in [k for k in by_key if k in best_at_sweep | {best}]:
        test_correct[key] = evaluate(by_key[key], "test")
        rows += as_rows(method, by_key[key], "test", accuracies_of(test_correct[key]), reference["test"])
    return mark_selection(pd.DataFrame(rows), best, best_at_sweep), {method: test_correct[best]}


def _lam_innermost(settings: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Order settings so that those sharing everything but lam are adjacent (stable otherwise)."""
    first_seen: dict[str, int] = {}
    for index, setting in enumerate(settings):
        first_seen.setdefault(setting_key(_without_lam(setting)), index)
    return sorted(settings, key=lambda s: first_seen[setting_key(_without_lam(s))])


def combine_sweep_parts(
    method: str, grid: Mapping[str, Any], parts: Sequence[pd.DataFrame]
) -> tuple[pd.DataFrame, int]:
    """The table `sweep_method` returns for `grid`, from its tables for parts of the grid's rank list, and the
    index of the part whose own selection is the whole grid's (its per-image correctness is the method's).

    Each part (`mergeflow.dag.resources.sweep_parts`) evaluated every setting at its ranks on val and each
    rank's val-best setting on test. The val rows of the whole grid then pick the overall best again, which is
    one of those; rows come in a single sweep's order, so the written table has the same bytes as one job's.
    """
    rows = pd.concat(parts, ignore_index=True).drop(columns=["best", "best_at_sweep"])
    labels = sorted(set(rows["method"]))
    if labels != [method]:
        raise InputError(f"sweep parts of {method!r}: rows are labelled {labels}")
    settings = _lam_innermost([merging.resolve_hparams(merge_name(method), raw) for raw in expand_grid(grid)])
    position = {setting_key(setting): index for index, setting in enumerate(settings)}
    val = rows[rows["split"] == "val"]
    counts = val.groupby("setting").size()
    missing, extra = sorted(set(position) - set(counts.index)), sorted(set(counts.index) - set(position))
    if missing or extra or counts.nunique() != 1:
        raise InputError(
            f"sweep parts of {method!r}: val rows do not cover the grid once (missing {missing}, not in the grid "
            f"{extra}, rows per setting {sorted(set(counts))})"
        )

    def in_grid_order(table: pd.DataFrame) -> pd.DataFrame:
        return table.sort_values("setting", key=lambda column: column.map(position), kind="stable")

    val = in_grid_order(val)
    best, best_at_sweep = selected_settings(val, sweep_axis_of(grid))
    test = in_grid_order(rows[rows["split"] == "test"])
    if set(test["setting"]) != best_at_sweep | {best}:
        raise InputError(
            f"sweep parts of {method!r}: test rows are for {sorted(set(test['setting']))}, but the val-best settings "
            f"are {sorted(best_at_sweep | {best})} (was a part cut inside a rank?)"
        )
    holder = [index for index, part in enumerate(parts) if best in set(part.loc[part["best"], "setting"])]
    if len(holder) != 1:
        raise InputError(f"sweep parts of {method!r}: {len(holder)} parts selected {best}, expected exactly one")
    return mark_selection(pd.concat([val, test], ignore_index=True), best, best_at_sweep), holder[0]
