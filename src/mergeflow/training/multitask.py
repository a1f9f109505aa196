"""Fine-tune one CLIP image encoder on several tasks at once: the multi-task reference row of the tables.

Merging papers report, beside the individual experts, one encoder trained on all tasks together as the
reference a merge tries to reach without training (the CART authors' table, arXiv 2412.12153, lists
"multi-task learning" at 88.9 on ViT-B/32 with 8 tasks). Each example is scored through its own task's
frozen zero-shot head, as every expert is. FusionBench's multi-task trainer
(`ImageClassificationFineTuningForCLIP`, fusion_bench/method/classification/clip_finetune.py) takes one
batch of every task per step and sums the tasks' losses. Here the experts' own recipe (`FinetuneSettings`,
`finetune_image_encoder`) runs on the union of the tasks' training examples instead:

- T × `settings.steps` AdamW steps (cosine schedule after `settings.warmup_steps` of linear warm-up,
  gradients clipped at `settings.grad_clip`), as many as the T experts together;
- each step's batch of `settings.batch_size` examples is drawn without replacement, epoch by epoch, from
  one permutation of all examples (generator seeded with `settings.seed`), so a task is seen in proportion
  to its training split (equally for equal splits, such as the tiny tasks');
- the loss is the mean cross-entropy over the batch, each example's logits from its own task's head and
  logit scale; micro-batches accumulate to the whole batch's gradient as in fine-tuning.

With one task this is `finetune_image_encoder` step for step: the same batches, losses and weights, bit for
bit (tests/test_multitask.py), so the two recipes differ only in what the union adds.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mergeflow.models.clip import ModelSpec, images_to_tensor
from mergeflow.models.heads import head_logits
from mergeflow.training.finetune import FinetuneSettings
from mergeflow.training.optim import adamw, cosine_with_warmup


@dataclass(frozen=True)
class TrainingTask:
    """One task of a multi-task run: its frozen zero-shot head and logit scale, and its train split."""

    name: str
    head: torch.Tensor
    logit_scale: torch.Tensor
    images: np.ndarray  # uint8 NHWC, memory-mapped: only the batches drawn are read
    labels: np.ndarray


def multitask_steps(settings: FinetuneSettings, num_tasks: int) -> int:
    """Optimizer steps of a multi-task run: the experts' steps per task, for every task."""
    return num_tasks * settings.steps


def task_offsets(sizes: Sequence[int]) -> np.ndarray:
    """Where each task's examples start in the union's numbering, then the union's size: [0, n_0, n_0 + n_1, …]."""
    if not sizes or min(sizes) <= 0:
        raise ValueError(f"every task needs training examples, got sizes {list(sizes)}")
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def union_batches(total: int, batch_size: int, seed: int, steps: int) -> Iterator[np.ndarray]:
    """The sorted example indices of each step's batch, `finetune_image_encoder`'s draw: consecutive slices of a
    permutation of all `total` examples, and a new permutation from the same generator when fewer than a batch
    remain in the epoch."""
    generator = np.random.default_rng(seed)
    order = generator.permutation(total)
    cursor = 0
    for _ in range(steps):
        if cursor + batch_size > total:
            order, cursor = generator.permutation(total), 0
        yield np.sort(order[cursor : cursor + batch_size])
        cursor += batch_size


def split_by_task(indices: np.ndarray, offsets: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Sorted union indices as (task, the task's own example indices) for each task present, in task order."""
    owners = np.searchsorted(offsets, indices, side="right") - 1
    return [(int(task), indices[owners == task] - offsets[task]) for task in np.unique(owners)]


def finetune_multitask(
    visual: torch.nn.Module,
    tasks: Sequence[TrainingTask],
    spec: ModelSpec,
    settings: FinetuneSettings,
    device: torch.device,
    *,
    progress: bool = True,
) -> list[float]:
    """Fine-tune `visual` in place on the union of `tasks`' training examples (module docstring); the heads never
    change. Returns the loss per step."""
    offsets = task_offsets([len(task.labels) for task in tasks])
    steps = multitask_steps(settings, len(tasks))
    visual.to(device).train()
    heads = [(task.head.to(device), task.logit_scale.to(device)) for task in tasks]
    targets = [torch.from_numpy(np.asarray(task.labels, dtype=np.int64)) for task in tasks]
    optimizer = adamw(visual.parameters(), settings.lr, settings.weight_decay)
    schedule = cosine_with_warmup(optimizer, settings.warmup_steps, steps)
    chunks = settings.micro_batches()
    losses: list[float] = []
    batches = union_batches(int(offsets[-1]), settings.batch_size, settings.seed, steps)
    for batch in tqdm(batches, total=steps, desc="finetune-multitask", disable=not progress, mininterval=5.0):
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for part in np.array_split(batch, chunks):
            groups = split_by_task(part, offsets)
            # One forward pass over the micro-batch; its features are then scored task by task.
            pixels = np.concatenate([tasks[task].images[local] for task, local in groups])
            features = visual(images_to_tensor(pixels, spec, device))
            terms = []
            start = 0
            for task, local in groups:
                head, logit_scale = heads[task]
                logits = head_logits(features[start : start + len(local)], head, logit_scale)
                # Each task's mean weighted by its share of the batch: together the mean over the batch.
                terms.append(F.cross_entropy(logits, targets[task][local].to(device)) * (len(local) / len(batch)))
                start += len(local)
            # Summed without a leading zero, so that one task's loss is fine-tuning's own tensor.
            loss = functools.reduce(operator.add, terms)
            loss.backward()
            step_loss += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(visual.parameters(), settings.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(step_loss)
    visual.eval()
    return losses
