"""Where the tensors of θ_0 and θ_1..θ_T come from: dictionaries in memory or safetensors files read lazily.

Both kinds check, before any merging, that every fine-tuned model has exactly the pretrained keys
and shapes, and name the offending model and key when not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open

from mergeflow.io import InputError, checked_finite
from mergeflow.types import StateDict

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point


class TensorSource(Protocol):
    """Pretrained and fine-tuned tensors, one (key, model) at a time."""

    @property
    def keys(self) -> tuple[str, ...]: ...

    @property
    def num_tasks(self) -> int: ...

    def spec(self, key: str) -> TensorSpec: ...

    def load_pretrained(self, key: str) -> torch.Tensor: ...

    def load_finetuned(self, key: str, task: int) -> torch.Tensor: ...


def _spec_of_tensor(tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(tuple(tensor.shape), tensor.dtype)


def specs_of(state_dict: StateDict) -> dict[str, TensorSpec]:
    """Shape and dtype of every tensor of a state dict, for `check_compatible`."""
    return {key: _spec_of_tensor(tensor) for key, tensor in state_dict.items()}


def _format_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(size) for size in shape) + "]"


def check_compatible(
    pretrained_name: str,
    pretrained: Mapping[str, TensorSpec],
    finetuned: Sequence[tuple[str, Mapping[str, TensorSpec]]],
) -> None:
    """Raise InputError naming the first fine-tuned model and key that differ from the pretrained model."""
    if not finetuned:
        raise InputError("at least one fine-tuned model is required")
    empty = [key for key, spec in pretrained.items() if spec.is_float and 0 in spec.shape]
    if empty:
        # No encoder has an empty weight; the spectral methods could not decompose one.
        shape = _format_shape(pretrained[empty[0]].shape)
        raise InputError(f"{pretrained_name}: key '{empty[0]}' is an empty tensor of shape {shape}; expected weights")
    for name, specs in finetuned:
        missing = [key for key in pretrained if key not in specs]
        if missing:
            raise InputError(
                f"{name}: key '{missing[0]}' of {pretrained_name} is missing"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        extra = [key for key in specs if key not in pretrained]
        if extra:
            raise InputError(
                f"{name}: key '{extra[0]}' is not in {pretrained_name}"
                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            )
        for key, expected in pretrained.items():
            found = specs[key]
            if found.shape != expected.shape:
                raise InputError(
                    f"{name}: key '{key}' has shape {_format_shape(found.shape)}, "
                    f"but {pretrained_name} has {_format_shape(expected.shape)}"
                )
            if found.is_float != expected.is_float:
                kinds = {True: "floating-point", False: "non-floating-point"}
                raise InputError(
                    f"{name}: key '{key}' is {kinds[found.is_float]}, "
                    f"but in {pretrained_name} it is {kinds[expected.is_float]}"
                )


class InMemorySource:
    """State dicts already in memory; fine-tuned models are named finetuned[i] in errors."""

    def __init__(self, pretrained: StateDict, finetuned: Sequence[StateDict]) -> None:
        self._pretrained = pretrained
        self._finetuned = tuple(finetuned)
        self._specs = {key: _spec_of_tensor(tensor) for key, tensor in pretrained.items()}
        check_compatible(
            "the pretrained model",
            self._specs,
            [
                (f"finetuned[{index}]", {key: _spec_of_tensor(tensor) for key, tensor in state.items()})
                for index, state in enumerate(self._finetuned)
            ],
        )

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._pretrained)

    @property
    def num_tasks(self) -> int:
        return len(self._finetuned)

    def spec(self, key: str) -> TensorSpec:
        return self._specs[key]

    def load_pretrained(self, key: str) -> torch.Tensor:
        return self._pretrained[key]

    def load_finetuned(self, key: str, task: int) -> torch.Tensor:
        return self._finetuned[task][key]


def open_safetensors(stack: contextlib.ExitStack, path: Path) -> Any:
    """A lazily read safetensors handle that closes with `stack`; InputError naming `path` when unreadable."""
    if not path.is_file():
        raise InputError(f"{path}: file not found (expected a safetensors state dict)")
    try:
        # pread, not mmap: every mapped page read would stay resident in this process, so streaming
        # through T memory-mapped files would end with all of them counted in its memory.
        return stack.enter_context(safe_open(str(path), framework="pt", device="cpu", backend="pread"))
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path}: not a readable safetensors file ({err})") from None


def _specs_of_file(handle: Any, path: Path) -> dict[str, TensorSpec]:
    specs = {}
    for key in handle.keys():
        tensor_slice = handle.get_slice(key)
        dtype_name = tensor_slice.get_dtype()
        if dtype_name not in _SAFETENSORS_DTYPES:
            raise InputError(f"{path}: key '{key}' has unsupported dtype {dtype_name}")
        specs[key] = TensorSpec(tuple(tensor_slice.get_shape()), _SAFETENSORS_DTYPES[dtype_name])
    return specs


class FileSource:
    """Safetensors files opened lazily: a tensor is read only when `load` asks for its key."""

    def __init__(self, handles: Sequence[Any], pretrained_path: Path, finetuned_paths: Sequence[Path]) -> None:
        self._pretrained, *finetuned = handles
        self._finetuned = tuple(finetuned)
        self._paths = (pretrained_path, *finetuned_paths)
        self._specs = _specs_of_file(self._pretrained, pretrained_path)
        check_compatible(
            str(pretrained_path),
            self._specs,
            [(str(path), _specs_of_file(handle, path)) for path, handle in zip(finetuned_paths, self._finetuned)],
        )

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._specs)

    @property
    def num_tasks(self) -> int:
        return len(self._finetuned)

    def spec(self, key: str) -> TensorSpec:
        return self._specs[key]

    def load_pretrained(self, key: str) -> torch.Tensor:
        return checked_finite(self._pretrained.get_tensor(key), f"{self._paths[0]}: key {key!r}")

    def load_finetuned(self, key: str, task: int) -> torch.Tensor:
        return checked_finite(self._finetuned[task].get_tensor(key), f"{self._paths[task + 1]}: key {key!r}")


@contextlib.contextmanager
def open_file_source(
    pretrained: str | os.PathLike[str], finetuned: Sequence[str | os.PathLike[str]]
) -> Iterator[FileSource]:
    """Open every file for lazy reading; the handles close when the block ends."""
    paths = [Path(pretrained), *(Path(path) for path in finetuned)]
    with contextlib.ExitStack() as stack:
        handles = [open_safetensors(stack, path) for path in paths]
        yield FileSource(handles, paths[0], paths[1:])
