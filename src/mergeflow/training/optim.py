"""Optimiser and learning-rate schedule shared by pre-training and fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def adamw(parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def exempt_from_weight_decay(name: str, parameter: torch.nn.Parameter) -> bool:
    """OpenCLIP's rule (open_clip_train/main.py): gains, biases, norms and the temperature take no decay.

    Decaying `logit_scale` pulls the temperature towards 1 and keeps it from being learned.
    """
    return parameter.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def openclip_adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices only, as OpenCLIP pre-trains CLIP."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    exempt = [p for name, p in named if exempt_from_weight_decay(name, p)]
    decayed = [p for name, p in named if not exempt_from_weight_decay(name, p)]
    groups = [{"params": exempt, "weight_decay": 0.0}, {"params": decayed, "weight_decay": weight_decay}]
    return torch.optim.AdamW(groups, lr=lr)


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base rate, then a cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
