"""Prepared task data on disk: memory-mappable uint8 NHWC images, int64 labels and class names.

Layout of one task directory: `{split}_images.npy`, `{split}_labels.npy` for split in train/val/test
(train is the training split minus the held-out val split), and `classnames.json`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mergeflow.io import InputError, atomic_path, read_json, write_json

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskClasses:
    classnames: tuple[str, ...]
    templates: tuple[str, ...]


def train_val_indices(
    n_train: int, *, seed: int = 0, fraction: float = 0.1, max_val: int = 5000
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out min(max_val, floor(fraction·n)) training examples as val via a seeded permutation.

    Returns (train indices, val indices), each sorted so the stored order follows the source order.
    """
    n_val = min(max_val, int(fraction * n_train))
    order = np.random.default_rng(seed).permutation(n_train)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


def save_split(task_dir: str | os.PathLike[str], split: str, images: np.ndarray, labels: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"split {split!r}: expected uint8 NHWC images, got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"split {split!r}: {labels.shape[0]} labels for {images.shape[0]} images")
    directory = Path(task_dir)
    _save_array(directory / f"{split}_images.npy", images)
    _save_array(directory / f"{split}_labels.npy", labels.astype(np.int64))


def load_split(task_dir: str | os.PathLike[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images are memory-mapped: a job reads only the batches it uses."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    directory = Path(task_dir)
    paths = [directory / f"{split}_images.npy", directory / f"{split}_labels.npy"]
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: file not found (run the prepare_data rule for this task)")
    images = np.load(paths[0], mmap_mode="r", allow_pickle=False)
    labels = np.load(paths[1], allow_pickle=False)
    if images.shape[0] != labels.shape[0]:
        raise InputError(f"{directory}: {split} has {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def save_classes(task_dir: str | os.PathLike[str], task: str, classes: TaskClasses) -> None:
    write_json(
        Path(task_dir) / "classnames.json",
        {"task": task, "classnames": list(classes.classnames), "templates": list(classes.templates)},
    )


def load_classes(task_dir: str | os.PathLike[str]) -> TaskClasses:
    path = Path(task_dir) / "classnames.json"
    obj = read_json(path)
    for key in ("classnames", "templates"):
        if not isinstance(obj.get(key), list) or not obj[key]:
            raise InputError(f"{path}: key {key!r} must be a non-empty list")
    bad = [t for t in obj["templates"] if "{}" not in t]
    if bad:
        raise InputError(f"{path}: templates must contain '{{}}' for the class name; got {bad}")
    return TaskClasses(classnames=tuple(obj["classnames"]), templates=tuple(obj["templates"]))


def write_task(
    task_dir: str | os.PathLike[str],
    task: str,
    classes: TaskClasses,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    val_seed: int = 0,
    val_fraction: float = 0.1,
    max_val: int = 5000,
) -> dict[str, int]:
    """Store a task: split val off the full training split, then write every split and the class names.

    Returns the number of examples per split. `classnames.json` is written last (the completion marker).
    """
    train_images, train_labels = train
    train_idx, val_idx = train_val_indices(len(train_labels), seed=val_seed, fraction=val_fraction, max_val=max_val)
    splits = {
        "train": (train_images[train_idx], train_labels[train_idx]),
        "val": (train_images[val_idx], train_labels[val_idx]),
        "test": test,
    }
    for split, (images, labels) in splits.items():
        save_split(task_dir, split, images, labels)
    save_classes(task_dir, task, classes)
    return {split: int(len(labels)) for split, (_, labels) in splits.items()}
