"""AdaRank's keep/drop masks over singular components: initial logits, hard masks, straight-through masks."""

from __future__ import annotations

import torch

# The official initialisation: logit +0.1 for the components kept at the start, −0.1 for the others.
INITIAL_LOGIT = 0.1


def top_components_mask(
    num_tasks: int, rank: int, kept: int, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """(T, rank) 0/1 mask keeping the `kept` largest singular components (the first, as SVD sorts them)."""
    mask = torch.zeros((num_tasks, rank), dtype=dtype, device=device)
    mask[:, :kept] = 1.0
    return mask


def initial_logits(mask: torch.Tensor) -> torch.Tensor:
    """+INITIAL_LOGIT where `mask` keeps a component, −INITIAL_LOGIT elsewhere."""
    return torch.where(mask > 0, INITIAL_LOGIT, -INITIAL_LOGIT).to(mask.dtype)


def hard_mask(logits: torch.Tensor) -> torch.Tensor:
    """sigmoid(m / temperature) > 0.5, i.e. m > 0 (compared on m, which no tiny m / temperature rounds away)."""
    return logits > 0


def straight_through_mask(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The hard mask in the forward pass, the gradient of the soft mask sigmoid(m / temperature) backward.

    hard + (soft − soft.detach()) has the value and gradient of the official
    soft·s + ((hard − soft)·s).detach() (once multiplied by s), but its value is exactly hard: the
    merge is then a function of the hard masks alone, which is what the learned-merge artefact stores.
    """
    soft = torch.sigmoid(logits / temperature)
    return hard_mask(logits).to(soft.dtype) + (soft - soft.detach())
