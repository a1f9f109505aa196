"""Build open_clip CLIP models from a recorded architecture and move weights in and out of them.

A model directory holds `model.json` (architecture, preprocessing, tokenizer), `pretrained.safetensors`
(the image encoder θ_0, keys as in `CLIP.visual.state_dict()`) and `text.safetensors` (everything the
zero-shot heads need: the text tower and `logit_scale`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mergeflow.io import InputError, load_state_dict, read_json, save_state_dict, write_json
from mergeflow.types import StateDict

OPENAI_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

VISUAL_PREFIX = "visual."


def pretrained_path(model_dir: str | os.PathLike[str]) -> Path:
    """The image encoder θ_0 of a model directory."""
    return Path(model_dir) / "pretrained.safetensors"


def text_path(model_dir: str | os.PathLike[str]) -> Path:
    """The text tower and logit scale of a model directory (what the zero-shot heads are computed from)."""
    return Path(model_dir) / "text.safetensors"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a CLIP and feed it images and text."""

    name: str
    open_clip_config: dict[str, Any]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    # Where the weights came from (hub repo, file, commit, checksum); empty for the embedded tiny model.
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.open_clip_config["vision_cfg"]["image_size"])

    @property
    def context_length(self) -> int:
        return int(self.open_clip_config["text_cfg"]["context_length"])

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "open_clip_config": self.open_clip_config,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], source: str) -> ModelSpec:
        missing = {"name", "open_clip_config", "image_mean", "image_std"} - set(obj)
        if missing:
            raise InputError(f"{source}: missing keys {sorted(missing)} in model description")
        return cls(
            name=str(obj["name"]),
            open_clip_config=dict(obj["open_clip_config"]),
            image_mean=tuple(float(v) for v in obj["image_mean"]),  # type: ignore[arg-type]
            image_std=tuple(float(v) for v in obj["image_std"]),  # type: ignore[arg-type]
            source=dict(obj.get("source", {})),
        )


def tiny_clip_spec(name: str, architecture: Mapping[str, int]) -> ModelSpec:
    """A small ViT CLIP in open_clip's own config format (the shape of ViT-B-32's config, scaled down)."""
    width = int(architecture["width"])
    text_width = int(architecture["text_width"])
    config = {
        "embed_dim": int(architecture["embed_dim"]),
        "vision_cfg": {
            "image_size": int(architecture["image_size"]),
            "patch_size": int(architecture["patch_size"]),
            "width": width,
            "layers": int(architecture["layers"]),
            "head_width": width // int(architecture["heads"]),
            "mlp_ratio": 4.0,
        },
        "text_cfg": {
            "context_length": int(architecture["context_length"]),
            "vocab_size": 49408,
            "width": text_width,
            "heads": int(architecture["text_heads"]),
            "layers": int(architecture["text_layers"]),
        },
    }
    return ModelSpec(name=name, open_clip_config=config, image_mean=OPENAI_IMAGE_MEAN, image_std=OPENAI_IMAGE_STD)


# open_clip model-config keys that `open_clip.model.CLIP` accepts; others (custom text towers, HF text
# models) would need a different class and are outside what this pipeline merges.
_CLIP_CONFIG_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "init_logit_bias"}


def build_clip(spec: ModelSpec) -> torch.nn.Module:
    """A randomly initialised open_clip CLIP of the recorded architecture (QuickGELU for OpenAI weights)."""
    import open_clip

    cfg = spec.open_clip_config
    unsupported = sorted(set(cfg) - _CLIP_CONFIG_KEYS)
    if unsupported:
        raise InputError(
            f"model {spec.name!r}: open_clip config keys {unsupported} are not supported; "
            f"expected only {sorted(_CLIP_CONFIG_KEYS)} (a ViT image tower with the standard text tower)"
        )
    return open_clip.model.CLIP(**cfg)


def build_tokenizer(spec: ModelSpec) -> Any:
    import open_clip

    return open_clip.tokenizer.SimpleTokenizer(context_length=spec.context_length)


def split_clip_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    """Separate a CLIP state dict into (image encoder without the `visual.` prefix, everything else)."""
    image: StateDict = {}
    text: StateDict = {}
    for key, value in state_dict.items():
        if key.startswith(VISUAL_PREFIX):
            image[key[len(VISUAL_PREFIX) :]] = value
        else:
            text[key] = value
    return image, text


def save_model_dir(model_dir: str | os.PathLike[str], spec: ModelSpec, clip: torch.nn.Module) -> None:
    image, text = split_clip_state_dict(clip.state_dict())
    directory = Path(model_dir)
    save_state_dict(text_path(directory), text, {"model": spec.name})
    write_json(directory / "model.json", spec.to_json())
    # Written last: Snakemake treats the image encoder as the directory's completion marker.
    save_state_dict(pretrained_path(directory), image, {"model": spec.name})


def load_spec(model_dir: str | os.PathLike[str]) -> ModelSpec:
    path = Path(model_dir) / "model.json"
    return ModelSpec.from_json(read_json(path), str(path))


def check_weights(expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise InputError naming `source` when keys or shapes differ from the module's `expected` tensors."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise InputError(
            f"{source}: keys do not match the architecture; missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise InputError(
                f"{source}: key {key!r} has shape {tuple(state_dict[key].shape)}, "
                f"the architecture expects {tuple(tensor.shape)}"
            )


def load_weights(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load strictly, reporting missing/unexpected keys and shape mismatches with the file name."""
    check_weights(module.state_dict(), state_dict, source)
    module.load_state_dict(state_dict, strict=True)


def load_image_encoder(
    model_dir: str | os.PathLike[str], weights: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None
) -> torch.nn.Module:
    """The image encoder of the model in `model_dir`, with θ_0 or the given weights (a file or a state dict)."""
    spec = load_spec(model_dir)
    visual = build_clip(spec).visual
    if weights is None:
        weights = pretrained_path(model_dir)
    if isinstance(weights, Mapping):
        load_weights(visual, weights, "in-memory state dict")
    else:
        load_weights(visual, load_state_dict(weights), str(weights))
    return visual


def load_clip(model_dir: str | os.PathLike[str]) -> tuple[ModelSpec, torch.nn.Module]:
    """The full CLIP (image and text towers) of `model_dir` with its pretrained weights."""
    spec = load_spec(model_dir)
    clip = build_clip(spec)
    image = load_state_dict(pretrained_path(model_dir))
    text = load_state_dict(text_path(model_dir))
    combined = {VISUAL_PREFIX + key: value for key, value in image.items()} | text
    load_weights(clip, combined, str(model_dir))
    return spec, clip


def images_to_tensor(images: np.ndarray, spec: ModelSpec, device: torch.device) -> torch.Tensor:
    """uint8 NHWC images → normalised float NCHW tensor on `device`."""
    return normalise_images(torch.from_numpy(np.ascontiguousarray(images)).to(device), spec)


def normalise_images(batch: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """uint8 NHWC tensor → normalised float NCHW tensor on the same device."""
    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.image_mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.image_std, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std
