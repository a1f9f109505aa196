"""Task factors: the thin SVD of every (task, matrix), computed once and reused for every rank.

A rank sweep of cart or lowrank_ta (and tsv_m, which needs the same SVDs of τ_t) takes its
truncations from these factors instead of decomposing again. They can be saved as a safetensors
artefact and loaded back bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from mergeflow.io import InputError, load_state_dict, read_safetensors_metadata, save_state_dict
from mergeflow.merging.context import load_context, placement_for
from mergeflow.merging.keys import is_matrix
from mergeflow.merging.sources import InMemorySource, TensorSource
from mergeflow.merging.spectral import MatrixFactors, thin_svd
from mergeflow.types import StateDict

_FORMAT = "mergeflow.task_factors"
_VERSION = "1"
_PARTS = ("u", "s", "vh")
_SEPARATOR = "|"


@dataclass(frozen=True)
class TaskFactors:
    """Per state-dict key, the thin SVDs of the T task vectors of that matrix.

    `centered`: factors of τ̄_t = θ_t − θ_avg (what cart uses) or of τ_t = θ_t − θ_0 (lowrank_ta, tsv_m).
    """

    centered: bool
    num_tasks: int
    matrices: Mapping[str, MatrixFactors]


def compute_task_factors(
    pretrained: StateDict,
    finetuned: Sequence[StateDict],
    *,
    centered: bool,
    keys: Sequence[str] | None = None,
    device: str = "cpu",
) -> TaskFactors:
    """Thin SVD of each task vector of each matrix in `keys` (default: every 2-D floating-point tensor).

    Decomposed on `device` (the T matrices of a key in one batched call on CUDA); the factors stay there.
    """
    source = InMemorySource(pretrained, finetuned)
    placement = placement_for(source, device)
    chosen = list(keys) if keys is not None else [key for key in source.keys if _is_float_matrix(source, key)]
    for key in chosen:
        if key not in source.keys:
            raise InputError(f"task factors: key {key!r} is not in the pretrained model")
        if not _is_float_matrix(source, key):
            raise InputError(f"task factors: key {key!r} is not a 2-D floating-point tensor")
    matrices = {}
    for key in chosen:
        ctx = load_context(source, key, {}, placement)
        matrices[key] = thin_svd(ctx.centered_task_vectors if centered else ctx.task_vectors)
    return TaskFactors(centered, source.num_tasks, matrices)


def _is_float_matrix(source: TensorSource, key: str) -> bool:
    spec = source.spec(key)
    return spec.is_float and is_matrix(spec.shape)


def save_task_factors(path: str | os.PathLike[str], factors: TaskFactors) -> None:
    """Write the factors as one safetensors file (atomically), keys `<state-dict key>|u`, `|s`, `|vh`."""
    tensors = {
        f"{key}{_SEPARATOR}{part}": getattr(matrix, part) for key, matrix in factors.matrices.items() for part in _PARTS
    }
    metadata = {
        "format": _FORMAT,
        "version": _VERSION,
        "centered": "true" if factors.centered else "false",
        "num_tasks": str(factors.num_tasks),
    }
    save_state_dict(path, tensors, metadata)


def load_task_factors(path: str | os.PathLike[str], device: str = "cpu") -> TaskFactors:
    """Read factors written by `save_task_factors`; InputError naming the file if it is not such a file."""
    tensors = load_state_dict(path, device=device)
    metadata = read_safetensors_metadata(path)
    if metadata.get("format") != _FORMAT or metadata.get("version") != _VERSION:
        raise InputError(f"{path}: not a mergeflow task-factors file (format {_FORMAT} version {_VERSION})")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        key, _, part = name.rpartition(_SEPARATOR)
        if part not in _PARTS or not key:
            raise InputError(f"{path}: unexpected tensor {name!r} in a task-factors file")
        parts.setdefault(key, {})[part] = tensor
    matrices = {}
    for key, found in parts.items():
        if set(found) != set(_PARTS):
            raise InputError(f"{path}: key {key!r} lacks {sorted(set(_PARTS) - set(found))} factors")
        matrices[key] = MatrixFactors(found["u"], found["s"], found["vh"])
    return TaskFactors(metadata["centered"] == "true", int(metadata["num_tasks"]), matrices)


def factors_for_method(
    method_name: str, wanted: str | None, factors: TaskFactors, source: TensorSource
) -> Mapping[str, MatrixFactors]:
    """The factors a method may reuse, after checking they fit its kind and these models."""
    if wanted is None:
        raise InputError(f"{method_name} does not use task factors (only cart, lowrank_ta and tsv_m do)")
    if factors.centered != (wanted == "centered"):
        have = "centered" if factors.centered else "original"
        raise InputError(f"{method_name} needs {wanted} task factors, got {have} ones")
    if factors.num_tasks != source.num_tasks:
        raise InputError(f"task factors are for {factors.num_tasks} tasks, but {source.num_tasks} models were given")
    for key, matrix in factors.matrices.items():
        if key not in source.keys:
            raise InputError(f"task factors: key {key!r} is not in the pretrained model")
        if matrix.matrix_shape != source.spec(key).shape:
            raise InputError(
                f"task factors: key {key!r} is for shape {list(matrix.matrix_shape)}, "
                f"but the model's is {list(source.spec(key).shape)}"
            )
    return factors.matrices
