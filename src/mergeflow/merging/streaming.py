"""Merge safetensors files tensor by tensor, reading each key of every model only when it is merged.

Peak memory is a small multiple of (T + 1) × the largest tensor, plus the merged output; TIES-based
methods read the inputs a few more times for their whole-model statistics instead of holding them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergeflow.io import checked_finite, save_state_dict
from mergeflow.merging.context import combine
from mergeflow.merging.engine import lam_of, tensor_merges
from mergeflow.merging.registry import merge_spec, resolve_hparams
from mergeflow.merging.sources import open_file_source
from mergeflow.merging.task_statistics import open_task_statistics
from mergeflow.types import StateDict


@dataclass(frozen=True)
class MergeSummary:
    """What a file merge did, for the command line to report."""

    method: str
    hparams: Mapping[str, Any]
    tensors_touched: int
    tensors_total: int
    output: Path


def merge_metadata(method: str, hparams: Mapping[str, Any]) -> dict[str, str]:
    """Provenance stored in the merged file's safetensors header."""
    return {"mergeflow.method": method, "mergeflow.hparams": json.dumps(dict(hparams), sort_keys=True)}


def merge_files(
    name: str,
    pretrained: str | os.PathLike[str],
    finetuned: Sequence[str | os.PathLike[str]],
    hparams: Mapping[str, Any],
    output: str | os.PathLike[str],
    *,
    device: str = "cpu",
    progress: bool = False,
    task_statistics: Sequence[str | os.PathLike[str]] = (),
) -> MergeSummary:
    """Merge safetensors state dicts with `name` (a method, or with modifiers: `cart+svc`) and write the result to
    `output` atomically.

    Equal, bit for bit, to `merge_state_dicts` on the same tensors. `progress` shows a bar per pass on stderr.
    `task_statistics`: one statistics file per fine-tuned model, for a method that reads them (regmean, fisher).
    """
    method, modifiers = merge_spec(name)
    resolved = resolve_hparams(name, hparams)
    lam = lam_of(resolved)
    merged: StateDict = {}
    touched = 0
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_file_source(pretrained, finetuned))
        statistics = stack.enter_context(open_task_statistics(task_statistics)) if task_statistics else None
        merges = tensor_merges(
            method, resolved, source, factors=None, device=device, progress=progress, modifiers=modifiers,
            task_statistics=statistics,
        )  # fmt: skip
        for merge in merges:
            # Each merged tensor goes to host memory at once so that device memory stays bounded too.
            tensor = combine(merge.origin, merge.delta, lam, merge.dtype).to("cpu")
            # The inputs were finite, so a NaN or Inf here is the merge overflowing its dtype.
            merged[merge.key] = checked_finite(tensor, f"{name} merge {resolved}: merged key {merge.key!r}")
            touched += merge.touched
    save_state_dict(output, merged, merge_metadata(name, resolved))
    return MergeSummary(name, resolved, touched, len(merged), Path(output))
