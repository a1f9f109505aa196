from pathlib import Path

import numpy as np
import pytest

from mergeflow.data import TaskClasses, load_classes, load_split, train_val_indices, write_task
from mergeflow.io import InputError


def test_val_split_is_ten_percent_disjoint_and_seeded() -> None:
    train, val = train_val_indices(1000)
    assert len(val) == 100 and len(train) == 900
    assert set(train).isdisjoint(val)
    assert sorted(set(train) | set(val)) == list(range(1000))
    again_train, again_val = train_val_indices(1000)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, train_val_indices(1000, seed=1)[1])


def test_val_split_is_capped_at_max_val() -> None:
    _, val = train_val_indices(100_000)
    assert len(val) == 5000


def _task(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    images = (np.arange(n * 4 * 4 * 3) % 251).astype(np.uint8).reshape(n, 4, 4, 3)
    return images, (np.arange(n) + offset) % 3


def test_write_task_round_trips_every_split(tmp_path: Path) -> None:
    classes = TaskClasses(("a", "b", "c"), ("a photo of {}.",))
    train, test = _task(50), _task(20, 1)
    counts = write_task(tmp_path, "toy", classes, train, test)
    assert counts == {"train": 45, "val": 5, "test": 20}
    train_idx, val_idx = train_val_indices(50)
    images, labels = load_split(tmp_path, "val")
    assert np.array_equal(images, train[0][val_idx]) and np.array_equal(labels, train[1][val_idx])
    images, labels = load_split(tmp_path, "train")
    assert np.array_equal(labels, train[1][train_idx])
    images, labels = load_split(tmp_path, "test")
    assert np.array_equal(images, test[0]) and labels.dtype == np.int64
    assert load_classes(tmp_path) == classes
    assert list(tmp_path.glob("*.tmp")) == []


def test_missing_split_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="classnames.json: file not found"):
        load_split(tmp_path, "val")
    (tmp_path / "classnames.json").write_text('{"classnames": ["a"], "templates": ["a {}"]}')
    with pytest.raises(InputError, match="val_images.npy: file not found"):
        load_split(tmp_path, "val")
    with pytest.raises(InputError, match="unknown split"):
        load_split(tmp_path, "dev")


def test_templates_without_placeholder_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "classnames.json").write_text('{"classnames": ["a"], "templates": ["no placeholder"]}')
    with pytest.raises(InputError, match="classnames.json"):
        load_classes(tmp_path)
