"""Prepared task data on disk: memory-mappable uint8 NHWC images, int64 labels and class names.

Layout of one task directory: `{split}_images.npy`, `{split}_labels.npy` for split in train/val/test
(train is the training split minus the held-out val split), and `classnames.json`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def classes_path(task_dir: str | os.PathLike[str]) -> Path:
    """The class names and templates of a task directory (written last: the directory's completion marker)."""
    return Path(task_dir) / "classnames.json"


def split_paths(task_dir: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """The images and labels files of one split in a task directory."""
    directory = Path(task_dir)
    return directory / f"{split}_images.npy", directory / f"{split}_labels.npy"


def save_split(task_dir: str | os.PathLike[str], split: str, images: np.ndarray, labels: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"split {split!r}: expected uint8 NHWC images, got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"split {split!r}: {labels.shape[0]} labels for {images.shape[0]} images")
    images_path, labels_path = split_paths(task_dir, split)
    _save_array(images_path, images)
    _save_array(labels_path, labels.astype(np.int64))


def _load_array(path: Path, *, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: file not found (run the prepare_data rule for this task)")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable .npy array, truncated or corrupt? ({err})") from None


def load_split(task_dir: str | os.PathLike[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's uint8 NHWC images (memory-mapped: a job reads only the batches it uses) and labels.

    InputError naming the file when a file is missing or unreadable, the images are not uint8 NHWC RGB,
    the labels are not one integer per image within the task's classes, or the split is empty.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    directory = Path(task_dir)
    num_classes = len(load_classes(directory).classnames)
    images_path, labels_path = split_paths(directory, split)
    images = _load_array(images_path, mmap=True)
    labels = _load_array(labels_path, mmap=False)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"{images_path}: expected uint8 images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{labels_path}: expected integer labels [N], got {labels.dtype} {list(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise InputError(f"{directory}: {split} has {images.shape[0]} images but {labels.shape[0]} labels")
    if len(labels) == 0:
        raise InputError(f"{directory}: the {split} split is empty")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise InputError(
            f"{labels_path}: labels range over [{low}, {high}], outside the {num_classes} classes of "
            f"{classes_path(directory)}"
        )
    return images, labels


def check_head_fits(head: Any, head_path: str | os.PathLike[str], task_dir: str | os.PathLike[str]) -> None:
    """InputError when a head's class count [C, D] differs from the task data's number of classes."""
    num_classes = len(load_classes(task_dir).classnames)
    if head.shape[0] != num_classes:
        raise InputError(
            f"{head_path}: head has {head.shape[0]} classes but {classes_path(task_dir)} has "
            f"{num_classes}; rebuild the head for this data"
        )


def save_classes(
    task_dir: str | os.PathLike[str], task: str, classes: TaskClasses, *, data: dict[str, Any] | None = None
) -> None:
    """Write the completion marker; `data` (real tasks) records where the images came from and how val was made."""
    record: dict[str, Any] = {
        "task": task,
        "classnames": list(classes.classnames),
        "templates": list(classes.templates),
    }
    if data is not None:
        record["data"] = data
    write_json(classes_path(task_dir), record)


def load_data_record(task_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The `data` record of a prepared real task (None for the tiny tasks, which carry none)."""
    record = read_json(classes_path(task_dir)).get("data")
    if record is not None and not isinstance(record, dict):
        raise InputError(f"{classes_path(task_dir)}: key 'data' must be a mapping, got {type(record).__name__}")
    return record


def load_classes(task_dir: str | os.PathLike[str]) -> TaskClasses:
    path = classes_path(task_dir)
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
