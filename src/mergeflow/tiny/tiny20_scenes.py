"""Scenes of the twelve tasks that extend tiny8 to tiny14 and tiny20.

Each scene labels one attribute that no other tiny task labels (arrow direction, outline style,
gap between two dots, frame thickness, focus, relative position, letter, stripe width, fade
direction, colour saturation, opening angle, fraction of a disc) while colours, position, size
and a small rotation vary as nuisance. Like the tiny8 scenes they render a whole batch at once
from the primitives of `render`, plus a few local ones defined here.
"""

from __future__ import annotations

import numpy as np

from mergeflow.tiny import render
from mergeflow.tiny.glyphs import (
    GLYPH_COLS,
    GLYPH_ROWS,
    TEXELS_PER_CELL,
    TEXTURE_PAD,
    bitmaps_to_array,
    stroke_textures,
)
from mergeflow.tiny.render import Grid, Scene

# ---------------------------------------------------------------- local primitives

# Convex solids with an exact inside distance; polygons as (sides, circumradius, tip angle) in radius units,
# sized like render's shapes so that all look about equally big.
DISC, BOX, TRIANGLE, HEXAGON = range(4)
_POLYGONS = {BOX: (4, 1.15, np.pi / 4), TRIANGLE: (3, 1.3, np.pi / 2), HEXAGON: (6, 1.1, 0.0)}
# Farthest reach of each solid from its centre, in radii.
_EXTENT = np.array([1.0, 1.15, 1.3, 1.1])


def solid_distance(kinds: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance [n, H, W] to the edge of solid kinds[i], in radii: positive inside, exact there.

    Outside a polygon it is the distance to the nearest edge's line, which rounds no corners; the
    scenes only use it inside or within a blur width of the edge.
    """
    distance = np.empty(u.shape, dtype=np.float32)
    for kind in np.unique(kinds):
        members = kinds == kind
        mu, mv = u[members], v[members]
        if kind == DISC:
            distance[members] = 1.0 - np.hypot(mu, mv)
            continue
        sides, circumradius, tip = _POLYGONS[int(kind)]
        reach = np.full(mu.shape, -np.inf, dtype=np.float32)
        for k in range(sides):
            normal = tip + (2 * k + 1) * np.pi / sides
            np.maximum(reach, mu * np.float32(np.cos(normal)) + mv * np.float32(np.sin(normal)), out=reach)
        distance[members] = circumradius * np.cos(np.pi / sides) - reach
    return distance


def downsample_values(values: np.ndarray, grid: Grid) -> np.ndarray:
    """Box-filter supersampled float coverage [n, S*ss, S*ss] in [0, 1] to pixels [n, S, S]."""
    ss = grid.supersample
    n = values.shape[0]
    return values.reshape(n, grid.size, ss, grid.size, ss).mean(axis=(2, 4), dtype=np.float32)


def _placed_solid(
    rng: np.random.Generator, grid: Grid, kinds: np.ndarray, radius: np.ndarray, margin: float | np.ndarray = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local coordinates (u, v) of solids placed at random with a small rotation, and their signed distance."""
    n = len(kinds)
    cx, cy = render.centres_within(rng, _EXTENT[kinds] * radius + margin)
    u, v = render.local_coords(grid, cx, cy, radius, rng.uniform(-0.3, 0.3, n))
    return u, v, solid_distance(kinds, u, v)


def _segment_distance(grid: Grid, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """Distance [n, H, W] of every pixel from the segment (x0, y0)-(x1, y1) of each image."""
    col = render.column
    dx, dy = col(x1 - x0), col(y1 - y0)
    px, py = grid.x - col(x0), grid.y - col(y0)
    t = np.clip((px * dx + py * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(px - t * dx, py - t * dy)


def _by_label(labels: np.ndarray, choices: list[np.ndarray]) -> np.ndarray:
    """choices[labels[i]][i] for every image i; choices are [n, H, W] each."""
    return np.choose(labels[:, None, None], choices)


# ---------------------------------------------------------------- arrows: pointing direction

# Screen angle (0 = right, anticlockwise) per class: up, down, left, right.
_ARROW_ANGLES = np.array([np.pi / 2, -np.pi / 2, np.pi, 0.0])


def arrows(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    half_length = rng.uniform(0.26, 0.34, n)
    shaft = rng.uniform(0.035, 0.05, n)  # half-width of the shaft
    head_width = rng.uniform(0.13, 0.17, n)  # half-width of the head's base
    head_length = rng.uniform(0.15, 0.19, n)
    cx, cy = render.centres_within(rng, half_length + 0.02)
    along, across = render.local_coords(grid, cx, cy, np.ones(n), _ARROW_ANGLES[labels] + rng.uniform(-0.2, 0.2, n))
    col = render.column
    neck = col(half_length - head_length)
    across = np.abs(across)
    body = (along >= -col(half_length)) & (along <= neck) & (across <= col(shaft))
    head = (along >= neck) & (across * col(head_length) <= col(head_width) * (col(half_length) - along))
    return Scene(render.downsample(body | head, grid), background, foreground)


# ---------------------------------------------------------------- outlines: how a figure is drawn

_OUTLINE_KINDS = (DISC, BOX, HEXAGON)


def outlines(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    """Solid, outlined, dashed outline or double outline; strokes have the same width on every figure."""
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    kinds = rng.choice(_OUTLINE_KINDS, n)
    radius = rng.uniform(0.27, 0.33, n)
    u, v, inside = _placed_solid(rng, grid, kinds, radius)
    inside = inside * render.column(radius)  # in image units, so stroke widths are absolute
    stroke = render.column(rng.uniform(0.045, 0.06, n))
    gap = render.column(rng.uniform(0.05, 0.065, n))
    solid = inside >= 0.0
    band = solid & (inside <= stroke)
    dashes = render.column(rng.integers(8, 13, n))
    phase = render.column(rng.uniform(0.0, 2 * np.pi, n))
    dashed = band & (np.cos(dashes * np.arctan2(v, u) + phase) > 0.0)
    double = band | ((inside >= stroke + gap) & (inside <= 2 * stroke + gap))
    mask = _by_label(labels, [solid, band, dashed, double])
    return Scene(render.downsample(mask, grid), background, foreground)


# ---------------------------------------------------------------- distances: gap between two dots

# Per class: range of the distance between the dots' centres, in image units, except for touching dots:
# in dot radii, so that they always overlap a little.
_DOT_RADIUS = (0.07, 0.085)
_TOUCHING = (1.35, 1.6)
_DISTANCE_RANGES = np.array([[0.0, 0.0], [0.26, 0.30], [0.40, 0.46], [0.58, 0.68]])


def distances(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    radius = rng.uniform(*_DOT_RADIUS, n)
    distance = rng.uniform(*_DISTANCE_RANGES[labels].T)
    distance = np.where(labels == 0, rng.uniform(*_TOUCHING, n) * radius, distance)
    direction = rng.uniform(0.0, 2 * np.pi, n)
    half_x, half_y = 0.5 * distance * np.cos(direction), 0.5 * distance * np.sin(direction)
    reach_x, reach_y = np.abs(half_x) + 1.15 * radius + 0.02, np.abs(half_y) + 1.15 * radius + 0.02
    mid_x, mid_y = rng.uniform(reach_x, 1.0 - reach_x), rng.uniform(reach_y, 1.0 - reach_y)
    kinds = rng.choice((render.CIRCLE, render.SQUARE), n)
    mask = np.zeros(grid.x.shape, dtype=bool)
    for sign in (-1.0, 1.0):
        u, v = render.local_coords(
            grid, mid_x + sign * half_x, mid_y + sign * half_y, radius, rng.uniform(-0.3, 0.3, n)
        )
        mask = mask | render.shape_mask(kinds, u, v)
    return Scene(render.downsample(mask, grid), background, foreground)


# ---------------------------------------------------------------- frames: thickness of a border

# Per class: range of the frame's width, in image units (none, thin, medium, thick).
_FRAME_WIDTHS = np.array([[0.0, 0.0], [0.035, 0.05], [0.08, 0.1], [0.14, 0.17]])


def frames(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    """An axis-aligned frame near the image edge around a small solid in the middle."""
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    width = render.column(rng.uniform(*_FRAME_WIDTHS[labels].T))
    left, right, top, bottom = (render.column(rng.uniform(0.0, 0.05, n)) for _ in range(4))
    x, y = grid.x, grid.y
    outer = (x >= left) & (x <= 1.0 - right) & (y >= top) & (y <= 1.0 - bottom)
    inner = (x >= left + width) & (x <= 1.0 - right - width) & (y >= top + width) & (y <= 1.0 - bottom - width)
    kinds = rng.choice(render.SOLID_SHAPES, n)
    radius = rng.uniform(0.08, 0.12, n)
    cx, cy = rng.uniform(0.42, 0.58, n), rng.uniform(0.42, 0.58, n)
    u, v = render.local_coords(grid, cx, cy, radius, rng.uniform(-0.3, 0.3, n))
    mask = (outer & ~inner) | render.shape_mask(kinds, u, v)
    return Scene(render.downsample(mask, grid), background, foreground)


# ---------------------------------------------------------------- blur: focus

# Per class: range of the width over which the edge ramps from background to object, in image units.
_BLUR_WIDTHS = np.array([[0.0, 0.0], [0.07, 0.09], [0.15, 0.19], [0.28, 0.34]])
_SOLID_KINDS = (DISC, BOX, HEXAGON)


def blur(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    """A solid whose edge ramps linearly from background to object over the class's width."""
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    width = rng.uniform(*_BLUR_WIDTHS[labels].T)
    kinds = rng.choice(_SOLID_KINDS, n)
    radius = rng.uniform(0.2, 0.26, n)
    # The faint outer quarter of a wide ramp may be cut off by the image edge.
    _, _, inside = _placed_solid(rng, grid, kinds, radius, margin=width / 4)
    # A sharp edge is a ramp far narrower than a supersampled pixel: supersampling anti-aliases it as usual.
    ramp = render.column(np.maximum(width, 1e-4) / radius)
    coverage = np.clip(0.5 + inside / ramp, 0.0, 1.0)
    return Scene(downsample_values(coverage, grid), background, foreground)


# ---------------------------------------------------------------- relations: where a dot sits next to a block

# Per class, the dot's direction from the block (x right, y down): above, below, left of, right of.
_RELATION_DIRECTIONS = np.array([[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])


def relations(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    block = rng.uniform(0.14, 0.19, n)
    block_reach = 1.15 * block  # the square's half-diagonal is about this, a little rotated
    dot = rng.uniform(0.05, 0.065, n)
    along = block_reach + rng.uniform(0.04, 0.08, n) + dot
    sideways = rng.uniform(-0.4, 0.4, n) * block
    direction_x, direction_y = _RELATION_DIRECTIONS[labels].T
    # Offset of the dot from the block, and the pair's extent around the block's centre.
    dx = direction_x * along - direction_y * sideways
    dy = direction_y * along + direction_x * sideways
    lo_x, hi_x = np.minimum(-block_reach, dx - dot), np.maximum(block_reach, dx + dot)
    lo_y, hi_y = np.minimum(-block_reach, dy - dot), np.maximum(block_reach, dy + dot)
    bx, by = rng.uniform(0.03 - lo_x, 0.97 - hi_x), rng.uniform(0.03 - lo_y, 0.97 - hi_y)
    kinds = rng.choice((render.CIRCLE, render.SQUARE), n)
    u, v = render.local_coords(grid, bx, by, block, rng.uniform(-0.3, 0.3, n))
    mask = render.shape_mask(kinds, u, v)
    du = (grid.x - render.column(bx + dx)) / render.column(dot)
    dv = (grid.y - render.column(by + dy)) / render.column(dot)
    mask |= du * du + dv * dv <= 1.0
    return Scene(render.downsample(mask, grid), background, foreground)


# ---------------------------------------------------------------- alphabet: capital letters

_LETTER_BITMAPS: tuple[tuple[str, ...], ...] = (
    ("01110", "10001", "10001", "11111", "10001", "10001", "10001"),  # A
    ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),  # E
    ("10001", "10001", "10001", "11111", "10001", "10001", "10001"),  # H
    ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),  # L
    ("11111", "00100", "00100", "00100", "00100", "00100", "00100"),  # T
    ("10001", "10001", "01010", "00100", "01010", "10001", "10001"),  # X
)
LETTERS = ("A", "E", "H", "L", "T", "X")
# [letter, row texel, column texel]: the letters stroked like the digits' pixel font.
LETTER_TEXTURES: np.ndarray = stroke_textures(bitmaps_to_array(_LETTER_BITMAPS))
LETTER_TEXTURES.setflags(write=False)


def alphabet(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    """A capital letter in the 5x7 pixel font, placed, scaled and slanted at random like the digits."""
    n = len(labels)
    col = render.column
    background, foreground = render.contrasting_colours(rng, n)
    height = rng.uniform(0.5, 0.75, n)
    width = height * (GLYPH_COLS / GLYPH_ROWS) * rng.uniform(0.85, 1.15, n)
    shear = rng.uniform(-0.2, 0.2, n)  # italic slant, in glyph widths per glyph height
    margin = 0.06 + np.abs(shear) * width
    left = rng.uniform(margin, 1.0 - width - margin)
    top = rng.uniform(0.06, 0.94 - height)
    rows = (grid.y - col(top)) / col(height) * GLYPH_ROWS
    slant = col(shear) * (0.5 - rows / GLYPH_ROWS) * col(width)
    cols = (grid.x - col(left) - slant) / col(width) * GLYPH_COLS
    texture_rows, texture_cols = LETTER_TEXTURES.shape[1:]
    # Clipping is safe: the texture's outermost texels are blank, so points off the glyph stay blank.
    row = np.clip(((rows + TEXTURE_PAD) * TEXELS_PER_CELL).astype(np.int64), 0, texture_rows - 1)
    column = np.clip(((cols + TEXTURE_PAD) * TEXELS_PER_CELL).astype(np.int64), 0, texture_cols - 1)
    ink = LETTER_TEXTURES[labels[:, None, None], row, column]
    return Scene(render.downsample(ink, grid), background, foreground)


# ---------------------------------------------------------------- stripes: stripe width

# Per class: range of the stripe period (one dark plus one light stripe), in image units.
_STRIPE_PERIODS = np.array([[0.10, 0.115], [0.16, 0.18], [0.25, 0.28], [0.38, 0.42]])


def stripes(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    """Stripes of the class's width at any angle and phase, filling the picture."""
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    period = rng.uniform(*_STRIPE_PERIODS[labels].T)
    u, _ = render.local_coords(grid, rng.random(n), rng.random(n), period, rng.uniform(0.0, np.pi, n))
    return Scene(render.downsample(np.mod(u, 1.0) < 0.5, grid), background, foreground)


# ---------------------------------------------------------------- shading: which way an object fades

# Per class, the screen direction (x right, y up) towards which the object fades out: up, down, left, right.
_FADE_ANGLES = np.array([np.pi / 2, -np.pi / 2, np.pi, 0.0])


def shading(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    kinds = rng.choice((DISC, BOX, TRIANGLE, HEXAGON), n)
    radius = rng.uniform(0.22, 0.32, n)
    u, v, inside = _placed_solid(rng, grid, kinds, radius)
    angle = _FADE_ANGLES[labels] + rng.uniform(-0.25, 0.25, n)
    # Position along the fade direction in radii: fully solid from -1 back, faint from +1 on.
    along = u * render.column(np.cos(angle)) + v * render.column(np.sin(angle))
    faint = render.column(rng.uniform(0.0, 0.1, n))
    ramp = faint + (1.0 - faint) * np.clip((1.0 - along) / 2.0, 0.0, 1.0)
    coverage = np.where(inside >= 0.0, ramp, 0.0).astype(np.float32)
    return Scene(downsample_values(coverage, grid), background, foreground)


# ---------------------------------------------------------------- saturation: how colourful an object is

# Per class: range of chroma (max minus min of the RGB channels): grey, pale, rich, vivid.
_CHROMA_RANGES = np.array([[0.0, 0.03], [0.15, 0.22], [0.36, 0.46], [0.65, 0.85]])


def saturation(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    """An object of random hue and the class's chroma on a near-grey background of contrasting brightness."""
    n = len(labels)
    chroma = rng.uniform(*_CHROMA_RANGES[labels].T)
    value = rng.uniform(np.maximum(chroma, 0.45), 1.0)
    colour = render.hsv_to_rgb(rng.random(n), chroma / value, value)
    brightness = render.luminance(colour)
    # Background grey brighter or darker than the object by 0.35-0.55; flipped where that leaves [0, 1].
    offset = rng.uniform(0.35, 0.55, n) * np.where(rng.random(n) < 0.5, -1.0, 1.0)
    offset = np.where((brightness + offset < 0.03) | (brightness + offset > 0.97), -offset, offset)
    grey = np.clip(brightness + offset, 0.03, 0.97)[:, None]
    background = np.clip(grey + rng.uniform(-0.015, 0.015, (n, 3)), 0.0, 1.0)
    radius = rng.uniform(0.16, 0.3, n)
    kinds = rng.integers(0, render.RING + 1, n)
    cx, cy = render.centres_within(rng, 1.3 * radius)
    u, v = render.local_coords(grid, cx, cy, radius, rng.uniform(-0.3, 0.3, n))
    return Scene(render.downsample(render.shape_mask(kinds, u, v), grid), background, colour)


# ---------------------------------------------------------------- angles: opening angle of a chevron

# Per class: range of the angle between the two arms, in degrees (very sharp, sharp, right, wide).
_OPENING_DEGREES = np.array([[25.0, 35.0], [55.0, 65.0], [85.0, 95.0], [125.0, 140.0]])


def angles(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    """Two equal arms from a common vertex, at any rotation."""
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    opening = np.radians(rng.uniform(*_OPENING_DEGREES[labels].T))
    bisector = rng.uniform(0.0, 2 * np.pi, n)
    length = rng.uniform(0.3, 0.38, n)
    half_width = rng.uniform(0.032, 0.045, n)
    # Arm ends relative to the vertex (y downwards on screen).
    ends = [
        (length * np.cos(bisector + side * opening / 2), -length * np.sin(bisector + side * opening / 2))
        for side in (-1.0, 1.0)
    ]
    reach = half_width + 0.03
    lo_x = np.minimum(0.0, np.minimum(ends[0][0], ends[1][0])) - reach
    hi_x = np.maximum(0.0, np.maximum(ends[0][0], ends[1][0])) + reach
    lo_y = np.minimum(0.0, np.minimum(ends[0][1], ends[1][1])) - reach
    hi_y = np.maximum(0.0, np.maximum(ends[0][1], ends[1][1])) + reach
    vx, vy = rng.uniform(-lo_x, 1.0 - hi_x), rng.uniform(-lo_y, 1.0 - hi_y)
    distance = np.minimum(*(_segment_distance(grid, vx, vy, vx + ex, vy + ey) for ex, ey in ends))
    return Scene(render.downsample(distance <= render.column(half_width), grid), background, foreground)


# ---------------------------------------------------------------- pies: how much of a disc is left

# Per class: fraction of the full turn the sector spans (full, three quarters, half, quarter).
_PIE_FRACTIONS = np.array([1.0, 0.75, 0.5, 0.25])


def pies(rng: np.random.Generator, labels: np.ndarray, grid: Grid) -> Scene:
    """A disc, or a sector of one, turned to any angle."""
    n = len(labels)
    background, foreground = render.contrasting_colours(rng, n)
    radius = rng.uniform(0.22, 0.3, n)
    cx, cy = render.centres_within(rng, radius)
    u, v = render.local_coords(grid, cx, cy, radius, rng.uniform(0.0, 2 * np.pi, n))
    # Full discs stay whole; the sectors vary a little.
    fraction = _PIE_FRACTIONS[labels] + rng.uniform(-0.03, 0.03, n) * (labels > 0)
    sector = np.mod(np.arctan2(v, u), 2 * np.pi) <= render.column(2 * np.pi * fraction)
    return Scene(render.downsample((u * u + v * v <= 1.0) & sector, grid), background, foreground)
