"""Fisher merging (Matena & Raffel, NeurIPS 2022) as FusionBench merges CLIP image encoders: a per-coordinate
average of the experts weighted by their diagonal Fishers.

Followed: tanganke/fusion_bench @ 54c9e8c9d9621620c720452cd8533332a32d3689,
`fusion_bench/method/fisher_merging/fisher_merging.py` L68-107 (`get_models_fisher_norm`), L110-189
(`merging_with_fisher_weights`), L312-323 (`fisher_scaling_coefficients`: None → 1/T each) and L380-457 (`run`),
with `config/method/fisher_merging/clip_fisher_merging.yaml` L3-9. For every key with a Fisher,

    θ = Σ_t c_t (F_t + ε) θ_t / Σ_t c_t (F_t + ε),    ε = `minimal_fisher_weight` (1e-6), c_t = 1/T,

and with `normalize_fisher_weight` (true for CLIP) c_t is multiplied by (1/(‖F_t‖ + ε)) / Σ_s 1/(‖F_s‖ + ε),
‖F_t‖ the L2 norm of task t's Fisher over every merged key of the model (`fisher_norms`). Keys without a Fisher
keep θ_0 (FusionBench loads the merged keys into θ_0 with `strict=False`, L453-454). ε is added to the Fisher, not
a floor as in the authors' `fisher_floor` (mmatena/model_merging @ 46802f9, `model_merging/merging.py` L36-71);
FusionBench's names and defaults are used. FusionBench's CLIP `run` always uses c_t = 1/T (L446); the other
coefficients are its `fisher_merging` function's option.

`fisher_weighted_average` is FusionBench's formula on θ_t. The per-tensor rule applies it to τ_t = θ_t − θ_0 and
adds θ_0 (the same merge, since the weights sum to one; it differs from the θ_t form by rounding only), because a
context hands out θ_t only as task vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mergeflow.merging.context import Placement, TensorContext, TensorDirection, float_keys
from mergeflow.merging.sources import TensorSource
from mergeflow.merging.task_statistics import TaskStatistics, stacked_statistics

MINIMAL_FISHER_WEIGHT = 1e-6
NORMALIZE_FISHER_WEIGHT = True


def _per_task(tensor: Tensor, ndim: int) -> Tensor:
    """A (T,) tensor shaped (T, 1, 1, …) to broadcast against a (T, …) stack of `ndim` dimensions."""
    return tensor.reshape(-1, *[1 for _ in range(ndim - 1)])


def key_fisher_norms(fishers: Tensor) -> Tensor:
    """(T,) L2 norm of each task's Fisher of one key (`fishers` stacked (T, …)), L95-97."""
    if fishers.dim() == 1:  # a scalar parameter: FusionBench's empty `dim` list would reduce over the tasks too
        return fishers.abs()
    return torch.linalg.vector_norm(fishers, dim=list(range(1, fishers.dim())))


def fisher_norms(per_key: Iterable[Tensor]) -> Tensor:
    """(T,) L2 norm of each task's Fisher over every key: the per-key norms' norm (L100-106), key by key."""
    norms = [key_fisher_norms(fishers) for fishers in per_key]
    if not norms:
        raise ValueError("no key has a Fisher")
    return torch.norm(torch.stack(norms, dim=1), dim=1)


def task_fisher_norms(
    source: TensorSource, task_statistics: TaskStatistics, placement: Placement, keys: Sequence[str] | None = None
) -> Tensor:
    """`fisher_norms` over the floating-point keys of `source` that have a Fisher, read one key at a time.

    Keys are summed in sorted order, as a safetensors file lists them, so that a merge from files and one from
    the same tensors in memory add in the same order.
    """
    keys = sorted(float_keys(source)) if keys is None else keys
    stacked = (
        stacked_statistics(task_statistics, key, source.num_tasks, placement.device, placement.dtype) for key in keys
    )
    return fisher_norms(fishers for fishers in stacked if fishers is not None)


def fisher_statistics(
    source: TensorSource,
    hparams: Mapping[str, Any],
    placement: Placement,
    progress: bool,
    task_statistics: TaskStatistics,
) -> Tensor | None:
    """The whole-model pass: each task's Fisher norm when `normalize_fisher_weight`, else None."""
    if not hparams.get("normalize_fisher_weight", NORMALIZE_FISHER_WEIGHT):
        return None
    return task_fisher_norms(source, task_statistics, placement)


def fisher_weighted_average(
    weights: Tensor,
    fishers: Tensor,
    scaling: Sequence[float] | None,
    minimal_fisher_weight: float = MINIMAL_FISHER_WEIGHT,
    norms: Tensor | None = None,
) -> Tensor:
    """Σ_t c_t (F_t + ε) w_t / Σ_t c_t (F_t + ε) over the leading (task) axis of `weights` and `fishers`.

    c_t is `scaling` (None: 1/T each); `norms` ((T,) whole-model Fisher norms) rescales c_t as
    `normalize_fisher_weight` does. FusionBench's order of operations (L142-188), in the weights' dtype.
    """
    if weights.shape != fishers.shape:
        raise ValueError(f"weights {tuple(weights.shape)} and Fishers {tuple(fishers.shape)} differ in shape")
    num_tasks = weights.shape[0]
    if scaling is None:
        coefficients = torch.ones(num_tasks, dtype=weights.dtype) / num_tasks
    else:
        if len(scaling) != num_tasks:
            raise ValueError(f"{len(scaling)} fisher_scaling_coefficients for {num_tasks} tasks")
        coefficients = torch.tensor([float(value) for value in scaling], dtype=weights.dtype)
    fisher_weights = fishers.to(weights.dtype) + minimal_fisher_weight
    coefficients = _per_task(coefficients, weights.dim()).to(weights.device)
    if norms is not None:
        if norms.shape != (num_tasks,):
            raise ValueError(f"Fisher norms of shape {tuple(norms.shape)} for {num_tasks} tasks")
        inverse = 1.0 / (norms.to(weights.device, weights.dtype) + minimal_fisher_weight)
        coefficients = coefficients * _per_task(inverse / inverse.sum(), weights.dim())
    numerator = (coefficients * fisher_weights * weights).sum(dim=0)
    denominator = (coefficients * fisher_weights).sum(dim=0)
    return numerator / denominator


def _scaling(value: Any, num_tasks: int) -> Sequence[float] | None:
    """`fisher_scaling_coefficients`: None or one shared number → equal (1/T each), else one per task."""
    if value is None or isinstance(value, int | float):
        return None
    values = [float(item) for item in value]
    if len(values) != num_tasks:
        raise ValueError(f"fisher_scaling_coefficients: {len(values)} values for {num_tasks} tasks")
    return values


def fisher(ctx: TensorContext) -> TensorDirection:
    """θ = Fisher-weighted average of the θ_t on keys with a Fisher (`ctx.task_statistics`, (T, …)); else θ_0.

    With `normalize_fisher_weight`, `ctx.statistics` must be the (T,) whole-model norms (`fisher_statistics`).
    """
    fishers = ctx.task_statistics
    if fishers is None:
        return TensorDirection(ctx.pretrained)
    norms = None
    if ctx.hparams.get("normalize_fisher_weight", NORMALIZE_FISHER_WEIGHT):
        if not isinstance(ctx.statistics, Tensor):
            raise RuntimeError(
                f"{ctx.key}: normalize_fisher_weight needs every task's whole-model Fisher norm (fisher_statistics)"
            )
        norms = ctx.statistics
    scaling = _scaling(ctx.hparams.get("fisher_scaling_coefficients"), ctx.num_tasks)
    minimal = float(ctx.hparams.get("minimal_fisher_weight", MINIMAL_FISHER_WEIGHT))
    return TensorDirection(ctx.pretrained + fisher_weighted_average(ctx.task_vectors, fishers, scaling, minimal, norms))
