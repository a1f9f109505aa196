"""Each adaptive method as an AdaptiveMerge built from θ_0, θ_t and its settings, and the tensors Adam trains.

adamerging: dense τ_t = θ_t − θ_0 on every floating-point tensor, starting from task_arithmetic at `init`.
adamerging_cart: top-k SVD factors of τ̄_t = θ_t − θ_avg on the CART matrices, starting from cart at
(rank, lam); every other tensor stays at θ_avg. adarank: the full thin SVD of θ_t − θ_avg (base cart) or
θ_t − θ_0 (base task_arithmetic) on the CART matrices, starting from cart or lowrank_ta at
(initial_rank, prior); the other tensors stay at that static merge (θ_avg, or θ_0 + prior·Σ_t τ_t).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mergeflow.adaptive.artefact import LearnedMerge
from mergeflow.adaptive.masking import hard_mask, initial_logits, straight_through_mask, top_components_mask
from mergeflow.adaptive.parametrisation import AdaptiveMerge
from mergeflow.adaptive.settings import AdaMergingCartSettings, AdaMergingSettings, AdaRankSettings, MethodSettings
from mergeflow.adaptive.terms import DenseTerm, LowRankTerm, Term
from mergeflow.io import InputError
from mergeflow.merging import TaskFactors, compute_task_factors, is_cart_matrix, merge_direction, rank_from_ratio
from mergeflow.merging.context import Placement, combine, float_keys, load_context, placement_for
from mergeflow.merging.keys import is_matrix
from mergeflow.merging.sources import InMemorySource
from mergeflow.merging.spectral import MatrixFactors
from mergeflow.types import StateDict


def static_merge(
    name: str,
    hparams: Mapping[str, Any],
    pretrained: StateDict,
    finetuned: Sequence[StateDict],
    device: torch.device,
    factors: TaskFactors | None = None,
) -> tuple[StateDict, dict[str, torch.dtype]]:
    """merge_state_dicts(name, ...) before its cast to the pretrained dtypes, and those dtypes."""
    direction = merge_direction(name, pretrained, finetuned, hparams, factors=factors, device=str(device))
    lam = float(hparams["lam"])
    merged = {
        key: combine(origin, direction.delta.get(key), lam, origin.dtype) for key, origin in direction.origin.items()
    }
    return merged, dict(direction.dtypes)


def coefficient_columns(keys: Sequence[str], granularity: str) -> dict[str, int]:
    """One shared column ("task": one coefficient per task) or one column per key ("layer")."""
    return {key: index if granularity == "layer" else 0 for index, key in enumerate(keys)}


def cart_matrices(source: InMemorySource, method: str) -> list[str]:
    keys = [key for key in float_keys(source) if is_cart_matrix(key) and is_matrix(source.spec(key).shape)]
    if not keys:
        raise InputError(
            f"{method}: the model has no CART matrices (attn.in_proj_weight, attn.out_proj.weight, "
            "mlp.c_fc.weight, mlp.c_proj.weight of transformer.resblocks.<i>)"
        )
    return keys


def initial_coefficients(
    num_tasks: int, columns: Mapping[str, int], value: float, placement: Placement
) -> torch.Tensor:
    """(T, K) coefficients all at `value`, in the compute dtype the merge's tensors use."""
    return torch.full((num_tasks, max(columns.values()) + 1), value, dtype=placement.dtype, device=placement.device)


def _adamerging(
    settings: AdaMergingSettings, pretrained: StateDict, finetuned: Sequence[StateDict], device: torch.device
) -> AdaptiveMerge:
    source = InMemorySource(pretrained, finetuned)
    placement = placement_for(source, device)
    keys = float_keys(source)
    static, dtypes = static_merge("task_arithmetic", {"lam": settings.init}, pretrained, finetuned, device)
    terms: dict[str, Term] = {key: DenseTerm.of(load_context(source, key, {}, placement).task_vectors) for key in keys}
    columns = coefficient_columns(keys, settings.granularity)
    coefficients = initial_coefficients(source.num_tasks, columns, settings.init, placement)
    return AdaptiveMerge(settings.method, static, dtypes, terms, columns, coefficients, {})


def _top_factors(pretrained: StateDict, finetuned: Sequence[StateDict], key: str, k: int, device: str) -> MatrixFactors:
    """The top-k triplets of every τ̄_t of `key`, copied so that the full decomposition is freed."""
    full = compute_task_factors(pretrained, finetuned, centered=True, keys=[key], device=device).matrices[key]
    top = full.truncated(k)
    return MatrixFactors(top.u.clone(), top.s.clone(), top.vh.clone())


def _adamerging_cart(
    settings: AdaMergingCartSettings, pretrained: StateDict, finetuned: Sequence[StateDict], device: torch.device
) -> AdaptiveMerge:
    source = InMemorySource(pretrained, finetuned)
    keys = cart_matrices(source, settings.method)
    ranks = {key: rank_from_ratio(settings.rank, source.spec(key).shape) for key in keys}
    factors = {key: _top_factors(pretrained, finetuned, key, ranks[key], str(device)) for key in keys}
    hparams = {"rank": settings.rank, "lam": settings.lam}
    static, dtypes = static_merge(
        "cart", hparams, pretrained, finetuned, device, TaskFactors(True, source.num_tasks, factors)
    )
    terms: dict[str, Term] = {key: LowRankTerm.of(factors.pop(key)) for key in keys}
    columns = coefficient_columns(keys, settings.granularity)
    coefficients = initial_coefficients(source.num_tasks, columns, settings.lam, placement_for(source, device))
    return AdaptiveMerge(settings.method, static, dtypes, terms, columns, coefficients, {})


def _adarank(
    settings: AdaRankSettings, pretrained: StateDict, finetuned: Sequence[StateDict], device: torch.device
) -> AdaptiveMerge:
    source = InMemorySource(pretrained, finetuned)
    keys = cart_matrices(source, settings.method)
    centered = settings.base == "cart"
    factors = compute_task_factors(pretrained, finetuned, centered=centered, keys=keys, device=str(device))
    hparams = {"rank": settings.initial_rank, "lam": settings.prior}
    static, dtypes = static_merge("cart" if centered else "lowrank_ta", hparams, pretrained, finetuned, device, factors)
    # Popped one key at a time, so each U is freed once its side-by-side copy exists.
    matrices = dict(factors.matrices)
    del factors
    terms: dict[str, Term] = {}
    masks = {}
    for key in keys:
        shape = source.spec(key).shape
        terms[key] = term = LowRankTerm.of(matrices.pop(key))
        kept = rank_from_ratio(settings.initial_rank, shape)
        masks[key] = top_components_mask(
            source.num_tasks, min(shape), kept, dtype=term.singular_values.dtype, device=term.singular_values.device
        )
    columns = coefficient_columns(keys, "layer")
    coefficients = initial_coefficients(source.num_tasks, columns, settings.prior, placement_for(source, device))
    return AdaptiveMerge(settings.method, static, dtypes, terms, columns, coefficients, masks)


def build_adaptive_merge(
    settings: MethodSettings, pretrained: StateDict, finetuned: Sequence[StateDict], device: str | torch.device
) -> AdaptiveMerge:
    """The method's merge as a function of its coefficients (and masks), on `device`; at the initial ones it
    equals the method's static merge bit for bit."""
    if not finetuned:
        raise InputError(f"{settings.method}: no fine-tuned models given")
    target = torch.device(device)
    if isinstance(settings, AdaMergingSettings):
        return _adamerging(settings, pretrained, finetuned, target)
    if isinstance(settings, AdaMergingCartSettings):
        return _adamerging_cart(settings, pretrained, finetuned, target)
    return _adarank(settings, pretrained, finetuned, target)


@dataclass(frozen=True)
class Trainable:
    """The tensors Adam updates: coefficients (T, K) and, for adarank, one logit vector (T, r) per CART matrix.

    `clamp` bounds the coefficients after every step (a projection); `mask_temperature` is adarank's, None
    for the methods without logits.
    """

    coefficients: torch.Tensor
    logits: Mapping[str, torch.Tensor]
    clamp: tuple[float, float] | None
    mask_temperature: float | None

    def parameters(self) -> list[torch.Tensor]:
        return [self.coefficients, *self.logits.values()]

    def masks(self) -> dict[str, torch.Tensor]:
        """The straight-through keep masks of the current logits."""
        if self.mask_temperature is None:
            return {}
        return {key: straight_through_mask(logits, self.mask_temperature) for key, logits in self.logits.items()}

    @torch.no_grad()
    def project_(self) -> None:
        if self.clamp is not None:
            self.coefficients.clamp_(*self.clamp)

    def learned(self, settings: MethodSettings, columns: Mapping[str, int]) -> LearnedMerge:
        masks = {key: hard_mask(logits.detach()).cpu() for key, logits in self.logits.items()}
        return LearnedMerge(settings, dict(columns), self.coefficients.detach().cpu().clone(), masks)


def trainable_for(settings: MethodSettings, merge: AdaptiveMerge) -> Trainable:
    """Fresh trainable tensors at the merge's initial coefficients (and masks: logits ±0.1)."""
    coefficients = merge.initial_coefficients.clone().requires_grad_(True)
    if isinstance(settings, AdaRankSettings):
        logits = {key: initial_logits(mask).requires_grad_(True) for key, mask in merge.initial_masks.items()}
        return Trainable(coefficients, logits, None, settings.mask_temperature)
    return Trainable(coefficients, {}, settings.clamp, None)


def merge_from_learned(
    learned: LearnedMerge, pretrained: StateDict, finetuned: Sequence[StateDict], device: str | torch.device = "cpu"
) -> StateDict:
    """The merged encoder that `learned` defines with these θ_0 and θ_t (as AdaptationResult.merged_state_dict)."""
    merge = build_adaptive_merge(learned.settings, pretrained, finetuned, device)
    method = learned.settings.method
    if dict(learned.columns) != merge.columns:
        raise InputError(f"{method}: the learned coefficients' columns do not name this model's adapted keys")
    if learned.coefficients.shape != merge.initial_coefficients.shape:
        raise InputError(
            f"{method}: learned coefficients have shape {list(learned.coefficients.shape)}, "
            f"these models need {list(merge.initial_coefficients.shape)}"
        )
    if set(learned.masks) != set(merge.initial_masks):
        raise InputError(f"{method}: the learned masks are for other keys than this model's CART matrices")
    for key, mask in merge.initial_masks.items():
        if learned.masks[key].shape != mask.shape:
            raise InputError(
                f"{method}: learned mask of {key!r} has shape {list(learned.masks[key].shape)}, "
                f"expected {list(mask.shape)}"
            )
    return merge.merged_state_dict(learned.coefficients, learned.masks)
