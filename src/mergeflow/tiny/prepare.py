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
) -> dict[str, int]:
    """Write `task`'s train (val held out by `write_task`) and test splits to `out`; returns images per split."""
    spec = TINY_TASKS.get(task)
    if spec is None:
        raise InputError(f"--task {task!r}: unknown tiny task; expected one of {sorted(TINY_TASKS)}")
    train, test = task_splits(task, train_size, test_size, image_size, seed, style=style, shift=shift)
    return write_task(out, task, TaskClasses(spec.classnames, spec.templates), train, test)
