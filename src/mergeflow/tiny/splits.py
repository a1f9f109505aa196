"""What the tiny benchmark's rules draw: task splits in the task's look plus the shared shift, and the
pre-training pool in the tasks' looks alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mergeflow.io import InputError
from mergeflow.tiny.domains import apply_domain
from mergeflow.tiny.tasks import TINY_TASKS, generate_split

Split = tuple[np.ndarray, np.ndarray]


def task_splits(
    task: str, train_size: int, test_size: int, image_size: int, seed: int, *, style: float, shift: float
) -> tuple[Split, Split]:
    """(train, test) of `task`: images uint8 NHWC and labels; the test split draws with `seed + 1`."""
    splits = []
    for n, split_seed in ((train_size, seed), (test_size, seed + 1)):
        images, labels = generate_split(task, n, image_size, split_seed)
        splits.append((apply_domain(images, task, style=style, shift=shift), labels))
    return splits[0], splits[1]


def pretraining_pool(
    tasks: Sequence[str], images_per_task: int, image_size: int, data_seed: int, *, style: float
) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Images of every task (task i drawn with `data_seed + i`) and their (task, label) pairs.

    The tasks' looks, never the task-split shift: adapting to that shift is what fine-tuning has to learn.
    """
    unknown = [task for task in tasks if task not in TINY_TASKS]
    if unknown:
        raise InputError(f"pretrain.tasks: unknown tiny tasks {unknown}; expected names from {sorted(TINY_TASKS)}")
    images, task_labels = [], []
    for offset, task in enumerate(tasks):
        content, labels = generate_split(task, images_per_task, image_size, data_seed + offset)
        images.append(apply_domain(content, task, style=style, shift=0.0))
        task_labels += [(task, int(label)) for label in labels]
    return np.concatenate(images), task_labels
