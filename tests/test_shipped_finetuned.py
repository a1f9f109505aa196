"""Shipped fine-tuned encoders: copied only when the job's settings and input files are the recipe's.

The recipe names θ_0, the text tower and the class names the head is built from, and the train split; a head
whose bytes differ only by the CPU's float rounding installs the same encoder.

The fixture is real: the shipped tiny θ_0, a small tiny task and its zero-shot head, through the `finetune` verb;
with a second task, the multi-task encoder through the `finetune-multitask` verb.
"""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mergeflow.commands.main import main
from mergeflow.data import TaskClasses, load_classes, save_classes, split_paths
from mergeflow.io import load_state_dict, save_state_dict
from mergeflow.models.clip import text_path
from mergeflow.models.heads import load_head, save_head
from mergeflow.shipped.finetuned import (
    encoder_path,
    finetune_inputs,
    finetune_recipe,
    multitask_dir,
    multitask_recipe,
    ship_finetuned,
)
from mergeflow.training.finetune import FinetuneSettings

# The shipped files were made on an AVX2 machine; these tests must hold with any CPU's kernels.
pytestmark = pytest.mark.cpu_kernels

REPO = Path(__file__).resolve().parents[1]
TASK = "shapes"
OTHER = "colours"  # the multi-task encoder's second task
SUITE = "suite"  # the benchmark a multi-task encoder is shipped for: multitask/suite.{safetensors,json}
SETTINGS = FinetuneSettings(steps=2, batch_size=4, lr=1e-4, weight_decay=0.1, warmup_steps=0, grad_clip=1.0, seed=0)


def finetune(root: Path, out: Path, *extra: str, shipped: Path | None = None) -> int:
    args = ["finetune", "--model-dir", str(root / "model"), "--head", str(root / "head.safetensors"),
            "--data-dir", str(root / "data" / TASK), "--steps", "2", "--batch-size", "4", "--lr", "1e-4",
            "--out", str(out), "--device", "cpu", "--no-progress", *extra]  # fmt: skip
    return main(args + (["--shipped", str(shipped)] if shipped else []))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shipping")
    shipped_theta_0 = str(REPO / "resources" / "tiny-clip")
    assert main(["install-pretrained", "--shipped", shipped_theta_0, "--out", str(root / "model")]) == 0
    assert main(["prepare-data", "--task", TASK, "--image-size", "32", "--out", str(root / "data" / TASK),
                 "--train-size", "60", "--test-size", "20", "--domain-style", "1.0", "--no-progress"]) == 0  # fmt: skip
    assert main(["build-head", "--model-dir", str(root / "model"), "--data-dir", str(root / "data" / TASK),
                 "--out", str(root / "head.safetensors"), "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    assert finetune(root, root / "trained.safetensors") == 0
    assert main(["prepare-data", "--task", OTHER, "--image-size", "32", "--out", str(root / "data" / OTHER),
                 "--train-size", "40", "--test-size", "20", "--domain-style", "1.0", "--no-progress"]) == 0  # fmt: skip
    assert main(["build-head", "--model-dir", str(root / "model"), "--data-dir", str(root / "data" / OTHER),
                 "--out", str(root / f"{OTHER}-head.safetensors"), "--device", "cpu",
                 "--no-progress"]) == 0  # fmt: skip
    assert finetune_multitask(root, root / "multitask" / f"{SUITE}.safetensors") == 0
    return root


def ship_as_recipe(root: Path, encoder: Path, folder: Path) -> Path:
    """Ship `encoder` under the recipe of the fixture's job (settings, θ_0, head, train split)."""
    inputs = finetune_inputs(root / "model", root / "data" / TASK)
    ship_finetuned(encoder, folder, TASK, finetune_recipe(SETTINGS.as_recipe(), inputs), {"command": "test"})
    return folder


def test_a_matching_recipe_installs_the_shipped_bytes_instead_of_training(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Shipped under the job's recipe: θ_0 itself, which two steps of fine-tuning would never give back.
    folder = ship_as_recipe(root, root / "model" / "pretrained.safetensors", tmp_path / "shipped")
    with caplog.at_level(logging.INFO, logger="mergeflow"):
        assert finetune(root, tmp_path / "out.safetensors", shipped=folder) == 0
    assert (tmp_path / "out.safetensors").read_bytes() == (root / "model" / "pretrained.safetensors").read_bytes()
    assert (tmp_path / "out.safetensors").read_bytes() != (root / "trained.safetensors").read_bytes()
    assert "installed the shipped fine-tuned encoder of 'shapes'" in caplog.text


def test_shipping_what_fine_tuning_gives_installs_identical_bytes(root: Path, tmp_path: Path) -> None:
    folder = ship_as_recipe(root, root / "trained.safetensors", tmp_path / "shipped")
    assert finetune(root, tmp_path / "out.safetensors", shipped=folder) == 0
    assert (tmp_path / "out.safetensors").read_bytes() == encoder_path(folder, TASK).read_bytes()


def with_an_input_changed(root: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the fixture with one input file of fine-tuning changed (its head file as it was)."""
    copy = tmp_path / "changed"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("trained.safetensors"))
    if name == "train_labels":
        _, labels_path = split_paths(copy / "data" / TASK, "train")
        labels = np.load(labels_path)
        labels[0] = (labels[0] + 1) % (labels.max() + 1)
        np.save(labels_path, labels)
    elif name == "classes":
        classes = load_classes(copy / "data" / TASK)
        save_classes(copy / "data" / TASK, TASK, TaskClasses(classes.classnames, ("a drawing of a {}.",)))
    else:
        text = load_state_dict(text_path(copy / "model"))
        save_state_dict(text_path(copy / "model"), {**text, "logit_scale": text["logit_scale"] + 0.5})
    return copy


@pytest.mark.parametrize(
    ("extra", "difference"),
    [
        (["--lr", "2e-4"], "settings.lr"),
        (["--micro-batch-size", "2"], "settings.micro_batch_size"),
        (["--seed", "1"], "settings.seed"),
        ([], "inputs.train_labels"),
        ([], "inputs.classes"),
        ([], "inputs.text_tower"),
    ],
)
def test_any_difference_fine_tunes_and_the_log_names_it(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, extra: list[str], difference: str
) -> None:
    folder = ship_as_recipe(root, root / "model" / "pretrained.safetensors", tmp_path / "shipped")
    job = with_an_input_changed(root, tmp_path, difference.split(".")[1]) if difference.startswith("inputs.") else root
    with caplog.at_level(logging.INFO, logger="mergeflow"):
        assert finetune(job, tmp_path / "out.safetensors", *extra, shipped=folder) == 0
    assert f"was made with other {difference}" in caplog.text
    assert finetune(job, tmp_path / "unshipped.safetensors", *extra) == 0
    assert (tmp_path / "out.safetensors").read_bytes() == (tmp_path / "unshipped.safetensors").read_bytes()
    assert (tmp_path / "out.safetensors").read_bytes() != encoder_path(folder, TASK).read_bytes()


def test_a_task_that_is_not_shipped_fine_tunes(root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.INFO, logger="mergeflow"):
        assert finetune(root, tmp_path / "out.safetensors", shipped=tmp_path / "empty") == 0
    assert "ships no encoder for 'shapes'" in caplog.text
    assert (tmp_path / "out.safetensors").read_bytes() == (root / "trained.safetensors").read_bytes()


def test_a_corrupt_shipped_encoder_is_refused_by_name_and_nothing_is_written(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = ship_as_recipe(root, root / "trained.safetensors", tmp_path / "shipped")
    data = bytearray(encoder_path(folder, TASK).read_bytes())
    data[-1] ^= 0xFF
    encoder_path(folder, TASK).write_bytes(bytes(data))
    assert finetune(root, tmp_path / "out.safetensors", shipped=folder) == 2
    assert "shapes.safetensors: sha256" in caplog.text and "does not match its recipe's" in caplog.text
    assert not (tmp_path / "out.safetensors").exists()


def test_a_head_rounded_otherwise_from_the_same_files_installs_the_shipped_encoder(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another CPU's kernels build the head with other low bits (AVX-512 against AVX2); the recipe still hits."""
    folder = ship_as_recipe(root, root / "trained.safetensors", tmp_path / "shipped")
    copy = tmp_path / "other-cpu"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("trained.safetensors"))
    head, logit_scale = load_head(str(root / "head.safetensors"))
    save_head(str(copy / "head.safetensors"), torch.nextafter(head, torch.ones_like(head)), logit_scale, TASK, "tiny")
    assert (copy / "head.safetensors").read_bytes() != (root / "head.safetensors").read_bytes()
    with caplog.at_level(logging.INFO, logger="mergeflow"):
        assert finetune(copy, tmp_path / "out.safetensors", shipped=folder) == 0
    assert "installed the shipped fine-tuned encoder of 'shapes'" in caplog.text
    assert (tmp_path / "out.safetensors").read_bytes() == (root / "trained.safetensors").read_bytes()


# --- the multi-task encoder: shipped as multitask/<benchmark>.{safetensors,json} in the same folder -------------------


def finetune_multitask(root: Path, out: Path, *extra: str, shipped: Path | None = None,
                       tasks: tuple[str, ...] = (TASK, OTHER)) -> int:  # fmt: skip
    heads = {TASK: root / "head.safetensors", OTHER: root / f"{OTHER}-head.safetensors"}
    args = ["finetune-multitask", "--model-dir", str(root / "model"), "--tasks", *tasks,
            "--heads", *(str(heads[task]) for task in tasks), "--data-dirs", *(str(root / "data" / t) for t in tasks),
            "--steps", "2", "--batch-size", "4", "--lr", "1e-4", "--out", str(out), "--device", "cpu", "--no-progress",
            *extra]  # fmt: skip
    return main(args + (["--shipped", str(shipped)] if shipped else []))


def ship_multitask_as_recipe(root: Path, encoder: Path, folder: Path) -> Path:
    """Ship `encoder` as the multi-task encoder of SUITE under the fixture job's recipe."""
    data_dirs = {task: root / "data" / task for task in (TASK, OTHER)}
    recipe = multitask_recipe(SETTINGS.as_recipe(), root / "model", data_dirs)
    ship_finetuned(encoder, multitask_dir(folder), SUITE, recipe, {"command": "test"})
    return folder


def test_the_multitask_recipe_names_the_tasks_in_order_and_hashes_each_tasks_files_once(root: Path) -> None:
    data_dirs = {task: root / "data" / task for task in (TASK, OTHER)}
    recipe = multitask_recipe(SETTINGS.as_recipe(), root / "model", data_dirs)
    single = finetune_recipe(SETTINGS.as_recipe(), finetune_inputs(root / "model", root / "data" / TASK))
    assert recipe["settings"] == single["settings"] and recipe["tasks"] == [TASK, OTHER]
    assert sorted(recipe["inputs"]) == ["pretrained", "tasks", "text_tower"]
    assert {key: recipe["inputs"][key] for key in ("pretrained", "text_tower")} == {
        key: single["inputs"][key] for key in ("pretrained", "text_tower")
    }
    assert recipe["inputs"]["tasks"][TASK] == {
        key: single["inputs"][key] for key in ("classes", "train_images", "train_labels")
    }
    assert recipe["inputs"]["tasks"][OTHER]["classes"] != recipe["inputs"]["tasks"][TASK]["classes"]


def test_a_matching_multitask_recipe_installs_the_shipped_bytes_instead_of_training(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    theta_0 = root / "model" / "pretrained.safetensors"
    folder = ship_multitask_as_recipe(root, theta_0, tmp_path / "shipped")
    assert (folder / "multitask" / f"{SUITE}.json").is_file()
    with caplog.at_level(logging.INFO, logger="mergeflow"):
        assert finetune_multitask(root, tmp_path / f"{SUITE}.safetensors", shipped=folder) == 0
    assert (tmp_path / f"{SUITE}.safetensors").read_bytes() == theta_0.read_bytes()
    assert "installed the shipped multi-task encoder 'suite'" in caplog.text
    # Another benchmark's name finds no shipped encoder and trains.
    with caplog.at_level(logging.INFO, logger="mergeflow"):
        assert finetune_multitask(root, tmp_path / "other.safetensors", shipped=folder) == 0
    assert "ships no encoder for 'other'" in caplog.text
    trained = root / "multitask" / f"{SUITE}.safetensors"
    assert (tmp_path / "other.safetensors").read_bytes() == trained.read_bytes() != theta_0.read_bytes()


def test_shipping_what_multitask_fine_tuning_gives_installs_identical_bytes(root: Path, tmp_path: Path) -> None:
    trained = root / "multitask" / f"{SUITE}.safetensors"
    folder = ship_multitask_as_recipe(root, trained, tmp_path / "shipped")
    assert finetune_multitask(root, tmp_path / f"{SUITE}.safetensors", shipped=folder) == 0
    assert (tmp_path / f"{SUITE}.safetensors").read_bytes() == trained.read_bytes()


@pytest.mark.parametrize(
    ("extra", "tasks", "difference"),
    [
        (["--lr", "2e-4"], (TASK, OTHER), "settings.lr"),
        ([], (OTHER, TASK), "tasks"),
        ([], (TASK, OTHER), f"inputs.tasks.{TASK}.train_labels"),
        ([], (TASK, OTHER), f"inputs.tasks.{TASK}.classes"),
        ([], (TASK, OTHER), "inputs.text_tower"),
    ],
)
def test_any_multitask_difference_fine_tunes_and_the_log_names_it(
    root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    extra: list[str],
    tasks: tuple[str, ...],
    difference: str,
) -> None:
    folder = ship_multitask_as_recipe(root, root / "model" / "pretrained.safetensors", tmp_path / "shipped")
    changed = difference.startswith("inputs.")
    job = with_an_input_changed(root, tmp_path, difference.rsplit(".", 1)[1]) if changed else root
    with caplog.at_level(logging.INFO, logger="mergeflow"):
        assert finetune_multitask(job, tmp_path / f"{SUITE}.safetensors", *extra, shipped=folder, tasks=tasks) == 0
    assert f"the shipped multi-task encoder 'suite' in {multitask_dir(folder)} was made with other {difference}" in (
        caplog.text
    )
    assert finetune_multitask(job, tmp_path / "unshipped.safetensors", *extra, tasks=tasks) == 0
    out = (tmp_path / f"{SUITE}.safetensors").read_bytes()
    assert out == (tmp_path / "unshipped.safetensors").read_bytes()
    assert out != encoder_path(multitask_dir(folder), SUITE).read_bytes()


def test_a_corrupt_shipped_multitask_encoder_is_refused_by_name_and_nothing_is_written(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = ship_multitask_as_recipe(root, root / "multitask" / f"{SUITE}.safetensors", tmp_path / "shipped")
    shipped = encoder_path(multitask_dir(folder), SUITE)
    shipped.write_bytes(shipped.read_bytes()[:-1] + b"!")
    assert finetune_multitask(root, tmp_path / f"{SUITE}.safetensors", shipped=folder) == 2
    assert "multitask/suite.safetensors: sha256" in caplog.text and "does not match its recipe's" in caplog.text
    assert not (tmp_path / f"{SUITE}.safetensors").exists()


def test_the_multitask_verb_refuses_lists_of_other_lengths_and_repeated_tasks(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["finetune-multitask", "--model-dir", str(root / "model"), "--tasks", TASK, OTHER,
            "--heads", str(root / "head.safetensors"), "--data-dirs", str(root / "data" / TASK),
            str(root / "data" / OTHER), "--steps", "2", "--batch-size", "4", "--lr", "1e-4",
            "--out", str(tmp_path / "out.safetensors"), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    assert "these lists must have one entry per task: {'tasks': 2, 'heads': 1, 'data_dirs': 2}" in caplog.text
    assert finetune_multitask(root, tmp_path / "out.safetensors", tasks=(TASK, TASK)) == 2
    assert "--tasks: ['shapes'] given more than once" in caplog.text
    assert not (tmp_path / "out.safetensors").exists()
