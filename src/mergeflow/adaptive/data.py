"""What adaptation reads per task (unlabeled test images and a frozen head), and the seeded batch order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mergeflow.io import InputError
from mergeflow.models.clip import ModelSpec


@dataclass(frozen=True)
class UnlabeledTask:
    """One task's unlabeled test images (uint8 NHWC) and its frozen zero-shot head [C, D] with its logit scale.

    There is no label field: adaptation minimises prediction entropy, and labels never reach it.
    """

    name: str
    images: np.ndarray
    head: torch.Tensor
    logit_scale: torch.Tensor


def check_tasks(tasks: Sequence[UnlabeledTask], num_models: int, spec: ModelSpec, batch_size: int) -> None:
    """InputError naming the task when the images or head cannot feed this encoder with full batches."""
    if len(tasks) != num_models:
        raise InputError(f"adaptation: got {len(tasks)} tasks for {num_models} fine-tuned models (one per model)")
    expected = (spec.image_size, spec.image_size, 3)
    for task in tasks:
        if task.images.dtype != np.uint8 or task.images.ndim != 4 or task.images.shape[1:] != expected:
            raise InputError(
                f"task {task.name!r}: images must be uint8 of shape [N, {expected[0]}, {expected[1]}, 3], "
                f"got {task.images.dtype} {list(task.images.shape)}"
            )
        if len(task.images) < batch_size:
            raise InputError(f"task {task.name!r}: {len(task.images)} images, fewer than the batch size {batch_size}")
        if task.head.ndim != 2:
            raise InputError(f"task {task.name!r}: head must be [num_classes, embed_dim], got {list(task.head.shape)}")
        if task.logit_scale.numel() != 1:
            raise InputError(f"task {task.name!r}: logit_scale must be a scalar, got {list(task.logit_scale.shape)}")


def shuffled_batches(size: int, batch_size: int, seed: Sequence[int]) -> Iterator[np.ndarray]:
    """Endless sorted index batches: passes over a fresh permutation each, the last partial batch dropped.

    A task's order depends only on its seed and size, never on the other tasks.
    """
    generator = np.random.default_rng(list(seed))
    while True:
        order = generator.permutation(size)
        for start in range(0, size - batch_size + 1, batch_size):
            # Sorted so that reading a memory-mapped image array walks forward.
            yield np.sort(order[start : start + batch_size])
