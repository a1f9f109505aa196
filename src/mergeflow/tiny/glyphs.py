"""A 5x7 bitmap font for the digits 0-9, so the digit task needs no font files."""

from __future__ import annotations

import numpy as np

GLYPH_ROWS = 7
GLYPH_COLS = 5

_DIGIT_BITMAPS: tuple[tuple[str, ...], ...] = (
    ("01110", "10001", "10001", "10001", "10001", "10001", "01110"),
    ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),
    ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
)


def bitmaps_to_array(bitmaps: tuple[tuple[str, ...], ...]) -> np.ndarray:
    return np.array([[[ch == "1" for ch in row] for row in glyph] for glyph in bitmaps], dtype=bool)


# [digit, row, column]; row 0 is the top of the glyph.
DIGIT_GLYPHS: np.ndarray = bitmaps_to_array(_DIGIT_BITMAPS)
DIGIT_GLYPHS.setflags(write=False)

# Strokes are capsules of this half-width (in cells) joining neighbouring lit cells, so glyphs
# read as smooth pen strokes at any scale rather than as blocks or strings of beads.
STROKE_HALF_WIDTH = 0.55
TEXELS_PER_CELL = 8
# Blank margin (in cells) around the 5x7 box; wider than the strokes' overhang.
TEXTURE_PAD = 1

Segment = tuple[tuple[int, int], tuple[int, int]]


def _lit(glyph: np.ndarray, row: int, col: int) -> bool:
    return 0 <= row < GLYPH_ROWS and 0 <= col < GLYPH_COLS and bool(glyph[row, col])


def _strokes(glyph: np.ndarray) -> list[Segment]:
    """Segments between lit cells: every lit cell, its lit right/lower neighbours, and its lit
    diagonal neighbours unless an orthogonal path already joins them (that would fill corners)."""
    segments: list[Segment] = []
    for row, col in zip(*np.nonzero(glyph), strict=True):
        here = (int(row), int(col))
        segments.append((here, here))
        for d_row, d_col in ((0, 1), (1, 0)):
            if _lit(glyph, row + d_row, col + d_col):
                segments.append((here, (here[0] + d_row, here[1] + d_col)))
        for d_col in (-1, 1):
            joined = _lit(glyph, row + 1, col) or _lit(glyph, row, col + d_col)
            if _lit(glyph, row + 1, col + d_col) and not joined:
                segments.append((here, (here[0] + 1, here[1] + d_col)))
    return segments


def _distance_to_segment(rows: np.ndarray, cols: np.ndarray, segment: Segment) -> np.ndarray:
    # Cell (r, c) is centred at (r + 0.5, c + 0.5) in cell coordinates.
    (r0, c0), (r1, c1) = segment
    d_row, d_col = r1 - r0, c1 - c0
    p_row, p_col = rows - (r0 + 0.5), cols - (c0 + 0.5)
    length_sq = d_row * d_row + d_col * d_col
    t = np.clip((p_row * d_row + p_col * d_col) / length_sq, 0.0, 1.0) if length_sq else 0.0
    return np.hypot(p_row - t * d_row, p_col - t * d_col)


def stroke_textures(glyphs: np.ndarray) -> np.ndarray:
    """Sample each stroked glyph finely: [glyph, row texel, column texel] bool.

    Rendering then reduces to one lookup per pixel instead of a distance test per stroke.
    """
    step = 1.0 / TEXELS_PER_CELL
    rows = np.arange(-TEXTURE_PAD, GLYPH_ROWS + TEXTURE_PAD, step)[:, None] + step / 2
    cols = np.arange(-TEXTURE_PAD, GLYPH_COLS + TEXTURE_PAD, step)[None, :] + step / 2
    textures = np.zeros((len(glyphs), rows.shape[0], cols.shape[1]), dtype=bool)
    for index, glyph in enumerate(glyphs):
        for segment in _strokes(glyph):
            textures[index] |= _distance_to_segment(rows, cols, segment) <= STROKE_HALF_WIDTH
    return textures


DIGIT_TEXTURES: np.ndarray = stroke_textures(DIGIT_GLYPHS)
DIGIT_TEXTURES.setflags(write=False)
