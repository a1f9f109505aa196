"""Per-task statistics a data-based merge reads key by key (RegMean's Gram matrices, Fisher's diagonal Fisher).

One state dict per fine-tuned model, from its task's training images (`mergeflow.statistics`), with a tensor for
every key the method treats specially. In memory, or safetensors files read one key at a time, so a merge that
streams its models streams their statistics too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from mergeflow.io import InputError, checked_finite
from mergeflow.merging.sources import open_safetensors

# The header key of a statistics file that names its kind (grams, fisher).
STATISTICS_KIND_METADATA = "mergeflow.statistics"


class TaskStatistics(Protocol):
    """Statistics of every fine-tuned model, one (key, task) at a time."""

    @property
    def num_tasks(self) -> int: ...

    def has(self, key: str) -> bool: ...

    def load(self, key: str, task: int) -> torch.Tensor: ...


class InMemoryStatistics:
    """Statistics already in memory, one state dict per task, all with the same keys."""

    def __init__(self, per_task: Sequence[Mapping[str, torch.Tensor]]) -> None:
        self._per_task = tuple(per_task)
        check_same_keys([set(stats) for stats in self._per_task], [f"statistics[{i}]" for i in range(len(per_task))])

    @property
    def num_tasks(self) -> int:
        return len(self._per_task)

    def has(self, key: str) -> bool:
        return key in self._per_task[0]

    def load(self, key: str, task: int) -> torch.Tensor:
        return self._per_task[task][key]


class FileStatistics:
    """Statistics files opened lazily: a tensor is read only when its key is merged."""

    def __init__(self, handles: Sequence[Any], paths: Sequence[Path]) -> None:
        self._handles = tuple(handles)
        self._paths = tuple(paths)
        check_same_keys([set(handle.keys()) for handle in handles], [str(path) for path in paths])
        self._keys = frozenset(handles[0].keys())

    @property
    def num_tasks(self) -> int:
        return len(self._handles)

    def has(self, key: str) -> bool:
        return key in self._keys

    def load(self, key: str, task: int) -> torch.Tensor:
        return checked_finite(self._handles[task].get_tensor(key), f"{self._paths[task]}: key {key!r}")


def check_same_keys(keys: Sequence[set[str]], names: Sequence[str]) -> None:
    """InputError naming the first task's statistics whose keys differ from the first's."""
    if not keys:
        raise InputError("no task statistics given; expected one file per fine-tuned model")
    for found, name in zip(keys[1:], names[1:]):
        if found != keys[0]:
            difference = sorted(found ^ keys[0])
            raise InputError(
                f"{name}: keys differ from {names[0]}'s (first: {difference[0]!r}); expected the same keys"
            )


@contextlib.contextmanager
def open_task_statistics(paths: Sequence[str | os.PathLike[str]]) -> Iterator[FileStatistics]:
    """Open one statistics file per task for lazy reading; the handles close when the block ends."""
    with contextlib.ExitStack() as stack:
        resolved = [Path(path) for path in paths]
        yield FileStatistics([open_safetensors(stack, path) for path in resolved], resolved)


def stacked_statistics(
    statistics: TaskStatistics | None, key: str, num_tasks: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """The T tasks' statistics of `key` stacked on the compute device, or None when `key` has none."""
    if statistics is None or not statistics.has(key):
        return None
    if statistics.num_tasks != num_tasks:
        raise InputError(f"{statistics.num_tasks} task statistics for {num_tasks} fine-tuned models; expected one each")
    return torch.stack([statistics.load(key, task).to(device, dtype) for task in range(num_tasks)])
