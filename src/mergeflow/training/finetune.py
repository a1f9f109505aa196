"""Fine-tune a CLIP image encoder on one task through its frozen zero-shot head (docs/methods.md protocol)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mergeflow.models.clip import ModelSpec, images_to_tensor
from mergeflow.models.heads import head_logits
from mergeflow.training.optim import adamw, cosine_with_warmup


@dataclass(frozen=True)
class FinetuneSettings:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    seed: int
    # Examples per forward/backward pass; gradients of batch_size / micro_batch_size passes are
    # accumulated into one optimizer step, so a GPU short of memory still trains with the full batch.
    micro_batch_size: int | None = None

    def micro_batches(self) -> int:
        micro = self.micro_batch_size or self.batch_size
        if micro <= 0 or self.batch_size % micro:
            raise ValueError(
                f"finetune.micro_batch_size {micro} must be a positive divisor of finetune.batch_size {self.batch_size}"
            )
        return self.batch_size // micro

    def as_recipe(self) -> dict[str, int | float]:
        """Every setting the fine-tuned bytes depend on, the micro-batch size resolved (it changes the rounding)."""
        return {**asdict(self), "micro_batch_size": self.micro_batch_size or self.batch_size}


def finetune_image_encoder(
    visual: torch.nn.Module,
    head: torch.Tensor,
    logit_scale: torch.Tensor,
    images: np.ndarray,
    labels: np.ndarray,
    spec: ModelSpec,
    settings: FinetuneSettings,
    device: torch.device,
    *,
    progress: bool = True,
) -> list[float]:
    """AdamW, cosine schedule with linear warm-up, gradient clipping; the head never changes.

    Batches are drawn without replacement within each epoch from a generator seeded by `settings.seed`;
    a batch split into micro-batches gives the same step as the whole batch (the mean loss is kept).
    Returns the loss per step.
    """
    visual.to(device).train()
    head = head.to(device)
    logit_scale = logit_scale.to(device)
    targets_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    optimizer = adamw(visual.parameters(), settings.lr, settings.weight_decay)
    schedule = cosine_with_warmup(optimizer, settings.warmup_steps, settings.steps)
    generator = np.random.default_rng(settings.seed)
    order = generator.permutation(len(labels))
    cursor = 0
    chunks = settings.micro_batches()
    losses: list[float] = []
    for _ in tqdm(range(settings.steps), desc="finetune", disable=not progress, mininterval=5.0):
        if cursor + settings.batch_size > len(order):
            order, cursor = generator.permutation(len(labels)), 0
        batch = np.sort(order[cursor : cursor + settings.batch_size])
        cursor += settings.batch_size
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for part in np.array_split(batch, chunks):
            logits = head_logits(visual(images_to_tensor(images[part], spec, device)), head, logit_scale)
            loss = F.cross_entropy(logits, targets_all[part].to(device)) * (len(part) / len(batch))
            loss.backward()
            step_loss += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(visual.parameters(), settings.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(step_loss)
    visual.eval()
    return losses
