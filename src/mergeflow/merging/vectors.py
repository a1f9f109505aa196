"""Task vectors and the reductions over tasks that every method shares.

Tasks are stacked along dimension 0. Reductions over tasks are explicit loops in task order: the
result then depends only on the inputs, never on how a library kernel splits its work, which is
what makes weight_averaging and cart (and task_arithmetic and lowrank_ta) agree bit for bit.
"""

from __future__ import annotations

import torch


def average_over_tasks(stack: torch.Tensor) -> torch.Tensor:
    """(1/T) Σ_t stack[t], accumulated in float64 and rounded once to the stack's dtype.

    The single helper behind θ_avg (weight_averaging, cart's origin) and "mean of τ_t".
    """
    total = stack[0].to(torch.float64, copy=True)
    for item in stack[1:]:
        total += item
    return (total / stack.shape[0]).to(stack.dtype)


def sum_over_tasks(stack: torch.Tensor) -> torch.Tensor:
    """Σ_t stack[t] in the stack's dtype, added in task order."""
    total = stack[0].clone()
    for item in stack[1:]:
        total += item
    return total


def to_task_vectors_(finetuned: torch.Tensor, origin: torch.Tensor) -> None:
    """Turn stacked θ_t into θ_t − origin in place: τ_t for origin θ_0, τ̄_t for origin θ_avg.

    Σ_t τ̄_t = 0 up to round-off.
    """
    finetuned.sub_(origin)
