"""Run a registered method over every tensor of a model: in memory, as a λ-sweepable direction, or for the streamer.

Memory and files go through the same per-tensor loop (`tensor_merges`), which is why a streamed
merge equals the in-memory merge bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mergeflow.io import InputError, checked_finite
from mergeflow.merging.context import Placement, TensorDirection, combine, load_context, placement_for, progress_over
from mergeflow.merging.factors import TaskFactors, factors_for_method
from mergeflow.merging.keys import is_matrix
from mergeflow.merging.registry import MergeMethod, MergeModifier, merge_spec, resolve_hparams
from mergeflow.merging.sources import InMemorySource, TensorSource
from mergeflow.merging.spectral import MatrixFactors
from mergeflow.merging.task_statistics import TaskStatistics
from mergeflow.types import StateDict


@dataclass(frozen=True)
class TensorMerge:
    """One key's merge: `origin + lam * delta` cast to `dtype`; `touched` is False when it is θ_0 copied."""

    key: str
    origin: torch.Tensor
    delta: torch.Tensor | None
    dtype: torch.dtype
    touched: bool


@dataclass(frozen=True)
class MergeDirection:
    """A merged model as a line in weight space: origin + lam·delta, for any lam, without re-merging.

    `delta` omits keys whose merge is the origin itself (they ignore lam, as every key of
    weight_averaging and zeroshot does). `origin` tensors may share storage with the pretrained
    model; treat them as read-only. `dtypes` are the pretrained dtypes the merged tensors take;
    `touched` the keys whose merge is not a copy of θ_0. A merge with a modifier (`cart+svc`) calibrates the
    merged matrices at the λ it was made with, which is then part of their origin: such a direction is that
    one λ's model, and `at` must be given the same λ.
    """

    origin: StateDict
    delta: StateDict
    dtypes: Mapping[str, torch.dtype]
    touched: frozenset[str]

    def at(self, lam: float) -> StateDict:
        """origin + lam·delta as new tensors with the pretrained dtypes."""
        return {key: combine(origin, self.delta.get(key), lam, self.dtypes[key]) for key, origin in self.origin.items()}

    @torch.no_grad()
    def write_into(self, targets: Mapping[str, torch.Tensor], lam: float, *, only_delta_keys: bool = False) -> None:
        """Overwrite `targets[key]` (e.g. a module's live parameters) with origin + lam·delta, the bytes of `at`.

        Keys without a delta do not depend on lam: `only_delta_keys` skips them when they are already written.
        """
        for key, origin in self.origin.items():
            delta = self.delta.get(key)
            if delta is None and only_delta_keys:
                continue
            target = targets[key]
            if delta is not None and origin.dtype == target.dtype == self.dtypes[key] == delta.dtype:
                torch.add(origin, delta, alpha=lam, out=target)
            else:
                target.copy_(combine(origin, delta, lam, self.dtypes[key]))


def lam_of(hparams: Mapping[str, Any]) -> float:
    """The λ a resolved merge applies; methods without one have no delta, so any value does."""
    return float(hparams.get("lam", 0.0))


def tensor_merges(
    method: MergeMethod,
    hparams: Mapping[str, Any],
    source: TensorSource,
    *,
    factors: TaskFactors | None,
    device: str | torch.device,
    progress: bool,
    modifiers: Sequence[MergeModifier] = (),
    task_statistics: TaskStatistics | None = None,
) -> Iterator[TensorMerge]:
    """Run the method's whole-model pass, if any, then yield every key's merge in the pretrained key order.

    `hparams` must already be resolved (the modifiers' too). Non-floating-point tensors are copied from the
    pretrained model. `task_statistics` are the per-task files a "training_data" method reads.
    """
    if method.reads_training_images:
        raise InputError(f"{method.name} merges through the models on training images; `mergeflow merge-eval` runs it")
    if method.task_statistics is not None and task_statistics is None:
        raise InputError(f"{method.name} needs its {method.task_statistics} statistics, one file per fine-tuned model")
    placement = placement_for(source, device)
    reusable: Mapping[str, MatrixFactors] = (
        factors_for_method(method.name, method.factors, factors, source) if factors is not None else {}
    )
    statistics = None
    if method.statistics is not None and method.task_statistics is not None:
        statistics = method.statistics(source, hparams, placement, progress, task_statistics)
    elif method.statistics is not None:
        statistics = method.statistics(source, hparams, placement, progress)
    for key in progress_over(source.keys, f"{method.name}: merging", progress):
        merge = merge_tensor(method, hparams, source, key, placement, statistics, reusable.get(key), task_statistics)
        if modifiers and merge.touched and is_matrix(merge.origin.shape):
            merge = calibrated_merge(merge, hparams, source, placement)
        yield merge


def merge_tensor(
    method: MergeMethod,
    hparams: Mapping[str, Any],
    source: TensorSource,
    key: str,
    placement: Placement,
    statistics: Any,
    factors: MatrixFactors | None,
    task_statistics: TaskStatistics | None = None,
) -> TensorMerge:
    """One key's merge. A function of its own so that the key's context (all T tensors and their task
    vectors) is freed when it returns, before the next key is read."""
    spec = source.spec(key)
    if not spec.is_float:
        return TensorMerge(key, source.load_pretrained(key).to(placement.device), None, spec.dtype, False)
    ctx = load_context(source, key, hparams, placement, statistics, factors, task_statistics)
    if method.direction is None:
        raise InputError(f"{method.name} has no per-tensor rule")
    direction: TensorDirection = method.direction(ctx)
    touched = direction.delta is not None or direction.origin is not ctx.pretrained
    return TensorMerge(key, direction.origin, direction.delta, spec.dtype, touched)


def calibrated_merge(
    merge: TensorMerge, hparams: Mapping[str, Any], source: TensorSource, placement: Placement
) -> TensorMerge:
    """SVC applied to one matrix's merge at the λ in `hparams`: θ_0 + calibrated(θ_merge − θ_0), λ now inside.

    As FusionBench, the merged weight is formed in the compute dtype and everything after it in float64, ending
    in a float64 origin that takes the pretrained dtype when the model is written. The task vectors are read
    afresh, since a method may have rewritten its own (DARE drops entries).
    """
    from mergeflow.merging.methods.svc import calibrated_tensor

    context = load_context(source, merge.key, {}, Placement(placement.device, torch.float64))
    merged = combine(merge.origin, merge.delta, lam_of(hparams), placement.dtype).to(torch.float64)
    update = calibrated_tensor(merge.key, merged - context.pretrained, context.task_vectors, hparams["alpha"])
    return TensorMerge(merge.key, context.pretrained + update, None, merge.dtype, True)


def _in_memory_merges(
    name: str,
    pretrained: StateDict,
    finetuned: Sequence[StateDict],
    hparams: Mapping[str, Any],
    factors: TaskFactors | None,
    device: str,
    task_statistics: TaskStatistics | None,
) -> tuple[dict[str, Any], Iterator[TensorMerge]]:
    """`name`'s resolved hyper-parameters, and its per-key merges of in-memory state dicts (lazily)."""
    method, modifiers = merge_spec(name)
    resolved = resolve_hparams(name, hparams)
    source = InMemorySource(pretrained, finetuned)
    merges = tensor_merges(
        method, resolved, source, factors=factors, device=device, progress=False, modifiers=modifiers,
        task_statistics=task_statistics,
    )  # fmt: skip
    return resolved, merges


def merge_direction(
    name: str,
    pretrained: StateDict,
    finetuned: Sequence[StateDict],
    hparams: Mapping[str, Any],
    *,
    factors: TaskFactors | None = None,
    device: str = "cpu",
    task_statistics: TaskStatistics | None = None,
) -> MergeDirection:
    """The merge of `name` (a method, or a method with modifiers: `cart+svc`) as origin + lam·delta for every key
    (`lam` in hparams is checked, then ignored, except by a modifier: see MergeDirection).

    Tensors live on `device`. `factors` (cart, lowrank_ta, tsv_m) are reused instead of decomposing;
    keys they lack are decomposed on the spot, identically. `task_statistics`: each fine-tuned model's data
    statistics (`mergeflow.merging.task_statistics`), for a method that reads them (regmean, fisher).
    """
    origin: StateDict = {}
    delta: StateDict = {}
    dtypes: dict[str, torch.dtype] = {}
    touched: set[str] = set()
    _, merges = _in_memory_merges(name, pretrained, finetuned, hparams, factors, device, task_statistics)
    for merge in merges:
        origin[merge.key] = merge.origin
        dtypes[merge.key] = merge.dtype
        if merge.delta is not None:
            delta[merge.key] = merge.delta
        if merge.touched:
            touched.add(merge.key)
    return MergeDirection(origin, delta, dtypes, frozenset(touched))


def merge_state_dicts(
    name: str,
    pretrained: StateDict,
    finetuned: Sequence[StateDict],
    hparams: Mapping[str, Any],
    *,
    factors: TaskFactors | None = None,
    device: str = "cpu",
    task_statistics: TaskStatistics | None = None,
) -> StateDict:
    """Merge in memory with `name` (see `merge_direction`): a new state dict on `device`, keys and dtypes of
    `pretrained`.

    As with files (`merge_files`), NaN or Inf in an input is refused by model and key, and so is a merged
    tensor that overflowed its dtype.
    """
    resolved, merges = _in_memory_merges(name, pretrained, finetuned, hparams, factors, device, task_statistics)
    lam = lam_of(resolved)
    for key, tensor in pretrained.items():
        checked_finite(tensor, f"pretrained key {key!r}")
    for index, model in enumerate(finetuned):
        for key, tensor in model.items():
            checked_finite(tensor, f"fine-tuned model {index} key {key!r}")
    return {
        merge.key: checked_finite(
            combine(merge.origin, merge.delta, lam, merge.dtype), f"{name} merge {resolved}: merged key {merge.key!r}"
        )
        for merge in merges
    }
