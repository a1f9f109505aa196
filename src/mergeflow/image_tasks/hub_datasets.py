"""Resolve a dataset split to local files through the Hugging Face hub cache, and read what the repo says about it.

The files come from `huggingface_hub.snapshot_download` restricted to the split's files (with HF_HUB_OFFLINE=1 this
resolves from the cache alone). Which files belong to a split is read from README.md's `configs` section when the
repo declares one, as the `datasets` library does; otherwise the registry's glob is used. Class names come from the
Parquet schema's `huggingface` metadata (the `datasets` ClassLabel feature), else from README.md's `dataset_info`,
else from a names file in the repo, else from the registry.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from mergeflow.image_tasks.registry import HubSource
from mergeflow.io import InputError

_EXTENSIONS = {"parquet": (".parquet",), "webdataset": (".tar",)}


def describe(source: HubSource, revision: str) -> str:
    config = f" (config {source.config!r})" if source.config else ""
    return f"{source.repo_id}@{revision}{config}"


def snapshot(source: HubSource, patterns: Sequence[str], *, revision: str, cache_dir: str | None) -> Path:
    """Download (or find in the cache) the repo files matching `patterns`; returns the snapshot folder."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            source.repo_id,
            repo_type="dataset",
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=list(patterns),
        )
    except OSError as err:  # every huggingface_hub download/lookup error derives from OSError
        raise InputError(
            f"{describe(source, revision)}: could not get files {list(patterns)} through the Hugging Face hub "
            f"({type(err).__name__}: {err})"
        ) from err
    return Path(folder)


def read_card(folder: Path) -> dict[str, Any]:
    """The YAML front matter of README.md (the dataset card), or {} when there is none."""
    path = folder / "README.md"
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if not match:
        return {}
    try:
        card = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        raise InputError(f"{path}: the dataset card's YAML header does not parse ({err})") from None
    return card if isinstance(card, dict) else {}


def _pick_config(entries: Any, config: str | None) -> dict[str, Any] | None:
    """The card entry (of `configs` or `dataset_info`) for `config`: by name, else the default, else the only one."""
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        return None
    entries = [e for e in entries if isinstance(e, dict)]
    if config is not None:
        named = [e for e in entries if e.get("config_name") == config]
        if named:
            return named[0]
    defaults = [e for e in entries if e.get("default") or e.get("config_name", "default") == "default"]
    if defaults:
        return defaults[0]
    return entries[0] if len(entries) == 1 else None


def card_data_files(card: dict[str, Any], config: str | None, split: str) -> list[str] | None:
    """The split's file globs declared in the card's `configs` section, or None when it declares none."""
    entry = _pick_config(card.get("configs"), config)
    if entry is None or not isinstance(entry.get("data_files"), list):
        return None
    for item in entry["data_files"]:
        if isinstance(item, dict) and item.get("split") == split:
            path = item.get("path")
            return [path] if isinstance(path, str) else [str(p) for p in path or []] or None
    return None


def card_label_names(card: dict[str, Any], config: str | None, column: str) -> tuple[str, ...] | None:
    """ClassLabel names of `column` from the card's `dataset_info.features`, in label order."""
    info = _pick_config(card.get("dataset_info"), config)
    for feature in (info or {}).get("features") or []:
        if not isinstance(feature, dict) or feature.get("name") != column:
            continue
        dtype = feature.get("dtype")
        names = dtype.get("class_label", {}).get("names") if isinstance(dtype, dict) else None
        if isinstance(names, dict):
            return tuple(str(names[k]) for k in sorted(names, key=int))
        if isinstance(names, list):
            return tuple(str(n) for n in names)
    return None


def schema_label_names(metadata: dict[bytes, bytes] | None, column: str) -> tuple[str, ...] | None:
    """ClassLabel names of `column` from a Parquet schema's `huggingface` metadata (written by `datasets`)."""
    if not metadata or b"huggingface" not in metadata:
        return None
    try:
        info = json.loads(metadata[b"huggingface"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    features = (info.get("info") or {}).get("features") or {}
    feature = features.get(column) if isinstance(features, dict) else None
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        return tuple(str(n) for n in feature["names"])
    return None


def names_file_labels(folder: Path, name: str | None) -> tuple[str, ...] | None:
    if name is None or not (folder / name).is_file():
        return None
    lines = (folder / name).read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def _natural_key(path: str) -> list[Any]:
    """Shards sort by their numbers: 2.tar before 10.tar (zero-padded parquet names sort the same either way)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def match_files(folder: Path, patterns: Iterable[str], file_format: str) -> list[Path]:
    """Files under the snapshot folder whose repo path matches a glob (fnmatch, as the hub filters them)."""
    patterns = list(patterns)
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            relative = Path(root, name).relative_to(folder).as_posix()
            if relative.endswith(_EXTENSIONS[file_format]) and any(fnmatchcase(relative, p) for p in patterns):
                found.append(relative)
    return [folder / relative for relative in sorted(found, key=_natural_key)]
