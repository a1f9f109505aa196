"""Top-1 accuracy of an image encoder with a frozen zero-shot head."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mergeflow.model import ModelSpec, images_to_tensor


@torch.no_grad()
def predict(
    visual: torch.nn.Module,
    head: torch.Tensor,
    images: np.ndarray,
    spec: ModelSpec,
    device: torch.device,
    batch_size: int,
) -> np.ndarray:
    """Predicted class index per image (argmax of cosine similarity; the logit scale cannot change it)."""
    visual.eval()
    head = head.to(device)
    predictions = []
    for start in range(0, len(images), batch_size):
        batch = images_to_tensor(images[start : start + batch_size], spec, device)
        features = F.normalize(visual(batch).float(), dim=-1)
        predictions.append((features @ head.t()).argmax(dim=-1).cpu())
    if not predictions:
        return np.zeros(0, dtype=np.int64)
    return torch.cat(predictions).numpy()


def accuracy(
    visual: torch.nn.Module,
    head: torch.Tensor,
    images: np.ndarray,
    labels: np.ndarray,
    spec: ModelSpec,
    device: torch.device,
    batch_size: int = 256,
) -> float:
    if len(labels) == 0:
        raise ValueError("cannot measure accuracy on an empty split")
    return float((predict(visual, head, images, spec, device, batch_size) == labels).mean())
