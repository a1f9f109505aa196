"""Tests for the procedural tiny8 tasks: API contract, determinism, and that each image
really depicts its label (checked with simple hand-made feature extractors) while raw
pixels alone do not give the label away."""

from __future__ import annotations

import numpy as np
import pytest

from mergeflow.io import InputError
from mergeflow.tiny import TINY_TASKS, TinyTask, caption, generate_images, generate_split

TASK_NAMES = list(TINY_TASKS)
SIZE = 32
PER_CLASS = 40


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]:
    """(train, test) per task, drawn with different seeds."""
    return {
        name: tuple(generate_split(name, PER_CLASS * len(task.classnames), SIZE, seed) for seed in (0, 1))
        for name, task in TINY_TASKS.items()
    }


# ---------------------------------------------------------------- feature helpers


def _box_blur(images: np.ndarray) -> np.ndarray:
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = images.shape[1:3]
    return sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def foreground(images: np.ndarray) -> np.ndarray:
    """Bool [n, H, W]: pixels whose colour is far from the background, estimated at the border."""
    pixels = _box_blur(images.astype(np.float64) / 255.0)
    border = np.concatenate([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], axis=1)
    background = np.median(border, axis=1)
    distance = np.linalg.norm(pixels - background[:, None, None, :], axis=-1)
    return distance > 0.5 * distance.max(axis=(1, 2), keepdims=True)


def centroids(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask centroid (x to the right, y downwards) in [0, 1] image coordinates."""
    size = mask.shape[1]
    coords = (np.arange(size) + 0.5) / size
    area = mask.sum(axis=(1, 2))
    return (mask.sum(axis=1) @ coords) / area, (mask.sum(axis=2) @ coords) / area


def crop_to_content(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Each mask's bounding box, resampled to `shape`: a translation- and scale-invariant view."""
    crops = np.zeros((len(mask), *shape))
    for i, m in enumerate(mask):
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        r = np.linspace(rows[0], rows[-1], shape[0]).round().astype(int)
        c = np.linspace(cols[0], cols[-1], shape[1]).round().astype(int)
        crops[i] = m[np.ix_(r, c)]
    return crops


def label_components(mask: np.ndarray) -> np.ndarray:
    """4-connected component ids [n, H, W] (0 outside the mask), by propagating the largest pixel id."""
    n, h, w = mask.shape
    ids = np.where(mask, np.arange(1, h * w + 1).reshape(1, h, w), 0)
    while True:
        p = np.pad(ids, ((0, 0), (1, 1), (1, 1)))
        spread = np.maximum.reduce([ids, p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]])
        spread = np.where(mask, spread, 0)
        if np.array_equal(spread, ids):
            return ids
        ids = spread


def count_components(mask: np.ndarray, min_pixels: int = 1) -> np.ndarray:
    """Number of 4-connected components of at least `min_pixels` pixels per mask."""
    ids = label_components(mask)
    return np.array([(np.unique(m[m > 0], return_counts=True)[1] >= min_pixels).sum() for m in ids])


def nearest_class_mean_accuracy(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray
) -> float:
    train, test = train.reshape(len(train), -1), test.reshape(len(test), -1)
    classes = np.unique(train_labels)
    means = np.stack([train[train_labels == c].mean(axis=0) for c in classes])
    distances = ((test[:, None, :] - means[None]) ** 2).sum(axis=-1)
    return float((classes[distances.argmin(axis=1)] == test_labels).mean())


# ---------------------------------------------------------------- API contract


def test_tiny8_tasks_come_first_in_canonical_order() -> None:
    assert TASK_NAMES[:8] == [
        "shapes", "colours", "textures", "digits", "counting", "orientation", "position", "sizes"
    ]  # fmt: skip


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_metadata(name: str) -> None:
    task = TINY_TASKS[name]
    assert isinstance(task, TinyTask) and task.name == name
    assert 3 <= len(task.classnames) <= 10
    assert len(set(task.classnames)) == len(task.classnames)
    assert 2 <= len(task.templates) <= 4
    assert all(template.count("{}") == 1 for template in task.templates)


def test_templates_are_task_specific() -> None:
    templates = [t for task in TINY_TASKS.values() for t in task.templates]
    assert len(set(templates)) == len(templates)


def test_digit_and_count_class_names() -> None:
    assert TINY_TASKS["digits"].classnames[:3] == ("zero", "one", "two")
    assert TINY_TASKS["digits"].classnames[-1] == "nine"
    assert TINY_TASKS["counting"].classnames[:2] == ("one", "two")


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("size", [16, 32, 64])
def test_shape_dtype_and_contrast(name: str, size: int) -> None:
    labels = np.arange(len(TINY_TASKS[name].classnames))
    images = generate_images(name, labels, size, seed=3)
    assert images.shape == (len(labels), size, size, 3)
    assert images.dtype == np.uint8
    spread = images.reshape(len(labels), -1).astype(int)
    # Every image has a visible object or pattern, not a blank or flat field.
    assert (spread.max(axis=1) - spread.min(axis=1) > 80).all()


def test_split_labels_are_balanced_shuffled_and_match_images() -> None:
    images, labels = generate_split("counting", 23, 20, seed=5)
    assert labels.dtype == np.int64 and labels.shape == (23,)
    counts = np.bincount(labels, minlength=5)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 23
    assert not np.array_equal(labels, np.sort(labels))
    np.testing.assert_array_equal(images, generate_images("counting", labels, 20, seed=5))


def test_empty_split() -> None:
    images, labels = generate_split("shapes", 0, 32, seed=0)
    assert images.shape == (0, 32, 32, 3) and labels.shape == (0,)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_deterministic_and_seed_dependent(name: str) -> None:
    first_images, first_labels = generate_split(name, 12, 24, seed=7)
    again_images, again_labels = generate_split(name, 12, 24, seed=7)
    assert first_images.tobytes() == again_images.tobytes()
    np.testing.assert_array_equal(first_labels, again_labels)
    other = generate_images(name, first_labels, 24, seed=8)
    # Every image changes with the seed, not just some.
    assert all(a.tobytes() != b.tobytes() for a, b in zip(first_images, other))


def test_same_seed_differs_across_tasks() -> None:
    labels = np.zeros(4, dtype=np.int64)
    shapes, sizes = (generate_images(name, labels, 32, seed=0) for name in ("shapes", "sizes"))
    assert shapes.tobytes() != sizes.tobytes()


def test_large_batch_spans_chunks_deterministically() -> None:
    labels = np.arange(700) % 10
    first = generate_images("digits", labels, 40, seed=2)
    np.testing.assert_array_equal(first, generate_images("digits", labels, 40, seed=2))
    # Images past the first render chunk still differ from each other.
    assert len({img.tobytes() for img in first[-50:]}) == 50


def test_unknown_task_names_valid_tasks() -> None:
    with pytest.raises(InputError) as err:
        generate_split("letters", 4, 32, seed=0)
    for name in TASK_NAMES:
        assert name in str(err.value)
    with pytest.raises(InputError, match="letters"):
        caption("letters", 0, np.random.default_rng(0))


@pytest.mark.parametrize(
    "labels, size, seed",
    [
        (np.array([0, 6]), 32, 0),  # shapes has six classes
        (np.array([-1]), 32, 0),
        (np.array([[0]]), 32, 0),
        (np.array([0.5]), 32, 0),
        (np.array([0]), 8, 0),
        (np.array([0]), 32.0, 0),
        (np.array([0]), 32, -1),
    ],
)
def test_bad_arguments_raise_input_error(labels: np.ndarray, size: int, seed: int) -> None:
    with pytest.raises(InputError):
        generate_images("shapes", labels, size, seed)


def test_caption_uses_templates_and_class_name() -> None:
    rng = np.random.default_rng(0)
    task = TINY_TASKS["orientation"]
    captions = {caption("orientation", 2, rng) for _ in range(50)}
    assert captions == {template.format("diagonal rising") for template in task.templates}
    with pytest.raises(InputError):
        caption("orientation", 8, rng)


def test_caption_is_deterministic_in_rng() -> None:
    def draw(seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        return [caption(name, 0, rng) for name in TASK_NAMES for _ in range(3)]

    assert draw(1) == draw(1)


# ---------------------------------------------------------------- labels are depicted


@pytest.mark.parametrize("name", TASK_NAMES)
def test_raw_pixels_do_not_give_the_label_away(splits, name: str) -> None:
    (train, train_labels), (test, test_labels) = splits[name]
    as_float = lambda images: images.astype(np.float64) / 255.0  # noqa: E731
    accuracy = nearest_class_mean_accuracy(as_float(train), train_labels, as_float(test), test_labels)
    # Nuisance (colour, position, size, noise) hides the label from a template matcher;
    # colours is the easiest, at about 0.4 with ten classes.
    assert accuracy < 0.7


def test_position_centroids_lie_in_named_regions(splits) -> None:
    _, (images, labels) = splits["position"]
    x, y = centroids(foreground(images))
    third = lambda coordinate: np.digitize(coordinate, (1 / 3, 2 / 3))  # noqa: E731
    predicted = 3 * third(y) + third(x)  # row-major: top left, top centre, ..., bottom right
    assert (predicted == labels).mean() > 0.95


def test_orientation_matches_bar_angle(splits) -> None:
    _, (images, labels) = splits["orientation"]
    mask = foreground(images)
    x, y = centroids(mask)
    size = mask.shape[1]
    coords = (np.arange(size) + 0.5) / size
    dx = coords[None, None, :] - x[:, None, None]
    dy = y[:, None, None] - coords[None, :, None]  # upwards positive, as "rising" means
    sxx, syy, sxy = ((mask * d).sum(axis=(1, 2)) for d in (dx * dx, dy * dy, dx * dy))
    angle = 0.5 * np.arctan2(2 * sxy, sxx - syy)
    predicted = np.round(angle / (np.pi / 8)).astype(int) % 8
    assert (predicted == labels).mean() > 0.95


def test_sizes_grow_with_class(splits) -> None:
    (train, train_labels), (test, test_labels) = splits["sizes"]
    train_area, test_area = (np.sqrt(foreground(x).mean(axis=(1, 2))) for x in (train, test))
    class_means = [train_area[train_labels == c].mean() for c in range(4)]
    assert np.all(np.diff(class_means) > 0)
    assert nearest_class_mean_accuracy(train_area, train_labels, test_area, test_labels) > 0.9


def test_counting_spots_match_class(splits) -> None:
    _, (images, labels) = splits["counting"]
    assert (count_components(foreground(images)) == labels + 1).mean() > 0.9


def test_colours_are_the_named_hues(splits) -> None:
    (train, train_labels), (test, test_labels) = splits["colours"]

    def object_colour(images: np.ndarray) -> np.ndarray:
        mask = foreground(images)[..., None]
        return (images * mask).sum(axis=(1, 2)) / mask.sum(axis=(1, 2)) / 255.0

    train_colour, test_colour = object_colour(train), object_colour(test)
    assert nearest_class_mean_accuracy(train_colour, train_labels, test_colour, test_labels) > 0.9
    names = TINY_TASKS["colours"].classnames
    for name, channel in (("red", 0), ("green", 1), ("blue", 2)):
        assert train_colour[train_labels == names.index(name)].mean(axis=0).argmax() == channel


def test_textures_differ_in_spectrum(splits) -> None:
    (train, train_labels), (test, test_labels) = splits["textures"]

    def spectrum(images: np.ndarray) -> np.ndarray:
        grey = images.mean(axis=-1)
        grey = grey - grey.mean(axis=(1, 2), keepdims=True)
        power = np.abs(np.fft.fft2(grey))
        return power / np.linalg.norm(power, axis=(1, 2), keepdims=True)

    # About 0.8-0.9 in practice: the random period smears the class-mean spectra.
    assert nearest_class_mean_accuracy(spectrum(train), train_labels, spectrum(test), test_labels) > 0.65


def test_stripes_run_the_named_way(splits) -> None:
    (images, labels), _ = splits["textures"]
    grey = images.mean(axis=-1)
    change_down = np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2))
    change_across = np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2))
    names = TINY_TASKS["textures"].classnames
    horizontal = labels == names.index("horizontal stripes")
    vertical = labels == names.index("vertical stripes")
    assert (change_down[horizontal] > 1.5 * change_across[horizontal]).all()
    assert (change_across[vertical] > 1.5 * change_down[vertical]).all()


@pytest.mark.parametrize("name, threshold", [("shapes", 0.85), ("digits", 0.85)])
def test_silhouettes_identify_class(splits, name: str, threshold: float) -> None:
    (train, train_labels), (test, test_labels) = splits[name]
    train_crops, test_crops = (crop_to_content(foreground(x), (14, 10)) for x in (train, test))
    assert nearest_class_mean_accuracy(train_crops, train_labels, test_crops, test_labels) > threshold
