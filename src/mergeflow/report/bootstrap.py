"""Percentile bootstrap intervals of test accuracy over test images, paired across the rows of a table.

Resampling: each task t is resampled on its own. Resample b (b = 0, 1, …, B−1 in order) draws n_t of the
task's test images uniformly with replacement, `rng_t.integers(0, n_t, size=n_t)`, where rng_t is
`np.random.default_rng(np.random.SeedSequence(seed).spawn(T)[t])` for the t-th of T tasks in table order.
Every row (zero-shot, individual, each method) is scored on the same draws, so a difference between two
rows is bootstrapped pairwise: the images that are hard in one resample are hard for every method in it.
The average over tasks of resample b is the mean of its task accuracies (every task weighs the same, as in
the table). An interval is the 2.5th and 97.5th percentile of the B resampled values (numpy's linear
interpolation between order statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
# Resamples per matrix product: memory stays at this many × n_t image counts, whatever B and n_t are.
_CHUNK = 64


def resampled_accuracies(
    correct: Sequence[np.ndarray], resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> np.ndarray:
    """Accuracy of every row on every task in every resample, shape (resamples, rows, tasks).

    `correct[t]` is task t's (images, rows) bool matrix: column r says which of the task's test images
    row r classifies correctly. Each resample is scored as image counts times correctness, so all rows of a
    task share one draw and the cost is one bincount per (task, resample) plus one matrix product per chunk.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not correct:
        raise ValueError("no tasks to resample")
    rows = {matrix.shape[1] if matrix.ndim == 2 else -1 for matrix in correct}
    if len(rows) != 1 or -1 in rows:
        raise ValueError("expected one (images, rows) matrix per task, with the same rows for every task")
    generators = [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(len(correct))]
    samples = np.empty((resamples, rows.pop(), len(correct)))
    for task, (matrix, rng) in enumerate(zip(correct, generators, strict=True)):
        images = matrix.shape[0]
        if images == 0:
            raise ValueError(f"task {task} has no test images to resample")
        values = matrix.astype(np.float64)
        for start in range(0, resamples, _CHUNK):
            stop = min(start + _CHUNK, resamples)
            counts = np.stack(
                [np.bincount(rng.integers(0, images, size=images), minlength=images) for _ in range(start, stop)]
            )
            # Integer counts times 0/1 sums exactly in float64, so this is (correct draws) / n_t to the bit.
            samples[start:stop, :, task] = (counts @ values) / images
    return samples


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The percentiles of `samples` along axis 0 that enclose the central `confidence` of them: (low, high)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    tail = (100.0 - 100.0 * confidence) / 2  # 2.5 exactly for 0.95
    low, high = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    return low, high


@dataclass(frozen=True)
class BootstrapIntervals:
    """Intervals of one metric for every row of a table: per task, of the average, and of the paired difference."""

    task_low: np.ndarray  # (rows, tasks)
    task_high: np.ndarray
    average_low: np.ndarray  # (rows,)
    average_high: np.ndarray
    # Each row's resampled average minus the baseline row's on the same resample; None without a baseline.
    difference_low: np.ndarray | None
    difference_high: np.ndarray | None


def bootstrap_intervals(
    samples: np.ndarray, baseline: int | None = None, confidence: float = CONFIDENCE
) -> BootstrapIntervals:
    """Intervals from resampled values of shape (resamples, rows, tasks); `baseline` is the row to pair against."""
    task_low, task_high = percentile_interval(samples, confidence)
    averages = samples.mean(axis=2)
    average_low, average_high = percentile_interval(averages, confidence)
    if baseline is None:
        return BootstrapIntervals(task_low, task_high, average_low, average_high, None, None)
    difference_low, difference_high = percentile_interval(averages - averages[:, [baseline]], confidence)
    return BootstrapIntervals(task_low, task_high, average_low, average_high, difference_low, difference_high)
