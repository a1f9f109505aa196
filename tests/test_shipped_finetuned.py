"""Shipped fine-tuned encoders: copied only when the job's settings and input files are the recipe's.

The recipe names θ_0, the text tower and the class names the head is built from, and the train split; a head
whose bytes differ only by the CPU's float rounding installs the same encoder.

The fixture is real: the shipped tiny θ_0, a small tiny task and its zero-shot head, through the `finetune` verb.
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
from mergeflow.shipped.finetuned import encoder_path, finetune_inputs, finetune_recipe, ship_finetuned
from mergeflow.training.finetune import FinetuneSettings

# The shipped files were made on an AVX2 machine; these tests must hold with any CPU's kernels.
pytestmark = pytest.mark.cpu_kernels

REPO = Path(__file__).resolve().parents[1]
TASK = "shapes"
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
