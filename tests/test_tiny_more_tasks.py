"""Tests for the twelve tiny tasks that extend tiny8 to tiny14 and tiny20: API contract, determinism,
balanced splits, and that each image really depicts its label (checked with simple hand-made
feature extractors) while raw pixels alone do not give the label away."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from test_tiny_tasks import count_components, crop_to_content, label_components, nearest_class_mean_accuracy

from mergeflow.tiny import TINY_TASKS, generate_images, generate_split

TINY8 = ["shapes", "colours", "textures", "digits", "counting", "orientation", "position", "sizes"]
TINY14_EXTRA = ["arrows", "outlines", "distances", "frames", "blur", "relations"]
TINY20_EXTRA = ["alphabet", "stripes", "shading", "saturation", "angles", "pies"]
NEW_TASKS = TINY14_EXTRA + TINY20_EXTRA
SIZE = 32
PER_CLASS = 40


def make_splits(name: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train, test) for one task, drawn with different seeds."""
    n = PER_CLASS * len(TINY_TASKS[name].classnames)
    return generate_split(name, n, SIZE, seed=0), generate_split(name, n, SIZE, seed=1)


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]:
    return {name: make_splits(name) for name in NEW_TASKS}


# ---------------------------------------------------------------- feature helpers


def _box_blur(images: np.ndarray) -> np.ndarray:
    """3x3 mean over the two axes after the batch axis (edge-padded); works on [n, H, W] and [n, H, W, C]."""
    pad = [(0, 0), (1, 1), (1, 1)] + [(0, 0)] * (images.ndim - 3)
    padded = np.pad(images, pad, mode="edge")
    h, w = images.shape[1:3]
    return sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def _border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], axis=1)


def intensity(images: np.ndarray) -> np.ndarray:
    """Float [n, H, W]: where each (blurred) pixel lies between background (0) and object colour (1).

    The background is the median colour of the border, the object colour the one farthest from it.
    """
    pixels = _box_blur(images.astype(np.float64) / 255.0)
    background = np.median(_border(pixels), axis=1)[:, None, None, :]
    distance = np.linalg.norm(pixels - background, axis=-1)
    far = distance.reshape(len(images), -1).argmax(axis=1)
    colour = pixels.reshape(len(images), -1, 3)[np.arange(len(images)), far][:, None, None, :]
    direction = colour - background
    return ((pixels - background) * direction).sum(axis=-1) / (direction * direction).sum(axis=-1)


def foreground(images: np.ndarray) -> np.ndarray:
    """Bool [n, H, W]: pixels at least halfway from the background colour to the object's."""
    return intensity(images) > 0.5


def pixel_coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x (to the right) and y (downwards) of pixel centres in [0, 1], each [1, size, size]."""
    centres = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(centres, centres, indexing="ij")
    return x[None], y[None]


def moments(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centroid (x, y) and second central moments (xx, yy, xy) of each mask, in image units."""
    x, y = pixel_coords(mask.shape[1])
    area = mask.sum(axis=(1, 2))
    mx, my = (mask * x).sum(axis=(1, 2)) / area, (mask * y).sum(axis=(1, 2)) / area
    dx, dy = x - mx[:, None, None], y - my[:, None, None]
    return mx, my, *((mask * d).sum(axis=(1, 2)) / area for d in (dx * dx, dy * dy, dx * dy))


def elongation(mask: np.ndarray) -> np.ndarray:
    """Smaller over larger eigenvalue of each mask's covariance: 1 for a disc, near 0 for a line."""
    _, _, xx, yy, xy = moments(mask)
    half_gap = np.sqrt(((xx - yy) / 2) ** 2 + xy**2)
    return ((xx + yy) / 2 - half_gap) / ((xx + yy) / 2 + half_gap)


def feret_diameter(mask: np.ndarray) -> np.ndarray:
    """Largest distance between two pixels of each mask, in image units."""
    diameters = np.zeros(len(mask))
    for i, m in enumerate(mask):
        points = np.argwhere(m).astype(np.float64)
        diameters[i] = np.sqrt(((points[:, None] - points[None]) ** 2).sum(axis=-1).max())
    return (diameters + 1.0) / mask.shape[1]


# ---------------------------------------------------------------- one hand-made feature per task


def arrow_feature(images: np.ndarray) -> np.ndarray:
    """Which end of the arrow is wide: (top minus bottom, left minus right) of the widest cross-section."""
    mask = foreground(images)
    features = np.zeros((len(mask), 2))
    for i, m in enumerate(mask):
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        box = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        if box.shape[0] >= box.shape[1]:  # upright: compare row widths of the two halves
            width = box.sum(axis=1)
            features[i, 0] = width[: len(width) // 2].max() - width[(len(width) + 1) // 2 :].max()
        else:
            height = box.sum(axis=0)
            features[i, 1] = height[: len(height) // 2].max() - height[(len(height) + 1) // 2 :].max()
    return np.sign(features)


def outline_feature(images: np.ndarray) -> np.ndarray:
    """Pieces of ink, holes in it, and how much of its bounding box it fills."""
    mask = foreground(images)
    pieces = np.minimum(count_components(mask, min_pixels=3), 4)
    holes = np.minimum(count_components(~mask, min_pixels=3) - 1, 3)
    fill = mask.mean(axis=(1, 2)) / feret_diameter(mask) ** 2
    return np.stack([pieces, holes, 3 * fill], axis=1)


def distance_feature(images: np.ndarray) -> np.ndarray:
    return feret_diameter(foreground(images))[:, None]


def frame_feature(images: np.ndarray) -> np.ndarray:
    """Pixels of frame colour met walking in from each edge's middle half, averaged over the four edges.

    The reference colour is the image centre's surroundings: the frame sits within a quarter of the side
    from the edge, and the object within the middle sixth.
    """
    pixels = images.astype(np.float64) / 255.0
    size = pixels.shape[1]
    quarter, middle = size // 4, slice(size // 4, size - size // 4)
    ring = np.concatenate(
        [pixels[:, quarter + 1, middle], pixels[:, -quarter - 2, middle], pixels[:, middle, quarter + 1]], axis=1
    )
    background = np.median(ring, axis=1)[:, None, None, :]
    # Each edge's profile from the edge inwards, [n, depth, along the edge].
    profiles = [
        pixels[:, :quarter, middle],
        pixels[:, ::-1][:, :quarter, middle],
        pixels[:, middle, :quarter].transpose(0, 2, 1, 3),
        pixels[:, middle, ::-1][:, :, :quarter].transpose(0, 2, 1, 3),
    ]
    framed = [(np.linalg.norm(p - background, axis=-1).mean(axis=2) > 0.17).sum(axis=1) for p in profiles]
    return np.mean(framed, axis=0)[:, None]


def blur_feature(images: np.ndarray) -> np.ndarray:
    """Width of the edge: area partway between background and object over the object's perimeter scale."""
    level = intensity(images)
    area = {t: (level > t).sum(axis=(1, 2)) for t in (0.2, 0.5, 0.8)}
    return np.log((area[0.2] - area[0.8]) / np.sqrt(area[0.5]))[:, None]


def relation_feature(images: np.ndarray) -> np.ndarray:
    """Unit vector from the block's centroid to the dot's: the two largest pieces of ink."""
    ids = label_components(foreground(images))
    x, y = pixel_coords(images.shape[1])
    features = np.zeros((len(ids), 2))
    for i, m in enumerate(ids):
        values, counts = np.unique(m[m > 0], return_counts=True)
        block, dot = values[np.argsort(counts)[::-1][:2]]
        for sign, piece in ((-1, m == block), (1, m == dot)):
            features[i] += sign * np.array([x[0][piece].mean(), y[0][piece].mean()])
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def letter_feature(images: np.ndarray) -> np.ndarray:
    return crop_to_content(foreground(images), (14, 10))


def stripe_feature(images: np.ndarray) -> np.ndarray:
    """Log of the stripe edges crossed per pixel, along rows and columns combined (rotation-invariant)."""
    grey = _box_blur(images.mean(axis=-1))
    above = grey > grey.mean(axis=(1, 2), keepdims=True)
    along_rows = (above[:, :, 1:] != above[:, :, :-1]).mean(axis=(1, 2))
    along_cols = (above[:, 1:] != above[:, :-1]).mean(axis=(1, 2))
    return np.log(np.hypot(along_rows, along_cols))[:, None]


def shading_feature(images: np.ndarray) -> np.ndarray:
    """Unit direction (x right, y up) in which the object's intensity falls, by least squares over it."""
    level = intensity(images)
    x, y = pixel_coords(images.shape[1])
    on = level > 0.35  # above the shading finish() gives the background
    features = np.zeros((len(level), 2))
    for i in range(len(level)):
        a = np.stack([x[0][on[i]], -y[0][on[i]], np.ones(on[i].sum())], axis=1)
        slope = np.linalg.lstsq(a, level[i][on[i]], rcond=None)[0][:2]
        features[i] = -slope / np.linalg.norm(slope)
    return features


def saturation_feature(images: np.ndarray) -> np.ndarray:
    """Chroma (largest minus smallest channel) of the object's mean colour."""
    mask = foreground(images)[..., None]
    colour = (images * mask).sum(axis=(1, 2)) / mask.sum(axis=(1, 2)) / 255.0
    return (colour.max(axis=1) - colour.min(axis=1))[:, None]


def angle_feature(images: np.ndarray) -> np.ndarray:
    """Coherence of edge orientations (|cos| of the opening angle) and elongation of the ink."""
    grey = _box_blur(images.mean(axis=-1) / 255.0)
    gy, gx = np.gradient(grey, axis=(1, 2))
    jxx, jyy, jxy = ((g * h).sum(axis=(1, 2)) for g, h in ((gx, gx), (gy, gy), (gx, gy)))
    coherence = np.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy)
    return np.stack([coherence, elongation(foreground(images))], axis=1)


def pie_feature(images: np.ndarray) -> np.ndarray:
    """Elongation of the ink and its area over its diameter squared."""
    mask = foreground(images)
    area = mask.sum(axis=(1, 2)) / mask.shape[1] ** 2
    return np.stack([elongation(mask), area / feret_diameter(mask) ** 2], axis=1)


FEATURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "arrows": arrow_feature,
    "outlines": outline_feature,
    "distances": distance_feature,
    "frames": frame_feature,
    "blur": blur_feature,
    "relations": relation_feature,
    "alphabet": letter_feature,
    "stripes": stripe_feature,
    "shading": shading_feature,
    "saturation": saturation_feature,
    "angles": angle_feature,
    "pies": pie_feature,
}


# ---------------------------------------------------------------- API contract


def test_new_tasks_follow_tiny8_in_benchmark_order() -> None:
    names = list(TINY_TASKS)
    assert names[:8] == TINY8
    # tiny14 is the first 14 tasks, tiny20 the first 20.
    assert names[8:20] == NEW_TASKS
    assert set(FEATURES) == set(NEW_TASKS)


@pytest.mark.parametrize("name", NEW_TASKS)
def test_task_metadata(name: str) -> None:
    task = TINY_TASKS[name]
    assert task.name == name
    assert 4 <= len(task.classnames) <= 10
    assert len(set(task.classnames)) == len(task.classnames)
    assert all(name.strip() == name and name for name in task.classnames)
    assert len(task.templates) == 3
    assert all(template.count("{}") == 1 for template in task.templates)


def test_templates_are_unique_across_all_tasks() -> None:
    templates = [t for task in TINY_TASKS.values() for t in task.templates]
    assert len(set(templates)) == len(templates)


def test_alphabet_class_names_are_the_letters() -> None:
    assert TINY_TASKS["alphabet"].classnames == ("A", "E", "H", "L", "T", "X")


@pytest.mark.parametrize("name", NEW_TASKS)
@pytest.mark.parametrize("size", [16, 32, 64])
def test_shape_dtype_and_contrast(name: str, size: int) -> None:
    labels = np.repeat(np.arange(len(TINY_TASKS[name].classnames)), 2)
    images = generate_images(name, labels, size, seed=3)
    assert images.shape == (len(labels), size, size, 3)
    assert images.dtype == np.uint8
    spread = images.reshape(len(labels), -1).astype(int)
    # Every image shows something, not a blank or flat field.
    assert (spread.max(axis=1) - spread.min(axis=1) > 80).all()


@pytest.mark.parametrize("name", NEW_TASKS)
def test_split_is_balanced_shuffled_and_matches_images(name: str) -> None:
    num_classes = len(TINY_TASKS[name].classnames)
    n = 5 * num_classes + 3
    images, labels = generate_split(name, n, 20, seed=5)
    assert labels.dtype == np.int64 and labels.shape == (n,)
    counts = np.bincount(labels, minlength=num_classes)
    assert len(counts) == num_classes and counts.min() >= 5 and counts.max() - counts.min() <= 1
    assert not np.array_equal(labels, np.sort(labels))
    np.testing.assert_array_equal(images, generate_images(name, labels, 20, seed=5))


# ---------------------------------------------------------------- labels are depicted


@pytest.mark.parametrize("name", NEW_TASKS)
def test_raw_pixels_do_not_give_the_label_away(splits, name: str) -> None:
    (train, train_labels), (test, test_labels) = splits[name]
    accuracy = nearest_class_mean_accuracy(train / 255.0, train_labels, test / 255.0, test_labels)
    # Colours, position, size and noise hide the label from a template matcher: about chance (0.2-0.32).
    assert accuracy < 1.0 / len(TINY_TASKS[name].classnames) + 0.2


# Per task: least test accuracy of nearest class mean on the task's feature (observed, rounded down a bit).
FEATURE_ACCURACY = {
    "arrows": 0.95,
    "outlines": 0.9,
    "distances": 0.95,
    "frames": 0.95,
    "blur": 0.8,
    "relations": 0.95,
    "alphabet": 0.9,
    "stripes": 0.9,
    "shading": 0.95,
    "saturation": 0.95,
    "angles": 0.9,
    "pies": 0.85,
}


@pytest.mark.parametrize("name", NEW_TASKS)
def test_hand_made_feature_identifies_class(splits, name: str) -> None:
    (train, train_labels), (test, test_labels) = splits[name]
    feature = FEATURES[name]
    accuracy = nearest_class_mean_accuracy(feature(train), train_labels, feature(test), test_labels)
    assert accuracy > FEATURE_ACCURACY[name]


def _class_means(splits, name: str) -> np.ndarray:
    (train, train_labels), _ = splits[name]
    features = FEATURES[name](train)
    return np.stack([features[train_labels == c].mean(axis=0) for c in range(len(TINY_TASKS[name].classnames))])


@pytest.mark.parametrize(
    "name, sign",
    [("distances", 1), ("frames", 1), ("blur", 1), ("stripes", -1), ("saturation", 1)],
)
def test_ordered_classes_grow_in_order(splits, name: str, sign: int) -> None:
    # Touching < ... < far apart, no frame < ... < thick, sharp < ... < very blurry, grey < ... < vivid;
    # stripes get fewer edges as they widen.
    assert np.all(sign * np.diff(_class_means(splits, name)[:, 0]) > 0)


# Named directions as unit vectors; each feature's own axes are in its docstring.
_UP_DOWN_LEFT_RIGHT_Y_UP = np.array([[0, 1], [0, -1], [-1, 0], [1, 0]])


@pytest.mark.parametrize(
    "name, expected",
    [
        # (top minus bottom width, left minus right height): the head is the wide end.
        ("arrows", np.array([[1, 0], [-1, 0], [0, 1], [0, -1]])),
        # Block to dot, y downwards: above, below, left of, right of.
        ("relations", np.array([[0, -1], [0, 1], [-1, 0], [1, 0]])),
        # The direction intensity falls in, y upwards.
        ("shading", _UP_DOWN_LEFT_RIGHT_Y_UP),
    ],
)
def test_directions_are_the_named_ones(splits, name: str, expected: np.ndarray) -> None:
    means = _class_means(splits, name)
    cosine = (means * expected).sum(axis=1) / np.linalg.norm(means, axis=1)
    assert (cosine > 0.9).all()


def test_outline_styles_have_the_right_pieces_and_holes(splits) -> None:
    pieces, holes, _ = _class_means(splits, "outlines").T
    names = TINY_TASKS["outlines"].classnames
    solid, outlined, dashed, double = (names.index(style) for style in ("solid", "outlined", "dashed", "double lined"))
    assert pieces[solid] == pytest.approx(1, abs=0.1) and holes[solid] == pytest.approx(0, abs=0.1)
    assert pieces[outlined] == pytest.approx(1, abs=0.1) and holes[outlined] == pytest.approx(1, abs=0.1)
    assert pieces[dashed] > 3.5 and holes[dashed] < 0.2
    assert holes[double] > 1.8


def test_angles_open_in_class_order(splits) -> None:
    # Edge coherence is |cos| of the opening angle: least for the right angle, more for 30 and 130 degrees.
    coherence, elongated = _class_means(splits, "angles").T
    assert coherence.argmin() == TINY_TASKS["angles"].classnames.index("right")
    # A wide chevron is the most line-like, a 60-degree one the least.
    assert elongated.argmin() == 3 and elongated.argmax() == 1


def test_pie_fractions_fill_less_of_their_diameter(splits) -> None:
    _, fill = _class_means(splits, "pies").T
    # Full disc, three quarters and a half fill ever less of the square on their diameter.
    assert fill[0] > fill[1] > fill[2]
