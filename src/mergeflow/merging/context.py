"""What a method sees for one tensor, and what it returns for it."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import torch
from tqdm import tqdm

from mergeflow.merging import vectors
from mergeflow.merging.sources import TensorSource
from mergeflow.merging.spectral import MatrixFactors, truncated_svd
from mergeflow.merging.task_statistics import TaskStatistics, stacked_statistics


class TensorContext:
    """One floating-point tensor of every model, in the compute dtype on the compute device.

    `statistics` is what the method's whole-model pass returned (TIES thresholds), `factors` the
    cached SVD of this tensor's task vectors when the caller supplied them, `task_statistics` the T
    fine-tuned models' data statistics of this key stacked (RegMean's Grams, Fisher's diagonal), or None
    when the key has none.

    The context owns the stack of fine-tuned tensors and turns it into τ_t or τ̄_t in place the
    first time either is asked for: holding θ_t and τ_t side by side would double the T-sized term
    of streaming's memory. So a method reads `average` (if it needs it) before the vectors, and uses
    either `task_vectors` or `centered_task_vectors`, never both; anything else raises.
    """

    def __init__(
        self,
        key: str,
        pretrained: torch.Tensor,
        finetuned: torch.Tensor,
        hparams: Mapping[str, Any],
        statistics: Any = None,
        factors: MatrixFactors | None = None,
        task_statistics: torch.Tensor | None = None,
    ) -> None:
        self.key = key
        self.pretrained = pretrained
        self.hparams = hparams
        self.statistics = statistics
        self.factors = factors
        self.task_statistics = task_statistics
        self._stack = finetuned
        self._stack_holds: Literal["finetuned", "task_vectors", "centered_task_vectors"] = "finetuned"

    @property
    def num_tasks(self) -> int:
        return self._stack.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.pretrained.shape

    @cached_property
    def average(self) -> torch.Tensor:
        """θ_avg, from the fine-tuned tensors (so only before they become task vectors)."""
        self._require("finetuned", "average")
        return vectors.average_over_tasks(self._stack)

    @property
    def task_vectors(self) -> torch.Tensor:
        """τ_t = θ_t − θ_0, stacked."""
        if self._stack_holds == "finetuned":
            vectors.to_task_vectors_(self._stack, self.pretrained)
            self._stack_holds = "task_vectors"
        self._require("task_vectors", "task_vectors")
        return self._stack

    @property
    def centered_task_vectors(self) -> torch.Tensor:
        """τ̄_t = θ_t − θ_avg, stacked."""
        if self._stack_holds == "finetuned":
            vectors.to_task_vectors_(self._stack, self.average)
            self._stack_holds = "centered_task_vectors"
        self._require("centered_task_vectors", "centered_task_vectors")
        return self._stack

    def top_triplets(self, k: int, *, centered: bool) -> MatrixFactors:
        """Top-k SVD triplets of each task's τ̄_t (`centered`) or τ_t: cut from the cached factors when
        the caller gave them (the vectors are then never formed), else decomposed now."""
        if self.factors is not None:
            return self.factors.truncated(k).to(self.pretrained.device)
        return truncated_svd(self.centered_task_vectors if centered else self.task_vectors, k)

    def _require(self, holds: str, wanted: str) -> None:
        if self._stack_holds != holds:
            raise RuntimeError(
                f"{self.key}: {wanted} asked for after the fine-tuned tensors became {self._stack_holds}"
            )


@dataclass(frozen=True)
class TensorDirection:
    """This tensor's merge is `origin + lam * delta`; `delta=None` means the merge is `origin` itself.

    `origin` is either the context's pretrained tensor (the very object, which is how an untouched
    tensor is recognised) or a new tensor such as θ_avg.
    """

    origin: torch.Tensor
    delta: torch.Tensor | None = None


def combine(origin: torch.Tensor, delta: torch.Tensor | None, lam: float, dtype: torch.dtype) -> torch.Tensor:
    """origin + lam·delta as a new tensor of `dtype`: the one place a merged weight is formed."""
    if delta is None:
        return origin.to(dtype, copy=True)
    return torch.add(origin, delta, alpha=lam).to(dtype)


@dataclass(frozen=True)
class Placement:
    """Where and in which dtype tensors are computed: float32, or float64 when the pretrained model has float64."""

    device: torch.device
    dtype: torch.dtype


def placement_for(source: TensorSource, device: str | torch.device) -> Placement:
    has_float64 = any(source.spec(key).dtype == torch.float64 for key in source.keys)
    return Placement(torch.device(device), torch.float64 if has_float64 else torch.float32)


def float_keys(source: TensorSource) -> list[str]:
    return [key for key in source.keys if source.spec(key).is_float]


def load_context(
    source: TensorSource,
    key: str,
    hparams: Mapping[str, Any],
    placement: Placement,
    statistics: Any = None,
    factors: MatrixFactors | None = None,
    task_statistics: TaskStatistics | None = None,
) -> TensorContext:
    """Read one floating-point key of every model into a context on the compute device.

    The fine-tuned tensors are read one at a time straight into the stack, so no second copy of
    all T of them exists even briefly.
    """
    shape = source.spec(key).shape
    finetuned = torch.empty((source.num_tasks, *shape), dtype=placement.dtype, device=placement.device)
    for task in range(source.num_tasks):
        finetuned[task] = source.load_finetuned(key, task)
    return TensorContext(
        key=key,
        pretrained=source.load_pretrained(key).to(placement.device, placement.dtype),
        finetuned=finetuned,
        hparams=hparams,
        statistics=statistics,
        factors=factors,
        task_statistics=stacked_statistics(task_statistics, key, source.num_tasks, placement.device, placement.dtype),
    )


def progress_over(keys: Sequence[str], description: str, enabled: bool) -> Iterable[str]:
    """Keys wrapped in a stderr progress bar when `enabled` (the CLI and streaming paths)."""
    return tqdm(keys, desc=description, unit="tensor", file=sys.stderr, disable=not enabled, leave=False)
