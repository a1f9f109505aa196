"""Fine-tuned tiny encoders shipped with the repository, installed only when a job's inputs and settings are theirs.

Fine-tuning the tiny8 tasks was half of the default run's compute and, like pre-training θ_0
(mergeflow.shipped.theta0), it gives the same bytes every time on one machine type. A shipped folder holds
`<task>.safetensors` and `<task>.json` per task; the JSON records the fine-tuning settings, the sha256 of
every file the result is a function of, the encoder's own sha256 and how it was made. The finetune verb
copies the encoder when the settings and every input digest equal the job's, and fine-tunes otherwise, so a
changed data generator, θ_0, text tower, class name, template or setting can never pick up a stale encoder.

The recipe names files that are the same on every machine, never the result of a float computation. The
frozen head is such a result: build-head computes it from the text tower and the class names and templates,
and its bytes depend on the CPU's kernels (oneDNN rounds the text tower's products differently with AVX2 and
with AVX-512). A recipe keyed on the head's bytes would miss on every CPU but the one that made it; keyed on
the files the head is computed from, it hits wherever those files are the same. The train images are
generated with NumPy and are the same with and without its AVX-512 kernels (README, "What is bitwise").

The multi-task encoder (`mergeflow.training.multitask`) ships the same way, as `multitask/<benchmark>.safetensors`
and `.json` in the same folder: its recipe holds the settings, the task list in training order (it orders the
union the batches are drawn from), and the sha256 of θ_0, the text tower and every task's three files.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mergeflow.data import classes_path, split_paths
from mergeflow.io import InputError, atomic_path, read_json, sha256_file, write_json
from mergeflow.models.clip import pretrained_path, text_path
from mergeflow.shipped.theta0 import check_sha256, recipe_differences

# What a fine-tuned encoder is a function of, besides the settings: θ_0, the two files its frozen head is
# computed from (the text tower with the logit scale; the class names and templates) and the train split.
MODEL_INPUTS = ("pretrained", "text_tower")
TASK_INPUTS = ("classes", "train_images", "train_labels")
FINETUNE_INPUTS = (*MODEL_INPUTS, *TASK_INPUTS)
# The multi-task encoders' subfolder of a shipped folder, one `<benchmark>.{safetensors,json}` per suite.
MULTITASK_FOLDER = "multitask"

log = logging.getLogger("mergeflow")


def encoder_path(directory: str | os.PathLike[str], task: str) -> Path:
    return Path(directory) / f"{task}.safetensors"


def recipe_path(directory: str | os.PathLike[str], task: str) -> Path:
    return Path(directory) / f"{task}.json"


def model_inputs(model_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """θ_0 and the text tower of `model_dir` (keys MODEL_INPUTS)."""
    return {"pretrained": pretrained_path(model_dir), "text_tower": text_path(model_dir)}


def task_inputs(data_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The class names and train split of `data_dir` (keys TASK_INPUTS)."""
    train_images, train_labels = split_paths(data_dir, "train")
    return {"classes": classes_path(data_dir), "train_images": train_images, "train_labels": train_labels}


def finetune_inputs(model_dir: str | os.PathLike[str], data_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The files (keys FINETUNE_INPUTS) that determine a fine-tuning job's result: θ_0 and the text tower of
    `model_dir`, and the class names and train split of `data_dir` (the job's head is built from these)."""
    return {**model_inputs(model_dir), **task_inputs(data_dir)}


def input_digests(inputs: Mapping[str, str | os.PathLike[str]], names: Sequence[str]) -> dict[str, str]:
    """The sha256 of each input file, keyed as `names` (exactly the keys of `inputs`)."""
    if sorted(inputs) != sorted(names):
        raise ValueError(f"fine-tuning inputs must be {list(names)}, got {sorted(inputs)}")
    for name in names:
        if not Path(inputs[name]).is_file():
            raise InputError(f"{inputs[name]}: file not found (the {name.replace('_', ' ')} of fine-tuning)")
    return {name: sha256_file(inputs[name]) for name in names}


def finetune_recipe(settings: Mapping[str, Any], inputs: Mapping[str, str | os.PathLike[str]]) -> dict[str, Any]:
    """The settings and the sha256 of each input file (keys FINETUNE_INPUTS) that determine one fine-tuned encoder."""
    return {"settings": dict(settings), "inputs": input_digests(inputs, FINETUNE_INPUTS)}


def multitask_recipe(
    settings: Mapping[str, Any], model_dir: str | os.PathLike[str], data_dirs: Mapping[str, str | os.PathLike[str]]
) -> dict[str, Any]:
    """What determines a multi-task encoder: the settings, the tasks in training order, and by sha256 θ_0 and the
    text tower (`inputs.pretrained`, `inputs.text_tower`) and each task's files (`inputs.tasks.<task>.classes`, …).
    """
    tasks = {task: input_digests(task_inputs(data_dir), TASK_INPUTS) for task, data_dir in data_dirs.items()}
    inputs = {**input_digests(model_inputs(model_dir), MODEL_INPUTS), "tasks": tasks}
    return {"settings": dict(settings), "tasks": list(data_dirs), "inputs": inputs}


def multitask_dir(directory: str | os.PathLike[str]) -> Path:
    """Where a shipped folder keeps its multi-task encoders (`<benchmark>.safetensors` and `.json`)."""
    return Path(directory) / MULTITASK_FOLDER


def read_finetune_recipe(directory: str | os.PathLike[str], task: str) -> dict[str, Any] | None:
    """The shipped recipe of `task`, or None when the folder ships no encoder for it."""
    path = recipe_path(directory, task)
    if not path.is_file():
        return None
    recipe = read_json(path)
    missing = {"settings", "inputs", "sha256"} - set(recipe if isinstance(recipe, dict) else {})
    if missing:
        raise InputError(f"{path}: missing keys {sorted(missing)} (expected a shipped fine-tuned encoder's recipe)")
    return recipe


def unmatched_inputs(directory: str | os.PathLike[str], task: str, wanted: Mapping[str, Any]) -> list[str] | None:
    """Dotted keys (`settings.lr`, `inputs.classes`, `tasks`) where the shipped recipe differs from `wanted`.

    Empty when the shipped encoder is exactly what fine-tuning with `wanted` gives; None when none is shipped.
    """
    shipped = read_finetune_recipe(directory, task)
    if shipped is None:
        return None
    return recipe_differences({key: shipped.get(key) for key in wanted}, wanted)


def install_finetuned(directory: str | os.PathLike[str], task: str, out: str | os.PathLike[str]) -> None:
    """Copy the shipped encoder of `task` to `out` after checking it against its recipe's sha256."""
    recipe = read_finetune_recipe(directory, task)
    source = encoder_path(directory, task)
    if recipe is None or not source.is_file():
        raise InputError(f"{source}: no shipped fine-tuned encoder (with its {recipe_path(directory, task).name})")
    check_sha256(source, recipe["sha256"], "config/tiny/ship_finetuned.py")
    with atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)


def install_if_same_recipe(
    directory: str | os.PathLike[str],
    settings: Mapping[str, Any],
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
) -> bool:
    """Install the shipped encoder of the task in `data_dir` when it is exactly this job's result; log why not."""
    task = Path(data_dir).name
    wanted = finetune_recipe(settings, finetune_inputs(model_dir, data_dir))
    compared = "same settings, and by sha256 the same θ_0, text tower, class names and train split"
    return _install_if_same(directory, task, wanted, out, f"fine-tuned encoder of {task!r}", compared)


def install_multitask_if_same_recipe(
    directory: str | os.PathLike[str],
    settings: Mapping[str, Any],
    model_dir: str | os.PathLike[str],
    data_dirs: Mapping[str, str | os.PathLike[str]],
    out: str | os.PathLike[str],
) -> bool:
    """Install the shipped multi-task encoder named as `out` (`<benchmark>.safetensors`) when it is exactly this
    job's result (`multitask_recipe` of the tasks `data_dirs`, in their order); log why not."""
    name = Path(out).stem
    wanted = multitask_recipe(settings, model_dir, data_dirs)
    compared = ("same settings and tasks, and by sha256 the same θ_0, text tower, and every task's class names and "
                "train split")  # fmt: skip
    return _install_if_same(multitask_dir(directory), name, wanted, out, f"multi-task encoder {name!r}", compared)


def _install_if_same(
    directory: str | os.PathLike[str], name: str, wanted: Mapping[str, Any], out: str | os.PathLike[str], what: str,
    compared: str,
) -> bool:  # fmt: skip
    """Install `directory`'s encoder `name` when its recipe equals `wanted`; log which keys differ otherwise."""
    differences = unmatched_inputs(directory, name, wanted)
    if differences is None:
        log.info("fine-tuning: %s ships no encoder for %r", directory, name)
        return False
    if differences:
        log.info("fine-tuning: the shipped %s in %s was made with other %s", what, directory, ", ".join(differences))
        return False
    install_finetuned(directory, name, out)
    log.info("installed the shipped %s from %s (%s; the encoder's own sha256 checked)", what, directory, compared)
    return True


def ship_finetuned(
    encoder: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    task: str,
    recipe: Mapping[str, Any],
    made_with: Mapping[str, Any],
) -> dict[str, Any]:
    """Write a fine-tuned encoder and its recipe (`finetune_recipe` or `multitask_recipe`, plus provenance) into
    `directory` as `<task>.safetensors` and `<task>.json` (a multi-task encoder: `multitask_dir`, `<benchmark>`)."""
    target = encoder_path(directory, task)
    with atomic_path(target) as tmp:
        shutil.copyfile(encoder, tmp)
    shipped = {**recipe, "sha256": sha256_file(target), "made_with": dict(made_with)}
    write_json(recipe_path(directory, task), shipped)
    return shipped
