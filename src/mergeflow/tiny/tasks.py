"""The tiny tasks' content: twenty procedurally generated image-classification tasks for offline benchmarks.

Each task labels one attribute of the image (shape, colour, texture, digit, count, orientation, position,
size, and the twelve of `tiny20_scenes` that tiny14 and tiny20 add) while the other attributes vary at random
as nuisance. This module draws the content only; `mergeflow.tiny.domains` gives each task its own look
and the task splits their shared shift.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mergeflow.io import InputError
from mergeflow.tiny import render, tiny20_scenes
from mergeflow.tiny.glyphs import DIGIT_TEXTURES, GLYPH_COLS, GLYPH_ROWS, TEXELS_PER_CELL, TEXTURE_PAD
from mergeflow.tiny.render import Grid, Scene

MIN_IMAGE_SIZE = 16

# Supersampled pixels rendered per chunk; bounds peak memory for large batches.
_PIXELS_PER_CHUNK = 1 << 20

# Independent random streams for the label order and the pictures, so neither shifts the other.
_IMAGE_STREAM = 0
_LABEL_STREAM = 1

# Shapes extend up to this many radii from their centre (the triangle's vertices).
_SHAPE_EXTENT = 1.3


@dataclass(frozen=True)
class TinyTask:
    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]


TINY_TASKS: dict[str, TinyTask] = {
    task.name: task
    for task in (
        TinyTask(
            "shapes",
            ("circle", "square", "triangle", "cross", "star", "ring"),
            ("a photo of a {}.", "a {} shape.", "a drawing of a {}."),
        ),
        TinyTask(
            "colours",
            ("red", "orange", "yellow", "lime", "green", "cyan", "blue", "purple", "pink", "brown"),
            ("a photo of something {}.", "an object painted {}.", "the colour {}."),
        ),
        TinyTask(
            "textures",
            (
                "horizontal stripes",
                "vertical stripes",
                "diagonal stripes",
                "checkerboard",
                "polka dots",
                "grid",
                "crosshatch",
                "zigzag",
                "wavy lines",
                "concentric rings",
            ),
            ("a {} pattern.", "a {} texture.", "a picture with a {} pattern."),
        ),
        TinyTask(
            "digits",
            ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
            ("the digit {}.", "a picture of the number {}.", "a pixel font {}."),
        ),
        TinyTask(
            "counting",
            ("one", "two", "three", "four", "five"),
            ("the number of spots is {}.", "spots counted: {}.", "a count of {}."),
        ),
        TinyTask(
            "orientation",
            (
                "horizontal",
                "gently rising",
                "diagonal rising",
                "steeply rising",
                "vertical",
                "steeply falling",
                "diagonal falling",
                "gently falling",
            ),
            ("a {} bar.", "a {} line.", "a {} stick."),
        ),
        TinyTask(
            "position",
            (
                "top left",
                "top centre",
                "top right",
                "middle left",
                "centre",
                "middle right",
                "bottom left",
                "bottom centre",
                "bottom right",
            ),
            ("an object in the {}.", "a shape at the {} of the picture.", "something placed at the {}."),
        ),
        TinyTask(
            "sizes",
            ("tiny", "small", "medium", "large"),
            ("a {} object.", "a photo of a {} thing.", "something {} in size."),
        ),
        # tiny14 adds the next six, tiny20 all twelve (scenes in tiny20_scenes).
        TinyTask(
            "arrows",
            ("up", "down", "left", "right"),
            ("an arrow pointing {}.", "a sign pointing {}.", "an arrow that points {}."),
        ),
        TinyTask(
            "outlines",
            ("solid", "outlined", "dashed", "double lined"),
            ("a {} figure.", "a {} drawing of a polygon.", "a figure drawn {}."),
        ),
        TinyTask(
            "distances",
            ("touching", "close together", "a little apart", "far apart"),
            ("two dots {}.", "a pair of spots {}.", "two points that are {}."),
        ),
        TinyTask(
            "frames",
            ("no frame", "thin frame", "medium frame", "thick frame"),
            ("a picture with {}.", "an image showing {}.", "a drawing with {} around it."),
        ),
        TinyTask(
            "blur",
            ("sharp", "soft", "blurry", "very blurry"),
            ("a {} photo.", "a {} picture of an object.", "an object that looks {}."),
        ),
        TinyTask(
            "relations",
            ("above", "below", "left of", "right of"),
            ("a dot {} a block.", "a small spot {} a big shape.", "a marker placed {} a box."),
        ),
        TinyTask(
            "alphabet",
            tiny20_scenes.LETTERS,
            ("the letter {}.", "a capital letter {}.", "a pixel font letter {}."),
        ),
        TinyTask(
            "stripes",
            ("very thin", "thin", "thick", "very thick"),
            ("{} stripes.", "a pattern of {} stripes.", "a surface covered in {} stripes."),
        ),
        TinyTask(
            "shading",
            ("fading upwards", "fading downwards", "fading to the left", "fading to the right"),
            ("a shape {}.", "an object {} into the background.", "a gradient {}."),
        ),
        TinyTask(
            "saturation",
            ("grey", "pale", "rich", "vivid"),
            ("a {} coloured thing.", "an object in a {} tint.", "a {} hue."),
        ),
        TinyTask(
            "angles",
            ("very sharp", "sharp", "right", "wide"),
            ("a {} angle.", "two lines meeting at a {} angle.", "a chevron with a {} angle."),
        ),
        TinyTask(
            "pies",
            ("full disc", "three quarter disc", "half disc", "quarter disc"),
            ("a {}.", "a {} cut from paper.", "a picture of a {}."),
        ),
    )
}


def _rng(seed: int, task: str, stream: int) -> np.random.Generator:
    # crc32 rather than hash(): Python salts string hashes per process.
    return np.random.default_rng([seed, zlib.crc32(task.encode("utf-8")), stream])


def _shapes(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    radius = rng.uniform(0.2, 0.32, n)
    cx, cy = render.centres_within(rng, _SHAPE_EXTENT * radius)
    # Small rotations only: a square turned by 45 degrees would read as a diamond.
    u, v = render.local_coords(grid, cx, cy, radius, rng.uniform(-0.3, 0.3, n))
    return Scene(render.downsample(render.shape_mask(labels, u, v), grid), background, foreground)


# Per colour class: hue (turns), hue jitter, saturation range, value range.
_COLOUR_SPECS = np.array(
    [
        [0.000, 0.020, 0.75, 1.00, 0.70, 1.00],  # red
        [0.080, 0.015, 0.80, 1.00, 0.85, 1.00],  # orange
        [0.155, 0.015, 0.75, 1.00, 0.85, 1.00],  # yellow
        [0.235, 0.015, 0.70, 1.00, 0.75, 1.00],  # lime
        [0.350, 0.035, 0.60, 1.00, 0.55, 0.95],  # green
        [0.510, 0.020, 0.60, 1.00, 0.75, 1.00],  # cyan
        [0.635, 0.025, 0.70, 1.00, 0.70, 1.00],  # blue
        [0.775, 0.025, 0.55, 0.90, 0.50, 0.85],  # purple
        [0.905, 0.025, 0.35, 0.60, 0.90, 1.00],  # pink
        [0.070, 0.020, 0.60, 0.90, 0.30, 0.50],  # brown: orange's hue, much darker
    ]
)


def _class_colours(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    hue, jitter, s_lo, s_hi, v_lo, v_hi = _COLOUR_SPECS[labels].T
    return render.hsv_to_rgb(
        np.mod(hue + rng.uniform(-1.0, 1.0, len(labels)) * jitter, 1.0),
        rng.uniform(s_lo, s_hi),
        rng.uniform(v_lo, v_hi),
    )


def _colours(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    n = len(labels)
    # A near-grey background, so that the object's colour is the only saturated one.
    grey = rng.uniform(0.1, 0.9, n)[:, None]
    background = np.clip(grey + rng.uniform(-0.05, 0.05, (n, 3)), 0.0, 1.0)
    radius = rng.uniform(0.16, 0.3, n)
    cx, cy = render.centres_within(rng, _SHAPE_EXTENT * radius)
    kinds = rng.integers(0, render.RING + 1, n)
    u, v = render.local_coords(grid, cx, cy, radius, rng.uniform(-0.3, 0.3, n))
    coverage = render.downsample(render.shape_mask(kinds, u, v), grid)
    return Scene(coverage, background, _class_colours(rng, labels))


# Patterns in pattern coordinates, where one period is one unit; indexed by texture class.
_PATTERNS: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    lambda u, v: np.mod(v, 1.0) < 0.5,  # horizontal stripes
    lambda u, v: np.mod(u, 1.0) < 0.5,  # vertical stripes
    lambda u, v: np.mod((u + v) / np.sqrt(2.0), 1.0) < 0.5,  # diagonal stripes
    lambda u, v: (np.floor(u) + np.floor(v)) % 2 == 0,  # checkerboard
    lambda u, v: (np.mod(u, 1.0) - 0.5) ** 2 + (np.mod(v, 1.0) - 0.5) ** 2 < 0.32**2,  # polka dots
    lambda u, v: (np.mod(u, 1.0) < 0.25) | (np.mod(v, 1.0) < 0.25),  # grid
    # crosshatch: thin diagonal lines both ways
    lambda u, v: (np.mod((u + v) / np.sqrt(2.0), 1.0) < 0.25) | (np.mod((u - v) / np.sqrt(2.0), 1.0) < 0.25),
    lambda u, v: np.mod(v + np.abs(np.mod(u / 2.0, 1.0) - 0.5), 1.0) < 0.5,  # zigzag
    lambda u, v: np.mod(v + 0.25 * np.sin(np.pi * u), 1.0) < 0.5,  # wavy lines
    lambda u, v: np.mod(np.hypot(u, v), 1.0) < 0.5,  # concentric rings about the random phase point
)


def _textures(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    period = rng.uniform(0.16, 0.28, n)
    # A random phase and a slight tilt, so that no single pixel predicts the class.
    u, v = render.local_coords(grid, rng.random(n), rng.random(n), period, rng.uniform(-0.15, 0.15, n))
    # Mirroring leaves every pattern's class unchanged but gives diagonal stripes both directions.
    v = np.where((rng.random(n) < 0.5)[:, None, None], -v, v)
    mask = np.zeros(u.shape, dtype=bool)
    for kind in np.unique(labels):
        members = labels == kind
        mask[members] = _PATTERNS[kind](u[members], v[members])
    return Scene(render.downsample(mask, grid), background, foreground)


def _glyph_ink(labels: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Look up digit ink at glyph cell coordinates [n, H, W] (row 0 = top of the 5x7 box)."""
    texture_rows, texture_cols = DIGIT_TEXTURES.shape[1:]
    row = np.clip(((rows + TEXTURE_PAD) * TEXELS_PER_CELL).astype(np.int64), 0, texture_rows - 1)
    col = np.clip(((cols + TEXTURE_PAD) * TEXELS_PER_CELL).astype(np.int64), 0, texture_cols - 1)
    # Clipping is safe: the texture's outermost texels are blank, so points off the glyph stay blank.
    return DIGIT_TEXTURES[labels[:, None, None], row, col]


def _digits(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    # Glyphs fill most of the image: at 32 pixels a 5x7 glyph any smaller blurs strokes into their neighbours.
    height = rng.uniform(0.7, 0.9, n)
    width = height * (GLYPH_COLS / GLYPH_ROWS) * rng.uniform(0.9, 1.1, n)
    shear = rng.uniform(-0.1, 0.1, n)  # italic slant, in glyph widths per glyph height
    margin = 0.04 + np.abs(shear) * width
    left = rng.uniform(margin, 1.0 - width - margin)
    top = rng.uniform(0.04, 0.96 - height)
    rows = (grid.y - render.column(top)) / render.column(height) * GLYPH_ROWS
    slant = render.column(shear) * (0.5 - rows / GLYPH_ROWS) * render.column(width)
    cols = (grid.x - render.column(left) - slant) / render.column(width) * GLYPH_COLS
    return Scene(render.downsample(_glyph_ink(labels, rows, cols), grid), background, foreground)


# Spots are placed in distinct cells of a jittered grid, so they never touch or overlap.
_COUNT_CELLS = 3


def _counting(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    n = len(labels)
    counts = labels + 1
    max_spots = int(counts.max())
    background, foreground = render.contrasting_colours(rng, n)
    cell = 0.9 / _COUNT_CELLS
    cells = np.argsort(rng.random((n, _COUNT_CELLS * _COUNT_CELLS)), axis=1)[:, :max_spots]
    radius = rng.uniform(0.065, 0.1, (n, max_spots))
    slack = cell / 2 - radius - 0.03
    cx = 0.05 + (cells % _COUNT_CELLS + 0.5) * cell + rng.uniform(-1.0, 1.0, radius.shape) * slack
    cy = 0.05 + (cells // _COUNT_CELLS + 0.5) * cell + rng.uniform(-1.0, 1.0, radius.shape) * slack
    mask = np.zeros((n, *grid.x.shape), dtype=bool)
    for spot in range(max_spots):
        shown = (spot < counts)[:, None, None]
        dx = (grid.x - render.column(cx[:, spot])) / render.column(radius[:, spot])
        dy = (grid.y - render.column(cy[:, spot])) / render.column(radius[:, spot])
        mask |= shown & (dx * dx + dy * dy <= 1.0)
    return Scene(render.downsample(mask, grid), background, foreground)


def _orientation(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    # Classes are pi/8 apart; the jitter leaves a gap of pi/8 - 2 * 0.09 between neighbours.
    angle = labels * (np.pi / 8) + rng.uniform(-0.09, 0.09, n)
    half_length = rng.uniform(0.25, 0.42, n)
    half_width = rng.uniform(0.035, 0.075, n)
    cx, cy = rng.uniform(0.35, 0.65, n), rng.uniform(0.35, 0.65, n)
    along, across = render.local_coords(grid, cx, cy, np.ones(n), angle)
    bar = (np.abs(along) <= render.column(half_length)) & (np.abs(across) <= render.column(half_width))
    return Scene(render.downsample(bar, grid), background, foreground)


# Per position class (row-major over a 3x3 grid): ranges of the object's centre, (x_lo, x_hi, y_lo, y_hi);
# gaps between the ranges keep every class unambiguous.
_THIRDS = ((0.14, 0.28), (0.43, 0.57), (0.72, 0.86))
_POSITION_RANGES = np.array([[*_THIRDS[col], *_THIRDS[row]] for row in range(3) for col in range(3)])


def _position(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    x_lo, x_hi, y_lo, y_hi = _POSITION_RANGES[labels].T
    cx, cy = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
    radius = rng.uniform(0.07, 0.1, n)
    kinds = rng.choice(render.SOLID_SHAPES, n)
    u, v = render.local_coords(grid, cx, cy, radius, rng.uniform(-0.3, 0.3, n))
    return Scene(render.downsample(render.shape_mask(kinds, u, v), grid), background, foreground)


# Per size class: radius range as a fraction of the image side; gaps separate the classes.
_SIZE_RANGES = np.array([[0.06, 0.08], [0.11, 0.14], [0.18, 0.22], [0.28, 0.34]])


def _sizes(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    radius = rng.uniform(*_SIZE_RANGES[labels].T)
    cx, cy = render.centres_within(rng, _SHAPE_EXTENT * radius)
    # Only solid, compact shapes: a ring or star would look smaller than its radius says.
    kinds = rng.choice((render.CIRCLE, render.SQUARE, render.TRIANGLE), n)
    u, v = render.local_coords(grid, cx, cy, radius, rng.uniform(-0.3, 0.3, n))
    return Scene(render.downsample(render.shape_mask(kinds, u, v), grid), background, foreground)


_SCENES: dict[str, Callable[[np.random.Generator, np.ndarray, Grid], Scene]] = {
    "shapes": _shapes,
    "colours": _colours,
    "textures": _textures,
    "digits": _digits,
    "counting": _counting,
    "orientation": _orientation,
    "position": _position,
    "sizes": _sizes,
    "arrows": tiny20_scenes.arrows,
    "outlines": tiny20_scenes.outlines,
    "distances": tiny20_scenes.distances,
    "frames": tiny20_scenes.frames,
    "blur": tiny20_scenes.blur,
    "relations": tiny20_scenes.relations,
    "alphabet": tiny20_scenes.alphabet,
    "stripes": tiny20_scenes.stripes,
    "shading": tiny20_scenes.shading,
    "saturation": tiny20_scenes.saturation,
    "angles": tiny20_scenes.angles,
    "pies": tiny20_scenes.pies,
}


def get_task(name: str) -> TinyTask:
    try:
        return TINY_TASKS[name]
    except KeyError:
        raise InputError(f"unknown tiny task {name!r}; valid tasks: {', '.join(TINY_TASKS)}") from None


def _is_integer(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_seed(seed: int) -> None:
    if not _is_integer(seed) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")


def _check_image_size(image_size: int) -> None:
    if not _is_integer(image_size) or image_size < MIN_IMAGE_SIZE:
        raise InputError(f"image_size must be an integer of at least {MIN_IMAGE_SIZE}, got {image_size!r}")


def _check_labels(task: TinyTask, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise InputError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(task.classnames)):
        raise InputError(
            f"labels for task {task.name!r} must lie in [0, {len(task.classnames)}), "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int64)


def generate_images(task: str, labels: np.ndarray, image_size: int, seed: int) -> np.ndarray:
    """Images [n, image_size, image_size, 3] uint8 where image i depicts class labels[i].

    Deterministic in (task, labels, image_size, seed).
    """
    spec = get_task(task)
    labels = _check_labels(spec, labels)
    _check_seed(seed)
    _check_image_size(image_size)
    grid = render.make_grid(int(image_size))
    rng = _rng(seed, task, _IMAGE_STREAM)
    images = np.empty((len(labels), image_size, image_size, 3), dtype=np.uint8)
    chunk = max(1, _PIXELS_PER_CHUNK // grid.x.size)
    for start in range(0, len(labels), chunk):
        scene = _SCENES[task](rng, labels[start : start + chunk], grid)
        images[start : start + chunk] = render.finish(rng, scene, grid)
    return images


def _balanced_labels(num_classes: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n labels whose per-class counts differ by at most one, in random order."""
    return rng.permutation(np.arange(n, dtype=np.int64) % num_classes)


def generate_split(task: str, n: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced, shuffled split: (images uint8 NHWC, labels int64)."""
    spec = get_task(task)
    _check_seed(seed)
    if n < 0:
        raise InputError(f"split size must be non-negative, got {n}")
    labels = _balanced_labels(len(spec.classnames), n, _rng(seed, task, _LABEL_STREAM))
    return generate_images(task, labels, image_size, seed), labels


def caption(task: str, label: int, rng: np.random.Generator) -> str:
    """A pre-training caption for an image of class `label`, from one of the task's templates."""
    spec = get_task(task)
    if not 0 <= label < len(spec.classnames):
        raise InputError(f"label {label} out of range for task {task!r} ({len(spec.classnames)} classes)")
    template = spec.templates[int(rng.integers(len(spec.templates)))]
    return template.format(spec.classnames[label])
