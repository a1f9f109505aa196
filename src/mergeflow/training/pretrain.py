"""Short CLIP-style contrastive pre-training: the tiny benchmark's stand-in for fetching OpenAI weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mergeflow.models.clip import ModelSpec, images_to_tensor
from mergeflow.training.optim import cosine_with_warmup, openclip_adamw


@dataclass(frozen=True)
class PretrainSettings:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    seed: int


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, caption_ids: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where every pair whose captions name the same thing is a positive.

    With a handful of class names per task, a batch holds many captions of the same class; treating
    those as negatives (plain CLIP) contradicts itself and learns slowly. The target of each row is
    uniform over the batch items with the same caption id (as in UniCL).
    """
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.t()
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def contrastive_pretrain(
    clip: torch.nn.Module,
    spec: ModelSpec,
    images: np.ndarray,
    tokens: torch.Tensor,
    caption_ids: torch.Tensor,
    settings: PretrainSettings,
    device: torch.device,
    *,
    progress: bool = True,
) -> list[float]:
    """Train both towers on (image, caption) pairs; `caption_ids` says which captions name the same thing.

    Returns the loss per step.
    """
    clip.to(device).train()
    optimizer = openclip_adamw(clip, settings.lr, settings.weight_decay)
    schedule = cosine_with_warmup(optimizer, settings.warmup_steps, settings.steps)
    generator = np.random.default_rng(settings.seed)
    losses: list[float] = []
    for _ in tqdm(range(settings.steps), desc="pretrain", disable=not progress, mininterval=5.0):
        batch = np.sort(generator.choice(len(images), size=settings.batch_size, replace=False))
        image_features = clip.encode_image(images_to_tensor(images[batch], spec, device))
        text_features = clip.encode_text(tokens[batch].to(device))
        loss = clip_loss(image_features, text_features, clip.logit_scale, caption_ids[batch].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            # CLIP's clamp: keeps the temperature from exploding on a tiny batch.
            clip.logit_scale.clamp_(0, np.log(100.0))
        losses.append(float(loss.detach()))
    clip.eval()
    return losses


def noisy_captions(
    task_labels: Sequence[tuple[str, int]], caption_for: Any, class_counts: dict[str, int], noise: float, seed: int
) -> tuple[list[str], list[int]]:
    """One caption per image and the id of the (task, class) it names.

    With probability `noise` a caption names a random class of the same task, as web captions sometimes
    describe something other than the image.
    """
    rng = np.random.default_rng(seed)
    offsets = dict(zip(class_counts, np.cumsum([0, *class_counts.values()])))
    captions, ids = [], []
    for task, label in task_labels:
        if rng.random() < noise:
            label = int(rng.integers(class_counts[task]))
        captions.append(caption_for(task, label, rng))
        ids.append(int(offsets[task]) + label)
    return captions, ids
