"""Zero-shot classification heads: class-name × template text embeddings of a CLIP text tower."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from mergeflow.io import InputError, load_state_dict, save_state_dict


@torch.no_grad()
def zero_shot_head(
    clip: torch.nn.Module, tokenizer: Any, classnames: Sequence[str], templates: Sequence[str], device: torch.device
) -> torch.Tensor:
    """[num_classes, embed_dim] float32 head.

    Each template filled with a class name is embedded and L2-normalised; the class embedding is their
    mean, normalised again (docs/methods.md, zero-shot heads).
    """
    clip.eval()
    rows = []
    for name in classnames:
        tokens = tokenizer([template.format(name) for template in templates]).to(device)
        embeddings = F.normalize(clip.encode_text(tokens).float(), dim=-1)
        rows.append(F.normalize(embeddings.mean(dim=0), dim=-1))
    return torch.stack(rows).cpu()


def head_logits(features: torch.Tensor, head: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale) · cos(image embedding, class embedding)."""
    return logit_scale.exp() * F.normalize(features.float(), dim=-1) @ head.t()


def save_head(
    path: str, head: torch.Tensor, logit_scale: torch.Tensor, task: str, model: str, class_texts: str | None = None
) -> None:
    """`class_texts` ("experts") is recorded when the texts are not the prepared data's own."""
    metadata = {"task": task, "model": model} | ({"class_texts": class_texts} if class_texts else {})
    save_state_dict(path, {"weight": head, "logit_scale": logit_scale.detach().reshape(())}, metadata)


def load_head(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(class embeddings [C, D], logit_scale scalar) from a head file."""
    tensors = load_state_dict(path)
    missing = {"weight", "logit_scale"} - set(tensors)
    if missing:
        raise InputError(f"{path}: missing keys {sorted(missing)} (expected a zero-shot head file)")
    weight = tensors["weight"]
    if weight.ndim != 2:
        raise InputError(f"{path}: key 'weight' must be [num_classes, embed_dim], got shape {tuple(weight.shape)}")
    return weight, tensors["logit_scale"]
