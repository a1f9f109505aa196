"""Bootstrap intervals over test images (mergeflow.report.bootstrap) and the per-image correctness files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mergeflow.evaluation.correctness import load_correctness, read_correctness_files, save_correctness
from mergeflow.io import InputError
from mergeflow.report.bootstrap import (
    DEFAULT_SEED,
    bootstrap_intervals,
    percentile_interval,
    resampled_accuracies,
)


def _vector(correct: int, images: int, seed: int = 0) -> np.ndarray:
    """`correct` of `images` right, in a shuffled order."""
    return np.random.default_rng(seed).permutation(np.arange(images) < correct)


def test_percentile_interval_is_the_central_95_percent_by_linear_interpolation() -> None:
    low, high = percentile_interval(np.arange(101.0))
    assert (low, high) == (2.5, 97.5)
    low, high = percentile_interval(np.array([[0.0, 10.0], [1.0, 30.0], [2.0, 20.0]]), confidence=0.5)
    np.testing.assert_array_equal(low, [0.5, 15.0])
    np.testing.assert_array_equal(high, [1.5, 25.0])


def test_two_images_one_right_give_the_whole_range() -> None:
    # Each resample of [right, wrong] scores 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4.
    samples = resampled_accuracies([np.array([[True], [False]])], resamples=1000)
    values, counts = np.unique(samples, return_counts=True)
    assert list(values) == [0.0, 0.5, 1.0]
    assert counts / 1000 == pytest.approx([0.25, 0.5, 0.25], abs=0.05)
    intervals = bootstrap_intervals(samples)
    assert (intervals.task_low[0, 0], intervals.task_high[0, 0]) == (0.0, 1.0)


def test_resamples_are_the_documented_draws() -> None:
    """Resample b of task t: rng_t.integers(0, n_t, size=n_t), rng_t from SeedSequence(seed).spawn(T)[t]."""
    correct = [np.stack([_vector(30, 50, 1), _vector(20, 50, 2)], axis=1), _vector(9, 13, 3)[:, None].repeat(2, 1)]
    samples = resampled_accuracies(correct, resamples=150, seed=7)
    assert samples.shape == (150, 2, 2)
    generators = [np.random.default_rng(child) for child in np.random.SeedSequence(7).spawn(2)]
    for task, (matrix, rng) in enumerate(zip(correct, generators, strict=True)):
        for resample in range(150):
            drawn = matrix[rng.integers(0, len(matrix), size=len(matrix))]
            np.testing.assert_array_equal(samples[resample, :, task], drawn.sum(axis=0) / len(matrix))


def test_interval_width_approaches_the_normal_approximation() -> None:
    images, accuracy = 20000, 0.7
    samples = resampled_accuracies([_vector(int(accuracy * images), images)[:, None]])
    intervals = bootstrap_intervals(samples)
    width = intervals.task_high[0, 0] - intervals.task_low[0, 0]
    assert width == pytest.approx(2 * 1.959964 * math.sqrt(accuracy * (1 - accuracy) / images), rel=0.1)
    assert intervals.task_low[0, 0] < accuracy < intervals.task_high[0, 0]


def test_rows_share_each_draw_so_differences_are_paired() -> None:
    right = _vector(70, 100)
    other = _vector(60, 100, seed=5)
    matrix = np.stack([right, ~right, right, other], axis=1)
    samples = resampled_accuracies([matrix, matrix[:40]], resamples=300)
    # The complement scores one minus the row on every draw; a copy scores the same.
    np.testing.assert_array_equal(samples[:, 0] + samples[:, 1], np.ones((300, 2)))
    np.testing.assert_array_equal(samples[:, 0], samples[:, 2])
    intervals = bootstrap_intervals(samples, baseline=0)
    assert intervals.difference_low is not None and intervals.difference_high is not None
    assert (intervals.difference_low[0], intervals.difference_high[0]) == (0.0, 0.0)
    assert (intervals.difference_low[2], intervals.difference_high[2]) == (0.0, 0.0)
    observed = np.mean([matrix[:, 3].mean() - matrix[:, 0].mean(), matrix[:40, 3].mean() - matrix[:40, 0].mean()])
    assert intervals.difference_low[3] < observed < intervals.difference_high[3]


def test_averages_take_each_tasks_resample_and_tasks_draw_independently() -> None:
    matrix = _vector(50, 80)[:, None]
    samples = resampled_accuracies([matrix, matrix], resamples=200)
    assert not np.array_equal(samples[:, 0, 0], samples[:, 0, 1])
    low, high = percentile_interval(samples.mean(axis=2))
    intervals = bootstrap_intervals(samples)
    assert (intervals.average_low[0], intervals.average_high[0]) == (low[0], high[0])
    assert intervals.difference_low is None


def test_a_fixed_seed_gives_the_same_intervals_and_another_seed_others() -> None:
    matrix = np.stack([_vector(40, 90), _vector(55, 90, seed=3)], axis=1)
    first = resampled_accuracies([matrix], resamples=100)
    np.testing.assert_array_equal(first, resampled_accuracies([matrix], resamples=100, seed=DEFAULT_SEED))
    assert not np.array_equal(first, resampled_accuracies([matrix], resamples=100, seed=DEFAULT_SEED + 1))


def test_resampling_refuses_empty_tasks_and_ragged_rows() -> None:
    with pytest.raises(ValueError, match="task 0 has no test images"):
        resampled_accuracies([np.zeros((0, 2), dtype=bool)])
    with pytest.raises(ValueError, match="same rows for every task"):
        resampled_accuracies([np.zeros((3, 2), dtype=bool), np.zeros((3, 1), dtype=bool)])
    with pytest.raises(ValueError, match="resamples must be at least 1"):
        resampled_accuracies([np.zeros((3, 2), dtype=bool)], resamples=0)


def test_correctness_files_round_trip_byte_for_byte(tmp_path: Path) -> None:
    rows = {"cart@released": {"Cars": _vector(3, 7), "SUN397": _vector(1, 4)}}
    save_correctness(tmp_path / "a.safetensors", rows)
    save_correctness(tmp_path / "b.safetensors", rows)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    loaded = load_correctness(tmp_path / "a.safetensors")
    assert list(loaded) == ["cart@released"] and sorted(loaded["cart@released"]) == ["Cars", "SUN397"]
    for task, vector in rows["cart@released"].items():
        np.testing.assert_array_equal(loaded["cart@released"][task], vector)
        assert loaded["cart@released"][task].dtype == np.bool_
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_correctness_files_refuse_what_they_cannot_hold_and_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cart/Cars: expected a 1-D bool vector"):
        save_correctness(tmp_path / "x.safetensors", {"cart": {"Cars": np.array([1, 0])}})
    with pytest.raises(ValueError, match="without '/'"):
        save_correctness(tmp_path / "x.safetensors", {"a/b": {"Cars": np.array([True])}})
    assert not (tmp_path / "x.safetensors").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match=r"junk\.safetensors: not a safetensors file"):
        load_correctness(tmp_path / "junk.safetensors")
    with pytest.raises(InputError, match=r"absent\.safetensors: file not found"):
        load_correctness(tmp_path / "absent.safetensors")
    save_correctness(tmp_path / "one.safetensors", {"cart": {"Cars": np.array([True])}})
    save_correctness(tmp_path / "two.safetensors", {"cart": {"Cars": np.array([False])}})
    with pytest.raises(InputError, match=r"two\.safetensors: row 'cart' was already read from .*one\.safetensors"):
        read_correctness_files([tmp_path / "one.safetensors", tmp_path / "two.safetensors"])
