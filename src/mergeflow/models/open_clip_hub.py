"""Fetch open_clip's pretrained CLIP weights (e.g. ViT-B-32 with OpenAI weights) into a model directory.

open_clip publishes each pretrained tag as a Hugging Face hub repository holding `open_clip_config.json`
(the model and preprocessing config) and the weights as `open_clip_model.safetensors`, older ones also
as `open_clip_pytorch_model.bin`. Files go through the hub cache, so a second fetch, or one with
HF_HUB_OFFLINE=1 after a first download, reads the cache only. Without a revision, the repository's default from
`mergeflow.checkpoints.tables.default_revision` is asked for (a pinned commit where one is known); `model.json`
records the revision asked for and the commit it resolved to.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergeflow.checkpoints.hub_files import snapshot_commit
from mergeflow.checkpoints.readers import read_tensors
from mergeflow.checkpoints.record import sha256_file
from mergeflow.checkpoints.tables import default_revision
from mergeflow.io import InputError
from mergeflow.models.clip import (
    OPENAI_IMAGE_MEAN,
    OPENAI_IMAGE_STD,
    ModelSpec,
    build_clip,
    load_weights,
    save_model_dir,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
SAFETENSORS_FILE = "open_clip_model.safetensors"
PICKLE_FILE = "open_clip_pytorch_model.bin"


@dataclass(frozen=True)
class HubWeights:
    """Where open_clip keeps a pretrained tag on the hub."""

    repo_id: str
    filename: str | None  # None: the repository's default weight files


def hub_weights(model_name: str, tag: str) -> HubWeights:
    """The hub repository of an open_clip (model, pretrained tag), from open_clip's own registry."""
    import open_clip

    if model_name not in open_clip.list_models():
        raise InputError(f"model.open_clip.name {model_name!r}: not an open_clip model (see open_clip.list_models())")
    pretrained_cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not pretrained_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise InputError(
            f"model.open_clip.pretrained {tag!r}: not a pretrained tag of {model_name}; expected one of {tags}"
        )
    hub_path = pretrained_cfg.get("hf_hub", "")
    if not hub_path:
        raise InputError(f"{model_name}/{tag}: open_clip has no Hugging Face hub location for these weights")
    repo_id, filename = os.path.split(hub_path)
    return HubWeights(repo_id=repo_id.rstrip("/"), filename=filename or None)


def _download(repo_id: str, filename: str, revision: str, cache_dir: str | None) -> Path | None:
    """The cached file, or None when the repository does not have it (or, offline, the cache lacks it)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))
    except EntryNotFoundError:
        return None


def _model_config(
    model_name: str, tag: str, weights: HubWeights, revision: str, cache_dir: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config, preprocessing config), preferring the repository's own `open_clip_config.json`."""
    import open_clip

    config_path = _download(weights.repo_id, CONFIG_FILE, revision, cache_dir)
    if config_path is not None:
        try:
            served = json.loads(config_path.read_text(encoding="utf-8"))
            return dict(served["model_cfg"]), dict(served.get("preprocess_cfg", {}))
        except (json.JSONDecodeError, KeyError) as err:
            raise InputError(f"{config_path}: not an open_clip config with a 'model_cfg' key ({err})") from None
    log.info("%s has no %s; using open_clip's built-in config for %s", weights.repo_id, CONFIG_FILE, model_name)
    model_cfg = dict(open_clip.get_model_config(model_name))
    pretrained_cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if pretrained_cfg.get("quick_gelu"):
        model_cfg["quick_gelu"] = True
    return model_cfg, {key: pretrained_cfg[key] for key in ("mean", "std") if key in pretrained_cfg}


def _weights_file(weights: HubWeights, revision: str, cache_dir: str | None) -> Path:
    candidates = [weights.filename] if weights.filename else [SAFETENSORS_FILE, PICKLE_FILE]
    for filename in candidates:
        path = _download(weights.repo_id, filename, revision, cache_dir)
        if path is not None:
            return path
    raise InputError(
        f"hub repository {weights.repo_id}@{revision}: none of {candidates} could be found "
        "(offline, the hub cache must already hold one of them)"
    )


def fetch_pretrained(
    model_name: str,
    tag: str,
    out_dir: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> ModelSpec:
    """Download (or read from the hub cache) a pretrained open_clip CLIP and write our model directory.

    The full CLIP is loaded strictly into the recorded architecture, so a wrong or truncated file fails
    here, naming the file and key, before anything is written. `image_size`, when given, must match
    the model's (it is what `prepare_data` resized the images to).
    """
    weights = hub_weights(model_name, tag)
    revision = revision or default_revision(weights.repo_id)
    model_cfg, preprocess_cfg = _model_config(model_name, tag, weights, revision, cache_dir)
    weights_path = _weights_file(weights, revision, cache_dir)
    spec = ModelSpec(
        name=model_name,
        open_clip_config=model_cfg,
        image_mean=tuple(preprocess_cfg.get("mean", OPENAI_IMAGE_MEAN)),  # type: ignore[arg-type]
        image_std=tuple(preprocess_cfg.get("std", OPENAI_IMAGE_STD)),  # type: ignore[arg-type]
        source={
            "kind": "open_clip",
            "model": model_name,
            "pretrained": tag,
            "repo_id": weights.repo_id,
            "revision": revision,
            "file": weights_path.name,
            "commit": snapshot_commit(weights_path),
            "sha256": sha256_file(weights_path),
        },
    )
    if image_size is not None and image_size != spec.image_size:
        raise InputError(
            f"model.image_size is {image_size} but {model_name} takes {spec.image_size}×{spec.image_size} images"
        )
    clip = build_clip(spec)
    # A plain state dict either way: the .bin is read with weights_only=True, never unpickled.
    tensors, _ = read_tensors(weights_path, allow_pickle=False, label=str(weights_path))
    load_weights(clip, {key.removeprefix("module."): value for key, value in tensors.items()}, str(weights_path))
    save_model_dir(out_dir, spec, clip)
    log.info("%s/%s from %s (%s) → %s", model_name, tag, weights.repo_id, weights_path.name, out_dir)
    return spec
