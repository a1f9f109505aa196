"""EMR-Merging (NeurIPS 2024): one unified task vector, and per task a mask and a rescaler that rebuild its model.

Followed: harveyhuang18/EMR_Merging @ cc225ec (cc225ecb5589aae273dc10889676d94366cd34fc),
`merge_vit/src/main_emr_merging.py` L41-74 (`emr_merge`, the 8-task open_clip experiment) with L26-38
(`apply_vector`) and L100-104 (the task-i model). Per key n of the task vectors τ_t = θ_t − θ_0:

- elect (L51, L57): γ = +1 where mean_t τ_t > 0, else −1 (an entry whose mean is 0 gets −1);
- mask (L61): M_t = (τ_t · γ > 0), i.e. τ_t agrees with γ and is not 0; equal to (τ_t · τ_uni > 0);
- unify (L63-64, L66): τ_uni = γ · max over the agreeing tasks of |τ_t| (0 where none agrees);
- rescale (L65, L69-72): λ_t = Σ_n mean(|τ_t[n]|) / Σ_n mean(|M_t[n] ⊙ τ_uni[n]|): a sum over keys of
  per-key *means*, so every key weighs the same whatever its size; not the ratio of the whole model's
  Σ|·| (the authors' `main_emr_30_vits.py` L76-101 flattens the model first and so does take that ratio,
  but that script merges Hugging Face ViTs, not open_clip encoders);
- task-t model (L103-104): θ_0 + (τ_uni ⊙ M_t) · λ_t on every key of the task vector; `apply_vector`
  leaves every other key of θ_0 in place (`load_state_dict(..., strict=False)`).

Which keys (d): `merge_vit/src/task_vectors.py` L21-24 builds τ on every key of the image encoder's state dict
except int64/uint8 ones, and the encoder (`merge_vit/src/modeling.py` L18-24) is open_clip's CLIP without its
text transformer. So every floating-point tensor is merged (our engine copies the others from θ_0, as
`apply_vector` does), and the rescaler sums over all of them. The authors' state dict also holds CLIP's unused
text-side tensors (token_embedding, ln_final, text_projection, logit_scale); fine-tuning never changes them, so
their τ = 0 adds 0 to both sums and leaving them out, as our visual-tower state dicts do, changes no λ_t.

FusionBench (tanganke/fusion_bench @ 54c9e8c, `fusion_bench/method/emr_merging/utils.py` L14-65, applied at
L140-143) is the same algorithm: it elects the sign of Σ_t τ_t (`state_dict_sum`) instead of the mean, with
zeros likewise −1, and also sums per-key means. We elect on Σ_t τ_t added in task order as it does (our
reductions over tasks are explicit loops); its sign differs from the mean's only through round-off.

Departures: λ_t is accumulated in float64 (the authors add float32 per-key means into a float32 tensor, so our
λ_t differs from theirs in the last float32 bits); and where Σ_n mean(|M_t ⊙ τ_uni|) = 0 — τ_t is 0 everywhere,
or never agrees with γ — the authors' λ_t is 0/0 or x/0 and their task-t model is NaN everywhere (∞·0 = NaN).
We set λ_t = 0: M_t ⊙ τ_uni is then 0 everywhere, so the task-t model is θ_0 (for τ_t = 0 that is the expert).
A key with no entries (the authors' mean of it is NaN) adds nothing.

The method has no λ: the `task` hyper-parameter picks which task's model is built, returned whole as `origin`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mergeflow.io import InputError
from mergeflow.merging.context import (
    Placement,
    TensorContext,
    TensorDirection,
    float_keys,
    load_context,
    progress_over,
)
from mergeflow.merging.sources import TensorSource
from mergeflow.merging.vectors import sum_over_tasks


@dataclass(frozen=True)
class EmrStatistics:
    """λ_t of every task: Σ_n mean|τ_t[n]| / Σ_n mean|M_t[n] ⊙ τ_uni[n]| over the floating-point keys n.

    0 where the denominator is 0 (the task-t model is then θ_0).
    """

    rescalers: tuple[float, ...]


def elected_signs(vectors: torch.Tensor) -> torch.Tensor:
    """γ: +1 where Σ_t τ_t > 0, else −1 (zeros too, as the authors' `(mean > 0) * 2 - 1`), in the vectors' dtype."""
    positive = sum_over_tasks(vectors) > 0
    return torch.where(positive, 1.0, -1.0).to(vectors.dtype)


def unified_vector(vectors: torch.Tensor) -> torch.Tensor:
    """τ_uni of stacked task vectors (T, ...): γ · max |τ_t| over the tasks whose τ_t · γ > 0, 0 where none does."""
    signs = elected_signs(vectors)
    agrees = vectors * signs > 0
    largest = torch.where(agrees, vectors.abs(), 0.0).amax(dim=0)
    return largest * signs


def task_masks(vectors: torch.Tensor, unified: torch.Tensor) -> torch.Tensor:
    """M_t = (τ_t · τ_uni > 0), stacked (T, ...) bool (or one task's (...) for one τ_t)."""
    return vectors * unified > 0


def checked_task(task: int, num_tasks: int) -> int:
    if not 0 <= task < num_tasks:
        raise InputError(f"emr: task {task} is not a task index; there are {num_tasks} tasks (0 to {num_tasks - 1})")
    return task


def emr_statistics(
    source: TensorSource, hparams: Mapping[str, Any], placement: Placement, progress: bool
) -> EmrStatistics:
    """Every task's rescaler, in one pass over the floating-point keys (one key of every model at a time)."""
    checked_task(hparams["task"], source.num_tasks)
    numerators = torch.zeros(source.num_tasks, dtype=torch.float64, device=placement.device)
    denominators = torch.zeros_like(numerators)
    for key in progress_over(float_keys(source), "emr rescalers", progress):
        vectors = load_context(source, key, hparams, placement).task_vectors
        size = vectors[0].numel()
        if size == 0:
            continue
        unified = unified_vector(vectors)
        for task, vector in enumerate(vectors):
            kept = unified * task_masks(vector, unified)
            numerators[task] += torch.sum(vector.abs(), dtype=torch.float64) / size
            denominators[task] += torch.sum(kept.abs(), dtype=torch.float64) / size
    rescalers = torch.where(denominators > 0, numerators / denominators, 0.0)
    return EmrStatistics(tuple(float(value) for value in rescalers.tolist()))


def emr(ctx: TensorContext) -> TensorDirection:
    """The task-`task` model θ_0 + (τ_uni ⊙ M_task) · λ_task on every floating-point tensor, whole (no λ to sweep)."""
    task = checked_task(ctx.hparams["task"], ctx.num_tasks)
    statistics: EmrStatistics = ctx.statistics
    vectors = ctx.task_vectors
    unified = unified_vector(vectors)
    mask = task_masks(vectors[task], unified)
    # The authors' order: (τ_uni · M_t) · λ_t with λ_t a tensor of the vectors' dtype, then θ_0 + that.
    rescaler = torch.tensor(statistics.rescalers[task], dtype=unified.dtype, device=unified.device)
    return TensorDirection(ctx.pretrained + unified * mask * rescaler)
