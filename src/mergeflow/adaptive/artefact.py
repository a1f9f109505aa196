"""What adaptation learned (coefficients, adarank's keep masks, the settings) and its safetensors file."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from mergeflow.adaptive.settings import MethodSettings, settings_from_json, settings_to_json
from mergeflow.io import InputError, load_state_dict, read_safetensors_metadata, save_state_dict

_FORMAT = "mergeflow.learned_merge"
_VERSION = "1"
_COEFFICIENTS = "coefficients"
_MASK_PREFIX = "mask|"
MOVEMENT_METADATA = "movement"


@dataclass(frozen=True)
class LearnedMerge:
    """Coefficients (T, K) on the CPU, column `columns[key]` weighting key's term; for adarank the hard keep
    mask (T, r) of each CART matrix (True: singular component kept). With θ_0 and θ_t this defines the merge."""

    settings: MethodSettings
    columns: Mapping[str, int]
    coefficients: torch.Tensor
    masks: Mapping[str, torch.Tensor]

    def kept_ranks(self) -> dict[str, list[int]]:
        """Per CART matrix, the number of singular components each task keeps."""
        return {key: mask.sum(dim=1).tolist() for key, mask in self.masks.items()}


def save_learned_merge(
    path: str | os.PathLike[str], learned: LearnedMerge, movement: Mapping[str, float | int] | None = None
) -> None:
    """One safetensors file (atomically): `coefficients`, `mask|<key>`, settings and columns as metadata, and
    how far adaptation moved (`AdaptationResult.movement`) when given."""
    tensors = {_COEFFICIENTS: learned.coefficients} | {_MASK_PREFIX + key: mask for key, mask in learned.masks.items()}
    metadata = {
        "format": _FORMAT,
        "version": _VERSION,
        "settings": json.dumps(settings_to_json(learned.settings), sort_keys=True),
        "columns": json.dumps(dict(learned.columns), sort_keys=True),
    }
    if movement is not None:
        metadata[MOVEMENT_METADATA] = json.dumps(dict(movement), sort_keys=True)
    save_state_dict(path, tensors, metadata)


def learned_movement(path: str | os.PathLike[str]) -> dict[str, float | int]:
    """The movement `save_learned_merge` recorded in the file; InputError naming the file if it has none."""
    recorded = read_safetensors_metadata(path).get(MOVEMENT_METADATA)
    if recorded is None:
        raise InputError(f"{path}: no {MOVEMENT_METADATA!r} metadata; expected a file written by adapt-eval")
    return json.loads(recorded)


def load_learned_merge(path: str | os.PathLike[str]) -> LearnedMerge:
    """Read a file written by `save_learned_merge`; InputError naming the file if it is not one."""
    tensors = load_state_dict(path)
    metadata = read_safetensors_metadata(path)
    if metadata.get("format") != _FORMAT or metadata.get("version") != _VERSION:
        raise InputError(f"{path}: not a mergeflow learned-merge file (format {_FORMAT} version {_VERSION})")
    if _COEFFICIENTS not in tensors:
        raise InputError(f"{path}: missing tensor {_COEFFICIENTS!r}")
    masks = {}
    for name, tensor in tensors.items():
        if name == _COEFFICIENTS:
            continue
        if not name.startswith(_MASK_PREFIX) or tensor.dtype != torch.bool:
            raise InputError(f"{path}: unexpected tensor {name!r} ({tensor.dtype}) in a learned-merge file")
        masks[name.removeprefix(_MASK_PREFIX)] = tensor
    try:
        recorded = json.loads(metadata["settings"])
        columns = {str(key): int(column) for key, column in json.loads(metadata["columns"]).items()}
    except (KeyError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        raise InputError(f"{path}: unreadable settings or columns metadata ({err})") from None
    return LearnedMerge(settings_from_json(recorded, str(path)), columns, tensors[_COEFFICIENTS], masks)
