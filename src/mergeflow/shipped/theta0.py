"""A pre-trained tiny θ_0 shipped with the repository, used when its recipe is the configured one.

Pre-training the tiny CLIP is the only serial stage of the default run (every later job depends on θ_0), as
downloading OpenAI's weights is for the real benchmarks. A shipped directory holds the model directory's
three files and `recipe.json`: the settings that produced them (`model.name`, `model.architecture`,
`pretrain.*`, `data.domain_style`), the sha256 of each file and how they were made. The workflow installs it
instead of pre-training only when the recipe equals the config; any other setting pre-trains as before.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mergeflow.io import InputError, atomic_path, read_json, sha256_file, write_json

RECIPE_FILE = "recipe.json"
# pretrained.safetensors last: it is the model directory's completion marker.
MODEL_FILES = ("model.json", "text.safetensors", "pretrained.safetensors")


def recipe_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a workflow config that determine the pre-trained θ_0."""
    return {
        "model": {"name": config["model"]["name"], "architecture": dict(config["model"]["architecture"])},
        "pretrain": dict(config["pretrain"]),
        "data": {"domain_style": float(config["data"].get("domain_style", 0.0))},
    }


def recipe_differences(shipped: Mapping[str, Any], wanted: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted key paths whose values differ between two recipes (numbers compare by value: 2 == 2.0)."""
    differences = []
    for key in sorted(set(shipped) | set(wanted)):
        path = f"{prefix}{key}"
        a, b = shipped.get(key), wanted.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differences += recipe_differences(a, b, f"{path}.")
        elif a != b:
            differences.append(path)
    return differences


def read_recipe(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / RECIPE_FILE
    recipe = read_json(path)
    missing = {"settings", "sha256"} - set(recipe)
    if missing:
        raise InputError(f"{path}: missing keys {sorted(missing)} (expected a shipped θ_0 recipe)")
    return recipe


def unmatched_settings(directory: str | os.PathLike[str], config: Mapping[str, Any]) -> list[str]:
    """The config's θ_0 settings that differ from the shipped recipe's; empty when it can be installed."""
    return recipe_differences(read_recipe(directory)["settings"], recipe_of(config))


def check_sha256(path: str | os.PathLike[str], expected: str, regenerate_with: str) -> None:
    """InputError naming `path` when its sha256 is not the recipe's (a corrupt or replaced shipped file)."""
    actual = sha256_file(path)
    if actual != expected:
        raise InputError(
            f"{path}: sha256 {actual} does not match its recipe's {expected} (corrupt or replaced file; "
            f"regenerate it with {regenerate_with})"
        )


def install_shipped(directory: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Copy a shipped model directory to `out` after checking every file against the recipe's sha256."""
    source = Path(directory)
    expected = read_recipe(source)["sha256"]
    for name in MODEL_FILES:
        path = source / name
        if not path.is_file():
            raise InputError(f"{path}: file not found (the shipped θ_0 is incomplete)")
        if name not in expected:
            raise InputError(f"{source / RECIPE_FILE}: no sha256 for {name!r}")
        check_sha256(path, expected[name], "config/tiny/ship_pretrained.py")
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        with atomic_path(target / name) as tmp:
            shutil.copyfile(source / name, tmp)


def ship(model_dir: str | os.PathLike[str], directory: str | os.PathLike[str], settings: Mapping[str, Any],
         made_with: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Write a pre-trained model directory and its recipe into `directory`; returns the recipe."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        with atomic_path(target / name) as tmp:
            shutil.copyfile(Path(model_dir) / name, tmp)
    recipe = {
        "settings": dict(settings),
        "sha256": {name: sha256_file(target / name) for name in MODEL_FILES},
        "made_with": dict(made_with),
    }
    write_json(target / RECIPE_FILE, recipe)
    return recipe
