"""Per-image test correctness at the selected setting: what the tables' bootstrap intervals resample.

One safetensors file per evaluation job, `eval/<method>.correct.safetensors` and, for the zero-shot and
individual models, `eval/reference.correct.safetensors`: one 1-D bool tensor per (row, task), named
`<row>/<task>`, True where the image's top-1 prediction is its label, in the task's stored test order. A
row is the method entry (`cart`, `cart@released`) or, in the reference file, `zero-shot` / `individual`
(and `multi-task` when the run has the multi-task encoder), names no method entry can take (so the
`zeroshot` merge keeps its own row). Nothing else is stored:
accuracy, and every interval around it, follows from these vectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mergeflow.evaluation.results import PathLike
from mergeflow.io import InputError, atomic_path

# row → task → per-image correctness (bool, test-image order)
Correctness = dict[str, dict[str, np.ndarray]]
# The reference models' rows, named as in the main table.
ZERO_SHOT_ROW = "zero-shot"
INDIVIDUAL_ROW = "individual"
MULTITASK_ROW = "multi-task"
_SEPARATOR = "/"


def save_correctness(path: PathLike, correctness: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Write every row's per-task correctness vectors to `path` atomically (same vectors, same bytes)."""
    from safetensors.numpy import save

    tensors = {}
    for row, by_task in correctness.items():
        if not row or _SEPARATOR in row:
            raise ValueError(f"row name {row!r}: expected a non-empty name without {_SEPARATOR!r}")
        for task, correct in by_task.items():
            vector = np.asarray(correct)
            if vector.dtype != np.bool_ or vector.ndim != 1:
                raise ValueError(f"{row}/{task}: expected a 1-D bool vector, got {vector.dtype} {vector.shape}")
            tensors[f"{row}{_SEPARATOR}{task}"] = np.ascontiguousarray(vector)
    if not tensors:
        raise ValueError(f"{path}: nothing to write (expected at least one row with one task)")
    data = save(tensors)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def load_correctness(path: PathLike) -> Correctness:
    """Read a file written by `save_correctness`: row → task → bool vector."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if not Path(path).is_file():
        raise InputError(f"{path}: file not found (expected per-image correctness written by an evaluation job)")
    try:
        tensors = load(Path(path).read_bytes())
    except SafetensorError as err:
        raise InputError(f"{path}: not a safetensors file ({err}); expected per-image correctness") from None
    correctness: Correctness = {}
    for key, vector in tensors.items():
        row, separator, task = key.partition(_SEPARATOR)
        if not separator or not row or not task:
            raise InputError(f"{path}: tensor {key!r} is not named <row>/<task>")
        if vector.dtype != np.bool_ or vector.ndim != 1:
            raise InputError(f"{path}: tensor {key!r} is {vector.dtype} {list(vector.shape)}; expected 1-D bool")
        correctness.setdefault(row, {})[task] = vector
    if not correctness:
        raise InputError(f"{path}: no tensors; expected one per (row, task)")
    return correctness


@dataclass(frozen=True)
class PerImageCorrectness:
    """Rows of per-image correctness, and the file each was read from (for error messages)."""

    rows: Correctness
    sources: Mapping[str, str]

    def source(self, row: str) -> str:
        return self.sources.get(row, f"per-image correctness of {row!r}")


def read_correctness_files(paths: Sequence[PathLike]) -> PerImageCorrectness:
    """The rows of several files together; a row in two files is an error naming both."""
    rows: Correctness = {}
    sources: dict[str, str] = {}
    for path in paths:
        for row, by_task in load_correctness(path).items():
            if row in rows:
                raise InputError(f"{path}: row {row!r} was already read from {sources[row]}; expected it in one file")
            rows[row] = by_task
            sources[row] = str(path)
    return PerImageCorrectness(rows, sources)
