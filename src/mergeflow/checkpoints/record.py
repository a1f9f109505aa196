"""Checksums and the written result: the encoder safetensors plus a JSON sidecar saying where it came from.

Order of writes: the safetensors is first staged under a hidden name (atomically, by `save_state_dict`) and
hashed, then the sidecar (which carries that hash) is written, and only then is the staged file renamed onto
`out`. So `out` is the completion marker: when it exists, its sidecar exists and describes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mergeflow.io import InputError, save_state_dict, sha256_file, write_json

SUFFIX = ".safetensors"


def sidecar_path(out: str | os.PathLike[str]) -> Path:
    """`<name>.json` next to `<name>.safetensors`."""
    return Path(out).with_suffix(".json")


def check_output_path(out: str | os.PathLike[str]) -> Path:
    """The output must be a `.safetensors` path, so that the sidecar name cannot collide with it."""
    path = Path(out)
    if path.suffix != SUFFIX:
        raise InputError(f"{path}: the fine-tuned encoder is written as safetensors; the path must end in {SUFFIX}")
    return path


def safetensors_metadata(record: Mapping[str, Any]) -> dict[str, str]:
    """The record as safetensors metadata (string values only; absent values are left out)."""
    return {key: str(value) for key, value in record.items() if value is not None}


def write_encoder(
    out: str | os.PathLike[str], state_dict: Mapping[str, torch.Tensor], record: Mapping[str, Any]
) -> dict[str, Any]:
    """Write `state_dict` to `out` and the record (plus the file's sha256) to the sidecar; returns that record."""
    target = check_output_path(out)
    sidecar = sidecar_path(target)
    staged = target.with_name(f".{target.name}.staged")
    try:
        save_state_dict(staged, state_dict, safetensors_metadata(record))
        full = {**record, "sha256": sha256_file(staged)}
        target.unlink(missing_ok=True)  # a stale encoder must not sit next to the new sidecar
        write_json(sidecar, full)
        os.replace(staged, target)
    except BaseException:
        staged.unlink(missing_ok=True)
        if not target.exists():
            sidecar.unlink(missing_ok=True)
        raise
    return full
