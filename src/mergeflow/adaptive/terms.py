"""Per-tensor task directions that the adaptive merge weights: dense task vectors or per-task SVD factors.

A term turns one key's coefficients (and mask) into per-task weights, and weights into the weight-space
change Σ_t (weighted direction of task t), without ever forming one dense tensor per task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mergeflow.merging.spectral import MatrixFactors


@dataclass(frozen=True)
class DenseTerm:
    """Σ_t w_t τ_t for one tensor of `shape`; `vectors` holds the T flattened vectors, (T, numel)."""

    vectors: torch.Tensor
    shape: torch.Size

    @classmethod
    def of(cls, stacked: torch.Tensor) -> DenseTerm:
        return cls(stacked.reshape(stacked.shape[0], -1), stacked.shape[1:])

    def weights(self, coefficients: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """w_t = λ_t: one weight per task (dense terms have no components to mask, so `mask` is None)."""
        return coefficients

    def change(self, weights: torch.Tensor) -> torch.Tensor:
        # (T) @ (T, numel): the gradient of a weight is one dot product, and no (T, numel) product is kept.
        return (weights @ self.vectors).view(self.shape)


@dataclass(frozen=True)
class LowRankTerm:
    """Σ_t U_t diag(w_t) Vh_t for one (m × n) matrix with r components per task.

    `left` holds every U_t side by side (m, T·r), `right` every Vh_t stacked (T·r, n), so the sum is one
    matrix product; `singular_values` are the S_t, (T, r).
    """

    left: torch.Tensor
    right: torch.Tensor
    singular_values: torch.Tensor

    @classmethod
    def of(cls, factors: MatrixFactors) -> LowRankTerm:
        num_tasks, rows, rank = factors.u.shape
        left = factors.u.transpose(0, 1).reshape(rows, num_tasks * rank)
        right = factors.vh.reshape(num_tasks * rank, factors.vh.shape[2])
        return cls(left, right, factors.s)

    def weights(self, coefficients: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """w_t = λ_t · S_t, or λ_t · (mask_t ⊙ S_t) when a keep mask (T, r) is given."""
        kept = self.singular_values if mask is None else mask * self.singular_values
        return coefficients[:, None] * kept

    def change(self, weights: torch.Tensor) -> torch.Tensor:
        scale = weights.reshape(-1)
        # Scale the smaller factor; autograd then keeps only the constant factors for the backward pass.
        if self.left.numel() <= self.right.numel():
            return (self.left * scale) @ self.right
        return self.left @ (scale[:, None] * self.right)


Term = DenseTerm | LowRankTerm
