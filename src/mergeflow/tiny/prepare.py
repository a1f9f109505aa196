"""Prepare one tiny task's directory: draw its splits and store them in the format every stage reads."""

from __future__ import annotations

import os

from mergeflow.data import TaskClasses, write_task
from mergeflow.io import InputError
from mergeflow.tiny.splits import task_splits
from mergeflow.tiny.tasks import TINY_TASKS


def prepare_tiny_task(
    task: str,
    out: str | os.PathLike[str],
    *,
    train_size: int,
    test_size: int,
    image_size: int,
    seed: int,
    style: float,
    shift: float,
    val_size: int | None = None,
) -> dict[str, int]:
    """Write `task`'s train, val and test splits to `out`; returns images per split.

    Val is held out of the `train_size` training images: `val_size` of them, or by default the experts' rule
    (10%, at most 5000) that `write_task` applies.
    """
    spec = TINY_TASKS.get(task)
    if spec is None:
        raise InputError(f"--task {task!r}: unknown tiny task; expected one of {sorted(TINY_TASKS)}")
    if val_size is not None and not 0 < val_size < train_size:
        raise InputError(f"--val-size {val_size} (data.val_size): expected 1 to train_size - 1 = {train_size - 1}")
    train, test = task_splits(task, train_size, test_size, image_size, seed, style=style, shift=shift)
    held_out = {} if val_size is None else {"val_fraction": 1.0, "max_val": val_size}
    return write_task(out, task, TaskClasses(spec.classnames, spec.templates), train, test, **held_out)
