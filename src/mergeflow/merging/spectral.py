"""Singular value decompositions and the low-rank pieces built from them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def rank_from_ratio(ratio: float, shape: tuple[int, int]) -> int:
    """k = max(1, floor(ρ·min(m, n))), with ρ = 0 meaning no low-rank term (k = 0).

    ρ = 1 gives min(m, n), the full rank.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"rank ratio must lie in [0, 1], got {ratio}")
    if ratio == 0.0:
        return 0
    return max(1, math.floor(ratio * min(shape)))


@dataclass(frozen=True)
class MatrixFactors:
    """Thin SVD of one matrix per task: u (T, m, r), s (T, r), vh (T, r, n), r = min(m, n)."""

    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return self.s.shape[0]

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return (self.u.shape[1], self.vh.shape[2])

    def to(self, device: str | torch.device) -> MatrixFactors:
        return MatrixFactors(self.u.to(device), self.s.to(device), self.vh.to(device))

    def truncated(self, k: int) -> MatrixFactors:
        """The top-k triplets of every task (views, no copy)."""
        return MatrixFactors(self.u[:, :, :k], self.s[:, :k], self.vh[:, :k, :])


def thin_svd_of(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.linalg.svd(full_matrices=False), redone in float64 when float32 LAPACK fails to converge.

    Float32 gesdd can fail on matrices with many (near-)zero singular values, such as the task-specific
    residuals of iso_cts, where float64 succeeds; the factors come back in the input dtype.
    """
    try:
        return torch.linalg.svd(matrices, full_matrices=False)
    except torch.linalg.LinAlgError:
        if matrices.dtype == torch.float64:
            raise
        u, s, vh = torch.linalg.svd(matrices.double(), full_matrices=False)
        return u.to(matrices.dtype), s.to(matrices.dtype), vh.to(matrices.dtype)


def truncated_svd(matrices: torch.Tensor, k: int) -> MatrixFactors:
    """Top-k triplets of the thin SVD of each stacked matrix (T, m, n), on the matrices' device.

    On CUDA the T matrices go to one batched call. On the CPU LAPACK decomposes a batch one matrix
    at a time anyway, so they are passed one by one and only the top k kept: the same speed, with
    the working memory of one full decomposition instead of T.
    """
    num_tasks, rows, cols = matrices.shape
    u = matrices.new_empty((num_tasks, rows, k))
    s = matrices.new_empty((num_tasks, k))
    vh = matrices.new_empty((num_tasks, k, cols))
    step = num_tasks if matrices.is_cuda else 1
    for start in range(0, num_tasks, step):
        stop = start + step
        full_u, full_s, full_vh = thin_svd_of(matrices[start:stop])
        u[start:stop], s[start:stop], vh[start:stop] = full_u[:, :, :k], full_s[:, :k], full_vh[:, :k, :]
    return MatrixFactors(u, s, vh)


def thin_svd(matrices: torch.Tensor) -> MatrixFactors:
    """The whole thin SVD (r = min(m, n) triplets) of each stacked matrix, as kept in task factors."""
    return truncated_svd(matrices, min(matrices.shape[1:]))


def low_rank_sum(factors: MatrixFactors) -> torch.Tensor:
    """Σ_t U_t diag(S_t) Vh_t over every task's triplets, formed as one (m × T·k) @ (T·k × n) product."""
    num_tasks, m, k = factors.u.shape
    n = factors.vh.shape[2]
    left = (factors.u * factors.s[:, None, :]).transpose(0, 1).reshape(m, num_tasks * k)
    right = factors.vh.reshape(num_tasks * k, n)
    return left @ right


def polar_factor(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor P Qᵀ of `matrix` = P Σ Qᵀ: the nearest matrix with orthonormal rows/columns."""
    p, _, qh = thin_svd_of(matrix)
    return p @ qh
