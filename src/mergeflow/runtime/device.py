"""Process-wide determinism, thread count and device choice for one pipeline job."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a job's CPU results reproduce byte for byte."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_threads(threads: int | None) -> None:
    """Use exactly the cores the scheduler granted; results on CPU depend on the thread count."""
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)


def select_device(requested: str = "auto") -> torch.device:
    """`auto` takes the first visible CUDA device when there is one, the CPU otherwise.

    Which GPU is visible is decided outside (the scheduler's lease sets CUDA_VISIBLE_DEVICES).
    """
    if requested == "auto":
        requested = os.environ.get("MERGEFLOW_DEVICE", "auto")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was requested but CUDA is not available on this machine")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
