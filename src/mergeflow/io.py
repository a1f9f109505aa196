"""Atomic file writing and safetensors state-dict input/output."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mergeflow.types import StateDict


class InputError(ValueError):
    """Bad user input: the message names the file, key or config path at fault."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    A killed or failing writer therefore never leaves a file that looks finished. The temporary files
    that a killed writer (`kill -9`, a lost node) left for the same target are removed first: one job
    writes one output (Snakemake's contract), so they belong to no live writer.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None


def save_state_dict(
    path: str | os.PathLike[str], state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write tensors as safetensors atomically (contiguous CPU copies, keys sorted by safetensors).

    The same tensors and metadata always give the same bytes (`sorted_metadata_header`).
    """
    # torch is imported on use so that torch-free verbs (data preparation, reports) start fast.
    from safetensors.torch import save

    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    data = sorted_metadata_header(save(tensors, metadata=dict(metadata) if metadata else None))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def sorted_metadata_header(data: bytes) -> bytes:
    """A safetensors file's bytes with its `__metadata__` entries in sorted key order.

    safetensors writes metadata in hash-map order, which differs from one process to the next, so two
    runs would write the same tensors with different bytes. Reordering JSON object entries keeps the
    header's length, and the tensor offsets are relative to the header's end, so only the order changes.
    """
    (length,) = struct.unpack("<Q", data[:8])
    raw = data[8 : 8 + length]
    header = json.loads(raw, object_pairs_hook=dict)
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or len(metadata) < 2:
        return data
    header["__metadata__"] = dict(sorted(metadata.items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    padded = text + b" " * (length - len(text))
    if len(padded) != length or json.loads(padded) != json.loads(raw):
        raise RuntimeError("reordering the safetensors metadata would change the header's content or length")
    return data[:8] + padded + data[8 + length :]


def load_state_dict(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> StateDict:
    """Read a safetensors file, turning library errors into messages that name the file.

    Floating-point tensors must be finite: a NaN or Inf weight would otherwise become a wrong number
    downstream without a word.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise InputError(f"{path}: file not found (expected a safetensors state dict)")
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path}: not a readable safetensors file ({err})") from None
    for key, tensor in tensors.items():
        checked_finite(tensor, f"{path}: key {key!r}")
    return tensors


def checked_finite(tensor: torch.Tensor, where: str) -> torch.Tensor:
    """`tensor`, or InputError naming `where` when a floating-point tensor holds NaN or Inf."""
    import torch

    if tensor.is_floating_point():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise InputError(f"{where} holds {bad} NaN or Inf value(s) of {tensor.numel()}; expected finite weights")
    return tensor


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The header metadata of a safetensors file (empty if it has none), without reading its tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path}: not a readable safetensors file ({err})") from None


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
