"""Which training images the data stage and RegMean++ see: a seeded sample, or the first ones in stored order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mergeflow.data import TaskClasses, save_classes, save_split
from mergeflow.io import InputError
from mergeflow.models.clip import normalise_images, tiny_clip_spec
from mergeflow.statistics.images import image_batches, training_sample


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    # image i is filled with the value i, so a sample says which images it holds
    images = np.repeat(np.arange(30, dtype=np.uint8), 4 * 4 * 3).reshape(30, 4, 4, 3)
    save_split(tmp_path, "train", images, np.arange(30) % 3)
    save_classes(tmp_path, "toy", TaskClasses(("a", "b", "c"), ("{}",)))
    return tmp_path


def test_a_seeded_sample_is_a_permutation_prefix_and_fisher_takes_the_first_images(task_dir: Path) -> None:
    sample = training_sample(task_dir, 8, seed=3)
    drawn = torch.randperm(30, generator=torch.Generator().manual_seed(3))[:8].sort().values.numpy()
    assert list(sample[:, 0, 0, 0]) == list(drawn)
    assert np.array_equal(training_sample(task_dir, 8, seed=3), sample)
    assert not np.array_equal(training_sample(task_dir, 8, seed=4), sample)
    assert list(training_sample(task_dir, 5, seed=None)[:, 0, 0, 0]) == [0, 1, 2, 3, 4]
    assert len(training_sample(task_dir, 100, seed=0)) == 30
    with pytest.raises(InputError, match="task_statistics.images: 0"):
        training_sample(task_dir, 0, seed=0)


def test_batches_are_the_normalised_images_in_order(task_dir: Path) -> None:
    spec = tiny_clip_spec("toy", {"image_size": 4, "patch_size": 2, "width": 8, "layers": 1, "heads": 2,
                                  "embed_dim": 8, "context_length": 8, "text_width": 8, "text_layers": 1,
                                  "text_heads": 2})  # fmt: skip
    images = training_sample(task_dir, 7, seed=None)
    batches = list(image_batches(images, spec, 3, torch.device("cpu")))
    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert torch.equal(torch.cat(batches), normalise_images(torch.from_numpy(images), spec))
