"""The adaptation loop: Adam on Σ_t mean prediction entropy of unlabeled test batches, and its result.

Followed, in our own code: EnnengYang/AdaMerging src/main_layer_wise_adamerging.py and
main_task_wise_adamerging.py (@2c64d7d: λ init 0.3, clamped to [0, 1], θ_0 weighted 1, Adam lr 1e-3
betas (0.9, 0.999) no weight decay, 500 steps, loss = Σ_t mean softmax entropy of shuffled test batches of
16) and david3684/AdaRank vision/src/models/merge_vit/adaptive.py, vision/runner.py, vision/configs
(@2d4bd3a: full thin SVD of every attn/mlp weight of each task vector, logits ±0.1, mask sigmoid(m / 10),
straight-through hard mask, [T × keys] coefficients from the prior, no clamp, 10000 steps, one batch per
task and step from iterators reshuffled when exhausted).

Where we differ, on purpose:
- λ is clamped by projection after each Adam step; the official AdaMerging clamps inside the forward
  pass, so a raw λ that leaves [0, 1] gets no gradient there and drifts on momentum alone.
- each step reads one batch of `batch_size` per task (AdaRank's runner); official AdaMerging reads two
  batches of 16 per task and sums their mean entropies: batch_size=32 sees as many images per step, and
  Adam is insensitive to the factor 2 in the loss.
- all tasks' batches share one forward pass (same weights, no batch-dependent layer: the same features).
- adarank keeps every non-CART tensor at its static merge (θ_avg, or θ_0 + prior·Σ_t τ_t) with no
  coefficient; the official module also trains a coefficient per (task, non-CART tensor) on the dense vector.
- adarank keeps rank_from_ratio(initial_rank) components at the start (at least 1, none at ρ = 0); the
  official int(ρ·r) can keep none, and it replaces ρ = 0 by 1/T.
- the official runner reports the best test accuracy seen during adaptation (selection on test labels);
  here labels never enter, and the result is the final step.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from mergeflow.adaptive.artefact import LearnedMerge
from mergeflow.adaptive.data import UnlabeledTask, check_tasks, shuffled_batches
from mergeflow.adaptive.methods import Trainable, build_adaptive_merge, trainable_for
from mergeflow.adaptive.objective import task_entropies
from mergeflow.adaptive.parametrisation import AdaptiveMerge
from mergeflow.adaptive.settings import MethodSettings
from mergeflow.io import InputError
from mergeflow.models.clip import ModelSpec, images_to_tensor
from mergeflow.runtime.device import synchronize
from mergeflow.types import StateDict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptationMovement:
    """How far adaptation went from where it started: the largest change of any coefficient and, for adarank,
    how many singular components changed between kept and dropped, of how many it masks."""

    max_coefficient_change: float
    flipped_components: int
    masked_components: int

    def as_json(self) -> dict[str, float | int]:
        return {
            "max_coefficient_change": self.max_coefficient_change,
            "flipped_components": self.flipped_components,
            "masked_components": self.masked_components,
        }


@dataclass(frozen=True)
class AdaptationResult:
    """What was learned, the per-task entropy (steps, T) at every step before its update, and the merge.

    `merge` keeps the static merge and the task directions in memory for as long as the result lives.
    """

    learned: LearnedMerge
    task_entropy: np.ndarray
    merge: AdaptiveMerge

    @property
    def entropy(self) -> np.ndarray:
        """The objective per step: Σ_t mean entropy, (steps,)."""
        return self.task_entropy.sum(axis=1)

    def movement(self) -> AdaptationMovement:
        initial = self.merge.initial_coefficients.detach().cpu().to(self.learned.coefficients.dtype)
        change = (self.learned.coefficients - initial).abs()
        flipped = sum(
            int((mask != (self.merge.initial_masks[key].cpu() > 0.5)).sum()) for key, mask in self.learned.masks.items()
        )
        masked = sum(mask.numel() for mask in self.learned.masks.values())
        return AdaptationMovement(float(change.max()) if change.numel() else 0.0, flipped, masked)

    def merged_state_dict(self) -> StateDict:
        """The adapted encoder: plain tensors with θ_0's keys and dtypes, on the adaptation device."""
        return self.merge.merged_state_dict(self.learned.coefficients, self.learned.masks)


def _check_encoder(visual: torch.nn.Module, pretrained: StateDict) -> None:
    expected = set(visual.state_dict())
    missing, unexpected = sorted(expected - set(pretrained)), sorted(set(pretrained) - expected)
    if missing or unexpected:
        raise InputError(
            f"adaptation: pretrained keys do not match the encoder; missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def task_groups(num_tasks: int, tasks_per_pass: int | None) -> list[list[int]]:
    """Consecutive task indices, `tasks_per_pass` to a group (all in one group when None)."""
    size = num_tasks if tasks_per_pass is None else tasks_per_pass
    return [list(range(start, min(start + size, num_tasks))) for start in range(0, num_tasks, size)]


def entropies_with_gradient(
    visual: torch.nn.Module,
    merge: AdaptiveMerge,
    trainable: Trainable,
    batches: Sequence[torch.Tensor],
    heads: Sequence[torch.Tensor],
    logit_scales: Sequence[torch.Tensor],
    settings: MethodSettings,
) -> torch.Tensor:
    """[T] mean entropies (detached), with the gradient of their sum accumulated into the trainable tensors.

    With several task groups the merged weights are detached into leaves: each group's backward pass stops
    there, so only one group's activations are alive at a time, and one backward pass through the merge
    carries the summed weight gradients to the coefficients and masks.
    """
    weights = merge.merged(trainable.coefficients, trainable.masks())
    groups = task_groups(len(batches), settings.tasks_per_pass)
    autocast = settings.bf16_autocast
    if len(groups) == 1:
        entropies = task_entropies(visual, weights, batches, heads, logit_scales, bf16_autocast=autocast)
        entropies.sum().backward()
        return entropies.detach()
    leaves = dict(weights)
    for key in merge.terms:
        leaves[key] = weights[key].detach().requires_grad_(True)
    parts = []
    for group in groups:
        part = task_entropies(
            visual,
            leaves,
            [batches[index] for index in group],
            [heads[index] for index in group],
            [logit_scales[index] for index in group],
            bf16_autocast=autocast,
        )
        part.sum().backward()
        parts.append(part.detach())
    moved = [key for key in merge.terms if leaves[key].grad is not None]
    torch.autograd.backward([weights[key] for key in moved], [leaves[key].grad for key in moved])
    return torch.cat(parts)


def adapt(
    visual: torch.nn.Module,
    spec: ModelSpec,
    pretrained: StateDict,
    finetuned: Sequence[StateDict],
    tasks: Sequence[UnlabeledTask],
    settings: MethodSettings,
    device: str | torch.device = "cpu",
    *,
    progress: bool = True,
) -> AdaptationResult:
    """Learn the method's coefficients (and adarank's masks) on the tasks' unlabeled test images.

    `visual` is an open_clip VisionTransformer of θ_0's architecture; its own weights are never read
    (every state-dict tensor is supplied by the merge) and it is put in eval mode. `tasks[t]` belongs to
    `finetuned[t]`. The batch order comes from `settings.seed` alone, so on the CPU the same inputs and
    seed give the same coefficients bit for bit. `progress` shows a stderr bar with the step and entropy.
    """
    target = torch.device(device)
    if settings.bf16_autocast and target.type != "cuda":
        raise InputError(f"{settings.method}: setting 'bf16_autocast' needs a CUDA device, got {target}")
    _check_encoder(visual, pretrained)
    check_tasks(tasks, len(finetuned), spec, settings.batch_size)
    started = time.perf_counter()
    merge = build_adaptive_merge(settings, pretrained, finetuned, target)
    synchronize(target)
    built = time.perf_counter()
    trainable = trainable_for(settings, merge)
    optimizer = torch.optim.Adam(trainable.parameters(), lr=settings.lr, betas=settings.betas, weight_decay=0.0)
    heads = [task.head.to(target, torch.float32) for task in tasks]
    logit_scales = [task.logit_scale.to(target, torch.float32).reshape(()) for task in tasks]
    orders = [
        shuffled_batches(len(task.images), settings.batch_size, (settings.seed, index))
        for index, task in enumerate(tasks)
    ]
    visual.eval()
    curve = np.zeros((settings.steps, len(tasks)))
    bar = tqdm(range(settings.steps), desc=settings.method, file=sys.stderr, disable=not progress, mininterval=1.0)
    for step in bar:
        batches = [images_to_tensor(task.images[next(order)], spec, target) for task, order in zip(tasks, orders)]
        optimizer.zero_grad(set_to_none=True)
        entropies = entropies_with_gradient(visual, merge, trainable, batches, heads, logit_scales, settings)
        optimizer.step()
        trainable.project_()
        curve[step] = entropies.cpu().numpy()
        bar.set_postfix(entropy=f"{curve[step].sum():.4f}", refresh=False)
    # Each step ends by copying its entropies to the host, so the clock has waited for the device.
    seconds = time.perf_counter() - built
    log.info("%s: merge built in %.3f s; %d steps in %.3f s (%.4f s per step)", settings.method, built - started,
             settings.steps, seconds, seconds / max(1, settings.steps))  # fmt: skip
    return AdaptationResult(trainable.learned(settings, merge.columns), curve, merge)
