"""Random θ_0 and fine-tuned state dicts for the merging tests: θ_t = θ_0 + scale · noise, from one seeded stream."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def perturbed_models(
    shapes: Mapping[str, tuple[int, ...]], num_tasks: int, *, seed: int, scale: float = 0.1
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """(θ_0, [θ_1 … θ_T]): θ_0 ~ N(0, 1) per key, then each θ_t = θ_0 + scale · N(0, 1), in key order."""
    generator = torch.Generator().manual_seed(seed)
    pretrained = {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    finetuned = [
        {key: value + scale * torch.randn(value.shape, generator=generator) for key, value in pretrained.items()}
        for _ in range(num_tasks)
    ]
    return pretrained, finetuned
