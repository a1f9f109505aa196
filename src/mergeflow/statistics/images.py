"""Which training images a data-based merge sees: a seeded sample of a task's prepared train split, in batches."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from mergeflow.data import load_split
from mergeflow.io import InputError
from mergeflow.models.clip import ModelSpec, normalise_images


def training_sample(task_dir: str | os.PathLike[str], images: int, seed: int | None) -> np.ndarray:
    """`images` uint8 NHWC train images of a prepared task: drawn without replacement by a permutation seeded
    with `seed`, or the first `images` in stored order when `seed` is None. A smaller split gives all its images.

    FusionBench's RegMean iterates a shuffled DataLoader until it has `num_regmean_examples`, of which a seeded
    permutation is the same kind of sample, reproducible by itself; its Fisher merging iterates an unshuffled one,
    so it sees the first `num_fisher_examples` training images.
    """
    if images < 1:
        raise InputError(f"task_statistics.images: {images}; expected at least 1")
    pool, _ = load_split(task_dir, "train")
    if seed is None:
        return np.asarray(pool[:images])
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:images]
    return np.asarray(pool[np.sort(order.numpy())])


def image_batches(images: np.ndarray, spec: ModelSpec, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Normalised float NCHW batches on `device`, in order."""
    for start in range(0, len(images), batch_size):
        yield normalise_images(
            torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device), spec
        )
