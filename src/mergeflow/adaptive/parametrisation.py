"""The merged encoder as a differentiable function of per-(task, key) coefficients and keep masks.

θ(λ, M) = θ_static + Σ_keys change_key(w(λ, M) − w(λ⁰, M⁰)), where θ_static is the static merge the method
starts from (task_arithmetic, cart or lowrank_ta at the initial coefficient and rank, built by
`mergeflow.merging`) and w are each term's per-task weights. This is origin + Σ_t w_t·(direction of task t),
rearranged: the static merge already holds origin + Σ_t w⁰_t·(direction of task t). Written this way the
initial merge *is* the static merge bit for bit (the change is exactly zero there), which a direct
origin + Σ_t λ_t τ_t could not be: the engine forms origin + λ·Σ_t τ_t, which rounds differently.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mergeflow.adaptive.terms import Term
from mergeflow.types import StateDict


class AdaptiveMerge:
    """One method's merge over every key of θ_0, on one device.

    `static` is the merge at the initial parameters in the compute dtype (float32, or float64 for float64
    models); `dtypes` the pretrained dtypes the merged tensors take. Keys in `terms` move; column
    `columns[key]` of the (T, K) coefficients weights key's term; `initial_masks` (T, r) of 0/1 floats are
    the keep masks adarank starts from (no entry: the term is unmasked).
    """

    def __init__(
        self,
        method: str,
        static: StateDict,
        dtypes: Mapping[str, torch.dtype],
        terms: Mapping[str, Term],
        columns: Mapping[str, int],
        initial_coefficients: torch.Tensor,
        initial_masks: Mapping[str, torch.Tensor],
    ) -> None:
        self.method = method
        self.static = static
        self.dtypes = dtypes
        self.terms = terms
        self.columns = dict(columns)
        self.initial_coefficients = initial_coefficients
        self.initial_masks = initial_masks
        self._initial_weights = self._weights(initial_coefficients, initial_masks)

    @property
    def device(self) -> torch.device:
        return self.initial_coefficients.device

    def _weights(self, coefficients: torch.Tensor, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            key: term.weights(coefficients[:, self.columns[key]], masks.get(key)) for key, term in self.terms.items()
        }

    def merged(self, coefficients: torch.Tensor, masks: Mapping[str, torch.Tensor]) -> StateDict:
        """Every key's merged tensor, in the pretrained dtypes, differentiable in `coefficients` and `masks`."""
        weights = self._weights(coefficients, masks)
        merged: StateDict = {}
        for key, static in self.static.items():
            term = self.terms.get(key)
            if term is None:
                merged[key] = static.to(self.dtypes[key], copy=True)
            else:
                merged[key] = (static + term.change(weights[key] - self._initial_weights[key])).to(self.dtypes[key])
        return merged

    @torch.no_grad()
    def merged_state_dict(self, coefficients: torch.Tensor, masks: Mapping[str, torch.Tensor]) -> StateDict:
        """The merged encoder as plain tensors on this merge's device, from coefficients and boolean keep masks."""
        dtype = self.initial_coefficients.dtype
        return self.merged(
            coefficients.to(self.device, dtype), {key: mask.to(self.device, dtype) for key, mask in masks.items()}
        )
