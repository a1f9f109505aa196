"""The tiny tasks' looks and the task-split shift: present where the benchmark needs them, deterministic,
and distinct per task (fixed-seed image statistics that fail if either is lost)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mergeflow.commands.main import main
from mergeflow.data import load_split
from mergeflow.io import InputError
from mergeflow.tiny import TINY_TASKS, apply_domain, generate_split, task_look
from mergeflow.tiny.domains import TINT_AMPLITUDE, split_shift
from mergeflow.tiny.splits import pretraining_pool, task_splits

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _mean_residual(styled: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Per-pixel mean of what the domain added, [H, W, 3], in [0, 1] intensity units."""
    return (styled.astype(np.float64) - plain.astype(np.float64)).mean(axis=0) / 255.0


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_no_style_and_no_shift_give_the_content_back() -> None:
    images, _ = generate_split("shapes", 20, SIZE, 0)
    assert np.array_equal(apply_domain(images, "shapes", style=0.0, shift=0.0), images)


def test_looks_are_deterministic_and_fixed_by_the_task_name() -> None:
    images, _ = generate_split("digits", 30, SIZE, 3)
    first = apply_domain(images, "digits", style=1.0, shift=0.2)
    assert np.array_equal(first, apply_domain(images, "digits", style=1.0, shift=0.2))
    assert not np.array_equal(first, apply_domain(images, "colours", style=1.0, shift=0.2))
    look = task_look("digits")
    for style in (0.3, 1.0):
        rotation = look.colour_rotation(style)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(look.colour_rotation(0.0), np.eye(3))
    assert np.pi / 2 <= look.rotation_angle <= np.pi


def test_every_task_has_its_own_texture() -> None:
    textures = {task: task_look(task).texture.render(SIZE) for task in TINY_TASKS}
    for task, texture in textures.items():
        assert np.abs(texture).max() == pytest.approx(1.0)
        for other, other_texture in textures.items():
            if other < task:
                assert abs(_correlation(texture, other_texture)) < 0.9, (task, other)


def _channel_centred(field: np.ndarray) -> np.ndarray:
    return field - field.mean(axis=(0, 1), keepdims=True)


@pytest.mark.parametrize("task", ["shapes", "textures", "counting", "sizes"])
def test_the_look_is_the_tasks_own_texture_and_tint(task: str) -> None:
    # On mid-grey, the centre of the colour rotation, what the look adds is its tint plus its texture.
    grey = np.full((2, SIZE, SIZE, 3), 128, dtype=np.uint8)
    look = task_look(task)
    residual = _mean_residual(apply_domain(grey, task, style=1.0, shift=0.0), grey)
    np.testing.assert_allclose(residual.mean(axis=(0, 1)), TINT_AMPLITUDE * look.tint, atol=0.01)
    texture = look.texture.render(SIZE)
    own = _correlation(_channel_centred(residual), _channel_centred(texture))
    others = [
        _correlation(_channel_centred(residual), _channel_centred(task_look(t).texture.render(SIZE)))
        for t in TINY_TASKS
        if t != task
    ]
    assert own > 0.95
    assert max(others) < 0.9


def _contrast(images: np.ndarray) -> np.ndarray:
    """Per image, the summed standard deviation of its three channels."""
    return images.astype(np.float64).reshape(len(images), -1, 3).std(axis=1).sum(axis=1)


def test_the_colour_rotation_changes_colours_but_keeps_their_differences() -> None:
    images, _ = generate_split("colours", 200, SIZE, 0)
    styled = apply_domain(images, "colours", style=1.0, shift=0.0)
    # Mean colour per image moves (another domain) ...
    moved = np.abs(styled.mean(axis=(1, 2)) - images.mean(axis=(1, 2))).mean() / 255.0
    assert moved > 0.05
    # ... while contrast within an image survives (a rotation keeps distances; clipping loses a little).
    assert np.median(_contrast(styled) / _contrast(images)) > 0.8


def test_the_shift_is_shared_and_separate_from_the_looks() -> None:
    shift = split_shift().render(SIZE)
    for task in ("colours", "position"):
        images, _ = generate_split(task, 400, SIZE, 1)
        with_shift = apply_domain(images, task, style=1.0, shift=0.2)
        without = apply_domain(images, task, style=1.0, shift=0.0)
        assert _correlation(_mean_residual(with_shift, without), shift) > 0.9
    assert max(abs(_correlation(shift, task_look(t).texture.render(SIZE))) for t in TINY_TASKS) < 0.9


@pytest.mark.parametrize(("style", "shift"), [(-0.1, 0.0), (0.0, 1.5)])
def test_strengths_outside_zero_one_are_refused(style: float, shift: float) -> None:
    images, _ = generate_split("shapes", 4, SIZE, 0)
    with pytest.raises(InputError, match="must lie in"):
        apply_domain(images, "shapes", style=style, shift=shift)


def test_default_config_prepares_task_splits_with_look_and_shift(tmp_path: Path) -> None:
    """Through the CLI with the default config's strengths: the stored splits differ from the plain content by
    the task's look plus the shared shift (fails if the rule or the default config loses either)."""
    data = DEFAULT["data"]
    assert data["domain_style"] > 0 and data["split_shift"] > 0
    out = tmp_path / "sizes"
    args = ["prepare-data", "--source", "tiny", "--task", "sizes", "--image-size", str(SIZE), "--out", str(out)]
    args += ["--train-size", "400", "--test-size", "100", "--seed", "0"]
    args += ["--domain-style", str(data["domain_style"]), "--split-shift", str(data["split_shift"])]
    assert main(args) == 0
    stored, _ = load_split(out, "test")
    plain, _ = generate_split("sizes", 100, SIZE, 1)
    look_only = apply_domain(plain, "sizes", style=data["domain_style"], shift=0.0)
    assert np.array_equal(stored, apply_domain(plain, "sizes", style=data["domain_style"], shift=data["split_shift"]))
    assert _correlation(_mean_residual(np.asarray(stored), look_only), split_shift().render(SIZE)) > 0.9


def test_task_splits_carry_look_and_shift_and_the_pretraining_pool_only_the_look() -> None:
    (train, test) = task_splits("digits", 300, 300, SIZE, 5, style=1.0, shift=0.2)
    pool, task_labels = pretraining_pool(["shapes", "digits"], 300, SIZE, 5, style=1.0)
    assert [task for task, _ in task_labels] == ["shapes"] * 300 + ["digits"] * 300
    content, labels = generate_split("digits", 300, SIZE, 6)
    assert np.array_equal(pool[300:], apply_domain(content, "digits", style=1.0, shift=0.0))
    assert [label for _, label in task_labels[300:]] == labels.tolist()
    # Same content drawn with seed 6 (the test split's seed): the test split differs from it by the shift.
    assert np.array_equal(test[1], labels)
    residual = _mean_residual(test[0], pool[300:])
    assert _correlation(residual, split_shift().render(SIZE)) > 0.9
    assert train[0].shape == (300, SIZE, SIZE, 3)


def test_pretraining_pool_refuses_unknown_tasks() -> None:
    with pytest.raises(InputError, match="pretrain.tasks: unknown tiny tasks"):
        pretraining_pool(["shapes", "nosuchtask"], 4, SIZE, 0, style=1.0)
