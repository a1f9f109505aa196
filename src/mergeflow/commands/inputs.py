"""What the jobs read before they compute: the device, θ_0 and the fine-tuned models, the task splits, the evaluator.

Every verb that measures accuracy (evaluate-reference, merge-eval, adapt-eval) builds its inputs here, in the
same order and with the same checks, so that each verb reads top to bottom.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mergeflow.commands.arguments import check_same_length

if TYPE_CHECKING:
    import torch

    from mergeflow.evaluation.sweep import SweepEvaluator, TaskSplits
    from mergeflow.types import StateDict

log = logging.getLogger("mergeflow")


def job_device(args: argparse.Namespace, seed: int | None = None) -> torch.device:
    """Lease a GPU (local runs), set threads and seeds, and pick the device named by `--device`."""
    from mergeflow.runtime.device import configure_threads, seed_everything, select_device
    from mergeflow.runtime.gpu_lease import lease_device_for_job

    # Before CUDA starts: the lease decides which GPU this process sees.
    lease = lease_device_for_job(args.device)
    if lease is not None:
        log.info("gpu lease: CUDA_VISIBLE_DEVICES=%s (lock %s)", lease.device, lease.path)
    configure_threads(args.threads)
    if seed is not None:
        seed_everything(seed)
    device = select_device(args.device)
    log.info("device: %s", device)
    return device


def load_finetuned(paths: Sequence[str], pretrained: StateDict, pretrained_name: object) -> list[StateDict]:
    """The fine-tuned state dicts, each checked against θ_0's keys and shapes with its file named in errors."""
    from mergeflow.io import load_state_dict
    from mergeflow.merging.sources import check_compatible, specs_of

    models = [load_state_dict(path) for path in paths]
    check_compatible(
        str(pretrained_name), specs_of(pretrained), [(str(path), specs_of(m)) for path, m in zip(paths, models)]
    )
    return models


def task_splits(args: argparse.Namespace) -> list[TaskSplits]:
    """Each task's frozen head with its val and test splits (the head checked against the task's classes)."""
    from mergeflow.data import check_head_fits, load_split
    from mergeflow.evaluation.sweep import TaskSplits
    from mergeflow.models.heads import load_head

    splits = []
    for task, head_path, data in zip(args.tasks, args.heads, args.data):
        head = load_head(head_path)[0]
        check_head_fits(head, head_path, data)
        splits.append(TaskSplits(task, head, load_split(data, "val"), load_split(data, "test")))
    return splits


class EvaluationJob:
    """The inputs of one accuracy-measuring job, loaded in the order their checks should fail."""

    def __init__(self, args: argparse.Namespace, *, seed: int | None = None, reference: bool = False) -> None:
        from mergeflow.evaluation.accuracy import EvalSettings
        from mergeflow.evaluation.results import individual_accuracies
        from mergeflow.evaluation.sweep import SweepEvaluator
        from mergeflow.io import load_state_dict
        from mergeflow.models.clip import load_image_encoder, load_spec, pretrained_path

        check_same_length(args, ["tasks", "heads", "data", "finetuned"])
        self.device = job_device(args, seed)
        self.pretrained: StateDict = load_state_dict(pretrained_path(args.model_dir))
        # The individual accuracies per split and task normalise merge-eval's and adapt-eval's rows.
        self.reference: dict[str, dict[str, float]] = (
            individual_accuracies(args.reference, args.tasks) if reference else {}
        )
        self.splits = task_splits(args)
        settings = EvalSettings(batch_size=args.batch_size, precision=args.precision, resident_mb=args.resident_mb)
        visual = load_image_encoder(args.model_dir, self.pretrained)
        self.evaluator: SweepEvaluator = SweepEvaluator(
            visual, load_spec(args.model_dir), self.splits, self.device, settings
        )
        self.finetuned = load_finetuned(args.finetuned, self.pretrained, pretrained_path(args.model_dir))
