"""Read a checkpoint file (safetensors, or a PyTorch `.pt`/`.pth`/`.bin`) into a flat dict of tensors.

Pickle policy: PyTorch files are read with `weights_only=True`, which only rebuilds tensors and containers.
A file holding pickled Python objects (the original task_vectors release saves whole `ImageEncoder` modules)
is unpickled only when the caller passes `allow_pickle=True` (config key `finetuned.allow_pickle`), because
unpickling runs code named by the file.
"""

from __future__ import annotations

import os
import pickle
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

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
    """Load with weights_only=True; fall back to full unpickling only when the caller allowed it."""
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
            f"Unpickling runs code from the file; if you trust this source, set `allow_pickle: true` in the "
            f"finetuned config block ({ALLOW_PICKLE_KEY})."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_lenient_pickle()), "pickle"
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError) as err:
        raise InputError(f"{label}: could not unpickle the checkpoint ({type(err).__name__}: {err})") from None


def _lenient_pickle() -> types.ModuleType:
    """`pickle` whose Unpickler replaces classes that cannot be imported by empty nn.Module stand-ins.

    A pickled module names its classes by import path (task_vectors: `src.modeling.ImageEncoder`; old open_clip
    or torch classes that have since moved). The parameters live in the generic nn.Module state
    (`_parameters`, `_buffers`, `_modules`), so a stand-in restores them and `state_dict()` works.
    """

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError):
                return type(name, (torch.nn.Module,), {"__module__": module, "__qualname__": name})

    lenient = types.ModuleType("mergeflow_lenient_pickle")
    lenient.__dict__.update({key: getattr(pickle, key) for key in dir(pickle) if not key.startswith("__")})
    lenient.Unpickler = Unpickler  # type: ignore[attr-defined]
    lenient.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()  # type: ignore[attr-defined]
    return lenient


def as_state_dict(obj: Any, label: str) -> StateDict:
    """Tensors of a loaded object: a module's state_dict, a mapping's tensor values, or a wrapped state dict."""
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        tensors = {str(key): value for key, value in obj.items() if isinstance(value, torch.Tensor)}
        if tensors:
            return tensors
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping | torch.nn.Module):
                return as_state_dict(obj[key], label)
    raise InputError(f"{label}: holds a {type(obj).__name__} with no tensors, not a state dict or module")
