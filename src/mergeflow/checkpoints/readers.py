"""Read a checkpoint file (safetensors, or a PyTorch `.pt`/`.pth`/`.bin`) into a flat dict of tensors.

Pickle policy: PyTorch files are read with `weights_only=True`, which only rebuilds tensors and containers.
A file holding pickled Python objects (the original task_vectors release saves whole `ImageEncoder` modules)
is unpickled only when the caller passes `allow_pickle=True` (config key `finetuned.allow_pickle`), and then
by `checkpoints.module_pickle`'s restricted Unpickler, which turns module classes into inert stand-ins and
refuses every other global the file names.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mergeflow.checkpoints.module_pickle import PickledObject, module_state_dict, restricted_pickle
from mergeflow.io import InputError
from mergeflow.types import StateDict

ALLOW_PICKLE_KEY = "finetuned.allow_pickle"
_WEIGHTS_ONLY_REFUSAL = "Weights only load failed"
_WRAPPER_KEYS = ("state_dict", "model")


def sniff_format(path: Path, label: str) -> str:
    """'safetensors' or 'torch', from the first bytes: URLs and user files do not always carry a suffix."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(9)
    # safetensors: 8-byte little-endian header length, then the JSON header; checked first because the length's
    # low byte may well be 0x80, the first byte of a legacy torch pickle
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # zip archive (torch >= 1.6) or legacy pickle
        return "torch"
    raise InputError(f"{label}: neither a safetensors file nor a PyTorch checkpoint (empty, truncated or other format)")


def read_tensors(path: str | os.PathLike[str], *, allow_pickle: bool, label: str) -> tuple[StateDict, str]:
    """(tensors by key, how they were read: 'safetensors', 'weights_only' or 'pickle')."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{label}: file not found")
    if sniff_format(path, label) == "safetensors":
        return _read_safetensors(path, label), "safetensors"
    obj, how = _torch_load(path, allow_pickle=allow_pickle, label=label)
    return as_state_dict(obj, label), how


def _read_safetensors(path: Path, label: str) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{label}: not a readable safetensors file, possibly truncated ({err})") from None


def _torch_load(path: Path, *, allow_pickle: bool, label: str) -> tuple[Any, str]:
    """Load with weights_only=True; fall back to the restricted unpickler only when the caller allowed it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError as err:
        if _WEIGHTS_ONLY_REFUSAL not in str(err):
            raise InputError(f"{label}: unreadable PyTorch checkpoint, possibly truncated ({err})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise InputError(f"{label}: unreadable PyTorch checkpoint, possibly truncated ({err})") from None
    if not allow_pickle:
        raise InputError(
            f"{label}: the file holds pickled Python objects (e.g. a whole nn.Module), not only tensors. "
            f"It is read only with `allow_pickle: true` in the finetuned config block ({ALLOW_PICKLE_KEY}), "
            "and then with module classes replaced by inert stand-ins and any other object refused."
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle(label))
    except InputError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError) as err:
        raise InputError(f"{label}: could not unpickle the checkpoint ({type(err).__name__}: {err})") from None
    return loaded, "pickle"


def as_state_dict(obj: Any, label: str) -> StateDict:
    """Tensors of a loaded object: a pickled module's state dict, a mapping's tensor values, or a wrapped one."""
    if isinstance(obj, PickledObject):
        return module_state_dict(obj, label)
    if isinstance(obj, Mapping):
        tensors = {str(key): value for key, value in obj.items() if isinstance(value, torch.Tensor)}
        if tensors:
            return tensors
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping | PickledObject):
                return as_state_dict(obj[key], label)
    raise InputError(f"{label}: holds a {type(obj).__name__} with no tensors, not a state dict or module")
