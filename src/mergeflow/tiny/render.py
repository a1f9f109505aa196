"""Vectorised drawing primitives for the procedural tiny8 tasks.

Every scene is rendered for a batch of images at once. Geometry lives in normalised
image coordinates (x to the right, y downwards, both in [0, 1]) so that shapes scale
with the image size. Masks are evaluated on a supersampled grid and box-filtered down,
which anti-aliases edges at negligible cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPERSAMPLE = 2

CIRCLE, SQUARE, TRIANGLE, CROSS, STAR, RING = range(6)
# Shapes without holes or thin spikes, which stay recognisable when drawn only a few pixels wide.
SOLID_SHAPES: tuple[int, ...] = (CIRCLE, SQUARE, TRIANGLE, CROSS)

# Sizes in units of the shape's radius, chosen so that all shapes look about equally big.
_SQUARE_CIRCUMRADIUS = 1.15
_TRIANGLE_CIRCUMRADIUS = 1.3
_CROSS_HALF_WIDTH = 0.3
_RING_INNER_RADIUS = 0.55
_STAR_OUTER_RADIUS = 1.25
_STAR_INNER_RADIUS = 0.5
_STAR_POINTS = 5


@dataclass(frozen=True)
class Grid:
    """Pixel-centre coordinates of a supersampled square image, each [size*ss, size*ss]."""

    x: np.ndarray
    y: np.ndarray
    size: int
    supersample: int


@dataclass(frozen=True)
class Scene:
    """What a task draws: foreground coverage in [0, 1] over a flat background.

    coverage is [n, size, size]; background and foreground are RGB in [0, 1], [n, 3].
    """

    coverage: np.ndarray
    background: np.ndarray
    foreground: np.ndarray


def make_grid(size: int, supersample: int = SUPERSAMPLE) -> Grid:
    fine = size * supersample
    centres = (np.arange(fine, dtype=np.float32) + 0.5) / fine
    y, x = np.meshgrid(centres, centres, indexing="ij")
    return Grid(x=x, y=y, size=size, supersample=supersample)


def downsample(mask: np.ndarray, grid: Grid) -> np.ndarray:
    """Box-filter a supersampled [n, S*ss, S*ss] mask to pixel coverage [n, S, S]."""
    ss = grid.supersample
    hits = np.zeros((mask.shape[0], grid.size, grid.size), dtype=np.uint8)
    for row in range(ss):
        for col in range(ss):
            hits += mask[:, row::ss, col::ss]
    return hits.astype(np.float32) * np.float32(1.0 / (ss * ss))


def column(values: np.ndarray) -> np.ndarray:
    """Per-image parameters [n] as [n, 1, 1] so they broadcast against the grid."""
    return np.asarray(values, dtype=np.float32)[:, None, None]


def centres_within(rng: np.random.Generator, reach: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Random centres (x, y) at which everything within `reach` of the centre, plus a 0.02 margin, is inside."""
    reach = reach + 0.02
    return rng.uniform(reach, 1.0 - reach), rng.uniform(reach, 1.0 - reach)


def local_coords(
    grid: Grid, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, angle: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates [n, H, W] relative to each object, in units of its radius.

    v points up on screen, so shapes defined with an upward tip appear upright;
    `angle` rotates the object anticlockwise as seen on screen.
    """
    dx = (grid.x - column(cx)) / column(radius)
    dy = (column(cy) - grid.y) / column(radius)
    cos, sin = column(np.cos(angle)), column(np.sin(angle))
    return cos * dx + sin * dy, cos * dy - sin * dx


def regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, circumradius: float, tip_angle: float) -> np.ndarray:
    """Inside test for a regular polygon with one vertex at `tip_angle` (radians, 0 = right)."""
    inradius = circumradius * np.cos(np.pi / sides)
    inside = np.ones(u.shape, dtype=bool)
    for k in range(sides):
        # Edge normals sit halfway between consecutive vertices.
        normal = tip_angle + (2 * k + 1) * np.pi / sides
        inside &= u * np.float32(np.cos(normal)) + v * np.float32(np.sin(normal)) <= inradius
    return inside


def _star_edge() -> tuple[float, float, float]:
    """Outward normal (nx, ny) and offset of the edge from a star tip to the next inner vertex."""
    half_sector = np.pi / _STAR_POINTS
    tip = np.array([_STAR_OUTER_RADIUS, 0.0])
    inner = _STAR_INNER_RADIUS * np.array([np.cos(half_sector), np.sin(half_sector)])
    direction = inner - tip
    normal = np.array([direction[1], -direction[0]])
    if normal @ tip < 0:
        normal = -normal
    return float(normal[0]), float(normal[1]), float(normal @ tip)


_STAR_NX, _STAR_NY, _STAR_OFFSET = _star_edge()


def star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Fold every direction into the half-sector between a tip (phi = 0) and an inner vertex.
    sector = 2 * np.pi / _STAR_POINTS
    theta = np.mod(np.arctan2(v, u) - np.pi / 2, sector)
    phi = np.minimum(theta, sector - theta)
    rho = np.hypot(u, v)
    return rho * (np.cos(phi) * _STAR_NX + np.sin(phi) * _STAR_NY) <= _STAR_OFFSET


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return regular_polygon(u, v, 4, _SQUARE_CIRCUMRADIUS, np.pi / 4)


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return regular_polygon(u, v, 3, _TRIANGLE_CIRCUMRADIUS, np.pi / 2)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= _CROSS_HALF_WIDTH) & (av <= 1.0)) | ((av <= _CROSS_HALF_WIDTH) & (au <= 1.0))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rr = u * u + v * v
    return (rr <= 1.0) & (rr >= _RING_INNER_RADIUS**2)


# Indexed by the shape kinds CIRCLE ... RING.
_SHAPE_TESTS = (_circle, _square, _triangle, _cross, star, _ring)


def shape_mask(kinds: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Supersampled mask [n, H, W] of shape kinds[i] in image i's local coordinates."""
    mask = np.zeros(u.shape, dtype=bool)
    for kind in np.unique(kinds):
        members = kinds == kind
        mask[members] = _SHAPE_TESTS[kind](u[members], v[members])
    return mask


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; hue in turns ([0, 1) is one full turn). Returns [n, 3]."""
    k = np.mod(np.array([5.0, 3.0, 1.0]) + 6.0 * np.asarray(hue)[:, None], 6.0)
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return np.asarray(value)[:, None] * (1.0 - np.asarray(saturation)[:, None] * ramp)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    return hsv_to_rgb(rng.random(n), rng.uniform(0.0, 1.0, n), rng.uniform(0.1, 1.0, n))


def contrasting_colours(rng: np.random.Generator, n: int, min_contrast: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Random (background, foreground) colour pairs whose luminances differ enough to see."""
    background = random_colours(rng, n)
    foreground = random_colours(rng, n)
    too_similar = np.abs(luminance(background) - luminance(foreground)) < min_contrast
    while too_similar.any():
        foreground[too_similar] = random_colours(rng, int(too_similar.sum()))
        too_similar = np.abs(luminance(background) - luminance(foreground)) < min_contrast
    return background, foreground


def finish(rng: np.random.Generator, scene: Scene, grid: Grid) -> np.ndarray:
    """Composite a scene over a shaded background, add sensor noise, quantise to uint8 NHWC."""
    n, size = scene.coverage.shape[0], grid.size
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    gradient_angle = rng.uniform(0.0, 2 * np.pi, n)
    gradient_strength = rng.uniform(0.0, 0.2, n)
    # A soft illumination gradient across the background so that it is never perfectly flat.
    along_x = column(np.cos(gradient_angle)) * centres[None, None, :]
    along_y = column(np.sin(gradient_angle)) * centres[None, :, None]
    shading = column(gradient_strength) * (along_x + along_y)
    background = scene.background.astype(np.float32)[:, None, None, :] + shading[..., None]
    foreground = scene.foreground.astype(np.float32)[:, None, None, :]
    image = background + scene.coverage[..., None] * (foreground - background)
    # Uniform rather than Gaussian noise: it looks the same at this scale and is much cheaper to draw.
    # Scaling by sqrt(12) makes the drawn level its standard deviation.
    noise = rng.random(image.shape, dtype=np.float32) - np.float32(0.5)
    noise *= (rng.uniform(0.01, 0.06, n) * np.sqrt(12.0)).astype(np.float32)[:, None, None, None]
    image += noise
    np.clip(image, 0.0, 1.0, out=image)
    return (image * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)
